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
the environment; the SPOE hello and processing timeouts raised, see harness.spoe_dir); variants of spoe-mirror.cfg are textual replacements written to the test's
directory, and extra frontends (an `http-request return` app, frontends with other variants
of spoe-mirror.cfg) come in a second -f file.

Nothing here measures speed or sleeps to synchronise: each step waits for its event (an
answer, a counter, a record at a target), with harness.GUARD_S as a guard against a hang.
"""
import collections
import hashlib
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import http_target  # noqa: E402
import supervisor as sv  # noqa: E402

WORKERS = 2
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate",
              "expect"}
ADD_HEADERS = [("X-Mirrored-By", "spoad")]
REMOVE_HEADERS = ["X-Secret"]
SPOE_FILE = os.path.join(harness.CONFIG_DIR, "spoe-mirror.cfg")
HAPROXY_FILE = os.path.join(harness.CONFIG_DIR, "haproxy-mirror.cfg")
SPOE_EVENT = "    event on-frontend-http-request\n"
SPOE_ARGS = ("args arg_method=method arg_path=url arg_ver=req.ver arg_hdrs=req.hdrs_bin "
             "arg_body=req.body")


# --------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: the test decides every byte of the request (header order, duplicates,
# empty values, case), which http.client does not allow.


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return "Response(%d, %r, %r)" % (self.status, self.headers, self.body[:100])


class RawClient:
    """Keep-alive connection to HAProxy; reconnects when the server closed."""

    def __init__(self, port, timeout=harness.GUARD_S):
        self.port, self.timeout = port, timeout
        self.sock, self.buf = None, b""

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock = None

    def _fill(self):
        d = self.sock.recv(1 << 16)
        if not d:
            raise EOFError("connection closed by HAProxy")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self, data, method):
        """Sends the raw request `data`; returns the final Response (1xx skipped)."""
        if self.sock is None:
            self.connect()
        self.sock.sendall(data)
        while True:
            while b"\r\n\r\n" not in self.buf:
                self._fill()
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            headers = {}
            for line in lines[1:]:
                k, v = line.split(b":", 1)
                headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
            if 100 <= status < 200:
                continue
            break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size))
                self._line()
            body = b"".join(parts)
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)


def build_request(method, target, headers, body=b"", chunked=False):
    """Raw request bytes; `headers` is the exact list sent (Content-Length/Transfer-Encoding
    included by the caller)."""
    out = ["%s %s HTTP/1.1" % (method, target)]
    for k, v in headers:
        out.append("%s: %s" % (k, v) if v != "" else "%s:" % k)
    head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
    if not chunked:
        return head + body
    parts, pos, rng = [], 0, random.Random(len(body))
    while pos < len(body):
        n = rng.randint(1, 70000)
        parts.append(b"%x\r\n" % len(body[pos:pos + n]) + body[pos:pos + n] + b"\r\n")
        pos += n
    return head + b"".join(parts) + b"0\r\n\r\n"


# --------------------------------------------------------------------------------------------
# The requests of the main case, and what a target must receive for each.


class Req:
    def __init__(self, rid, method, target, headers, body, chunked):
        self.rid, self.method, self.target = rid, method, target
        self.headers, self.body, self.chunked = headers, body, chunked
        self.sha = hashlib.sha256(body).hexdigest()

    def raw(self):
        return build_request(self.method, self.target, self.headers, self.body, self.chunked)

    def path(self):
        """Path and query as the replay must carry them (absolute-form: scheme and authority
        dropped)."""
        t = self.target
        if "://" in t:
            rest = t.split("://", 1)[1]
            i = min([x for x in (rest.find("/"), rest.find("?")) if x >= 0] or [len(rest)])
            t = rest[i:]
            if t.startswith("?") or t == "":
                t = "/" + t
        return t

    def host(self):
        vals = [v for k, v in self.headers if k.lower() == "host"]
        return vals[0] if vals else None


def expected_headers(sent, add=ADD_HEADERS, remove=REMOVE_HEADERS):
    """(lowercased name, value) list a target must receive, Host and Content-Length left out
    (checked apart). HAProxy lowercases names and trims the whitespace around values."""
    lower = [(k.lower(), v.strip(" \t")) for k, v in sent]
    named = {t.strip().lower() for k, v in lower if k == "connection" for t in v.split(",")}
    drop = HOP_BY_HOP | named | {r.lower() for r in remove} | {"host", "content-length"}
    return [(k, v) for k, v in lower if k not in drop] + [(k.lower(), v) for k, v in add]


def received_headers(rec):
    return [(k.lower(), v) for k, v in rec.headers if k.lower() not in ("host", "content-length")]


METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# NOTIFY fragment boundaries of HAProxy 2.6 with 16380-byte frames, 64 KiB, 1 MiB.
SPECIAL_SIZES = [1, 16347, 16348, 16349, 16380, 16384, 65536, 1048575, 1048576, 1048576]


def make_requests(n, seed, host="shop.example:8443"):
    rng = random.Random(seed)
    reqs = []
    special = list(SPECIAL_SIZES)
    for i in range(n):
        method = METHODS[i % len(METHODS)]
        rid = "m%04d-%08x" % (i, rng.getrandbits(32))
        if method == "HEAD":
            size = 0
        elif special:
            size = special.pop(0)
        elif i % 6 == 0:
            size = 0
        else:
            size = int(round(2 ** rng.uniform(0, 20)))  # 1 B .. 1 MiB, log-uniform
        body = rng.randbytes(size)
        chunked = size > 0 and i % 11 == 3
        path = "/m/%s/%s?i=%d&q=a%%20b+c&e=&u=%%C3%%A9" % (method.lower(), rid, i)
        if i % 17 == 5:
            path = "/m/%s/./dots/../x;p=1/%%2Fenc/%s" % (method.lower(), rid)  # no query
        elif i % 13 == 6:
            path = "/m/%s/%s?" % (method.lower(), rid)  # empty query
        h = []
        if i % 3 == 0:
            h.append(("Host", host))
        h.append(("X-Req-Id", rid))
        if i % 2:
            h.append(("User-Agent", "mirror-test/1.0 (+spoad)"))
        if i % 3 == 1:
            h.append(("host", host))  # not first, lowercase
        if i % 3 != 0:
            h.append(("Accept", "text/html, */*;q=0.1"))
        h += [("X-Dup", "one"), ("X-Between", "x"), ("X-Dup", "two")]
        if i % 2 == 0:
            h.append(("x-dup", "three"))
        h.append(("X-Empty", ""))
        if i % 4 == 0:
            h += [("Cookie", "a=1"), ("Cookie", "b=2; c=3")]
        if i % 5 == 0:
            h.append(("X-Secret", "s3cr3t"))
        elif i % 5 == 1:
            h.append(("x-SECRET", "other"))
        h.append(("X-MiXeD-CaSe", "Value  With  Spaces, and, commas"))
        if i % 7 == 2:
            h.append(("X-Pad", "  padded\t"))
        if i % 9 == 4:
            h.append(("X-Latin", "caf\xe9 cr\xe8me"))
        if i % 10 == 9:
            h += [("X-Many-%02d" % k, "v" * k) for k in range(40)]
        if i % 15 == 4:
            h.append(("X-Long", "L" * 6000))
        if size and i % 3 != 2:
            h.append(("Content-Type", "application/octet-stream"))
        if i % 4 == 1:
            h += [("Connection", "keep-alive, X-Hop-A, x-hop-b"), ("X-Hop-A", "a"),
                  ("X-Hop-B", "b"), ("Keep-Alive", "timeout=5, max=100")]
        elif i % 4 == 2:
            h += [("TE", "trailers"), ("Trailer", "X-Checksum"),
                  ("Proxy-Authorization", "Basic dXNlcjpwYXNz"), ("Proxy-Connection", "keep-alive"),
                  ("Upgrade", "example/1"), ("Proxy-Authenticate", "Basic")]
        elif i % 4 == 3 and size:
            h.append(("Expect", "100-continue"))
        if i % 3 == 2 and not any(k.lower() == "host" for k, _ in h):
            h.append(("Host", host))  # last
        if chunked:
            h.append(("Transfer-Encoding", "chunked"))
        elif size or (method in ("POST", "PUT", "PATCH") and i % 2):
            h.append(("Content-Length", str(size)))
        h.append(("X-Last", "end"))
        reqs.append(Req(rid, method, path, h, body, chunked))
    return reqs


# --------------------------------------------------------------------------------------------
# The stack: spoad (mirror agent), HAProxy with the shipped files, the app, the targets.

SPOAD_YAML = """cli:
  socket: %(sock)s
