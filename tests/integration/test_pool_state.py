"""Pool-wide commands and pool state with the real ip-checker (no HAProxy, no store).

An ip-checker pool of 2 workers with a deny list for runtime entries only. On the master CLI:
- `@iprep add ip deny bans ADDR ttl 1h ...` is applied on 2 of 2 workers, each answering the
  same; `@N show ip ADDR` on each worker says blocked, from the runtime entry; an address never
  added is not blocked (the control);
- a command that fails on every worker (an unknown list: agent::CommandError) is answered once
  and counted "failed on 2"; sent to one worker (`@1 ...`) it is answered as is;
- the master keeps the pool's state (`show info` PoolStates/PoolStateBytes, `show stat`
  spoad_pool_state_bytes{agent="iprep"}); a worker killed with SIGKILL is respawned with the
  entry already in force (its log says the state was restored);
- after `reload`, every worker of the new generation has it;
- a new spoad that takes this one over (same cli.socket) gets the state before its workers
  start: each of them has it;
- `@iprep del ip deny ...` on the new instance, then a SIGKILL: the respawned worker does not
  have the entry (the deletion changed the state the master keeps).

Each step waits for its event (a CLI answer, a log line, a pid gone); harness.GUARD_S only
guards against a hang.
"""
import os
import re
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import supervisor as sv  # noqa: E402

BANNED = "192.0.2.7"
NEVER = "192.0.2.8"


def config(port, sock):
    return sv.config(["""  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%d
    workers: 2
    message: check-client-ip
    block-threshold: 50
    deny:
      - name: bans
        score: 100
""" % port], socket_path=sock, grace="60s")


class PoolState(unittest.TestCase):
    def setUp(self):
        self.env = harness.Env("pool-state")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = self.env.path("master.sock")
        self.port = harness.free_port()
        self.cfg = self.env.write("spoad.yaml", config(self.port, self.sock))

    def logs(self):
        return sv.tail_logs(self.env, 8000)

    def pool(self, proc, exclude=()):
        sp = sv.wait_pool(self.sock, 2, exclude=exclude, proc=proc)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, self.logs())
        return sp

    def show_ip(self, rel, addr):
        return sv.cli(self.sock, "@%d show ip %s" % (rel, addr))

    def assert_banned_everywhere(self, sp, ctx):
        """Each current worker, asked alone, blocks BANNED from the runtime entry, and not
        NEVER."""
        for r in sp.workers:
            out = self.show_ip(r.rel, BANNED)
            self.assertIn("blocked=true", out, (ctx, r, out, self.logs()))
            self.assertIn("list=bans", out, (ctx, r, out))
            self.assertIn("runtime", out, (ctx, r, out))
            self.assertEqual(sv.parse_info(sv.cli(self.sock, "@%d show info" % r.rel))
                             .get("Pid"), str(r.pid), (ctx, r))
            out = self.show_ip(r.rel, NEVER)
            self.assertIn("blocked=false", out, (ctx, r, out))

    def info(self):
        return sv.parse_info(sv.cli(self.sock, "show info"))

    def test_entries_follow_the_pool(self):
        a = self.env.spoad(self.cfg, name="spoad-a")
        sp = self.pool(a)
        self.assertEqual(self.info().get("PoolStates"), "0", self.logs())
        for r in sp.workers:  # the control: nothing is blocked yet
            self.assertIn("blocked=false", self.show_ip(r.rel, BANNED))

        # One command for the pool: applied on both, the same answer once.
        out = sv.cli(self.sock, "@iprep add ip deny bans %s ttl 1h comment seen scanning"
                     % BANNED)
        self.assertTrue(out.endswith("\n# iprep: applied on 2 of 2 workers\n\n"),
                        (out, self.logs()))
        self.assertNotIn("# workers", out)
        self.assert_banned_everywhere(sp, "after add")

        # A failure on every worker: the same error once, counted; to one worker, as is.
        out = sv.cli(self.sock, "@iprep add ip deny nosuchlist 192.0.2.9")
        self.assertTrue(out.endswith("\n# iprep: applied on 0 of 2 workers, failed on 2\n\n"),
                        (out, self.logs()))
        error = out[:-len("# iprep: applied on 0 of 2 workers, failed on 2\n\n")]
        self.assertIn("nosuchlist", error)
        self.assertEqual(error.count("\n"), 1, out)  # one clear line
        self.assertEqual(sv.cli(self.sock, "@1 add ip deny nosuchlist 192.0.2.9"), error + "\n")

        # The master keeps the state (bytes), in show info and in show stat.
        info = self.info()
        self.assertEqual(info.get("PoolStates"), "1", info)
        size = int(info["PoolStateBytes"])
        self.assertGreater(size, 0, info)
        stat = sv.cli(self.sock, "show stat")
        self.assertIn('spoad_pool_state_bytes{agent="iprep"} %d\n' % size, stat)

        # kill -9 of a worker: its replacement starts with the entry.
        victim = sp.worker(1).pid
        restored_before = a.output().count("pool state restored")
        os.kill(victim, signal.SIGKILL)
        sp = self.pool(a, exclude={victim})
        self.assertGreater(a.output().count("pool state restored"), restored_before, self.logs())
        self.assert_banned_everywhere(sp, "after kill -9")

        # reload: every worker of the new generation has it.
        old = sp.pids()
        out = sv.cli(self.sock, "reload")
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        sp = self.pool(a, exclude=old)
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(old)), self.logs())
        self.assert_banned_everywhere(sp, "after reload")

        # A new spoad takes this one over: its first workers start with the state.
        b = self.env.spoad(self.cfg, name="spoad-b")
        self.assertTrue(harness.wait_log(b, "took 1 pool state(s) from spoad pid %d" % a.pid),
                        self.logs())
        self.assertEqual(a.wait(), 0, self.logs())
        sp_b = self.pool(b, exclude=sp.pids())
        self.assertEqual(sp_b.master.pid, b.pid)
        self.assert_banned_everywhere(sp_b, "after the takeover")
        self.assertEqual(self.info().get("PoolStateBytes"), str(size), self.logs())

        # A deletion changes the state too: a respawned worker no longer has the entry.
        out = sv.cli(self.sock, "@iprep del ip deny bans %s" % BANNED)
        self.assertTrue(out.endswith("\n# iprep: applied on 2 of 2 workers\n\n"),
                        (out, self.logs()))
        victim = sp_b.worker(2).pid
        os.kill(victim, signal.SIGKILL)
        sp_b = self.pool(b, exclude={victim})
        for r in sp_b.workers:
            self.assertIn("blocked=false", self.show_ip(r.rel, BANNED), (r, self.logs()))
        self.assertEqual(b.stop(), 0, self.logs())
        self.assertIsNone(re.search(r"cannot restore the pool state", b.output() + a.output()),
                          self.logs())


if __name__ == "__main__":
    unittest.main(verbosity=2)
