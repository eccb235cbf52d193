"""A small, independent SPOP 2.0 client (SPOE.txt section 3) for the integration tests.

Written from the specification, not from spoad's codec, so that the tests check spoad against
the protocol rather than against itself.
"""
import socket
import struct
import time

# Frame types
UNSET, HAPROXY_HELLO, HAPROXY_DISCONNECT, NOTIFY = 0, 1, 2, 3
AGENT_HELLO, AGENT_DISCONNECT, ACK = 101, 102, 103
FIN, ABORT = 1, 2

# Typed data
T_NULL, T_BOOL, T_INT32, T_UINT32, T_INT64, T_UINT64, T_IPV4, T_IPV6, T_STR, T_BIN = range(10)


def varint(i):
    if i < 0:
        i &= (1 << 64) - 1
    if i < 240:
        return bytes([i])
    out = bytearray([(i & 0xFF) | 0xF0])
    i = (i - 240) >> 4
    while i >= 128:
        out.append((i & 0xFF) | 0x80)
        i = (i - 128) >> 7
    out.append(i)
    return bytes(out)


def read_varint(b, pos):
    v = b[pos]
    pos += 1
    if v < 240:
        return v, pos
    shift = 4
    while True:
        c = b[pos]
        pos += 1
        v += c << shift
        shift += 7
        if c < 128:
            return v, pos


def sstr(s):
    if isinstance(s, str):
        s = s.encode()
    return varint(len(s)) + s


class Typed:
    """An explicitly typed value: Typed(T_UINT32, 5), Typed(T_BIN, b'..')."""

    def __init__(self, t, v):
        self.t, self.v = t, v


def typed(v):
    if isinstance(v, Typed):
        t, x = v.t, v.v
        if t == T_NULL:
            return b"\x00"
        if t == T_BOOL:
            return b"\x11" if x else b"\x01"
        if t in (T_INT32, T_UINT32, T_INT64, T_UINT64):
            return bytes([t]) + varint(x)
        if t == T_IPV4:
            return bytes([t]) + socket.inet_pton(socket.AF_INET, x)
        if t == T_IPV6:
            return bytes([t]) + socket.inet_pton(socket.AF_INET6, x)
        if t in (T_STR, T_BIN):
            return bytes([t]) + sstr(x)
        raise ValueError(t)
    if v is None:
        return b"\x00"
    if isinstance(v, bool):
        return b"\x11" if v else b"\x01"
    if isinstance(v, int):
        return bytes([T_INT64]) + varint(v)
    if isinstance(v, str):
        return bytes([T_STR]) + sstr(v)
    if isinstance(v, bytes):
        return bytes([T_BIN]) + sstr(v)
    raise TypeError(type(v))


def read_typed(b, pos):
    tb = b[pos]
    pos += 1
    t = tb & 0x0F
    if t == T_NULL:
        return None, pos
    if t == T_BOOL:
        return bool(tb & 0x10), pos
    if t in (T_INT32, T_UINT32, T_INT64, T_UINT64):
        v, pos = read_varint(b, pos)
        if t in (T_INT32, T_INT64) and v >= 1 << 63:
            v -= 1 << 64
        if t == T_INT32 and v >= 1 << 31:
            v = v - (1 << 32) if v < 1 << 32 else v
        return v, pos
    if t == T_IPV4:
        return socket.inet_ntop(socket.AF_INET, b[pos:pos + 4]), pos + 4
    if t == T_IPV6:
        return socket.inet_ntop(socket.AF_INET6, b[pos:pos + 16]), pos + 16
    if t in (T_STR, T_BIN):
        n, pos = read_varint(b, pos)
        raw = b[pos:pos + n]
        return (raw.decode("utf-8", "replace") if t == T_STR else raw), pos + n
    raise ValueError("bad type %d" % t)


def kv(items):
    return b"".join(sstr(k) + typed(v) for k, v in items)


def parse_kv(b):
    out, pos = {}, 0
    while pos < len(b):
        n, pos = read_varint(b, pos)
        k = b[pos:pos + n].decode()
        pos += n
        out[k], pos = read_typed(b, pos)
    return out


def frame(ftype, payload=b"", flags=FIN, sid=0, fid=0):
    body = bytes([ftype]) + struct.pack(">I", flags) + varint(sid) + varint(fid) + payload
    return struct.pack(">I", len(body)) + body


def hello(max_frame_size=16380, capabilities="pipelining", healthcheck=False, engine_id="test-engine",
          versions="2.0"):
    items = [("supported-versions", versions), ("max-frame-size", Typed(T_UINT32, max_frame_size)),
             ("capabilities", capabilities)]
    if healthcheck:
        items.append(("healthcheck", True))
    elif engine_id:
        items.append(("engine-id", engine_id))
    return frame(HAPROXY_HELLO, kv(items))


def message(name, args):
    """args: list of (name, value) pairs."""
    return sstr(name) + bytes([len(args)]) + kv(args)


def notify(sid, fid, messages, flags=FIN):
    return frame(NOTIFY, b"".join(message(n, a) for n, a in messages), flags, sid, fid)


