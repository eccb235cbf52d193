"""Configuration reloads of the supervisor: CLI `reload`, SIGUSR2, SIGHUP.

- under HAProxy traffic (harness.HAPROXY; config/ files unchanged), 20 reloads alternating CLI
  and SIGUSR2: no failed request, no X-SPOE-Error, every old worker gone after the grace period;
- a broken file: `Success=0`, `--`, the file:line:key error; the old workers keep serving;
  `[failed: N]` in show proc; once fixed, `Success=1` and the new configuration applies;
- old workers: listed under `# old workers` (reachable with @!PID) while they finish a NOTIFY
  (here, one whose last fragment the test holds back), then hand the connection over and exit;
- `reload` closes the CLI connection (what follows is ignored); a changed listen address is
  bound by the new generation; SIGHUP reloads too.

Each class needs a fresh spoad (reloads change it). Nothing here measures speed: each step
waits for its event, with harness.GUARD_S as a guard against a hang.
"""
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import stack  # noqa: E402
import supervisor as sv  # noqa: E402


class Base(unittest.TestCase):
    name = "reload"

    def setUp(self):
        self.env = harness.Env(self.name)
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = self.env.path("master.sock")

    def logs(self):
        return sv.tail_logs(self.env)

    def wait_generation(self, reloads, previous, n, timeout=None):
        """Waits for show proc to report `reloads` successful reloads and `n` live current
        workers none of which is in `previous`; returns the ShowProc."""
        def ok():
            sp = sv.try_show_proc(self.sock)
            if sp is None:
                return None
            self.tracker.add_proc(sp)
            if sp.master.reloads != reloads or len(sp.workers) != n:
                return None
            if sp.pids() & previous or not all(harness.pid_alive(p) for p in sp.pids()):
                return None
            return sp
        return harness.wait_for(ok, timeout=timeout, interval=0.05)


class ReloadUnderLoad(Base):
    """Acceptance 4: HAProxy -> spoad ip-checker (2 workers), config/ files unchanged."""
    name = "reload-load"

    def test_20_reloads_under_http_load(self):
        # config/spoad.yaml: 2 ip-checker workers, 2 tracing workers and 2 mirror workers.
        s = stack.Stack(self.env)
        self.addCleanup(s.stop)
        s.use_shipped(SPOAD_CLI_SOCKET=self.sock)
        fe = s.fe
        spoad = s.start_shipped_spoad(workers=6)
        sp = sv.show_proc(self.sock)
        self.tracker.add_proc(sp)
        s.start_shipped_haproxy()
        self.assertTrue(sv.wait_http_ok(fe), self.logs())

        load = sv.HttpLoad(fe).start()
        old = set()
        reloads_at = []
        try:
            for i in range(1, 21):
                prev = sp.pids()
                reloads_at.append("%.3f %s" % (time.time(), "cli" if i % 2 else "SIGUSR2"))
                if i % 2:
                    out = sv.cli(self.sock, "reload")
                    self.assertEqual(out.split("\n")[0], "Success=1", (i, out, self.logs()))
                    # The answer comes once the new generation is ready.
                    sp = sv.show_proc(self.sock)
                    self.tracker.add_proc(sp)
                    self.assertEqual(sp.master.reloads, i, (i, sp.text))
                    self.assertFalse(sp.pids() & prev, (i, "old workers still current", sp.text))
                else:
                    spoad.send_signal(signal.SIGUSR2)
                    sp = self.wait_generation(i, prev, 6)
                    self.assertIsNotNone(sp, (i, "SIGUSR2 reload not done", self.logs()))
                self.assertEqual(len(sp.workers), 6, sp.text)
                self.assertEqual([r.type for r in sp.workers],
                                 ["iprep", "iprep", "tracing", "tracing", "mirror", "mirror"],
                                 sp.text)
                self.assertTrue(all(r.reloads == 0 for r in sp.workers), sp.text)
                old |= prev
                # Let some traffic reach the new generation before the next reload.
                n = load.ok
                self.assertTrue(harness.wait_for(lambda: load.ok >= n + 8),
                                (i, load.summary(), self.logs()))
        finally:
            load.stop()
        failed = ("failed requests", load.summary(), "reloads at %s" % reloads_at, self.logs())
        self.assertTrue(spoad.alive(), self.logs())

        # Every old worker exits (bounded by the grace period, 10 s in config/spoad.yaml).
        def gone():
            s = sv.try_show_proc(self.sock)
            return s is not None and not s.has_old_section and sv.all_dead(old)
        self.assertTrue(harness.wait_for(gone, interval=0.2),
                        ("old workers left: %s" % [p for p in old if harness.pid_alive(p)],
                         sv.try_cli(self.sock, "show proc"), self.logs()))
        sp = sv.show_proc(self.sock)
        self.assertEqual(sp.master.reloads_field, "20 [failed: 0]", sp.text)
        self.assertEqual(sp.master.pid, spoad.pid)
        # Last, the traffic during the reloads (checked after the rest, which is deterministic).
        self.assertEqual(len(load.failures), 0, failed)
        self.assertTrue(all(v >= 20 for v in load.per_source.values()), load.summary())


