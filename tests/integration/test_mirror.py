"""The mirror agent end to end: a client -> HAProxy (harness.HAPROXY: 2.6, 3.2, 3.4) with the
shipped config/haproxy-mirror.cfg and config/spoe-mirror.cfg -> the app; spoad's mirror agent (2
workers) replays every request to real HTTP targets (http_target.py), which record what they
receive.

- 300 requests of mixed methods, bodies of 0 to 1 MiB of random bytes (HAProxy 2.6 fragments
  those NOTIFYs; 3.1 and later never fragment, so there the agent's max-frame-size follows
  tune.bufsize, see AGENT_FRAME_SIZE), duplicate and empty headers, hop-by-hop headers,
  chunked and 100-continue uploads: each target gets the same method, path and query, the
  headers minus hop-by-hop and remove-headers plus add-headers, in order, and the body
  (SHA-256); Content-Length recomputed;
- absolute-form request targets, a target URL with a path prefix, `host: target`;
- bodies above max-body and bodies HAProxy truncated (above tune.bufsize) are not replayed;
- target down: requests unaffected (all answered by the app), every message reaches the agent,
  every replay counted as failed (what the filter costs in latency then is a benchmark figure:
  `./scripts/bench mirror`, against a frontend without the filter in the same run);
- a target answering after 5 s: each client had its answer before the target answered the
  replay, max-replays holds (in flight per worker, at the target), the excess dropped and
  counted, worker memory bounded;
- 10% sampling in the agent and in HAProxy (ACL on the event);
- messages without a method, or with undecodable headers: counted, nothing sent, request fine;
- a TLS target whose certificate is not trusted (failed_tls), a target answering 503
  (responses_5xx), `replay-timeout` cutting a replay (failed_timeout), `http-version: "1.0"`, and
  every documented configuration key accepted by `spoad -c`.

The HAProxy side is config/haproxy-mirror.cfg and config/spoe-mirror.cfg as shipped (ports from
the environment; the SPOE hello and processing timeouts raised, see harness.spoe_dir); variants
of spoe-mirror.cfg are textual replacements written to the test's directory, and extra
frontends (an `http-request return` app, frontends with other variants of spoe-mirror.cfg) come
in a second -f file. The requests, the client and the stack are in mirror_support.py.

Nothing here measures speed or sleeps to synchronise: each step waits for its event (an
answer, a counter, a record at a target), with harness.GUARD_S as a guard against a hang.
"""
import collections
import hashlib
import os
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import http_target  # noqa: E402
from mirror_support import (ADD_HEADERS, SPOE_ARGS, SPOE_EVENT, WORKERS, Client,  # noqa: E402
                            MirrorStack, Req, Response, delta, expected_headers,
                            make_requests, mirror_yaml, received_headers, send_all,
                            small_get)

# --------------------------------------------------------------------------------------------


