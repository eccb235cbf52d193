"""Reloads that lose nothing: the shipped configs under load across HAProxy and spoad reloads.

One test per HAProxy version (the binary in $SPOAD_HAPROXY, see harness.HAPROXY):

- HAProxy 2.x to 3.2, the `program` layout: config/haproxy.cfg (all three agents) merged with
  config/haproxy-program.cfg as its comment says (its `global` lines and its `program spoad`
  section; the only substitution is the path of the spoad under test), run as
  `haproxy -W -S master.sock`; spoad runs config/spoad.yaml. 20 HAProxy reloads (`reload` on
  HAProxy's master CLI), then 20 spoad reloads (`reload` on spoad's master CLI).
- HAProxy 3.3 and later (no `program` section), the systemd layout of config/spoad.service.in:
  spoad started on its own (`spoad -f spoad.yaml -S master.sock`), HAProxy
  `haproxy -W -S master.sock -f config/haproxy.cfg`. 20 HAProxy reloads (`reload` on HAProxy's
  master CLI), then 20 spoad reloads by SIGUSR2, as `systemctl reload spoad` sends.

The SPOE files are config/spoe-*.cfg unchanged: the shipped 500 ms processing timeout is the
point (harness.spoe_dir()/relaxed_spoe() are deliberately not used). Only ports and paths come
from the environment, through the variables the shipped files read.

Load: 24 HTTP/1.1 clients (threads, persistent connections), six per source address of
supervisor.HTTP_CASES, among them the deny-listed 127.0.0.66 (config/lists/demo-drop.txt),
which must get 403 every time. Reloads are spaced 0.5-1 s: each is confirmed by its event
(HAProxy's `show proc` lists a new worker; the new spoad answers on its CLI with all its
workers), then a pause shapes the load (the pause synchronises nothing).

Counted, per phase (steady load, HAProxy reloads, spoad reloads), and printed so that they can
be quoted:
- failed requests (wrong status or score, X-SPOE-Error, a connection error); a keep-alive
  connection HAProxy closed before the request reached it (the old worker soft-stops) is
  retried once on a new connection, as HTTP clients do, and counted apart;
- the SPOE status of every event, from HAProxy's own log (`log global` in each spoe-agent:
  one line per processed event, "SPOE: [<agent>] <EVENT:<event>> sid=<n> st=<status> ...
  <errors>/<processed>", same on 2.6 and 3.x but for the times in between). HAProxy drops a
  log line when two of its threads log at once (it gives up after a few attempts rather than
  block): the report estimates how many, and the per-process error counter at the end of
  every line still shows an error whose own line was dropped;
- AGENT-DISCONNECTs with a non-zero status, from spoad's log (every such frame is logged,
  rate-limited: zero lines means zero frames) and the current workers' `show stat json`;
- old spoad instances still alive past `global.grace` after their HAProxy worker left
  (HAProxy reloads; for spoad reloads: after the reload). The test waits for each exit with
  harness.GUARD_S as a guard and counts the late ones.

The test fails unless every count of failures is 0.
"""
import http.client
import json
import os
import random
import re
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import supervisor as sv  # noqa: E402

RELOADS = int(os.environ.get("SPOAD_RELOADS", "20"))
CLIENTS = 24
# Spacing of the reloads (seconds from one reload command to the next, at least the time the
# reload takes to be confirmed): the shape of the load, not a synchronisation.
SPACING_S = (0.5, 1.0)
# How late past global.grace an old instance is still counted as on time: the watcher polls
# every 50 ms from a Python thread that competes with 24 clients. The bound under test is
# spoad's own grace timer, never the speed of the machine.
GRACE_SLACK_S = 1.0

# HAProxy's SPOE log line (flt_spoe.c, 2.6 and 3.x): agent, event, stream id, status, then
# times (2.6: five, 3.x: one) and, last, the agent's error and processed counters in this
# HAProxy process ("<nb_errors>/<nb_processed>").
SPOE_LINE = re.compile(r"SPOE: \[([^\]]+)\] <(EVENT|GROUP):([^>]+)> sid=(\d+) st=(\d+)"
                       r"(?:[^\n]* (\d+)/\d+$)?", re.M)
