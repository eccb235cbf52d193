"""Hostile peers, case 1 (see hostile_support.py for what holds around every attack):
non-UTF-8 and control bytes (NUL, ESC, CR, LF, 0xff, overlong C0 80, surrogate ED A0 80, F5) in
every string field of every frame type: HAPROXY-HELLO (supported-versions, capabilities,
engine-id, unknown keys, key names), NOTIFY (message names, argument names, STRING and BINARY
values), HAPROXY-DISCONNECT (message), frames of unknown types; and in the arguments the real
agents read: ip-checker, tracing (file exporter: every exported line must be strict UTF-8
JSON), mirror (target down, so replays fail and are logged). SPOE.txt section 3.
"""
import hashlib
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
from hostile_support import (BAD, ST_BAD_VERSION, ST_NO_CAPABILITIES, ST_NO_FRAME_SIZE,  # noqa: E402
                             ST_NO_VERSION, ST_NORMAL, AllAgents, client, expect,
                             json_string_problems, mirror_args, now_us, read_frame, works)
from hostile_support import tearDownModule  # noqa: E402,F401 (the RSS report)
from spop import Typed  # noqa: E402


class HostileFields(AllAgents, unittest.TestCase):

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


if __name__ == "__main__":
    unittest.main(verbosity=2)
