"""Budgets of the data path, against a real spoad over real sockets.

- max-reassembly-bytes: many connections send fragmented NOTIFYs at once. The bytes a worker
  holds in reassembly stay under the budget (its own counter, and its RSS), the connections
  whose fragment does not fit get AGENT-DISCONNECT status 13 ("resource allocation error",
  SPOE.txt 3.5) and are closed, the others complete their NOTIFY, connections opened before
  and after are served, and the bytes are given back.
- max-connections: beyond it, a new connection waits in the backlog (counted, logged) and is
  served as soon as another closes.
- accept errors: with the worker out of file descriptors (its RLIMIT_NOFILE lowered with
  prlimit), accept fails with EMFILE: the worker logs it with the error name, counts it, backs
  off, leaves the new connections waiting in the backlog rather than closing them, and serves
  them and any new one once descriptors are free again.

Every wait is for an event (a frame, a log line, a counter) with harness.GUARD_S as a guard
against a hang; nothing sleeps to synchronise and no duration is bounded from above.
"""
import hashlib
import os
import resource
import select
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
ST_TIMEOUT, ST_TOO_BIG, ST_RESOURCE = 2, 3, 13


class Spoad:
    """One spoad with a master CLI and the given agent blocks."""

    def __init__(self, name, agents):
        self.env = harness.Env(name)
        self.sock = self.env.path("master.sock")
        cfg = self.env.write("spoad.yaml", sv.config(agents, socket_path=self.sock))
        self.proc = self.env.spoad(cfg)
        self.pool = sv.wait_pool(self.sock, 1, proc=self.proc)
        if self.pool is None:
            self.env.stop()
            raise RuntimeError("spoad did not start")
        self.worker = self.pool.workers[0]

    def stat(self, agent):
        """The agent's row of `show stat json` in its worker."""
        return sv.load_json(sv.cli(self.sock, "@%d show stat json" % self.worker.rel))[agent]

    def stat_text(self, agent):
        """The agent's row of `show stat` (CSV) as a dict of strings."""
        lines = sv.cli(self.sock, "@%d show stat" % self.worker.rel).strip("\n").split("\n")
        assert lines[0].startswith("# "), lines
        keys = lines[0][2:].split(",")
        for line in lines[1:]:
            row = dict(zip(keys, line.split(",")))
            if row.get("agent") == agent:
                return row
        raise AssertionError("no row for %s in %r" % (agent, lines))

    def log(self):
        return self.proc.output()

    def stop(self):
        self.env.stop()


def fragments(sid, payload, size, fin=True):
    """The frames of a NOTIFY carrying `payload`, split into fragments of `size` bytes (SPOE.txt
    3.2.4 as HAProxy 2.6 sends them: NOTIFY without FIN, then UNSET frames, FIN on the last)."""
    parts = [payload[i:i + size] for i in range(0, len(payload), size)]
    out = []
    for i, p in enumerate(parts):
        last = fin and i == len(parts) - 1
        out.append(spop.frame(spop.NOTIFY if i == 0 else spop.UNSET, p, spop.FIN if last else 0, sid, 1))
    return out


def served(c, sid):
    """True if a NOTIFY on client `c` gets its ACK with the echoed argument."""
    c.send(spop.notify(sid, 1, [("check", [("n", sid)])]))
    f = c.recv_frame()
    return f is not None and f.type == spop.ACK and f.sid == sid and f.actions().get("txn.n") == sid


