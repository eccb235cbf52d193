"""The tracing agent end to end: HAProxy (harness.HAPROXY: 2.6, 3.2, 3.4) -> spoad tracing (4
workers) -> a real OTLP/HTTP receiver; a real backend server receives the propagated traceparent.

Checks the seed-001 span tree of every request (names, parents, follows-from links, one trace
id, no orphan or duplicate, children within their parent), that the events of one request
handled by different workers still make one tree (arranged, not left to chance: a reload moves
HAProxy's connections to new workers while requests wait on the backend), W3C trace-context
continuation and propagation, a receiver that goes down and comes back, sampling, ill-formed
UTF-8 in a header (the receiver is strict: invalid UTF-8 gets a 400), and hostile NOTIFYs with
1 MiB attributes while the collector is down: memory stays within the queue budget.

Nothing here sleeps to synchronise or bounds a duration: the tests wait for counters, requests
at the receiver or the backend, and `show proc`.
"""
import collections
import http.client
import json
import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import otlp  # noqa: E402
import spop  # noqa: E402
import stack  # noqa: E402
import supervisor as sv  # noqa: E402

TREE = {  # span -> (parent, follows from)
    "HAProxy session": (None, False),
    "Client session": ("HAProxy session", False),
    "Frontend TCP request": ("Client session", False),
    "Frontend HTTP request": ("Frontend TCP request", True),
    "Backend TCP request": ("Frontend HTTP request", True),
    "Backend HTTP request": ("Backend TCP request", True),
    "Server session": ("HAProxy session", False),
    "TCP response": ("Server session", False),
    "HTTP response": ("TCP response", True),
}
KIND = {"HAProxy session": 2, "Client session": 2, "Frontend TCP request": 2,
        "Frontend HTTP request": 2, "Backend TCP request": 3, "Backend HTTP request": 3,
        "Server session": 3, "TCP response": 1, "HTTP response": 1}

SPOAD = """
cli:
  socket: %(sock)s
agents:
  - name: tracing
    type: tracing
    listen: 127.0.0.1:%(agent)d
    workers: 4
    sampling: %(sampling)s
    exporter:
      type: otlp-http
      endpoint: http://127.0.0.1:%(otlp)d/v1/traces
      flush-interval: 200ms
      max-queue: %(max_queue)d
"""


# HAProxy 3.2 and later answer 400 to a Host header with bytes outside 0x21-0x7e, whatever the
# options; non-ASCII bytes in the request target pass with this option (3.0 and later). A
# second frontend, beside the shipped one, for test_6 there.
LAX_FRONTEND = """
frontend www-lax
    bind 127.0.0.1:%(port)d
    option httplog
    option accept-unsafe-violations-in-http-request
    filter spoe engine tracing config %(spoe)s
    default_backend app
"""


class Stack(stack.Stack):
    """HAProxy + spoad + receiver + backend, with config/haproxy-tracing.cfg unchanged (plus,
    with lax=True on HAProxy 3.2 and later, LAX_FRONTEND on self.lax_fe in a second file)."""

    def __init__(self, name, sampling="1.0", max_queue=8192, lax=False):
        super().__init__(name)
        self.fe, self.agent = harness.free_port(), harness.free_port()
        self.otlp_port, self.app_port = harness.free_port(), harness.free_port()
        self.receiver = otlp.OtlpReceiver(self.otlp_port).start()
        self.backend = otlp.Backend(self.app_port).start()
        try:
            self._start(sampling, max_queue, lax)
        except BaseException:
            self.stop()
            raise

    def _start(self, sampling, max_queue, lax):
        sock = self.env.path("master.sock")
        self.start_spoad(SPOAD % {
            "sock": sock, "agent": self.agent, "sampling": sampling,
            "otlp": self.otlp_port, "max_queue": max_queue}, sock=sock, ports=[self.agent])
        env = {"HAPROXY_BIND": "127.0.0.1:%d" % self.fe, "SPOE_DIR": harness.CONFIG_DIR,
               "APP_ADDR": "127.0.0.1:%d" % self.app_port,
               "SPOAD_TRACING_ADDR": "127.0.0.1:%d" % self.agent}
        extra, self.lax_fe = None, None
        if lax and harness.haproxy_at_least(3, 2):
            self.lax_fe = harness.free_port()
            extra = LAX_FRONTEND % {"port": self.lax_fe,
                                    "spoe": stack.shipped("spoe-tracing.cfg")}
        self.start_haproxy(stack.shipped("haproxy-tracing.cfg"), env=env, extra=extra,
                           ports=[p for p in (self.fe, self.lax_fe) if p])

    def stop(self):
        super().stop()
        self.receiver.stop()
        self.backend.stop()

    def get(self, path, headers=None, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.fe, timeout=10)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        if conn is None:
            c.close()
        return r.status

    def stats(self):
        return self.total_stats((1, 2, 3, 4), "tracing", "agent_stats")

    def traces(self):
        by_trace = collections.defaultdict(list)
        for span, res in self.receiver.spans():
            by_trace[span["traceId"]].append((span, res))
        return by_trace