class Replay(unittest.TestCase):
    """Two targets: one at the root, one with a path prefix (and a trailing slash)."""

    @classmethod
    def setUpClass(cls):
        cls.t1 = http_target.HttpTarget(harness.free_port()).start()
        cls.t2 = http_target.HttpTarget(harness.free_port()).start()
        try:
            cls.s = MirrorStack("mirror", [("http://127.0.0.1:%d" % cls.t1.port, {}),
                                     ("http://127.0.0.1:%d/shadow/" % cls.t2.port, {})],
                          extra="""    host: keep
    add-headers: ["X-Mirrored-By: spoad"]
    remove-headers: ["X-Secret"]
    max-body: 2m
""")
            cls.s.warm_up([cls.t1, cls.t2])
        except BaseException:
            if getattr(cls, "s", None) is not None:
                cls.s.stop()
            cls.t1.stop()
            cls.t2.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        cls.t1.stop()
        cls.t2.stop()

    def by_rid(self, target):
        out = collections.defaultdict(list)
        for r in target.records():
            for v in r.header_values("x-req-id"):
                out[v].append(r)
        return out

    def counts(self):
        return self.t1.count(), self.t2.count()

    def wait_records(self, n, base=(0, 0)):
        """Waits until each target has `n` more records than `base`, and no replay is in
        flight."""
        harness.wait_for(lambda: self.t1.count() >= base[0] + n and
                         self.t2.count() >= base[1] + n, interval=0.2)
        self.s.wait_idle()

    def check_replay(self, req, rec, prefix, host):
        ctx = "%s %s %s (body %d)" % (req.rid, req.method, req.target, len(req.body))
        self.assertEqual(rec.method, req.method, ctx)
        self.assertEqual(rec.target, prefix + req.path(), ctx)
        self.assertEqual(rec.version, "HTTP/1.1", ctx)
        self.assertEqual(received_headers(rec), expected_headers(req.headers),
                         "%s\nsent:     %r\nreceived: %r" % (ctx, req.headers, rec.headers))
        self.assertEqual(rec.header_values("host"), [host], ctx)
        self.assertEqual(rec.body_len, len(req.body), ctx)
        self.assertEqual(rec.body_sha256, req.sha, ctx)
        self.assertFalse(rec.chunked, "%s: replayed with chunked transfer coding" % ctx)
        cl = rec.header_values("content-length")
        if req.body:
            self.assertEqual(cl, [str(len(req.body))], ctx)
        else:
            self.assertIn(cl, ([], ["0"]), ctx)

    def test_1_mixed_requests(self):
        seed = int(time.time())
        reqs = make_requests(300, seed)
        total = sum(len(r.body) for r in reqs)
        print("\n300 requests, seed %d, %.1f MiB of bodies, largest %d" % (
            seed, total / 1048576.0, max(len(r.body) for r in reqs)))
        before = self.s.stats()
        t0 = time.time()
        results = send_all(self.s.fe, reqs, clients=6, fresh_every=7)
        print("sent in %.1f s" % (time.time() - t0))
        bad = {rid: r for rid, r in results.items()
               if not isinstance(r, Response) or r.status != 200}
        self.assertEqual(len(results), 300)
        self.assertEqual(bad, {}, "client requests that failed")
        for req in reqs:
            body = results[req.rid].body
            self.assertEqual(body, b"" if req.method == "HEAD" else b"mirrored\n", req.rid)
        self.wait_records(300)
        st = delta(self.s.stats(), before)
        print("counters: %s" % dict(st))
        got1, got2 = self.by_rid(self.t1), self.by_rid(self.t2)
        missing1 = [r.rid for r in reqs if r.rid not in got1]
        missing2 = [r.rid for r in reqs if r.rid not in got2]
        self.assertEqual((missing1, missing2), ([], []), "requests never replayed; counters %s"
                         % dict(st))
        self.assertEqual([k for k, v in got1.items() if len(v) != 1], [], "replayed twice")
        self.assertEqual([k for k, v in got2.items() if len(v) != 1], [], "replayed twice")
        self.assertEqual(set(got1) - {r.rid for r in reqs}, set(), "unknown replays")
        self.assertEqual(set(got2) - {r.rid for r in reqs}, set(), "unknown replays")
        self.assertEqual(self.t1.errors + self.t2.errors, [])
        failures = []
        for req in reqs:
            for got, prefix in ((got1, ""), (got2, "/shadow")):
                try:
                    self.check_replay(req, got[req.rid][0], prefix, req.host())
                except AssertionError as e:
                    failures.append(str(e))
        self.assertEqual(len(failures), 0, "%d replays differ; the first ones:\n%s" % (
            len(failures), "\n\n".join(failures[:6])))
        # Counters: one message per request, one replay per target, all answered 200.
        self.assertEqual(st["messages"], 300, st)
        self.assertEqual(st["replays_started"], 600, st)
        self.assertEqual(st["sent"], 600, st)
        self.assertEqual(st["responses_2xx"], 600, st)
        for k in ("bad_messages", "failed_connect", "failed_timeout", "failed_tls",
                  "failed_other", "dropped_limit", "dropped_sampling", "dropped_body_too_big",
                  "dropped_body_incomplete", "in_flight"):
            self.assertEqual(st[k], 0, (k, st))
        # latency_* are not counters (an average and a maximum): absolute values.
        self.assertGreater(self.s.stats()["latency_max_us"], 0)

    def test_2_absolute_form(self):
        cases = [  # (request-target, Host header or None, replayed path)
            ("http://example.com/abs/path?q=1", "example.com", "/abs/path?q=1"),
            ("http://example.com:8080/abs/port?a=b&c", "example.com:8080", "/abs/port?a=b&c"),
            ("https://secure.example/abs/tls", "secure.example", "/abs/tls"),
            ("http://example.com/abs/no-host?z=9", None, "/abs/no-host?z=9"),
        ]
        before, base = self.s.stats(), self.counts()
        for i, (target, host, _) in enumerate(cases):
            h = [("Host", host)] if host else []
            h.append(("X-Req-Id", "abs-%d" % i))
            c = Client(self.s.fe)
            r = c.request(Req("abs-%d" % i, "GET", target, h))
            c.close()
            self.assertEqual(r.status, 200, (target, r))
        self.wait_records(len(cases), base)
        got1, got2 = self.by_rid(self.t1), self.by_rid(self.t2)
        for i, (target, host, path) in enumerate(cases):
            rid = "abs-%d" % i
            self.assertIn(rid, got1, (target, self.s.stats()))
            self.assertIn(rid, got2, (target, self.s.stats()))
            self.assertEqual(got1[rid][0].target, path, target)
            self.assertEqual(got2[rid][0].target, "/shadow" + path, target)
            if host:
                self.assertEqual(got1[rid][0].header_values("host"), [host], target)
                self.assertEqual(got2[rid][0].header_values("host"), [host], target)
            self.assertEqual(received_headers(got1[rid][0]),
                             [("x-req-id", rid)] + [(k.lower(), v) for k, v in ADD_HEADERS])
        st = delta(self.s.stats(), before)
        self.assertEqual((st["messages"], st["sent"]), (len(cases), 2 * len(cases)), st)

    def test_3_body_larger_than_haproxy_buffer_is_not_replayed(self):
        # tune.bufsize 1114112: HAProxy passes only the first ~1.06 MB of a 1.5 MB body, so
        # req.body is shorter than Content-Length says: not replayed, counted.
        before, base = self.s.stats(), self.counts()
        body = os.urandom(1500000)
        req = Req("incomplete-1", "POST", "/incomplete", [
            ("Host", "app.example"), ("X-Req-Id", "incomplete-1"),
            ("Content-Length", str(len(body)))], body)
        ok = small_get("after-incomplete")
        results = send_all(self.s.fe, [req], clients=1)
        results.update(send_all(self.s.fe, [ok], clients=1))
        self.assertEqual(results["incomplete-1"].status, 200, results)
        self.assertEqual(results["after-incomplete"].status, 200, results)
        self.wait_records(1, base)
        st = delta(self.s.stats(), before)
        self.assertEqual(st["messages"], 2, st)
        # Counted per replay (one message to one target), as the other dropped_* counters.
        self.assertEqual(st["dropped_body_incomplete"], 2, st)
        self.assertEqual(st["sent"], 2, st)
        self.assertNotIn("incomplete-1", self.by_rid(self.t1))
        self.assertNotIn("incomplete-1", self.by_rid(self.t2))
        self.assertIn("after-incomplete", self.by_rid(self.t1))


