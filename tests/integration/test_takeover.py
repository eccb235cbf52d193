"""Takeover between spoad instances, and the master's ownership of the listening sockets.

- spoad A serves SPOP connections sending NOTIFYs without pause; spoad B starts with the same
  file (same cli.socket): B takes A's listening sockets (same inodes, the unix socket file
  included), A hands every connection to B and exits 0; every NOTIFY got its ACK, no
  connection saw an AGENT-DISCONNECT or a close, new connections opened meanwhile were all
  served, and B's workers adopted the connections. Twice: B started by hand, and under
  HAProxy's program reload order (HAPROXY_MWORKER, SIGUSR1 to A first).
- spoad's own `reload` and a worker's crash and respawn keep the listening sockets (inodes).
- A SIGSTOPped predecessor: B logs why it falls back to binding beside it and serves; A, once
  SIGCONT'd, keeps running and both stop cleanly.
- A reload from 3 workers to 1: the one worker accepts on all three sockets.

Nothing here measures speed: each step waits for its event (a log line, a CLI answer, a
counter, a pid gone), with harness.GUARD_S as a guard against a hang.
"""
import json
import os
import signal
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402


class Traffic:
    """`n` SPOP connections, one thread each, sending a NOTIFY and reading its ACK in a loop
    until stop(); plus one thread opening short connections (HELLO, NOTIFY, ACK, HAPROXY-
    DISCONNECT) one after the other. Every unexpected frame or close is recorded."""

    def __init__(self, port, n):
        self.port = port
        self.n = n
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.acks = [0] * n
        self.sent = [0] * n
        self.short_ok = 0
        self.problems = []
        self.threads = []

    def start(self):
        clients = []
        for _ in range(self.n):
            c = spop.Client(("127.0.0.1", self.port))
            c.handshake()
            clients.append(c)
        for i, c in enumerate(clients):
            t = threading.Thread(target=self._run, args=(i, c), daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._short, daemon=True)
        t.start()
        self.threads.append(t)

    def _problem(self, what):
        with self.lock:
            self.problems.append(what)

    def _run(self, i, c):
        sid = 1
        try:
            while not self.stopping.is_set():
                c.send(spop.notify(sid, 1, [("m", [("x", "n%d" % sid)])]))
                self.sent[i] += 1
                f = c.recv_frame()
                if f is None:
                    self._problem("connection %d closed after %d ACKs" % (i, self.acks[i]))
                    return
                if f.type != spop.ACK or (f.sid, f.fid) != (sid, 1):
                    self._problem("connection %d: %r instead of the ACK of %d" % (i, f, sid))
                    return
                if f.actions().get("txn.x") != "n%d" % sid:
                    self._problem("connection %d: wrong ACK %r" % (i, f.actions()))
                    return
                self.acks[i] += 1
                sid += 1
        except OSError as e:
            self._problem("connection %d: %s" % (i, e))
        finally:
            c.close()

    def _short(self):
        while not self.stopping.is_set():
            try:
                c = spop.Client(("127.0.0.1", self.port))
                try:
                    c.handshake()
                    c.send(spop.notify(1, 1, [("m", [("x", "short")])]))
                    f = c.recv_frame()
                    if f is None or f.type != spop.ACK:
                        self._problem("short connection: %r instead of an ACK" % (f,))
                        return
                    c.send(spop.disconnect())
                    with self.lock:
                        self.short_ok += 1
                finally:
                    c.close()
            except (OSError, AssertionError) as e:
                self._problem("short connection: %r" % (e,))
                return

    def total(self):
        return sum(self.acks)

    def progressed_past(self, marks):
        """True once every long connection has more ACKs than in `marks` (and is still
        fine)."""
        return all(a > m for a, m in zip(self.acks, marks))

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(harness.GUARD_S)


class Base(unittest.TestCase):
    name = "takeover"

    def setUp(self):
        self.env = harness.Env(self.name)
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = self.env.path("master.sock")
        self.port = harness.free_port()
        self.unix_path = self.env.path("echo.sock")

    def write_config(self, workers=2, unix=True, handover=None):
        agents = [sv.echo_agent(self.port, workers)]
        if unix:
            agents.append(sv.echo_agent("unix:" + self.unix_path, 1, name="echo-unix"))
        text = sv.config(agents, socket_path=self.sock, grace="60s")
        if handover:
            text = text.replace("global:\n", "global:\n  handover: %s\n" % handover)
        return self.env.write("spoad.yaml", text)

    def start(self, cfg, n, name="spoad", env=None):
        p = self.env.spoad(cfg, name=name, env=env)
        sp = sv.wait_pool(self.sock, n, proc=p)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, "the pool did not start:\n" + self.logs())
        self.assertEqual(sp.master.pid, p.pid, self.logs())
        return p, sp

    def logs(self):
        return sv.tail_logs(self.env, 8000)

    def stat(self, target, agent="echo"):
        return json.loads(sv.cli(self.sock, "%s show stat json" % target))[agent]


