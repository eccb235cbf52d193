"""The master's Prometheus endpoint (`metrics.listen`, `--metrics`) and `show stat`, with the real
spoad, spoa-bench, socat and promtool (Debian's prometheus package); no Prometheus server here.

- GET /metrics answers the text format 0.0.4, or OpenMetrics 1.0.0 when Accept asks for it
  (ending with `# EOF`); `promtool check metrics` passes on it; `/` links /metrics; another
  path is a 404; POST is a 405 with `Allow`; HEAD is answered without a body. The supervisor's
  series are there (workers by state, generation, per-process start time, RSS, open fds,
  stalled workers, build info); the workers' heartbeat is not.
- Counters survive a kill -9 of a worker and a reload: spoad_notify_total of the agent, scraped
  all along by a thread, never goes down, and ends equal to the NOTIFYs spoa-bench sent; the
  exits are counted by cause (signal, exit), the respawn and the reload too.
- `@master show stat` and `show stat json` through socat show the same totals.
- A worker stopped by SIGSTOP shows as spoad_worker_stalled 1 after 5 s, and 0 after SIGCONT.
- Budgets: max-connections (the next scraper waits in the backlog: it is served with at most
  the limit open, once a silent connection was closed), timeout (silent connections closed and
  counted), max-connection-memory (a request bigger than it is refused and counted).
- metrics.* errors name the file, line and key (spoad -c and a start); a bad --metrics value;
  --metrics overrides metrics.listen, also across a reload; a reload with a new address
  rebinds, one with a busy address fails and the old endpoint keeps serving; IPv6.

Each step waits for its event (a scrape value, a CLI answer, a closed socket), with
harness.GUARD_S as a guard against a hang; nothing measures speed.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import supervisor as sv  # noqa: E402

PROMTOOL = shutil.which("promtool")
TEXT_CT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# --------------------------------------------------------------------------------------------
# The exposition, parsed

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse(text):
    """Sample lines -> [(name, {label: value}, float)]; comments skipped. Raises on a line
    that is neither."""
    out = []
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels = {}
        if m.group(2):
            rest = m.group(2)
            pos = 0
            while pos < len(rest):
                lm = _LABEL.match(rest, pos)
                if not lm:
                    raise AssertionError("bad labels in %r" % line)
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def find(samples, name, **labels):
    """The samples of `name` whose labels include `labels`."""
    return [s for s in samples if s[0] == name and all(s[1].get(k) == v for k, v in labels.items())]


def value(samples, name, **labels):
    """The value of the one sample of `name` with `labels` (None if there is none)."""
    found = find(samples, name, **labels)
    assert len(found) <= 1, ("several samples match", name, labels, found)
    return found[0][2] if found else None


# --------------------------------------------------------------------------------------------
# HTTP


def get(port, path="/metrics", method="GET", headers=None, host="127.0.0.1", body=None):
    """(status, headers lowercased, body bytes)."""
    return harness.http_request(port, path, method=method, headers=headers, host=host,
                                body=body)


def scrape(port, host="127.0.0.1"):
    status, headers, body = get(port, host=host)
    assert status == 200, (status, body[:500])
    return parse(body.decode())


def refused(port, host="127.0.0.1"):
    """True if nothing listens on host:port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(harness.GUARD_S)
        try:
            s.connect((host, port))
            return False
        except ConnectionRefusedError:
            return True


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# spoad


def config(agents, sock, metrics=None):
    """A spoad file; `metrics`: the lines of its metrics section (without the header)."""
    text = sv.config(agents, socket_path=sock, grace="30s")
    if metrics is not None:
        text = text.replace("agents:\n", "metrics:\n" + metrics + "agents:\n", 1)
    return text


