"""Hostile input on the control side: the configuration file, the master CLI and HELLO strings.

Bytes are bytes: Latin-1, control bytes, NUL and invalid UTF-8 travel from the file, the CLI
and HAProxy's HELLO to the master and the workers (the channel carries typed binary messages,
lib/supervisor/messages.h) and never crash a process. Covered, with the real spoad:

- configuration files with such bytes in comments, keys and values: `spoad -c` and a start
  agree on each (both accept and the agent serves, reading the value's exact bytes, or both
  refuse with exit status 1), a file over 16 MiB included;
- a reload with a broken file (parse errors naming the key with bad bytes, a list file the
  worker cannot load) answers Success=0 with FILE:LINE:KEY, counts `[failed: N]`, logs it
  escaped, and the old workers keep serving (SPOP exchanges and CLI answers from the same
  pids); a valid file with a Latin-1 comment then reloads;
- the master CLI: `@1 show ip` with 0xff, NUL, ESC, '\\r', 63 x 'a' + 'é', the bytes 5c 0d
  (a backslash escaping '\\r': the word reaches the worker unchanged), an unknown target with
  ESC; answers hold no raw control byte;
- CLI budgets: a line longer than cli.max-line, several MB of commands queued behind a command
  whose worker is stopped (SIGSTOP) and several MB without a newline: each flooding client gets
  its error line and is closed, counted in the master's `show info` / `show stat`, logged;
  another client is answered meanwhile and the master's RSS stays under a bound;
- cli.max-line / cli.max-queued: checked with FILE:LINE:KEY, shown by `show info`, applied
  at reload;
- HAPROXY-HELLO with engine-id 0xff and control bytes in every string field: the workers keep
  their pids and still serve.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402


def raw_cli(sock_path, data, timeout=None):
    """Sends `data` (bytes) and EOF to the master CLI; returns every byte it wrote until it
    closed the connection."""
    timeout = harness.GUARD_S if timeout is None else timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return sv._recv_all(s, time.monotonic() + timeout)
    finally:
        s.close()


def check_spoad(*args):
    """`spoad ARGS` (e.g. -c -f FILE): (exit status, stdout + stderr as bytes)."""
    r = subprocess.run([harness.SPOAD] + list(args), capture_output=True, timeout=harness.GUARD_S)
    return r.returncode, r.stdout + r.stderr


def no_raw_controls(b):
    """True if `b` has no control byte but '\\n' (nor DEL): nothing can forge a line or move a
    terminal's cursor."""
    return not any((c < 0x20 and c != 0x0A) or c == 0x7F for c in b)


def master_info(sock_path):
    return sv.parse_info(sv.cli(sock_path, "show info"))


def iprep_cfg(port, sock, workers=1, extra=b"", name=b"iprep", allow_name=b"office"):
    """A spoad file (bytes) with one ip-checker agent on `port`; `extra` lines go in the agent's
    mapping, `allow_name` names its allow list."""
    text = sv.config([sv.iprep_agent(port, workers)], socket_path=sock, grace="2s").encode()
    text = text.replace(b"name: iprep", b"name: " + name, 1)
    text = text.replace(b"name: office", b"name: " + allow_name, 1)
    return text.replace(b"    allow:\n", extra + b"    allow:\n", 1)