# The http log line of a request to the frontend `www` (option httplog).
WWW_LINE = re.compile(r"\] www ")
DISCONNECT_LINE = re.compile(r"sending AGENT-DISCONNECT status (\d+)")
# A connection a worker could not hand off (connection.cpp), closed with a DISCONNECT instead.
HANDOFF_FAILED_LINE = "closing it with a DISCONNECT"


# --------------------------------------------------------------------------------------------
# HAProxy's master CLI


def hap_reload(master_sock):
    """`reload` on HAProxy's master CLI, as `echo reload | socat master.sock -` does. 2.6 closes
    the connection at once; 2.7+ answers `Success=0|1` once the new worker is ready. Returns
    the answer (maybe empty)."""
    return sv.socat_cmd(master_sock, "reload")


# --------------------------------------------------------------------------------------------
# Configuration: the shipped files, merged as config/haproxy-program.cfg says


def _sections(text):
    """[(header line, [lines])] of an HAProxy configuration; the lines before the first
    section go with header None. Comments and conditional blocks (.if/.endif) at the start
    of a line stay in the section they are in."""
    out = [(None, [])]
    for line in text.splitlines():
        if line and not line[0].isspace() and line[0] not in "#.":
            out.append((line, []))
        else:
            out[-1][1].append(line)
    return out


def program_config(spoad_path):
    """config/haproxy.cfg with what config/haproxy-program.cfg adds: its `global` keywords
    that haproxy.cfg lacks (master-worker, ...) and its `program spoad` section, whose command
    runs `spoad_path` instead of `spoad` from the PATH. Nothing else changes."""
    with open(os.path.join(harness.CONFIG_DIR, "haproxy.cfg")) as f:
        base = f.read()
    with open(os.path.join(harness.CONFIG_DIR, "haproxy-program.cfg")) as f:
        prog = f.read()
    prog_secs = _sections(prog)
    base_secs = _sections(base)

    def keywords(lines):
        return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]

    prog_global = next((lines for h, lines in prog_secs if h and h.split()[0] == "global"), [])
    base_global = next((lines for h, lines in base_secs if h and h.split()[0] == "global"), [])
    have = set(keywords(base_global))
    # Keywords haproxy.cfg lacks, and the conditional directives around them (.if ...).
    extra = [k for k in keywords(prog_global) if k.startswith(".") or k not in have]
    program = [(h, lines) for h, lines in prog_secs if h and h.split()[0] == "program"]
    if not program:
        raise AssertionError("config/haproxy-program.cfg has no `program` section")
    out = []
    for h, lines in base_secs:
        if h is not None:
            out.append(h)
        if h is not None and h.split()[0] == "global":
            out.extend(k if k.startswith(".") else "    " + k for k in extra)
        out.extend(lines)
    for h, lines in program:
        out.append("")
        out.append(h)
        for ln in lines:
            out.append(re.sub(r"^(\s*command\s+)spoad(?=\s)",
                              lambda m: m.group(1) + spoad_path, ln))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Load


class Clients:
    """CLIENTS threads, each a persistent HTTP/1.1 connection from one source address, doing
    GETs back to back until stop(). Every answer is checked against supervisor.HTTP_CASES."""

    def __init__(self, port, n=CLIENTS):
        self.port = port
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.requests = 0
        self.answered = 0  # requests that got an HTTP response
        self.ok = 0
        self.failures = []  # (time, source, what)
        self.retries = []  # (time, source, what): keep-alive closes retried on a new connection
        self.deny = [0, 0]  # [requests from the deny-listed source, of which 403]
        cases = sv.HTTP_CASES
        self.threads = [threading.Thread(target=self._run, args=(cases[i % len(cases)],),
                                         daemon=True) for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _connect(self, src):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=harness.GUARD_S,
                                          source_address=(src, 0))

    def _run(self, case):
        src, status, score = case
        conn = self._connect(src)
        while not self.stop_ev.is_set():
            reused = conn.sock is not None
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused:
                    # HAProxy closed this idle connection (a soft-stopping worker) before it
                    # read the request: HTTP allows the retry of an idempotent request.
                    with self.lock:
                        self.retries.append((time.time(), src, type(e).__name__))
                    conn = self._connect(src)
                    continue
                self._count(src, status, None, "%s: %s" % (type(e).__name__, e))
                conn = self._connect(src)
                continue
            except Exception as e:  # noqa: BLE001 - any other failure counts
                conn.close()
                self._count(src, status, None, "%s: %s" % (type(e).__name__, e))
                conn = self._connect(src)
                continue
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            bad = None
            if r.status != status:
                bad = "status %d, expected %d" % (r.status, status)
            elif "x-spoe-error" in hdrs:
                bad = "X-SPOE-Error: %s" % hdrs["x-spoe-error"]
            elif hdrs.get("x-ip-score") != score:
                bad = "X-IP-Score %r, expected %r" % (hdrs.get("x-ip-score"), score)
            self._count(src, status, r.status, bad)
        conn.close()

    def _count(self, src, expected, got, bad):
        with self.lock:
            self.requests += 1
            self.answered += got is not None
            if expected == 403:
                self.deny[0] += 1
                self.deny[1] += got == 403
            if bad:
                self.failures.append((time.time(), src, bad))
            else:
                self.ok += 1

    def snapshot(self):
        with self.lock:
            return {"requests": self.requests, "answered": self.answered, "ok": self.ok,
                    "failures": len(self.failures),
                    "retries": len(self.retries), "deny": list(self.deny)}

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(harness.GUARD_S)


