"""What HAProxy 3.x does differently from 2.6, and the shipped files on every version.

Each case runs against the HAProxy in $SPOAD_HAPROXY (harness.HAPROXY) and is skipped, with the
reason, on a version that does not behave so:

- every version: the shipped files load (`haproxy -c -dW`: no alert, no warning; the SPOE
  files with them), except
  haproxy-program.cfg on 3.3 and later, which must refuse to load and name
  config/spoad.service.in instead (those versions have no `program` section);
- 2.x to 3.2: config/haproxy-program.cfg as shipped (3.1 and 3.2 need its
  `expose-deprecated-directives`) starts spoad under `haproxy -W` and passes traffic;
- every version: the layout of config/spoad.service.in (spoad on its own, started, reloaded and
  stopped by the unit's own command lines) beside `haproxy -W -S` with config/haproxy.cfg:
  traffic after spoad's reload and after HAProxy's, exit status 0 on the unit's KillSignal;
  and `systemd-analyze verify` accepts the unit;
- every version: the shipped mirror files (haproxy-mirror.cfg's tune.bufsize, spoad.yaml's
  mirror max-frame-size) mirror request bodies above 16 KB whole, from the very first request
  of a fresh HAProxy: 3.x never fragments, so the agent must take frames of tune.bufsize - 4;
- every version: connections reused across streams: many requests, few agent connections
  (the shipped files too: their SPOE backends are `mode spop` on 3.1+, see config/haproxy.cfg),
  and the two events of one request answered whatever connection each came on (the second
  event's argument is the variable the first one's ACK set);
- 3.1+ (SPOE as a mux, pooled connections): several NOTIFYs of different streams at once on
  one connection (2.6 opens one connection per NOTIFY in flight);
- 3.1+: HAProxy closes its idle pooled connections with a TCP reset (here at a soft-stop):
  spoad takes it as a normal end (no error counted, logged at debug level only);
- 3.1+: backends written `mode spop`, with `option spop-check`;
- 3.1+: no fragmentation: a message larger than the frame size spoad announced fails in HAProxy
  (SPOE status 259, "frame is too big") instead of arriving in fragments; spoad sees nothing
  wrong.

Nothing here measures speed or sleeps to synchronise: each step waits for its event (a port, a
counter, a log line, an answer), with harness.GUARD_S as a guard against a hang.
"""
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import http_target  # noqa: E402
import stack  # noqa: E402
import supervisor as sv  # noqa: E402


def version_text():
    return "HAProxy %s" % ".".join(str(x) for x in harness.haproxy_version())


def need(major, minor, why):
    """Skips the test, saying why, when HAProxy is older than major.minor."""
    if not harness.haproxy_at_least(major, minor):
        raise unittest.SkipTest("%s: %s" % (version_text(), why))


shipped = stack.shipped
total_stats = stack.total_stats


LOG_LINE = re.compile(r"^\S+ \[\d+\] \S+ (\w+): ")


def log_lines_at(text, levels):
    """spoad's log lines (lib/util/log.cpp: "<time> [<pid>] <name> <level>: <message>") whose
    level is in `levels`."""
    out = []
    for ln in text.splitlines():
        m = LOG_LINE.match(ln)
        if m and m.group(1) in levels:
            out.append(ln)
    return out


# --------------------------------------------------------------------------------------------
# The shipped files load