class HostTarget(unittest.TestCase):
    """`host: target`, a path prefix without trailing slash, max-body, http-version 1.0, a
    message name of our own."""

    def test_host_target_prefix_and_max_body(self):
        t = http_target.HttpTarget(harness.free_port()).start()
        self.addCleanup(t.stop)
        # Also a message name of our own (`message`), in a variant of spoe-mirror.cfg.
        s = MirrorStack("mirror-host", [("http://127.0.0.1:%d/shadow" % t.port, {"sampling": 100})],
                  extra="""    message: shadow-request
    host: target
    max-body: 64k
    http-version: "1.0"
""", spoe=lambda text: text.replace("    messages mirror\n", "    messages shadow-request\n")
                  .replace("spoe-message mirror\n", "spoe-message shadow-request\n"))
        self.addCleanup(s.stop)
        s.warm_up([t])
        before = s.stats()
        small = os.urandom(60000)
        big = os.urandom(100000)
        reqs = [
            Req("h-abs", "GET", "http://example.com/abs/path?q=1",
                [("Host", "example.com"), ("X-Req-Id", "h-abs")]),
            Req("h-origin", "GET", "/origin/x?y=2", [("Host", "client.example"),
                                                     ("X-Req-Id", "h-origin")]),
            Req("h-small", "POST", "/small", [("Host", "client.example"), ("X-Req-Id", "h-small"),
                                              ("Content-Length", str(len(small)))], small),
            Req("h-big", "POST", "/big", [("Host", "client.example"), ("X-Req-Id", "h-big"),
                                          ("Content-Length", str(len(big)))], big),
        ]
        results = send_all(s.fe, reqs, clients=1)
        self.assertEqual({k: v.status for k, v in results.items()},
                         {r.rid: 200 for r in reqs}, results)
        harness.wait_for(lambda: t.count() >= 3)
        s.wait_idle()
        got = {r.header("x-req-id"): r for r in t.records()}
        want_host = "127.0.0.1:%d" % t.port
        self.assertEqual(sorted(got), ["h-abs", "h-origin", "h-small"], s.stats())
        self.assertEqual(got["h-abs"].target, "/shadow/abs/path?q=1")
        self.assertEqual(got["h-origin"].target, "/shadow/origin/x?y=2")
        self.assertEqual(got["h-small"].target, "/shadow/small")
        for rid in got:
            self.assertEqual(got[rid].header_values("host"), [want_host], rid)
            self.assertEqual(got[rid].version, "HTTP/1.0", rid)
        self.assertEqual(got["h-small"].body_sha256, hashlib.sha256(small).hexdigest())
        st = delta(s.stats(), before)
        self.assertEqual(st["messages"], 4, st)
        self.assertEqual(st["dropped_body_too_big"], 1, st)
        self.assertEqual(st["sent"], 3, st)


