"""spoad's /metrics under a real Prometheus, with HAProxy sending traffic through all three agents.

The stack: config/spoad.yaml (ip-checker, tracing, mirror; two workers each) started with
`--metrics 127.0.0.1:<port>`, config/haproxy.cfg (with `nbthread 1`, see below) and the SPOE
files of config/ (timeouts relaxed by harness.spoe_dir()), and Debian's `prometheus` server
(free port, storage in the test's directory) run from config/prometheus.yml with its scrape
and evaluation intervals set to 1 s, its target set to spoad's address and its `rule_files`
pointing at config/spoad-alerts.yml. Prometheus asks for OpenMetrics first (its Accept
header), so the scrapes go through that format; `promtool check metrics` reads the text
format 0.0.4 of the same endpoint.

What is checked:
- `promtool check rules config/spoad-alerts.yml` and `promtool check config` on the
  prometheus.yml the test derived from config/prometheus.yml succeed; `promtool test rules
  spoad_alerts_test.yml` (next to this file): each alert fires on synthetic series of what it
  is about (scrape failing, no ready worker, p99 at 249 ms, a third of the exports failing),
  not before its `for`, with the labels and annotations given there;
- `promtool check metrics` finds nothing to say about spoad's output (at the start, and at the
  end when every family has samples);
- under HTTP traffic (persistent connections from the four addresses of supervisor.HTTP_CASES,
  each answer checked), a spoad `reload` through its master CLI (socat), then a `kill -9` of
  an ip-checker worker. Queried through Prometheus's HTTP API over the whole run:
  spoad_notify_total{agent="iprep"} (summed over its series) never decreases, sample by
  sample (`/api/v1/query` of a range selector: every scraped sample), and `resets()` is 0;
  after the traffic stopped, the first scrape that started later shows exactly the number of
  requests HAProxy logged (its `www` frontend's http log lines: one per request, each of them
  one ip-checker NOTIFY), which is the number of answers the test's clients got. The worker
  exit (cause="signal"), the respawn and the reload are in Prometheus as well, and so is,
  exactly once, the protocol error the test causes before the reload (an HTTP request sent to
  the ip-checker's port: AGENT-DISCONNECT status 3);
- every PromQL expression of config/grafana-dashboard.json and config/spoad-alerts.yml
  returns data in that Prometheus (`/api/v1/query_range` over the run, 1 s steps), and those
  about what the test made happen (requests, the protocol error, processing time, reloads,
  exits and respawns, ip-checker decisions, span exports, replays) have a value above 0
  somewhere. How an
  expression is made concrete:
    * dashboard: `$agent` becomes `iprep|tracing|mirror` (what Grafana sends for the three
      agents selected), `$instance` spoad's metrics address, `$__rate_interval` `4s` (Grafana's
      value for a 1 s scrape interval: four intervals); any other `$` variable fails the test.
      The template variables (`label_values(METRIC, LABEL)`) are asked from
      `/api/v1/label/LABEL/values?match[]=METRIC`;
    * alert rules, as Prometheus loaded them (`/api/v1/rules`; each must be healthy, i.e.
      evaluated without error): an alert expression is normally empty (a comparison filters
      its series out), so each operand of a top-level `or` is evaluated on its own with its
      top-level comparison turned into a `bool` comparison (`X > 0.1` becomes `X > bool 0.1`:
      every series of X, with 0 or 1), and so is the comparison's left side X (the value the
      threshold applies to). Both must return data; neither must be above 0 (nothing is
      wrong in this run: 0 is the expected answer).

The kill -9 happens while the traffic pauses: a NOTIFY HAProxy sent that the killed worker had
not read yet would be lost to both spoad and the count (HAProxy logs the request with an SPOE
error), so the equality could not be claimed across it; a NOTIFY the worker did read is in its
counters, which the master reads after the death. The reload happens under traffic (old
workers hand their connections over: nothing is lost).

HAProxy runs with `nbthread 1`: with several threads it may drop a log line when two of them
log at once (see test_reload_haproxy.py), and its log is what the count is compared with.

No sleep synchronises anything: each step waits for its event (a port, a CLI answer, a pid
gone, a Prometheus sample newer than a moment) with harness.GUARD_S as a guard.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import stack  # noqa: E402
import supervisor as sv  # noqa: E402
from test_reload_haproxy import Clients, WWW_LINE  # noqa: E402

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DASHBOARD = os.path.join(harness.CONFIG_DIR, "grafana-dashboard.json")
ALERTS = os.path.join(harness.CONFIG_DIR, "spoad-alerts.yml")
PROM_CONFIG = os.path.join(harness.CONFIG_DIR, "prometheus.yml")
# promtool unit tests of the alert rules: each fires on the series it is about, after its `for`.
ALERT_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spoad_alerts_test.yml")

AGENTS = ("iprep", "tracing", "mirror")  # config/spoad.yaml
WORKERS = 6  # two per agent in config/spoad.yaml
CLIENTS = 8
PHASE_REQUESTS = 300  # requests per phase (before the reload, after it, after the kill),
SCRAPES_PER_PHASE = 3  # and scrapes
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape interval
# What the test makes happen: an expression of the dashboard or the rules that reads one of
# these must show a value above 0 somewhere in the run.
NONZERO = ("spoad_notify_total", "spoad_processing_seconds", "spoad_reloads_total",
           "spoad_worker_exits_total", "spoad_respawns_total", "spoad_ip_checker_decisions_total",
           "spoad_ip_checker_matches_total", "spoad_tracing_export_requests_total",
           "spoad_tracing_spans_exported_total", "spoad_mirror_replays_total",
           "spoad_connections{", "spoad_process_resident_memory_bytes", "spoad_build_info",
           "spoad_protocol_errors_total", "spoad_disconnects_sent_total")
# What the test sends to the ip-checker's port once: an HTTP request, whose "GET " reads as a
# frame length beyond max-frame-size (SPOE.txt 3.4: status 3, frame is too big).
NOT_SPOP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


# --------------------------------------------------------------------------------------------
# Prometheus


class Prometheus:
    """A Prometheus server and its HTTP API (api/v1)."""

    def __init__(self, env, metrics_addr):
        self.env = env
        self.port = harness.free_port()
        self.config = env.write("prometheus.yml", prometheus_config(metrics_addr))
        self.proc = None

    def start(self):
        self.proc = self.env.start("prometheus", [
            PROMETHEUS, "--config.file=" + self.config,
            "--storage.tsdb.path=" + self.env.path("prometheus-data"),
            "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"])
        return self

    def ready(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path, **params):
        """GET /api/v1/<path>; returns `data`, raises AssertionError on an error answer."""
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.port, path,
                                                    urllib.parse.urlencode(params, doseq=True))
        try:
            with urllib.request.urlopen(url, timeout=harness.GUARD_S) as r:
                doc = json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read().decode() or "{}")
        if doc.get("status") != "success":
            raise AssertionError("Prometheus %s %r: %s" % (path, params, doc))
        return doc["data"]

    def query(self, expr, at=None):
        return self.api("query", query=expr, **({"time": "%.3f" % at} if at else {}))["result"]

    def query_range(self, expr, start, end, step="1s"):
        return self.api("query_range", query=expr, start="%.3f" % start, end="%.3f" % end,
                        step=step)["result"]

    def last_sample_time(self, expr):
        """The newest sample time of `expr` (an instant vector selector), 0 if none."""
        r = self.query("max(timestamp(%s))" % expr)
        return float(r[0]["value"][1]) if r else 0.0

    def wait_scrape_after(self, t, expr='spoad_notify_total{agent="iprep"}'):
        """Waits until Prometheus holds a sample of `expr` scraped after `t` (a time.time());
        returns its time, or 0 after the guard."""
        return harness.wait_for(lambda: (lambda s: s if s > t else 0)(self.last_sample_time(expr)),
                                interval=0.2)


def prometheus_config(metrics_addr):
    """config/prometheus.yml with 1 s intervals, spoad's address as its target and the
    absolute path of config/spoad-alerts.yml; nothing else changes."""
    with open(PROM_CONFIG) as f:
        text = f.read()
    subs = [(r"(?m)^(\s*scrape_interval:\s*)\S+", r"\g<1>1s"),
            (r"(?m)^(\s*evaluation_interval:\s*)\S+", r"\g<1>1s"),
            (r"(?m)^(\s*-\s*)spoad-alerts\.yml\s*$", r"\g<1>" + ALERTS),
            (r'(?m)^(\s*-\s*targets:\s*)\["[^"]+"\]', r'\g<1>["%s"]' % metrics_addr)]
    for pat, rep in subs:
        text, n = re.subn(pat, rep, text, count=1)
        if n != 1:
            raise AssertionError("config/prometheus.yml: no match for %r" % pat)
    return text


# --------------------------------------------------------------------------------------------
# The expressions of the shipped files


def dashboard_exprs(dash):
    """[(where, expr)] of every query of the dashboard, rows' panels included."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(("panel %r %s" % (p.get("title"), t.get("refId")), t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return out


