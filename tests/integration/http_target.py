"""A real HTTP/1.1 server for the mirror tests (stdlib only): it records every request exactly
as it arrived on the wire.

http.server's parsing folds, strips and merges things (email.parser), so this server reads the
request head itself: the request line, then each header line split at its first colon, the name
kept byte for byte and the value with only the optional whitespace around it removed (RFC 9112
5.1), in order, duplicates and empty values included. Bodies are read by Content-Length or
chunked transfer coding. Connections are kept alive (HTTP/1.1 rules); one thread each.

    t = HttpTarget(port, delay=0.0, status=200).start()
    ...
    for r in t.records():   # Record: method, target, version, headers, body_sha256, body_len,
        ...                 #         arrival, chunked, conn
    t.clear(); t.stop()
"""
import hashlib
import socket
import threading
import time

_HEAD_LIMIT = 1 << 20


class Record:
    """One request as received."""

    __slots__ = ("method", "target", "version", "headers", "raw_head", "body_sha256", "body_len",
                 "arrival", "done", "answered", "chunked", "conn", "body")

    def __init__(self):
        self.body = None
        # time.monotonic() when the head arrived, when the whole request had, and when the
        # answer began (None until then)
        self.arrival = self.done = self.answered = None

    def header_values(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name):
        """The one value of `name` (case-insensitive); None if absent; AssertionError if
        repeated."""
        vals = self.header_values(name)
        if len(vals) > 1:
            raise AssertionError("header %s repeated: %r" % (name, vals))
        return vals[0] if vals else None

    def __repr__(self):
        return "Record(%s %s %s, %d headers, body %d bytes, sha256 %s...)" % (
            self.method, self.target, self.version, len(self.headers), self.body_len,
            self.body_sha256[:12])


class BadRequest(Exception):
    pass


class _Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(1 << 18)
        if not d:
            raise EOFError
        self.buf += d

    def read_head(self):
        """The bytes up to and including the blank line; None at a clean EOF between
        requests."""
        start = 0
        while True:
            # Tolerate empty lines before a request line (RFC 9112 2.2).
            while self.buf.startswith(b"\r\n"):
                self.buf = self.buf[2:]
            i = self.buf.find(b"\r\n\r\n", start)
            if i >= 0:
                head, self.buf = self.buf[:i + 4], self.buf[i + 4:]
                return head
            if len(self.buf) > _HEAD_LIMIT:
                raise BadRequest("request head too large")
            start = max(0, len(self.buf) - 3)
            try:
                self._fill()
            except EOFError:
                if self.buf:
                    raise BadRequest("EOF in the request head")
                return None

    def read_exact(self, n, sink):
        while n > 0:
            if not self.buf:
                self._fill()
            chunk = self.buf[:n]
            self.buf = self.buf[len(chunk):]
            sink(chunk)
            n -= len(chunk)

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > 65536:
                raise BadRequest("line too long")
            self._fill()