def bench(port, requests):
    """spoa-bench: `requests` ACKs of check-client-ip, 2 connections, one NOTIFY in flight each.
    Returns the NOTIFYs it sent."""
    r = subprocess.run(
        [harness.SPOA_BENCH, "-a", "127.0.0.1:%d" % port, "-c", "2", "-d", "1", "--warmup", "0",
         "--requests", str(requests), "--timeout", "%g" % harness.GUARD_S, "--json",
         "-m", "check-client-ip", "--arg", "ip=ipv4:192.0.2.1"],
        capture_output=True, text=True, timeout=harness.GUARD_S * 2)
    res = json.loads(r.stdout)
    assert r.returncode == 0 and res["errors"]["total"] == 0, (r.stdout, r.stderr[-2000:])
    assert res["acks"] >= requests, res
    return res["sent"] + res["warmup"]["sent"]


class Base(unittest.TestCase):
    name = "metrics"

    def setUp(self):
        self.env = harness.Env(self.name)
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = self.env.path("master.sock")
        self.cfg = self.env.path("spoad.yaml")

    def logs(self):
        return sv.tail_logs(self.env)

    def write(self, text):
        with open(self.cfg, "w") as f:
            f.write(text)

    def start(self, text, n_workers, args=()):
        self.write(text)
        p = self.env.spoad(self.cfg, args=list(args))
        sp = sv.wait_pool(self.sock, n_workers, proc=p)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, "the pool did not start:\n" + self.env.dump_logs())
        return p, sp

    def reload(self):
        return sv.cli(self.sock, "reload")

    def stat(self):
        """`show stat` of the master, as samples (after its CSV header and row)."""
        lines = sv.cli(self.sock, "show stat").split("\n")
        self.assertTrue(lines[0].startswith("# process,"), lines[:3])
        return parse("\n".join(lines[2:]))


# --------------------------------------------------------------------------------------------