def dashboard_variables(dash):
    """[(name, metric selector, label)] of the `label_values(SELECTOR, LABEL)` variables."""
    out = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q or "")
        if not m:
            raise AssertionError("variable %r: not label_values(...): %r" % (v.get("name"), q))
        out.append((v["name"], m.group(1), m.group(2)))
    return out


def concrete(expr, instance):
    """A dashboard expression with its Grafana variables replaced (see the module doc)."""
    e = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$instance", instance)
    e = e.replace("$agent", "|".join(AGENTS))
    left = re.findall(r"\$\{?\w+", e)
    if left:
        raise AssertionError("no test value for %s in %r" % (left, expr))
    return e


def _top_level(expr):
    """Yields (index, text) of the tokens of `expr` outside (), [], {} and strings: the
    operators `or` and comparisons. Enough for the rules' expressions."""
    depth, i, n = 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            two = expr[i:i + 2]
            if two in ("==", "!=", ">=", "<="):
                yield i, two
                i += 2
                continue
            if c in "<>":
                yield i, c
            elif re.match(r"(?<![\w])or(?![\w])", expr[i:i + 3]) and (i == 0 or not (
                    expr[i - 1].isalnum() or expr[i - 1] == "_")):
                yield i, "or"
                i += 2
                continue
        i += 1