class Takeover(Base):
    """A new spoad takes the sockets and the connections of the running one."""

    def run_takeover(self, mworker):
        # global.handover only guards against a hang here: B must start within it.
        cfg = self.write_config(handover="60s")
        env = {"HAPROXY_MWORKER": "1"} if mworker else None
        a, sp_a = self.start(cfg, 3, name="spoad-a", env=env)
        inodes = harness._listening_inodes(self.port)
        self.assertEqual(len(inodes), 2, inodes)
        unix_inode = os.stat(self.unix_path).st_ino

        traffic = Traffic(self.port, 8)
        traffic.start()
        self.addCleanup(traffic.stop)
        self.assertTrue(harness.wait_for(lambda: traffic.progressed_past([0] * 8)
                                         or traffic.problems), self.logs())
        if mworker:
            # HAProxy's program reload: SIGUSR1 to the old spoad, the new one starts.
            a.send_signal(signal.SIGUSR1)
            self.assertTrue(harness.wait_log(a, "serving until the new spoad serves"), self.logs())
        b = self.env.spoad(cfg, name="spoad-b", env=env)
        self.assertTrue(harness.wait_log(b, "took 3 listening sockets from spoad pid %d" % a.pid),
                        self.logs())
        # A hands its connections over once B serves, then leaves: status 0.
        self.assertEqual(a.wait(), 0, self.logs())
        self.assertIn("takeover: spoad pid %d serves" % b.pid, a.output())
        marks = list(traffic.acks)
        self.assertTrue(harness.wait_for(lambda: traffic.progressed_past(marks)
                                         or traffic.problems), self.logs())
        short_before = traffic.short_ok
        self.assertTrue(harness.wait_for(lambda: traffic.short_ok > short_before
                                         or traffic.problems), self.logs())
        traffic.stop()
        self.assertEqual(traffic.problems, [], self.logs())
        self.assertEqual(traffic.sent, traffic.acks)
        self.assertGreater(traffic.short_ok, 0)

        # The same listening sockets, now B's; the unix socket file is still there, the same.
        self.assertEqual(harness._listening_inodes(self.port), inodes)
        self.assertEqual(os.stat(self.unix_path).st_ino, unix_inode)
        sp_b = sv.wait_pool(self.sock, 3, proc=b)
        self.tracker.add_proc(sp_b)
        self.assertIsNotNone(sp_b, self.logs())
        self.assertEqual(sp_b.master.pid, b.pid)
        self.assertFalse(sp_b.pids() & sp_a.pids())
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(sp_a.pids())), self.logs())
        for w in sp_b.workers:
            self.assertTrue(harness.pid_listens(w.pid, self.port) or w.type == "echo-unix", w)
        # B's workers adopted A's 8 long connections (and no DISCONNECT went out anywhere).
        adopted = sum(int(self.stat("@%d" % r)["adopted"]) for r in (1, 2))
        self.assertGreaterEqual(adopted, 8, self.logs())  # and the short ones caught then
        self.assertEqual(sv.echo_once(self.unix_path)["txn.x"], "hello")
        self.assertNotIn("grace period over", a.output())
        self.assertEqual(b.stop(), 0, self.logs())

    def test_new_spoad_started_beside_a_running_one(self):
        self.run_takeover(mworker=False)

    def test_haproxy_program_reload_order(self):
        self.run_takeover(mworker=True)


