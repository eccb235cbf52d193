"""Protocol tests against a real spoad over real sockets (SPOE.txt section 3).

A raw client sends well-formed and malformed input; each bad case must get the expected
AGENT-DISCONNECT status (or a close), while a concurrent well-behaved connection keeps getting
its ACKs the whole time.

Nothing here sleeps to synchronise or bounds a duration from above: the cases wait for frames,
and the timeout cases (on an agent of their own, so that a slow machine cannot trip them
elsewhere) check only that the agent did not give up too early.
"""
import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
from spop import Typed  # noqa: E402


class GoodClient(threading.Thread):
    """Sends NOTIFYs one after another and checks every ACK, until stopped."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr = addr
        self.acks = 0
        self.errors = []
        self.stop_flag = threading.Event()

    def run(self):
        try:
            c = spop.Client(self.addr)
            c.handshake()
            sid = 1
            while not self.stop_flag.is_set():
                c.send(spop.notify(sid, 1, [("check", [("n", sid)])]))
                f = c.recv_frame()
                if f is None or f.type != spop.ACK or f.sid != sid or f.actions().get("txn.n") != sid:
                    self.errors.append("bad answer to sid %d: %r" % (sid, f))
                    return
                self.acks += 1
                sid += 2
                self.stop_flag.wait(0.002)  # pacing: leave the CPU to the cases
            c.close()
        except Exception as e:  # noqa: BLE001
            self.errors.append(repr(e))


class Protocol(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = harness.Env("protocol")
        cls.port = harness.free_port()
        cls.slow_port = harness.free_port()
        cls.timeouts_port = harness.free_port()
        cls.unix = cls.env.path("echo.sock")
        cfg = cls.env.write("spoad.yaml", """
agents:
  - name: echo
    type: echo
    listen: 127.0.0.1:%d
    max-fragmented-size: 4k
    timeout:
      hello: 60s
      idle: 10m
  - name: timeouts
    type: echo
    listen: 127.0.0.1:%d
    timeout:
      hello: 500ms
      idle: 1500ms
  - name: slow
    type: echo
    listen: "[::1]:%d"
    max-inflight: 4
  - name: local
    type: echo
    listen: unix:%s
    async: true