def run_load(stack, n_requests, clients=5, keepalive_clients=3, prefix="/r"):
    """n_requests GETs over `clients` threads, the first `keepalive_clients` of them on one
    keep-alive connection each. Returns the statuses."""
    statuses = []
    lock = threading.Lock()
    per = n_requests // clients

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", stack.fe, timeout=10) \
            if i < keepalive_clients else None
        for k in range(per):
            st = stack.get("%s/%d/%d?k=%d" % (prefix, i, k, k), conn=conn)
            with lock:
                statuses.append(st)
        if conn:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


class FullTree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack("tracing", lax=True)

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def wait_spans(self, count, timeout=20):
        harness.wait_for(lambda: len(self.s.receiver.spans()) >= count, timeout=timeout)

    def check_tree(self, spans, trace_id):
        names = collections.Counter(sp["name"] for sp, _ in spans)
        self.assertEqual(names, collections.Counter(TREE.keys()), (trace_id, names))
        by_name = {sp["name"]: sp for sp, _ in spans}
        ids = [sp["spanId"] for sp, _ in spans]
        self.assertEqual(len(ids), len(set(ids)), "duplicate span ids")
        for name, (parent, follows) in TREE.items():
            sp = by_name[name]
            self.assertEqual(sp["traceId"], trace_id)
            self.assertEqual(sp["kind"], KIND[name], name)
            start, end = int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"])
            self.assertLessEqual(start, end, name)
            if parent is None:
                continue
            p = by_name[parent]
            self.assertEqual(sp.get("parentSpanId"), p["spanId"], (name, parent))
            links = sp.get("links", [])
            if follows:
                self.assertEqual([(l["traceId"], l["spanId"]) for l in links],
                                 [(trace_id, p["spanId"])], name)
            else:
                self.assertEqual(links, [], name)
            # Children start within their parent, to 1 ms.
            ps, pe = int(p["startTimeUnixNano"]), int(p["endTimeUnixNano"])
            self.assertGreaterEqual(start, ps - 1_000_000, (name, parent))
            self.assertLessEqual(start, pe + 1_000_000, (name, parent))
        return by_name

    def test_1_every_request_has_a_complete_tree(self):
        before = len(self.s.traces())
        statuses = run_load(self.s, 500)
        self.assertEqual(statuses.count(200), 500)
        self.wait_spans((before + 500) * 9)
        traces = self.s.traces()
        ours = {t: sp for t, sp in traces.items()
                if any(otlp.attrs(s).get("url.path", "").startswith("/r/") for s, _ in sp
                       if s["name"] == "HAProxy session")}
        self.assertEqual(len(ours), 500, "one trace per request")
        multi_worker = 0
        paths = set()
        for tid, spans in ours.items():
            by_name = self.check_tree(spans, tid)
            root = by_name["HAProxy session"]
            self.assertNotIn("parentSpanId", root)
            a = otlp.attrs(root)
            self.assertEqual(a["http.request.method"], "GET")
            self.assertEqual(a["http.response.status_code"], "200")
            self.assertEqual(a["client.address"], "127.0.0.1")
            self.assertEqual(a["network.protocol.version"], "1.1")
            self.assertEqual(a["haproxy.frontend.name"], "www")
            self.assertEqual(a["haproxy.backend.name"], "app")
            self.assertEqual(a["haproxy.server.name"], "app")
            self.assertTrue(a.get("haproxy.unique_id"))
            self.assertTrue(a["url.query"].startswith("k="))
            paths.add(a["url.path"])
            fe = otlp.attrs(by_name["Frontend HTTP request"])
            self.assertEqual(fe["url.path"], a["url.path"])
            self.assertEqual(fe["server.address"], "127.0.0.1:%d" % self.s.fe)
            self.assertEqual(otlp.attrs(by_name["HTTP response"])["http.response.status_code"],
                             "200")
            pids = {res.get("process.pid") for _, res in spans}
            if len(pids) > 1:
                multi_worker += 1
        self.assertEqual(len(paths), 500)
        print("traces whose spans came from more than one worker: %d of 500" % multi_worker)

    def test_5_events_of_one_request_on_different_workers(self):
        # Arranged, not left to chance: 8 requests wait on the backend after their request
        # events were answered by the current workers; spoad reloads, and the old workers hand
        # HAProxy's connections to the new ones and exit; then the backend answers, and the
        # response events reach the new workers. Their spans close the spans the old workers
        # opened, from the txn variables alone.
        old = set(self.s_workers())
        results = []

        def slow(i):
            results.append(self.s.get("/slow/%d" % i))

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        paths = ["/slow/%d" % i for i in range(8)]
        self.assertTrue(harness.wait_for(
            lambda: all(p in self.s.backend.seen for p in paths), timeout=30),
            self.s.env.dump_logs())
        out = sv.cli(self.s.sock, "reload", timeout=30)
        self.assertEqual(out.split("\n")[0], "Success=1", out)

        def old_gone():
            sp = sv.try_show_proc(self.s.sock)
            return sp is not None and not sp.old_workers and \
                not any(harness.pid_alive(p) for p in old)
        self.assertTrue(harness.wait_for(old_gone, timeout=60), sv.try_show_proc(self.s.sock))
        new = set(self.s_workers())
        self.assertFalse(new & old, (old, new))
        self.s.backend.release()
        for t in threads:
            t.join()
        self.assertEqual(results, [200] * 8)

        def slow_traces():
            found = {}
            for tid, spans in self.s.traces().items():
                for sp, _ in spans:
                    if sp["name"] == "HAProxy session" and \
                            otlp.attrs(sp).get("url.path", "").startswith("/slow/"):
                        found[tid] = spans
            return found if len(found) == 8 and all(len(v) == 9 for v in found.values()) \
                else None
        found = harness.wait_for(slow_traces, timeout=30)
        self.assertIsNotNone(found, self.s.stats())
        for tid, spans in found.items():
            self.check_tree(spans, tid)
            pid = {sp["name"]: int(res["process.pid"]) for sp, res in spans}
            # Ended by the request events, before the backend saw the request: old workers.
            for name in ("Frontend TCP request", "Frontend HTTP request", "Backend TCP request"):
                self.assertIn(pid[name], old, (tid, name, pid))
            # Ended by on-http-response, after the backend answered: new workers.
            for name in ("HTTP response", "TCP response", "Server session", "Client session",
                         "HAProxy session"):
                self.assertIn(pid[name], new, (tid, name, pid))

    def test_2_incoming_traceparent_is_continued_and_propagated(self):
        tid = "4bf92f3577b34da6a3ce929d0e0e4736"
        parent = "00f067aa0ba902b7"
        st = self.s.get("/tp/1", headers={"traceparent": "00-%s-%s-01" % (tid, parent),
                                           "tracestate": "vendor=x"})
        self.assertEqual(st, 200)
        harness.wait_for(lambda: len(self.s.traces().get(tid, [])) >= 9, timeout=10)
        spans = self.s.traces().get(tid, [])
        by_name = self.check_tree(spans, tid)
        self.assertEqual(by_name["HAProxy session"].get("parentSpanId"), parent)
        self.assertEqual(by_name["HAProxy session"].get("traceState"), "vendor=x")
        # The server got a traceparent whose parent is the Backend HTTP request span.
        got = self.s.backend.seen["/tp/1"]["traceparent"]
        self.assertEqual(got, "00-%s-%s-01" % (tid, by_name["Backend HTTP request"]["spanId"]))
        # An unsampled incoming trace is honoured: no span, and the header goes on unchanged.
        tid0 = "4bf92f3577b34da6a3ce929d0e0e0000"
        hdr = "00-%s-%s-00" % (tid0, parent)
        before = self.s.stats()
        self.assertEqual(self.s.get("/tp/0", headers={"traceparent": hdr}), 200)
        # Every event of the request was answered before the response left HAProxy.
        after = self.s.stats()
        self.assertEqual(after["requests_unsampled"], before["requests_unsampled"] + 1)
        self.assertEqual(after["requests_continued"], before["requests_continued"] + 1)
        self.assertEqual(after["spans_ended"], before["spans_ended"])
        self.assertNotIn(tid0, self.s.traces())
        self.assertEqual(self.s.backend.seen["/tp/0"]["traceparent"], hdr)

    def test_3_server_errors_set_error_status(self):
        self.assertEqual(self.s.get("/fail/1"), 503)
        def root():
            for tid, spans in self.s.traces().items():
                for sp, _ in spans:
                    if sp["name"] == "HAProxy session" and \
                            otlp.attrs(sp).get("url.path") == "/fail/1":
                        return tid, spans
            return None
        found = harness.wait_for(root, timeout=10)
        self.assertIsNotNone(found)
        tid, spans = found
        harness.wait_for(lambda: len(self.s.traces()[tid]) >= 9, timeout=10)
        by_name = {sp["name"]: sp for sp, _ in self.s.traces()[tid]}
        for name in ("HAProxy session", "Client session", "Server session", "HTTP response"):
            self.assertEqual(by_name[name]["status"].get("code"), 2, name)
        self.assertNotIn("code", by_name["Frontend HTTP request"]["status"])

    def test_4_receiver_down_then_back(self):
        # Nothing in flight: every span so far was exported (and counted).
        self.assertTrue(harness.wait_for(lambda: self.s.stats()["spans_queued"] == 0,
                                         timeout=30), self.s.stats())
        self.s.receiver.stop()  # returns once nothing listens
        before = self.s.stats()
        statuses = run_load(self.s, 300, prefix="/down")
        self.assertEqual(statuses.count(200), 300, "requests are unaffected")
        # The spans of a request are queued before its response leaves HAProxy.
        st = self.s.stats()
        self.assertEqual(st["spans_ended"] - before["spans_ended"], 2700, st)
        self.assertEqual(st["spans_exported"], before["spans_exported"], st)
        # 2700 spans for 4 x 8192 spans and 4 x 8 MiB: nothing dropped; they wait, bounded.
        self.assertEqual(st["spans_dropped"], before["spans_dropped"], st)
        self.assertGreaterEqual(st["spans_queued"], 2700, st)
        rss = [harness.rss_kib(p) for p in self.s_workers()]
        self.assertTrue(all(0 < r < 64 * 1024 for r in rss), rss)
        print("receiver down: %d spans queued, %d bytes; worker RSS %s KiB"
              % (st["spans_queued"], st["spans_queued_bytes"], rss))
        self.s.receiver.start()
        run_load(self.s, 50, prefix="/back")

        def complete(prefix, n):
            roots = {tid for tid, spans in self.s.traces().items()
                     for sp, _ in spans if sp["name"] == "HAProxy session"
                     and otlp.attrs(sp).get("url.path", "").startswith(prefix)}
            return len(roots) == n and all(len(self.s.traces()[t]) == 9 for t in roots)
        # Export resumes by itself (retry backoff up to retry-max, 30 s), and nothing is lost.
        self.assertTrue(harness.wait_for(lambda: complete("/back/", 50), timeout=90),
                        self.s.stats())
        self.assertTrue(harness.wait_for(lambda: complete("/down/", 300), timeout=90),
                        self.s.stats())
        self.assertEqual(self.s.receiver.rejected, 0)

    def test_6_ill_formed_utf8_in_a_header(self):
        # Host: evil\xc0\x80 (an overlong NUL), sent raw. HAProxy passes the bytes on; spoad
        # exports them as U+FFFD, and the strict receiver accepts every batch. HAProxy 3.2 and
        # later refuse those bytes in Host (400): there they go in the path instead, through
        # LAX_FRONTEND.
        if self.s.lax_fe is None:
            port, path, attr = self.s.fe, "/utf8/evil", "server.address"
            request = b"GET /utf8/evil HTTP/1.1\r\nHost: evil\xc0\x80\r\n"
        else:
            port, path, attr = self.s.lax_fe, "/utf8/evil\ufffd\ufffd", "url.path"
            request = b"GET /utf8/evil\xc0\x80 HTTP/1.1\r\nHost: evil\r\n"
        want = "evil\ufffd\ufffd" if attr == "server.address" else path
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(request + b"Connection: close\r\n\r\n")
        answer = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            answer += chunk
        c.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        statuses = run_load(self.s, 20, prefix="/utf8/ok")
        self.assertEqual(statuses.count(200), 20)

        def evil():
            for tid, spans in self.s.traces().items():
                for sp, _ in spans:
                    if otlp.attrs(sp).get("url.path") == path and len(spans) == 9:
                        return tid, spans
            return None
        found = harness.wait_for(evil, timeout=30)
        self.assertIsNotNone(found, (self.s.receiver.rejected, self.s.stats()))
        tid, spans = found
        by_name = self.check_tree(spans, tid)
        self.assertEqual(otlp.attrs(by_name["Frontend HTTP request"])[attr], want)
        self.assertEqual(self.s.receiver.rejected, 0)
        for raw in self.s.receiver.raw:
            raw.decode("utf-8", "strict")

    def s_workers(self):
        return [int(sv.worker_info(self.s.sock, n)["Pid"]) for n in (1, 2, 3, 4)]


