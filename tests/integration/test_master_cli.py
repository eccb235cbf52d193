"""The master CLI of the supervisor (spoad -f FILE with `cli.socket`), through socat and directly.

- `show proc`: HAProxy's fixed-width layout with a <relative PID> column; the master and one row
  per worker (type = agent name, relative PIDs 1..N in config order), live PIDs, children of
  the master;
- routing: `@N CMD`, `@!PID CMD`, `@master CMD`, `@1 show info; show version`, unknown targets;
- pool-wide commands, `@<agent name> CMD` and `@<agent name>` alone: the same answer once, or
  each distinct one under its workers' header, then "# <agent>: applied on N of M workers" with
  the failed and gone counts (a worker SIGSTOPped: no answer; SIGKILLed meanwhile: gone);
  unknown names;
- master commands: help, show version, unknown commands, prompt mode, quit;
- worker commands: show info (+json), show stat (+json), help, the ip-checker's show lists and
  show ip;
- at most 10 clients served at once; stuck clients stall neither the master nor the workers;
- the socket's permission bits (cli.mode), `-S` over cli.socket, the pidfile.

One spoad serves every class that needs no fresh process (Stack, started by setUpModule).
"""
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import termios
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import supervisor as sv  # noqa: E402

HELP_TAIL = [
    "  help [<command>]                        : list matching or all commands",
    "  prompt                                  : toggle interactive mode with prompt",
    "  quit                                    : disconnect",
]


def check_usage_lines(tc, lines, ctx):
    """Each line is "  <usage padded to 40>: <description>"."""
    for line in lines:
        tc.assertTrue(line.startswith("  ") and ": " in line, (line, ctx))
        usage, desc = line[2:].split(": ", 1)
        usage = usage.rstrip()
        tc.assertEqual(line, "  %-40s: %s" % (usage, desc), ("usage not padded to 40", ctx))


class Stack:
    """The module's spoad, shared by the classes that need no fresh process: agents iprep
    (ip-checker) and echo, 2 workers each, TCP; the CLI socket with the default mode, a
    pidfile from `global.pidfile`."""
    env = None

    @classmethod
    def start(cls):
        cls.env = harness.Env("mcli")
        cls.tracker = sv.Tracker()
        cls.iprep_port, cls.echo_port = harness.free_port(), harness.free_port()
        cls.sock = cls.env.path("master.sock")
        cls.pidfile = cls.env.path("global.pid")
        cls.cfg = cls.env.write("spoad.yaml", sv.config(
            [sv.iprep_agent(cls.iprep_port, 2), sv.echo_agent(cls.echo_port, 2)],
            socket_path=cls.sock, grace="60s", pidfile=cls.pidfile))
        cls.spoad = cls.env.spoad(cls.cfg)
        cls.sp = sv.wait_pool(cls.sock, 4, proc=cls.spoad)
        cls.tracker.add_proc(cls.sp)
        if cls.sp is None:
            logs = cls.env.dump_logs()
            cls.stop()
            raise RuntimeError("spoad did not start 4 workers:\n" + logs)
        if not (harness.wait_for(lambda: harness.port_open(cls.iprep_port))
                and harness.wait_for(lambda: harness.port_open(cls.echo_port))):
            logs = cls.env.dump_logs()
            cls.stop()
            raise RuntimeError("the agents' ports are not open:\n" + logs)
        cls.version = sv.spoad_version()

    @classmethod
    def stop(cls):
        if cls.env is not None:
            cls.env.stop()
            cls.tracker.cleanup()
            cls.env = None


def setUpModule():
    Stack.start()


def tearDownModule():
    Stack.stop()


class Shared(unittest.TestCase):
    """A test class on the module's spoad."""

    @classmethod
    def setUpClass(cls):
        for k in ("env", "tracker", "iprep_port", "echo_port", "sock", "cfg", "spoad", "sp",
                  "version", "pidfile"):
            setattr(cls, k, getattr(Stack, k))