class ConfigCheckAgreesWithStart(unittest.TestCase):
    """Each file is accepted by both `spoad -c` and a start (which then serves), or refused by
    both with exit status 1 (never a crash)."""

    @staticmethod
    def argument(value):
        """The ip-checker's `argument` (the NOTIFY argument holding the address) set to `value`
        (YAML bytes)."""
        return lambda t: t.replace(b"    allow:\n", b"    argument: " + value + b"\n    allow:\n", 1)

    CASES = [
        # (name, how the file is changed, valid or not (None: either), the argument name the
        #  agent must then read, as bytes, when the value reaches the worker)
        ("latin1-comment", lambda t: b"# caf\xe9\n" + t, True, None),
        ("control-bytes-comment", lambda t: b"# \x01\x02\x1b[31m\x7f\x08 x\n" + t, None, None),
        ("nul-comment", lambda t: b"# a\x00b\n" + t, None, None),
        ("latin1-value", argument(b"caf\xe9"), True, b"caf\xe9"),
        ("overlong-nul-value", argument(b"a\xc0\x80"), True, b"a\xc0\x80"),
        ("surrogate-value", argument(b"\xed\xa0\x80"), True, b"\xed\xa0\x80"),
        ("above-U+10FFFF-value", argument(b"\xf5\x80\x80\x80"), True, b"\xf5\x80\x80\x80"),
        ("esc-and-nul-value", argument(b'"\\e[2J\\0x"'), None, b"\x1b[2J\x00x"),
        ("raw-control-value", argument(b"a\x01\x7fb"), None, b"a\x01\x7fb"),
        ("invalid-list-name", lambda t: t.replace(b"name: office", b"name: caf\xe9", 1), False, None),
        ("latin1-unknown-key", lambda t: t.replace(b"    allow:\n", b"    colo\xe9r: red\n    allow:\n", 1),
         False, None),
        ("latin1-agent-name", lambda t: t.replace(b"name: iprep", b"name: ipr\xe9p", 1), False, None),
        ("yaml-error-with-ff", lambda t: t + b"  - [\xff\n", False, None),
        # Over 16 MiB (config::kMaxFileBytes): refused by both, not sent to workers.
        ("larger-than-16MiB", lambda t: t + b"# " + b"x" * (16 << 20) + b"\n", False, None),
        ("control-bytes-in-listen", lambda t: re.sub(rb"listen: (\S+)", b"listen: \\1\x1b", t, 1),
         False, None),
    ]

    def setUp(self):
        self.env = harness.Env("hostile-cfg")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)

    def test_check_and_start_agree(self):
        summary = []
        for name, change, valid, argname in self.CASES:
            with self.subTest(case=name):
                port = harness.free_port()
                sock = self.env.path(name + ".sock")
                path = self.env.path(name + ".yaml")
                with open(path, "wb") as f:
                    f.write(change(iprep_cfg(port, sock)))
                rc, out = check_spoad("-c", "-f", path)
                self.assertIn(rc, (0, 1), (name, out))
                if valid is not None:
                    self.assertEqual(rc == 0, valid, (name, out))
                p = self.env.spoad(path, name=name)
                sp = sv.wait_pool(sock, 1, proc=p)
                started = sp is not None
                if started:
                    self.tracker.add_proc(sp)
                    acts = sv.check_ip(port, "127.0.0.66")
                    self.assertEqual(acts.get("txn.blocked"), True, (name, acts))
                    if argname is not None:
                        # The worker reads the argument named by exactly these bytes: the
                        # first argument (not an address) is not the one it uses.
                        self.assertEqual(self.check_named(port, argname).get("txn.blocked"),
                                         True, name)
                    p.stop()
                else:
                    status = p.wait(harness.GUARD_S)
                    self.assertEqual(status, 1, ("a refused file must exit 1, not crash", name,
                                                 p.output()[-3000:]))
                self.assertEqual(started, rc == 0,
                                 ("spoad -c and the start disagree", name, out, p.output()[-3000:]))
                summary.append("%s: -c %d, start %s" % (name, rc, "ok" if started else "refused"))
        print("\n".join(summary))

    def check_named(self, port, argname):
        c = spop.Client(("127.0.0.1", port), timeout=harness.GUARD_S)
        try:
            c.handshake()
            c.send(spop.notify(1, 1, [("check-client-ip", [
                ("x", "not an address"), (argname, spop.Typed(spop.T_IPV4, "127.0.0.66"))])]))
            f = c.recv_frame()
            self.assertEqual(f.type, spop.ACK)
            return f.actions()
        finally:
            c.close()


BROKEN_LIST = b"192.0.2.0/24\ncaf\xe9 \x1b[31m\n"


