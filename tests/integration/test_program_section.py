"""spoad launched by HAProxy (2.x to 3.2) in master-worker mode from a `program` section.

`haproxy -W -S master.sock -f haproxy.cfg` starts `program spoad` (spoad -f spoad.yaml). On each
HAProxy reload (`echo reload | socat master.sock -`), HAProxy sends SIGUSR1 to the old spoad
master and starts a new one at once. Under HTTP load, 10 reloads:
- no failed request, never X-SPOE-Error;
- HAProxy lists the old spoad under `# old programs` until it exits, and it exits (status 0,
  by itself: its master never had to kill a worker past the grace period), its workers with it;
- spoad's control socket keeps its path and answers from the new master after every reload,
  and still does once the old instances are gone (they never unlink it); same for the pidfile;
- the environment variables HAProxy passes on expand in spoad.yaml ("${NAME-default}").

Nothing here measures speed: each step waits for its event, with harness.GUARD_S as a guard
against a hang.
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import supervisor as sv  # noqa: E402

GRACE_S = 3

SPOAD_YAML = """
global:
  grace: %(grace)ds
cli:
  socket: "${SPOAD_CLI_SOCKET}"
agents:
%(agent)s"""

HAPROXY_CFG = """
global
    # 3.1 and 3.2 refuse `program` without it; 2.x does not know it.
    .if version_atleast(3.1)
        expose-deprecated-directives
    .endif
    log stderr format raw local0 info
    stats socket %(stats)s mode 600 level admin

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s

program spoad
    command %(spoad)s -f %(yaml)s -p %(pidfile)s

frontend www
    bind 127.0.0.1:%(fe)d
    filter spoe engine ip-checker config %(spoe)s
    http-request deny deny_status 403 if { var(txn.iprep.blocked) -m bool }
    http-after-response set-header X-IP-Score "%%[var(sess.iprep.ip_score)]"
    http-after-response set-header X-IP-List "%%[var(txn.iprep.list)]" if { var(txn.iprep.list) -m found }
    http-after-response set-header X-SPOE-Error "%%[var(txn.iprep.error)]" if { var(txn.iprep.error) -m found }
    default_backend app

backend app
    http-request return status 200 content-type text/plain string "hello from the backend"

backend spoe-ip-checker
    mode tcp
    balance roundrobin
    timeout connect 1s
    timeout server 3m
    option spop-check
    server spoad 127.0.0.1:%(agent)d check inter 1s