class TwoPools(Shared):
    """Acceptance 1: agents iprep (ip-checker) and echo, 2 workers each, TCP."""

    def logs(self):
        return sv.tail_logs(self.env)

    # --- show proc -------------------------------------------------------------------------

    def test_show_proc_through_socat(self):
        out = sv.socat_cmd(self.sock, "show proc")
        ctx = (out, self.logs())
        try:
            sp = sv.ShowProc(out)
        except ValueError as e:
            self.fail("%s\n%s" % (e, ctx))
        self.assertEqual(sp.header, sv.SHOW_PROC_HEADER, ctx)
        self.assertEqual(
            sp.header,
            "#<PID>          <type>          <relative PID>  <reloads>       <uptime>        "
            "<version>      ", ctx)
        self.assertTrue(out.endswith("\n\n"), ("the output ends with an empty line", ctx))
        # The master: the process we started, relative pid 0, no reload yet.
        m = sp.master
        self.assertEqual(m.pid, self.spoad.pid, ctx)
        self.assertEqual(m.type, "master", ctx)
        self.assertEqual(m.rel, 0, ctx)
        self.assertEqual(m.reloads_field, "0 [failed: 0]", ctx)
        self.assertEqual(m.version, self.version, ctx)
        self.assertEqual(m.line, m.expected_line(), ("columns of 15 characters", ctx))
        # Workers: 4 rows, relative pids 1-4 in config order, type = agent name.
        self.assertFalse(sp.has_old_section, ("no '# old workers' without old workers", ctx))
        self.assertEqual(len(sp.workers), 4, ctx)
        self.assertEqual({r.rel: r.type for r in sp.workers},
                         {1: "iprep", 2: "iprep", 3: "echo", 4: "echo"}, ctx)
        pids = [r.pid for r in sp.workers]
        self.assertEqual(len(set(pids)), 4, ("distinct pids", ctx))
        self.assertNotIn(m.pid, pids, ctx)
        for r in sp.workers:
            self.assertEqual(r.line, r.expected_line(), ("columns of 15 characters", ctx))
            self.assertTrue(harness.pid_alive(r.pid), ("worker %d not alive" % r.pid, ctx))
            self.assertEqual(sv.proc_ppid(r.pid), m.pid, ("worker %d is not the master's child"
                                                          % r.pid, ctx))
            self.assertTrue(sv.is_spoad(r.pid), ("worker %d does not run spoad" % r.pid, ctx))
            self.assertEqual(r.reloads, 0, ctx)
            self.assertIsNone(r.failed, ctx)
            self.assertEqual(r.version, self.version, ctx)
        self.assertEqual(set(pids), self.sp.pids(), ("the workers changed", ctx))

    def test_at_master_show_proc(self):
        out = sv.cli(self.sock, "@master show proc")
        sp = sv.ShowProc(out)
        self.assertEqual(sp.master.pid, self.spoad.pid, out)
        self.assertEqual(sp.pids(), self.sp.pids(), out)

    # --- routing ---------------------------------------------------------------------------

    def test_at_relative_pid_show_info(self):
        for rel, agent in ((1, "iprep"), (2, "iprep"), (3, "echo"), (4, "echo")):
            with self.subTest(rel=rel):
                out = sv.socat_cmd(self.sock, "@%d show info" % rel)
                info = sv.parse_info(out)
                ctx = (out, self.logs())
                self.assertEqual(info.get("Name"), "spoad", ctx)
                self.assertEqual(info.get("Pid"), str(self.sp.worker(rel).pid), ctx)
                self.assertEqual(info.get("Agent"), agent, ctx)
                self.assertEqual(info.get("Relative_pid"), str(rel), ctx)
                self.assertEqual(info.get("Version"), self.version, ctx)
                self.assertIn("Uptime", info, ctx)
                for k in ("Uptime_sec", "CurrConns", "CumConns", "CumNotify", "CumAck",
                          "CumErrors"):
                    self.assertRegex(info.get(k, ""), r"^\d+$", (k, ctx))
                self.assertTrue(out.endswith("\n\n"), ("ends with an empty line", ctx))

    def test_at_bang_pid_show_info(self):
        for rel in (1, 4):
            pid = self.sp.worker(rel).pid
            out = sv.socat_cmd(self.sock, "@!%d show info" % pid)
            info = sv.parse_info(out)
            self.assertEqual(info.get("Pid"), str(pid), out)
            self.assertEqual(info.get("Relative_pid"), str(rel), out)

    def test_prefix_applies_to_one_command_only(self):
        # `show info` goes to worker 1, `show version` runs in the master (a worker has no
        # `show version` command: it would answer "Unknown command").
        out = sv.socat_cmd(self.sock, "@1 show info; show version")
        lines = out.split("\n")
        self.assertIn("Pid: %d" % self.sp.worker(1).pid, lines, out)
        self.assertIn("Agent: iprep", lines, out)
        self.assertIn(self.version, lines, out)
        self.assertNotIn("Unknown command", out)
        self.assertLess(lines.index("Name: spoad"), lines.index(self.version), out)

    def test_unknown_target(self):
        for target in ("@!99999", "@9"):
            with self.subTest(target=target):
                out = sv.socat_cmd(self.sock, "%s show info" % target)
                self.assertEqual(out.split("\n")[0],
                                 "Can't find the target PID matching the prefix '%s'" % target, out)
                # The master closes the connection by itself (we do not send EOF), and does
                # not run what follows.
                s = sv.Session(self.sock)
                try:
                    s.send("%s show info; show version" % target)
                    self.assertTrue(s.closed_by_peer(), ("still open after an unknown target",
                                                          s.buf))
                    text = s.buf.decode()
                    self.assertIn("Can't find the target PID matching the prefix '%s'" % target,
                                  text)
                    self.assertNotIn(self.version, text.split("\n"))
                finally:
                    s.close()

    # --- pool-wide commands: @<agent name> --------------------------------------------------

    def test_at_agent_same_answer_once(self):
        out = sv.socat_cmd(self.sock, "@echo show version")
        self.assertEqual(out, self.version + "\n# echo: applied on 2 of 2 workers\n\n",
                         (out, self.logs()))

    def test_at_agent_distinct_answers_are_grouped(self):
        out = sv.cli(self.sock, "@iprep show info")
        ctx = (out, self.logs())
        self.assertTrue(out.endswith("\n# iprep: applied on 2 of 2 workers\n\n"), ctx)
        lines = out.split("\n")
        w1, w2 = self.sp.worker(1).pid, self.sp.worker(2).pid
        h1, h2 = "# workers 1 (pids %d):" % w1, "# workers 2 (pids %d):" % w2
        self.assertEqual(lines[0], h1, ctx)
        self.assertIn(h2, lines, ctx)
        i2 = lines.index(h2)
        # Each worker's own answer, whole, under its header.
        self.assertEqual(sv.parse_info("\n".join(lines[1:i2])).get("Pid"), str(w1), ctx)
        self.assertEqual(sv.parse_info("\n".join(lines[i2 + 1:-3])).get("Pid"), str(w2), ctx)
        self.assertEqual(sum(1 for line in lines if line.startswith("# workers ")), 2, ctx)

    def test_at_agent_failures_are_counted(self):
        out = sv.cli(self.sock, "@echo bogus cmd")
        ctx = (out, self.logs())
        self.assertEqual(out.split("\n")[0],
                         "Unknown command, but maybe one of the following ones is a better match:",
                         ctx)
        self.assertTrue(out.endswith("\n  quit                                    : disconnect\n"
                                     "# echo: applied on 0 of 2 workers, failed on 2\n\n"), ctx)
        self.assertNotIn("# workers", out, ctx)  # the same answer: once
        self.assertEqual(out.count("Unknown command"), 1, ctx)

    def test_at_agent_unknown_name(self):
        for target in ("@nosuch", "@no.such-agent", "@Echo"):
            with self.subTest(target=target):
                err = "Can't find the target agent matching the prefix '%s'\n" % target
                self.assertEqual(sv.socat_cmd(self.sock, "%s show info" % target), err)
                self.assertEqual(sv.cli(self.sock, target), err)  # alone, too
                # As for an unknown pid: the master closes without running what follows.
                s = sv.Session(self.sock)
                try:
                    s.send("%s show info; show version" % target)
                    self.assertTrue(s.closed_by_peer(), ("still open", s.buf))
                    self.assertEqual(s.buf.decode(), err)
                finally:
                    s.close()

    def test_at_agent_alone_is_a_sticky_target(self):
        pid1 = self.sp.worker(1).pid
        s = sv.Session(self.sock)
        try:
            s.send("prompt")
            s.read_until("master> ")
            s.command("@echo", "echo> ")
            out = s.command("show version", "echo> ")
            self.assertEqual(out, self.version + "\n# echo: applied on 2 of 2 workers\n\n")
            out = s.command("bogus", "echo> ")
            self.assertTrue(out.endswith("# echo: applied on 0 of 2 workers, failed on 2\n\n"),
                            out)
            self.assertEqual(s.command("", "echo> "), "")  # an empty line: the prompt only
            # A prefix: one command elsewhere, the pool stays the target.
            out = s.command("@1 show info", "echo> ")
            self.assertEqual(sv.parse_info(out).get("Pid"), str(pid1), out)
            s.command("@iprep", "iprep> ")
            out = s.command("show lists", "iprep> ")
            self.assertIn("demo-drop", out)
            self.assertTrue(out.endswith("\n# iprep: applied on 2 of 2 workers\n\n"), out)
            self.assertNotIn("# workers", out)
            s.command("@master", "master> ")
            out = s.command("show version", "master> ")
            self.assertEqual(out, self.version + "\n\n")
            s.send("quit")
            self.assertTrue(s.closed_by_peer(), ("quit did not close", s.buf))
        finally:
            s.close()

    # --- master commands -------------------------------------------------------------------

    def test_show_version(self):
        out = sv.socat_cmd(self.sock, "show version")
        self.assertEqual(out, self.version + "\n\n")

    def test_help(self):
        out = sv.socat_cmd(self.sock, "help")
        self.assertTrue(out.endswith("\n\n"), out)
        lines = out.split("\n")[:-2]
        self.assertEqual(lines[0], "The following commands are valid at this level:", out)
        self.assertEqual(lines[-3:], HELP_TAIL, out)
        body = lines[1:-3]
        check_usage_lines(self, body + lines[-3:], out)
        usages = [line[2:].split(": ", 1)[0].rstrip() for line in body]
        self.assertEqual(usages, sorted(usages), ("sorted by usage", out))
        for cmd in ("reload", "show proc", "show version", "@<agent name>"):
            self.assertIn(cmd, usages, out)

    def test_unknown_command(self):
        out = sv.socat_cmd(self.sock, "bogus cmd")
        self.assertTrue(out.endswith("\n\n"), out)
        lines = out.split("\n")[:-2]
        self.assertEqual(lines[0],
                         "Unknown command, but maybe one of the following ones is a better match:",
                         out)
        self.assertEqual(lines[-3:], HELP_TAIL, out)
        check_usage_lines(self, lines[1:], out)
        # The master is still fine.
        self.assertEqual(sv.cli(self.sock, "show version"), self.version + "\n\n")

    def test_several_commands_on_one_connection(self):
        # Non-interactive: the master answers each line and closes only after our EOF.
        s = sv.Session(self.sock)
        try:
            s.send("show version")
            self.assertEqual(s.read_until("\n\n"), self.version + "\n\n")
            s.send("@2 show info")
            out = s.read_until("\n\n")
            self.assertIn("Pid: %d\n" % self.sp.worker(2).pid, out)
            s.send("show version")
            s.s.shutdown(socket.SHUT_WR)
            self.assertTrue(s.closed_by_peer(), s.buf)
            self.assertEqual(s.buf.decode(), self.version + "\n\n")
        finally:
            s.close()

    def test_prompt_mode(self):
        pid1 = self.sp.worker(1).pid
        s = sv.Session(self.sock)
        try:
            s.send("prompt")
            s.read_until("master> ")
            out = s.command("show version", "master> ")
            self.assertIn(self.version + "\n", out)
            # `@1` alone: worker 1 becomes the target; the prompt is its pid.
            s.command("@1", "%d> " % pid1)
            out = s.command("show info", "%d> " % pid1)
            self.assertEqual(sv.parse_info(out).get("Pid"), str(pid1), out)
            self.assertEqual(sv.parse_info(out).get("Agent"), "iprep", out)
            out = s.command("show lists", "%d> " % pid1)
            self.assertIn("demo-drop", out)
            # Back to the master.
            s.command("@master", "master> ")
            out = s.command("show proc", "master> ")
            self.assertEqual(sv.ShowProc(out).master.pid, self.spoad.pid, out)
            # A prefix on the line: one command in worker 3, the prompt stays the master's.
            out = s.command("@3 show info", "master> ")
            self.assertEqual(sv.parse_info(out).get("Pid"), str(self.sp.worker(3).pid), out)
            s.send("quit")
            self.assertTrue(s.closed_by_peer(), ("quit did not close", s.buf))
        finally:
            s.close()

    # --- worker commands -------------------------------------------------------------------

    def test_show_info_json(self):
        for rel, agent in ((1, "iprep"), (3, "echo")):
            with self.subTest(rel=rel):
                out = sv.cli(self.sock, "@%d show info json" % rel)
                fields = sv.info_json_fields(sv.load_json(out))
                self.assertEqual(str(fields.get("Pid")), str(self.sp.worker(rel).pid), out)
                self.assertEqual(fields.get("Agent"), agent, out)
                self.assertEqual(fields.get("Name"), "spoad", out)
                for k in ("Version", "Relative_pid", "Uptime", "Uptime_sec", "CurrConns",
                          "CumConns", "CumNotify", "CumAck", "CumErrors"):
                    self.assertIn(k, fields, out)

    def test_show_stat(self):
        sv.check_ip(self.iprep_port, "127.0.0.66")
        for rel in (1, 2, 3):
            with self.subTest(rel=rel):
                out = sv.cli(self.sock, "@%d show stat" % rel)
                self.assertTrue(out.strip(), "empty show stat")
                self.assertNotIn("Unknown command", out)
                js = sv.load_json(sv.cli(self.sock, "@%d show stat json" % rel))
                self.assertTrue(js, "empty show stat json")
        # The ip-checker's own statistics (agents/ip-checker/README.md) are in its show stat.
        out = sv.cli(self.sock, "@1 show stat json")
        self.assertIn('"checks"', out)

    def test_worker_help(self):
        out = sv.cli(self.sock, "@1 help")
        for cmd in ("show info", "show stat", "show lists", "show ip"):
            self.assertIn(cmd, out)

    def test_ip_checker_commands(self):
        out = sv.socat_cmd(self.sock, "@1 show lists")
        names = {line.split()[0] for line in out.split("\n") if line.strip()
                 and not line.startswith("#")}
        self.assertTrue({"office", "demo-drop", "suspicious"} <= names, out)
        out = sv.socat_cmd(self.sock, "@2 show ip 127.0.0.66")
        self.assertIn("ip_score=100", out)
        self.assertIn("blocked=true", out)
        self.assertIn("list=demo-drop", out)

    def test_agents_serve(self):
        self.assertEqual(sv.check_ip(self.iprep_port, "127.0.0.66")["txn.blocked"], True)
        self.assertEqual(sv.echo_once(self.echo_port)["txn.x"], "hello")