class ReassemblyBudget(unittest.TestCase):
    N = 50                 # flooding connections
    BUDGET = 2 * MIB       # max-reassembly-bytes
    MAX_FRAGMENTED = 1 * MIB
    CHUNK = 16000          # fragment payload (HAProxy's frame size is 16380)
    PHASE1 = 14            # fragments each flooder sends before any finishes: 224 kB each

    @classmethod
    def setUpClass(cls):
        cls.port = harness.free_port()
        cls.sp = Spoad("budget-reasm", [sv.echo_agent(cls.port, workers=1, name="frag", extra="""\
    max-fragmented-size: %d
    max-reassembly-bytes: %d
    timeout:
      fragment: 10m  # the flood may be slow on a loaded machine; tested on its own below
""" % (cls.MAX_FRAGMENTED, cls.BUDGET))])

    @classmethod
    def tearDownClass(cls):
        cls.sp.stop()

    def client(self):
        c = spop.Client(("127.0.0.1", self.port))
        self.addCleanup(c.close)
        return c

    def test_fragment_flood_is_held_to_the_budget(self):
        sp = self.sp
        before = sp.stat("frag")
        rss_before = harness.rss_kib(sp.worker.pid)
        # The worker's memory may grow by the budget, the read buffers of the connections
        # (one frame each at most) and allocator slack; without the budget, the flood below
        # would hold N x 224 kB (11 MiB) in phase 1 and up to N x 1 MiB after.
        bound_kib = rss_before + (self.BUDGET + (self.N + 2) * 64 * KIB + 6 * MIB) // KIB

        innocent = self.client()
        innocent.handshake()
        self.assertTrue(served(innocent, 1))

        blob = os.urandom(self.MAX_FRAGMENTED - 4 * KIB)
        payload = spop.message("frag", [("data", blob)])
        flooders = []
        for i in range(self.N):
            c = self.client()
            c.handshake(capabilities="pipelining,fragmentation")
            sid = 1001 + 2 * i
            flooders.append({"c": c, "frames": fragments(sid, payload, self.CHUNK), "sent": 0,
                             "outcome": None})
        self.assertGreater(len(flooders[0]["frames"]), self.PHASE1 + 1)

        peak_rss = [rss_before]

        def sample():
            peak_rss[0] = max(peak_rss[0], harness.rss_kib(sp.worker.pid))

        def send(f, frames_):
            for fr in frames_:
                try:
                    f["c"].send(fr)
                    f["sent"] += 1
                except (BrokenPipeError, ConnectionResetError):
                    return  # refused and closed: its DISCONNECT is read below
                sample()

        # Phase 1: every flooder starts its NOTIFY and holds it open; together they need
        # 50 x 256 KiB (their buffers), far more than the budget, whatever the order.
        for f in flooders:
            send(f, f["frames"][:self.PHASE1])
        # Phase 2: each sends the rest, FIN on the last fragment, in parallel.
        threads = [threading.Thread(target=send, args=(f, f["frames"][self.PHASE1:]), daemon=True)
                   for f in flooders]
        for t in threads:
            t.start()
        # Every flooder ends with an event: the ACK of its whole NOTIFY, or AGENT-DISCONNECT.
        want_sha = hashlib.sha256(blob).hexdigest()
        for f in flooders:
            fr = f["c"].recv_frame()
            sample()
            if fr is None:
                f["outcome"] = "closed without a frame"
            elif fr.type == spop.ACK:
                a = fr.actions()
                ok = a.get("txn.data_len") == len(blob) and a.get("txn.data_sha256") == want_sha
                f["outcome"] = "ack" if ok else "bad ack %r" % a
            elif fr.type == spop.AGENT_DISCONNECT:
                f["outcome"] = fr.kv()["status-code"]
                self.assertTrue(f["c"].closed(), "not closed after its AGENT-DISCONNECT")
            else:
                f["outcome"] = "unexpected %r" % fr
        for t in threads:
            t.join(harness.GUARD_S)
        outcomes = {}
        for f in flooders:
            outcomes[f["outcome"]] = outcomes.get(f["outcome"], 0) + 1
        print("flood outcomes %s; worker RSS %d KiB before, peak %d KiB, bound %d KiB"
              % (outcomes, rss_before, peak_rss[0], bound_kib))
        self.assertEqual(set(outcomes) - {"ack", ST_RESOURCE}, set(), outcomes)
        self.assertGreater(outcomes.get(ST_RESOURCE, 0), 0, outcomes)
        self.assertGreater(outcomes.get("ack", 0), 0, outcomes)

        # The budget held: by the worker's own count and by its memory.
        after = sp.stat("frag")
        self.assertLessEqual(after["reassembly_bytes_max"], self.BUDGET, after)
        self.assertEqual(after["reassembly_limit"], self.BUDGET)
        self.assertEqual(after["reassembly_refused"] - before["reassembly_refused"],
                         outcomes[ST_RESOURCE], after)
        self.assertEqual(after["disconnect_resource"] - before["disconnect_resource"],
                         outcomes[ST_RESOURCE], after)
        self.assertLessEqual(peak_rss[0], bound_kib)
        # Every byte was given back once the NOTIFYs were done.
        self.assertEqual(after["reassembly_bytes"], 0, after)
        self.assertEqual(sp.stat_text("frag")["reassembly_refused"], str(after["reassembly_refused"]))
        self.assertLessEqual(harness.rss_kib(sp.worker.pid), bound_kib)
        # The log says what happened, rate-limited (at most 5 such lines a second).
        self.assertIn("the reassembly budget is used up", sp.log())

        # The connection opened before is still served, and so is a new one, fragments included.
        self.assertTrue(served(innocent, 3))
        late = self.client()
        late.handshake(capabilities="pipelining,fragmentation")
        for fr in fragments(7, payload, self.CHUNK):
            late.send(fr)
        ack = late.recv_frame()
        self.assertEqual((ack.type, ack.sid), (spop.ACK, 7))
        self.assertEqual(ack.actions()["txn.data_sha256"], want_sha)
        self.assertTrue(served(late, 9))
        self.assertTrue(sp.proc.alive())

    def test_partial_notify_is_closed_after_the_fragment_timeout(self):
        # An agent of its own with a short timeout.fragment: a NOTIFY left half-sent ends in
        # AGENT-DISCONNECT status 2 and its bytes are given back; the counter says why.
        port = harness.free_port()
        sp = Spoad("budget-fragtimeout", [sv.echo_agent(port, workers=1, name="slow", extra="""\
    timeout:
      fragment: 300ms
""")])
        self.addCleanup(sp.stop)
        c = spop.Client(("127.0.0.1", port))
        self.addCleanup(c.close)
        c.handshake(capabilities="pipelining,fragmentation")
        payload = spop.message("frag", [("data", b"z" * 50000)])
        for fr in fragments(5, payload, self.CHUNK, fin=False)[:2]:
            c.send(fr)
        f = c.recv_frame()
        self.assertIsNotNone(f)
        self.assertEqual(f.type, spop.AGENT_DISCONNECT, f)
        self.assertEqual(f.kv()["status-code"], ST_TIMEOUT, f.kv())
        self.assertTrue(c.closed())
        st = sp.stat("slow")
        self.assertEqual(st["fragment_timeouts"], 1, st)
        self.assertEqual(st["reassembly_bytes"], 0, st)
        other = spop.Client(("127.0.0.1", port))
        self.addCleanup(other.close)
        other.handshake()
        self.assertTrue(served(other, 1))


