"""spoad's command line: --version, -c (config check), start-up failures, signals."""
import http.server
import os
import signal
import socket
import threading
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402


def run(*args, timeout=harness.GUARD_S):
    return subprocess.run([harness.SPOAD] + list(args), capture_output=True, text=True,
                          timeout=timeout)


class CommandLine(unittest.TestCase):
    def setUp(self):
        self.env = harness.Env("cmdline")
        self.addCleanup(self.env.stop)

    def test_version(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^spoad version \S+\n$")

    def test_check_valid_shipped_config(self):
        r = run("-c", "-f", os.path.join(harness.CONFIG_DIR, "spoad.yaml"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Configuration file is valid", r.stdout)

    def test_check_reports_file_line_and_key(self):
        cases = [
            ("agents:\n  - name: a\n    type: ip-checker\n    listen: 127.0.0.1:1\n"
             "    deny:\n      - name: d\n        score: 10\n        entries: [10.0.0.0/8]\n"
             "        colour: red\n",
             ":9: agents[0].deny[0].colour: unknown key"),
            ("agents:\n  - name: a\n    type: nope\n    listen: 127.0.0.1:1\n",
             ":3: agents[0].type: unknown agent type \"nope\""),
            ("agents:\n  - name: a\n    type: ip-checker\n    listen: 127.0.0.1:1\n"
             "    deny:\n      - name: d\n        score: 10\n        entries: [10.0.0.300/8]\n",
             ":8: agents[0].deny[0].entries: entry 1 \"10.0.0.300/8\""),
            ("agents:\n  - name: a\n  type: echo\n", "YAML syntax error"),
        ]
        for i, (text, expected) in enumerate(cases):
            with self.subTest(case=i):
                path = self.env.write("bad%d.yaml" % i, text)
                r = run("-c", "-f", path)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn(path, r.stderr)
                self.assertIn(expected, r.stderr)

    def test_check_loads_list_files(self):
        lst = self.env.write("drop.txt", "192.0.2.0/24 ; ok\nthis is not an address\n")
        path = self.env.write("cfg.yaml", "agents:\n  - name: a\n    type: ip-checker\n"
                              "    listen: 127.0.0.1:1\n    deny:\n      - name: drop\n"
                              "        score: 100\n        file: %s\n" % lst)
        r = run("-c", "-f", path)
        self.assertEqual(r.returncode, 1)
        self.assertIn(lst + ":2", r.stderr)

    def test_missing_file(self):
        r = run("-f", "/nonexistent/spoad.yaml")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/spoad.yaml: cannot open", r.stderr)

    def test_address_in_use_fails_start(self):
        port = harness.free_port()
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", port))  # bound without SO_REUSEPORT: spoad cannot share it
        s.listen()
        self.addCleanup(s.close)
        path = self.env.write("cfg.yaml", "agents:\n  - name: a\n    type: echo\n"
                              "    listen: 127.0.0.1:%d\n" % port)
        r = run("-f", path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot listen on 127.0.0.1:%d" % port, r.stderr)

    def test_sigterm_and_sigusr1_exit_cleanly(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            with self.subTest(signal=sig):
                port = harness.free_port()
                path = self.env.write("cfg.yaml", "global:\n  grace: 60s\nagents:\n  - name: a\n"
                                      "    type: echo\n    listen: 127.0.0.1:%d\n" % port)
                p = self.env.spoad(path, name="sig%d" % sig)
                self.assertTrue(harness.wait_for(lambda: harness.port_open(port)))
                c = spop.Client(("127.0.0.1", port))
                c.handshake()
                p.send_signal(sig)
                if sig == signal.SIGUSR1:
                    # Soft-stop: the idle connection gets AGENT-DISCONNECT status 0.
                    f = c.recv_frame()
                    self.assertEqual(f.type, spop.AGENT_DISCONNECT)
                    self.assertEqual(f.kv()["status-code"], 0)
                self.assertEqual(p.wait(), 0, p.output())
                if sig == signal.SIGUSR1:
                    # Done by itself: nothing waited for the grace period (60 s) to end.
                    self.assertNotIn("grace period over", p.output())
                    self.assertNotIn("SIGKILL", p.output())
                else:
                    self.assertIn("hard-stop", p.output())
                c.close()

    def soft_stop_with_notify_in_flight(self, delay_ms):
        """SIGUSR1 while a NOTIFY waits `delay_ms` for its ACK. Returns None if the ACK came
        before the soft-stop began (nothing shown: the caller tries again with a longer
        delay), else (the frames the connection got, spoad's exit status, its log)."""
        port = harness.free_port()
        sock = self.env.path("soft-%d.sock" % delay_ms)
        path = self.env.write("soft-%d.yaml" % delay_ms,
                              "global:\n  grace: 60s\ncli:\n  socket: %s\nagents:\n"
                              "  - name: a\n    type: echo\n    listen: 127.0.0.1:%d\n"
                              % (sock, port))
        p = self.env.spoad(path, name="soft-%d" % delay_ms)
        self.assertIsNotNone(sv.wait_pool(sock, 1, proc=p), p.output())
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)), p.output())
        c = spop.Client(("127.0.0.1", port))
        try:
            c.handshake()
            c.send(spop.notify(1, 1, [("m", [("delay_ms", delay_ms)])]))
            # The worker has read the NOTIFY...
            self.assertTrue(harness.wait_for(
                lambda: int(sv.worker_info(sock, 1)["CumNotify"]) >= 1), p.output())
            p.send_signal(signal.SIGUSR1)
            # ...and soft-stops: it closes its listener at once.
            self.assertTrue(harness.wait_for(lambda: not harness.port_open(port)),
                            "still accepting after SIGUSR1")
            c.sock.setblocking(False)
            try:
                early = c.sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                early = None
            c.sock.setblocking(True)
            c.sock.settimeout(harness.GUARD_S)
            frames = [c.recv_frame(), c.recv_frame()]
        finally:
            c.close()
        status = p.wait()
        return None if early is not None else (frames, status, p.output())

    def test_soft_stop_finishes_notifys_in_flight(self):
        # The ACK must still be pending when the listener closes; a machine too busy for that
        # gets a longer delay, never a failure.
        for delay_ms in (1000, 5000, 20000):
            got = self.soft_stop_with_notify_in_flight(delay_ms)
            if got is not None:
                break
        else:
            self.fail("the NOTIFY was answered before the soft-stop began, even with 20 s")
        frames, status, out = got
        self.assertEqual((frames[0].type, frames[0].sid), (spop.ACK, 1),  # answered
                         out)
        self.assertEqual(frames[1].type, spop.AGENT_DISCONNECT, out)  # then the connection closes
        self.assertEqual(frames[1].kv()["status-code"], 0)
        self.assertEqual(status, 0, out)
        self.assertNotIn("grace period over", out)

    def test_agent_acts_on_messages_until_the_last_connection_closes(self):
        """Under HAProxy's program reload an old spoad serves its connections until HAProxy
        closes them: the agent must still act on what they bring (here the mirror agent
        replays a request that arrives after the soft-stop began)."""
        got = []

        class Target(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                got.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
        threading.Thread(target=target.serve_forever, daemon=True).start()
        self.addCleanup(target.shutdown)
        port = harness.free_port()
        sock = self.env.path("master.sock")
        path = self.env.write("cfg.yaml", """
global:
  grace: 10s
  handover: 10s
cli:
  socket: %s
agents:
  - name: m
    type: mirror
    listen: 127.0.0.1:%d
    targets:
      - url: http://127.0.0.1:%d
""" % (sock, port, target.server_address[1]))
        env = {"HAPROXY_MWORKER": "1"}
        # The successor does not take the sockets over (global.takeover-timeout: 0, as a spoad
        # older than the takeover): the old one falls back to `wait` mode.
        new_path = self.env.write("new.yaml", open(path).read().replace(
            "global:\n", "global:\n  takeover-timeout: 0s\n"))
        old = self.env.spoad(path, env=env, name="old")
        self.assertTrue(harness.wait_for(lambda: os.path.exists(sock) and harness.port_open(port)),
                        old.output())
        c = spop.Client(("127.0.0.1", port))
        c.handshake()
        old.send_signal(signal.SIGUSR1)
        # The successor takes the control socket over: the old spoad soft-stops in wait mode.
        new = self.env.spoad(new_path, env=env, name="new")
        self.assertTrue(harness.wait_log(old, "the new spoad serves, without a takeover"),
                        old.output())
        # The old worker got its soft-stop: it no longer listens (the new one does).
        kids = harness.wait_for(lambda: harness.children(old.pid))
        self.assertEqual(len(kids), 1, old.output())
        self.assertTrue(harness.wait_for(lambda: not harness.pid_listens(kids[0], port)),
                        old.output())
        c.send(spop.notify(1, 1, [("mirror", [("arg_method", "GET"), ("arg_path", "/late")])]))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid), (spop.ACK, 1))
        self.assertTrue(harness.wait_for(lambda: got == ["/late"]), got)
        self.assertTrue(old.alive(), "the old spoad left with a connection open")
        c.close()
        self.assertEqual(old.wait(), 0, old.output())
        self.assertTrue(new.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