class ClientLimits(Shared):
    """At most 10 clients at once; slow or stuck clients stall nothing."""

    def everything_answers(self, ctx):
        """The master, each worker and the agents answer (each wait only guards a hang)."""
        self.assertEqual(sv.cli(self.sock, "show version"), self.version + "\n\n", ctx)
        for r in self.sp.workers:
            info = sv.parse_info(sv.cli(self.sock, "@%d show info" % r.rel))
            self.assertEqual(info.get("Pid"), str(r.pid), ctx)
        for _ in range(20):  # 20 connections: both workers (SO_REUSEPORT) get some
            self.assertEqual(sv.echo_once(self.echo_port)["txn.x"], "hello", ctx)

    def test_eleventh_client_waits_for_a_free_slot(self):
        sessions = []
        try:
            for _ in range(10):  # 10 interactive sessions, parked at their prompt
                s = sv.Session(self.sock)
                sessions.append(s)
                s.send("prompt")
                s.read_until("master> ")
            late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sessions.append(late)
            late.connect(self.sock)
            late.sendall(b"show version\n")
            late.shutdown(socket.SHUT_WR)
            # Proof that the master had every chance to serve the 11th client: its request
            # was in the socket before these commands of another client, each answered after
            # a full turn of the master's event loop (accept, then read, take one turn each).
            for _ in range(3):
                self.assertIn(self.version, sessions[1].command("show version", "master> "))
            try:
                early = late.recv(100, socket.MSG_DONTWAIT)
            except BlockingIOError:
                early = None
            self.assertIsNone(early, "an 11th client was served while 10 were connected")
            sessions[0].close()  # a slot frees: the 11th client is served
            out = sv._recv_all(late, time.monotonic() + harness.GUARD_S)
            self.assertEqual(out.decode(), self.version + "\n\n", self.env.dump_logs())
        finally:
            for s in sessions:
                s.close()
        # Once they are gone, new clients are served.
        self.assertTrue(harness.wait_for(
            lambda: sv.try_cli(self.sock, "show version") == self.version + "\n\n"))

    def test_stuck_clients_stall_nothing(self):
        stuck = []
        try:
            # A client that never ends its line.
            a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stuck.append(a)
            a.connect(self.sock)
            a.sendall(b"show pro")
            # Clients that send many commands and never read: their answers fill the socket.
            readers = []
            for cmd in (b"show proc\n", b"@1 show info\n", b"@2 show stat\n"):
                b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                stuck.append(b)
                readers.append(b)
                b.connect(self.sock)
                b.setblocking(False)
                data = cmd * 5000
                sent = 0
                try:  # as much as the socket takes now; the master reads at its pace
                    while sent < len(data):
                        sent += b.send(data[sent:sent + 65536])
                except BlockingIOError:
                    pass
                self.assertGreater(sent, 0)
            # A client connected that says nothing.
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stuck.append(c)
            c.connect(self.sock)
            # The stuck output piles up: 32 KiB of answers wait unread in each socket, about
            # half of what a full one holds (or the master gave up on the client and closed
            # it), and the master has thousands of commands left to answer.
            self.assertTrue(harness.wait_for(
                lambda: all(unread(b) >= 32768 or peer_closed(b) for b in readers)),
                [unread(b) for b in readers])
            self.everything_answers(self.env.dump_logs()[-4000:])
            self.assertTrue(self.spoad.alive())
        finally:
            for s in stuck:
                s.close()
        self.everything_answers(self.env.dump_logs()[-4000:])
        sp = sv.show_proc(self.sock)
        self.assertEqual(sp.pids(), self.sp.pids(), "a worker was replaced")


