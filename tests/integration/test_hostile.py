"""Hostile peers against a real spoad: real sockets, a real master with real worker processes.

Around every attack (class Guard):
- every process survives: the master and the same worker pids in `show proc` before and after;
- every connection that did nothing wrong is still served: innocent connections, at least one
  on each worker of the attacked agents, complete their HELLO before the attack, stay open
  through it and do NOTIFY/ACK afterwards; a fresh connection does too;
- RSS (VmRSS) of the master and of each worker stays within the case's budget; the figures
  before and after (and the peak, where sampled) are printed on lines starting with "RSS";
- what spoad logged meanwhile (stderr of every process) holds no raw control byte (ESC, CR,
  NUL, ...), nothing that is not UTF-8, and no line forged by a peer.

Cases (SPOE.txt section 3; status codes as in lib/spop/types.h):
 1. non-UTF-8 and control bytes (NUL, ESC, CR, LF, 0xff, overlong C0 80, surrogate ED A0 80,
    F5) in every string field of every frame type: HAPROXY-HELLO (supported-versions,
    capabilities, engine-id, unknown keys, key names), NOTIFY (message names, argument names,
    STRING and BINARY values), HAPROXY-DISCONNECT (message), frames of unknown types; and in
    the arguments the real agents read: ip-checker, tracing (file exporter: every exported line
    must be strict UTF-8 JSON), mirror (target down, so replays fail and are logged);
 2. many silent connections: closed by the hello timeout (AGENT-DISCONNECT 2), counted, while
    a well-behaved connection keeps getting ACKs;
 3. a reader that never reads: NOTIFYs until the kernel buffers fill. spoad stops reading the
    connection once 256 KiB of output are pending (back-pressure: lib/runtime/connection.cpp
    kMaxPendingOutput), and since nothing is read any more, the idle timeout closes it; the
    worker's RSS stays bounded and others are served meanwhile;
 4. fragment floods: 50 connections each sending endless fragments of one NOTIFY; the
    per-worker reassembly budget (REASSEMBLY_KEY) disconnects them, RSS stays under budget;
 5. huge attributes with the collector down: tracing with an OTLP/HTTP exporter pointed at a
    closed port, 200 NOTIFYs with a 1 MiB uri; the queue's byte budget (TRACING_QUEUE_KEY)
    bounds RSS;
 6. lying frames: FRAME-LENGTH 0xffffffff or above max-frame-size, a 3-byte frame, 3 bytes
    then close, varints that never end, NB-ARGS 255 without arguments.
"""
import hashlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402
from spop import Typed  # noqa: E402

KIB = 1024
MIB = 1024 * 1024

# Budget config keys (runtime: reassembly bytes per worker, lib/config/config.cpp; tracing
# exporter: queue bytes, agents/tracing/exporter.cpp). A spoad that rejects them fails cases 4
# and 5, which then run without the key to show the growth.
REASSEMBLY_KEY = "max-reassembly-bytes"
REASSEMBLY_BUDGET = 8 * MIB
TRACING_QUEUE_KEY = "max-queue-bytes"
# Below what 200 NOTIFYs leave queued even with attributes capped (about 2 MB): the budget must
# act, not only the caps.
TRACING_QUEUE_BUDGET = 1 * MIB

# RSS growth allowed to a process during a case without a byte budget of its own (cases 1, 2,
# 3, 6), and the margin over a byte budget (allocator slack, read buffers, libcurl).
RSS_SLACK = 16 * MIB
RSS_MARGIN = 32 * MIB

# The hostile values. "lf" and "all" try to forge a log line (checked: no log line may start
# with "INJECTED").
BAD = [
    ("nul", b"\x00"),
    ("esc", b"\x1b[31m"),
    ("cr", b"\r"),
    ("lf", b"\nINJECTED"),
    ("ff", b"\xff"),
    ("overlong", b"\xc0\x80"),
    ("surrogate", b"\xed\xa0\x80"),
    ("f5", b"\xf5\x80\x80\x80"),
    ("all", b"\x00\x1b[2J\r\nINJECTED 2099-01-01T00:00:00.000 [1] spoad info: forged\xff"
            b"\xc0\x80\xed\xa0\x80\xf5"),
]

# Status codes, SPOE.txt 3.5 (lib/spop/types.h)
ST_NORMAL, ST_TIMEOUT, ST_TOO_BIG, ST_INVALID = 0, 2, 3, 4
ST_NO_VERSION, ST_NO_FRAME_SIZE, ST_NO_CAPABILITIES, ST_BAD_VERSION = 5, 6, 7, 8
ST_RESOURCE = 13

RSS_REPORT = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Checks on what spoad logged

_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def log_problems(data):
    """What is wrong in log bytes `data`: raw control bytes (other than LF and TAB), bytes that
    are not strict UTF-8 (0xff, overlong forms, surrogates, F5...), lines forged by a peer."""
    out = []
    for m in list(_CONTROL.finditer(data))[:5]:
        out.append("raw control byte %r in the log: %r" % (
            m.group(), data[max(0, m.start() - 150):m.start() + 40]))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        out.append("log is not UTF-8 at byte %d: %r" % (e.start, data[max(0, e.start - 150):e.start + 40]))
    for line in data.split(b"\n"):
        if line.startswith(b"INJECTED"):
            out.append("log line forged by a peer: %r" % line[:200])
    return out


def json_string_problems(obj, where):
    """Strings in a parsed JSON value that are not Unicode scalar values (a lone surrogate
    escaped as \\ud800 is valid JSON syntax, but no strict collector accepts it)."""
    out = []

    def walk(v):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                out.append("%s: string with a lone surrogate: %r" % (where, v[:120]))
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(obj)
    return out


# --------------------------------------------------------------------------------------------
# Peers


def now_us():
    return int(time.time() * 1e6)


def hdrs_bin(headers):
    """req.hdrs_bin: <str:name><str:value>... then an empty name and value."""
    out = b""
    for n, v in headers:
        out += spop.varint(len(n)) + n + spop.varint(len(v)) + v
    return out + b"\x00\x00"


def mirror_args(method=b"GET", path=b"/innocent", headers=((b"host", b"example"),), body=b""):
    return [("arg_method", Typed(spop.T_STR, method)), ("arg_path", Typed(spop.T_STR, path)),
            ("arg_ver", Typed(spop.T_STR, b"1.1")),
            ("arg_hdrs", Typed(spop.T_BIN, hdrs_bin(list(headers)))),
            ("arg_body", Typed(spop.T_BIN, body))]


def probe(kind, sid):
    """The messages of one well-formed NOTIFY for an agent of type `kind`, and a check of the
    ACK's actions (raw: bytes names)."""
    if kind == "echo":
        return [("check", [("n", sid)])], lambda a: a.get(b"txn.n") == sid
    if kind == "ip-checker":
        return ([("check-client-ip", [("ip", Typed(spop.T_IPV4, "127.0.0.66"))])],
                lambda a: a.get(b"sess.ip_score") == 100 and a.get(b"txn.blocked") is True)
    if kind == "tracing":
        return ([("trace-frontend-http-request", [("now", Typed(spop.T_INT64, now_us()))])],
                lambda a: len(a.get(b"txn.ctx", b"")) == 66)
    if kind == "mirror":
        return [("mirror", mirror_args())], lambda a: a == {}
    raise ValueError(kind)