class ShippedFilesLoad(unittest.TestCase):
    def test_haproxy_c_on_every_shipped_file(self):
        env = harness.Env("h3-check")
        self.addCleanup(env.stop)
        v = harness.shipped_env(env, SPOE_DIR=harness.CONFIG_DIR,
                                SPOAD_CONFIG=shipped("spoad.yaml"))
        files = sorted(glob.glob(shipped("haproxy*.cfg")))
        self.assertIn(shipped("haproxy-program.cfg"), files)
        checked = []
        for path in files:
            name = os.path.basename(path)
            with self.subTest(file=name):
                # -dW: a warning is an error (zero-warning mode), so deprecations show up too.
                r = subprocess.run([harness.HAPROXY, "-c", "-dW", "-f", path],
                                   env=dict(os.environ, **v), capture_output=True, text=True,
                                   errors="replace", timeout=harness.GUARD_S, cwd=env.dir)
                out = r.stdout + r.stderr
                if name == "haproxy-program.cfg" and harness.haproxy_at_least(3, 3):
                    # No `program` section in 3.3+: the file says where to go instead.
                    self.assertNotEqual(r.returncode, 0, out)
                    self.assertIn("has no program section", out)  # its own .alert
                    self.assertIn("config/spoad.service.in", out)
                    checked.append(name + " (refused, as it must be on 3.3+)")
                    continue
                self.assertEqual(r.returncode, 0, out)
                self.assertNotIn("[WARNING]", out)
                self.assertNotIn("[ALERT]", out)
                checked.append(name)
        print("%s: %s" % (version_text(), ", ".join(checked)))


# --------------------------------------------------------------------------------------------
# The shipped files pass traffic: the program layout (2.x to 3.2) and the systemd layout