class ReloadWithBrokenFiles(unittest.TestCase):
    """A reload with any broken file changes nothing but the failure counter."""

    def setUp(self):
        self.env = harness.Env("hostile-reload")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)

    def test_broken_files_keep_old_workers(self):
        port = harness.free_port()
        sock = self.env.path("master.sock")
        path = self.env.path("spoad.yaml")
        good = iprep_cfg(port, sock, workers=2)
        with open(path, "wb") as f:
            f.write(good)
        spoad = self.env.spoad(path)
        sp0 = sv.wait_pool(sock, 2, proc=spoad)
        self.tracker.add_proc(sp0)
        self.assertIsNotNone(sp0, self.env.dump_logs())
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)), self.env.dump_logs())
        bad_list = self.env.path("bad-list.txt")
        with open(bad_list, "wb") as f:
            f.write(BROKEN_LIST)
        lines = good.split(b"\n")
        allow = lines.index(b"    allow:") + 1  # the line the inserted key takes
        agent_line = lines.index(b"  - name: iprep") + 1
        cases = [
            # (name, file, bytes expected in the Success=0 answer)
            ("latin1-key", good.replace(b"    allow:\n", b"    colo\xe9r: red\n    allow:\n", 1),
             ("%s:%d: agents[0].colo\\xe9r: unknown key" % (path, allow)).encode()),
            ("esc-key", good.replace(b"    allow:\n", b"    x\x1b[2J: red\n    allow:\n", 1),
             ("%s:%d: agents[0].x\\x1b[2J: unknown key" % (path, allow)).encode()),
            ("yaml-error-ff", good + b"  - [\xff\n", b"YAML syntax error"),
            # Parsed fine by the master; the new worker cannot load the list: its error comes
            # back through the channel, with the list's bad bytes.
            ("worker-list-error",
             good.replace(b"    deny:\n", b"    deny:\n      - name: bad\n        score: 10\n"
                          b"        file: " + bad_list.encode() + b"\n", 1),
             ("%s:%d: agents: iprep: " % (path, agent_line)).encode()),
        ]
        failed = 0
        for name, text, expected in cases:
            with self.subTest(case=name):
                with open(path, "wb") as f:
                    f.write(text)
                rc, out = check_spoad("-c", "-f", path)
                self.assertEqual(rc, 1, (name, "spoad -c accepts a file the reload refuses", out))
                answer = raw_cli(sock, b"reload\n")
                failed += 1
                ctx = (name, answer, sv.tail_logs(self.env))
                self.assertTrue(answer.startswith(b"Success=0\n--\n"), ctx)
                self.assertIn(expected, answer, ctx)
                self.assertTrue(no_raw_controls(answer), ctx)
                self.assertTrue(all(b < 0x80 for b in answer), ("unescaped bytes", ctx))
                self.assert_old_workers_serve(sock, port, sp0, failed, ctx)
        # SIGHUP with a broken file: one more failure, nothing else.
        with open(path, "wb") as f:
            f.write(cases[0][1])
        spoad.send_signal(signal.SIGHUP)
        failed += 1
        self.assertTrue(harness.wait_for(
            lambda: (sv.try_show_proc(sock) or sp0).master.failed == failed), self.env.dump_logs())
        self.assert_old_workers_serve(sock, port, sp0, failed, "SIGHUP")
        # The log says why, escaped: no raw control byte in the master's output.
        log = spoad.output()
        self.assertIn("reload failed, the current workers keep serving", log)
        self.assertIn("colo\\xe9r: unknown key", log)
        self.assertNotIn("\x1b", log, "a control byte from the file reached the log")
        self.assertEqual(int(master_info(sock)["FailedReloads"]), failed)
        # A valid file with a Latin-1 comment (it killed every process before) reloads.
        with open(path, "wb") as f:
            f.write(b"# caf\xe9 \x1b[31m\n" + good)
        answer = raw_cli(sock, b"reload\n")
        self.assertTrue(answer.startswith(b"Success=1\n"), (answer, sv.tail_logs(self.env)))
        sp = sv.wait_pool(sock, 2, exclude=sp0.pids(), proc=spoad)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, self.env.dump_logs())
        self.assertEqual(sp.master.pid, spoad.pid)
        self.assertEqual(sp.master.reloads_field, "1 [failed: %d]" % failed, sp.text)
        self.assertEqual(sv.check_ip(port, "127.0.0.66").get("txn.blocked"), True)
        print("failed reloads: %d, then one good reload; old pids %s, new %s"
              % (failed, sorted(sp0.pids()), sorted(sp.pids())))

    def assert_old_workers_serve(self, sock, port, sp0, failed, ctx):
        sp = sv.show_proc(sock)
        self.assertEqual(sp.pids(), sp0.pids(), (sp.text, ctx))
        self.assertFalse(sp.has_old_section, (sp.text, ctx))
        self.assertEqual(sp.master.reloads_field, "0 [failed: %d]" % failed, (sp.text, ctx))
        for r in sp0.workers:
            self.assertTrue(harness.pid_alive(r.pid), ctx)
            info = sv.parse_info(sv.cli(sock, "@%d show info" % r.rel))
            self.assertEqual(info.get("Pid"), str(r.pid), ctx)
        for _ in range(6):  # several connections: SO_REUSEPORT spreads them over both workers
            acts = sv.check_ip(port, "127.0.0.66")
            self.assertEqual((acts.get("txn.blocked"), acts.get("txn.list")), (True, "demo-drop"),
                             ctx)