def disconnect(status=0, msg="normal"):
    return frame(HAPROXY_DISCONNECT, kv([("status-code", Typed(T_UINT32, status)), ("message", msg)]))


def parse_actions(b):
    """Returns {"txn.name": value, ...} for set-var and {"txn.name": "<unset>"} for unset-var."""
    scopes = ["proc", "sess", "txn", "req", "res"]
    out, pos = {}, 0
    while pos < len(b):
        atype, nargs, scope = b[pos], b[pos + 1], b[pos + 2]
        pos += 3
        n, pos = read_varint(b, pos)
        name = scopes[scope] + "." + b[pos:pos + n].decode()
        pos += n
        if atype == 1:
            assert nargs == 3
            out[name], pos = read_typed(b, pos)
        else:
            assert atype == 2 and nargs == 2
            out[name] = "<unset>"
    return out


class Frame:
    def __init__(self, ftype, flags, sid, fid, payload):
        self.type, self.flags, self.sid, self.fid, self.payload = ftype, flags, sid, fid, payload

    def kv(self):
        return parse_kv(self.payload)

    def actions(self):
        return parse_actions(self.payload)

    def __repr__(self):
        return "Frame(type=%d flags=%d sid=%d fid=%d len=%d)" % (
            self.type, self.flags, self.sid, self.fid, len(self.payload))


# Seconds a read waits before it gives up: a guard against a hang, not a claim about speed.
GUARD_S = 60.0


class Client:
    def __init__(self, addr, timeout=GUARD_S):
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        if not isinstance(addr, str):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def recv_frame(self):
        """Returns a Frame, or None when the agent closed the connection."""
        while len(self.buf) < 4:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        (n,) = struct.unpack(">I", self.buf[:4])
        while len(self.buf) < 4 + n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        ftype = body[0]
        (flags,) = struct.unpack(">I", body[1:5])
        sid, pos = read_varint(body, 5)
        fid, pos = read_varint(body, pos)
        return Frame(ftype, flags, sid, fid, body[pos:])

    def handshake(self, **kw):
        self.send(hello(**kw))
        f = self.recv_frame()
        assert f is not None and f.type == AGENT_HELLO, f
        return f

    def closed(self, timeout=GUARD_S):
        """True once the agent closes (EOF or reset); False if it has not after `timeout`
        seconds (a guard against a hang)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def wait_port(host, port, timeout=GUARD_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------------------
# Raw (bytes) helpers for hostile-peer tests: names and STRING values stay bytes, never text.


def read_typed_raw(b, pos):
    """As read_typed(), but a STRING is returned as its raw bytes (no decoding)."""
    t = b[pos] & 0x0F
    if t == T_STR:
        n, pos = read_varint(b, pos + 1)
        return bytes(b[pos:pos + n]), pos + n
    return read_typed(b, pos)


def parse_kv_raw(b):
    """A KV-LIST as {name bytes: value}, STRING values as bytes."""
    out, pos = {}, 0
    while pos < len(b):
        n, pos = read_varint(b, pos)
        k = bytes(b[pos:pos + n])
        pos += n
        out[k], pos = read_typed_raw(b, pos)
    return out


def parse_actions_raw(b):
    """As parse_actions(), with bytes keys (b"txn.name") and STRING values as bytes."""
    scopes = [b"proc", b"sess", b"txn", b"req", b"res"]
    out, pos = {}, 0
    while pos < len(b):
        atype, nargs, scope = b[pos], b[pos + 1], b[pos + 2]
        pos += 3
        n, pos = read_varint(b, pos)
        name = scopes[scope] + b"." + bytes(b[pos:pos + n])
        pos += n
        if atype == 1:
            assert nargs == 3
            out[name], pos = read_typed_raw(b, pos)
        else:
            assert atype == 2 and nargs == 2
            out[name] = "<unset>"
    return out


def hello_items(max_frame_size=16380, capabilities=b"pipelining", engine_id=b"hostile-test",
                versions=b"2.0"):
    """The KV items of a HAPROXY-HELLO as (name bytes, Typed) pairs, to alter one by one."""
    return [(b"supported-versions", Typed(T_STR, versions)),
            (b"max-frame-size", Typed(T_UINT32, max_frame_size)),
            (b"capabilities", Typed(T_STR, capabilities)),
            (b"engine-id", Typed(T_STR, engine_id))]


def hello_from(items):
    """A HAPROXY-HELLO frame with exactly these KV items."""
    return frame(HAPROXY_HELLO, kv(items))


def raw_disconnect(status, message):
    """A HAPROXY-DISCONNECT whose message is the STRING `message` (bytes, sent as they are)."""
    return frame(HAPROXY_DISCONNECT, kv([(b"status-code", Typed(T_UINT32, status)),
                                         (b"message", Typed(T_STR, message))]))


def frame_header(length, ftype=NOTIFY, flags=FIN):
    """Only the start of a frame: FRAME-LENGTH (any 32-bit value, not checked) and the type and
    flags bytes, for frames whose length lies."""
    return struct.pack(">I", length) + bytes([ftype]) + struct.pack(">I", flags)