HOSTILE = """
cli:
  socket: %(sock)s
agents:
  # The defaults: attribute-value-limit 4k, max-queue-bytes 8m; the collector is down.
  - name: capped
    type: tracing
    listen: 127.0.0.1:%(capped)d
    workers: 1
    max-frame-size: 2m
    exporter:
      endpoint: http://127.0.0.1:%(down)d/v1/traces
      flush-interval: 50ms
  # Attributes as large as they come: only the queue's byte budget holds memory down.
  - name: uncapped
    type: tracing
    listen: 127.0.0.1:%(uncapped)d
    workers: 1
    max-frame-size: 2m
    attribute-value-limit: 2m
    exporter:
      endpoint: http://127.0.0.1:%(down)d/v1/traces
      flush-interval: 50ms
      max-queue-bytes: %(budget)d
  # Exports to a strict receiver, one batch of exactly 10 spans.
  - name: utf8
    type: tracing
    listen: 127.0.0.1:%(utf8)d
    workers: 1
    exporter:
      endpoint: http://127.0.0.1:%(otlp)d/v1/traces
      flush-interval: 1h
      max-batch: 10
"""

MIB = 1 << 20


def trace_ctx(i):
    """A sampled txn.trace.ctx (trace id, seed, no remote parent, flags 01)."""
    return "%032x%016x%016x01" % (0xabc0000 + i, 0x5eed0000 + i, 0)