def unread(s):
    """Bytes waiting to be read in socket `s` (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def peer_closed(s):
    """True if the other end of socket `s` has closed it (POLLRDHUP/POLLHUP)."""
    p = select.poll()
    p.register(s.fileno(), select.POLLRDHUP | select.POLLHUP)
    return bool(p.poll(0))


class PoolWorkersGone(unittest.TestCase):
    """`@<agent> CMD` when a worker does not answer (SIGSTOP: the master's CLI timeout) and
    when one exits while the command is pending (SIGKILL: gone). Its own spoad."""

    def setUp(self):
        self.env = harness.Env("mcli-pool")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = self.env.path("master.sock")
        cfg = self.env.write("spoad.yaml", sv.config([sv.echo_agent(harness.free_port(), 2)],
                                                     socket_path=self.sock))
        self.p = self.env.spoad(cfg)
        self.sp = sv.wait_pool(self.sock, 2, proc=self.p)
        self.tracker.add_proc(self.sp)
        self.assertIsNotNone(self.sp, self.env.dump_logs())
        self.version = sv.spoad_version()

    def pool_commands(self):
        return int(sv.parse_info(sv.cli(self.sock, "show info"))["CliPoolCommands"])

    def stopped_worker(self):
        victim = self.sp.worker(2).pid
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: harness.pid_alive(victim) and os.kill(victim, signal.SIGCONT))
        return victim

    def test_worker_that_does_not_answer(self):
        victim = self.stopped_worker()
        # Waits for the master's CLI timeout (10 s): the event itself, not a sleep.
        out = sv.cli(self.sock, "@echo show version")
        w1 = self.sp.worker(1).pid
        self.assertEqual(out, "# workers 1 (pids %d):\n%s\n"
                              "# workers 2 (pids %d):\nNo answer from the worker.\n"
                              "# echo: applied on 1 of 2 workers, failed on 1\n\n"
                         % (w1, self.version, victim), sv.tail_logs(self.env))
        os.kill(victim, signal.SIGCONT)
        # Its late answer is dropped; the next command gets both.
        self.assertEqual(sv.cli(self.sock, "@echo show version"),
                         self.version + "\n# echo: applied on 2 of 2 workers\n\n")

    def test_worker_gone_while_the_command_is_pending(self):
        victim = self.stopped_worker()
        before = self.pool_commands()
        s = sv.Session(self.sock)
        try:
            s.send("@echo show version")
            # Once counted, the command is in the stopped worker's channel: kill it.
            self.assertTrue(harness.wait_for(lambda: self.pool_commands() > before))
            os.kill(victim, signal.SIGKILL)
            out = s.read_until("\n\n")
            self.assertEqual(out, self.version + "\n# echo: applied on 1 of 2 workers, 1 gone\n\n",
                             sv.tail_logs(self.env))
        finally:
            s.close()
        # The master respawns it; the pool answers whole again.
        sp = sv.wait_pool(self.sock, 2, exclude={victim}, proc=self.p)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, sv.tail_logs(self.env))
        self.assertEqual(sv.cli(self.sock, "@echo show version"),
                         self.version + "\n# echo: applied on 2 of 2 workers\n\n")


class SharedSocketAndPidfile(Shared):
    """Acceptance 8 on the module's spoad: the socket's default mode, `global.pidfile`."""

    def test_default_mode_is_0600(self):
        st = os.stat(self.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(oct(stat.S_IMODE(st.st_mode)), oct(0o600))

    def test_pidfile_in_global(self):
        self.assertTrue(harness.wait_for(lambda: os.path.exists(self.pidfile)))
        with open(self.pidfile) as f:
            self.assertEqual(f.read().strip(), str(self.spoad.pid))


class SocketAndPidfile(unittest.TestCase):
    """Acceptance 8 and the command-line overrides: each needs its own spoad."""

    def setUp(self):
        self.env = harness.Env("mcli-sock")
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)

    def start(self, name, sock, args=(), **cfg_kw):
        port = harness.free_port()
        cfg = self.env.write(name + ".yaml", sv.config([sv.echo_agent(port, 1)], **cfg_kw))
        p = self.env.spoad(cfg, args=list(args), name=name)
        sp = sv.wait_pool(sock, 1, proc=p)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, self.env.dump_logs())
        self.assertEqual(sp.master.pid, p.pid)
        return p

    def test_mode_0660(self):
        sock = self.env.path("m.sock")
        self.start("mode", sock, socket_path=sock, mode="0660")
        self.assertEqual(oct(stat.S_IMODE(os.stat(sock).st_mode)), oct(0o660))

    def test_dash_S_overrides_cli_socket(self):
        in_file, on_cmdline = self.env.path("from-file.sock"), self.env.path("from-cmdline.sock")
        self.start("override", on_cmdline, args=["-S", on_cmdline], socket_path=in_file)
        self.assertFalse(os.path.exists(in_file), "cli.socket used despite -S")
        self.assertTrue(stat.S_ISSOCK(os.stat(on_cmdline).st_mode))

    def test_dash_S_without_cli_section(self):
        sock = self.env.path("only-cmdline.sock")
        self.start("only", sock, args=["-S", sock])

    def test_pidfile_option(self):
        sock, pidfile = self.env.path("m.sock"), self.env.path("spoad.pid")
        p = self.start("pidopt", sock, args=["-p", pidfile], socket_path=sock)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(pidfile)))
        with open(pidfile) as f:
            self.assertEqual(f.read().strip(), str(p.pid))


if __name__ == "__main__":
    unittest.main(verbosity=2)