""" % (cls.port, cls.timeouts_port, cls.slow_port, cls.unix))
        cls.spoad = cls.env.spoad(cfg)
        ok = harness.wait_for(lambda: harness.port_open(cls.port) and os.path.exists(cls.unix)
                              and harness.port_open(cls.timeouts_port)
                              and harness.port_open(cls.slow_port, "::1"))
        if not ok:
            raise RuntimeError("spoad did not start:\n" + cls.env.dump_logs())
        cls.good = GoodClient(("127.0.0.1", cls.port))
        cls.good.start()

    @classmethod
    def tearDownClass(cls):
        cls.good.stop_flag.set()
        cls.good.join(harness.GUARD_S)
        cls.env.stop()

    def setUp(self):
        self.acks_before = self.good.acks

    def tearDown(self):
        # The well-behaved connection kept working during the case: it gets ACKs after it.
        self.assertTrue(harness.wait_for(lambda: self.good.acks > self.acks_before
                                         or self.good.errors or not self.good.is_alive()),
                        "the good connection stalled")
        self.assertEqual(self.good.errors, [])
        self.assertGreater(self.good.acks, self.acks_before, "the good connection stalled")
        self.assertTrue(self.spoad.alive(), self.env.dump_logs())

    # ---- helpers ------------------------------------------------------------------------

    def client(self, addr=None):
        c = spop.Client(addr or ("127.0.0.1", self.port))
        self.addCleanup(c.close)
        return c

    def expect_disconnect(self, c, status):
        f = c.recv_frame()
        self.assertIsNotNone(f, "closed without AGENT-DISCONNECT")
        self.assertEqual(f.type, spop.AGENT_DISCONNECT, f)
        self.assertEqual((f.sid, f.fid, f.flags), (0, 0, spop.FIN))
        kv = f.kv()
        self.assertEqual(kv["status-code"], status, kv)
        self.assertTrue(kv["message"])
        self.assertTrue(c.closed(), "the agent did not close after AGENT-DISCONNECT")
        return kv

    def bad_bytes(self, data, status, hello_first=False, **hello_kw):
        c = self.client()
        if hello_first:
            c.handshake(**hello_kw)
        c.send(data)
        return self.expect_disconnect(c, status)

    # ---- handshake and normal traffic -----------------------------------------------------

    def test_hello_notify_ack(self):
        c = self.client()
        h = c.handshake(max_frame_size=16380, capabilities="pipelining,async").kv()
        self.assertEqual(h["version"], "2.0")
        self.assertEqual(h["max-frame-size"], 16380)
        caps = h["capabilities"].split(",")
        self.assertIn("pipelining", caps)
        self.assertIn("fragmentation", caps)
        self.assertNotIn("async", caps)  # off unless the config enables it
        c.send(spop.notify(3, 1, [("check", [("ip", Typed(spop.T_IPV4, "192.0.2.1"))])]))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid, f.fid, f.flags), (spop.ACK, 3, 1, spop.FIN))
        self.assertEqual(f.actions()["txn.ip"], "192.0.2.1")

    def test_max_frame_size_is_the_smaller_one(self):
        c = self.client()
        self.assertEqual(c.handshake(max_frame_size=1024).kv()["max-frame-size"], 1024)
        c = self.client()
        self.assertEqual(c.handshake(max_frame_size=65535).kv()["max-frame-size"], 16380)

    def test_stream_id_zero_and_large_ids_are_echoed(self):
        c = self.client()
        c.handshake()
        for sid, fid in [(0, 1), (2**40, 7), (2**64 - 1, 2**32 + 5)]:
            c.send(spop.notify(sid, fid, [("m", [])]))
            f = c.recv_frame()
            self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, sid, fid))

    def test_all_types_echo_back(self):
        c = self.client()
        c.handshake()
        args = [("n", None), ("t", True), ("f", False), ("i32", Typed(spop.T_INT32, -7)),
                ("u32", Typed(spop.T_UINT32, 4000000000)), ("i64", Typed(spop.T_INT64, -2**62)),
                ("u64", Typed(spop.T_UINT64, 2**64 - 1)), ("v4", Typed(spop.T_IPV4, "10.0.0.1")),
                ("v6", Typed(spop.T_IPV6, "2001:db8::1")), ("s", "héllo"), ("b", b"\x00\xff\x01")]
        c.send(spop.notify(1, 1, [("all", args)]))
        a = c.recv_frame().actions()
        self.assertEqual(a["txn.nargs"], len(args))
        self.assertEqual(a["txn.t"], True)
        self.assertEqual(a["txn.f"], False)
        self.assertEqual(a["txn.i32"], -7)
        self.assertEqual(a["txn.u32"], 4000000000)
        self.assertEqual(a["txn.i64"], -2**62)
        self.assertEqual(a["txn.u64"], 2**64 - 1)
        self.assertEqual(a["txn.v4"], "10.0.0.1")
        self.assertEqual(a["txn.v6"], "2001:db8::1")
        self.assertEqual(a["txn.s"], "héllo")
        self.assertEqual(a["txn.b"], b"\x00\xff\x01")
        self.assertEqual(a["txn.n_type"], "null")
        self.assertEqual(a["txn.u64_type"], "uint64")

    def test_several_messages_in_one_notify_share_one_ack(self):
        c = self.client()
        c.handshake()
        c.send(spop.notify(9, 2, [("first", [("a", 1)]), ("second", [("b", 2)])]))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 9, 2))
        a = f.actions()
        self.assertEqual((a["txn.a"], a["txn.b"], a["txn.msg"]), (1, 2, "second"))

    def test_empty_notify_gets_empty_ack(self):
        c = self.client()
        c.handshake()
        c.send(spop.frame(spop.NOTIFY, b"", spop.FIN, 5, 1))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid, f.fid, f.payload), (spop.ACK, 5, 1, b""))

    def test_healthcheck_hello_of_haproxy3(self):
        # The exact 78-byte frame of HAProxy 3.x `option spop-check`.
        data = bytes.fromhex("0000004e" "01" "00000001" "00" "00") + \
            b"\x12supported-versions\x08\x03" + b"2.0" + b"\x0emax-frame-size\x03\xfc\xf0\x06" + \
            b"\x0ccapabilities\x08\x00" + b"\x0bhealthcheck\x11"
        self.assertEqual(len(data), 82)
        c = self.client()
        c.send(data)
        f = c.recv_frame()
        self.assertEqual((f.type, f.flags, f.sid, f.fid), (spop.AGENT_HELLO, 1, 0, 0))
        kv = f.kv()
        self.assertEqual(set(kv), {"version", "max-frame-size", "capabilities"})
        self.assertLessEqual(kv["max-frame-size"], 16380)
        self.assertTrue(c.closed(), "no close after a health check")

    def test_agent_hello_is_one_write(self):
        # HAProxy 3.2 resets connections whose AGENT-HELLO arrives split: the whole frame must
        # be in the first segment the kernel delivers.
        c = self.client()
        c.send(spop.hello())
        first = c.sock.recv(65536)  # what has arrived when the first bytes do
        (n,) = struct.unpack(">I", first[:4])
        self.assertEqual(len(first), 4 + n)

    def test_haproxy_disconnect(self):
        c = self.client()
        c.handshake()
        c.send(spop.disconnect(0, "normal"))
        kv = self.expect_disconnect(c, 0)
        self.assertEqual(kv["message"], "normal")

    def test_unix_socket_and_async_when_enabled(self):
        c = self.client(self.unix)
        caps = c.handshake(capabilities="pipelining,async").kv()["capabilities"].split(",")
        self.assertIn("async", caps)
        c.send(spop.notify(1, 1, [("m", [("x", "y")])]))
        self.assertEqual(c.recv_frame().actions()["txn.x"], "y")

    def test_ipv6_listener(self):
        c = self.client(("::1", self.slow_port))
        c.handshake()
        c.send(spop.notify(1, 1, [("m", [])]))
        self.assertEqual(c.recv_frame().type, spop.ACK)

    def test_unknown_frame_type_is_skipped(self):
        c = self.client()
        c.handshake()
        c.send(spop.frame(50, b"whatever", spop.FIN, 1, 1))
        c.send(spop.notify(7, 1, [("m", [])]))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid), (spop.ACK, 7))

    # ---- pipelining, deferred replies, backpressure --------------------------------------

    def test_pipelined_acks_in_completion_order(self):
        c = self.client()
        c.handshake()
        c.send(spop.notify(1, 1, [("m", [("delay_ms", 300)])]) +
               spop.notify(3, 1, [("m", [("delay_ms", 100)])]) +
               spop.notify(5, 1, [("m", [])]))
        order = [c.recv_frame().sid for _ in range(3)]
        self.assertEqual(order, [5, 3, 1])

    def test_backpressure_holds_frames_and_drops_none(self):
        # max-inflight 4: NOTIFYs 1-4 wait 200 ms for their reply, 5-12 are answered at once,
        # but only once one of the first four has made room. So the first ACK is one of 1-4.
        c = self.client(("::1", self.slow_port))
        c.handshake()
        c.send(b"".join(spop.notify(s, 1, [("m", [("delay_ms", 200 if s <= 4 else 0)])])
                        for s in range(1, 13)))
        order = [c.recv_frame().sid for _ in range(12)]
        self.assertEqual(sorted(order), list(range(1, 13)), "a NOTIFY was dropped")
        self.assertIn(order[0], (1, 2, 3, 4), ("more than max-inflight NOTIFYs ran at once",
                                               order))

    # ---- fragmentation ----------------------------------------------------------------------

    def test_fragmented_notify_is_reassembled(self):
        c = self.client()
        c.handshake()
        body = bytes(range(256)) * 10
        payload = spop.message("frag", [("data", body)])
        parts = [payload[i:i + 700] for i in range(0, len(payload), 700)]
        frames = spop.frame(spop.NOTIFY, parts[0], 0, 11, 3)
        for i, p in enumerate(parts[1:], 1):
            frames += spop.frame(spop.UNSET, p, spop.FIN if i == len(parts) - 1 else 0, 11, 3)
        c.send(frames)
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 11, 3))
        import hashlib
        self.assertEqual(f.actions()["txn.data_sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(f.actions()["txn.data_len"], len(body))

    def test_abort_mid_fragment_discards_and_continues(self):
        c = self.client()
        c.handshake()
        c.send(spop.frame(spop.NOTIFY, spop.message("m", [("x", "a" * 100)])[:50], 0, 21, 1))
        c.send(spop.frame(spop.UNSET, b"", spop.FIN | spop.ABORT, 21, 1))
        c.send(spop.notify(23, 1, [("m", [])]))
        f = c.recv_frame()
        self.assertEqual((f.type, f.sid), (spop.ACK, 23))  # no ACK for the aborted frame

    def test_fragment_without_notify(self):
        self.bad_bytes(spop.frame(spop.UNSET, b"\x00", spop.FIN, 1, 1), 12, hello_first=True)

    def test_interlaced_fragments(self):
        c = self.client()
        c.handshake()
        c.send(spop.frame(spop.NOTIFY, b"\x01m", 0, 1, 1))
        c.send(spop.notify(3, 1, [("m", [])]))
        self.expect_disconnect(c, 11)

    def test_reassembly_is_bounded(self):
        c = self.client()
        c.handshake()
        c.send(spop.frame(spop.NOTIFY, b"\x01m\x01\x01d\x09" + b"\x00" * 3000, 0, 1, 1))
        c.send(spop.frame(spop.UNSET, b"\x00" * 3000, 0, 1, 1))
        self.expect_disconnect(c, 3)

    # ---- malformed input: the expected AGENT-DISCONNECT status ---------------------------

    def test_length_zero(self):
        self.bad_bytes(b"\x00\x00\x00\x00", 4)

    def test_lengths_one_to_six(self):
        for n in range(1, 7):
            with self.subTest(length=n):
                self.bad_bytes(struct.pack(">I", n) + b"\x01" * n, 4)

    def test_length_greater_than_max(self):
        self.bad_bytes(struct.pack(">I", 16381) + b"\x01\x00\x00\x00\x01\x00\x00", 3)

    def test_frame_bigger_than_negotiated_size(self):
        self.bad_bytes(spop.notify(1, 1, [("m", [("big", "x" * 2000)])]), 3, hello_first=True,
                       max_frame_size=1024)

    def test_garbage_bytes(self):
        # An HTTP request sent to the agent port: "GET " reads as a huge length.
        self.bad_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 3)

    def test_varint_longer_than_ten_bytes(self):
        body = b"\x01" + b"\x00\x00\x00\x01" + b"\xff" * 11 + b"\x00"
        self.bad_bytes(struct.pack(">I", len(body)) + body, 4)

    def test_notify_before_hello(self):
        self.bad_bytes(spop.notify(1, 1, [("m", [])]), 4)

    def test_version_1_0(self):
        self.bad_bytes(spop.hello(versions="1.0"), 8)

    def test_missing_supported_versions(self):
        data = spop.frame(spop.HAPROXY_HELLO, spop.kv([
            ("max-frame-size", Typed(spop.T_UINT32, 16380)), ("capabilities", "")]))
        self.bad_bytes(data, 5)

    def test_missing_max_frame_size(self):
        data = spop.frame(spop.HAPROXY_HELLO, spop.kv([("supported-versions", "2.0"),
                                                       ("capabilities", "pipelining")]))
        self.bad_bytes(data, 6)

    def test_missing_capabilities(self):
        data = spop.frame(spop.HAPROXY_HELLO, spop.kv([
            ("supported-versions", "2.0"), ("max-frame-size", Typed(spop.T_UINT32, 16380))]))
        self.bad_bytes(data, 7)

    def test_max_frame_size_too_small(self):
        self.bad_bytes(spop.hello(max_frame_size=100), 9)

    def test_hello_without_fin(self):
        h = bytearray(spop.hello())
        h[8] = 0  # flags low byte: FIN cleared
        self.bad_bytes(bytes(h), 10)

    def test_hello_with_stream_id(self):
        data = spop.frame(spop.HAPROXY_HELLO, spop.kv([
            ("supported-versions", "2.0"), ("max-frame-size", Typed(spop.T_UINT32, 16380)),
            ("capabilities", "")]), spop.FIN, 5, 0)
        self.bad_bytes(data, 4)

    def test_truncated_kv_list(self):
        payload = spop.kv([("supported-versions", "2.0")])[:-2]
        self.bad_bytes(spop.frame(spop.HAPROXY_HELLO, payload), 4)

    def test_unknown_typed_data_id(self):
        payload = b"\x01m\x01" + b"\x01a" + b"\x0c\x00"  # message m, arg a of type 12
        self.bad_bytes(spop.frame(spop.NOTIFY, payload, spop.FIN, 1, 1), 4, hello_first=True)

    def test_ack_sent_by_the_client(self):
        self.bad_bytes(spop.frame(spop.ACK, b"", spop.FIN, 1, 1), 4, hello_first=True)

    def test_second_hello(self):
        self.bad_bytes(spop.hello(), 4, hello_first=True)

    def test_abort_without_fin(self):
        self.bad_bytes(spop.frame(spop.UNSET, b"", spop.ABORT, 1, 1), 4, hello_first=True)

    def test_fragmented_hello_frame_type_mismatch(self):
        # An AGENT-HELLO sent to the agent is an agent-only frame: invalid.
        self.bad_bytes(spop.frame(spop.AGENT_HELLO, b""), 4)

    def test_hello_timeout(self):
        # A lower bound only (the agent did not give up before its 500 ms): load can only
        # make it later. The clock starts before the connection, as the agent's does.
        t0 = time.monotonic()
        c = self.client(("127.0.0.1", self.timeouts_port))
        kv = self.expect_disconnect(c, 2)
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)
        self.assertIn("HELLO", kv["message"])

    def test_idle_timeout(self):
        c = self.client(("127.0.0.1", self.timeouts_port))
        t0 = time.monotonic()  # before the HELLO that starts the agent's idle clock
        c.handshake()
        self.expect_disconnect(c, 2)
        self.assertGreaterEqual(time.monotonic() - t0, 1.45)

    def test_half_written_frame_then_close(self):
        c = self.client()
        c.handshake()
        c.send(spop.notify(1, 1, [("m", [("x", "y" * 100)])])[:40])
        c.close()
        c2 = self.client()
        c2.handshake()
        c2.send(spop.notify(3, 1, [("m", [])]))
        self.assertEqual(c2.recv_frame().type, spop.ACK)

    def test_reset_mid_stream(self):
        c2 = self.client()
        c2.handshake()
        c = self.client()
        c.handshake()
        # One write: once the ACK of the first comes, the worker has read the second too, and
        # its reply is pending.
        c.send(spop.notify(1, 1, [("m", [])]) + spop.notify(3, 1, [("m", [("delay_ms", 200)])]))
        self.assertEqual(c.recv_frame().sid, 1)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST with a reply still pending
        # The worker's timers fire in order: once this reply (due later) comes, the one for the
        # reset connection has been written to a dead socket, and the worker lives on.
        c2.send(spop.notify(3, 1, [("m", [("delay_ms", 400)])]))
        self.assertEqual(c2.recv_frame().type, spop.ACK)
        c3 = self.client()
        c3.handshake()
        c3.send(spop.notify(5, 1, [("m", [])]))
        self.assertEqual(c3.recv_frame().type, spop.ACK)

    def test_many_connections_at_once(self):
        clients = [self.client() for _ in range(200)]
        for c in clients:
            c.send(spop.hello())
        for i, c in enumerate(clients):
            self.assertEqual(c.recv_frame().type, spop.AGENT_HELLO)
            c.send(spop.notify(i, 1, [("m", [("i", i)])]))
        for i, c in enumerate(clients):
            self.assertEqual(c.recv_frame().actions()["txn.i"], i)
            c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