agents:
  - name: mirror
    type: mirror
    listen: 127.0.0.1:%(agent)d
    workers: %(workers)d
    targets:
%(targets)s
%(extra)s"""

APP_RETURN = """
frontend app_server
    bind 127.0.0.1:%(app)d
    http-request return status 200 content-type text/plain string "mirrored\\n"
"""

# The agent's timeouts in the tests' configurations, unless a test sets them: guards only.
GUARD_TIMEOUTS = [("connect-timeout:", "    connect-timeout: 30s\n"),
                  ("replay-timeout:", "    replay-timeout: %ds\n" % harness.GUARD_S)]



def haproxy_frame_size():
    """tune.bufsize - 4 in config/haproxy-mirror.cfg (16384 - 4 without it): the largest frame
    HAProxy sends (SPOE.txt, "max-frame-size")."""
    with open(HAPROXY_FILE) as f:
        m = re.search(r"(?m)^\s*tune\.bufsize\s+(\d+)", f.read())
    return (int(m.group(1)) if m else 16384) - 4


# The agent's max-frame-size. HAProxy 2.6 fragments a NOTIFY larger than the frame size both
# sides agreed on: spoad's default (16380) stays, to exercise that. HAProxy 3.1 and later never
# fragment: a message larger than the agreed frame size fails (SPOE status 259, not sent), so
# there the agent takes HAProxy's own frame size, as README's mirror setup says.
AGENT_FRAME_SIZE = ([("max-frame-size:", "    max-frame-size: %d\n" % haproxy_frame_size())]
                    if harness.haproxy_at_least(3, 1) else [])

PLAIN_FRONTEND = """
frontend plain
    bind 127.0.0.1:%(plain)d
    default_backend app