def alert_probes(expr):
    """The expressions that stand for an alert expression (see the module doc): each operand
    of a top-level `or`, its top-level comparison made a `bool` one, and that comparison's left
    side: [(operand with bool, left side or None)]."""
    cuts = [i for i, tok in _top_level(expr) if tok == "or"]
    parts, start = [], 0
    for i in cuts + [len(expr)]:
        parts.append(expr[start:i].strip())
        start = i + 2
    out = []
    for p in parts:
        cmp = [(i, tok) for i, tok in _top_level(p) if tok != "or"]
        lhs = None
        if cmp:
            i, tok = cmp[-1]
            lhs = p[:i].strip()
            rest = p[i + len(tok):].lstrip()
            if not rest.startswith("bool"):
                p = p[:i + len(tok)] + " bool " + rest
        out.append((p, lhs))
    return out


def has_data(result):
    return any(s.get("values") or s.get("value") for s in result)


def max_value(result):
    vals = []
    for s in result:
        for _, v in s.get("values") or ([s["value"]] if s.get("value") else []):
            try:
                f = float(v)
            except ValueError:
                continue
            if f == f:  # not NaN
                vals.append(f)
    return max(vals) if vals else None


# --------------------------------------------------------------------------------------------
# spoad's endpoint


def fetch_metrics(addr, accept=None):
    req = urllib.request.Request("http://%s/metrics" % addr,
                                 headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=harness.GUARD_S) as r:
        return r.read()