class TargetDown(unittest.TestCase):
    """Nothing listens on the target's port: requests unaffected, failures counted. (The
    latency the filter adds then is a benchmark figure, `./scripts/bench mirror`, measured
    against a frontend without the filter in the same run.)"""

    def test_requests_unaffected(self):
        dead = harness.free_port()
        s = MirrorStack("mirror-down", [("http://127.0.0.1:%d" % dead, {})], app="haproxy")
        self.addCleanup(s.stop)
        s.warm_up()
        before = s.stats()
        n = 400
        results = send_all(s.fe, [small_get("down-%d" % i) for i in range(n)], clients=4)
        bad = {k: v for k, v in results.items()
               if not isinstance(v, Response) or v.status != 200 or v.body != b"mirrored\n"}
        self.assertEqual((len(results), bad), (n, {}), "client requests that failed")
        s.wait_idle()
        st = delta(s.stats(), before)
        print("\ntarget down: %d requests; counters %s" % (n, dict(st)))
        # Every message reached the agent (no SPOE error on the way), every replay was tried
        # and failed to connect (or was dropped at max-replays), nothing was sent.
        self.assertEqual(st["messages"], n, st)
        self.assertEqual(st["bad_messages"], 0, st)
        self.assertEqual(st["replays_started"] + st["dropped_limit"], n, st)
        self.assertEqual(st["failed_connect"], st["replays_started"], st)
        self.assertEqual(st["sent"], 0, st)
        for k in ("failed_timeout", "failed_tls", "failed_other", "in_flight"):
            self.assertEqual(st[k], 0, (k, st))


