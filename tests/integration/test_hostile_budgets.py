"""Hostile peers, cases 4 and 5: a byte budget each, in a spoad of their own (see
hostile_support.py for what holds around every attack):
 4. fragment floods: 50 connections each sending endless fragments of one NOTIFY; the
    per-worker reassembly budget (REASSEMBLY_KEY) disconnects them, RSS stays under budget;
 5. huge attributes with the collector down: tracing with an OTLP/HTTP exporter pointed at a
    closed port, 200 NOTIFYs with a 1 MiB uri; the queue's byte budget (TRACING_QUEUE_KEY)
    bounds RSS.
"""
import hashlib
import os
import re
import select
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402
from hostile_support import (KIB, MIB, REASSEMBLY_BUDGET, REASSEMBLY_KEY, RSS_MARGIN,  # noqa: E402
                             ST_RESOURCE, ST_TIMEOUT, ST_TOO_BIG, TRACING_QUEUE_BUDGET,
                             TRACING_QUEUE_KEY, Guard, Spoad, client, expect, log, now_us,
                             read_frame, spoad_check)
from hostile_support import tearDownModule  # noqa: E402,F401 (the RSS report)
from spop import Typed  # noqa: E402


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