class Endpoint(Base):
    """Formats, paths, methods, the supervisor's series, promtool, show stat."""

    def test_formats_paths_and_promtool(self):
        port, mport = harness.free_port(), harness.free_port()
        self.start(config([sv.iprep_agent(port, 2)], self.sock,
                          "  listen: 127.0.0.1:%d\n" % mport), 2)
        sent = bench(port, 50)
        self.assertTrue(harness.wait_for(
            lambda: value(scrape(mport), "spoad_notify_total", agent="iprep") == sent),
            (sent, self.logs()))

        # Text format 0.0.4 by default.
        status, headers, body = get(mport)
        text = body.decode()
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], TEXT_CT)
        self.assertNotIn("# EOF", text)
        s = parse(text)
        self.assertEqual(value(s, "spoad_notify_total", agent="iprep", type="ip-checker"), sent)
        self.assertEqual(value(s, "spoad_up"), 1)
        self.assertEqual(value(s, "spoad_generation"), 1)
        self.assertEqual(value(s, "spoad_workers", agent="iprep", state="ready"), 2)
        self.assertEqual(value(s, "spoad_workers", agent="iprep", state="stopping"), 0)
        self.assertEqual(value(s, "spoad_reloads_total"), 0)
        self.assertEqual(len(find(s, "spoad_build_info", version=sv.spoad_version().split("-")[0])),
                         1, text)
        for fam in ("spoad_process_start_time_seconds", "spoad_process_resident_memory_bytes",
                    "spoad_process_open_fds"):
            self.assertGreater(value(s, fam, process="master"), 0, (fam, text))
            for rel in ("1", "2"):
                self.assertGreater(value(s, fam, process="worker", agent="iprep", worker=rel), 0,
                                   (fam, text))
        self.assertEqual(value(s, "spoad_worker_stalled", agent="iprep", worker="1"), 0)
        self.assertEqual(find(s, "spoad_worker_heartbeat_ms"), [])
        self.assertNotIn("heartbeat", text)
        # A histogram made cumulative with an +Inf bucket equal to its count.
        inf = value(s, "spoad_processing_seconds_bucket", agent="iprep", le="+Inf")
        self.assertEqual(inf, value(s, "spoad_processing_seconds_count", agent="iprep"))
        self.assertEqual(inf, sent)

        if PROMTOOL:
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                               timeout=harness.GUARD_S)
            self.assertEqual(r.returncode, 0, (r.stdout, r.stderr, text[:3000]))
        else:
            print("promtool not found (Debian package prometheus): check metrics not run")

        # OpenMetrics when the scraper asks for it (as Prometheus does).
        status, headers, body = get(mport, headers={
            "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                      "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
        om = body.decode()
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], OPENMETRICS)
        self.assertTrue(om.endswith("# EOF\n"), om[-200:])
        self.assertIn("# TYPE spoad_notify counter", om)
        self.assertEqual(value(parse(om), "spoad_notify_total", agent="iprep"), sent)

        # Keep-alive, as Prometheus scrapes: two answers on one connection.
        before = value(scrape(mport), "spoad_metrics_http_connections_total")
        conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=harness.GUARD_S)
        try:
            for _ in range(2):
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                self.assertIn(b"spoad_up 1", r.read())
        finally:
            conn.close()
        # That connection and the scrape below.
        self.assertEqual(value(scrape(mport), "spoad_metrics_http_connections_total"), before + 2)
        # HEAD: the headers of a GET, no body.
        status, headers, body = get(mport, method="HEAD")
        self.assertEqual((status, headers["content-type"], body), (200, TEXT_CT, b""))
        # /: a page that links /metrics.
        status, headers, body = get(mport, "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"), headers)
        self.assertIn(b'href="/metrics"', body)
        # Another path: 404; another method: 405 with Allow.
        self.assertEqual(get(mport, "/nope")[0], 404)
        self.assertEqual(get(mport, "/metrics/x")[0], 404)
        status, headers, _ = get(mport, method="POST", body=b"x=1")
        self.assertEqual(status, 405)
        self.assertEqual(headers.get("allow"), "GET, HEAD")
        self.assertEqual(get(mport, method="DELETE")[0], 405)
        s = scrape(mport)
        self.assertEqual(value(s, "spoad_metrics_http_requests_total", code="404"), 2)
        self.assertEqual(value(s, "spoad_metrics_http_requests_total", code="405"), 2)

        # The master CLI through socat: `@master show stat` and `show stat json`, same totals.
        out = sv.socat_cmd(self.sock, "@master show stat")
        lines = out.split("\n")
        self.assertTrue(lines[0].startswith("# process,pid,"), out[:500])
        self.assertTrue(lines[1].startswith("master,"), out[:500])
        cli = parse("\n".join(lines[2:]))
        self.assertEqual(value(cli, "spoad_notify_total", agent="iprep", type="ip-checker"), sent)
        self.assertEqual(value(cli, "spoad_workers", agent="iprep", state="ready"), 2)
        self.assertNotIn("# HELP", out)
        js = sv.load_json(sv.socat_cmd(self.sock, "show stat json"))
        self.assertEqual(js["master"]["process"], "master")
        notify = [m for m in js["metrics"] if m["name"] == "spoad_notify_total"
                  and m["labels"] == {"agent": "iprep", "type": "ip-checker"}]
        self.assertEqual(len(notify), 1, js["metrics"][:20])
        self.assertEqual(notify[0]["value"], sent)
        inf = [m for m in js["metrics"] if m["name"] == "spoad_processing_seconds_bucket"
               and m["labels"].get("le") == "+Inf"]
        self.assertEqual([m["value"] for m in inf], [sent])
        self.assertIn("show stat [json]", sv.socat_cmd(self.sock, "help"))
        print("scrape: %d bytes, %d samples; show stat json: %d metrics"
              % (len(text), len(s), len(js["metrics"])))

    def test_stalled_worker(self):
        port, mport = harness.free_port(), harness.free_port()
        _, sp = self.start(config([sv.echo_agent(port, 2)], self.sock,
                                  "  listen: 127.0.0.1:%d\n" % mport), 2)
        victim = sp.worker(1).pid
        os.kill(victim, signal.SIGSTOP)
        try:
            # The heartbeat is set every second; stalled past 5 s of silence.
            self.assertTrue(harness.wait_for(lambda: value(
                scrape(mport), "spoad_worker_stalled", agent="echo", worker="1") == 1),
                self.logs())
            s = scrape(mport)
            self.assertEqual(value(s, "spoad_worker_stalled", agent="echo", worker="2"), 0)
            # The scrape never waited for the stopped worker: it read its arena.
            self.assertEqual(value(s, "spoad_workers", agent="echo", state="ready"), 2)
        finally:
            os.kill(victim, signal.SIGCONT)
        self.assertTrue(harness.wait_for(lambda: value(
            scrape(mport), "spoad_worker_stalled", agent="echo", worker="1") == 0), self.logs())


