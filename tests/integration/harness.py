"""Process harness for the integration tests: real spoad, real HAProxy, real sockets.

meson passes the locations through the environment:
  SPOAD        path of the built spoad binary
  SPOA_BENCH   path of the built spoa-bench binary
  SOURCE_ROOT  the source tree (for config/)
and scripts/test sets, per HAProxy version it tests:
  SPOAD_HAPROXY  path of the HAProxy binary (default: `haproxy` on the PATH); tests that need
                 a given version skip elsewhere, saying why (haproxy_at_least())
Every test gets its own ports and temporary directory, so tests can run in parallel.

Timing rules (the suite must pass on a loaded 2-core machine): a test never sleeps to
synchronise and never asserts an upper bound on a duration. It waits for the event itself (a
log line, a CLI answer, a counter, a socket, a pid gone) with wait_for(), whose deadline,
GUARD_S by default, only guards against a hang.
"""
import glob
import http.client
import os
import re
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SOURCE_ROOT = os.environ.get("SOURCE_ROOT", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CONFIG_DIR = os.path.join(SOURCE_ROOT, "config")
SPOAD = os.environ.get("SPOAD", os.path.join(SOURCE_ROOT, "build", "cmd", "spoad", "spoad"))
SPOA_BENCH = os.environ.get("SPOA_BENCH", os.path.join(SOURCE_ROOT, "build", "cmd", "spoa-bench", "spoa-bench"))
# The HAProxy binary every test runs: $SPOAD_HAPROXY (scripts/test sets it to each version it
# tests: Debian's 2.6, then 3.2 and 3.4 built by scripts/haproxy), else the one on the PATH.
HAPROXY = os.environ.get("SPOAD_HAPROXY") or shutil.which("haproxy") or "/usr/sbin/haproxy"
_haproxy_version = None


def haproxy_version():
    """The version of HAPROXY as a tuple of ints, e.g. (2, 6, 12), from `haproxy -v`."""
    global _haproxy_version
    if _haproxy_version is None:
        out = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True, errors="replace",
                             timeout=GUARD_S).stdout
        m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
        if not m:
            raise RuntimeError("cannot read the version of %s: %r" % (HAPROXY, out[:200]))
        _haproxy_version = tuple(int(x or 0) for x in m.groups())
    return _haproxy_version


def haproxy_at_least(major, minor):
    """True when HAPROXY is version major.minor or newer."""
    return haproxy_version()[:2] >= (major, minor)


# Seconds a test waits for an event before it gives up: a guard against hangs, not a claim
# about speed, hence generous (SPOAD_TEST_GUARD overrides it).
GUARD_S = float(os.environ.get("SPOAD_TEST_GUARD", "60"))


_given_ports = set()


def _port_range():
    """Where free_port() draws from: below the kernel's ephemeral range (ip_local_port_range),
    so that no outgoing connection (HAProxy to spoad, a client to HAProxy) can take the port
    between the check and the server's bind, and at random, so that test processes running side
    by side rarely draw the same one. Ports 20000 up to the ephemeral range's start."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (20000, low - 1) if low - 1 - 20000 >= 2000 else None


_port_rng = random.SystemRandom()


def free_port():
    """A TCP port nobody listens on right now (IPv4 loopback), never the same twice in a
    process: two listeners with SO_REUSEPORT (HAProxy and spoad both set it) would silently
    share it. Drawn at random below the ephemeral range (see _port_range), else from the
    kernel."""
    rng = _port_range()
    for _ in range(1000 if rng else 0):
        port = _port_rng.randint(*rng)
        if port in _given_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given_ports.add(port)
        return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def wait_for(pred, timeout=None, interval=0.05):
    """Polls `pred` until it returns a true value, which is returned; after `timeout` seconds
    (GUARD_S by default) returns its last value. The deadline guards against a hang: callers
    must not use it to claim that something did *not* happen."""
    deadline = time.monotonic() + (GUARD_S if timeout is None else timeout)
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def wait_log(proc, text, timeout=None):
    """Waits until `text` (a str) appears in the output of `proc` (a Proc); returns True if it
    did."""
    return bool(wait_for(lambda: text in proc.output(), timeout=timeout, interval=0.05))


def _listening_inodes(port):
    """Socket inodes of the TCP listeners (IPv4 and IPv6) on `port`."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        out.add(inode)
        except FileNotFoundError:
            pass
    return out


def pid_listens(pid, port):
    """True if process `pid` holds a listening TCP socket on `port` (through /proc: what a
    process with SO_REUSEPORT listens on cannot be told by connecting)."""
    inodes = _listening_inodes(port)
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def children(pid):
    """The pids of the children of `pid` (its main thread's), [] if it is gone."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def rss_kib(pid):
    """Resident memory of process `pid` in KiB (VmRSS), 0 if unknown."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pid_alive(pid):
    """True if `pid` exists and is not a zombie (checked through /proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Proc:
    """A child process whose stderr/stdout go to a log file in the test's directory."""

    def __init__(self, name, argv, workdir, env=None, cwd=None):
        self.name = name
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                  cwd=cwd, start_new_session=True)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout=None):
        """The exit status, or None if the process is still running after `timeout` seconds
        (GUARD_S by default)."""
        if timeout is None:
            timeout = GUARD_S
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.alive():
            os.kill(self.pid, sig)
            if self.wait(timeout) is None:
                os.kill(self.pid, signal.SIGKILL)
                self.wait(5)
        self.log.close()
        return self.p.returncode

    def output(self):
        if not self.log.closed:
            self.log.flush()
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(log removed)"