class HostileCli(unittest.TestCase):
    """Bad bytes and floods on the master CLI."""

    @classmethod
    def setUpClass(cls):
        cls.env = harness.Env("hostile-cli")
        cls.tracker = sv.Tracker()
        cls.port = harness.free_port()
        cls.sock = cls.env.path("master.sock")
        path = cls.env.path("spoad.yaml")
        with open(path, "wb") as f:
            f.write(iprep_cfg(cls.port, cls.sock, workers=2))
        cls.spoad = cls.env.spoad(path)
        cls.sp = sv.wait_pool(cls.sock, 2, proc=cls.spoad)
        cls.tracker.add_proc(cls.sp)
        if cls.sp is None or not harness.wait_for(lambda: harness.port_open(cls.port)):
            logs = cls.env.dump_logs()
            cls.env.stop()
            cls.tracker.cleanup()
            raise RuntimeError("spoad did not start:\n" + logs)
        cls.version = sv.spoad_version()

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        cls.tracker.cleanup()

    def tearDown(self):
        # Every test leaves the same processes serving.
        sp = sv.show_proc(self.sock)
        self.assertEqual(sp.master.pid, self.spoad.pid)
        self.assertEqual(sp.pids(), self.sp.pids(), sp.text)
        self.assertEqual(sv.check_ip(self.port, "127.0.0.66").get("txn.blocked"), True)

    def test_bytes_in_worker_commands(self):
        a63 = b"a" * 63
        cases = [
            # (CLI input, bytes the worker's answer must hold)
            (b"@1 show ip \xff\n", b'not an IP address: "\\xff"'),
            (b"@2 show ip a\x00b\n", b'not an IP address: "a\\x00b"'),
            (b"@1 show ip \x1b[2J\x1b]0\x07\n", b'not an IP address: "\\x1b[2J\\x1b]0\\x07"'),
            (b"@1 show ip " + a63 + "é".encode() + b"\n", b'not an IP address: "' + a63 + b"\\xc3"),
            (b"@2 show ip \xc0\x80\xed\xa0\x80\xf5\n", b'"\\xc0\\x80\\xed\\xa0\\x80\\xf5"'),
            # 5c 0d: the backslash makes '\r' a word of its own; the worker gets it unchanged
            # (it used to be re-joined unescaped, then split away: "usage: show ip").
            (b"@1 show ip \\\r\n", b'not an IP address: "\\x0d"'),
            (b"@1 show ip x\\\ry\n", b'not an IP address: "x\\x0dy"'),
            (b"@2 show ip a\\;b\\ c\n", b'not an IP address: "a;b c"'),
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                out = raw_cli(self.sock, data)
                self.assertIn(expected, out, (out, sv.tail_logs(self.env)))
                self.assertTrue(no_raw_controls(out), out)
                self.assertTrue(out.endswith(b"\n\n"), out)
        # The 5c 0d case in prompt mode, with worker 1 as the target: same words.
        s = sv.Session(self.sock)
        try:
            s.send("prompt")
            s.read_until("master> ")
            pid1 = self.sp.worker(1).pid
            s.command("@1", "%d> " % pid1)
            s.s.sendall(b"show ip \\\r\n")
            out = s.read_until("%d> " % pid1)
            self.assertIn('not an IP address: "\\x0d"', out)
        finally:
            s.close()

    def test_bytes_in_master_commands(self):
        for data in (b"\xff\n", b"show \x00proc\n", b"\x1b[2J\x1b[H\n", b"show proc\xff\n",
                     b"help \xc3\n", b"\r\r\r\n", b"prompt\n\xff\n"):
            with self.subTest(data=data):
                out = raw_cli(self.sock, data)
                self.assertTrue(no_raw_controls(out), out)
                self.assertTrue(all(b < 0x80 for b in out), out)
        out = raw_cli(self.sock, b"@\x1b[2J show info\n")
        self.assertEqual(out, b"Can't find the target PID matching the prefix '@\\x1b[2J'\n")

    def flood(self, sock_path, chunk, total, result):
        """Sends `chunk` repeatedly (`total` bytes in all) on a new connection, reading what
        comes back meanwhile, until the master closes it; stores the bytes received, the bytes
        sent, and whether the master closed the connection, in `result`."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        s.setblocking(False)
        got, sent, closed = bytearray(), 0, False
        data = chunk * max(1, 65536 // len(chunk))
        deadline = time.monotonic() + harness.GUARD_S
        try:
            while not closed and time.monotonic() < deadline:
                want_write = [s] if sent < total else []
                readable, writable, _ = select.select([s], want_write, [], 1.0)
                if writable:
                    try:
                        sent += s.send(data[:min(len(data), total - sent)])
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        closed = True
                if readable:
                    try:
                        b = s.recv(65536)
                        got += b
                        closed = closed or not b
                    except BlockingIOError:
                        pass
                    except ConnectionResetError:
                        closed = True
        finally:
            s.close()
        result.update(got=bytes(got), sent=sent, closed=closed)

    def assert_served_during(self, thread, result, worker_rels):
        """While `thread` floods, another client keeps getting answers from the master and the
        workers; returns (answers seen, the master's highest RSS in KiB)."""
        answers, max_rss = 0, harness.rss_kib(self.spoad.pid)
        while True:
            self.assertEqual(sv.cli(self.sock, "show version"), self.version + "\n\n")
            for rel in worker_rels:
                info = sv.parse_info(sv.cli(self.sock, "@%d show info" % rel))
                self.assertEqual(info.get("Pid"), str(self.sp.worker(rel).pid))
            answers += 1
            max_rss = max(max_rss, harness.rss_kib(self.spoad.pid))
            if not thread.is_alive() and answers >= 3:
                return answers, max_rss

    # The master's RSS bound during a flood: what it used before, plus every budget at once
    # (max-queued 1 MiB of commands, which costs about 2 MiB of real memory with the deque
    # and string overheads, a line of at most max-line 64 KiB, 4 MiB of unread output) for
    # the flooding client, plus 16 MiB of allocator slack. Before the budgets, 34 MB of input
    # took the master to 1.3 GB.
    RSS_MARGIN_KIB = 24 * 1024

    def test_flood_behind_a_stopped_worker(self):
        # Worker 2 stopped: the routed command waits for it (up to the master's CLI timeout),
        # so every command sent after it queues in the master.
        w2 = self.sp.worker(2).pid
        before = master_info(self.sock)
        rss0 = harness.rss_kib(self.spoad.pid)
        os.kill(w2, signal.SIGSTOP)
        try:
            result = {}
            total = 8 << 20
            t = threading.Thread(target=lambda: self.flood(
                self.sock, b"@2 show info\n" + b"@1 show ip 127.0.0.66\n" * 3, total, result))
            t.start()
            answers, max_rss = self.assert_served_during(t, result, [1])
            t.join()
        finally:
            os.kill(w2, signal.SIGCONT)
        ctx = (result.get("sent"), result.get("got", b"")[-300:], sv.tail_logs(self.env))
        self.assertTrue(result["closed"], ctx)
        self.assertIn(b"Too many pending commands (more than 1048576 bytes queued).\n",
                      result["got"], ctx)
        self.assertLess(result["sent"], total, ("the master read everything", ctx))
        after = master_info(self.sock)
        self.assertEqual(int(after["CliQueueFull"]), int(before["CliQueueFull"]) + 1, after)
        self.assertLess(max_rss, rss0 + self.RSS_MARGIN_KIB, (rss0, max_rss))
        self.assertTrue(harness.wait_log(self.spoad, "master CLI: client closed: more than 1048576 "
                                                     "bytes of commands queued"))
        # Worker 2 answers again once it runs.
        self.assertTrue(harness.wait_for(lambda: sv.parse_info(
            sv.try_cli(self.sock, "@2 show info") or "").get("Pid") == str(w2)))
        print("queue flood: %d bytes sent before the close, %d answers to another client "
              "meanwhile, master RSS %d KiB before, %d KiB at most"
              % (result["sent"], answers, rss0, max_rss))

    def test_line_too_long_and_flood_without_newline(self):
        before = master_info(self.sock)
        rss0 = harness.rss_kib(self.spoad.pid)
        result = {}
        total = 6 << 20
        t = threading.Thread(target=lambda: self.flood(self.sock, b"@1 show ip " + b"x" * 4096,
                                                       total, result))
        t.start()
        answers, max_rss = self.assert_served_during(t, result, [1, 2])
        t.join()
        ctx = (result.get("sent"), result.get("got", b"")[-300:], sv.tail_logs(self.env))
        self.assertTrue(result["closed"], ctx)
        self.assertEqual(result["got"], b"Command line too long (more than 65536 bytes).\n", ctx)
        # One long line ending with '\n' right away is refused the same way.
        out = raw_cli(self.sock, b"show version " + b"y" * 70000 + b"\nshow version\n")
        self.assertEqual(out, b"Command line too long (more than 65536 bytes).\n")
        # Just under the limit is a command like another (the worker says what it is).
        out = raw_cli(self.sock, b"@1 show ip " + b"z" * 65000 + b"\n")
        self.assertIn(b"not an IP address", out)
        after = master_info(self.sock)
        self.assertEqual(int(after["CliLineTooLong"]), int(before["CliLineTooLong"]) + 2, after)
        self.assertLess(max_rss, rss0 + self.RSS_MARGIN_KIB, (rss0, max_rss))
        # The counters are in the master's show stat too (CSV and JSON).
        csv = sv.cli(self.sock, "show stat").split("\n")
        names, values = csv[0][2:].split(","), csv[1].split(",")
        row = dict(zip(names, values))
        self.assertEqual(row["process"], "master", csv)
        self.assertEqual(int(row["cli_line_too_long"]), int(after["CliLineTooLong"]), csv)
        js = sv.load_json(sv.cli(self.sock, "show stat json"))
        self.assertEqual(js["master"]["cli_line_too_long"], int(after["CliLineTooLong"]), js)
        print("line flood: %d bytes sent before the close, %d answers to another client "
              "meanwhile, master RSS %d KiB before, %d KiB at most"
              % (result["sent"], answers, rss0, max_rss))


class CliBudgetKeys(unittest.TestCase):
    """cli.max-line and cli.max-queued: checked with file:line:key, shown, applied at reload."""

    def setUp(self):
        self.env = harness.Env("hostile-keys")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)

    def test_keys(self):
        port = harness.free_port()
        sock = self.env.path("master.sock")
        path = self.env.path("spoad.yaml")
        base = iprep_cfg(port, sock)
        bad = base.replace(b"  socket: ", b"  max-line: 10\n  socket: ", 1)
        with open(path, "wb") as f:
            f.write(bad)
        rc, out = check_spoad("-c", "-f", path)
        line = bad.split(b"\n").index(b"  max-line: 10") + 1
        self.assertEqual(rc, 1, out)
        self.assertIn(("%s:%d: cli.max-line:" % (path, line)).encode(), out)
        with open(path, "wb") as f:
            f.write(base.replace(b"  socket: ", b"  max-line: 2k\n  max-queued: 8k\n  socket: ", 1))
        spoad = self.env.spoad(path)
        sp = sv.wait_pool(sock, 1, proc=spoad)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, self.env.dump_logs())
        info = master_info(sock)
        self.assertEqual((info["CliMaxLine"], info["CliMaxQueued"]), ("2048", "8192"), info)
        out = raw_cli(sock, b"@1 show ip " + b"q" * 2100 + b"\n")
        self.assertEqual(out, b"Command line too long (more than 2048 bytes).\n")
        self.assertIn(b"not an IP address", raw_cli(sock, b"@1 show ip " + b"q" * 2000 + b"\n"))
        # A reload applies new values to the master CLI.
        with open(path, "wb") as f:
            f.write(base)
        self.assertTrue(raw_cli(sock, b"reload\n").startswith(b"Success=1\n"))
        info = master_info(sock)
        self.assertEqual((info["CliMaxLine"], info["CliMaxQueued"]), ("65536", "1048576"), info)
        self.assertIn(b"not an IP address", raw_cli(sock, b"@1 show ip " + b"q" * 2100 + b"\n"))