class ProgramLayout(unittest.TestCase):
    """config/haproxy-program.cfg as shipped: HAProxy's master starts `spoad` from the PATH."""

    def test_shipped_program_file_passes_traffic(self):
        if harness.haproxy_at_least(3, 3):
            raise unittest.SkipTest("%s has no `program` section (removed in 3.3): spoad runs "
                                    "beside it, see SystemdLayout" % version_text())
        env = harness.Env("h3-program")
        self.addCleanup(env.stop)
        tracker = sv.Tracker()
        self.addCleanup(tracker.cleanup)
        bindir = env.path("bin")
        os.mkdir(bindir)
        os.symlink(harness.SPOAD, os.path.join(bindir, "spoad"))
        v = harness.shipped_env(env)
        fe = harness.port_of(v["HAPROXY_BIND"])
        # The program file has the ip-checker only; the agent's file is the shipped one.
        yaml = env.write("spoad.yaml", sv.config(
            [sv.iprep_agent('"${SPOAD_IPREP_ADDR}"', 2)], socket_path='"${SPOAD_CLI_SOCKET}"'))
        v.update(SPOAD_CONFIG=yaml, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
        hsock = env.path("haproxy-master.sock")
        hap = env.start("haproxy", [harness.HAPROXY, "-W", "-db", "-S", hsock, "-f",
                                    shipped("haproxy-program.cfg")], env=v, cwd=env.dir)
        sp = sv.wait_pool(v["SPOAD_CLI_SOCKET"], 2, proc=hap)
        self.assertIsNotNone(sp, sv.tail_logs(env))
        self.assertTrue(hap.alive(), sv.tail_logs(env))
        tracker.add_proc(sp)
        self.assertTrue(sv.wait_http_ok(fe), sv.tail_logs(env))
        # HAProxy's master knows it as its program.
        out = sv.socat_cmd(hsock, "show proc")
        self.assertIn(str(sp.master.pid), out)
        self.assertIn("spoad", out)


SERVICE = shipped("spoad.service.in")  # the unit meson installs, with its paths filled in


def unit_lines(key):
    """The values of `key=` in config/spoad.service.in, in order."""
    with open(SERVICE) as f:
        return [ln.split("=", 1)[1].strip() for ln in f
                if ln.startswith(key + "=")]


class SystemdLayout(unittest.TestCase):
    """spoad as config/spoad.service.in runs it, beside `haproxy -W -S` with config/haproxy.cfg:
    the way on 3.3+, and on any version. The unit's command lines are run as written, with the
    binary under test for @bindir@/spoad, this test's files for @sysconfdir@/spoad/spoad.yaml and
    /run/spoad, and $MAINPID for what systemd would put there."""

    def test_unit_commands_beside_haproxy(self):
        env = harness.Env("h3-systemd")
        self.addCleanup(env.stop)
        tracker = sv.Tracker()
        self.addCleanup(tracker.cleanup)
        v = harness.shipped_env(env)
        os.mkdir(env.path("run"))
        v["SPOAD_CLI_SOCKET"] = env.path("run", "master.sock")
        fe = harness.port_of(v["HAPROXY_BIND"])

        def argv(line, mainpid=None):
            line = line.replace("@bindir@/spoad", harness.SPOAD)
            line = line.replace("@sysconfdir@/spoad/spoad.yaml", shipped("spoad.yaml"))
            line = line.replace("/run/spoad/", env.path("run") + "/")
            if mainpid is not None:
                line = line.replace("$MAINPID", str(mainpid))
            return line.split()

        full_env = dict(os.environ, **v)
        for line in unit_lines("ExecStartPre"):
            r = subprocess.run(argv(line), env=full_env, capture_output=True, text=True,
                               timeout=harness.GUARD_S)
            self.assertEqual(r.returncode, 0, (line, r.stdout, r.stderr))
        (start,) = unit_lines("ExecStart")
        spoad = env.start("spoad", argv(start), env=v)
        sp = sv.wait_pool(v["SPOAD_CLI_SOCKET"], 6, proc=spoad)
        self.assertIsNotNone(sp, sv.tail_logs(env))
        tracker.add_proc(sp)
        hsock = env.path("haproxy-master.sock")
        env.start("haproxy", [harness.HAPROXY, "-W", "-db", "-S", hsock,
                              "-f", shipped("haproxy.cfg")], env=v, cwd=env.dir)
        self.assertTrue(sv.wait_http_ok(fe), sv.tail_logs(env))

        # systemctl reload spoad: the unit's ExecReload lines, in order.
        for line in unit_lines("ExecReload"):
            r = subprocess.run(argv(line, spoad.pid), env=full_env, capture_output=True,
                               text=True, timeout=harness.GUARD_S)
            self.assertEqual(r.returncode, 0, (line, r.stdout, r.stderr))
        new = sv.wait_pool(v["SPOAD_CLI_SOCKET"], 6, exclude=sp.pids(), proc=spoad)
        self.assertIsNotNone(new, sv.tail_logs(env))
        tracker.add_proc(new)
        self.assertTrue(sv.wait_http_ok(fe), sv.tail_logs(env))

        # HAProxy's own reload does not involve spoad: its new worker finds the same agents.
        old = harness.wait_for(lambda: harness.haproxy_workers(hsock), interval=0.1)
        self.assertTrue(old, sv.tail_logs(env))
        out = sv.socat_cmd(hsock, "reload")
        self.assertTrue(harness.wait_for(
            lambda: (harness.haproxy_workers(hsock) or old) - old, interval=0.1), (out, sv.tail_logs(env)))
        self.assertTrue(sv.wait_http_ok(fe), (out, sv.tail_logs(env)))
        self.assertEqual(sv.show_proc(v["SPOAD_CLI_SOCKET"]).master.pid, spoad.pid)

        # systemctl stop spoad: KillSignal to the main process (KillMode=mixed), exit 0.
        (sig,) = unit_lines("KillSignal")
        spoad.send_signal(getattr(signal, sig))
        self.assertEqual(spoad.wait(), 0, sv.tail_logs(env))

    def test_unit_file_verifies(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise unittest.SkipTest("no systemd-analyze on this machine")
        env = harness.Env("h3-unit")
        self.addCleanup(env.stop)
        # The unit as meson configures it, with the binary under test (verify checks that it
        # exists) and /etc for @sysconfdir@.
        with open(SERVICE) as f:
            text = f.read().replace("@bindir@/spoad", harness.SPOAD).replace("@sysconfdir@", "/etc")
        unit = env.write("spoad.service", text)
        r = subprocess.run([tool, "verify", unit], capture_output=True, text=True,
                           timeout=harness.GUARD_S, cwd=env.dir)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))


# --------------------------------------------------------------------------------------------
# The mirror with the shipped files: large bodies whole (frame-size parity)