def promtool_check_metrics(text):
    """(exit status, output) of `promtool check metrics` on `text` (bytes)."""
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       timeout=harness.GUARD_S)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def sample_sum(text, family, labels):
    """Sum of the samples of `family` whose labels include all of `labels` (a dict), from the
    text format."""
    total = 0.0
    for line in text.decode("utf-8", "replace").splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != family:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# --------------------------------------------------------------------------------------------


@unittest.skipUnless(os.path.exists(PROMETHEUS) and os.path.exists(PROMTOOL),
                     "prometheus/promtool not installed (scripts/deps.sh installs Debian's "
                     "prometheus package)")
class MetricsUnderPrometheus(unittest.TestCase):
    maxDiff = None
    def setUp(self):
        self.stack = stack.Stack("metrics-prom")
        self.addCleanup(self.stack.stop)
        self.env, self.tracker = self.stack.env, self.stack.tracker
        self.vars = self.stack.use_shipped()
        self.sock, self.fe = self.stack.sock, self.stack.fe
        self.metrics_addr = "127.0.0.1:%d" % harness.free_port()

    def logs(self):
        return sv.tail_logs(self.env)

    def start_stack(self):
        self.spoad = self.stack.start_shipped_spoad(args=["--metrics", self.metrics_addr],
                                                    workers=WORKERS)
        sp = sv.show_proc(self.sock)
        self.assertTrue(harness.wait_for(lambda: harness.port_open(
            harness.port_of(self.metrics_addr))), ("no metrics listener", self.logs()))
        with open(os.path.join(harness.CONFIG_DIR, "haproxy.cfg")) as f:
            cfg = f.read()
        # One thread: HAProxy never drops a log line (see the module doc).
        cfg, n = re.subn(r"(?m)^global\n", "global\n    nbthread 1\n", cfg, count=1)
        self.assertEqual(n, 1, "config/haproxy.cfg has no global section")
        self.hap = self.stack.start_shipped_haproxy(text=cfg, ready=self.warm_up)
        return sp

    warm_answered = 0  # requests of warm_up() that got an answer (HAProxy logged each)

    def warm_up(self):
        """One request from each source of sv.HTTP_CASES; True if each got its expected
        answer (as sv.wait_http_ok, but counting the answers)."""
        for src, status, score in sv.HTTP_CASES:
            try:
                st, hdrs, _ = harness.http_request(self.fe, "/", source=src, timeout=10)
            except OSError:
                return False
            self.warm_answered += 1
            if st != status or "x-spoe-error" in hdrs or hdrs.get("x-ip-score") != score:
                return False
        return True

    def www_lines(self):
        return len(WWW_LINE.findall(self.hap.output()))

    def spoe_statuses(self):
        """{status: n} of the iprep-agent event lines of HAProxy's log."""
        out = {}
        for st in re.findall(r"SPOE: \[iprep-agent\] <EVENT:[^>]+> sid=\d+ st=(\d+)",
                             self.hap.output()):
            out[st] = out.get(st, 0) + 1
        return out

    def protocol_error(self):
        """Sends NOT_SPOP to the ip-checker; returns the AGENT-DISCONNECT's status once the
        agent closed the connection."""
        c = spop.Client(("127.0.0.1", harness.port_of(self.vars["SPOAD_IPREP_ADDR"])))
        try:
            c.send(NOT_SPOP)
            f = c.recv_frame()
            self.assertTrue(f is not None and f.type == spop.AGENT_DISCONNECT, f)
            self.assertTrue(c.closed(), "the agent did not close after AGENT-DISCONNECT")
            return f.kv()["status-code"]
        finally:
            c.close()

    def traffic(self, clients, prom):
        """Waits until `clients` answered PHASE_REQUESTS more requests and Prometheus scraped
        SCRAPES_PER_PHASE times meanwhile."""
        n = clients.snapshot()["answered"]
        for _ in range(SCRAPES_PER_PHASE):
            self.assertTrue(prom.wait_scrape_after(time.time()), ("no scrape", self.logs()))
        self.assertTrue(harness.wait_for(
            lambda: clients.snapshot()["answered"] >= n + PHASE_REQUESTS, interval=0.1),
            ("no traffic", clients.snapshot(), self.logs()))

    def test_counters_across_reload_and_kill(self):
        r = subprocess.run([PROMTOOL, "check", "rules", ALERTS], capture_output=True, text=True,
                           timeout=harness.GUARD_S)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)

        sp = self.start_stack()
        status, out = promtool_check_metrics(fetch_metrics(self.metrics_addr))
        self.assertEqual((status, out.strip()), (0, ""), "promtool check metrics at start")

        prom = Prometheus(self.env, self.metrics_addr)
        r = subprocess.run([PROMTOOL, "check", "config", prom.config], capture_output=True,
                           text=True, timeout=harness.GUARD_S)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        prom.start()
        self.assertTrue(harness.wait_for(prom.ready), ("Prometheus not ready", self.logs()))
        t_start = time.time()
        self.assertTrue(prom.wait_scrape_after(t_start), ("no scrape", self.logs()))

        answered = 0
        # Phase 1: traffic, then a reload under it.
        clients = Clients(self.fe, CLIENTS).start()
        try:
            self.traffic(clients, prom)
            self.assertEqual(self.protocol_error(), 3)
            old = sp.pids()
            out = sv.socat_cmd(self.sock, "reload")
            self.assertTrue(out.startswith("Success=1"), (out, self.logs()))
            sp = sv.wait_pool(self.sock, WORKERS, exclude=old, proc=self.spoad)
            self.assertIsNotNone(sp, ("no new generation", self.logs()))
            self.tracker.add_proc(sp)
            self.assertTrue(harness.wait_for(lambda: sv.all_dead(old)),
                            ("old workers still alive", self.logs()))
            self.traffic(clients, prom)
        finally:
            clients.stop()
        answered += clients.snapshot()["answered"]
        failures = list(clients.failures)

        # kill -9 of an ip-checker worker, traffic paused (see the module doc).
        victim = next(r.pid for r in sp.workers if r.type == "iprep")
        os.kill(victim, signal.SIGKILL)
        sp = sv.wait_pool(self.sock, WORKERS, exclude={victim}, proc=self.spoad)
        self.assertIsNotNone(sp, ("no respawn after kill -9", self.logs()))
        self.tracker.add_proc(sp)
        self.assertTrue(prom.wait_scrape_after(time.time()), self.logs())

        # Phase 3: traffic on the respawned pool, then stop.
        clients = Clients(self.fe, CLIENTS).start()
        try:
            self.traffic(clients, prom)
        finally:
            clients.stop()
        t_stop = time.time()
        answered += clients.snapshot()["answered"]
        failures += clients.failures
        self.assertEqual(failures, [], self.logs())

        # HAProxy logs a request when its stream ends, after the response: wait for the lines.
        answered += self.warm_answered
        harness.wait_for(lambda: self.www_lines() >= answered, interval=0.1)
        logged = self.www_lines()
        # (+50 ms: Prometheus may move a scrape's timestamp by up to 2 ms to align it.)
        t_final = prom.wait_scrape_after(t_stop + 0.05)
        self.assertTrue(t_final, ("no scrape after the traffic", self.logs()))
        t_end = t_final + 0.001

        # Every scraped sample of the ip-checker's NOTIFY counter, in order.
        window = "%ds" % (int(t_end - t_start) + 5)
        raw = prom.query('spoad_notify_total{agent="iprep"}[%s]' % window, at=t_end)
        self.assertTrue(raw, "no spoad_notify_total samples")
        per_time = {}
        for s in raw:
            vals = [float(v) for _, v in s["values"]]
            self.assertEqual(vals, sorted(vals), ("a series went down", s["metric"]))
            for ts, v in s["values"]:
                per_time[ts] = per_time.get(ts, 0.0) + float(v)
        sums = [per_time[t] for t in sorted(per_time)]
        self.assertEqual(sums, sorted(sums), "the sum over the agent's series went down")
        self.assertGreaterEqual(len(sums), 4, "fewer scrapes than phases")
        resets = prom.query('resets(spoad_notify_total{agent="iprep"}[%s])' % window, at=t_end)
        self.assertEqual([float(s["value"][1]) for s in resets], [0.0] * len(resets))

        final = prom.query('sum(spoad_notify_total{agent="iprep"})', at=t_end)
        final = int(float(final[0]["value"][1]))
        direct = int(sample_sum(fetch_metrics(self.metrics_addr), "spoad_notify_total",
                                {"agent": "iprep"}))
        report = {"answered": answered, "haproxy_www_lines": logged,
                  "prometheus_notify_total_iprep": final, "metrics_endpoint_now": direct,
                  "iprep_spoe_statuses": self.spoe_statuses(), "scrapes": len(sums),
                  "first_sum": sums[0], "last_sum": sums[-1]}
        print("\nmetrics-prometheus counts: " + json.dumps(report, sort_keys=True), flush=True)
        self.assertEqual(logged, answered, report)  # one log line per answered request
        self.assertEqual(final, logged, report)
        self.assertEqual(direct, final, report)

        def last(expr):
            r = prom.query(expr, at=t_end)
            return float(r[0]["value"][1]) if r else None
        self.assertGreaterEqual(last('sum(spoad_worker_exits_total{agent="iprep",cause="signal"})')
                                or 0, 1)
        self.assertGreaterEqual(last('sum(spoad_respawns_total{agent="iprep"})') or 0, 1)
        self.assertGreaterEqual(last("sum(spoad_reloads_total)") or 0, 1)
        # The one protocol error, counted once whichever worker had it and wherever it went.
        self.assertEqual(last('sum(spoad_protocol_errors_total{agent="iprep"})'), 1)
        self.assertEqual(last('sum(spoad_disconnects_sent_total{agent="iprep",'
                              'status="frame-too-big"})'), 1)

        status, out = promtool_check_metrics(fetch_metrics(self.metrics_addr))
        self.assertEqual((status, out.strip()), (0, ""), "promtool check metrics at the end")
        # Prometheus parsed every scrape (OpenMetrics, its first choice) without complaint.
        targets = prom.api("targets")["activeTargets"]
        self.assertEqual([(t["labels"]["job"], t["health"], t["lastError"]) for t in targets],
                         [("spoad", "up", "")], targets)

        self.check_shipped_expressions(prom, t_start, t_end)

    def check_shipped_expressions(self, prom, t_start, t_end):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        checked, empty, zero = [], [], []

        def probe(where, expr, nonzero=True):
            res = prom.query_range(expr, t_start, t_end)
            mx = max_value(res)
            checked.append((where, expr, len(res), mx))
            if not has_data(res):
                empty.append((where, expr))
            elif nonzero and any(k in expr for k in NONZERO) and not (mx and mx > 0):
                zero.append((where, expr, mx))

        for where, expr in dashboard_exprs(dash):
            probe(where, concrete(expr, self.metrics_addr))
        for name, selector, label in dashboard_variables(dash):
            values = prom.api("label/%s/values" % label,
                              **{"match[]": concrete(selector, self.metrics_addr)})
            checked.append(("variable " + name, selector, len(values), None))
            if not values:
                empty.append(("variable " + name, selector))
        # The rules as Prometheus loaded them; each evaluated without error.
        groups = harness.wait_for(lambda: (lambda g: g if g and all(
            r.get("lastEvaluation", "").startswith("20") for gr in g for r in gr["rules"])
            else None)(prom.api("rules")["groups"]), interval=0.2)
        self.assertTrue(groups, "Prometheus has not evaluated the rules")
        rules = [r for g in groups for r in g["rules"]]
        self.assertEqual(len(rules), 3, [r["name"] for r in rules])
        for r in rules:
            self.assertEqual((r["name"], r["health"], r.get("lastError", "")),
                             (r["name"], "ok", ""))
            # 0 is the expected value of a bool comparison and of a failure ratio: data only.
            for with_bool, lhs in alert_probes(r["query"]):
                probe("rule %s" % r["name"], with_bool, nonzero=False)
                if lhs:
                    probe("rule %s, left side" % r["name"], lhs, nonzero=False)

        print("\nPromQL expressions checked (%d):" % len(checked), flush=True)
        for where, expr, n, mx in checked:
            print("  %-48s series %3d max %-10s %s" % (where[:48], n, "-" if mx is None else
                                                      "%.4g" % mx, expr), flush=True)
        self.assertEqual(empty, [], "expressions without data")
        self.assertEqual(zero, [], "expressions about what happened, 0 all along")


