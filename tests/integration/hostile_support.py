"""Support of the hostile-peer suites (test_hostile_fields.py, test_hostile_peers.py,
test_hostile_budgets.py): hostile peers against a real spoad, real sockets, a real master with
real worker processes.

Around every attack (class Guard):
- every process survives: the master and the same worker pids in `show proc` before and after;
- every connection that did nothing wrong is still served: innocent connections, at least one
  on each worker of the attacked agents, complete their HELLO before the attack, stay open
  through it and do NOTIFY/ACK afterwards; a fresh connection does too;
- RSS (VmRSS) of the master and of each worker stays within the case's budget; the figures
  before and after (and the peak, where sampled) are printed on lines starting with "RSS";
- what spoad logged meanwhile (stderr of every process) holds no raw control byte (ESC, CR,
  NUL, ...), nothing that is not UTF-8, and no line forged by a peer.

Cases are numbered as in issue 8 (SPOE.txt section 3; status codes as in lib/spop/types.h):
1 in test_hostile_fields.py; 2, 3 and 6 in test_hostile_peers.py; 4 and 5 in
test_hostile_budgets.py.
"""
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

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


class AllAgents:
    """Mixin of a TestCase whose cases share one spoad with every agent type (cases 1, 2, 3
    and 6): echo, ip-checker, tracing (file exporter), mirror (its target down), and two echo
    agents with short timeouts ("silent": hello 1 s; "slow": idle 2 s)."""

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
