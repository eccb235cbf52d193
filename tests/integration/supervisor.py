"""Helpers for the supervisor tests: spoad's master CLI, `show proc`, worker pools, HTTP load.

The master CLI is a Unix socket. Two ways to talk to it:
  - `socat_cmd()` runs the real `socat` as operators do (`echo 'show proc' | socat SOCK -`);
  - `cli()` (non-interactive: send, EOF, read until the master closes) and `Session`
    (interactive: prompt, routing, quit) speak to the socket directly from Python.

`show proc` (spoad's layout: HAProxy's, with a <relative PID> column):
  printf "#%-14s %-15s %-15s %-15s %-15s %-15s\n" "<PID>" "<type>" "<relative PID>" "<reloads>" ...
  master row, "# workers", current workers, then "# old workers" and old ones if any.
"""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import harness
import spop

SOCAT = "socat"


# --------------------------------------------------------------------------------------------
# spoad's version, as `spoad --version` prints it ("spoad version X").

_version = None


def spoad_version():
    global _version
    if _version is None:
        r = subprocess.run([harness.SPOAD, "--version"], capture_output=True, text=True,
                           timeout=harness.GUARD_S)
        m = re.match(r"^spoad version (\S+)\n$", r.stdout)
        assert m, "unexpected `spoad --version` output: %r" % r.stdout
        _version = m.group(1)
    return _version


# --------------------------------------------------------------------------------------------
# Configuration files


def iprep_agent(port, workers=2, name="iprep", extra=""):
    """An ip-checker agent with the demo lists (absolute paths to config/lists). `port` is a
    port on 127.0.0.1, or any `listen` value as a string."""
    listen = port if isinstance(port, str) else "127.0.0.1:%d" % port
    return """  - name: %(name)s
    type: ip-checker
    listen: %(listen)s
    workers: %(workers)d
    message: check-client-ip
    block-threshold: 50
    allow:
      - name: office
        entries: [127.0.10.5]
    deny:
      - name: demo-drop
        score: 100
        file: %(lists)s/demo-drop.txt
      - name: suspicious
        score: 30
        file: %(lists)s/suspicious.netset
%(extra)s""" % {"name": name, "listen": listen, "workers": workers, "extra": extra,
                "lists": os.path.join(harness.CONFIG_DIR, "lists")}


def echo_agent(listen, workers=2, name="echo", extra=""):
    """An echo agent; `listen` is a port number or an address string (e.g. "unix:/p")."""
    if isinstance(listen, int):
        listen = "127.0.0.1:%d" % listen
    return """  - name: %s
    type: echo
    listen: %s
    workers: %d
%s""" % (name, listen, workers, extra)


def config(agents, socket_path=None, mode=None, grace=None, pidfile=None, log_level=None):
    """A spoad YAML file: `agents` is a list of agent blocks (iprep_agent(), echo_agent())."""
    out = []
    g = []
    if log_level:
        g.append("  log-level: %s\n" % log_level)
    if grace:
        g.append("  grace: %s\n" % grace)
    if pidfile:
        g.append("  pidfile: %s\n" % pidfile)
    if g:
        out.append("global:\n" + "".join(g))
    if socket_path or mode:
        out.append("cli:\n")
        if socket_path:
            out.append("  socket: %s\n" % socket_path)
        if mode:
            out.append('  mode: "%s"\n' % mode)
    out.append("agents:\n")
    out.extend(agents)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# The master CLI


def socat_cmd(sock_path, commands, timeout=None):
    """`echo 'commands' | socat UNIX-CONNECT:sock -`: returns socat's stdout.

    socat waits at most -t seconds for the master to close after the EOF of stdin; the default
    (0.5 s) is too short for a loaded machine or a `reload`, hence -t GUARD_S (the master
    closes as soon as it has answered: the wait only guards against a hang)."""
    guard = harness.GUARD_S if timeout is None else timeout
    r = subprocess.run([SOCAT, "-t", "%g" % guard, "UNIX-CONNECT:" + sock_path, "-"],
                       input=commands + "\n", capture_output=True, text=True, timeout=guard + 10)
    return r.stdout