class MaxConnections(unittest.TestCase):
    LIMIT = 3

    def test_connections_beyond_the_limit_wait_and_are_served_later(self):
        port = harness.free_port()
        sp = Spoad("budget-maxconn", [sv.echo_agent(port, workers=1, name="few", extra="""\
    max-connections: %d
""" % self.LIMIT)])
        self.addCleanup(sp.stop)
        first = []
        for i in range(self.LIMIT):
            c = spop.Client(("127.0.0.1", port))
            self.addCleanup(c.close)
            c.handshake()
            first.append(c)
        # One more: the kernel completes its handshake, but spoad does not accept it yet.
        extra = spop.Client(("127.0.0.1", port))
        self.addCleanup(extra.close)
        extra.send(spop.hello())
        self.assertTrue(harness.wait_for(lambda: sp.stat("few")["max_conn_reached"] >= 1),
                        sp.stat("few"))
        self.assertTrue(harness.wait_log(sp.proc, "max-connections (%d) reached" % self.LIMIT))
        st = sp.stat("few")
        self.assertEqual(st["applets"], self.LIMIT, st)
        self.assertEqual(st["max_connections"], self.LIMIT, st)
        self.assertEqual(sp.stat_text("few")["max_conn_reached"], str(st["max_conn_reached"]))
        r, _, _ = select.select([extra.sock], [], [], 0)
        self.assertEqual(r, [], "served beyond max-connections")
        # One closes: the waiting one is accepted and served.
        first[0].close()
        f = extra.recv_frame()
        self.assertIsNotNone(f)
        self.assertEqual(f.type, spop.AGENT_HELLO, f)
        self.assertTrue(served(extra, 1))
        self.assertTrue(served(first[1], 1))