def parse_head(head):
    """(method, target, version, [(name, value)]) from a raw request head (bytes). Names and
    values are decoded as latin-1 so that every byte survives."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("bad request line %r" % lines[0])
    method, target, version = (p.decode("latin-1") for p in parts)
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            # obs-fold: kept visible rather than merged, so that a test can see it.
            headers.append(("", line.decode("latin-1")))
            continue
        if b":" not in line:
            raise BadRequest("header line without a colon: %r" % line)
        name, value = line.split(b":", 1)
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return method, target, version, headers


class HttpTarget:
    """A threaded HTTP/1.1 server on 127.0.0.1:port that records what it receives.

    delay:  seconds to wait before answering each request (a slow target)
    status: the status code of every answer
    keep_bodies: also keep each body's bytes in Record.body
    ssl_context: serve HTTPS with this ssl.SSLContext (handshake failures are counted in
                 tls_failures)
    """

    def __init__(self, port, delay=0.0, status=200, keep_bodies=False, host="127.0.0.1",
                 ssl_context=None):
        self.port = port
        self.ssl_context = ssl_context
        self.tls_failures = 0
        self.host = host
        self.delay = delay
        self.status = status
        self.keep_bodies = keep_bodies
        self.lock = threading.Lock()
        self._records = []
        self._conns = set()
        self._lsock = None
        self._thread = None
        self._conn_seq = 0
        self.errors = []  # protocol errors seen (a malformed request is news for a test)
        self.connections = 0
        self.active = 0      # requests received and not answered yet
        self.active_max = 0  # the most at once since start (or clear)
        self._stopping = threading.Event()  # set by stop(): held answers go out at once

    # ---------------------------------------------------------------- control

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(1024)
        self._lsock = s
        self._thread = threading.Thread(target=self._accept_loop, args=(s,), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Down for real: no listener any more, and open connections are cut."""
        self._stopping.set()
        s, self._lsock = self._lsock, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def records(self):
        with self.lock:
            return list(self._records)

    def count(self):
        with self.lock:
            return len(self._records)

    def clear(self):
        with self.lock:
            self._records = []
            self.errors = []
            self.active_max = self.active

    def in_progress(self):
        """Connections open now."""
        with self.lock:
            return len(self._conns)

    # ---------------------------------------------------------------- serving

    def _accept_loop(self, lsock):
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            with self.lock:
                if self._lsock is not lsock:
                    c.close()
                    return
                self._conns.add(c)
                self._conn_seq += 1
                self.connections += 1
                seq = self._conn_seq
            threading.Thread(target=self._serve, args=(c, seq), daemon=True).start()

    def _serve(self, sock, seq):
        if self.ssl_context is not None:
            try:
                sock.settimeout(10)
                tls = self.ssl_context.wrap_socket(sock, server_side=True)
                tls.settimeout(None)
            except (OSError, ValueError):
                with self.lock:
                    self.tls_failures += 1
                    self._conns.discard(sock)
                sock.close()
                return
            with self.lock:
                self._conns.discard(sock)
                self._conns.add(tls)
            sock = tls
        conn = _Conn(sock)
        try:
            while True:
                head = conn.read_head()
                if head is None:
                    return
                if not self._one(conn, head, seq):
                    return
        except (EOFError, OSError):
            pass
        except BadRequest as e:
            with self.lock:
                self.errors.append(str(e))
            try:
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
            except OSError:
                pass
        finally:
            with self.lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _one(self, conn, head, seq):
        """Serves one request; returns False when the connection must close."""
        rec = Record()
        rec.arrival = time.monotonic()
        rec.raw_head = head
        rec.method, rec.target, rec.version, rec.headers = parse_head(head)
        rec.conn = seq
        lower = [(k.lower(), v) for k, v in rec.headers]
        te = [v for k, v in lower if k == "transfer-encoding"]
        cl = [v for k, v in lower if k == "content-length"]
        expect = [v for k, v in lower if k == "expect"]
        if any(v.lower() == "100-continue" for v in expect) and rec.version == "HTTP/1.1":
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        h = hashlib.sha256()
        parts = [] if self.keep_bodies else None

        def sink(b):
            h.update(b)
            if parts is not None:
                parts.append(b)
            rec.body_len += len(b)

        rec.body_len = 0
        rec.chunked = bool(te) and te[-1].lower().split(",")[-1].strip() == "chunked"
        if rec.chunked:
            while True:
                line = conn.read_line()
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while conn.read_line():  # trailers
                        pass
                    break
                conn.read_exact(size, sink)
                if conn.read_line() != b"":
                    raise BadRequest("bad chunk end")
        elif cl:
            if len(set(cl)) != 1:
                raise BadRequest("conflicting Content-Length %r" % cl)
            conn.read_exact(int(cl[0]), sink)
        rec.body_sha256 = h.hexdigest()
        if parts is not None:
            rec.body = b"".join(parts)
        rec.done = time.monotonic()
        with self.lock:
            self._records.append(rec)
            self.active += 1
            self.active_max = max(self.active_max, self.active)
        try:
            return self._answer(conn, rec, lower)
        finally:
            with self.lock:
                self.active -= 1

    def _answer(self, conn, rec, lower):
        if self.delay:
            self._stopping.wait(self.delay)  # the slow target's behaviour, not a synchronisation
        conn_tokens = [t.strip().lower() for k, v in lower if k == "connection"
                       for t in v.split(",")]
        if rec.version == "HTTP/1.1":
            keep = "close" not in conn_tokens
        else:
            keep = "keep-alive" in conn_tokens
        out = ["HTTP/1.1 %d %s" % (self.status, _REASONS.get(self.status, "Status"))]
        body = b""
        if self.status not in (204, 304):
            # HEAD: the length a GET would have had, no body.
            out += ["Content-Type: text/plain", "Content-Length: 9"]
            if rec.method != "HEAD":
                body = b"mirrored\n"
        if not keep:
            out.append("Connection: close")
        elif rec.version != "HTTP/1.1":
            out.append("Connection: keep-alive")
        rec.answered = time.monotonic()
        conn.sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode() + body)
        return keep


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
            404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


if __name__ == "__main__":
    import sys
    t = HttpTarget(int(sys.argv[1])).start()
    try:
        while True:
            time.sleep(2)
            for r in t.records():
                print(r, r.headers)
            t.clear()
    except KeyboardInterrupt:
        t.stop()