BROKEN_CFG_AGENT_EXTRA = """    colour: red
"""

NEW_LIST = """      - name: inline-new
        score: 100
        entries: [198.18.0.99]
"""


class BrokenConfig(Base):
    """Acceptance 5: an invalid file changes nothing; fixed, it applies."""
    name = "reload-broken"

    def test_broken_then_fixed(self):
        port = harness.free_port()
        path = self.env.path("spoad.yaml")
        good = sv.config([sv.iprep_agent(port, 2)], socket_path=self.sock, grace="60s")
        self.env.write("spoad.yaml", good)
        spoad = self.env.spoad(path)
        sp0 = sv.wait_pool(self.sock, 2, proc=spoad)
        self.tracker.add_proc(sp0)
        self.assertIsNotNone(sp0, self.logs())
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)), self.logs())

        broken = good + BROKEN_CFG_AGENT_EXTRA
        line = broken.split("\n").index("    colour: red") + 1
        self.env.write("spoad.yaml", broken)
        out = sv.socat_cmd(self.sock, "reload")
        lines = out.split("\n")
        ctx = (out, self.logs())
        self.assertEqual(lines[0], "Success=0", ctx)
        self.assertEqual(lines[1], "--", ctx)
        expected = "%s:%d: agents[0].colour: unknown key" % (path, line)
        self.assertTrue(any(expected in x for x in lines[2:]), ("no %r" % expected, ctx))

        # Nothing changed: same workers, still serving.
        for _ in range(10):
            acts = sv.check_ip(port, "127.0.0.66")
            self.assertEqual((acts.get("txn.blocked"), acts.get("txn.list")), (True, "demo-drop"))
        sp = sv.show_proc(self.sock)
        self.assertEqual(sp.pids(), sp0.pids(), sp.text)
        self.assertEqual(sp.master.reloads_field, "0 [failed: 1]", sp.text)
        self.assertFalse(sp.has_old_section, sp.text)
        self.assertTrue(all(harness.pid_alive(p) for p in sp0.pids()))

        # SIGUSR2 with the same broken file: one more failure, nothing else.
        spoad.send_signal(signal.SIGUSR2)
        self.assertTrue(harness.wait_for(
            lambda: (sv.try_show_proc(self.sock) or sp).master.failed == 2), self.logs())
        sp = sv.show_proc(self.sock)
        self.assertEqual(sp.pids(), sp0.pids(), sp.text)
        self.assertEqual(sp.master.reloads_field, "0 [failed: 2]", sp.text)
        self.assertIn(expected, spoad.output(), "the failed reload is not logged")

        # Fixed (and changed: a new deny list): the reload succeeds and the file applies.
        acts = sv.check_ip(port, "198.18.0.99")
        self.assertEqual((acts.get("txn.blocked"), acts.get("txn.list")), (False, None), acts)
        fixed = good.replace("    deny:\n", "    deny:\n" + NEW_LIST)
        self.assertNotEqual(fixed, good)
        self.env.write("spoad.yaml", fixed)
        out = sv.socat_cmd(self.sock, "reload")
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        sp = sv.show_proc(self.sock)
        self.tracker.add_proc(sp)
        self.assertEqual(sp.master.reloads_field, "1 [failed: 2]", sp.text)
        self.assertEqual(len(sp.workers), 2, sp.text)
        self.assertFalse(sp.pids() & sp0.pids(), sp.text)
        for _ in range(10):
            acts = sv.check_ip(port, "198.18.0.99")
            self.assertEqual((acts.get("txn.blocked"), acts.get("txn.list")), (True, "inline-new"),
                             self.logs())
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(sp0.pids())), self.logs())