class Survival(Base):
    """Per-agent counters across a kill -9 and a reload, scraped all along."""

    def test_kill_9_and_reload(self):
        port, mport = harness.free_port(), harness.free_port()
        _, sp = self.start(config([sv.iprep_agent(port, 2)], self.sock,
                                  "  listen: 127.0.0.1:%d\n" % mport), 2)
        seen = []
        stop = threading.Event()
        errors = []

        def scraper():
            while not stop.is_set():
                try:
                    v = value(scrape(mport), "spoad_notify_total", agent="iprep")
                except Exception as e:  # noqa: BLE001 - reported by the test
                    errors.append(repr(e))
                    return
                seen.append(v or 0)
                stop.wait(0.02)
        t = threading.Thread(target=scraper)
        t.start()
        try:
            def total():
                return value(scrape(mport), "spoad_notify_total", agent="iprep")
            sent = bench(port, 300)
            self.assertTrue(harness.wait_for(lambda: total() == sent), (sent, self.logs()))
            per_worker = {r.rel: int(sv.worker_info(self.sock, r.rel)["CumNotify"])
                          for r in sp.workers}
            self.assertEqual(sum(per_worker.values()), sent, per_worker)
            # kill -9 the worker that counted more: its counts stay in the total.
            victim_rel = max(per_worker, key=per_worker.get)
            victim = sp.worker(victim_rel).pid
            self.assertGreater(per_worker[victim_rel], 0)
            os.kill(victim, signal.SIGKILL)
            self.assertTrue(harness.wait_for(lambda: value(
                scrape(mport), "spoad_worker_exits_total", agent="iprep", cause="signal") == 1),
                self.logs())
            sp2 = sv.wait_pool(self.sock, 2, exclude={victim})
            self.assertIsNotNone(sp2, self.logs())
            self.tracker.add_proc(sp2)
            s = scrape(mport)
            self.assertEqual(value(s, "spoad_notify_total", agent="iprep"), sent)
            self.assertEqual(value(s, "spoad_respawns_total", agent="iprep"), 1)
            # The new worker counts from 0; the total goes on.
            self.assertEqual(int(sv.worker_info(self.sock, victim_rel)["CumNotify"]), 0)
            sent += bench(port, 300)
            self.assertTrue(harness.wait_for(lambda: total() == sent), (sent, self.logs()))

            out = self.reload()
            self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
            # Both old workers soft-stop and exit with code 0.
            self.assertTrue(harness.wait_for(lambda: value(
                scrape(mport), "spoad_worker_exits_total", agent="iprep", cause="exit") == 2),
                self.logs())
            s = scrape(mport)
            self.assertEqual(value(s, "spoad_notify_total", agent="iprep"), sent)
            self.assertEqual(value(s, "spoad_reloads_total"), 1)
            self.assertEqual(value(s, "spoad_generation"), 2)
            self.assertEqual(value(s, "spoad_workers", agent="iprep", state="stopping"), 0)
            self.assertEqual(len(find(s, "spoad_process_start_time_seconds", process="worker",
                                      generation="2")), 2)
            sent += bench(port, 300)
            self.assertTrue(harness.wait_for(lambda: total() == sent), (sent, self.logs()))
            # The histogram went on too.
            self.assertEqual(value(scrape(mport), "spoad_processing_seconds_count",
                                   agent="iprep"), sent)
        finally:
            stop.set()
            t.join()
        seen.append(total())
        self.assertEqual(errors, [])
        self.assertGreater(len(seen), 2)
        drops = [(a, b) for a, b in zip(seen, seen[1:]) if b < a]
        self.assertEqual(drops, [], seen)
        self.assertEqual(seen[-1], sent)
        # The same total in the master CLI (live and exited workers summed).
        cli = self.stat()
        self.assertEqual(value(cli, "spoad_notify_total", agent="iprep"), sent)
        self.assertEqual(value(cli, "spoad_worker_exits_total", agent="iprep", cause="signal"), 1)
        print("%d NOTIFYs across a kill -9 and a reload; %d scrapes, never lower than the one "
              "before" % (sent, len(seen)))