class ShippedMirrorLargeBodies(unittest.TestCase):
    def test_bodies_above_16k_are_mirrored_whole_from_the_first_request(self):
        s = stack.Stack("h3-mirror")
        self.addCleanup(s.stop)
        env, v = s.env, s.use_shipped()
        # spoad.yaml's mirror target is http://$MIRROR_TARGET_ADDR: a recording HTTP server.
        target = http_target.HttpTarget(harness.port_of(v["MIRROR_TARGET_ADDR"])).start()
        self.addCleanup(target.stop)
        # meson test sets MALLOC_PERTURB_, which makes HAProxy fill its 1.1 MB buffers on
        # every allocation (see test_mirror.py).
        v["MALLOC_PERTURB_"] = "0"
        s.start_shipped_spoad(workers=6)
        sock, fe = s.sock, s.fe
        # The application reads each body whole before it answers. An HAProxy frontend with
        # `http-request return` answers before the body has arrived and closes, and under load
        # the client side then sees a reset: a 502 that says nothing about the mirror.
        app = http_target.HttpTarget(harness.port_of(v["APP_ADDR"])).start()
        self.addCleanup(app.stop)
        s.start_shipped_haproxy("haproxy-mirror.cfg")
        # The first requests of a fresh HAProxy, no warm-up: 2.6 once lost the first large
        # message of each thread when the agent announced less than tune.bufsize - 4.
        sizes = [20 * 1024, 100 * 1024, 600 * 1024, 1024 * 1024, 17 * 1024, 64 * 1024]
        sent = {}
        for i, size in enumerate(sizes):
            body = os.urandom(size)
            path = "/big/%d" % i
            st, _, data = harness.http_request(
                fe, path, method="POST", body=body,
                headers={"Content-Type": "application/octet-stream"})
            self.assertEqual((st, data), (200, b"mirrored\n"), sv.tail_logs(env))
            sent[path] = hashlib.sha256(body).hexdigest()
        # HAProxy answers once the message is ACKed or has failed, and the agent counts a
        # message before its ACK: every one of them reached the agent, in one NOTIFY each.
        mirror = total_stats(sock, (5, 6), "mirror")
        self.assertEqual((mirror["cum_messages"], mirror["fragmented"]), (len(sizes), 0),
                         (mirror, sv.tail_logs(env)))

        def got():
            recs = {r.target: r for r in target.records()}
            return recs if all(p in recs for p in sent) else None
        recs = harness.wait_for(got)
        mirror = total_stats(sock, (5, 6), "mirror")
        self.assertIsNotNone(recs, (sorted(r.target for r in target.records()), mirror,
                                    sv.tail_logs(env)))
        for path, sha in sorted(sent.items()):
            self.assertEqual((recs[path].method, recs[path].body_sha256), ("POST", sha), path)
        self.assertEqual(mirror["nb_error"], 0, mirror)
        print("%s: %d bodies of 17 KB to 1 MiB mirrored whole, from the first request"
              % (version_text(), len(sizes)))


# --------------------------------------------------------------------------------------------
# Pooled connections, resets, `mode spop`, no fragmentation

ECHO_YAML = """global:
  log-level: debug
cli:
  socket: %(sock)s
agents:
  - name: echo
    type: echo
    listen: 127.0.0.1:%(agent)d
    workers: %(workers)d
%(extra)s"""

# Two events per request: the second sends back the variable the first one's ACK set.
ECHO_SPOE = """
[echo]
spoe-agent echo-agent
    messages on-req on-resp
    option var-prefix echo
    option set-on-error error
    timeout hello 30s
    timeout idle 2m
    timeout processing 30s
    use-backend spoe-echo

spoe-message on-req
    args a=req.hdr(x-id) delay_ms=req.hdr_val(x-delay-ms) data=req.body
    event on-frontend-http-request

spoe-message on-resp
    args b=var(txn.echo.a)
    event on-http-response
"""