def response_notify(sid, i, uri, host="example.org", ts=None):
    """The trace-http-response NOTIFY of the lean configuration: the root span and the
    HTTP response span."""
    args = [("now", spop.Typed(spop.T_INT64, 1_700_000_000_000_000 + 10 * i)),
            ("ctx", trace_ctx(i)), ("t0", spop.Typed(spop.T_INT64, 1_700_000_000_000_000)),
            ("status", spop.Typed(spop.T_INT32, 200)), ("uri", uri), ("host", host)]
    if ts is not None:
        args.append(("ts", ts))
    return spop.notify(sid, 1, [("trace-http-response", args)])


class Hostile(unittest.TestCase):
    """NOTIFYs sent straight to spoad (no HAProxy: its buffers would cut a 1 MiB URI) with
    1 MiB attributes, a 1 MiB tracestate and ill-formed UTF-8."""

    BUDGET = 8 * MIB  # max-queue-bytes of `uncapped`

    @classmethod
    def setUpClass(cls):
        cls.env = harness.Env("tracing-hostile")
        cls.sock = cls.env.path("master.sock")
        cls.ports = {n: harness.free_port() for n in ("capped", "uncapped", "utf8", "down",
                                                      "otlp")}
        cls.receiver = otlp.OtlpReceiver(cls.ports["otlp"]).start()
        cfg = cls.env.write("spoad.yaml", HOSTILE % dict(cls.ports, sock=cls.sock,
                                                         budget=cls.BUDGET))
        cls.spoad = cls.env.spoad(cfg)
        if not sv.wait_pool(cls.sock, 3, proc=cls.spoad):
            raise RuntimeError(cls.env.dump_logs())

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.receiver.stop()

    @staticmethod
    def rss_bound_kib(budget):
        """The growth allowed over what the worker had: the queue budget, as much again for
        malloc's slack (freed blocks it keeps), and 8 MiB for the transient buffers (the
        NOTIFY being read, up to max-frame-size 2m, and the span being encoded)."""
        return (2 * budget + 8 * MIB) // 1024

    def agent_stats(self, rel, name):
        return json.loads(sv.cli(self.sock, "@%d show stat json" % rel))[name]["agent_stats"]

    def send_all(self, port, frames):
        """Sends each NOTIFY and checks its ACK, on one connection."""
        c = spop.Client(("127.0.0.1", port), timeout=30)
        c.handshake(max_frame_size=2 * MIB)
        for sid, f in frames:
            c.send(f)
            a = c.recv_frame()
            self.assertIsNotNone(a, "connection closed at stream %d" % sid)
            self.assertEqual((a.type, a.sid), (spop.ACK, sid))
        c.close()

    def huge_attributes(self, rel, name, port):
        pid = int(sv.worker_info(self.sock, rel)["Pid"])
        before = harness.rss_kib(pid)
        uri = "/" + "u" * MIB
        ts = ",".join("k%d=%s" % (k, "v" * 250) for k in range(4000))  # ~1 MiB, 4000 members
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        frames = []
        for i in range(200):
            sid = 2 * i + 1
            if i % 2:
                frames.append((sid, response_notify(sid, i, uri)))
            else:  # the first event of a request, with its headers: the tracestate is read
                frames.append((sid, spop.notify(sid, 1, [("trace-frontend-http-request", [
                    ("now", spop.Typed(spop.T_INT64, 1)), ("traceparent", tp),
                    ("tracestate", ts)])])))
        self.send_all(port, frames)
        st = self.agent_stats(rel, name)
        after = harness.rss_kib(pid)
        self.assertTrue(harness.pid_alive(pid))
        self.assertEqual(int(sv.worker_info(self.sock, rel)["Pid"]), pid)
        self.send_all(port, [(1, response_notify(1, 0, "/still-served"))])  # still serving
        return before, after, st

    def test_capped_attributes(self):
        before, after, st = self.huge_attributes(1, "capped", self.ports["capped"])
        print("capped (attribute-value-limit 4k): RSS %d KiB -> %d KiB; %s" % (
            before, after, {k: st[k] for k in ("attributes_truncated", "tracestate_dropped",
                                               "spans_queued", "spans_queued_bytes",
                                               "spans_dropped")}))
        self.assertTrue(harness.wait_for(lambda: "attribute values cut to attribute-value-limit"
                                         in self.spoad.output() and "tracestate of 1"
                                         in self.spoad.output()), self.spoad.output()[-3000:])
        self.assertEqual(st["attributes_truncated"], 100)  # url.path of each root span
        self.assertEqual(st["tracestate_dropped"], 100)    # 4000 members: not a W3C list
        self.assertEqual(st["spans_dropped"], 0)
        self.assertEqual(st["spans_exported"], 0)
        self.assertLessEqual(st["spans_queued_bytes"], 8 * MIB)
        self.assertGreaterEqual(st["spans_queued"], 200)
        # 200 spans of about 2.4 KiB are held: far below the default 8 MiB budget.
        self.assertLess(after - before, self.rss_bound_kib(8 * MIB), (before, after))

    def test_uncapped_attributes_bounded_by_the_queue_budget(self):
        before, after, st = self.huge_attributes(2, "uncapped", self.ports["uncapped"])
        print("uncapped (max-queue-bytes %d): RSS %d KiB -> %d KiB; %s" % (
            self.BUDGET, before, after,
            {k: st[k] for k in ("attributes_truncated", "spans_queued", "spans_queued_bytes",
                                "spans_dropped", "spans_dropped_bytes")}))
        self.assertTrue(harness.wait_for(lambda: "max-queue-bytes 8388608): dropping"
                                         in self.spoad.output()), self.spoad.output()[-3000:])
        self.assertEqual(st["attributes_truncated"], 0)
        self.assertLessEqual(st["spans_queued_bytes"], self.BUDGET)
        self.assertGreater(st["spans_dropped_bytes"], 0, st)
        self.assertEqual(st["spans_dropped"], st["spans_dropped_bytes"], st)
        self.assertEqual(st["spans_enqueued"] + st["spans_dropped"], st["spans_ended"], st)
        self.assertLess(after - before, self.rss_bound_kib(self.BUDGET), (before, after))

    def test_ill_formed_utf8_in_a_full_batch(self):
        # 5 NOTIFYs x 2 spans = exactly one batch of 10; one Host holds an overlong NUL and
        # one a surrogate. The strict receiver accepts the batch, all 10 spans in it.
        frames = []
        for i in range(5):
            host = {1: b"evil\xc0\x80", 3: b"sur\xed\xa0\x80"}.get(i, b"ok.example")
            frames.append((2 * i + 1, response_notify(2 * i + 1, 100 + i, "/u/%d" % i,
                                                      host=spop.Typed(spop.T_STR, host))))
        self.send_all(self.ports["utf8"], frames)
        self.assertTrue(harness.wait_for(
            lambda: self.receiver.requests + self.receiver.rejected >= 1, timeout=30),
            self.agent_stats(3, "utf8"))
        self.assertEqual(self.receiver.rejected, 0)
        self.assertEqual(self.receiver.requests, 1)
        self.receiver.raw[0].decode("utf-8", "strict")
        spans = [sp for sp, _ in self.receiver.spans()]
        self.assertEqual(len(spans), 10)
        hosts = sorted(otlp.attrs(sp)["server.address"] for sp in spans
                       if sp["name"] == "HAProxy session")
        self.assertEqual(hosts, ["evil\ufffd\ufffd", "ok.example", "ok.example", "ok.example",
                                 "sur\ufffd\ufffd\ufffd"])
        # The worker counts the batch once it has read the receiver's answer.
        self.assertTrue(harness.wait_for(
            lambda: self.agent_stats(3, "utf8")["spans_exported"] == 10, timeout=30),
            self.agent_stats(3, "utf8"))
        self.assertEqual(self.agent_stats(3, "utf8")["spans_failed"], 0)