class OldWorkers(Base):
    """The old generation finishes its work, is visible meanwhile, then exits."""
    name = "reload-old"

    def stat(self, target):
        return json.loads(sv.cli(self.sock, "%s show stat json" % target))["echo"]

    def test_old_worker_finishes_notify_in_flight(self):
        port = harness.free_port()
        self.env.write("spoad.yaml", sv.config([sv.echo_agent(port, 1)], socket_path=self.sock,
                                               grace="60s"))
        spoad = self.env.spoad(self.env.path("spoad.yaml"))
        sp0 = sv.wait_pool(self.sock, 1, proc=spoad)
        self.tracker.add_proc(sp0)
        self.assertIsNotNone(sp0, self.logs())
        old = sp0.worker(1).pid
        # A NOTIFY in two fragments whose last one the test holds back: the old worker has a
        # NOTIFY to finish for as long as the test needs, whatever the machine's speed.
        payload = spop.message("m", [("x", "before"), ("delay_ms", 100)])
        first = spop.frame(spop.NOTIFY, payload[:8], 0, 5, 9)
        last = spop.frame(spop.UNSET, payload[8:], spop.FIN, 5, 9)
        c = spop.Client(("127.0.0.1", port))
        try:
            c.handshake()
            c.send(first)
            # The worker has read the first fragment (every byte we sent).
            sent = len(spop.hello()) + len(first)
            self.assertTrue(harness.wait_for(lambda: self.stat("@1")["bytes_in"] >= sent),
                            self.logs())
            out = sv.cli(self.sock, "reload")
            self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))

            out = sv.socat_cmd(self.sock, "show proc")
            sp = sv.ShowProc(out)
            self.tracker.add_proc(sp)
            self.assertIn("\n# old workers\n", out)
            self.assertEqual([r.pid for r in sp.old_workers], [old], out)
            self.assertEqual(sp.old_workers[0].type, "echo", out)
            self.assertEqual(sp.old_workers[0].reloads, 1, out)
            self.assertEqual(sp.old_workers[0].line, sp.old_workers[0].expected_line(), out)
            self.assertEqual(len(sp.workers), 1, out)
            self.assertNotEqual(sp.worker(1).pid, old, out)
            self.assertEqual(sp.worker(1).reloads, 0, out)
            self.assertEqual(sp.master.reloads_field, "1 [failed: 0]", out)
            self.assertEqual(sp.master.pid, spoad.pid)
            info = sv.parse_info(sv.cli(self.sock, "@!%d show info" % old))
            self.assertEqual(info.get("Pid"), str(old))
            self.assertEqual(info.get("CurrConns"), "1")
            # The new worker serves meanwhile.
            self.assertEqual(sv.echo_once(port)["txn.x"], "hello")

            # The last fragment: the old worker answers the NOTIFY (after its delay_ms)...
            c.send(last)
            f = c.recv_frame()
            self.assertIsNotNone(f, "closed before the ACK")
            self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 5, 9))
            self.assertEqual(f.actions()["txn.x"], "before")
            # ...then hands the connection to the new generation instead of closing it: no
            # DISCONNECT, and the next NOTIFY is answered by the new worker.
            self.assertTrue(harness.wait_for(lambda: not harness.pid_alive(old)), self.logs())
            c.send(spop.notify(7, 1, [("m", [("x", "after")])]))
            f = c.recv_frame()
            self.assertIsNotNone(f, "the handed-off connection was closed")
            self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 7, 1), f)
            self.assertEqual(f.actions()["txn.x"], "after")
            self.assertEqual(self.stat("@1")["adopted"], 1)
        finally:
            c.close()

        def gone():
            s = sv.try_show_proc(self.sock)
            return s is not None and not s.has_old_section and not harness.pid_alive(old)
        self.assertTrue(harness.wait_for(gone), (sv.try_cli(self.sock, "show proc"), self.logs()))
        self.assertNotIn("grace period over", spoad.output())