ECHO_HAPROXY = """
global
    log stderr format raw local0 info
    nbthread %(nbthread)d
    stats socket %(stats)s mode 600 level admin
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:%(fe)d
    option http-buffer-request
    filter spoe engine echo config %(spoe)s
    http-after-response set-header x-a "%%[var(txn.echo.a)]"
    http-after-response set-header x-b "%%[var(txn.echo.b)]"
    http-after-response set-header x-len "%%[var(txn.echo.data_len)]"
    acl spoe_error var(txn.echo.error) -m found
    http-after-response set-header x-err "%%[var(txn.echo.error)]" if spoe_error
    default_backend app
backend app
    server app 127.0.0.1:%(app)d
frontend app_server
    bind 127.0.0.1:%(app)d
    http-request return status 200 content-type text/plain string "app"
backend spoe-echo
    mode %(mode)s
    timeout connect 5s
    timeout server 3m
    option spop-check
    server spoad 127.0.0.1:%(agent)d check inter 1s
"""


class EchoStack(stack.Stack):
    """spoad's echo agent behind an HAProxy frontend whose SPOE engine has two events per
    request (ECHO_SPOE), on `workers` spoad workers and `nbthread` HAProxy threads."""

    def __init__(self, test, workers=1, nbthread=1, mode="tcp", extra=""):
        super().__init__("h3-echo")
        test.addCleanup(self.stop)
        self.workers = workers
        self.fe, self.agent, self.app = (harness.free_port(), harness.free_port(),
                                         harness.free_port())
        sock = self.env.path("master.sock")
        self.stats_sock = self.env.path("haproxy.sock")
        self.start_spoad(ECHO_YAML % {"sock": sock, "agent": self.agent, "workers": workers,
                                      "extra": extra}, sock=sock, workers=workers)
        spoe = self.env.write("spoe.cfg", ECHO_SPOE)
        self.start_haproxy(ECHO_HAPROXY % {
            "nbthread": nbthread, "stats": self.stats_sock, "fe": self.fe, "spoe": spoe,
            "app": self.app, "mode": mode, "agent": self.agent}, ports=[self.fe])

    def stats(self):
        return self.total_stats(range(1, self.workers + 1), "echo")

    def get(self, rid, delay_ms=0, body=None):
        h = {"x-id": rid}
        if delay_ms:
            h["x-delay-ms"] = str(delay_ms)
        return harness.http_request(self.fe, "/" + rid, method="POST" if body else "GET",
                                    body=body, headers=h)

    def check_answer(self, test, rid, answer):
        st, hdrs, data = answer
        test.assertEqual((st, data), (200, b"app"), (rid, hdrs, self.logs()))
        test.assertNotIn("x-err", hdrs, (rid, hdrs))
        # x-a from the request event's ACK; x-b from the response event's, whose argument was
        # the variable the first ACK set.
        test.assertEqual((hdrs.get("x-a"), hdrs.get("x-b")), (rid, rid), (rid, hdrs))