class Env:
    """A temporary directory plus the processes a test starts; stop() cleans up."""

    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix="spoad-%s-" % name)
        self.procs = []

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def start(self, name, argv, env=None, cwd=None):
        p = Proc(name, argv, self.dir, env, cwd)
        self.procs.append(p)
        return p

    def spoad(self, config, env=None, args=(), name="spoad"):
        return self.start(name, [SPOAD, "-f", config] + list(args), env=env)

    def haproxy(self, config, env=None, args=(), name="haproxy"):
        """HAProxy in the foreground (-db); `config` may be a path in config/ or anywhere."""
        return self.start(name, [HAPROXY, "-db", "-f", config] + list(args), env=env, cwd=self.dir)

    def stop(self):
        """Stops the processes; removes the directory unless SPOAD_KEEP_TMP is set."""
        for p in reversed(self.procs):
            p.stop()
        if not os.environ.get("SPOAD_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def dump_logs(self):
        out = []
        for p in self.procs:
            out.append("----- %s (%s) -----\n%s" % (p.name, p.log_path, p.output()[-20000:]))
        return "\n".join(out)


# What the tests put in the SPOE files instead of their `timeout hello` and `timeout
# processing`: those bound a response time, and a loaded machine may take longer than a
# production setting allows (HAProxy would then report an SPOE error that says nothing about
# spoad). Speed is the benchmark's business; the timeouts stay, as guards.
SPOE_GUARD_TIMEOUT = "%ds" % int(GUARD_S / 2)  # less than a client's wait (GUARD_S)


def relaxed_spoe(text):
    """The text of an SPOE configuration file with its hello and processing timeouts set to
    SPOE_GUARD_TIMEOUT; everything else unchanged."""
    return re.sub(r"(?m)^(\s*timeout (?:hello|processing))\s+\S+", r"\g<1> " + SPOE_GUARD_TIMEOUT,
                  text)


def spoe_dir(env):
    """A copy of config/spoe-*.cfg in `env`'s directory (spoe/), through relaxed_spoe();
    returns its path, a value for SPOE_DIR."""
    d = env.path("spoe")
    if not os.path.isdir(d):
        os.mkdir(d)
        for src in glob.glob(os.path.join(CONFIG_DIR, "spoe-*.cfg")):
            with open(src) as f:
                text = relaxed_spoe(f.read())
            with open(os.path.join(d, os.path.basename(src)), "w") as f:
                f.write(text)
    return d


def shipped_env(env, **overrides):
    """The environment variables of config/spoad.yaml and config/haproxy.cfg, with fresh ports
    and paths in `env`'s directory, so that tests using the shipped files run in parallel. The
    SPOE files come from spoe_dir()."""
    v = {
        "SPOAD_IPREP_ADDR": "127.0.0.1:%d" % free_port(),
        "SPOAD_TRACING_ADDR": "127.0.0.1:%d" % free_port(),
        "SPOAD_CLI_SOCKET": env.path("master.sock"),
        "SPOAD_TRACES_FILE": env.path("traces.jsonl"),
        "HAPROXY_BIND": "127.0.0.1:%d" % free_port(),
        "HAPROXY_STATS_SOCKET": env.path("haproxy.sock"),
        "APP_ADDR": "127.0.0.1:%d" % free_port(),
        "SPOAD_MIRROR_ADDR": "127.0.0.1:%d" % free_port(),
        "MIRROR_TARGET_ADDR": "127.0.0.1:%d" % free_port(),
        "SPOE_DIR": spoe_dir(env),
    }
    v.update(overrides)
    return v


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def http_request(port, path="/", method="GET", source=None, headers=None, body=None, host="127.0.0.1",
                 timeout=GUARD_S):
    """One HTTP/1.1 request on a new connection. Returns (status, headers dict lowercased, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def haproxy_stats_cmd(sock_path, cmd, timeout=GUARD_S):
    """Sends one command to a HAProxy stats (or master) socket, then EOF (the master CLI keeps
    a connection open until the client closes), and returns the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(cmd.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out.decode("utf-8", "replace")


def haproxy_stat_rows(stats_sock, timeout=GUARD_S):
    """The rows of `show stat` on HAProxy's stats socket, as dicts by column name (pxname,
    svname, status...), or None while HAProxy does not answer."""
    try:
        lines = haproxy_stats_cmd(stats_sock, "show stat", timeout).splitlines()
    except OSError:
        return None
    if not lines:
        return None
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def haproxy_show_proc(master_sock, timeout=2.0):
    """{section: [(pid, type)]} from `show proc` on HAProxy's master CLI (2.6 and 3.x layouts:
    the pid and the type are the first two columns; the master row is under "master", then
    "workers", "old workers", "programs"...), or None while it does not answer (HAProxy
    re-executing: a connection then waits unanswered, hence the short timeout; callers poll)."""
    try:
        out = haproxy_stats_cmd(master_sock, "show proc", timeout)
    except OSError:
        return None
    if not out.startswith("#<PID>"):
        return None
    sections = {"master": []}
    cur = "master"
    for line in out.split("\n")[1:]:
        if not line.strip():
            continue
        if line.startswith("# "):
            cur = line[2:].strip()
            sections[cur] = []
            continue
        f = line.split()
        if len(f) >= 2 and f[0].isdigit():
            sections[cur].append((int(f[0]), f[1]))
    return sections


def haproxy_pids(sections, section, typ):
    """The pids of type `typ` in `section` of a haproxy_show_proc() answer."""
    return [pid for pid, t in sections.get(section, []) if t == typ]


def haproxy_workers(master_sock):
    """The pids of HAProxy's current workers (a set), or None while its master CLI does not
    answer or lists none."""
    sections = haproxy_show_proc(master_sock)
    if sections is None:
        return None
    return set(haproxy_pids(sections, "workers", "worker")) or None