class ReloadDetails(Base):
    name = "reload-details"

    def test_reload_closes_the_connection_and_a_new_address_is_bound(self):
        port_a, port_b = harness.free_port(), harness.free_port()
        cfg = self.env.write("spoad.yaml", sv.config([sv.echo_agent(port_a, 2)],
                                                     socket_path=self.sock, grace="60s"))
        spoad = self.env.spoad(cfg)
        sp0 = sv.wait_pool(self.sock, 2, proc=spoad)
        self.tracker.add_proc(sp0)
        self.assertIsNotNone(sp0, self.logs())
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port_a)), self.logs())

        self.env.write("spoad.yaml", sv.config([sv.echo_agent(port_b, 2)], socket_path=self.sock,
                                               grace="60s"))
        s = sv.Session(self.sock)
        try:
            s.send("reload; show version")  # no EOF from us: the master closes
            self.assertTrue(s.closed_by_peer(), ("reload left the connection open", s.buf))
            out = s.buf.decode()
        finally:
            s.close()
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        self.assertNotIn(sv.spoad_version(), out.split("\n"), "a command after reload ran")

        self.assertEqual(sv.echo_once(port_b)["txn.x"], "hello", self.logs())
        self.assertTrue(harness.wait_for(lambda: not harness.port_open(port_a)),
                        ("the old address is still served", self.logs()))
        sp = sv.show_proc(self.sock)
        self.tracker.add_proc(sp)
        self.assertFalse(sp.pids() & sp0.pids(), sp.text)
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(sp0.pids())))

        # SIGHUP reloads as well.
        spoad.send_signal(signal.SIGHUP)
        sp2 = self.wait_generation(2, sp.pids(), 2)
        self.assertIsNotNone(sp2, self.logs())
        self.assertEqual(sv.echo_once(port_b)["txn.x"], "hello")



class HandOff(unittest.TestCase):
    """Connections survive reloads: old workers hand them to the new generation."""

    def test_many_connections_survive_reloads(self):
        env = harness.Env("handoff")
        self.addCleanup(env.stop)
        port = harness.free_port()
        sock = env.path("master.sock")
        env.spoad(env.write("spoad.yaml", """
cli:
  socket: %s
agents:
  - name: echo
    type: echo
    listen: 127.0.0.1:%d
    workers: 3
""" % (sock, port)))
        self.assertTrue(harness.wait_for(lambda: os.path.exists(sock) and harness.port_open(port)),
                        env.dump_logs())
        clients = [spop.Client(("127.0.0.1", port)) for _ in range(40)]
        for c in clients:
            c.handshake()
        sid = 1
        for r in range(5):
            # Traffic on every connection, then a reload while they are idle or busy.
            for c in clients:
                c.send(spop.notify(sid, 1, [("m", [("r", r)])]))
            for c in clients:
                f = c.recv_frame()
                self.assertIsNotNone(f, (r, env.dump_logs()[-3000:]))
                self.assertEqual((f.type, f.sid), (spop.ACK, sid), (r, f))
            sid += 2
            out = sv.cli(sock, "reload")
            self.assertEqual(out.split("\n")[0], "Success=1", out)
        for c in clients:
            c.send(spop.notify(sid, 1, [("m", [("last", 1)])]))
            f = c.recv_frame()
            self.assertIsNotNone(f, "a connection was lost at a reload")
            self.assertEqual(f.type, spop.ACK)
            c.close()
        adopted = sum(int(json.loads(sv.cli(sock, "@%d show stat json" % n))["echo"]["adopted"])
                      for n in (1, 2, 3))
        self.assertEqual(adopted, 40)

if __name__ == "__main__":
    unittest.main(verbosity=2)