class Pooling(unittest.TestCase):
    def test_many_streams_few_connections(self):
        # Every version: 2.6 keeps its SPOE applets across streams as well.
        s = EchoStack(self, workers=2, nbthread=1)
        n = 200
        before = s.stats()
        for i in range(n):
            rid = "seq-%d" % i
            s.check_answer(self, rid, s.get(rid))
        after = s.stats()
        notify = after["cum_notify"] - before["cum_notify"]
        conns = (after["cum_conns"] - after["healthchecks"]) - \
            (before["cum_conns"] - before["healthchecks"])
        # Two events per request, each a NOTIFY: the streams reuse the agent connections (a
        # handful), not one connection each.
        self.assertEqual(notify, 2 * n, (before, after))
        self.assertLessEqual(conns, n // 10, (before, after, s.logs()))
        self.assertEqual(after["nb_error"], 0, after)
        print("%s: %d requests, %d NOTIFYs over %d new agent connections"
              % (version_text(), n, notify, conns))

    def test_shipped_files_reuse_agent_connections(self):
        # config/haproxy.cfg and config/spoad.yaml as shipped, all three agents: on 3.1+ their
        # `mode spop` backends keep pooled connections (see the comment in haproxy.cfg).
        s = stack.shipped_stack("h3-pool-shipped", workers=6)
        self.addCleanup(s.stop)
        env, sock, fe = s.env, s.sock, s.fe
        self.assertTrue(sv.wait_http_ok(fe), sv.tail_logs(env))
        agents = {"iprep": (1, 2), "tracing": (3, 4), "mirror": (5, 6)}
        before = {a: total_stats(sock, rels, a) for a, rels in agents.items()}
        n = 0
        for i in range(25):
            for src, status, score in sv.HTTP_CASES:
                st, hdrs, _ = harness.http_request(fe, "/r/%d" % i, source=src)
                self.assertEqual((st, hdrs.get("x-ip-score"), hdrs.get("x-spoe-error")),
                                 (status, score, None), (src, hdrs, sv.tail_logs(env)))
                n += 1
        report = []
        for a, rels in agents.items():
            after = total_stats(sock, rels, a)
            notify = after["cum_notify"] - before[a]["cum_notify"]
            conns = (after["cum_conns"] - after["healthchecks"]) - \
                (before[a]["cum_conns"] - before[a]["healthchecks"])
            self.assertGreaterEqual(notify, n, (a, before[a], after))
            self.assertLessEqual(conns, n // 10, (a, before[a], after, sv.tail_logs(env)))
            report.append("%s %d NOTIFYs over %d new connections" % (a, notify, conns))
        print("%s, shipped files, %d requests: %s" % (version_text(), n, "; ".join(report)))

    def test_concurrent_streams_share_connections(self):
        need(3, 1, "HAProxy before 3.1 opens one SPOE applet (connection) per NOTIFY in flight")
        # 45 requests whose first NOTIFY the agent holds 3 s (echo's delay_ms): HAProxy puts
        # several streams on each pooled connection (up to 20 at once in 3.1+), so spoad sees
        # more NOTIFYs waiting than connections. The hold shapes the load; nothing waits on it.
        s = EchoStack(self, workers=2, nbthread=2)
        # Connections whose HELLO is done first: until then HAProxy puts one stream on each.
        for i in range(10):
            rid = "warm-%d" % i
            s.check_answer(self, rid, s.get(rid))
        n = 45
        answers = {}

        def one(i):
            rid = "par-%d" % i
            try:
                answers[rid] = s.get(rid, delay_ms=3000)
            except Exception as e:  # noqa: BLE001 - reported below
                answers[rid] = (0, {"exception": repr(e)}, b"")
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        peak = {"nb_waiting": 0, "applets": 0}

        def observe():
            st = s.stats()
            if st["nb_waiting"] > peak["nb_waiting"]:
                peak.update(nb_waiting=st["nb_waiting"], applets=st["applets"])
            return len(answers) == n
        harness.wait_for(observe, interval=0.05)
        for t in threads:
            t.join(harness.GUARD_S)
        self.assertEqual(len(answers), n, s.logs())
        for rid, a in sorted(answers.items()):
            s.check_answer(self, rid, a)
        self.assertGreater(peak["nb_waiting"], peak["applets"], (peak, s.logs()))
        self.assertEqual(s.stats()["nb_error"], 0, s.stats())
        print("%s: at the peak %d NOTIFYs waited on %d agent connections"
              % (version_text(), peak["nb_waiting"], peak["applets"]))


class ResetIsANormalClose(unittest.TestCase):
    def setUp(self):
        need(3, 1, "HAProxy before 3.1 ends an SPOE connection with HAPROXY-DISCONNECT")

    def test_reset_of_idle_pooled_connections(self):
        # HAProxy soft-stops (SIGUSR1, as its old worker does on a reload): it closes its idle
        # pooled connections to the agent with a reset, without HAPROXY-DISCONNECT.
        s = EchoStack(self, workers=1, nbthread=1)
        for i in range(20):
            rid = "rst-%d" % i
            s.check_answer(self, rid, s.get(rid))
        before = s.stats()
        self.assertGreater(before["applets"], 0, before)
        s.haproxy.send_signal(signal.SIGUSR1)
        self.assertIsNotNone(s.haproxy.wait(), s.logs())
        self.assertTrue(harness.wait_for(lambda: s.stats()["applets"] == 0), (s.stats(), s.logs()))
        out = s.spoad.output()
        resets = out.count("closed by peer (ECONNRESET)")
        self.assertGreater(resets, 0, ("no connection reset seen", s.logs()))
        st = s.stats()
        self.assertEqual(st["nb_error"], 0, st)
        self.assertEqual(st["disconnects_received"], before["disconnects_received"], st)
        self.assertEqual({k: v for k, v in st.items() if k.startswith("disconnect_") and v},
                         {k: v for k, v in before.items() if k.startswith("disconnect_") and v},
                         st)
        self.assertEqual(log_lines_at(out, ("warning", "error", "critical")), [], s.logs())
        # The resets show at debug level only (spoad runs with log-level debug here).
        resets_logged = [ln for ln in out.splitlines() if "ECONNRESET" in ln]
        self.assertEqual(log_lines_at("\n".join(resets_logged), ("debug",)), resets_logged)
        self.assertTrue(s.spoad.alive())
        print("%s: %d connection(s) reset by HAProxy: 0 errors, no warning or error logged"
              % (version_text(), resets))


class SpopModeBackend(unittest.TestCase):
    def setUp(self):
        need(3, 1, "`mode spop` appeared in 3.1 (2.6 backends are `mode tcp`)")

    def test_mode_spop_backend_with_spop_check(self):
        s = EchoStack(self, workers=2, nbthread=2, mode="spop")

        def up():
            row = stack.server_row(s.stats_sock, "spoe-echo", "spoad")
            return row if row and row.get("status") == "UP" else None
        row = harness.wait_for(up)
        self.assertIsNotNone(row, s.logs())
        self.assertEqual(row.get("check_status"), "L7OK", row)
        for i in range(50):
            rid = "spop-%d" % i
            s.check_answer(self, rid, s.get(rid))
        st = s.stats()
        self.assertGreater(st["healthchecks"], 0, st)
        self.assertEqual(st["nb_error"], 0, st)


class NoFragmentation(unittest.TestCase):
    def setUp(self):
        need(3, 1, "HAProxy before 3.1 fragments a message larger than the frame size "
                   "(test_haproxy.Fragmentation)")

    def test_message_above_the_frame_size_fails_in_haproxy(self):
        # spoad announces 4096 bytes; HAProxy's own frame size is tune.bufsize - 4 (16380).
        s = EchoStack(self, workers=1, nbthread=1, extra="    max-frame-size: 4096\n")
        small = os.urandom(1000)
        st, hdrs, _ = s.get("small", body=small)
        self.assertEqual((st, hdrs.get("x-len"), hdrs.get("x-err")), (200, "1000", None),
                         (hdrs, s.logs()))
        before = s.stats()
        st, hdrs, _ = s.get("big", body=os.urandom(10000))
        # 3.x cannot send it: SPOE status 256 + 3 (SPOP "frame is too big"); the request goes
        # on (set-on-error); the agent never sees a fragment.
        self.assertEqual(st, 200, s.logs())
        self.assertEqual(hdrs.get("x-err"), "259", (hdrs, s.logs()))
        self.assertIsNone(hdrs.get("x-len") or None, hdrs)
        after = s.stats()
        self.assertEqual(after["fragmented"], 0, after)
        self.assertEqual(after["nb_error"], 0, after)
        # Neither the big message nor, the transaction's SPOE being off after the error, the
        # response event reached the agent.
        self.assertEqual(after["cum_notify"] - before["cum_notify"], 0, (before, after))
        # The connection stays usable.
        st, hdrs, _ = s.get("after", body=small)
        self.assertEqual((st, hdrs.get("x-len"), hdrs.get("x-err")), (200, "1000", None), hdrs)


if __name__ == "__main__":
    unittest.main(verbosity=2)