class Sockets(Base):
    name = "takeover-sockets"

    def test_reload_and_respawn_keep_the_sockets(self):
        cfg = self.write_config()
        p, sp = self.start(cfg, 3)
        inodes = harness._listening_inodes(self.port)
        unix_inode = os.stat(self.unix_path).st_ino
        self.assertEqual(len(inodes), 2)
        out = sv.cli(self.sock, "reload")
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        sp2 = sv.wait_pool(self.sock, 3, exclude=sp.pids(), proc=p)
        self.tracker.add_proc(sp2)
        self.assertIsNotNone(sp2, self.logs())
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(sp.pids())))
        self.assertEqual(harness._listening_inodes(self.port), inodes)
        self.assertEqual(os.stat(self.unix_path).st_ino, unix_inode)
        # The workers never bind: each holds one of the master's sockets.
        for w in sp2.workers:
            if w.type == "echo":
                self.assertTrue(harness.pid_listens(w.pid, self.port), w)

        # A worker dies; its replacement polls the same socket.
        victim = sp2.worker(1).pid
        os.kill(victim, signal.SIGKILL)
        sp3 = sv.wait_pool(self.sock, 3, exclude={victim}, proc=p)
        self.tracker.add_proc(sp3)
        self.assertIsNotNone(sp3, self.logs())
        self.assertEqual(harness._listening_inodes(self.port), inodes)
        self.assertTrue(harness.pid_listens(sp3.worker(1).pid, self.port))
        for _ in range(20):
            self.assertEqual(sv.echo_once(self.port)["txn.x"], "hello")
        self.assertEqual(p.stop(), 0)

    def test_shrinking_pool_accepts_on_every_socket(self):
        cfg = self.write_config(workers=3, unix=False)
        p, sp = self.start(cfg, 3)
        inodes = harness._listening_inodes(self.port)
        self.assertEqual(len(inodes), 3)
        self.write_config(workers=1, unix=False)
        out = sv.cli(self.sock, "reload")
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        sp2 = sv.wait_pool(self.sock, 1, exclude=sp.pids(), proc=p)
        self.tracker.add_proc(sp2)
        self.assertIsNotNone(sp2, self.logs())
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(sp.pids())))
        self.assertEqual(harness._listening_inodes(self.port), inodes)
        # The one worker holds all three sockets; connections the kernel puts on any of them
        # are served.
        w = sp2.worker(1).pid
        held = set()
        for fd in os.listdir("/proc/%d/fd" % w):
            try:
                t = os.readlink("/proc/%d/fd/%s" % (w, fd))
            except OSError:
                continue
            if t.startswith("socket:[") and t[8:-1] in inodes:
                held.add(t[8:-1])
        self.assertEqual(held, inodes)
        clients = [spop.Client(("127.0.0.1", self.port)) for _ in range(60)]
        try:
            for c in clients:
                c.handshake()
            for i, c in enumerate(clients):
                c.send(spop.notify(1, 1, [("m", [("x", "c%d" % i)])]))
            for i, c in enumerate(clients):
                f = c.recv_frame()
                self.assertIsNotNone(f)
                self.assertEqual(f.actions()["txn.x"], "c%d" % i)
        finally:
            for c in clients:
                c.close()
        self.assertEqual(p.stop(), 0)


class Fallback(Base):
    name = "takeover-fallback"

    def test_stopped_predecessor(self):
        cfg = self.env.write("spoad.yaml", sv.config([sv.echo_agent(self.port, 2)],
                                                     socket_path=self.sock, grace="60s")
                             .replace("global:\n", "global:\n  takeover-timeout: 1s\n"))
        a, sp_a = self.start(cfg, 2, name="spoad-a")
        a.send_signal(signal.SIGSTOP)
        self.addCleanup(lambda: a.send_signal(signal.SIGCONT))
        b = self.env.spoad(cfg, name="spoad-b")
        self.assertTrue(harness.wait_log(
            b, "cannot take the listening sockets over from the running spoad: spoad pid %d did "
               "not answer" % a.pid), self.logs())
        self.assertIn("binding new ones beside it (SO_REUSEPORT)", b.output())
        sp_b = sv.wait_pool(self.sock, 2, proc=b)
        self.tracker.add_proc(sp_b)
        self.assertIsNotNone(sp_b, self.logs())
        self.assertEqual(sp_b.master.pid, b.pid)
        self.assertEqual(len(harness._listening_inodes(self.port)), 4)

        a.send_signal(signal.SIGCONT)
        # A reads B's abandoned request, finds nobody, and keeps serving.
        self.assertTrue(harness.wait_log(a, "left before it served; we keep serving"),
                        self.logs())
        self.assertTrue(a.alive() and b.alive())
        self.assertTrue(all(harness.pid_alive(x) for x in sp_a.pids() | sp_b.pids()))
        for _ in range(20):
            self.assertEqual(sv.echo_once(self.port)["txn.x"], "hello")
        self.assertEqual(a.stop(), 0, self.logs())
        self.assertEqual(b.stop(), 0, self.logs())


if __name__ == "__main__":
    unittest.main(verbosity=2)