class SlowTarget(unittest.TestCase):
    """A target that answers after 5 s: at most max-replays in flight per worker."""

    def test_max_replays_bounds_in_flight_and_memory(self):
        t = http_target.HttpTarget(harness.free_port(), delay=5.0).start()
        self.addCleanup(t.stop)
        s = MirrorStack("mirror-slow", [("http://127.0.0.1:%d" % t.port, {})], app="haproxy",
                  extra="    max-replays: 20\n    replay-timeout: 60s\n    max-body: 1m\n")
        self.addCleanup(s.stop)
        s.warm_up([t])
        pids = s.worker_pids()
        self.assertEqual(len(pids), WORKERS, pids)
        before = s.stats()
        n = 240
        body = os.urandom(100 * 1024)
        reqs = [Req("slow-%d" % i, "POST", "/slow/%d" % i,
                    [("Host", "app.example"), ("X-Req-Id", "slow-%d" % i),
                     ("Content-Length", str(len(body)))], body) for i in range(n)]
        rss_max = {rel: 0 for rel in pids}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                for rel, pid in pids.items():
                    rss_max[rel] = max(rss_max[rel], harness.rss_kib(pid))
                stop.wait(0.05)  # sampling period

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            answered_at = {}
            results = send_all(s.fe, reqs, clients=8, answered_at=answered_at)
            per_worker = {rel: s.mirror_stats(rel) for rel in pids}
            # The replays in flight complete once the target answers (the sampler runs until
            # then: the memory they hold is measured).
            s.wait_idle()
        finally:
            stop.set()
            sampler.join()
        print("\n%d requests of 100 KiB; per worker: %s; RSS max (KiB): %s; "
              "requests waiting at the target at once, max: %d" % (
                  n, {rel: {k: w[k] for k in ("messages", "in_flight", "in_flight_max",
                                              "dropped_limit")}
                      for rel, w in per_worker.items()}, rss_max, t.active_max))
        self.assertEqual({k: v.status if isinstance(v, Response) else v
                          for k, v in results.items()}, {r.rid: 200 for r in reqs})
        # No request waited for the slow target: each client had its answer before the
        # target answered that request's replay.
        late = [r.header("x-req-id") for r in t.records()
                if r.answered is None or r.answered <= answered_at[r.header("x-req-id")]]
        self.assertEqual(late, [], "requests answered only after the target answered")
        for rel, w in per_worker.items():
            self.assertLessEqual(w["in_flight_max"], 20, (rel, w))
            self.assertLessEqual(w["in_flight"], 20, (rel, w))
        self.assertLessEqual(t.active_max, 20 * WORKERS)
        for rel, kib in rss_max.items():
            self.assertLess(kib, 64 * 1024, "worker %d RSS %d KiB" % (rel, kib))
        st = delta(s.stats(), before)
        self.assertEqual(st["messages"], n, st)
        self.assertGreater(st["dropped_limit"], 0, st)
        self.assertEqual(st["replays_started"] + st["dropped_limit"], n, st)
        self.assertEqual(st["sent"], st["replays_started"], st)
        self.assertEqual(t.count(), st["replays_started"], st)
        self.assertEqual(st["failed_timeout"], 0, st)


