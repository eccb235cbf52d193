"""spoa-bench against a real spoad (echo agent) and against small misbehaving agents.

The figures spoa-bench prints are checked for consistency, never against a speed: on a busy
machine they are only smaller. Its --timeout is generous except where timeouts are the
subject, and there the agent never answers in time.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402


def run_bench(*args, timeout=None):
    """Runs spoa-bench; returns (exit status, stdout, stderr)."""
    p = subprocess.run([harness.SPOA_BENCH] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=timeout or harness.GUARD_S + 60)
    return p.returncode, p.stdout, p.stderr


class Peer(spop.Client):
    """The agent side of an accepted connection, reusing the test client's frame reader."""

    def __init__(self, sock):  # pylint: disable=super-init-not-called
        self.sock = sock
        self.sock.settimeout(harness.GUARD_S)
        self.buf = b""


class FakeAgent:
    """A tiny SPOA on a thread: answers each HAPROXY-HELLO with `reply` (bytes), then records
    the next frame the client sends (or None if it closes) in `after_hello`, and closes."""

    def __init__(self, reply):
        self.reply = reply
        self.after_hello = []
        self.hellos = []
        self.lock = threading.Lock()
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.threads = []
        self.stopping = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        peer = Peer(conn)
        try:
            hello = peer.recv_frame()
            with self.lock:
                self.hellos.append(hello)
            peer.send(self.reply)
            try:
                nxt = peer.recv_frame()
            except (socket.timeout, OSError):
                nxt = None
            with self.lock:
                self.after_hello.append(nxt)
        finally:
            conn.close()

    def stop(self):
        self.stopping = True
        self.srv.close()
        for t in self.threads:
            t.join(harness.GUARD_S)


GUARD = ("--timeout", harness.GUARD_S)  # spoa-bench's wait for each ACK: a guard only