# --------------------------------------------------------------------------------------------
# Old instances


class OldInstances:
    """Watches the old instances of spoad: each entry is a set of spoad pids (an old program
    and its workers, or old workers) and what their end is measured from: the exit of the
    HAProxy workers that were current before the reload, or the reload itself. A thread notes
    when each is gone (polling /proc every 50 ms)."""

    def __init__(self, grace_s):
        self.grace_s = grace_s
        self.entries = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, phase, i, spoad_pids, hap_workers=(), t_ref=None):
        e = {"phase": phase, "i": i, "spoad": set(spoad_pids), "hap": set(hap_workers),
             "t_ref": t_ref, "t_gone": None}
        with self.lock:
            self.entries.append(e)

    def _poll(self):
        now = time.time()
        with self.lock:
            for e in self.entries:
                if e["t_ref"] is None and e["hap"] and sv.all_dead(e["hap"]):
                    e["t_ref"] = now
                if e["t_gone"] is None and sv.all_dead(e["spoad"]):
                    e["t_gone"] = now

    def _run(self):
        while not self.stop_ev.is_set():
            self._poll()
            time.sleep(0.05)

    def settled(self):
        self._poll()
        with self.lock:
            return all(e["t_ref"] is not None and e["t_gone"] is not None for e in self.entries)

    def stop(self):
        self.stop_ev.set()
        self.thread.join(harness.GUARD_S)
        self._poll()

    def counts(self, phase):
        """(instances, late: still alive past grace after their reference event, unsettled:
        reference event or exit not seen within the guard)."""
        with self.lock:
            es = [e for e in self.entries if e["phase"] == phase]
            late = [e for e in es if e["t_ref"] is not None and e["t_gone"] is not None
                    and e["t_gone"] - e["t_ref"] > self.grace_s + GRACE_SLACK_S]
            unsettled = [e for e in es if e["t_ref"] is None or e["t_gone"] is None]
            return len(es), late, unsettled

    def all_pids(self):
        with self.lock:
            return set().union(*[e["spoad"] for e in self.entries]) if self.entries else set()


# --------------------------------------------------------------------------------------------
# The test


def grace_of_shipped_yaml():
    """global.grace of config/spoad.yaml in seconds (the test reads it rather than assume it)."""
    with open(os.path.join(harness.CONFIG_DIR, "spoad.yaml")) as f:
        text = f.read()
    m = re.search(r"(?m)^\s+grace:\s*(\d+)(ms|s|m)?\s*$", text)
    if not m:
        return 10.0  # spoad's default
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 0.001}[m.group(2)]


