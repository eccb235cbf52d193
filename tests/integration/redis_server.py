"""A real redis-server for the tests and benchmarks of the ip-checker's shared store, and a small
RESP2 client over a socket (no Python Redis package needed).

  REDIS_SERVER   $SPOAD_REDIS_SERVER, else `redis-server` on the PATH (Debian's redis-server
                 package; scripts/deps.sh installs it). available() says whether it is there.

Redis(env) runs one server on a free port of 127.0.0.1 with its data in the test's directory
and `appendonly yes` (`appendfsync always`): kill() (SIGKILL) then start() again on the same
port and directory keeps every write it acknowledged. Nothing here sleeps to synchronise:
start() waits for PING to answer, kill() for the process to be reaped.
"""
import os
import shutil
import signal
import socket

import harness

REDIS_SERVER = os.environ.get("SPOAD_REDIS_SERVER") or shutil.which("redis-server") or \
    "/usr/bin/redis-server"


def available():
    return os.access(REDIS_SERVER, os.X_OK)


class RedisError(Exception):
    """An error reply (-ERR ...)."""


class Resp:
    """A RESP2 connection: command() sends one command and returns its reply; pipeline() sends
    many at once and returns their replies in order. Replies: bytes (bulk and simple strings),
    int, list, None, or a RedisError instance (pipeline) / raised (command)."""

    def __init__(self, port, host="127.0.0.1", timeout=None):
        self.s = socket.create_connection((host, port), timeout=timeout or harness.GUARD_S)
        self.buf = b""
        self.pos = 0  # replies are parsed from buf[pos:]

    def close(self):
        self.s.close()

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, int):
                a = str(a)
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _fill(self):
        chunk = self.s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line, self.pos = self.buf[self.pos:i], i + 2
                return line
            self._fill()

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data, self.pos = self.buf[self.pos:self.pos + n], self.pos + n + 2
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError("unexpected RESP reply %r" % line[:100])

    def command(self, *args):
        self.s.sendall(self.encode(args))
        r = self._read()
        if isinstance(r, RedisError):
            raise r
        return r

    @classmethod
    def batches(cls, commands, batch=10000):
        """`commands` (lists of arguments) encoded in batches: [(bytes, number of commands)],
        for pipeline_encoded()."""
        return [(b"".join(cls.encode(c) for c in commands[i:i + batch]),
                 len(commands[i:i + batch])) for i in range(0, len(commands), batch)]

    def pipeline_encoded(self, batches):
        """Sends each batch of batches(), reading its replies before sending the next one
        (bounded memory on both sides); returns every reply, in order."""
        out = []
        for data, n in batches:
            self.s.sendall(data)
            out.extend(self._read() for _ in range(n))
        return out

    def pipeline(self, commands, batch=10000):
        return self.pipeline_encoded(self.batches(commands, batch))


class Redis:
    """One redis-server process (restartable) on a fixed free port and data directory;
    persist=False (benchmarks): no append-only file."""

    def __init__(self, env, name="redis", persist=True):
        self.env = env
        self.name = name
        self.port = harness.free_port()
        self.dir = env.path(name + "-data")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = env.write(name + ".conf", "\n".join([
            "port %d" % self.port,
            "bind 127.0.0.1",
            "dir %s" % self.dir,
            "appendonly %s" % ("yes" if persist else "no"),
            "appendfsync always",
            'save ""',
            "daemonize no",
            'logfile ""',
            "",
        ]))
        self.proc = None
        self.starts = 0

    def url(self, db=0):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)

    def ping(self):
        try:
            c = Resp(self.port, timeout=2)
        except OSError:
            return False
        try:
            return c.command("PING") == b"PONG"
        except (OSError, RedisError):
            return False  # e.g. "-LOADING": still reading its append-only file
        finally:
            c.close()

    def start(self):
        """Starts redis-server and waits until it answers PING (data loaded)."""
        self.starts += 1
        self.proc = self.env.start("%s-%d" % (self.name, self.starts),
                                   [REDIS_SERVER, self.conf])
        if not harness.wait_for(lambda: self.ping() or not self.proc.alive(), interval=0.05) \
                or not self.proc.alive():
            raise RuntimeError("redis-server did not start:\n" + self.proc.output()[-3000:])
        return self

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def kill(self):
        """SIGKILL, then waits until the process is reaped (its port is free again)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def client(self):
        return Resp(self.port)
