"""The supervisor's process model: worker pools, respawn with backoff, stop signals, master death.

- 200 connections to a 2-worker pool reach both workers (SO_REUSEPORT); a unix: pool shares
  the master's listener (one spoad for both);
- kill -9 of a worker under spoa-bench load: a replacement after the minimum backoff (100 ms,
  as the master logs it), the other worker untouched, spoa-bench sees exactly the killed
  worker's connections close, ACKs keep coming;
- the respawn delay grows when the same slot keeps dying (100, 200, 400 ms: logged, and each
  replacement comes no sooner);
- SIGTERM/SIGINT: hard-stop, everything gone, status 0; SIGKILL of the master: the workers
  exit; SIGUSR1: soft-stop (NOTIFYs in flight answered, AGENT-DISCONNECT 0, the grace period
  never needed), status 0.

Nothing here measures speed: each step waits for its event (a `show proc` row, a counter, a
log line, a pid gone), with harness.GUARD_S as a guard against a hang.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402


class Base(unittest.TestCase):
    name = "sup"

    def setUp(self):
        self.env = harness.Env(self.name)
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = None

    def start(self, agents, n_workers, grace="60s", name="spoad"):
        self.sock = self.env.path(name + ".sock")
        cfg = self.env.write(name + ".yaml", sv.config(agents, socket_path=self.sock, grace=grace))
        p = self.env.spoad(cfg, name=name)
        sp = sv.wait_pool(self.sock, n_workers, proc=p)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, "the pool did not start:\n" + self.env.dump_logs())
        self.assertEqual(sp.master.pid, p.pid)
        return p, sp

    def logs(self):
        return sv.tail_logs(self.env)

    def info(self, rel):
        return sv.worker_info(self.sock, rel)

    def curr_conns(self, rels):
        return sum(int(self.info(r)["CurrConns"]) for r in rels)


class Pools(unittest.TestCase):
    """One spoad for both pools: a TCP echo pool (relative pids 1-2) and a unix: one (3-4)."""

    @classmethod
    def setUpClass(cls):
        cls.env = harness.Env("sup-pools")
        cls.tracker = sv.Tracker()
        cls.port = harness.free_port()
        cls.unix = cls.env.path("echo.sock")
        cls.sock = cls.env.path("spoad.sock")
        cfg = cls.env.write("spoad.yaml", sv.config(
            [sv.echo_agent(cls.port, 2), sv.echo_agent("unix:" + cls.unix, 2, name="local")],
            socket_path=cls.sock, grace="60s"))
        cls.spoad = cls.env.spoad(cfg)
        cls.sp = sv.wait_pool(cls.sock, 4, proc=cls.spoad)
        cls.tracker.add_proc(cls.sp)
        if cls.sp is None or not harness.wait_for(lambda: harness.port_open(cls.port)):
            logs = cls.env.dump_logs()
            cls.env.stop()
            cls.tracker.cleanup()
            raise RuntimeError("the pools did not start:\n" + logs)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.tracker.cleanup()

    logs = Base.logs
    info = Base.info
    curr_conns = Base.curr_conns

    def test_200_connections_reach_every_worker(self):
        port, sp = self.port, self.sp
        # The port check of setUpClass is no longer counted.
        self.assertTrue(harness.wait_for(lambda: self.curr_conns((1, 2)) == 0), self.logs())
        cum0 = {r: int(self.info(r)["CumConns"]) for r in (1, 2)}
        clients = []
        try:
            for _ in range(200):
                c = spop.Client(("127.0.0.1", port))
                clients.append(c)
                c.handshake()
            # While they are open, the workers count them as current connections.
            cur = {}

            def all_current():
                cur.update({r: int(self.info(r).get("CurrConns", -1)) for r in (1, 2)})
                return sum(cur.values()) == 200
            self.assertTrue(harness.wait_for(all_current), (cur, self.logs()))
        finally:
            for c in clients:
                c.close()
        cum = {r: int(self.info(r)["CumConns"]) - cum0[r] for r in (1, 2)}
        self.assertTrue(all(v > 0 for v in cum.values()), ("a worker got no connection", cum))
        self.assertGreaterEqual(sum(cum.values()), 200, cum)
        self.assertTrue(harness.wait_for(lambda: self.curr_conns((1, 2)) == 0),
                        "connections still counted after close")
        now = sv.show_proc(self.sock)
        self.assertEqual([now.worker(r).pid for r in (1, 2)], [sp.worker(r).pid for r in (1, 2)])

    def test_unix_pool_shares_one_listener(self):
        path, sp = self.unix, self.sp
        before = sum(int(self.info(r)["CumConns"]) for r in (3, 4))
        for _ in range(50):
            self.assertEqual(sv.echo_once(path)["txn.x"], "hello")
        cum = sum(int(self.info(r)["CumConns"]) for r in (3, 4)) - before
        self.assertGreaterEqual(cum, 50)
        # A replacement worker serves the same socket (the master's fd, same path).
        victim = sp.worker(3).pid
        os.kill(victim, signal.SIGKILL)
        sp2 = sv.wait_pool(self.sock, 4, exclude={victim})
        self.tracker.add_proc(sp2)
        self.assertIsNotNone(sp2, self.logs())
        self.assertEqual(sp2.worker(4).pid, sp.worker(4).pid)
        self.assertEqual([sp2.worker(r).pid for r in (1, 2)], [sp.worker(r).pid for r in (1, 2)])
        before = int(self.info(4)["CumConns"])
        for _ in range(20):
            self.assertEqual(sv.echo_once(path)["txn.x"], "hello")
        new = int(self.info(3)["CumConns"])
        self.assertGreaterEqual(new + int(self.info(4)["CumConns"]) - before, 20)


class Respawn(Base):
    name = "sup-respawn"

    def replacement(self, rel, dead):
        """The pid of a live worker at relative pid `rel` that is not in `dead`, or None."""
        sp = sv.try_show_proc(self.sock)
        if sp is None:
            return None
        r = sp.worker(rel)
        if r is None or r.pid in dead or not harness.pid_alive(r.pid):
            return None
        return r.pid

    def respawn_delays(self, proc, rel):
        """The delays (ms) of the respawns of slot `rel` the master announced so far."""
        return [int(m) for m in re.findall(r"respawning relative pid %d in (\d+) ms" % rel,
                                           proc.output())]

    def test_kill_9_under_load(self):
        port = harness.free_port()
        p, sp = self.start([sv.echo_agent(port, 2)], 2)
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)), self.logs())
        # Wait until the port check above is no longer counted.
        self.assertTrue(harness.wait_for(lambda: self.curr_conns((1, 2)) == 0))

        def start_bench():
            # Until SIGINT (-t 0); --timeout only guards against a hang.
            return subprocess.Popen(
                [harness.SPOA_BENCH, "-a", "127.0.0.1:%d" % port, "-c", "8", "-d", "8", "-t", "0",
                 "--warmup", "0", "--timeout", "%g" % harness.GUARD_S, "--json",
                 "-m", "check-client-ip", "--arg", "ip=ipv4:192.0.2.1"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The kernel spreads the 8 connections over the two workers by a hash of their
        # addresses (SO_REUSEPORT), so now and then one worker gets all 8 (about 1 start in
        # 128) and there would be no "other worker" to watch. Then spoa-bench starts again,
        # from new source ports, until each worker holds at least one connection.
        infos = {}

        def loaded():
            infos.update({r.rel: self.info(r.rel) for r in sp.workers})
            return (sum(int(i["CurrConns"]) for i in infos.values()) == 8
                    and sum(int(i["CumAck"]) for i in infos.values()) > 1000)
        splits = []
        bench = None
        try:
            for _ in range(20):
                bench = start_bench()
                self.assertTrue(harness.wait_for(loaded), (infos, self.logs()))
                splits.append(sorted(int(i["CurrConns"]) for i in infos.values()))
                if all(int(i["CurrConns"]) > 0 for i in infos.values()):
                    break
                bench.send_signal(signal.SIGINT)
                bench.communicate(timeout=harness.GUARD_S)
                self.assertTrue(harness.wait_for(lambda: self.curr_conns((1, 2)) == 0))
            self.assertTrue(all(int(i["CurrConns"]) > 0 for i in infos.values()),
                            ("one worker held every connection at each start", splits))
            # spoa-bench never reconnects: the connection counts are stable. Kill the worker
            # that has more of them.
            infos = {r.rel: self.info(r.rel) for r in sp.workers}
            victim_rel = max(infos, key=lambda k: int(infos[k]["CurrConns"]))
            other_rel = 3 - victim_rel
            victim, other = sp.worker(victim_rel).pid, sp.worker(other_rel).pid
            n_killed = int(infos[victim_rel]["CurrConns"])
            self.assertEqual(infos[victim_rel]["Pid"], str(victim))
            os.kill(victim, signal.SIGKILL)
            new = harness.wait_for(lambda: self.replacement(victim_rel, {victim}), interval=0.02)
            self.tracker.add(new)
            self.assertIsNotNone(new, ("no replacement worker", self.logs()))
            # A first crash: the master waited the minimum backoff.
            harness.wait_for(lambda: self.respawn_delays(p, victim_rel))
            self.assertEqual(self.respawn_delays(p, victim_rel), [100], self.logs())
            sp2 = sv.show_proc(self.sock)
            self.assertEqual(sp2.worker(other_rel).pid, other, ("the other worker changed",
                                                                sp2.text))
            self.assertEqual(len(sp2.workers), 2, sp2.text)
            # The other worker keeps answering spoa-bench.
            a1 = int(self.info(other_rel)["CumAck"])
            self.assertTrue(harness.wait_for(
                lambda: int(self.info(other_rel)["CumAck"]) > a1 + 100),
                ("ACKs stopped after the kill", infos, self.logs()))
            bench.send_signal(signal.SIGINT)
            out, err = bench.communicate(timeout=harness.GUARD_S)
        finally:
            if bench is not None and bench.poll() is None:
                bench.kill()
                bench.wait()
        try:
            res = json.loads(out)
        except ValueError:
            self.fail("spoa-bench output: %r %r" % (out, err))
        errors = res["errors"]
        ctx = (n_killed, errors, err[-3000:], self.logs())
        self.assertTrue(res["interrupted"], ctx)
        self.assertEqual(errors["unexpected_close"], n_killed, ctx)
        self.assertEqual(errors["total"], n_killed, ctx)
        self.assertEqual({k: v for k, v in errors.items() if v and k not in ("total",
                                                                          "unexpected_close")},
                         {}, ctx)
        self.assertEqual(res["agent_disconnect_status"], {}, ctx)
        self.assertGreater(res["acks"], 0, ctx)
        self.assertEqual(bench.returncode, 1 if n_killed else 0, ctx)
        self.assertTrue(harness.pid_alive(other))
        # The replacement serves new connections.
        sp3 = sv.wait_pool(self.sock, 2)
        self.assertIsNotNone(sp3, self.logs())
        self.assertEqual(sv.echo_once(port)["txn.x"], "hello")

    def test_respawn_delay_grows(self):
        port = harness.free_port()
        p, sp = self.start([sv.echo_agent(port, 2)], 2)
        other = sp.worker(2).pid
        dead = set()
        pid = sp.worker(1).pid
        delays = []
        for i, backoff_ms in enumerate((100, 200, 400)):
            # The clock starts before the kill: the measured delay is never shorter than the
            # master's, whatever the load.
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            dead.add(pid)
            pid = harness.wait_for(lambda: self.replacement(1, dead), interval=0.01)
            delays.append(time.monotonic() - t0)
            self.tracker.add(pid)
            self.assertIsNotNone(pid, ("no replacement", delays, self.logs()))
            ctx = ("delays %s" % ["%.3f" % d for d in delays], self.logs())
            # The master announced the delay before the replacement started...
            harness.wait_for(lambda: len(self.respawn_delays(p, 1)) > i)
            self.assertEqual(self.respawn_delays(p, 1)[i:], [backoff_ms], ctx)
            # ...and did not start it sooner (less 1 ms: libuv's clock counts whole ms).
            self.assertGreaterEqual(delays[-1], (backoff_ms - 1) / 1000.0, ctx)
        self.assertEqual(self.respawn_delays(p, 1), [100, 200, 400], self.logs())
        sp2 = sv.wait_pool(self.sock, 2)
        self.assertIsNotNone(sp2, self.logs())
        self.assertEqual(sp2.worker(2).pid, other, "the other worker was touched")
        self.assertEqual(self.respawn_delays(p, 2), [], "the other slot was respawned")
        self.assertEqual(sv.echo_once(port)["txn.x"], "hello")


class Signals(Base):
    name = "sup-signals"

    def pool(self, name="spoad"):
        port1, port2 = harness.free_port(), harness.free_port()
        p, sp = self.start([sv.iprep_agent(port1, 2), sv.echo_agent(port2, 2)], 4, name=name)
        return p, sp, port2

    def wait_all_dead(self, pids, what):
        ok = harness.wait_for(lambda: sv.all_dead(pids), interval=0.01)
        alive = [p for p in pids if harness.pid_alive(p)]
        self.assertTrue(ok, ("%s: still alive: %s" % (what, alive), self.logs()))

    def test_sigterm_and_sigint_hard_stop(self):
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            with self.subTest(signal=sig):
                p, sp, _ = self.pool("spoad-%d" % sig)
                pids = [p.pid] + list(sp.pids())
                p.send_signal(sig)
                self.assertEqual(p.wait(), 0, self.logs())
                self.wait_all_dead(pids, "hard-stop")
                out = p.output()
                # A hard-stop, not a soft one bounded by the grace period (60 s here).
                self.assertIn("%s: hard-stop" % name, out)
                self.assertNotIn("soft-stop", out)
                self.assertIn("All workers exited. Exiting... (0)", out)

    def test_sigkill_of_the_master_ends_the_workers(self):
        p, sp, port = self.pool()
        os.kill(p.pid, signal.SIGKILL)
        self.wait_all_dead(list(sp.pids()), "workers after the master's death")
        self.assertEqual(p.wait(), -signal.SIGKILL)
        self.assertTrue(harness.wait_for(lambda: not harness.port_open(port)),
                        "someone still listens on the agent port")

    def test_sigusr1_soft_stop(self):
        p, sp, port = self.pool()
        idle = spop.Client(("127.0.0.1", port))
        busy = spop.Client(("127.0.0.1", port))
        try:
            idle.handshake()
            busy.handshake()
            busy.send(spop.notify(7, 1, [("m", [("delay_ms", 800)])]))
            # The NOTIFY has been read by a worker before the signal.
            self.assertTrue(harness.wait_for(
                lambda: sum(int(self.info(r)["CumNotify"]) for r in (3, 4)) >= 1))
            p.send_signal(signal.SIGUSR1)
            f = idle.recv_frame()
            self.assertIsNotNone(f, "the idle connection closed without AGENT-DISCONNECT")
            self.assertEqual(f.type, spop.AGENT_DISCONNECT, f)
            self.assertEqual(f.kv()["status-code"], 0)
            f = busy.recv_frame()
            self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 7, 1), "the NOTIFY in flight")
            f = busy.recv_frame()
            self.assertEqual(f.type, spop.AGENT_DISCONNECT, f)
            self.assertEqual(f.kv()["status-code"], 0)
            self.assertEqual(p.wait(), 0, self.logs())
            self.wait_all_dead(list(sp.pids()), "workers after the master's exit")
            # The workers left by themselves once their connections were done: the grace
            # period (60 s) never had to cut anything.
            out = p.output()
            self.assertIn("SIGUSR1: soft-stop", out)
            self.assertNotIn("grace period over", out)
            self.assertNotIn("SIGKILL", out)
        finally:
            idle.close()
            busy.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