class CliTimeout(AssertionError):
    pass


def _recv_all(s, deadline, data=b""):
    """Reads until EOF; `deadline` is a time.monotonic() value."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliTimeout("the master CLI did not close the connection; got so far: %r" % data)
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise CliTimeout("the master CLI did not close the connection; got so far: %r" % data)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def cli(sock_path, commands, timeout=None):
    """Non-interactive use: sends `commands` + "\\n", then EOF; returns all the master wrote
    until it closed the connection."""
    timeout = harness.GUARD_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(commands.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        return _recv_all(s, deadline).decode("utf-8", "replace")
    finally:
        s.close()


def try_cli(sock_path, commands, timeout=5.0):
    """cli(), or None if the socket is not there / not answering (for wait_for loops)."""
    try:
        return cli(sock_path, commands, timeout)
    except (OSError, CliTimeout):
        return None


class Session:
    """An interactive connection to the master CLI."""

    def __init__(self, sock_path, timeout=None):
        timeout = harness.GUARD_S if timeout is None else timeout
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(sock_path)
        self.buf = b""
        self.timeout = timeout

    def send(self, line):
        self.s.sendall(line.encode() + b"\n")

    def read_until(self, suffix, timeout=None):
        """Reads until the data received ends with `suffix` (the master then waits for us);
        returns that data, suffix included."""
        suffix = suffix.encode()
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.buf.endswith(suffix):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliTimeout("no %r at the end of %r" % (suffix, self.buf))
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                raise CliTimeout("no %r at the end of %r" % (suffix, self.buf))
            if not chunk:
                raise CliTimeout("connection closed; waiting for %r, got %r" % (suffix, self.buf))
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out.decode("utf-8", "replace")

    def command(self, line, prompt, timeout=None):
        """Sends one line and returns the answer without the prompt that follows it."""
        self.send(line)
        out = self.read_until(prompt, timeout)
        return out[:-len(prompt)]

    def closed_by_peer(self, timeout=None):
        """True once the master closes the connection (what it sent meanwhile is appended to
        self.buf); False if it has not after `timeout` seconds (GUARD_S by default), a guard
        against a hang."""
        timeout = harness.GUARD_S if timeout is None else timeout
        try:
            self.buf = _recv_all(self.s, time.monotonic() + timeout, self.buf)
            return True
        except CliTimeout:
            return False

    def close(self):
        self.s.close()


# --------------------------------------------------------------------------------------------
# show proc

SHOW_PROC_HEADER = "#%-14s %-15s %-15s %-15s %-15s %-15s" % (
    "<PID>", "<type>", "<relative PID>", "<reloads>", "<uptime>", "<version>")
_ROW = re.compile(r"^(\d+)\s+(\S+)\s+(\d+|-)\s+(\d+)( \[failed: (\d+)\])?\s+"
                  r"(\d+d\d\dh\d\dm\d\ds)\s+(\S+)\s*$")


class ProcRow:
    def __init__(self, line):
        m = _ROW.match(line)
        if not m:
            raise ValueError("not a show proc row: %r" % line)
        self.line = line
        self.pid = int(m.group(1))
        self.type = m.group(2)
        self.rel = int(m.group(3)) if m.group(3) != "-" else None  # old workers may show "-"
        self.rel_field = m.group(3)
        self.reloads = int(m.group(4))
        self.failed = int(m.group(6)) if m.group(6) is not None else None
        self.reloads_field = m.group(4) + (m.group(5) or "")
        self.uptime = m.group(7)
        self.version = m.group(8)

    def expected_line(self):
        """The row as the printf layout writes it, from the parsed fields."""
        return "%-15s %-15s %-15s %-15s %-15s %-15s" % (
            self.pid, self.type, self.rel_field, self.reloads_field, self.uptime, self.version)

    def __repr__(self):
        return "ProcRow(%r)" % self.line


class ShowProc:
    def __init__(self, text):
        self.text = text
        lines = text.split("\n")
        if len(lines) < 4 or lines[0] != SHOW_PROC_HEADER:
            raise ValueError("unexpected show proc header in %r" % text)
        self.header = lines[0]
        self.master = ProcRow(lines[1])
        if lines[2] != "# workers":
            raise ValueError("no '# workers' line in %r" % text)
        self.workers, self.old_workers = [], []
        self.has_old_section = False
        section = self.workers
        for line in lines[3:]:
            if line == "":
                break
            if line == "# old workers":
                self.has_old_section = True
                section = self.old_workers
                continue
            section.append(ProcRow(line))

    def worker(self, rel):
        for r in self.workers:
            if r.rel == rel:
                return r
        return None

    def pids(self):
        return {r.pid for r in self.workers}

    def old_pids(self):
        return {r.pid for r in self.old_workers}


def show_proc(sock_path, timeout=None):
    return ShowProc(cli(sock_path, "show proc", timeout))


def try_show_proc(sock_path, timeout=5.0):
    out = try_cli(sock_path, "show proc", timeout)
    if out is None:
        return None
    try:
        return ShowProc(out)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# show info


def parse_info(text):
    """`Name: value` lines -> dict (other lines ignored)."""
    out = {}
    for line in text.split("\n"):
        if ": " in line:
            k, v = line.split(": ", 1)
            out.setdefault(k, v)
    return out


def info_json_fields(obj):
    """`show info json` -> {field: value}, accepting a plain object or HAProxy's typed array
    ([{"field": {"name": ...}, "value": {"value": ...}}, ...])."""
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items()}
    out = {}
    if isinstance(obj, list):
        for e in obj:
            try:
                out[e["field"]["name"]] = e["value"]["value"]
            except (TypeError, KeyError):
                pass
    return out


def worker_info(sock_path, rel, timeout=None):
    return parse_info(cli(sock_path, "@%d show info" % rel, timeout))


def wait_pool(sock_path, n, timeout=None, exclude=(), proc=None):
    """Waits until `show proc` lists `n` current workers, none in `exclude`, all alive, and
    each answers `@N show info` with its own pid. Returns the ShowProc, or None (at once if
    `proc`, the master's harness.Proc, has exited)."""
    stop = [False]

    def ready():
        if proc is not None and not proc.alive():
            stop[0] = True
            return True
        sp = try_show_proc(sock_path)
        if sp is None or len(sp.workers) != n:
            return None
        for r in sp.workers:
            if r.pid in exclude or not harness.pid_alive(r.pid):
                return None
            out = try_cli(sock_path, "@%d show info" % r.rel)
            if out is None or parse_info(out).get("Pid") != str(r.pid):
                return None
        return sp
    sp = harness.wait_for(ready, timeout=timeout, interval=0.1)
    return None if stop[0] else sp


# --------------------------------------------------------------------------------------------
# Processes


def proc_ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def is_spoad(pid):
    """True if `pid` runs the spoad under test (guards against recycled pids): its executable,
    or an argument of its command line (a script run by an interpreter), is harness.SPOAD."""
    want = os.path.realpath(harness.SPOAD)
    try:
        if os.path.realpath("/proc/%d/exe" % pid) == want:
            return True
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            args = f.read().split(b"\0")
        return any(a and os.path.realpath(a.decode("utf-8", "replace")) == want for a in args[:2])
    except OSError:
        return False


def all_dead(pids):
    return all(not harness.pid_alive(p) for p in pids)


class Tracker:
    """Remembers the spoad pids a test saw so that cleanup can SIGKILL survivors (only processes
    that this test started, checked through /proc/PID/exe)."""

    def __init__(self):
        self.pids = set()

    def add(self, *pids):
        self.pids.update(p for p in pids if p)

    def add_proc(self, sp):
        if sp is not None:
            self.add(sp.master.pid, *[r.pid for r in sp.workers + sp.old_workers])

    def cleanup(self):
        for p in sorted(self.pids):
            if harness.pid_alive(p) and is_spoad(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --------------------------------------------------------------------------------------------
# SPOP one-shots


def check_ip(port, ip, timeout=None):
    """One ip-checker NOTIFY on a new connection: returns the ACK's actions."""
    c = spop.Client(("127.0.0.1", port), timeout=timeout or harness.GUARD_S)
    try:
        c.handshake()
        c.send(spop.notify(1, 1, [("check-client-ip", [("ip", spop.Typed(spop.T_IPV4, ip))])]))
        f = c.recv_frame()
        assert f is not None and f.type == spop.ACK and (f.sid, f.fid) == (1, 1), f
        return f.actions()
    finally:
        c.close()


def echo_once(addr, timeout=None):
    """One echo NOTIFY on a new connection; returns the ACK's actions. `addr`: port or path."""
    c = spop.Client(("127.0.0.1", addr) if isinstance(addr, int) else addr,
                    timeout=timeout or harness.GUARD_S)
    try:
        c.handshake()
        c.send(spop.notify(1, 1, [("m", [("x", "hello")])]))
        f = c.recv_frame()
        assert f is not None and f.type == spop.ACK and (f.sid, f.fid) == (1, 1), f
        return f.actions()
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# HTTP load through HAProxy (config/haproxy.cfg's frontend and the demo lists)

# (client address, expected status, expected X-IP-Score)
HTTP_CASES = [
    ("127.0.0.1", 200, "0"),
    ("127.0.0.66", 403, "100"),
    ("127.0.10.7", 200, "30"),
    ("127.0.10.5", 200, "0"),
]


class HttpLoad:
    """One thread per source address doing sequential GETs until stop(); every answer that is
    not the expected status and score, or that carries X-SPOE-Error, is a failure."""

    def __init__(self, port, cases=HTTP_CASES, max_per_thread=100000):
        self.port = port
        self.cases = cases
        self.max = max_per_thread
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.per_source = {c[0]: 0 for c in cases}
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in cases]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, case):
        src, status, score = case
        n = 0
        while not self.stop_ev.is_set() and n < self.max:
            n += 1
            try:
                st, hdrs, _ = harness.http_request(self.port, "/", source=src)
                bad = None
                if st != status:
                    bad = "status %d, expected %d" % (st, status)
                elif "x-spoe-error" in hdrs:
                    bad = "X-SPOE-Error: %s" % hdrs["x-spoe-error"]
                elif hdrs.get("x-ip-score") != score:
                    bad = "X-IP-Score %r, expected %r" % (hdrs.get("x-ip-score"), score)
            except Exception as e:  # noqa: BLE001 - any failure counts
                bad = "%s: %s" % (type(e).__name__, e)
            with self.lock:
                if bad:
                    self.failures.append((time.time(), src, bad))
                else:
                    self.ok += 1
                    self.per_source[src] += 1

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(harness.GUARD_S)

    def summary(self):
        with self.lock:
            kinds = {}
            for _, _, bad in self.failures:
                kinds[bad] = kinds.get(bad, 0) + 1
            return "ok=%d per_source=%s failures=%d by kind=%s first=%s" % (
                self.ok, self.per_source, len(self.failures), kinds,
                ["%.3f %s %s" % f for f in self.failures[:10]])


def wait_http_ok(port, timeout=None):
    """Waits until every HTTP_CASES source gets its expected answer (agent up and checked)."""
    def ok():
        for src, status, score in HTTP_CASES:
            try:
                st, hdrs, _ = harness.http_request(port, "/", source=src, timeout=10)
            except OSError:
                return False
            if st != status or "x-spoe-error" in hdrs or hdrs.get("x-ip-score") != score:
                return False
        return True
    return harness.wait_for(ok, timeout=timeout, interval=0.2)


def tail_logs(env, chars=4000):
    """The end of each process's log (env.dump_logs() would show only the last, noisiest one
    once cut to a reasonable size)."""
    return "\n".join("----- %s (%s) -----\n%s" % (p.name, p.log_path, p.output()[-chars:])
                     for p in env.procs)


def load_json(text):
    try:
        return json.loads(text)
    except ValueError as e:
        raise AssertionError("not JSON (%s): %r" % (e, text[:2000]))