class Sampling(unittest.TestCase):
    N = 2000

    def run_case(self, name, targets, spoe=None):
        t = http_target.HttpTarget(harness.free_port()).start()
        self.addCleanup(t.stop)
        s = MirrorStack(name, [("http://127.0.0.1:%d" % t.port, targets)], app="haproxy", spoe=spoe)
        self.addCleanup(s.stop)
        s.warm_up([t], check=spoe is None)  # HAProxy-side sampling: not every round counts
        before = s.stats()
        reqs = [small_get("smp-%d" % i) for i in range(self.N)]
        results = send_all(s.fe, reqs, clients=8, fresh_every=50)
        bad = [k for k, v in results.items() if not isinstance(v, Response) or v.status != 200]
        self.assertEqual(bad, [])
        s.wait_idle()
        st = delta(s.stats(), before)
        got = len({r.header("x-req-id") for r in t.records()
                   if (r.header("x-req-id") or "").startswith("smp-")})
        print("\n%s: %d of %d replayed (%.1f%%); counters %s" % (
            name, got, self.N, 100.0 * got / self.N, dict(st)))
        self.assertGreaterEqual(got, 0.07 * self.N, st)
        self.assertLessEqual(got, 0.13 * self.N, st)
        self.assertEqual(st["sent"], got, st)
        return st, got

    def test_agent_sampling_10(self):
        st, got = self.run_case("mirror-sampling", {"sampling": 10})
        self.assertEqual(st["messages"], self.N, st)
        self.assertEqual(st["dropped_sampling"] + st["replays_started"], self.N, st)

    def test_haproxy_acl_sampling_10(self):
        st, got = self.run_case(
            "mirror-acl", {},
            spoe=lambda text: text.replace(
                SPOE_EVENT, "    event on-frontend-http-request if { rand(100) lt 10 }\n"))
        self.assertEqual(st["messages"], got, st)
        self.assertEqual(st["dropped_sampling"], 0, st)


# Every key but listen, workers and targets (mirror_yaml writes those).
FULL_KEYS = """    message: mirror
    host: keep
    add-headers: ["X-Mirrored-By: spoad"]
    remove-headers: ["X-Secret"]
    connect-timeout: 1s
    replay-timeout: 5s
    max-replays: 256
    max-body: 2m
    http-version: "%(ver)s"
"""


class ConfigKeys(unittest.TestCase):
    """Every key of the agent's documented configuration is accepted by `spoad -c`."""

    def test_documented_keys(self):
        env = harness.Env("mirror-config")
        self.addCleanup(env.stop)
        for ver in ("1.0", "1.1", "2", "2-prior-knowledge"):
            path = env.write("spoad-%s.yaml" % ver, mirror_yaml(
                env.path("m.sock"), harness.free_port(), 2,
                [("http://127.0.0.1:8081", {"sampling": 100}),
                 ("https://127.0.0.1:8443/prefix", {"sampling": 12.5})],
                FULL_KEYS % {"ver": ver}))
            r = subprocess.run([harness.SPOAD, "-c", "-f", path], capture_output=True, text=True,
                               timeout=harness.GUARD_S)
            self.assertEqual(r.returncode, 0, "http-version %s: %s%s" % (ver, r.stdout, r.stderr))