"""

def spoad_programs(sections, section="programs"):
    return harness.haproxy_pids(sections, section, "spoad")


@unittest.skipIf(harness.haproxy_at_least(3, 3),
                 "HAProxy 3.3 and later have no program section (test_reload_haproxy.py runs "
                 "the systemd layout there)")
class ProgramSection(unittest.TestCase):
    def setUp(self):
        self.env = harness.Env("program")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)

    def logs(self):
        return sv.tail_logs(self.env)

    def current_spoad(self, exclude=()):
        """(HAProxy's current spoad program pid, spoad's ShowProc) once the new program is up,
        its control socket answers from it and its 2 workers are ready; or None."""
        sec = harness.haproxy_show_proc(self.hsock)
        if sec is None:
            return None
        progs = spoad_programs(sec)
        if len(progs) != 1 or progs[0] in exclude or not harness.pid_alive(progs[0]):
            return None
        sp = sv.try_show_proc(self.sock)
        if sp is None or sp.master.pid != progs[0]:
            return None
        self.tracker.add_proc(sp)
        if len(sp.workers) != 2 or not all(harness.pid_alive(p) for p in sp.pids()):
            return None
        for r in sp.workers:
            out = sv.try_cli(self.sock, "@%d show info" % r.rel)
            if out is None or sv.parse_info(out).get("Pid") != str(r.pid):
                return None
        return progs[0], sp

    def test_reloads_under_load(self):
        fe, agent = harness.free_port(), harness.free_port()
        self.sock = self.env.path("spoad.sock")
        self.hsock = self.env.path("haproxy-master.sock")
        pidfile = self.env.path("spoad.pid")
        yaml = self.env.write("spoad.yaml", SPOAD_YAML % {
            "grace": GRACE_S,
            "agent": sv.iprep_agent('"${SPOAD_IPREP_ADDR-127.0.0.1:12345}"', 2)})
        cfg = self.env.write("haproxy.cfg", HAPROXY_CFG % {
            "stats": self.env.path("haproxy.sock"), "spoad": harness.SPOAD, "yaml": yaml,
            "pidfile": pidfile, "fe": fe, "agent": agent,
            "spoe": os.path.join(harness.spoe_dir(self.env), "spoe-ip-checker.cfg")})
        # spoad.yaml takes its socket and address from the environment HAProxy passes on.
        env = {"SPOAD_CLI_SOCKET": self.sock, "SPOAD_IPREP_ADDR": "127.0.0.1:%d" % agent}
        hap = self.env.start("haproxy", [harness.HAPROXY, "-W", "-db", "-S", self.hsock, "-f", cfg],
                             env=env, cwd=self.env.dir)

        first = harness.wait_for(self.current_spoad, interval=0.1)
        self.assertIsNotNone(first, ("spoad did not start under HAProxy", self.logs()))
        prog, sp = first
        self.assertTrue(harness.wait_for(lambda: harness.port_open(fe)), self.logs())
        self.assertTrue(sv.wait_http_ok(fe), self.logs())
        with open(pidfile) as f:
            self.assertEqual(f.read().strip(), str(prog))

        load = sv.HttpLoad(fe).start()
        olds = []  # (program pid, its workers, time of the reload)
        try:
            for i in range(10):
                out = sv.socat_cmd(self.hsock, "reload")
                olds.append((prog, sp.pids(), time.time()))
                nxt = harness.wait_for(lambda: self.current_spoad(exclude={p for p, _, _ in olds}),
                                       interval=0.1)
                self.assertIsNotNone(nxt, (i, "no new spoad after the HAProxy reload", out,
                                           sv.try_cli(self.hsock, "show proc"),
                                           self.logs()))
                prog, sp = nxt
                self.assertFalse(sp.pids() & olds[-1][1], (i, sp.text))
                with open(pidfile) as f:
                    self.assertEqual(f.read().strip(), str(prog), (i, "pidfile"))
                # HAProxy lists the previous spoad as an old program until it exits.
                old_prog = olds[-1][0]
                if harness.pid_alive(old_prog):
                    sec = harness.haproxy_show_proc(self.hsock) or {}
                    self.assertTrue(old_prog in spoad_programs(sec, "old programs")
                                    or not harness.pid_alive(old_prog), (i, sec))
                n = load.ok
                self.assertTrue(harness.wait_for(lambda: load.ok >= n + 8),
                                (i, load.summary(), self.logs()))
        finally:
            load.stop()
        failed = ("failed requests", load.summary(),
                  "HAProxy reloads at %s" % ["%.3f" % t for _, _, t in olds], self.logs())

        # Each old spoad (master and workers) exits.
        for old_prog, old_workers, t_reload in olds:
            harness.wait_for(lambda: sv.all_dead({old_prog} | old_workers), interval=0.1)
            left = [p for p in {old_prog} | old_workers if harness.pid_alive(p)]
            self.assertEqual(left, [], ("old spoad still alive %.1f s after its reload"
                                        % (time.time() - t_reload), self.logs()))
        sec = harness.haproxy_show_proc(self.hsock)
        self.assertIsNotNone(sec, self.logs())
        self.assertEqual(spoad_programs(sec, "old programs"), [], sec)
        self.assertEqual(spoad_programs(sec), [prog], sec)
        # HAProxy saw each old spoad exit cleanly (SIGUSR1 soft-stop: status 0).
        hap_log = hap.output()
        for old_prog, _, _ in olds:
            self.assertTrue(harness.wait_log(
                hap, "Former program 'spoad' (%d) exited with code 0" % old_prog), hap_log)
        hap_log = hap.output()
        # By themselves: no master had to kill a worker that outlived the grace period.
        self.assertNotIn("still running: SIGKILL", hap_log)
        self.assertTrue(hap.alive(), self.logs())
        # The old instances did not take the control socket or the pidfile with them.
        sp = sv.show_proc(self.sock)
        self.assertEqual(sp.master.pid, prog, sp.text)
        with open(pidfile) as f:
            self.assertEqual(f.read().strip(), str(prog))
        self.assertTrue(sv.wait_http_ok(fe), self.logs())
        # Last, the traffic during the reloads (checked after the rest, which is deterministic).
        self.assertEqual(len(load.failures), 0, failed)
        self.assertTrue(all(v >= 10 for v in load.per_source.values()), load.summary())


if __name__ == "__main__":
    unittest.main(verbosity=2)