class ReloadHaproxy(unittest.TestCase):
    def setUp(self):
        self.version = harness.haproxy_version()
        self.program = not harness.haproxy_at_least(3, 3)
        self.env = harness.Env("reload-haproxy")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.grace = grace_of_shipped_yaml()
        self.sock = self.env.path("spoad.sock")
        self.hsock = self.env.path("haproxy-master.sock")
        v = {
            "SPOAD_IPREP_ADDR": "127.0.0.1:%d" % harness.free_port(),
            "SPOAD_TRACING_ADDR": "127.0.0.1:%d" % harness.free_port(),
            "SPOAD_MIRROR_ADDR": "127.0.0.1:%d" % harness.free_port(),
            "SPOAD_CLI_SOCKET": self.sock,
            "SPOAD_TRACES_FILE": self.env.path("traces.jsonl"),
            "SPOAD_CONFIG": os.path.join(harness.CONFIG_DIR, "spoad.yaml"),
            "HAPROXY_BIND": "127.0.0.1:%d" % harness.free_port(),
            "HAPROXY_STATS_SOCKET": self.env.path("haproxy.sock"),
            "APP_ADDR": "127.0.0.1:%d" % harness.free_port(),
            "MIRROR_TARGET_ADDR": "127.0.0.1:%d" % harness.free_port(),
            # The shipped SPOE files, unchanged (500 ms processing timeout).
            "SPOE_DIR": harness.CONFIG_DIR,
        }
        self.vars = v
        self.fe = harness.port_of(v["HAPROXY_BIND"])
        self.n_workers = None  # spoad's workers, from its first `show proc`

    def logs(self):
        return sv.tail_logs(self.env)

    # -- start ---------------------------------------------------------------------------------

    def start(self):
        if self.program:
            cfg = self.env.write("haproxy.cfg", program_config(harness.SPOAD))
            self.spoad = None
        else:
            # config/spoad.service.in: ExecStart=spoad -f /etc/spoad/spoad.yaml -S master.sock
            self.spoad = self.env.start("spoad", [harness.SPOAD, "-f", self.vars["SPOAD_CONFIG"],
                                                  "-S", self.sock], env=self.vars)
            cfg = os.path.join(harness.CONFIG_DIR, "haproxy.cfg")
        self.hap = self.env.start("haproxy", [harness.HAPROXY, "-W", "-db", "-S", self.hsock,
                                              "-f", cfg], env=self.vars, cwd=self.env.dir)
        state = harness.wait_for(lambda: self.current(), interval=0.1)
        self.assertIsNotNone(state, ("HAProxy and spoad did not start", self.logs()))
        self.assertTrue(harness.wait_for(self.agents_up, interval=0.2),
                        ("the agents are not UP in HAProxy", self.logs()))
        self.assertTrue(sv.wait_http_ok(self.fe), ("no correct answer", self.logs()))
        return state

    def agents_up(self):
        rows = harness.haproxy_stat_rows(self.vars["HAPROXY_STATS_SOCKET"], timeout=5) or []
        up = {row.get("pxname") for row in rows
              if row.get("svname") == "spoad" and row.get("status") == "UP"}
        return up >= {"spoe-ip-checker", "spoe-tracing", "spoe-mirror"}

    def current(self, exclude_hap=(), exclude_spoad=()):
        """(HAProxy's current worker pids, spoad master pid, spoad ShowProc) once HAProxy lists
        a current worker not in `exclude_hap` and, in the program layout, one spoad program
        not in `exclude_spoad`; spoad's CLI answers from that master, with all its workers
        alive and answering `show info`. None otherwise."""
        sec = harness.haproxy_show_proc(self.hsock)
        if sec is None:
            return None
        workers = harness.haproxy_pids(sec, "workers", "worker")
        if not workers or set(workers) & set(exclude_hap):
            return None
        if self.program:
            progs = harness.haproxy_pids(sec, "programs", "spoad")
            if len(progs) != 1 or progs[0] in exclude_spoad:
                return None
            master = progs[0]
        else:
            master = self.spoad.pid
        sp = sv.try_show_proc(self.sock)
        if sp is None or sp.master.pid != master:
            return None
        self.tracker.add_proc(sp)
        if self.n_workers is None:
            self.n_workers = len(sp.workers)
        if len(sp.workers) != self.n_workers or not sp.workers:
            return None
        if not all(harness.pid_alive(p) for p in sp.pids() | {master}):
            return None
        for r in sp.workers:
            out = sv.try_cli(self.sock, "@%d show info" % r.rel)
            if out is None or sv.parse_info(out).get("Pid") != str(r.pid):
                return None
        return set(workers), master, sp

    # -- reloads -------------------------------------------------------------------------------

    def pause(self, t0, rng):
        """The rest of the 0.5-1 s between two reloads (load shape)."""
        left = rng.uniform(*SPACING_S) - (time.time() - t0)
        if left > 0:
            time.sleep(left)

    def haproxy_reloads(self, state, watcher, rng):
        hap_workers, master, sp = state
        seen_hap, seen_spoad = set(hap_workers), {master}
        for i in range(RELOADS):
            t0 = time.time()
            out = hap_reload(self.hsock)
            if self.program:
                # The old spoad (master and workers) must be gone within grace of the exit of
                # the HAProxy worker(s) that were current before this reload.
                watcher.add("haproxy", i, {master} | sp.pids() | sp.old_pids(), hap_workers)
            self.assertNotIn("Success=0", out, (i, out, self.logs()))
            nxt = harness.wait_for(lambda: self.current(exclude_hap=seen_hap,
                                                        exclude_spoad=seen_spoad), interval=0.1)
            self.assertIsNotNone(nxt, (i, "no new HAProxy worker (and spoad) after the reload",
                                       out, sv.try_cli(self.hsock, "show proc"), self.logs()))
            hap_workers, master, sp = nxt
            seen_hap |= hap_workers
            seen_spoad.add(master)
            self.pause(t0, rng)
        return hap_workers, master, sp

    def spoad_reloads(self, state, watcher, rng):
        hap_workers, master, sp = state
        seen = set(sp.pids())
        for i in range(RELOADS):
            t0 = time.time()
            if self.program:
                out = sv.socat_cmd(self.sock, "reload")
                self.assertTrue(out.startswith("Success=1"), (i, out, self.logs()))
            else:
                # config/spoad.service.in: ExecReload=/bin/kill -USR2 $MAINPID
                os.kill(master, signal.SIGUSR2)

            def new_generation():
                st = self.current()
                if st is None or st[2].pids() & seen:
                    return None
                return st
            nxt = harness.wait_for(new_generation, interval=0.1)
            self.assertIsNotNone(nxt, (i, "no new spoad workers after the reload", self.logs()))
            # The old workers hand their connections over and exit: within grace of the reload.
            watcher.add("spoad", i, sp.pids(), t_ref=time.time())
            hap_workers, master, sp = nxt
            self.assertEqual(master, state[1], "the spoad master changed on its own reload")
            seen |= sp.pids()
            self.pause(t0, rng)
        return hap_workers, master, sp

    # -- counts --------------------------------------------------------------------------------

    def log_texts(self):
        """(HAProxy's log, spoad's log): the same file in the program layout (spoad inherits
        HAProxy's stderr)."""
        hap = self.hap.output()
        return hap, hap if self.program else self.spoad.output()

    @staticmethod
    def spoe_counts(text):
        """{(agent, event, status): n} of HAProxy's SPOE event lines in `text`."""
        out = {}
        for m in SPOE_LINE.finditer(text):
            k = (m.group(1), m.group(3), int(m.group(5)))
            out[k] = out.get(k, 0) + 1
        return out

    @staticmethod
    def error_counters(text):
        """{agent: highest error counter} that the SPOE lines of `text` report. HAProxy may
        drop a log line (when two of its threads write a log at once it gives up after a few
        attempts: fd_write_frag_line()), so an error may miss its own line; every later line of
        the same agent in the same process still carries the counter."""
        out = {}
        for m in SPOE_LINE.finditer(text):
            if m.group(6) is not None:
                out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(6)))
        return out

    def disconnect_counts(self, spoad_log):
        """Non-zero AGENT-DISCONNECTs: lines of spoad's log (each such frame is logged, rate
        limited) and the current workers' counters."""
        self.disconnect_lines = [ln for ln in spoad_log.splitlines()
                                 if HANDOFF_FAILED_LINE in ln or any(
                                     int(m.group(1)) != 0 for m in DISCONNECT_LINE.finditer(ln))]
        lines = [s for s in (int(m.group(1)) for m in DISCONNECT_LINE.finditer(spoad_log)) if s]
        handoff_failed = spoad_log.count(HANDOFF_FAILED_LINE)
        counters = 0
        sp = sv.try_show_proc(self.sock)
        for r in (sp.workers if sp else []):
            out = sv.try_cli(self.sock, "@%d show stat json" % r.rel)
            try:
                j = json.loads(out or "")
            except ValueError:
                continue
            counters += _nonzero_disconnects(j)
        return len(lines), handoff_failed, counters

    def test_reloads_lose_nothing(self):
        ver = ".".join(str(x) for x in self.version)
        layout = "program section" if self.program else "spoad apart (systemd layout)"
        rng = random.Random(9)
        state = self.start()
        watcher = OldInstances(self.grace)
        self.addCleanup(watcher.stop)

        # Phase boundaries: offsets in HAProxy's log (appended to by every HAProxy process)
        # and the clients' counters.
        marks = []

        def mark(name):
            marks.append((name, len(self.hap.output()), clients.snapshot(), time.time()))

        clients = Clients(self.fe).start()
        try:
            self.assertTrue(harness.wait_for(lambda: clients.snapshot()["requests"] >= 4 * CLIENTS),
                            ("no load", clients.snapshot(), self.logs()))
            mark("steady")
            n = clients.snapshot()["requests"]
            harness.wait_for(lambda: clients.snapshot()["requests"] >= n + 40 * CLIENTS)
            mark("haproxy-reloads")
            state = self.haproxy_reloads(state, watcher, rng)
            mark("spoad-reloads")
            state = self.spoad_reloads(state, watcher, rng)
            # Traffic after the last reload, then stop.
            n = clients.snapshot()["requests"]
            harness.wait_for(lambda: clients.snapshot()["requests"] >= n + 10 * CLIENTS)
            mark("end")
        finally:
            clients.stop()
        self.tracker.add(*watcher.all_pids())

        # HAProxy writes an event's log line before it sends the response: the lines of every
        # answered request are in the file now.
        total = clients.snapshot()["answered"]
        # The old instances: wait for each (guarded), then count the late ones.
        harness.wait_for(watcher.settled, interval=0.2)
        watcher.stop()

        hap_log, spoad_log = self.log_texts()
        report = {"haproxy": ver, "layout": layout, "clients": CLIENTS, "reloads": RELOADS,
                  "grace_s": self.grace, "phases": {}}
        for (name, off, snap, t), (_, off2, snap2, t2) in zip(marks, marks[1:]):
            spoe = self.spoe_counts(hap_log[off:off2])
            errors = {"%s %s st=%d" % k: n for k, n in spoe.items() if k[2] != 0}
            ph = {
                "seconds": round(t2 - t, 1),
                "requests": snap2["requests"] - snap["requests"],
                "failed": snap2["failures"] - snap["failures"],
                "keepalive_retries": snap2["retries"] - snap["retries"],
                "deny_requests": snap2["deny"][0] - snap["deny"][0],
                "deny_403": snap2["deny"][1] - snap["deny"][1],
                "spoe_events": sum(spoe.values()),
                "spoe_events_by_agent": _by_agent(spoe),
                "spoe_errors": sum(errors.values()),
                "spoe_errors_by_kind": errors,
            }
            if name in ("haproxy-reloads", "spoad-reloads"):
                kind = name.split("-")[0]
                n_old, late, unsettled = watcher.counts(kind)
                ph["old_instances"] = n_old
                ph["old_instances_late"] = len(late)
                ph["old_instances_unsettled"] = len(unsettled)
                ph["late_detail"] = ["#%d %.1fs" % (e["i"], e["t_gone"] - e["t_ref"]) for e in late]
            report["phases"][name] = ph
        dl, handoff_failed, dc = self.disconnect_counts(spoad_log)
        report["agent_disconnect_nonzero_logged"] = dl
        report["handoff_closed_with_disconnect_logged"] = handoff_failed
        report["agent_disconnect_nonzero_current_workers"] = dc
        # The SPOE error counters the lines carry, since the load started, over those seen
        # before (startup): an error whose own line HAProxy dropped still shows here. Not from
        # 3.3 on: 3.4's spoe_destroy_context() also counts every context freed outside state
        # NONE (so nearly every stream) as an error (3.3, untested here, is treated alike).
        if not harness.haproxy_at_least(3, 3):
            before = self.error_counters(hap_log[:marks[0][1]])
            after = self.error_counters(hap_log[marks[0][1]:])
            report["spoe_error_counters_rise"] = {
                a: n - before.get(a, 0) for a, n in after.items() if n > before.get(a, 0)}
        else:
            report["spoe_error_counters_rise"] = None
        iprep_events = sum(n for (a, _, _), n in self.spoe_counts(hap_log).items()
                           if a == "iprep-agent")
        report["answered"] = total
        report["iprep_event_lines"] = iprep_events
        report["log_lines_lost_estimate"] = max(0, total - iprep_events)
        report["failures_first"] = ["%.3f %s %s" % f for f in clients.failures[:10]]
        report["disconnect_lines_first"] = self.disconnect_lines[:5]
        print("\nreload-haproxy counts: " + json.dumps(report, sort_keys=True), flush=True)
        print(_summary(report), flush=True)

        # The log says something: an ip-checker event line for (nearly) every request. HAProxy
        # drops a line now and then (see error_counters()): the report says how many.
        self.assertGreaterEqual(iprep_events, 0.9 * total,
                                ("HAProxy's log misses SPOE events", iprep_events, total))
        self.assertTrue(self.hap.alive(), self.logs())
        bad = []
        for name, ph in report["phases"].items():
            for k in ("failed", "spoe_errors", "old_instances_late", "old_instances_unsettled"):
                if ph.get(k):
                    bad.append("%s: %s=%d" % (name, k, ph[k]))
            if ph["deny_403"] != ph["deny_requests"]:
                bad.append("%s: deny-listed client got 403 %d times of %d"
                           % (name, ph["deny_403"], ph["deny_requests"]))
            if ph["deny_requests"] == 0:
                bad.append("%s: no request from the deny-listed client" % name)
        for k in ("agent_disconnect_nonzero_logged", "handoff_closed_with_disconnect_logged",
                  "agent_disconnect_nonzero_current_workers"):
            if report[k]:
                bad.append("%s=%d" % (k, report[k]))
        if report["spoe_error_counters_rise"]:
            bad.append("SPOE error counters rose: %s" % report["spoe_error_counters_rise"])
        self.assertEqual(bad, [], (_summary(report), clients.failures[:20], self.logs()))