def self_signed(env):
    """(cert, key) paths of a fresh self-signed certificate for 127.0.0.1."""
    cert, key = env.path("cert.pem"), env.path("key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Failures(unittest.TestCase):
    """A target with a certificate nobody trusts, a target answering 503: counted apart."""

    def test_tls_failure_and_5xx(self):
        env = harness.Env("mirror-tls-cert")
        self.addCleanup(env.stop)
        cert, key = self_signed(env)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        tls = http_target.HttpTarget(harness.free_port(), ssl_context=ctx).start()
        self.addCleanup(tls.stop)
        bad = http_target.HttpTarget(harness.free_port(), status=503).start()
        self.addCleanup(bad.stop)
        s = MirrorStack("mirror-fail", [("https://127.0.0.1:%d" % tls.port, {}),
                                  ("http://127.0.0.1:%d" % bad.port, {})], app="haproxy")
        self.addCleanup(s.stop)
        s.warm_up([tls, bad])
        before = s.stats()
        n = 20
        results = send_all(s.fe, [small_get("f-%d" % i) for i in range(n)], clients=2)
        self.assertEqual([v.status for v in results.values()], [200] * n, results)
        harness.wait_for(lambda: bad.count() >= n)
        s.wait_idle()
        st = delta(s.stats(), before)
        print("\nTLS target (untrusted certificate) and 503 target: %s; TLS handshakes "
              "refused by the client: %d" % (dict(st), tls.tls_failures))
        self.assertEqual(st["messages"], n, st)
        self.assertEqual(st["replays_started"], 2 * n, st)
        self.assertEqual(st["failed_tls"], n, st)
        self.assertEqual(st["sent"], n, st)
        self.assertEqual(st["responses_5xx"], n, st)
        self.assertEqual(st["responses_2xx"], 0, st)
        self.assertEqual(tls.count(), 0, "a replay went through a certificate nobody trusts")
        self.assertEqual(bad.count(), n)


class ReplayTimeout(unittest.TestCase):
    """`replay-timeout` bounds the whole replay. (The key is not `timeout`: every agent's
    `timeout` is the runtime's mapping of hello/idle timeouts.)"""

    def test_timeout(self):
        t = http_target.HttpTarget(harness.free_port(), delay=3.0).start()
        self.addCleanup(t.stop)
        s = MirrorStack("mirror-timeout", [("http://127.0.0.1:%d" % t.port, {})], app="haproxy",
                  extra="    replay-timeout: 500ms\n")
        self.addCleanup(s.stop)
        s.warm_up([t])
        before = s.stats()
        n = 10
        results = send_all(s.fe, [small_get("to-%d" % i) for i in range(n)], clients=2)
        self.assertEqual([v.status for v in results.values()], [200] * n, results)
        s.wait_idle()
        st = delta(s.stats(), before)
        # Cut by replay-timeout, and counted as such (with the agent's default, 5 s, the
        # target's answer after 3 s would have come through).
        self.assertEqual(st["failed_timeout"], n, st)
        self.assertEqual(st["sent"], 0, st)
        self.assertEqual(st["replays_started"], n, st)


class BadMessages(unittest.TestCase):
    """Messages the agent cannot replay: counted, nothing sent, the request is fine. One stack,
    one frontend for each variant of spoe-mirror.cfg."""

    VARIANTS = {
        "nomethod": lambda text: text.replace(
            SPOE_ARGS, SPOE_ARGS.replace("arg_method=method ", "")),
        # A name announced 5 bytes long followed by 4.
        "badhdrs": lambda text: text.replace(
            SPOE_ARGS, SPOE_ARGS.replace("arg_hdrs=req.hdrs_bin", "arg_hdrs=bin(0561626364)")),
    }

    @classmethod
    def setUpClass(cls):
        cls.t = http_target.HttpTarget(harness.free_port()).start()
        try:
            cls.s = MirrorStack("mirror-bad", [("http://127.0.0.1:%d" % cls.t.port, {})], app="haproxy",
                          variants=cls.VARIANTS, workers=1)
            cls.s.warm_up([cls.t])  # through the shipped frontend: messages that replay
        except BaseException:
            if getattr(cls, "s", None) is not None:
                cls.s.stop()
            cls.t.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        cls.t.stop()

    def run_case(self, variant):
        s, t = self.s, self.t
        base = t.count()
        before = s.stats()
        reqs = [small_get("bad-%s-%d" % (variant, i)) for i in range(20)]
        results = send_all(s.variant_fe[variant], reqs, clients=2)
        self.assertEqual([v.status for v in results.values()], [200] * 20, results)
        # Final once the answers are in (see MirrorStack.warm_up); and nothing in flight.
        s.wait_idle()
        st = delta(s.stats(), before)
        self.assertEqual(st["messages"], 20, st)
        self.assertEqual(st["bad_messages"], 20, st)
        self.assertEqual(st["replays_started"], 0, st)
        self.assertEqual(t.count(), base, [r for r in t.records()])

    def test_no_method(self):
        self.run_case("nomethod")

    def test_undecodable_headers(self):
        self.run_case("badhdrs")


if __name__ == "__main__":
    unittest.main(verbosity=2)