class HostileHello(unittest.TestCase):
    """HAPROXY-HELLO strings with any bytes: the worker answers (AGENT-HELLO or a DISCONNECT),
    the engine-id reaches the master, nothing crashes."""

    FIELD_VALUES = [b"\xff", b"\x00", b"\x1b[31m\r\n[ALERT] forged", b"\xc0\x80", b"\xed\xa0\x80",
                    b"\xf5\x80\x80\x80", b"a" * 63 + "é".encode()[:1], b"\x7f\x08\t"]

    def setUp(self):
        self.env = harness.Env("hostile-hello")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)

    def hello(self, **fields):
        items = [("supported-versions", spop.Typed(spop.T_STR, fields.get("versions", b"2.0"))),
                 ("max-frame-size", spop.Typed(spop.T_UINT32, 16380)),
                 ("capabilities", spop.Typed(spop.T_STR, fields.get("caps", b"pipelining"))),
                 ("engine-id", spop.Typed(spop.T_STR, fields.get("engine", b"e")))]
        return spop.frame(spop.HAPROXY_HELLO, spop.kv(items))

    def test_hello_strings(self):
        port = harness.free_port()
        sock = self.env.path("master.sock")
        path = self.env.path("spoad.yaml")
        with open(path, "wb") as f:
            f.write(iprep_cfg(port, sock, workers=2))
        spoad = self.env.spoad(path)
        sp0 = sv.wait_pool(sock, 2, proc=spoad)
        self.tracker.add_proc(sp0)
        self.assertIsNotNone(sp0, self.env.dump_logs())
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)))
        outcomes = {}
        n = 0
        for field in ("engine", "versions", "caps"):
            for value in self.FIELD_VALUES + [b"\xff" * 5000]:
                for _ in range(3):  # several connections: both workers get some
                    n += 1
                    c = spop.Client(("127.0.0.1", port), timeout=harness.GUARD_S)
                    try:
                        c.send(self.hello(**{field: value}))
                        f = c.recv_frame()
                        self.assertIsNotNone(f, (field, value, sv.tail_logs(self.env)))
                        kind = {spop.AGENT_HELLO: "hello", spop.AGENT_DISCONNECT: "disconnect"}
                        outcomes[(field, kind.get(f.type, f.type))] = \
                            outcomes.get((field, kind.get(f.type, f.type)), 0) + 1
                        if f.type == spop.AGENT_HELLO:
                            # Still served on this connection.
                            c.send(spop.notify(1, 1, [("check-client-ip", [
                                ("ip", spop.Typed(spop.T_IPV4, "127.0.0.66"))])]))
                            a = c.recv_frame()
                            self.assertIsNotNone(a, (field, value))
                            self.assertEqual(a.type, spop.ACK, (field, value))
                            self.assertEqual(a.actions().get("txn.blocked"), True)
                    finally:
                        c.close()
        # engine-id 0xff must be served like any engine-id.
        self.assertEqual(outcomes.get(("engine", "hello")), 3 * (len(self.FIELD_VALUES) + 1),
                         outcomes)
        sp = sv.show_proc(sock)
        self.assertEqual(sp.pids(), sp0.pids(), ("a worker died", sp.text, sv.tail_logs(self.env)))
        self.assertEqual(master_info(sock).get("Respawns"), "0")
        for r in sp0.workers:
            self.assertEqual(sv.parse_info(sv.cli(sock, "@%d show info" % r.rel)).get("Pid"),
                             str(r.pid))
        self.assertEqual(sv.check_ip(port, "127.0.0.66").get("txn.blocked"), True)
        self.assertNotIn("\x1b", spoad.output(), "a HELLO byte reached the log raw")
        print("%d HELLOs with hostile strings: %s; workers %s unchanged"
              % (n, sorted(outcomes.items()), sorted(sp0.pids())))


if __name__ == "__main__":
    unittest.main(verbosity=2)