"""

VARIANT_FRONTEND = """
frontend %(name)s
    bind 127.0.0.1:%(port)d
    option http-buffer-request
    filter spoe engine mirror config %(spoe)s
    default_backend app
"""


class Stack:
    """spoad + HAProxy (config/haproxy-mirror.cfg unchanged, plus an optional second file
    with more frontends) + the app.

    targets: list of (url, options dict) for the agent's `targets`
    extra:   more agent keys (YAML, indented 4); connect-timeout and replay-timeout default to
             guards (GUARD_TIMEOUTS) where a test does not set them: a replay's speed is not
             the subject of a test
    spoe:    a function changing the text of config/spoe-mirror.cfg (written to the test's
             directory), or None for the shipped file
    app:     "python" (an HttpTarget that records) or "haproxy" (http-request return)
    variants: {name: a function like `spoe`}: one more frontend each, to the same agent and
             app, whose port is self.variant_fe[name]
    plain:   also a frontend without the filter, to the same app, on self.plain (the
             baseline of the benchmark's latency figures, bench/run.py)
    shipped_timeouts: the SPOE files' timeouts as shipped (for the benchmark), not raised to
             guards (harness.spoe_dir)
    """

    def __init__(self, name, targets, extra="", spoe=None, app="python", variants=None,
                 plain=False, workers=WORKERS, shipped_timeouts=False):
        self.shipped_timeouts = shipped_timeouts
        self.env = harness.Env(name)
        self.workers = workers
        self.fe, self.agent, self.app_port = (harness.free_port(), harness.free_port(),
                                              harness.free_port())
        self.variant_fe = {k: harness.free_port() for k in (variants or {})}
        self.plain = harness.free_port() if plain else None
        self.sock = self.env.path("master.sock")
        self.app = None
        try:
            self._start(targets, extra, spoe, app, variants or {})
        except BaseException:
            self.stop()
            raise

    def _start(self, targets, extra, spoe, app, variants):
        if app == "python":
            self.app = http_target.HttpTarget(self.app_port).start()
        lines = []
        for url, opts in targets:
            lines.append("      - url: %s" % url)
            for k, v in opts.items():
                lines.append("        %s: %s" % (k, v))
        cfg = self.env.write("spoad.yaml", SPOAD_YAML % {
            "sock": self.sock, "agent": self.agent, "workers": self.workers,
            "targets": "\n".join(lines), "extra": extra + "".join(
                line for key, line in GUARD_TIMEOUTS + AGENT_FRAME_SIZE if key not in extra)})
        self.spoad = self.env.spoad(cfg)
        if not harness.wait_for(lambda: not self.spoad.alive() or (
                os.path.exists(self.sock) and harness.port_open(self.agent))) \
                or not self.spoad.alive():
            raise RuntimeError("spoad did not start:\n" + self.env.dump_logs())
        env = {"HAPROXY_BIND": "127.0.0.1:%d" % self.fe,
               "APP_ADDR": "127.0.0.1:%d" % self.app_port,
               "SPOAD_MIRROR_ADDR": "127.0.0.1:%d" % self.agent,
               "SPOE_DIR": (harness.CONFIG_DIR if self.shipped_timeouts
                            else harness.spoe_dir(self.env)),
               # meson test sets MALLOC_PERTURB_: glibc then fills every block HAProxy
               # allocates or frees, and with haproxy-mirror.cfg's 1.1 MB tune.bufsize each
               # request takes ~10 ms instead of ~0.4. spoad keeps it.
               "MALLOC_PERTURB_": "0"}
        if spoe is not None:
            self.write_variant("spoe-mirror-variant.cfg", spoe)
            env["SPOE_DIR"] = self.env.dir
            env["SPOE_MIRROR"] = "spoe-mirror-variant.cfg"
        args = []
        more = ""
        if app == "haproxy":
            more += APP_RETURN % {"app": self.app_port}
        for name, change in sorted(variants.items()):
            more += VARIANT_FRONTEND % {
                "name": name, "port": self.variant_fe[name],
                "spoe": self.write_variant("spoe-mirror-%s.cfg" % name, change)}
        if self.plain:
            more += PLAIN_FRONTEND % {"plain": self.plain}
        if more:
            args = ["-f", self.env.write("haproxy-extra.cfg", more)]
        self.haproxy = self.env.haproxy(HAPROXY_FILE, env=env, args=args)
        ports = [self.fe] + list(self.variant_fe.values()) + \
            ([self.plain] if self.plain else []) + ([self.app_port] if app == "haproxy" else [])
        if not harness.wait_for(lambda: all(harness.port_open(p) for p in ports)):
            raise RuntimeError("haproxy did not start:\n" + self.env.dump_logs())

    def write_variant(self, name, change):
        """Writes the text of config/spoe-mirror.cfg changed by `change` (and by
        harness.relaxed_spoe) to the test's directory; returns its path."""
        with open(SPOE_FILE) as f:
            text = f.read()
        if not self.shipped_timeouts:
            text = harness.relaxed_spoe(text)
        changed = change(text)
        assert changed != text, "the SPOE variant changes nothing"
        return self.env.write(name, changed)

    def stop(self):
        self.env.stop()
        if self.app:
            self.app.stop()

    def worker_stats(self, rel):
        out = sv.cli(self.sock, "@%d show stat json" % rel)
        j = sv.load_json(out)
        self.last_json = j
        return j["mirror"]["agent_stats"]

    def stats(self):
        total = collections.Counter()
        for n in range(1, self.workers + 1):
            for k, v in self.worker_stats(n).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    total[k] += v
        return total

    def worker_pids(self):
        return {r.rel: r.pid for r in sv.show_proc(self.sock).workers}

    def logs(self, chars=3000):
        return sv.tail_logs(self.env, chars)

    def warm_up(self, targets=(), body=64 * 1024, connections=4, rounds=15, check=True):
        """Makes sure that every HAProxy thread has a connection to the agent, then waits for
        the replays to finish and clears the targets.

        HAProxy 2.6 encodes a message for the frame size of the thread's agent connections, or
        for its own max-frame-size (tune.bufsize - 4) when the thread has none yet; the
        connection it then opens negotiates spoad's 16380 bytes and cannot send it (SPOE status
        259, "frame is too big"): the first message above 16 KB on each thread is never sent
        (again each time a thread's agent connections have all closed, e.g. after the SPOE
        `timeout idle`). An agent `max-frame-size` of tune.bufsize - 4 avoids it, but then
        HAProxy never fragments; these tests keep spoad's default (16380) to exercise 2.6's
        fragmented NOTIFYs (on 3.1 and later, which never fragment, the agent has
        AGENT_FRAME_SIZE and the first round is enough). So: rounds of `connections`
        simultaneous connections, each sending one request with a `body`-byte body, until a
        round has all its messages counted by the agent (with check=False, one round,
        unchecked: for HAProxy-side sampling). HAProxy answers a
        request only once its SPOE message is ACKed or has failed, and the agent counts a
        message before it ACKs it: once the answers are in, the count is final."""
        payload = b"w" * body
        for n in range(rounds):
            before = self.stats()["messages"]
            conns = [RawClient(self.fe) for _ in range(connections)]
            for c in conns:
                c.connect()  # all open at once: HAProxy spreads them over its threads
            for i, c in enumerate(conns):
                rid = "warmup-%d-%d" % (n, i)
                r = c.request(build_request("POST", "/warmup/" + rid, [
                    ("Host", "warmup"), ("X-Req-Id", rid),
                    ("Content-Length", str(len(payload)))], payload), "POST")
                if r.status != 200:
                    raise AssertionError("warm-up request: %r\n%s" % (r, self.logs()))
            for c in conns:
                c.close()
            if not check:
                break
            if self.stats()["messages"] - before >= connections:
                break
        else:
            raise AssertionError("warm-up: the agent never got all the messages of a round:\n"
                                 + self.logs())
        self.wait_idle()
        for t in targets:
            t.clear()

    def wait_idle(self):
        st = harness.wait_for(lambda: (lambda s: s if s["in_flight"] == 0 else None)(self.stats()),
                              interval=0.1)
        if not st:
            raise AssertionError("replays still in flight after %ds: %s" % (harness.GUARD_S,
                                                                           self.stats()))
        return st


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


def send_all(port, reqs, clients=6, fresh_every=0, answered_at=None):
    """Sends `reqs` over `clients` keep-alive connections (a new connection every
    `fresh_every` requests if > 0). Returns {rid: Response or exception text}; if
    `answered_at` is a dict, also fills it with {rid: time.monotonic() of the answer}."""
    results = {}
    lock = threading.Lock()
    queue = list(reqs)

    def worker():
        c = RawClient(port)
        n = 0
        while True:
            with lock:
                if not queue:
                    break
                r = queue.pop(0)
            n += 1
            if fresh_every and n % fresh_every == 0:
                c.close()
            try:
                out = c.request(r.raw(), r.method)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                out = "%s: %s" % (type(e).__name__, e)
                c.close()
            at = time.monotonic()
            with lock:
                results[r.rid] = out
                if answered_at is not None:
                    answered_at[r.rid] = at
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def small_get(rid, path=None):
    return Req(rid, "GET", path or "/s/%s?x=1" % rid, [("Host", "app.example"), ("X-Req-Id", rid)],
               b"", False)


# --------------------------------------------------------------------------------------------


class Replay(unittest.TestCase):
    """Two targets: one at the root, one with a path prefix (and a trailing slash)."""

    @classmethod
    def setUpClass(cls):
        cls.t1 = http_target.HttpTarget(harness.free_port()).start()
        cls.t2 = http_target.HttpTarget(harness.free_port()).start()
        try:
            cls.s = Stack("mirror", [("http://127.0.0.1:%d" % cls.t1.port, {}),
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
            c = RawClient(self.s.fe)
            r = c.request(build_request("GET", target, h), "GET")
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
            ("Content-Length", str(len(body)))], body, False)
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
        s = Stack("mirror-host", [("http://127.0.0.1:%d/shadow" % t.port, {"sampling": 100})],
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
                [("Host", "example.com"), ("X-Req-Id", "h-abs")], b"", False),
            Req("h-origin", "GET", "/origin/x?y=2", [("Host", "client.example"),
                                                     ("X-Req-Id", "h-origin")], b"", False),
            Req("h-small", "POST", "/small", [("Host", "client.example"), ("X-Req-Id", "h-small"),
                                              ("Content-Length", str(len(small)))], small, False),
            Req("h-big", "POST", "/big", [("Host", "client.example"), ("X-Req-Id", "h-big"),
                                          ("Content-Length", str(len(big)))], big, False),
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
        s = Stack("mirror-down", [("http://127.0.0.1:%d" % dead, {})], app="haproxy")
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
        s = Stack("mirror-slow", [("http://127.0.0.1:%d" % t.port, {})], app="haproxy",
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
                     ("Content-Length", str(len(body)))], body, False) for i in range(n)]
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
            per_worker = {rel: s.worker_stats(rel) for rel in pids}
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
        s = Stack(name, [("http://127.0.0.1:%d" % t.port, targets)], app="haproxy", spoe=spoe)
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


FULL_CONFIG = """cli:
  socket: %(sock)s
agents:
  - name: mirror
    type: mirror
    listen: 127.0.0.1:%(port)d
    workers: 2
    message: mirror
    targets:
      - url: http://127.0.0.1:%(t1)d
        sampling: 100
      - url: https://127.0.0.1:%(t2)d/prefix
        sampling: 12.5
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
            path = env.write("spoad-%s.yaml" % ver, FULL_CONFIG % {
                "sock": env.path("m.sock"), "port": harness.free_port(), "t1": 8081, "t2": 8443,
                "ver": ver})
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
        s = Stack("mirror-fail", [("https://127.0.0.1:%d" % tls.port, {}),
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
        s = Stack("mirror-timeout", [("http://127.0.0.1:%d" % t.port, {})], app="haproxy",
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
            cls.s = Stack("mirror-bad", [("http://127.0.0.1:%d" % cls.t.port, {})], app="haproxy",
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
        # Final once the answers are in (see Stack.warm_up); and nothing in flight.
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