def read_frame(c):
    """The next frame, None if the agent closed (EOF or reset); AssertionError on no answer."""
    try:
        return c.recv_frame()
    except (ConnectionResetError, BrokenPipeError):
        return None
    except socket.timeout:
        raise AssertionError("no frame from spoad within %.0f s" % c.sock.gettimeout())


class Innocent:
    """A well-behaved connection: HELLO at once, then one NOTIFY/ACK per probe()."""

    def __init__(self, port, kind, capabilities=b"pipelining", timeout=harness.GUARD_S):
        self.port, self.kind = port, kind
        self.c = spop.Client(("127.0.0.1", port), timeout=timeout)
        self.c.send(spop.hello_from(spop.hello_items(capabilities=capabilities)))
        f = read_frame(self.c)
        if f is None or f.type != spop.AGENT_HELLO:
            raise AssertionError("innocent HELLO on port %d got %r" % (port, f))
        self.agent_hello = spop.parse_kv_raw(f.payload)
        self.sid = 1
        self.rel = None

    def probe(self):
        """(True, "") or (False, why)."""
        sid = self.sid
        self.sid += 2
        msgs, check = probe(self.kind, sid)
        try:
            self.c.send(spop.notify(sid, 1, msgs))
            f = read_frame(self.c)
        except (OSError, AssertionError) as e:
            return False, "%s connection (worker %s): %s: %s" % (self.kind, self.rel, type(e).__name__, e)
        if f is None:
            return False, "%s connection (worker %s): closed by spoad" % (self.kind, self.rel)
        if f.type != spop.ACK or f.sid != sid or not check(spop.parse_actions_raw(f.payload)):
            return False, "%s connection (worker %s): bad answer %r %r" % (
                self.kind, self.rel, f, f.payload[:200])
        return True, ""

    def close(self):
        self.c.close()


class Busy(threading.Thread):
    """An innocent connection doing NOTIFY/ACK over and over until stop(); counts the NOTIFYs
    it sent and the ACKs it got."""

    def __init__(self, port, kind="echo"):
        super().__init__(daemon=True)
        self.inn = Innocent(port, kind)
        self.acks = 0
        self.sent = 0
        self.errors = []
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.sent += 1
            ok, why = self.inn.probe()
            if not ok:
                self.errors.append(why)
                return
            self.acks += 1
            self.stop_ev.wait(0.003)  # pacing, not synchronisation: leave CPU to spoad

    def stop(self):
        self.stop_ev.set()
        self.join(30)


# --------------------------------------------------------------------------------------------
# spoad


def spoad_check(cfg_path):
    """`spoad -c -f FILE`: (exit status, output)."""
    r = subprocess.run([harness.SPOAD, "-c", "-f", cfg_path], capture_output=True, timeout=harness.GUARD_S)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


class Spoad:
    """A master and its workers, with its master CLI and its log."""

    def __init__(self, name, agents, n_workers, log_level="debug"):
        self.env = harness.Env("hostile-" + name)
        self.tracker = sv.Tracker()
        self.sock = self.env.path("master.sock")
        self.cfg = self.env.write("spoad.yaml", sv.config(agents, socket_path=self.sock, grace="1s",
                                                          log_level=log_level))
        self.proc = self.env.spoad(self.cfg)
        sp = sv.wait_pool(self.sock, n_workers, timeout=harness.GUARD_S, proc=self.proc)
        self.tracker.add_proc(sp)
        if sp is None:
            out = self.env.dump_logs()
            self.stop()
            raise RuntimeError("spoad did not start:\n" + out)
        self.n_workers = n_workers

    def stop(self):
        self.env.stop()
        self.tracker.cleanup()

    def pool(self):
        sp = sv.wait_pool(self.sock, self.n_workers, timeout=harness.GUARD_S, proc=self.proc)
        self.tracker.add_proc(sp)
        return sp

    def show_proc(self):
        sp = sv.show_proc(self.sock)
        self.tracker.add_proc(sp)
        return sp

    def workers(self, agent):
        return sorted((r for r in self.show_proc().workers if r.type == agent), key=lambda r: r.rel)

    def stat(self, rel, agent):
        return sv.load_json(sv.cli(self.sock, "@%d show stat json" % rel))[agent]

    def total(self, agent, key, stats=False):
        """The sum over the agent's workers of a `show stat json` field (or, with stats=True,
        of one of the agent's own counters)."""
        n = 0
        for r in self.workers(agent):
            s = self.stat(r.rel, agent)
            n += (s["agent_stats"] if stats else s).get(key, 0)
        return n

    def log_size(self):
        return os.path.getsize(self.env.procs[0].log_path)

    def log_bytes(self, start=0):
        self.env.procs[0].log.flush()
        with open(self.env.procs[0].log_path, "rb") as f:
            f.seek(start)
            return f.read()

    def rss(self, agents):
        """{label: (pid, KiB)} for the master and the workers of `agents`."""
        sp = self.show_proc()
        out = {"master": (sp.master.pid, harness.rss_kib(sp.master.pid))}
        for r in sp.workers:
            if r.type in agents:
                try:
                    out["%s@%d" % (r.type, r.rel)] = (r.pid, harness.rss_kib(r.pid))
                except OSError:
                    out["%s@%d" % (r.type, r.rel)] = (r.pid, 0)
        return out


def innocents_on_every_worker(sp, agent, port, kind):
    """Opens innocent connections until each worker of `agent` holds one (SO_REUSEPORT spreads
    them; cum_conns tells which worker took each). Returns them, each with .rel set."""
    rels = [r.rel for r in sp.workers(agent)]

    def cum():
        return {rel: sp.stat(rel, agent)["cum_conns"] for rel in rels}
    prev = cum()
    opened, covered = [], set()
    for _ in range(48):
        inn = Innocent(port, kind)
        opened.append(inn)
        now = harness.wait_for(lambda: (lambda c: c if sum(c.values()) > sum(prev.values()) else None)(cum()))
        assert now, "cum_conns of %s did not count a new connection" % agent
        inn.rel = [rel for rel in rels if now[rel] > prev[rel]][0]
        covered.add(inn.rel)
        prev = now
        if covered == set(rels):
            return opened
    raise AssertionError("48 connections to %s did not reach every worker %s" % (agent, rels))