class Budgets(Base):
    """max-connections, timeout and max-connection-memory: applied, counted, logged."""

    def test_budgets(self):
        port, mport = harness.free_port(), harness.free_port()
        self.start(config([sv.echo_agent(port, 1)], self.sock,
                          "  listen: 127.0.0.1:%d\n  max-connections: 2\n  timeout: 2s\n"
                          "  max-connection-memory: 4k\n" % mport), 1)
        # Two silent connections: the limit.
        silent = []
        for _ in range(2):
            c = socket.create_connection(("127.0.0.1", mport), timeout=harness.GUARD_S)
            silent.append(c)
        self.addCleanup(lambda: [c.close() for c in silent])
        self.assertTrue(harness.wait_for(lambda: value(
            self.stat(), "spoad_metrics_http_connections") == 2), self.logs())
        self.assertEqual(value(self.stat(), "spoad_metrics_http_limit_reached_total"), 1)
        # A third scraper waits in the backlog; it is served once a silent one is closed.
        result = {}

        def third():
            try:
                result["r"] = get(mport)
            except Exception as e:  # noqa: BLE001 - reported by the test
                result["e"] = repr(e)
        t = threading.Thread(target=third)
        t.start()
        # The silent connections are closed after metrics.timeout.
        for c in silent:
            c.settimeout(harness.GUARD_S)
            self.assertEqual(c.recv(1), b"", "a silent connection was not closed")
        t.join(harness.GUARD_S * 2)
        self.assertIn("r", result, (result, self.logs()))
        status, _, body = result["r"]
        self.assertEqual(status, 200)
        s = parse(body.decode())
        # Served within the limit (itself included), after a silent one was closed.
        self.assertLessEqual(value(s, "spoad_metrics_http_connections"), 2, body[-2000:])
        self.assertGreaterEqual(value(s, "spoad_metrics_http_timeouts_total"), 1)
        self.assertTrue(harness.wait_for(lambda: value(
            self.stat(), "spoad_metrics_http_timeouts_total") == 2), self.logs())
        self.assertIn("metrics endpoint: a connection silent for 2 s (metrics.timeout) was closed",
                      self.logs())
        self.assertIn("connections open (metrics.max-connections)", self.logs())

        # A request bigger than max-connection-memory: refused with an error status.
        with socket.create_connection(("127.0.0.1", mport), timeout=harness.GUARD_S) as c:
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
            answer = b""
            while True:
                try:
                    chunk = c.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
        self.assertTrue(answer == b"" or re.match(rb"HTTP/1\.1 4\d\d ", answer), answer[:300])
        self.assertNotIn(b"spoad_up", answer)
        self.assertTrue(harness.wait_for(lambda: value(
            self.stat(), "spoad_metrics_http_refused_total") == 1), self.logs())
        self.assertIn("metrics.max-connection-memory, 4096 bytes", self.logs())
        # The endpoint still serves.
        self.assertEqual(value(scrape(mport), "spoad_up"), 1)
        print("budget answers: third scraper served with %d connection(s) open; big request: %r"
              % (value(s, "spoad_metrics_http_connections"), answer[:40]))


