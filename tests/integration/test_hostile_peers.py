"""Hostile peers, cases 2, 3 and 6 (see hostile_support.py for what holds around every
attack; SPOE.txt section 3, status codes as in lib/spop/types.h):
 2. many silent connections: closed by the hello timeout (AGENT-DISCONNECT 2), counted, while
    a well-behaved connection keeps getting ACKs;
 3. a reader that never reads: NOTIFYs until the kernel buffers fill. spoad stops reading the
    connection once 256 KiB of output are pending (back-pressure: lib/runtime/connection.cpp
    kMaxPendingOutput), and since nothing is read any more, the idle timeout closes it; the
    worker's RSS stays bounded and others are served meanwhile;
 6. lying frames: FRAME-LENGTH 0xffffffff or above max-frame-size, a 3-byte frame, 3 bytes
    then close, varints that never end, NB-ARGS 255 without arguments.
"""
import os
import select
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
from hostile_support import (KIB, MIB, ST_INVALID, ST_TIMEOUT, ST_TOO_BIG, AllAgents, Busy,  # noqa: E402
                             Innocent, client, expect, first_frame_of, log)
from hostile_support import tearDownModule  # noqa: E402,F401 (the RSS report)


class HostilePeers(AllAgents, unittest.TestCase):

    def test_2_silent_connections(self):
        port, n = self.ports["silent"], 200
        g = self.guard("2 silent connections", [("silent", port, "echo")])
        busy = Busy(port)
        busy.start()
        self.addCleanup(busy.stop)
        t0 = self.sp.total("silent", "disconnect_timeout")
        acks0 = busy.acks
        silent = [socket.create_connection(("127.0.0.1", port), timeout=harness.GUARD_S) for _ in range(n)]
        self.addCleanup(lambda: [s.close() for s in silent])
        # A newcomer is served while they wait.
        fresh = Innocent(port, "echo")
        ok, why = fresh.probe()
        fresh.close()
        self.assertTrue(ok, "a fresh connection among silent ones: " + why)
        # Each gets AGENT-DISCONNECT "timeout" (SPOE.txt 3.5), then EOF.
        data = {s: b"" for s in silent}
        eof = set()
        deadline = time.monotonic() + harness.GUARD_S
        while len(eof) < n and time.monotonic() < deadline:
            r, _, _ = select.select([s for s in silent if s not in eof], [], [], 1.0)
            for s in r:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    data[s] += chunk
                else:
                    eof.add(s)
        acks_during = busy.acks - acks0
        self.assertEqual(len(eof), n, "silent connections still open")
        statuses = {}
        for s in silent:
            st = first_frame_of(data[s])
            statuses[st] = statuses.get(st, 0) + 1
        self.assertEqual(statuses, {(spop.AGENT_DISCONNECT, ST_TIMEOUT): n})
        self.assertTrue(harness.wait_for(
            lambda: self.sp.total("silent", "disconnect_timeout") - t0 >= n),
            "disconnect_timeout did not count the silent connections")
        self.assertGreater(acks_during, 0, "the busy connection got no ACK while silent ones waited")
        busy.stop()
        self.assertEqual(busy.errors, [])
        g.innocents.append(busy.inn)
        g.end()

    # ---- case 3: a reader that never reads ---------------------------------------------------

    def test_3_reader_that_never_reads(self):
        port = self.ports["slow"]
        # The slow agent closes idle connections after 2 s: its innocent connection is the busy
        # one (kept active through the attack), probed again at the end.
        g = self.guard("3 never-reading reader", [("slow", port, "echo")], innocents=False)
        busy = Busy(port)
        busy.start()
        self.addCleanup(busy.stop)
        (w,) = self.sp.workers("slow")
        st0 = self.sp.stat(w.rel, "slow")
        t0 = st0["disconnect_timeout"]
        busy0 = busy.sent
        c = client(port)
        self.addCleanup(c.close)
        c.handshake()
        c.sock.setblocking(False)
        # NOTIFYs of one size (stream-ids and values of 2-byte varints), each answered by an
        # ACK about twice as large (echo sends the arguments back with their digests).
        pad = b"x" * 200
        one = [spop.notify(sid, 1, [("check", [("n", sid), ("pad", pad)])]) for sid in range(241, 641, 2)]
        assert len({len(x) for x in one}) == 1
        size = len(one[0])
        batch = b"".join(one)
        sent, pending, full, reset = 0, b"", False, False
        acks_at_block = None
        while sent < 256 * MIB:
            if not pending:
                pending = batch
            try:
                k = c.sock.send(pending)
                sent += k
                pending = pending[k:]
                continue
            except BlockingIOError:
                if acks_at_block is None:
                    acks_at_block = busy.acks
                g.sample()
            except (ConnectionResetError, BrokenPipeError):
                reset = True
                break
            _, wr, _ = select.select([], [c.sock], [], 1.0)
            if not wr:
                full = True  # spoad does not read: the kernel buffers are full
                break
        g.sample()
        self.assertTrue(full or reset, "spoad read %d MiB and never pushed back" % (sent // MIB))
        # Nothing is read any more: the idle timeout closes the connection.
        self.assertTrue(harness.wait_for(
            lambda: self.sp.stat(w.rel, "slow")["disconnect_timeout"] > t0),
            "the never-reading connection was not closed by the idle timeout")
        self.assertGreater(busy.acks, acks_at_block or 0, "others were not served while it was stuck")
        c.sock.setblocking(True)
        c.sock.settimeout(harness.GUARD_S)
        self.assertTrue(c.closed(harness.GUARD_S), "the never-reading connection is still open")
        # What spoad processed of it (NOTIFYs read while open; what it reads while closing is
        # discarded and not counted): without back-pressure, everything sent.
        processed = self.sp.stat(w.rel, "slow")["cum_notify"] - st0["cum_notify"] - (busy.sent - busy0)
        log("case 3: sent %d NOTIFYs (%d KiB); spoad processed %d of them, then stopped reading "
            "(%s), and the idle timeout closed the connection (disconnect_timeout +1)" % (
                sent // size, sent // KIB, processed, "kernel buffers full" if full else "reset while sending"))
        self.assertLess(processed, sent // size - 64 * KIB // size, "no back-pressure: spoad processed everything sent")
        busy.stop()
        self.assertEqual(busy.errors, [])
        g.innocents.append(busy.inn)
        g.end()

    # ---- case 6: lying frames ----------------------------------------------------------------

    def test_6_lying_frames(self):
        port = self.ports["echo"]
        g = self.guard("6 lying frames", [("echo", port, "echo")])
        meta_nf = bytes([spop.NOTIFY]) + b"\x00\x00\x00\x01"
        cases = [
            # (label, HELLO first (max-frame-size) or None, bytes, expected status or None)
            ("FRAME-LENGTH 0xffffffff before HELLO", None, spop.frame_header(0xffffffff, spop.HAPROXY_HELLO), ST_TOO_BIG),
            ("FRAME-LENGTH 0xffffffff after HELLO", 16380, spop.frame_header(0xffffffff), ST_TOO_BIG),
            ("FRAME-LENGTH max-frame-size+1 before HELLO", None, spop.frame_header(16381, spop.HAPROXY_HELLO), ST_TOO_BIG),
            ("FRAME-LENGTH negotiated 1024 + 1", 1024, spop.frame_header(1025), ST_TOO_BIG),
            ("a frame of 3 bytes", None, b"\x00\x00\x00\x03\x01\x00\x00", ST_INVALID),
            ("a frame of 3 bytes after HELLO", 16380, b"\x00\x00\x00\x03\x03\x00\x00", ST_INVALID),
            ("endless 0xff bytes", None, b"\xff" * 65536, ST_TOO_BIG),
            ("varint stream-id that never ends", 16380,
             struct.pack(">I", 5 + 200) + meta_nf + b"\xff" * 200, ST_INVALID),
            ("varint in HELLO KV name that never ends", None,
             spop.frame(spop.HAPROXY_HELLO, b"\xff" * 200), ST_INVALID),
            ("varint in NOTIFY value that never ends", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\x01" + spop.sstr("x") + bytes([spop.T_UINT64]) + b"\xff" * 200,
                        spop.FIN, 1, 1), ST_INVALID),
            ("varint of 11 bytes in NOTIFY string length", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\x01" + spop.sstr("x") + bytes([spop.T_STR]) + b"\xff" * 10 + b"\x01",
                        spop.FIN, 1, 1), ST_INVALID),
            ("NB-ARGS 255 with no args", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\xff", spop.FIN, 1, 1), ST_INVALID),
            ("NB-ARGS 255 with one arg", 16380,
             spop.frame(spop.NOTIFY, spop.sstr("m") + b"\xff" + spop.kv([("a", 1)]), spop.FIN, 1, 1), ST_INVALID),
        ]
        for label, hello_mfs, data, status in cases:
            with self.subTest(label):
                c = client(port)
                try:
                    if hello_mfs is not None:
                        c.handshake(max_frame_size=hello_mfs)
                    c.send(data)
                    expect(self, c, ("disconnect", status), label)
                finally:
                    c.close()
        # Then gone without waiting for an answer.
        for label, data in [("3 bytes then close", b"\x00\x00\x00"),
                            ("a frame of 3 bytes then close", b"\x00\x00\x00\x03\x01\x00\x00"),
                            ("half a HELLO then close", spop.hello()[:20]),
                            ("FRAME-LENGTH 0xffffffff then close", b"\xff\xff\xff\xff\x01")]:
            for after_hello in (False, True):
                c = client(port)
                if after_hello:
                    c.handshake()
                c.send(data)
                c.close()
        g.end()


if __name__ == "__main__":
    unittest.main(verbosity=2)