class Guard:
    """What must hold around an attack on some agents of a Spoad; see the module doc."""

    def __init__(self, test, sp, case, targets, rss_budget=RSS_SLACK, innocents=True):
        """targets: [(agent name, port, agent type)]. rss_budget: allowed growth in bytes."""
        self.test, self.sp, self.case, self.targets = test, sp, case, targets
        self.rss_budget = rss_budget
        self.want_innocents = innocents
        self.innocents = []
        self.peak = {}

    def begin(self):
        pool = self.sp.pool()
        self.test.assertIsNotNone(pool, "the pool is not complete before the case:\n" + self.sp.env.dump_logs())
        self.master = pool.master.pid
        self.pids = {r.pid for r in pool.workers}
        if self.want_innocents:
            for agent, port, kind in self.targets:
                self.innocents += innocents_on_every_worker(self.sp, agent, port, kind)
        self.log_start = self.sp.log_size()
        self.rss_before = self.sp.rss({t[0] for t in self.targets})
        return self

    def sample(self):
        """Records the current RSS of the processes seen at begin() (0 for one that is gone)
        into the peaks; returns {label: (pid, KiB)}."""
        now = {}
        for k, (pid, _) in self.rss_before.items():
            try:
                now[k] = (pid, harness.rss_kib(pid))
            except OSError:
                now[k] = (pid, 0)
        for k, (_, kib) in now.items():
            self.peak[k] = max(self.peak.get(k, 0), kib)
        return now

    def end(self, extra_problems=()):
        problems = list(extra_problems)
        sp = self.sp.show_proc()
        if sp.master.pid != self.master:
            problems.append("master changed: %d -> %d" % (self.master, sp.master.pid))
        after_pids = {r.pid for r in sp.workers}
        if after_pids != self.pids:
            problems.append("workers died or were replaced: before %s, after %s" % (
                sorted(self.pids), sorted(after_pids)))
        for inn in self.innocents:
            ok, why = inn.probe()
            if not ok:
                problems.append("innocent connection opened before the attack: " + why)
            inn.close()
        for agent, port, kind in self.targets:
            try:
                fresh = Innocent(port, kind)
                ok, why = fresh.probe()
                fresh.close()
            except (OSError, AssertionError) as e:
                ok, why = False, "%s: %s" % (type(e).__name__, e)
            if not ok:
                problems.append("fresh connection to %s after the attack: %s" % (agent, why))
        after = self.sample()
        for k, (pid, kib) in after.items():
            before = self.rss_before.get(k, (pid, 0))[1]
            peak = self.peak.get(k, kib)
            limit = before + self.rss_budget // KIB
            line = "RSS %-22s %-12s pid %-7d before %7d KiB  after %7d KiB  peak %7d KiB  limit %7d KiB" % (
                self.case, k, pid, before, kib, peak, limit)
            log(line)
            RSS_REPORT.append(line)
            if max(kib, peak) > limit and before:
                problems.append("RSS of %s (pid %d) reached %d KiB, above %d KiB (before %d KiB + %d KiB)" % (
                    k, pid, max(kib, peak), limit, before, self.rss_budget // KIB))
        problems += log_problems(self.sp.log_bytes(self.log_start))
        if problems:
            self.test.fail("%s:\n  %s\n--- spoad log (end) ---\n%s" % (
                self.case, "\n  ".join(problems), self.sp.log_bytes()[-6000:].decode("utf-8", "replace")))


def expect(test, c, want, label):
    """Reads spoad's answer on `c`: want is "hello", ("disconnect", status) or "ack"."""
    f = read_frame(c)
    if want == "hello":
        test.assertIsNotNone(f, "%s: closed instead of AGENT-HELLO" % label)
        test.assertEqual(f.type, spop.AGENT_HELLO, "%s: %r %r" % (label, f, f.payload[:200]))
        return spop.parse_kv_raw(f.payload)
    kind, status = want
    assert kind == "disconnect"
    test.assertIsNotNone(f, "%s: closed without AGENT-DISCONNECT" % label)
    kv = spop.parse_kv_raw(f.payload)
    test.assertEqual((f.type, kv.get(b"status-code")), (spop.AGENT_DISCONNECT, status),
                     "%s: %r %r" % (label, f, kv))
    test.assertEqual((f.sid, f.fid, f.flags), (0, 0, spop.FIN), label)
    test.assertTrue(c.closed(harness.GUARD_S), "%s: spoad did not close after its AGENT-DISCONNECT" % label)
    return kv


def works(test, c, label, kind="echo", sid=1):
    """One well-formed NOTIFY/ACK (see probe()) on an established connection `c`."""
    msgs, check = probe(kind, sid)
    c.send(spop.notify(sid, 1, msgs))
    f = read_frame(c)
    test.assertIsNotNone(f, "%s: connection closed instead of ACK" % label)
    test.assertEqual((f.type, f.sid), (spop.ACK, sid), label)
    acts = spop.parse_actions_raw(f.payload)
    test.assertTrue(check(acts), "%s: %r" % (label, acts))


def first_frame_of(buf):
    """(frame type, status-code) of the first frame in `buf`, or a description of what is
    there instead."""
    if len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        return ("no complete frame", buf[:40])
    body = buf[4:4 + struct.unpack(">I", buf[:4])[0]]
    if body[0] != spop.AGENT_DISCONNECT:
        return ("frame type %d" % body[0], body[:40])
    sid_fid = body[5:7]
    if sid_fid != b"\x00\x00":
        return ("AGENT-DISCONNECT with ids", body[:40])
    return (spop.AGENT_DISCONNECT, spop.parse_kv_raw(body[7:]).get(b"status-code"))


def client(port, timeout=harness.GUARD_S):
    return spop.Client(("127.0.0.1", port), timeout=timeout)


def tearDownModule():
    if RSS_REPORT:
        log("\n===== RSS per case (VmRSS) =====\n" + "\n".join(RSS_REPORT))


# --------------------------------------------------------------------------------------------
# Cases 1, 2, 3 and 6: one spoad with every agent type


class Hostile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ports = {n: harness.free_port() for n in ("echo", "iprep", "tracing", "mirror", "silent", "slow")}
        cls.closed_port = harness.free_port()  # nobody listens: the mirror's target
        cls.traces_env = harness.Env("hostile-traces")  # a directory for the exported file
        cls.traces = cls.traces_env.path("traces.jsonl")
        p = cls.ports
        agents = [
            sv.echo_agent(p["echo"], 2),
            sv.iprep_agent(p["iprep"], 1),
            """  - name: tracing
    type: tracing
    listen: 127.0.0.1:%d
    workers: 1
    exporter:
      type: file
      file: %s
      flush-interval: 100ms
""" % (p["tracing"], cls.traces),
            """  - name: mirror
    type: mirror
    listen: 127.0.0.1:%d
    workers: 1
    targets:
      - url: http://127.0.0.1:%d
    connect-timeout: 1s
    replay-timeout: 2s
""" % (p["mirror"], cls.closed_port),
            sv.echo_agent(p["silent"], 2, name="silent", extra="    timeout:\n      hello: 1s\n"),
            sv.echo_agent(p["slow"], 1, name="slow", extra="    timeout:\n      idle: 2s\n"),
        ]
        try:
            cls.sp = Spoad("main", agents, 8)
        except Exception:
            cls.traces_env.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.sp.stop()
        cls.traces_env.stop()

    def guard(self, case, targets, **kw):
        return Guard(self, self.sp, case, targets, **kw).begin()

    # ---- case 1: hostile bytes in every string field ---------------------------------------

    def test_1a_hello_fields(self):
        # The HELLO is the runtime's, but each agent's workers take it (and report engine-ids
        # to the master): every agent type gets every case.
        targets = [("echo", self.ports["echo"], "echo"), ("iprep", self.ports["iprep"], "ip-checker"),
                   ("tracing", self.ports["tracing"], "tracing"), ("mirror", self.ports["mirror"], "mirror")]
        g = self.guard("1a HELLO fields", targets)
        items = spop.hello_items()

        def with_value(key, value):
            return [(k, Typed(spop.T_STR, value) if k == key else v) for k, v in items]

        def renamed(key, new):
            return [(new if k == key else k, v) for k, v in items]
        # Issue 8, defect 1: this engine-id aborted the worker.
        cases = [("engine-id 0xff", with_value(b"engine-id", b"\xff"), "hello")]
        for label, bad in BAD:
            cases += [
                ("supported-versions '2.0,<%s>'" % label, with_value(b"supported-versions", b"2.0," + bad), "hello"),
                ("supported-versions '<%s>'" % label, with_value(b"supported-versions", b"x" + bad),
                 ("disconnect", ST_BAD_VERSION)),
                ("capabilities 'pipelining,<%s>'" % label, with_value(b"capabilities", b"pipelining," + bad), "hello"),
                ("capabilities '<%s>'" % label, with_value(b"capabilities", bad), "hello"),
                ("engine-id '<%s>'" % label, with_value(b"engine-id", b"TAGE-" + label.encode() + bad), "hello"),
                ("unknown key '<%s>'" % label, items + [(b"x-" + bad, Typed(spop.T_STR, bad)),
                                                        (bad, Typed(spop.T_BIN, bad))], "hello"),
                ("key 'supported-versions<%s>'" % label, renamed(b"supported-versions", b"supported-versions" + bad),
                 ("disconnect", ST_NO_VERSION)),
                ("key 'max-frame-size<%s>'" % label, renamed(b"max-frame-size", b"max-frame-size" + bad),
                 ("disconnect", ST_NO_FRAME_SIZE)),
                ("key 'capabilities<%s>'" % label, renamed(b"capabilities", b"capabilities" + bad),
                 ("disconnect", ST_NO_CAPABILITIES)),
                ("key 'engine-id<%s>'" % label, renamed(b"engine-id", b"engine-id" + bad), "hello"),
            ]
        for agent, port, kind in targets:
            for label, hello_items, want in cases:
                label = "%s: %s" % (agent, label)
                with self.subTest(label):
                    c = client(port)
                    try:
                        c.send(spop.hello_from(hello_items))
                        kv = expect(self, c, want, label)
                        if want == "hello":
                            self.assertEqual(kv.get(b"version"), b"2.0", label)
                            if "capabilities 'pipelining" in label:
                                self.assertIn(b"pipelining", kv.get(b"capabilities", b"").split(b","), label)
                            works(self, c, label, kind)  # the worker that took the HELLO still serves
                    finally:
                        c.close()
        g.end()
        self.assertIn(b"TAGE-", self.sp.log_bytes(g.log_start),
                      "the HELLO's engine-id is not in the debug log (escaped) any more")

    def test_1b_notify_fields(self):
        port = self.ports["echo"]
        g = self.guard("1b NOTIFY fields (echo)", [("echo", port, "echo")])
        for label, bad in BAD:
            name = b"m-" + bad
            argname = b"a-" + bad
            sval = b"s-" + bad
            bval = bad + bytes(range(256))
            cases = [
                ("message name <%s>" % label, [(name, [("x", 1)])],
                 lambda a, name=name: a.get(b"txn.msg") == name),
                ("argument name <%s>" % label, [("m", [(argname, 7)])],
                 lambda a, argname=argname: a.get(b"txn." + argname) == 7),
                ("STRING value <%s>" % label, [("m", [("s", Typed(spop.T_STR, sval))])],
                 lambda a, sval=sval: a.get(b"txn.s") == sval and a.get(b"txn.s_len") == len(sval)
                 and a.get(b"txn.s_sha256") == hashlib.sha256(sval).hexdigest().encode()
                 and a.get(b"txn.s_type") == b"str"),
                ("BINARY value <%s>" % label, [("m", [("b", Typed(spop.T_BIN, bval))])],
                 lambda a, bval=bval: a.get(b"txn.b") == bval
                 and a.get(b"txn.b_sha256") == hashlib.sha256(bval).hexdigest().encode()),
            ]
            for what, msgs, check in cases:
                with self.subTest(what):
                    c = client(port)
                    try:
                        c.handshake()
                        c.send(spop.notify(5, 9, msgs))
                        f = read_frame(c)
                        self.assertIsNotNone(f, "%s: closed instead of ACK" % what)
                        self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 5, 9), what)
                        acts = spop.parse_actions_raw(f.payload)
                        self.assertTrue(check(acts), "%s: %r" % (what, acts))
                    finally:
                        c.close()
        g.end()

    def test_1c_disconnect_message(self):
        port = self.ports["echo"]
        g = self.guard("1c HAPROXY-DISCONNECT", [("echo", port, "echo")])
        for label, bad in BAD:
            msg = b"TAGD-" + label.encode() + b"-" + bad
            for after_hello, status in ((True, 1), (True, 0), (False, 0), (False, 7)):
                what = "DISCONNECT status %d message <%s> %s HELLO" % (
                    status, label, "after" if after_hello else "before")
                with self.subTest(what):
                    c = client(port)
                    try:
                        if after_hello:
                            c.handshake()
                        c.send(spop.raw_disconnect(status, msg))
                        # SPOE.txt 3.2.8/3.2.9: AGENT-DISCONNECT in reply, then close.
                        expect(self, c, ("disconnect", ST_NORMAL), what)
                    finally:
                        c.close()
        g.end()
        self.assertIn(b"TAGD-", self.sp.log_bytes(g.log_start),
                      "a HAPROXY-DISCONNECT's message is not in the log (escaped) any more")

    def test_1d_unknown_frame_types(self):
        port = self.ports["echo"]
        g = self.guard("1d unknown frame types", [("echo", port, "echo")])
        for label, bad in BAD:
            payload = spop.kv([(b"k-" + bad, Typed(spop.T_STR, bad)), (bad, Typed(spop.T_BIN, bad))]) + bad
            for ftype in (4, 42, 100, 104, 200, 255):
                for after_hello in (False, True):
                    what = "frame type %d <%s> %s HELLO" % (ftype, label, "after" if after_hello else "before")
                    with self.subTest(what):
                        c = client(port)
                        try:
                            if after_hello:
                                c.handshake()
                            # SPOE.txt 3.2.2: unknown frames may be silently skipped.
                            c.send(spop.frame(ftype, payload, spop.FIN, 3, 4))
                            if not after_hello:
                                c.send(spop.hello())
                                expect(self, c, "hello", what)
                            works(self, c, what)
                        finally:
                            c.close()
        g.end()

    def test_1e_ip_checker(self):
        port = self.ports["iprep"]
        g = self.guard("1e ip-checker", [("iprep", port, "ip-checker")])
        bad0 = self.sp.total("iprep", "bad_argument", stats=True)
        ign0 = self.sp.total("iprep", "ignored_messages", stats=True)
        n_bad = n_ign = 0
        hit = {b"sess.ip_score": 100, b"txn.blocked": True, b"txn.list": b"demo-drop"}
        for label, bad in BAD:
            only_space = bad.strip(b" \t\r\n\v\f") == b""
            cases = [
                # Spaces (and CR, LF, tabs) around an address are ignored (README); nothing else.
                ("ip STRING '127.0.0.66<%s>'" % label, [("check-client-ip", [("ip", Typed(spop.T_STR, b"127.0.0.66" + bad))])],
                 hit if only_space else {}),
                ("ip STRING '<%s>'" % label, [("check-client-ip", [("ip", Typed(spop.T_STR, bad))])], {}),
                ("ip BINARY '<%s>'" % label, [("check-client-ip", [("ip", Typed(spop.T_BIN, bad))])], {}),
                # No argument named "ip": the first argument is used (README).
                ("argument name 'ip<%s>'" % label, [("check-client-ip", [(b"ip" + bad, Typed(spop.T_IPV4, "127.0.0.66"))])],
                 hit),
                ("message name 'check-client-ip<%s>'" % label,
                 [(b"check-client-ip" + bad, [("ip", Typed(spop.T_IPV4, "127.0.0.66"))])], {}),
            ]
            n_bad += 2 if only_space else 3
            n_ign += 1
            for what, msgs, want in cases:
                with self.subTest(what):
                    c = client(port)
                    try:
                        c.handshake()
                        c.send(spop.notify(1, 1, msgs))
                        f = read_frame(c)
                        self.assertIsNotNone(f, "%s: closed instead of ACK" % what)
                        self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 1, 1), what)
                        self.assertEqual(spop.parse_actions_raw(f.payload), want, what)
                    finally:
                        c.close()
        self.assertEqual(self.sp.total("iprep", "bad_argument", stats=True) - bad0, n_bad)
        self.assertEqual(self.sp.total("iprep", "ignored_messages", stats=True) - ign0, n_ign)
        g.end()

    def test_1f_tracing(self):
        port = self.ports["tracing"]
        g = self.guard("1f tracing (file exporter)", [("tracing", port, "tracing")])
        bad0 = self.sp.total("tracing", "bad_messages", stats=True)
        trace_ids = []
        c = client(port)
        self.addCleanup(c.close)
        c.handshake()
        sid = [1]

        def notify(msgs, label):
            s = sid[0]
            sid[0] += 2
            c.send(spop.notify(s, 1, msgs))
            f = read_frame(c)
            self.assertIsNotNone(f, "%s: closed instead of ACK" % label)
            self.assertEqual((f.type, f.sid), (spop.ACK, s), label)
            return spop.parse_actions_raw(f.payload)

        def now():
            return ("now", Typed(spop.T_INT64, now_us()))
        n_bad = 0
        for label, bad in BAD:
            with self.subTest("unknown message <%s>" % label):
                self.assertEqual(notify([(b"TAGT-" + label.encode() + bad, [now()])], label), {})
                n_bad += 1
            with self.subTest("argument name 'now<%s>'" % label):
                self.assertEqual(notify([("trace-frontend-http-request", [(b"now" + bad, Typed(spop.T_INT64, 1))])],
                                        label), {})
                n_bad += 1
            for continued in (False, True):
                what = "request with <%s> everywhere%s" % (label, ", valid traceparent" if continued else "")
                with self.subTest(what):
                    if continued:
                        tid = hashlib.sha256(label.encode()).hexdigest()[:32]
                        tp = Typed(spop.T_STR, b"00-" + tid.encode() + b"-00f067aa0ba902b7-01")
                    else:
                        tp = Typed(spop.T_STR, b"00-" + bad + b"-01")
                    a = notify([("trace-frontend-http-request", [
                        now(), ("traceparent", tp), ("tracestate", Typed(spop.T_STR, b"k=v," + bad))])], what)
                    ctx = a.get(b"txn.ctx", b"")
                    self.assertEqual(len(ctx), 66, (what, a))
                    self.assertIs(a.get(b"txn.sampled"), True, (what, a))
                    if continued:
                        self.assertEqual(ctx[:32].decode(), tid, "a valid traceparent is continued")
                    trace_ids.append(ctx[:32].decode())
                    args = [now(), ("ctx", Typed(spop.T_STR, ctx)), ("t0", a[b"txn.t0"]), ("t_fhr", a[b"txn.t_fhr"]),
                            ("status", 200), ("client_port", 4242)]
                    if b"txn.ts" in a:
                        args.append(("ts", Typed(spop.T_STR, a[b"txn.ts"])))
                    for k in ("method", "uri", "version", "client", "frontend", "backend", "server", "unique_id"):
                        v = {"uri": b"/p-" + bad + b"?q=" + bad, "version": b"HTTP/1.1" + bad,
                             "method": b"GET" + bad}.get(k, k.encode() + b"-" + bad)
                        args.append((k, Typed(spop.T_STR, v)))
                    notify([("trace-http-response", args)], what)
        self.assertEqual(self.sp.total("tracing", "bad_messages", stats=True) - bad0, n_bad)

        # Every span ends up in the file; every line is strict UTF-8 JSON.
        def exported():
            try:
                with open(self.traces, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            return data if all(t.encode() in data for t in trace_ids) else None
        data = harness.wait_for(exported)
        self.assertIsNotNone(data, "the spans of the hostile requests were not exported")
        problems, spans = [], 0
        for i, line in enumerate(data.splitlines()):
            try:
                doc = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                problems.append("line %d is not strict UTF-8 JSON: %s: %r" % (i + 1, e, line[:300]))
                continue
            problems += json_string_problems(doc, "line %d" % (i + 1))
            for rs in doc.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    spans += sum(1 for s in ss.get("spans", []) if s.get("traceId") in trace_ids)
        self.assertEqual(problems, [], "the exported file is not valid OTLP/JSON")
        self.assertGreaterEqual(spans, 3 * len(trace_ids), "spans of the hostile requests missing")
        g.end()
        self.assertIn(b"TAGT-", self.sp.log_bytes(g.log_start),
                      "tracing's unknown message name is not in the log (escaped) any more")

    def test_1g_mirror(self):
        port = self.ports["mirror"]
        g = self.guard("1g mirror (target down)", [("mirror", port, "mirror")])
        m0 = self.sp.total("mirror", "messages", stats=True)
        c = client(port)
        self.addCleanup(c.close)
        c.handshake()
        sid = [1]

        def notify(args, label, name="mirror"):
            s = sid[0]
            sid[0] += 2
            c.send(spop.notify(s, 1, [(name, args)]))
            f = read_frame(c)
            self.assertIsNotNone(f, "%s: closed instead of ACK" % label)
            self.assertEqual((f.type, f.sid, f.payload), (spop.ACK, s, b""), label)
        def failures():
            return sum(self.sp.total("mirror", k, stats=True)
                       for k in ("failed_connect", "failed_timeout", "failed_tls", "failed_other"))
        n = 0

        # First replays whose URL holds ESC and non-UTF-8 bytes: each fails (the target is
        # down: failed_connect, or curl refuses the URL: failed_other) and the failure log
        # (at most one line a second) shows the URL. Until one such line is there.
        def tagged_failure_logged():
            nonlocal n
            f0 = failures()
            notify(mirror_args(path=b"/TAGM-\x1b[31m-\xff\xc0\x80-\xed\xa0\x80"), "ESC in the path")
            n += 1
            self.assertTrue(harness.wait_for(lambda: failures() > f0), "the replay to the closed target did not fail")
            return b"TAGM-" in self.sp.log_bytes(g.log_start)
        self.assertTrue(harness.wait_for(tagged_failure_logged, interval=0.2),
                        "the failed replay's URL is not in the log (escaped) any more")
        for label, bad in BAD:
            cases = [
                ("method <%s>" % label, mirror_args(method=b"GE" + bad + b"T")),
                ("path <%s>" % label, mirror_args(path=b"/p-" + bad)),
                ("header name <%s>" % label, mirror_args(headers=[(b"X-" + bad, b"v")])),
                ("header value <%s>" % label, mirror_args(headers=[(b"X-Evil", b"v-" + bad)])),
                ("body <%s>" % label, mirror_args(method=b"POST", body=bad * 100)),
                ("argument name 'arg_path<%s>'" % label,
                 [(b"arg_path" + bad if k == "arg_path" else k, v) for k, v in mirror_args()]),
                ("headers as STRING <%s>" % label,
                 [(k, Typed(spop.T_STR, b"X-A: " + bad + b"\r\n\r\n") if k == "arg_hdrs" else v)
                  for k, v in mirror_args()]),
            ]
            for what, args in cases:
                with self.subTest(what):
                    notify(args, what)
                    n += 1
        self.assertEqual(self.sp.total("mirror", "messages", stats=True) - m0, n)
        self.assertGreater(self.sp.total("mirror", "bad_messages", stats=True), 0)
        g.end()

    # ---- case 2: many silent connections ---------------------------------------------------

    def test_2_silent_connections(self):
        port, n = self.ports["silent"], 200
        g = self.guard("2 silent connections", [("silent", port, "echo")])
        busy = Busy(port)
        busy.start()
        self.addCleanup(busy.stop)
        t0 = self.sp.total("silent", "disconnect_timeout")
        acks0 = busy.acks
        silent = [socket.create_connection(("127.0.0.1", port), timeout=harness.GUARD_S) for _ in range(n)]
        self.addCleanup(lambda: [s.close() for s in silent])
        # A newcomer is served while they wait.
        fresh = Innocent(port, "echo")
        ok, why = fresh.probe()
        fresh.close()
        self.assertTrue(ok, "a fresh connection among silent ones: " + why)
        # Each gets AGENT-DISCONNECT "timeout" (SPOE.txt 3.5), then EOF.
        data = {s: b"" for s in silent}
        eof = set()
        deadline = time.monotonic() + harness.GUARD_S
        while len(eof) < n and time.monotonic() < deadline:
            r, _, _ = select.select([s for s in silent if s not in eof], [], [], 1.0)
            for s in r:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    data[s] += chunk
                else:
                    eof.add(s)
        acks_during = busy.acks - acks0
        self.assertEqual(len(eof), n, "silent connections still open")
        statuses = {}
        for s in silent:
            st = first_frame_of(data[s])
            statuses[st] = statuses.get(st, 0) + 1
        self.assertEqual(statuses, {(spop.AGENT_DISCONNECT, ST_TIMEOUT): n})
        self.assertTrue(harness.wait_for(
            lambda: self.sp.total("silent", "disconnect_timeout") - t0 >= n),
            "disconnect_timeout did not count the silent connections")
        self.assertGreater(acks_during, 0, "the busy connection got no ACK while silent ones waited")
        busy.stop()
        self.assertEqual(busy.errors, [])
        g.innocents.append(busy.inn)
        g.end()

    # ---- case 3: a reader that never reads ---------------------------------------------------

    def test_3_reader_that_never_reads(self):
        port = self.ports["slow"]
        # The slow agent closes idle connections after 2 s: its innocent connection is the busy
        # one (kept active through the attack), probed again at the end.
        g = self.guard("3 never-reading reader", [("slow", port, "echo")], innocents=False)
        busy = Busy(port)
        busy.start()
        self.addCleanup(busy.stop)
        (w,) = self.sp.workers("slow")
        st0 = self.sp.stat(w.rel, "slow")
        t0 = st0["disconnect_timeout"]
        busy0 = busy.sent
        c = client(port)
        self.addCleanup(c.close)
        c.handshake()
        c.sock.setblocking(False)
        # NOTIFYs of one size (stream-ids and values of 2-byte varints), each answered by an
        # ACK about twice as large (echo sends the arguments back with their digests).
        pad = b"x" * 200
        one = [spop.notify(sid, 1, [("check", [("n", sid), ("pad", pad)])]) for sid in range(241, 641, 2)]
        assert len({len(x) for x in one}) == 1
        size = len(one[0])
        batch = b"".join(one)
        sent, pending, full, reset = 0, b"", False, False
        acks_at_block = None
        while sent < 256 * MIB:
            if not pending:
                pending = batch
            try:
                k = c.sock.send(pending)
                sent += k
                pending = pending[k:]
                continue
            except BlockingIOError:
                if acks_at_block is None:
                    acks_at_block = busy.acks
                g.sample()
            except (ConnectionResetError, BrokenPipeError):
                reset = True
                break
            _, wr, _ = select.select([], [c.sock], [], 1.0)
            if not wr:
                full = True  # spoad does not read: the kernel buffers are full
                break
        g.sample()
        self.assertTrue(full or reset, "spoad read %d MiB and never pushed back" % (sent // MIB))
        # Nothing is read any more: the idle timeout closes the connection.
        self.assertTrue(harness.wait_for(
            lambda: self.sp.stat(w.rel, "slow")["disconnect_timeout"] > t0),
            "the never-reading connection was not closed by the idle timeout")
        self.assertGreater(busy.acks, acks_at_block or 0, "others were not served while it was stuck")
        c.sock.setblocking(True)
        c.sock.settimeout(harness.GUARD_S)
        self.assertTrue(c.closed(harness.GUARD_S), "the never-reading connection is still open")
        # What spoad processed of it (NOTIFYs read while open; what it reads while closing is
        # discarded and not counted): without back-pressure, everything sent.
        processed = self.sp.stat(w.rel, "slow")["cum_notify"] - st0["cum_notify"] - (busy.sent - busy0)
        log("case 3: sent %d NOTIFYs (%d KiB); spoad processed %d of them, then stopped reading "
            "(%s), and the idle timeout closed the connection (disconnect_timeout +1)" % (
                sent // size, sent // KIB, processed, "kernel buffers full" if full else "reset while sending"))
        self.assertLess(processed, sent // size - 64 * KIB // size, "no back-pressure: spoad processed everything sent")
        busy.stop()
        self.assertEqual(busy.errors, [])
        g.innocents.append(busy.inn)
        g.end()

    # ---- case 6: lying frames ----------------------------------------------------------------

    def test_6_lying_frames(self):
        port = self.ports["echo"]
        g = self.guard("6 lying frames", [("echo", port, "echo")])
        meta_nf = bytes([spop.NOTIFY]) + b"\x00\x00\x00\x01"
        cases = [
            # (label, HELLO first (max-frame-size) or None, bytes, expected status or None)
            ("FRAME-LENGTH 0xffffffff before HELLO", None, spop.frame_header(0xffffffff, spop.HAPROXY_HELLO), ST_TOO_BIG),
            ("FRAME-LENGTH 0xffffffff after HELLO", 16380, spop.frame_header(0xffffffff), ST_TOO_BIG),
            ("FRAME-LENGTH max-frame-size+1 before HELLO", None, spop.frame_header(16381, spop.HAPROXY_HELLO), ST_TOO_BIG),
            ("FRAME-LENGTH negotiated 1024 + 1", 1024, spop.frame_header(1025), ST_TOO_BIG),
            ("a frame of 3 bytes", None, b"\x00\x00\x00\x03\x01\x00\x00", ST_INVALID),
            ("a frame of 3 bytes after HELLO", 16380, b"\x00\x00\x00\x03\x03\x00\x00", ST_INVALID),
            ("endless 0xff bytes", None, b"\xff" * 65536, ST_TOO_BIG),
            ("varint stream-id that never ends", 16380,
             struct.pack(">I", 5 + 200) + meta_nf + b"\xff" * 200, ST_INVALID),
            ("varint in HELLO KV name that never ends", None,
             spop.frame(spop.HAPROXY_HELLO, b"\xff" * 200), ST_INVALID),
            ("varint in NOTIFY value that never ends", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\x01" + spop.sstr("x") + bytes([spop.T_UINT64]) + b"\xff" * 200,
                        spop.FIN, 1, 1), ST_INVALID),
            ("varint of 11 bytes in NOTIFY string length", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\x01" + spop.sstr("x") + bytes([spop.T_STR]) + b"\xff" * 10 + b"\x01",
                        spop.FIN, 1, 1), ST_INVALID),
            ("NB-ARGS 255 with no args", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\xff", spop.FIN, 1, 1), ST_INVALID),
            ("NB-ARGS 255 with one arg", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\xff" + spop.kv([("a", 1)]), spop.FIN, 1, 1), ST_INVALID),
        ]
        for label, hello_mfs, data, status in cases:
            with self.subTest(label):
                c = client(port)
                try:
                    if hello_mfs is not None:
                        c.handshake(max_frame_size=hello_mfs)
                    c.send(data)
                    expect(self, c, ("disconnect", status), label)
                finally:
                    c.close()
        # Then gone without waiting for an answer.
        for label, data in [("3 bytes then close", b"\x00\x00\x00"),
                            ("a frame of 3 bytes then close", b"\x00\x00\x00\x03\x01\x00\x00"),
                            ("half a HELLO then close", spop.hello()[:20]),
                            ("FRAME-LENGTH 0xffffffff then close", b"\xff\xff\xff\xff\x01")]:
            for after_hello in (False, True):
                c = client(port)
                if after_hello:
                    c.handshake()
                c.send(data)
                c.close()
        g.end()


# --------------------------------------------------------------------------------------------
# Cases 4 and 5: a byte budget each, in a spoad of their own


def budget_config(test, name, agents_with, agents_without, key):
    """Writes the config with the budget key; if `spoad -c` rejects it, returns the config
    without it (to measure what happens without a budget) and a problem to report."""
    env = harness.Env("hostile-check-" + name)
    test.addCleanup(env.stop)
    rc, out = spoad_check(env.write("with.yaml", sv.config(agents_with, socket_path=env.path("x.sock"))))
    if rc == 0:
        return agents_with, []
    log("case %s: `spoad -c` rejects %s (running without it to show the unbounded growth):\n%s" % (name, key, out))
    return agents_without, ["spoad does not accept the budget key %r: %s" % (key, out.strip()[:500])]


def counter_keys(d, pattern):
    """{key: value} of the numeric fields (nested included) whose name matches `pattern`."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(counter_keys(v, pattern))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and re.search(pattern, k):
            out[k] = v
    return out


class FragmentFlood(unittest.TestCase):
    """Case 4."""

    N = 50
    MAX_FRAGMENTED = 4 * MIB

    def test_4_fragment_flood(self):
        port = harness.free_port()
        block = """  - name: frag
    type: echo
    listen: 127.0.0.1:%d
    workers: 2
    echo-max-size: 0
    max-fragmented-size: 4m
%s"""
        agents, problems = budget_config(self, "4", [block % (port, "    %s: %d\n" % (REASSEMBLY_KEY, REASSEMBLY_BUDGET))],
                                         [block % (port, "")], REASSEMBLY_KEY)
        sp = Spoad("frag", agents, 2, log_level="info")
        self.addCleanup(sp.stop)
        g = Guard(self, sp, "4 fragment flood", [("frag", port, "echo")],
                  rss_budget=REASSEMBLY_BUDGET + RSS_MARGIN).begin()
        chunk = b"x" * 16000
        flooders = []
        for i in range(self.N):
            c = client(port)
            self.addCleanup(c.close)
            c.send(spop.hello_from(spop.hello_items(capabilities=b"pipelining,fragmentation")))
            h = expect(self, c, "hello", "flooder HELLO")
            self.assertIn(b"fragmentation", h.get(b"capabilities", b"").split(b","))
            flooders.append({"c": c, "sid": i + 1, "sent": 0, "status": None, "first": True})
        exceeded = None
        limit = {k: kib + (REASSEMBLY_BUDGET + RSS_MARGIN) // KIB for k, (_, kib) in g.rss_before.items()}
        for rnd in range(self.MAX_FRAGMENTED // len(chunk) + 40):
            live = [f for f in flooders if f["status"] is None]
            if not live:
                break
            for f in live:
                if f["first"]:  # a NOTIFY without FIN: one BINARY argument announced as 64 MiB
                    payload = spop.sstr("m") + b"\x01" + spop.sstr("blob") + bytes([spop.T_BIN]) + spop.varint(64 * MIB) + chunk
                    data = spop.frame(spop.NOTIFY, payload, 0, f["sid"], 1)
                    f["first"] = False
                else:
                    data = spop.frame(spop.UNSET, chunk, 0, f["sid"], 1)
                try:
                    f["c"].send(data)
                    f["sent"] += len(data)
                except (ConnectionResetError, BrokenPipeError):
                    f["status"] = "reset"
            r, _, _ = select.select([f["c"].sock for f in live], [], [], 0)
            for f in live:
                if f["c"].sock in r or f["status"] == "reset":
                    fr = read_frame(f["c"])
                    if fr is not None and fr.type == spop.AGENT_DISCONNECT:
                        f["status"] = spop.parse_kv_raw(fr.payload).get(b"status-code")
                    else:
                        f["status"] = "closed without AGENT-DISCONNECT: %r" % (fr,)
                    f["c"].close()
            if rnd % 5 == 4:  # the innocent connections are served during the flood
                for inn in g.innocents:
                    ok, why = inn.probe()
                    if not ok:
                        problems.append("during the flood (round %d): %s" % (rnd, why))
            now = g.sample()
            over = [k for k, (_, kib) in now.items() if kib > limit[k] + 64 * 1024]
            if over:
                exceeded = "round %d: %s" % (rnd, {k: now[k][1] for k in over})
                break
        statuses = {}
        for f in flooders:
            statuses[f["status"]] = statuses.get(f["status"], 0) + 1
        by_budget = sorted(f["sent"] // KIB for f in flooders if f["status"] == ST_RESOURCE)
        log("case 4: flooders' AGENT-DISCONNECT statuses %s; KiB sent by those cut by the budget "
            "(status 13): %s" % (statuses, by_budget))
        if exceeded:
            problems.append("RSS far above the budget, flood stopped at " + exceeded)
        # 13: the worker's budget is used up; 3: this NOTIFY reached max-fragmented-size;
        # 2: not completed within timeout.fragment. All are right answers to an endless NOTIFY.
        if set(statuses) - {ST_TIMEOUT, ST_TOO_BIG, ST_RESOURCE}:
            problems.append("flooders not all disconnected with status 2, 3 or 13: %s" % statuses)
        if not by_budget:
            problems.append("no flooder was cut by the per-worker reassembly budget (status 13)")
        refused = 0
        for r in sp.workers("frag"):
            st = sp.stat(r.rel, "frag")
            found = counter_keys(st, "reassembl")
            log("case 4: worker %d reassembly counters: %s" % (r.rel, found))
            refused += found.get("reassembly_refused", 0)
            if "reassembly_bytes_max" in found and "reassembly_limit" in found \
                    and found["reassembly_bytes_max"] > found["reassembly_limit"]:
                problems.append("worker %d held %d reassembly bytes, above its limit %d" % (
                    r.rel, found["reassembly_bytes_max"], found["reassembly_limit"]))
        if REASSEMBLY_KEY.encode() not in sp.log_bytes(g.log_start):
            problems.append("no log line names %s" % REASSEMBLY_KEY)
        if refused < len(by_budget) or not refused:
            problems.append("show stat counts %d refused reassemblies for %d flooders cut with status 13" % (
                refused, len(by_budget)))
        for f in flooders:
            f["c"].close()
        # A legitimate fragmented NOTIFY is reassembled once the flood is gone.
        c = client(port)
        self.addCleanup(c.close)
        c.send(spop.hello_from(spop.hello_items(capabilities=b"pipelining,fragmentation")))
        expect(self, c, "hello", "legit HELLO")
        blob = os.urandom(100 * KIB)
        payload = spop.sstr("m") + b"\x01" + spop.sstr("blob") + bytes([spop.T_BIN]) + spop.varint(len(blob)) + blob
        parts = [payload[i:i + 16000] for i in range(0, len(payload), 16000)]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            c.send(spop.frame(spop.NOTIFY if i == 0 else spop.UNSET, part, spop.FIN if last else 0, 77, 1))
        f = read_frame(c)
        if f is None or f.type != spop.ACK or spop.parse_actions_raw(f.payload).get(b"txn.blob_sha256") != \
                hashlib.sha256(blob).hexdigest().encode():
            problems.append("a legitimate fragmented NOTIFY after the flood: %r" % (f,))
        g.end(problems)


class CollectorDown(unittest.TestCase):
    """Case 5."""

    N = 200
    URI = 1 * MIB

    def test_5_huge_attributes_collector_down(self):
        port, dead = harness.free_port(), harness.free_port()
        block = """  - name: tracing
    type: tracing
    listen: 127.0.0.1:%d
    workers: 1
    max-frame-size: 2m
    exporter:
      type: otlp-http
      endpoint: http://127.0.0.1:%d/v1/traces
      flush-interval: 100ms
      timeout: 1s
      retry-initial: 100ms
      retry-max: 1s
%s"""
        agents, problems = budget_config(
            self, "5", [block % (port, dead, "      %s: %d\n" % (TRACING_QUEUE_KEY, TRACING_QUEUE_BUDGET))],
            [block % (port, dead, "")], TRACING_QUEUE_KEY)
        sp = Spoad("collector-down", agents, 1, log_level="info")
        self.addCleanup(sp.stop)
        g = Guard(self, sp, "5 huge attributes, collector down", [("tracing", port, "tracing")],
                  rss_budget=TRACING_QUEUE_BUDGET + RSS_MARGIN).begin()
        limit = {k: kib + (TRACING_QUEUE_BUDGET + RSS_MARGIN) // KIB for k, (_, kib) in g.rss_before.items()}
        c = client(port)
        self.addCleanup(c.close)
        c.handshake(max_frame_size=2 * MIB)
        c.send(spop.notify(1, 1, [("trace-frontend-http-request", [("now", Typed(spop.T_INT64, now_us()))])]))
        f = read_frame(c)
        a = spop.parse_actions_raw(f.payload)
        self.assertEqual(len(a.get(b"txn.ctx", b"")), 66, a)
        uri = b"/" + b"u" * (self.URI - 1)
        acked, exceeded = 0, None
        for i in range(self.N):
            sid = 3 + 2 * i
            args = [("now", Typed(spop.T_INT64, now_us())), ("ctx", Typed(spop.T_STR, a[b"txn.ctx"])),
                    ("t0", a[b"txn.t0"]), ("t_fhr", a[b"txn.t_fhr"]), ("status", 200),
                    ("method", "GET"), ("uri", Typed(spop.T_STR, uri + b"?i=%d" % i)),
                    ("version", "HTTP/1.1"), ("client", "192.0.2.1"), ("frontend", "www")]
            c.send(spop.notify(sid, 1, [("trace-http-response", args)]))
            f = read_frame(c)
            if f is None or f.type != spop.ACK or f.sid != sid:
                problems.append("NOTIFY %d with a 1 MiB uri: %r" % (i, f))
                break
            acked += 1
            now = g.sample()
            over = [k for k, (_, kib) in now.items() if kib > limit[k] + 64 * 1024]
            if over:
                exceeded = "after %d NOTIFYs: %s" % (acked, {k: now[k][1] for k in over})
                break
        log("case 5: %d NOTIFYs with a 1 MiB uri acknowledged" % acked)
        if exceeded:
            problems.append("RSS far above the budget, stopped " + exceeded)
        # Connection refused is retried (export_retries) until the batch is given up
        # (export_failures): either shows the exporter tried and failed.
        self.assertTrue(harness.wait_for(
            lambda: sp.total("tracing", "export_retries", stats=True)
            + sp.total("tracing", "export_failures", stats=True) > 0),
            "the exporter did not try (and fail) to reach the closed collector")
        st = sp.stat(sp.workers("tracing")[0].rel, "tracing")["agent_stats"]
        log("case 5: tracing counters: %s" % {k: v for k, v in st.items() if k.startswith(("spans", "export", "queue"))
                                               or "bytes" in k or "trunc" in k})
        qb = st.get("spans_queued_bytes")
        if qb is None:
            problems.append("no spans_queued_bytes in `show stat json` agent_stats: %s" % sorted(st))
        elif qb > TRACING_QUEUE_BUDGET:
            problems.append("%d bytes of spans queued, above max-queue-bytes %d" % (qb, TRACING_QUEUE_BUDGET))
        if not st.get("spans_dropped_bytes"):
            problems.append("no span dropped for max-queue-bytes (spans_dropped_bytes): %s" % st.get("spans_dropped_bytes"))
        if TRACING_QUEUE_KEY.encode() not in sp.log_bytes(g.log_start):
            problems.append("no log line names %s" % TRACING_QUEUE_KEY)
        g.end(problems)


if __name__ == "__main__":
    unittest.main(verbosity=2)