class AcceptErrors(unittest.TestCase):
    def test_emfile_is_logged_counted_and_recovered_from(self):
        port = harness.free_port()
        sp = Spoad("budget-emfile", [sv.echo_agent(port, workers=1, name="fds")])
        self.addCleanup(sp.stop)
        pid = sp.worker.pid
        # Leave the worker a few descriptors: its soft RLIMIT_NOFILE becomes what it uses now
        # plus 4 (fds already open above the limit stay valid).
        used = len(os.listdir("/proc/%d/fd" % pid))
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 4, hard))
        self.addCleanup(lambda: harness.pid_alive(pid) and
                        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard)))

        served_ = []
        waiting = []
        for i in range(256):
            c = spop.Client(("127.0.0.1", port))
            self.addCleanup(c.close)
            c.send(spop.hello())
            # Either spoad answers this one, or it could not accept it and says so.
            ready = harness.wait_for(
                lambda: select.select([c.sock], [], [], 0)[0] or "accept on" in sp.log())
            self.assertTrue(ready, "neither an AGENT-HELLO nor an accept error")
            if select.select([c.sock], [], [], 0)[0]:
                f = c.recv_frame()
                self.assertEqual(f.type, spop.AGENT_HELLO, f)
                served_.append(c)
            else:
                waiting.append(c)
                break
        self.assertEqual(len(waiting), 1, "no accept error after %d connections" % len(served_))
        for i in range(2):  # more clients while out of descriptors: they wait too
            c = spop.Client(("127.0.0.1", port))
            self.addCleanup(c.close)
            c.send(spop.hello())
            waiting.append(c)

        self.assertTrue(harness.wait_log(sp.proc, "failed: EMFILE (too many open files)"), sp.log())
        self.assertTrue(harness.wait_for(lambda: sp.stat("fds")["accept_errors"] >= 1))
        st = sp.stat("fds")
        # Out of descriptors, the worker holds at most 4 connections and the others wait. (A
        # retry may have taken one waiting client since, when a descriptor was free again:
        # the first accept error can come from a descriptor the worker held for a moment.)
        self.assertLessEqual(st["applets"], 4, st)
        self.assertLess(st["applets"], len(served_) + len(waiting), st)
        self.assertEqual(sp.stat_text("fds")["accept_errors"], str(sp.stat("fds")["accept_errors"]))
        # Nothing was accepted and closed behind our back: a waiting client's socket is silent,
        # or holds its AGENT-HELLO if a retry took it; never an end of stream.
        for c in waiting:
            if select.select([c.sock], [], [], 0)[0]:
                self.assertNotEqual(c.sock.recv(1, socket.MSG_PEEK), b"", "a waiting client was closed")
        print("worker with %d fds, limit %d: %d connections served, accept_errors=%d"
              % (used, used + 4, len(served_), st["accept_errors"]))

        # Descriptors come back: the waiting clients are served, then a new one.
        for c in served_:
            c.close()
        for c in waiting:
            f = c.recv_frame()
            self.assertIsNotNone(f, "a waiting client was closed")
            self.assertEqual(f.type, spop.AGENT_HELLO, f)
            self.assertTrue(served(c, 1))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        c = spop.Client(("127.0.0.1", port))
        self.addCleanup(c.close)
        c.handshake()
        self.assertTrue(served(c, 1))
        self.assertTrue(sp.proc.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