class PromqlHelpers(unittest.TestCase):
    """The test's own parsing of the shipped expressions, and the alert rules' unit tests (no
    server needed)."""

    @unittest.skipUnless(os.path.exists(PROMTOOL), "promtool not installed (scripts/deps.sh "
                         "installs Debian's prometheus package)")
    def test_alert_rules_fire(self):
        r = subprocess.run([PROMTOOL, "test", "rules", ALERT_TESTS], capture_output=True,
                           text=True, timeout=harness.GUARD_S)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)

    def test_alert_probes(self):
        self.assertEqual(alert_probes('up{job="spoad"} == 0 or sum by (a) (x{s="r"}) < 1'),
                         [('up{job="spoad"} == bool 0', 'up{job="spoad"}'),
                          ('sum by (a) (x{s="r"}) < bool 1', 'sum by (a) (x{s="r"})')])
        self.assertEqual(alert_probes("histogram_quantile(0.99, sum by (le) (rate(h[5m]))) > 0.1"),
                         [("histogram_quantile(0.99, sum by (le) (rate(h[5m]))) > bool 0.1",
                           "histogram_quantile(0.99, sum by (le) (rate(h[5m])))")])
        self.assertEqual(alert_probes('a{x="or > 1"} / b > bool 0.05'),
                         [('a{x="or > 1"} / b > bool 0.05', 'a{x="or > 1"} / b')])
        self.assertEqual(alert_probes("sum(x{color=\"or\"}) or vector(0)"),
                         [('sum(x{color="or"})', None), ("vector(0)", None)])
        self.assertEqual(alert_probes("a >= 2 or b <= 3 or c != 4"),
                         [("a >= bool 2", "a"), ("b <= bool 3", "b"), ("c != bool 4", "c")])

    def test_concrete(self):
        self.assertEqual(concrete('rate(x{agent=~"$agent", instance=~"$instance"}'
                                  '[$__rate_interval])', "h:1"),
                         'rate(x{agent=~"iprep|tracing|mirror", instance=~"h:1"}[4s])')
        with self.assertRaises(AssertionError):
            concrete("x{job=~\"$job\"}", "h:1")

    def test_shipped_files_parse(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        self.assertGreater(len(dashboard_exprs(dash)), 20)
        self.assertEqual([v[0] for v in dashboard_variables(dash)], ["instance", "agent"])
        names = [v["name"] for v in dash["templating"]["list"]]
        self.assertIn("DS_PROMETHEUS", names)
        for _, e in dashboard_exprs(dash):
            concrete(e, "h:1")


if __name__ == "__main__":
    unittest.main(verbosity=2)