def _by_agent(spoe):
    out = {}
    for (agent, _, _), n in spoe.items():
        out[agent] = out.get(agent, 0) + n
    return out


def _nonzero_disconnects(j):
    """Sum of the non-zero-status AGENT-DISCONNECT counters (disconnect_<name> except the
    normal one) anywhere in a worker's `show stat json`."""
    total = 0
    if isinstance(j, dict):
        for k, v in j.items():
            if (isinstance(v, int) and k.startswith("disconnect_") and k != "disconnect_normal"
                    and not k.startswith("disconnects_")):
                total += v
            elif isinstance(v, (dict, list)):
                total += _nonzero_disconnects(v)
    elif isinstance(j, list):
        for v in j:
            total += _nonzero_disconnects(v)
    return total


def _summary(r):
    out = ["reload-haproxy: HAProxy %s, %s, %d clients, %d+%d reloads, grace %gs" % (
        r["haproxy"], r["layout"], r["clients"], r["reloads"], r["reloads"], r["grace_s"])]
    for name, ph in r["phases"].items():
        s = ("  %-16s %5.1fs requests %6d  failed %4d  SPOE events %7d  SPOE errors %4d  "
             "deny 403 %d/%d  keep-alive retries %d" % (
                 name, ph["seconds"], ph["requests"], ph["failed"], ph["spoe_events"],
                 ph["spoe_errors"], ph["deny_403"], ph["deny_requests"], ph["keepalive_retries"]))
        if "old_instances" in ph:
            s += "  old spoad instances %d, late %d, unsettled %d" % (
                ph["old_instances"], ph["old_instances_late"], ph["old_instances_unsettled"])
        out.append(s)
        if ph["spoe_errors_by_kind"]:
            out.append("  %-16s SPOE errors: %s" % ("", ph["spoe_errors_by_kind"]))
    out.append("  AGENT-DISCONNECT non-zero: logged %d, in current workers' counters %d; "
               "hand-offs closed with a DISCONNECT: %d" % (
                   r["agent_disconnect_nonzero_logged"],
                   r["agent_disconnect_nonzero_current_workers"],
                   r["handoff_closed_with_disconnect_logged"]))
    rise = r["spoe_error_counters_rise"]
    out.append("  SPOE error counters in the log since the load started: %s; HAProxy log lines "
               "dropped: about %d of %d" % ("n/a (not an error count from 3.3 on)" if rise is None
                                             else rise or "no rise",
                                             r["log_lines_lost_estimate"], r["answered"]))
    return "\n".join(out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