class BoundedQueue(unittest.TestCase):
    def test_overflow_is_dropped_and_counted(self):
        s = Stack("tracing-queue", max_queue=100)
        self.addCleanup(s.stop)
        s.receiver.stop()
        statuses = run_load(s, 200, prefix="/q")
        self.assertEqual(statuses.count(200), 200)
        st = s.stats()  # the spans of a request are queued before its response leaves
        self.assertGreater(st["spans_dropped"], 0, st)
        self.assertLessEqual(st["spans_queued"], 4 * 100, st)


class Sampling(unittest.TestCase):
    def test_ratio_0_1_over_2000_requests(self):
        s = Stack("tracing-sampling", sampling="0.1")
        self.addCleanup(s.stop)
        statuses = run_load(s, 2000, clients=8, keepalive_clients=6, prefix="/s")
        self.assertEqual(statuses.count(200), 2000)

        def all_exported():
            st = s.stats()
            return st["spans_queued"] == 0 and st["spans_exported"] == st["spans_enqueued"]
        self.assertTrue(harness.wait_for(all_exported, timeout=30), s.stats())
        roots = [sp for sp, _ in s.receiver.spans() if sp["name"] == "HAProxy session"]
        share = len(roots) / 2000
        self.assertGreaterEqual(share, 0.07, len(roots))
        self.assertLessEqual(share, 0.13, len(roots))
        st = s.stats()
        self.assertEqual(st["requests_sampled"] + st["requests_unsampled"], 2000, st)


if __name__ == "__main__":
    unittest.main(verbosity=2)
