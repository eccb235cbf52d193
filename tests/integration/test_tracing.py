"""The tracing agent end to end: Debian's HAProxy 2.6 -> spoad tracing (4 workers) -> a real
OTLP/HTTP receiver; a real backend server receives the propagated traceparent.

Checks the seed-001 span tree of every request (names, parents, follows-from links, one trace
id, no orphan or duplicate, children within their parent), that the events of one request
were handled by more than one worker (process.pid of the exporting worker), W3C trace-context
continuation and propagation, a receiver that goes down and comes back, and sampling.
"""
import collections
import http.client
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import otlp  # noqa: E402
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


class Stack:
    """HAProxy + spoad + receiver + backend, with config/haproxy-tracing.cfg unchanged."""

    def __init__(self, name, sampling="1.0", max_queue=8192):
        self.env = harness.Env(name)
        self.fe, self.agent = harness.free_port(), harness.free_port()
        self.otlp_port, self.app_port = harness.free_port(), harness.free_port()
        self.sock = self.env.path("master.sock")
        self.receiver = otlp.OtlpReceiver(self.otlp_port).start()
        self.backend = otlp.Backend(self.app_port).start()
        cfg = self.env.write("spoad.yaml", SPOAD % {
            "sock": self.sock, "agent": self.agent, "sampling": sampling,
            "otlp": self.otlp_port, "max_queue": max_queue})
        self.spoad = self.env.spoad(cfg)
        if not harness.wait_for(lambda: os.path.exists(self.sock)
                                and harness.port_open(self.agent), timeout=20):
            raise RuntimeError(self.env.dump_logs())
        env = {"HAPROXY_BIND": "127.0.0.1:%d" % self.fe, "SPOE_DIR": harness.CONFIG_DIR,
               "APP_ADDR": "127.0.0.1:%d" % self.app_port,
               "SPOAD_TRACING_ADDR": "127.0.0.1:%d" % self.agent}
        self.haproxy = self.env.haproxy(os.path.join(harness.CONFIG_DIR, "haproxy-tracing.cfg"),
                                        env=env)
        if not harness.wait_for(lambda: harness.port_open(self.fe)):
            raise RuntimeError(self.env.dump_logs())

    def stop(self):
        self.env.stop()
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
        total = collections.Counter()
        for n in (1, 2, 3, 4):
            j = json.loads(sv.cli(self.sock, "@%d show stat json" % n))
            for k, v in j["tracing"]["agent_stats"].items():
                total[k] += v
        return total

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
        cls.s = Stack("tracing")

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
        # Requests wait on a slow server while spoad reloads: their first events are handled
        # by the old workers, the response events by the new ones, and the trees are whole.
        results = []

        def slow(i):
            results.append(self.s.get("/slow/%d" % i))

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.25)
        out = sv.cli(self.s.sock, "reload", timeout=30)
        self.assertEqual(out.split("\n")[0], "Success=1", out)
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
        found = harness.wait_for(slow_traces, timeout=15)
        self.assertIsNotNone(found, self.s.stats())
        for tid, spans in found.items():
            self.check_tree(spans, tid)
            pids = {res.get("process.pid") for _, res in spans}
            self.assertGreater(len(pids), 1, "all the events of %s on one worker" % tid)

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
        self.assertEqual(self.s.get("/tp/0", headers={"traceparent": hdr}), 200)
        time.sleep(0.6)
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
        self.s.receiver.stop()
        time.sleep(0.3)
        statuses = run_load(self.s, 300, prefix="/down")
        self.assertEqual(statuses.count(200), 300, "requests are unaffected")
        time.sleep(1.0)
        st = self.s.stats()
        # 2700 spans for a 8192-span queue: nothing dropped yet, but nothing exported either;
        # they wait, bounded.
        self.assertGreater(st["spans_queued"] + st["spans_dropped"], 0, st)
        rss = [harness.rss_kib(p) for p in self.s_workers()]
        self.assertTrue(all(0 < r < 64 * 1024 for r in rss), rss)
        self.s.receiver.start()
        run_load(self.s, 50, prefix="/back")
        def back():
            return any(otlp.attrs(sp).get("url.path", "").startswith("/back/")
                       for sp, _ in self.s.receiver.spans() if sp["name"] == "HAProxy session")
        self.assertTrue(harness.wait_for(back, timeout=40), self.s.stats())

    def s_workers(self):
        return [int(sv.worker_info(self.s.sock, n)["Pid"]) for n in (1, 2, 3, 4)]


class BoundedQueue(unittest.TestCase):
    def test_overflow_is_dropped_and_counted(self):
        s = Stack("tracing-queue", max_queue=100)
        self.addCleanup(s.stop)
        s.receiver.stop()
        statuses = run_load(s, 200, prefix="/q")
        self.assertEqual(statuses.count(200), 200)
        time.sleep(0.5)
        st = s.stats()
        self.assertGreater(st["spans_dropped"], 0, st)
        self.assertLessEqual(st["spans_queued"], 4 * 100, st)


class Sampling(unittest.TestCase):
    def test_ratio_0_1_over_2000_requests(self):
        s = Stack("tracing-sampling", sampling="0.1")
        self.addCleanup(s.stop)
        statuses = run_load(s, 2000, clients=8, keepalive_clients=6, prefix="/s")
        self.assertEqual(statuses.count(200), 2000)
        time.sleep(1.5)
        roots = [sp for sp, _ in s.receiver.spans() if sp["name"] == "HAProxy session"]
        share = len(roots) / 2000
        self.assertGreaterEqual(share, 0.07, len(roots))
        self.assertLessEqual(share, 0.13, len(roots))
        st = s.stats()
        self.assertEqual(st["requests_sampled"] + st["requests_unsampled"], 2000, st)


if __name__ == "__main__":
    unittest.main(verbosity=2)
