"""The mirror agent's test support (tests/integration/test_mirror.py, bench/run.py mirror-down):
the requests of the main case and what a target must receive for each, a keep-alive client
that sends them as written, and the stack (spoad's mirror agent behind HAProxy with the shipped
config/haproxy-mirror.cfg and config/spoe-mirror.cfg, an app, variants of the SPOE file).
"""
import hashlib
import http.client
import os
import random
import re
import threading
import time

import harness
import http_target
import stack
import supervisor as sv

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
# The client: http.client on a keep-alive connection, the request line and every header as the
# test writes them (order, duplicates, empty values, case: putheader, no Host or
# Accept-Encoding of its own), a chunked body in the test's chunk sizes.


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return "Response(%d, %r, %r)" % (self.status, self.headers, self.body[:100])


class Client:
    """A keep-alive connection to HAProxy; http.client opens a new one once the server
    closed."""

    def __init__(self, port, timeout=harness.GUARD_S):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def connect(self):
        self.conn.connect()

    def close(self):
        self.conn.close()

    def request(self, req):
        """Sends `req` (a Req); returns the final Response (1xx skipped)."""
        c = self.conn
        c.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
        for k, v in req.headers:
            c.putheader(k, v)
        c.endheaders(req.chunks() if req.chunked else req.body, encode_chunked=req.chunked)
        r = c.getresponse()
        body = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, body)


# --------------------------------------------------------------------------------------------
# The requests of the main case, and what a target must receive for each.


class Req:
    def __init__(self, rid, method, target, headers, body=b"", chunked=False):
        self.rid, self.method, self.target = rid, method, target
        self.headers, self.body, self.chunked = headers, body, chunked
        self.sha = hashlib.sha256(body).hexdigest()

    def chunks(self):
        """The body in chunks of 1 to 70,000 bytes (the same for the same body length)."""
        parts, pos, rng = [], 0, random.Random(len(self.body))
        while pos < len(self.body):
            n = rng.randint(1, 70000)
            parts.append(self.body[pos:pos + n])
            pos += n
        return parts

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


def mirror_yaml(sock, port, workers, targets, extra=""):
    """spoad's configuration: the master CLI on `sock`, a mirror agent on 127.0.0.1:`port`
    with `workers` workers, `targets` ([(url, {key: value})]) and `extra` (more agent keys,
    YAML indented 4)."""
    lines = []
    for url, opts in targets:
        lines.append("      - url: %s" % url)
        for k, v in opts.items():
            lines.append("        %s: %s" % (k, v))
    return SPOAD_YAML % {"sock": sock, "agent": port, "workers": workers,
                         "targets": "\n".join(lines), "extra": extra}

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


class MirrorStack(stack.Stack):
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
        super().__init__(name)
        self.shipped_timeouts = shipped_timeouts
        self.workers = workers
        self.fe, self.agent, self.app_port = (harness.free_port(), harness.free_port(),
                                              harness.free_port())
        self.variant_fe = {k: harness.free_port() for k in (variants or {})}
        self.plain = harness.free_port() if plain else None
        self.app = None
        try:
            self._start(targets, extra, spoe, app, variants or {})
        except BaseException:
            self.stop()
            raise

    def _start(self, targets, extra, spoe, app, variants):
        if app == "python":
            self.app = http_target.HttpTarget(self.app_port).start()
        sock = self.env.path("master.sock")
        self.start_spoad(mirror_yaml(sock, self.agent, self.workers, targets, extra + "".join(
            line for key, line in GUARD_TIMEOUTS + AGENT_FRAME_SIZE if key not in extra)),
            sock=sock, ports=[self.agent])
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
        more = ""
        if app == "haproxy":
            more += APP_RETURN % {"app": self.app_port}
        for name, change in sorted(variants.items()):
            more += VARIANT_FRONTEND % {
                "name": name, "port": self.variant_fe[name],
                "spoe": self.write_variant("spoe-mirror-%s.cfg" % name, change)}
        if self.plain:
            more += PLAIN_FRONTEND % {"plain": self.plain}
        ports = [self.fe] + list(self.variant_fe.values()) + \
            ([self.plain] if self.plain else []) + ([self.app_port] if app == "haproxy" else [])
        self.start_haproxy(HAPROXY_FILE, env=env, extra=more or None, ports=ports)

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
        super().stop()
        if self.app:
            self.app.stop()

    def mirror_stats(self, rel):
        """The mirror agent's counters in worker `rel`."""
        return self.worker_stats(rel, "mirror", "agent_stats")

    def stats(self):
        """The mirror agent's counters summed over the workers."""
        return self.total_stats(range(1, self.workers + 1), "mirror", "agent_stats")

    def worker_pids(self):
        return {r.rel: r.pid for r in sv.show_proc(self.sock).workers}

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
            conns = [Client(self.fe) for _ in range(connections)]
            for c in conns:
                c.connect()  # all open at once: HAProxy spreads them over its threads
            for i, c in enumerate(conns):
                rid = "warmup-%d-%d" % (n, i)
                r = c.request(Req(rid, "POST", "/warmup/" + rid, [
                    ("Host", "warmup"), ("X-Req-Id", rid),
                    ("Content-Length", str(len(payload)))], payload))
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
        c = Client(port)
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
                out = c.request(r)
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
    return Req(rid, "GET", path or "/s/%s?x=1" % rid, [("Host", "app.example"), ("X-Req-Id", rid)])