class Config(Base):
    """metrics.* errors, --metrics, rebinding at reload, IPv6."""

    def check(self, text):
        """spoad -c on `text`: (exit status, stderr)."""
        self.write(text)
        r = subprocess.run([harness.SPOAD, "-c", "-f", self.cfg], capture_output=True, text=True,
                           timeout=harness.GUARD_S)
        return r.returncode, r.stderr

    def test_errors_name_file_line_key(self):
        port = harness.free_port()
        agents = [sv.echo_agent(port, 1)]
        base = config(agents, self.sock, "  listen: 127.0.0.1:9\n")
        line = base.split("\n").index("  listen: 127.0.0.1:9") + 1
        cases = [
            ("  listen: nope\n", "metrics.listen: expected host:port"),
            ("  listen: unix:/tmp/m.sock\n", "metrics.listen: expected host:port or [IPv6]:port"),
            ("  listen: 127.0.0.1:70000\n", "metrics.listen: port must be 1-65535"),
            ("  listen: \"[::1\"\n", "metrics.listen: expected [IPv6]:port"),
            ("  listen: 127.0.0.1:9\n  max-connections: 0\n",
             "metrics.max-connections: must be between 1 and 1024"),
            ("  listen: 127.0.0.1:9\n  timeout: 1500ms\n",
             "metrics.timeout: must be whole seconds"),
            ("  listen: 127.0.0.1:9\n  max-connection-memory: 1k\n",
             "metrics.max-connection-memory: must be between"),
        ]
        for metrics, want in cases:
            text = config(agents, self.sock, metrics)
            key_line = line if not metrics.startswith("  listen: 127.0.0.1:9\n") else line + 1
            rc, err = self.check(text)
            self.assertEqual(rc, 1, (metrics, err))
            self.assertIn("%s:%d: %s" % (self.cfg, key_line, want), err, metrics)
        rc, err = self.check(config(agents, self.sock, "  listen: 127.0.0.1:9\n  bogus: 1\n"))
        self.assertEqual(rc, 1)
        self.assertIn("%s:%d: metrics.bogus: unknown key" % (self.cfg, line + 1), err)
        # The metrics address is not an agent's.
        rc, err = self.check(config(agents, self.sock, "  listen: 127.0.0.1:%d\n" % port))
        self.assertEqual(rc, 1)
        self.assertIn("agents[0].listen: address 127.0.0.1:%d is metrics.listen's" % port, err)
        # A start refuses the same file with the same message.
        self.write(config(agents, self.sock, "  listen: nope\n"))
        p = self.env.spoad(self.cfg)
        self.assertEqual(p.wait(), 1)
        self.assertIn("%s:%d: metrics.listen: expected host:port" % (self.cfg, line), p.output())
        # A valid section passes.
        rc, err = self.check(config(agents, self.sock, "  listen: 127.0.0.1:9\n  timeout: 5s\n"))
        self.assertEqual((rc, err), (0, ""))
        # A bad --metrics.
        r = subprocess.run([harness.SPOAD, "-f", self.cfg, "--metrics", "no-port"],
                           capture_output=True, text=True, timeout=harness.GUARD_S)
        self.assertEqual(r.returncode, 1)
        self.assertIn("spoad: --metrics no-port: expected host:port", r.stderr)

    def test_flag_overrides_and_reload_rebinds(self):
        port, m1, m2, m3 = (harness.free_port() for _ in range(4))
        agents = [sv.echo_agent(port, 1)]
        # --metrics wins over metrics.listen, at start and across a reload.
        self.start(config(agents, self.sock, "  listen: 127.0.0.1:%d\n" % m1), 1,
                   args=["--metrics", "127.0.0.1:%d" % m2])
        self.assertEqual(value(scrape(m2), "spoad_up"), 1)
        self.assertTrue(refused(m1))
        self.write(config(agents, self.sock, "  listen: 127.0.0.1:%d\n" % m3))
        out = self.reload()
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        self.assertEqual(value(scrape(m2), "spoad_reloads_total"), 1)
        self.assertTrue(refused(m3))

    def test_reload_rebinds_or_fails(self):
        port, m1, m2 = harness.free_port(), harness.free_port(), harness.free_port()
        agents = [sv.echo_agent(port, 1)]
        self.start(config(agents, self.sock), 1)
        # No metrics section: no endpoint.
        self.assertNotIn("metrics endpoint", self.logs())
        # A reload adds it.
        self.write(config(agents, self.sock, "  listen: 127.0.0.1:%d\n" % m1))
        out = self.reload()
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        self.assertEqual(value(scrape(m1), "spoad_reloads_total"), 1)
        # A reload to a busy address fails, naming it; the endpoint stays where it was.
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", m2))
        blocker.listen(1)
        self.write(config(agents, self.sock, "  listen: 127.0.0.1:%d\n" % m2))
        out = self.reload()
        self.assertEqual(out.split("\n")[0], "Success=0", (out, self.logs()))
        self.assertIn("metrics endpoint 127.0.0.1:%d: cannot listen: Address already in use" % m2,
                      out)
        s = scrape(m1)
        self.assertEqual(value(s, "spoad_reload_failures_total"), 1)
        self.assertEqual(value(s, "spoad_generation"), 2)
        blocker.close()
        # Once free, the same reload moves the endpoint.
        out = self.reload()
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        self.assertEqual(value(scrape(m2), "spoad_reloads_total"), 2)
        self.assertTrue(refused(m1))
        # Budgets changed, same address: still served there.
        self.write(config(agents, self.sock, "  listen: 127.0.0.1:%d\n  max-connections: 4\n" % m2))
        out = self.reload()
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        self.assertEqual(value(scrape(m2), "spoad_reloads_total"), 3)
        # Removed: closed.
        self.write(config(agents, self.sock))
        out = self.reload()
        self.assertEqual(out.split("\n")[0], "Success=1", (out, self.logs()))
        self.assertTrue(refused(m2))

    def test_busy_address_at_start(self):
        port, mport = harness.free_port(), harness.free_port()
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", mport))
        blocker.listen(1)
        self.write(config([sv.echo_agent(port, 1)], self.sock, "  listen: 127.0.0.1:%d\n" % mport))
        p = self.env.spoad(self.cfg)
        self.assertEqual(p.wait(), 1, self.logs())
        self.assertIn("cannot start: metrics endpoint 127.0.0.1:%d: cannot listen: Address already "
                      "in use" % mport, p.output())

    def test_takeover_hands_the_address_over(self):
        port, mport = harness.free_port(), harness.free_port()
        a, _ = self.start(config([sv.echo_agent(port, 1)], self.sock,
                                 "  listen: 127.0.0.1:%d\n" % mport), 1)
        # A new spoad with the same cli.socket takes the sockets over; the metrics address is
        # the old one's until it lets go (no SO_REUSEPORT there): the new one retries.
        b = self.env.spoad(self.cfg, name="spoad-b")
        self.tracker.add(b.pid)
        self.assertTrue(harness.wait_for(lambda: "took 1 listening sockets" in b.output()),
                        self.logs())
        self.assertIn("metrics endpoint: 127.0.0.1:%d is in use (the spoad we took over from "
                      "serves it until it stops): retrying every second" % mport, b.output())
        self.assertEqual(a.wait(), 0, self.logs())
        self.assertTrue(harness.wait_for(
            lambda: "metrics endpoint on http://127.0.0.1:%d/metrics" % mport in b.output()),
            self.logs())
        s = scrape(mport)
        self.assertEqual(value(s, "spoad_workers", agent="echo", state="ready"), 1)
        self.assertGreaterEqual(value(s, "spoad_metrics_http_bind_failures_total"), 1)
        sp = sv.wait_pool(self.sock, 1, proc=b)
        self.assertIsNotNone(sp, self.logs())
        self.tracker.add_proc(sp)

    def test_ipv6(self):
        if not ipv6_loopback():
            self.skipTest("no IPv6 loopback here")
        port, mport = harness.free_port(), harness.free_port()
        self.start(config([sv.echo_agent(port, 1)], self.sock, "  listen: \"[::1]:%d\"\n" % mport),
                   1)
        self.assertEqual(value(scrape(mport, host="::1"), "spoad_up"), 1)
        self.assertIn("metrics endpoint on http://[::1]:%d/metrics" % mport, self.logs())


if __name__ == "__main__":
    unittest.main(verbosity=2)