class BenchAgainstSpoad(unittest.TestCase):
    """One spoad for every case (none changes it)."""

    @classmethod
    def setUpClass(cls):
        cls.env = harness.Env("bench")
        cls.port = harness.free_port()
        cls.slow_port = harness.free_port()
        cls.sock = cls.env.path("echo.sock")
        cfg = cls.env.write("spoad.yaml", """
agents:
  - name: echo
    type: echo
    listen: 127.0.0.1:%d
  - name: slow
    type: echo
    listen: 127.0.0.1:%d
    delay: 60s
  - name: unix
    type: echo
    listen: unix:%s
""" % (cls.port, cls.slow_port, cls.sock))
        cls.spoad = cls.env.spoad(cfg)
        if not harness.wait_for(lambda: harness.port_open(cls.port)
                                and harness.port_open(cls.slow_port)
                                and os.path.exists(cls.sock)):
            logs = cls.env.dump_logs()
            cls.env.stop()
            raise RuntimeError("spoad did not start:\n" + logs)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def tearDown(self):
        self.assertTrue(self.spoad.alive(), self.env.dump_logs())

    def test_pipelined_run(self):
        rc, out, err = run_bench("-a", "127.0.0.1:%d" % self.port, "-c", 4, "-d", 16, "-t", 3,
                                 "--warmup", 0.5, *GUARD, "--json")
        self.assertEqual(rc, 0, err + self.env.dump_logs())
        r = json.loads(out)
        self.assertGreater(r["acks"], 0)
        self.assertEqual(r["acks"], r["sent"])
        self.assertEqual(r["errors"]["total"], 0, r["errors"])
        self.assertTrue(all(v == 0 for v in r["errors"].values()), r["errors"])
        self.assertEqual(r["connections_ready"], 4)
        self.assertGreater(r["frames_per_s"], 0)
        self.assertGreaterEqual(r["elapsed_s"], 2.9)
        lat = r["latency_us"]
        self.assertLessEqual(lat["min"], lat["p50"])
        self.assertLessEqual(lat["p50"], lat["p99"])
        self.assertLessEqual(lat["p99"], lat["max"])
        self.assertGreater(r["warmup"]["acks"], 0)
        self.assertFalse(r["interrupted"])

    def test_requests_stops_after_exactly_n(self):
        for n in (1, 7, 1000):
            rc, out, err = run_bench("-a", "127.0.0.1:%d" % self.port, "-c", 4, "-d", 16,
                                     "--requests", n, "--warmup", 0, *GUARD, "--json")
            self.assertEqual(rc, 0, err)
            r = json.loads(out)
            self.assertEqual(r["acks"], n, r)
            self.assertEqual(r["sent"], n, r)
            self.assertEqual(r["errors"]["total"], 0, r)

    def test_unix_socket_and_arguments(self):
        rc, out, err = run_bench("-a", "unix:" + self.sock, "-c", 2, "-d", 4, "--requests", 200,
                                 "--warmup", 0, "--random-ip", "--arg", "ip=ipv4:10.0.0.1",
                                 "--arg", "v6=ipv6:2001:db8::1", "--arg", "s=str:a:b=c",
                                 "--arg", "n=int64:-5", "--arg", "ok=bool:true",
                                 "--arg", "b=bin:00ff10", "--arg", "=null", *GUARD, "--json")
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertEqual((r["acks"], r["errors"]["total"], r["arguments"]), (200, 0, 7))

    def test_timeouts_are_counted(self):
        # The agent holds each ACK 60 s. spoa-bench (--timeout 1) runs until SIGINT, sent
        # once it has reported the timeouts of the first 4 NOTIFYs.
        p = subprocess.Popen([harness.SPOA_BENCH, "-a", "127.0.0.1:%d" % self.slow_port,
                              "-c", "1", "-d", "4", "-t", "0", "--warmup", "0", "--timeout", "1",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        guard = threading.Timer(harness.GUARD_S, p.kill)
        guard.start()
        try:
            seen, expired = [], 0
            for line in p.stderr:
                seen.append(line)
                m = re.search(r": timeout: (\d+) NOTIFY", line)
                expired += int(m.group(1)) if m else 0
                if expired >= 4:
                    break
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=harness.GUARD_S)
        finally:
            guard.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
        err = "".join(seen) + err
        self.assertEqual(p.returncode, 1, out + err)
        r = json.loads(out)
        self.assertTrue(r["interrupted"], r)
        self.assertGreaterEqual(r["errors"]["timeout"], 4, r)
        self.assertEqual(r["errors"]["total"], r["errors"]["timeout"], r)
        self.assertEqual(r["acks"], 0)
        self.assertIn("timeout", err)

    def test_text_output(self):
        rc, out, err = run_bench("-a", "127.0.0.1:%d" % self.port, "-c", 1, "-d", 1,
                                 "--requests", 50, "--warmup", 0, *GUARD)
        self.assertEqual(rc, 0, err)
        self.assertIn("50 of 50 NOTIFYs", out)
        self.assertIn("p99", out)
        self.assertIn("errors:    none", out)


class BenchErrors(unittest.TestCase):
    def test_agent_disconnect_on_hello(self):
        reply = spop.frame(spop.AGENT_DISCONNECT, spop.kv([
            ("status-code", spop.Typed(spop.T_UINT32, 13)), ("message", "go away")]))
        agent = FakeAgent(reply)
        try:
            rc, out, err = run_bench("-a", "127.0.0.1:%d" % agent.port, "-c", 3, "-t", 1,
                                     "--warmup", 0, "--json")
        finally:
            agent.stop()
        self.assertEqual(rc, 1, out + err)
        r = json.loads(out)
        self.assertEqual(r["errors"]["agent_disconnect"], 3, r)
        self.assertEqual(r["errors"]["total"], 3, r)
        self.assertEqual(r["agent_disconnect_status"], {"13": 3})
        self.assertEqual(r["acks"], 0)
        # The HELLOs were HAProxy's: version 2.0, pipelining, a UUID engine-id.
        self.assertEqual(len(agent.hellos), 3)
        h = agent.hellos[0]
        self.assertEqual((h.type, h.flags, h.sid, h.fid), (spop.HAPROXY_HELLO, spop.FIN, 0, 0))
        kv = h.kv()
        self.assertEqual(kv["supported-versions"], "2.0")
        self.assertEqual(kv["max-frame-size"], 16380)
        self.assertEqual(kv["capabilities"], "pipelining")
        self.assertEqual(len(kv["engine-id"]), 36)

    def test_wrong_version_rejected(self):
        reply = spop.frame(spop.AGENT_HELLO, spop.kv([
            ("version", "1.0"), ("max-frame-size", spop.Typed(spop.T_UINT32, 16380)),
            ("capabilities", "pipelining")]))
        agent = FakeAgent(reply)
        try:
            rc, out, err = run_bench("-a", "127.0.0.1:%d" % agent.port, "-c", 2, "-t", 1,
                                     "--warmup", 0, "--json")
        finally:
            agent.stop()
        self.assertEqual(rc, 1, out + err)
        r = json.loads(out)
        self.assertEqual(r["errors"]["hello_rejected"], 2, r)
        self.assertEqual(r["errors"]["total"], 2, r)
        self.assertIn("HELLO rejected", err)
        # As HAProxy, spoa-bench says HAPROXY-DISCONNECT with status 8 (unsupported version).
        self.assertEqual(len(agent.after_hello), 2)
        for f in agent.after_hello:
            self.assertIsNotNone(f)
            self.assertEqual(f.type, spop.HAPROXY_DISCONNECT)
            self.assertEqual(f.kv()["status-code"], 8)

    def test_connect_failure(self):
        rc, out, err = run_bench("-a", "127.0.0.1:%d" % harness.free_port(), "-c", 2, "-t", 1,
                                 "--json")
        self.assertEqual(rc, 1, out + err)
        self.assertEqual(json.loads(out)["errors"]["connect_failed"], 2)

    def test_usage_errors(self):
        for args in ([], ["-a", "nowhere"], ["-a", "127.0.0.1:1", "--arg", "x=float:1"],
                     ["-a", "127.0.0.1:1", "--arg", "x=ipv4:1.2.3"], ["-a", "127.0.0.1:1", "-c", 0]):
            rc, _, err = run_bench(*args)
            self.assertEqual(rc, 2, (args, err))


if __name__ == "__main__":
    unittest.main(verbosity=2)
