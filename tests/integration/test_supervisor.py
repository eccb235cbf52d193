"""The supervisor's process model: worker pools, respawn with backoff, stop signals, master death.

- 200 connections to a 2-worker pool reach both workers (SO_REUSEPORT); a unix: pool shares
  the master's listener;
- kill -9 of a worker under spoa-bench load: a replacement within 1 s, the other worker
  untouched, spoa-bench sees exactly the killed worker's connections close, ACKs keep coming;
- the respawn delay grows when the same slot keeps dying (100 ms, doubling);
- SIGTERM/SIGINT: everything gone within 1 s, status 0; SIGKILL of the master: the workers exit
  within 1 s; SIGUSR1: soft-stop (NOTIFYs in flight answered, AGENT-DISCONNECT 0), status 0.
"""
import json
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import spop  # noqa: E402
import supervisor as sv  # noqa: E402


class Base(unittest.TestCase):
    name = "sup"

    def setUp(self):
        self.env = harness.Env(self.name)
        self.tracker = sv.Tracker()
        self.addCleanup(self.tracker.cleanup)
        self.addCleanup(self.env.stop)
        self.sock = None

    def start(self, agents, n_workers, grace="2s", name="spoad"):
        self.sock = self.env.path(name + ".sock")
        cfg = self.env.write(name + ".yaml", sv.config(agents, socket_path=self.sock, grace=grace))
        p = self.env.spoad(cfg, name=name)
        sp = sv.wait_pool(self.sock, n_workers, proc=p)
        self.tracker.add_proc(sp)
        self.assertIsNotNone(sp, "the pool did not start:\n" + self.env.dump_logs())
        self.assertEqual(sp.master.pid, p.pid)
        return p, sp

    def logs(self):
        return sv.tail_logs(self.env)

    def info(self, rel):
        return sv.worker_info(self.sock, rel)


class Pools(Base):
    name = "sup-pools"

    def test_200_connections_reach_every_worker(self):
        port = harness.free_port()
        _, sp = self.start([sv.echo_agent(port, 2)], 2)
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)), self.logs())
        clients = []
        try:
            for _ in range(200):
                c = spop.Client(("127.0.0.1", port))
                clients.append(c)
                c.handshake()
            # While they are open, the workers count them as current connections.
            cur = {}

            def all_current():
                cur.update({r.rel: int(self.info(r.rel).get("CurrConns", -1)) for r in sp.workers})
                return sum(cur.values()) == 200
            self.assertTrue(harness.wait_for(all_current, timeout=10), (cur, self.logs()))
        finally:
            for c in clients:
                c.close()
        cum = {r.rel: int(self.info(r.rel)["CumConns"]) for r in sp.workers}
        self.assertTrue(all(v > 0 for v in cum.values()), ("a worker got no connection", cum))
        self.assertGreaterEqual(sum(cum.values()), 200, cum)
        self.assertTrue(harness.wait_for(
            lambda: sum(int(self.info(r.rel)["CurrConns"]) for r in sp.workers) == 0, timeout=10),
            "connections still counted after close")

    def test_unix_pool_shares_one_listener(self):
        path = self.env.path("echo.sock")
        _, sp = self.start([sv.echo_agent("unix:" + path, 2)], 2)
        for _ in range(50):
            self.assertEqual(sv.echo_once(path)["txn.x"], "hello")
        cum = sum(int(self.info(r.rel)["CumConns"]) for r in sp.workers)
        self.assertGreaterEqual(cum, 50)
        # A replacement worker serves the same socket (the master's fd, same path).
        victim = sp.worker(1).pid
        os.kill(victim, signal.SIGKILL)
        sp2 = sv.wait_pool(self.sock, 2, timeout=10, exclude={victim})
        self.tracker.add_proc(sp2)
        self.assertIsNotNone(sp2, self.logs())
        self.assertEqual(sp2.worker(2).pid, sp.worker(2).pid)
        before = int(self.info(2)["CumConns"])
        for _ in range(20):
            self.assertEqual(sv.echo_once(path)["txn.x"], "hello")
        new = int(self.info(1)["CumConns"])
        self.assertGreaterEqual(new + int(self.info(2)["CumConns"]) - before, 20)


class Respawn(Base):
    name = "sup-respawn"

    def replacement(self, rel, dead):
        """The pid of a live worker at relative pid `rel` that is not in `dead`, or None."""
        sp = sv.try_show_proc(self.sock, timeout=2)
        if sp is None:
            return None
        r = sp.worker(rel)
        if r is None or r.pid in dead or not harness.pid_alive(r.pid):
            return None
        return r.pid

    def test_kill_9_under_load(self):
        port = harness.free_port()
        _, sp = self.start([sv.echo_agent(port, 2)], 2)
        self.assertTrue(harness.wait_for(lambda: harness.port_open(port)), self.logs())
        # Wait until the port check above is no longer counted.
        self.assertTrue(harness.wait_for(
            lambda: sum(int(self.info(r.rel)["CurrConns"]) for r in sp.workers) == 0))
        bench = subprocess.Popen(
            [harness.SPOA_BENCH, "-a", "127.0.0.1:%d" % port, "-c", "8", "-d", "8", "-t", "6",
             "--json", "-m", "check-client-ip", "--arg", "ip=ipv4:192.0.2.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            infos = {}

            def loaded():
                infos.update({r.rel: self.info(r.rel) for r in sp.workers})
                return (sum(int(i["CurrConns"]) for i in infos.values()) == 8
                        and sum(int(i["CumAck"]) for i in infos.values()) > 1000)
            self.assertTrue(harness.wait_for(loaded, timeout=10), (infos, self.logs()))
            # spoa-bench never reconnects: the connection counts are stable. Kill the worker
            # that has more of them.
            infos = {r.rel: self.info(r.rel) for r in sp.workers}
            victim_rel = max(infos, key=lambda k: int(infos[k]["CurrConns"]))
            other_rel = 3 - victim_rel
            victim, other = sp.worker(victim_rel).pid, sp.worker(other_rel).pid
            n_killed = int(infos[victim_rel]["CurrConns"])
            self.assertEqual(infos[victim_rel]["Pid"], str(victim))
            os.kill(victim, signal.SIGKILL)
            t0 = time.time()
            new = harness.wait_for(lambda: self.replacement(victim_rel, {victim}), timeout=5,
                                   interval=0.02)
            elapsed = time.time() - t0
            self.tracker.add(new)
            self.assertIsNotNone(new, ("no replacement worker", self.logs()))
            self.assertLess(elapsed, 1.0, "the replacement took %.3f s" % elapsed)
            sp2 = sv.show_proc(self.sock)
            self.assertEqual(sp2.worker(other_rel).pid, other, ("the other worker changed",
                                                                sp2.text))
            self.assertEqual(len(sp2.workers), 2, sp2.text)
            # The other worker keeps answering spoa-bench.
            a1 = int(self.info(other_rel)["CumAck"])
            self.assertTrue(harness.wait_for(
                lambda: int(self.info(other_rel)["CumAck"]) > a1 + 100, timeout=3),
                "ACKs stopped after the kill")
            out, err = bench.communicate(timeout=60)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        try:
            res = json.loads(out)
        except ValueError:
            self.fail("spoa-bench output: %r %r" % (out, err))
        errors = res["errors"]
        ctx = (n_killed, errors, err[-3000:], self.logs())
        self.assertEqual(errors["unexpected_close"], n_killed, ctx)
        self.assertEqual(errors["total"], n_killed, ctx)
        self.assertEqual({k: v for k, v in errors.items() if v and k not in ("total",
                                                                          "unexpected_close")},
                         {}, ctx)
        self.assertEqual(res["agent_disconnect_status"], {}, ctx)
        self.assertGreater(res["acks"], 0, ctx)
        self.assertEqual(bench.returncode, 1 if n_killed else 0, ctx)
        self.assertTrue(harness.pid_alive(other))
        # The replacement serves new connections.
        sp3 = sv.wait_pool(self.sock, 2, timeout=10)
        self.assertIsNotNone(sp3, self.logs())
        self.assertEqual(sv.echo_once(port)["txn.x"], "hello")

    def test_respawn_delay_grows(self):
        port = harness.free_port()
        _, sp = self.start([sv.echo_agent(port, 2)], 2)
        other = sp.worker(2).pid
        dead = set()
        pid = sp.worker(1).pid
        delays = []
        for _ in range(3):
            os.kill(pid, signal.SIGKILL)
            t0 = time.time()
            dead.add(pid)
            pid = harness.wait_for(lambda: self.replacement(1, dead), timeout=5, interval=0.01)
            delays.append(time.time() - t0)
            self.tracker.add(pid)
            self.assertIsNotNone(pid, ("no replacement", delays, self.logs()))
        ctx = ("delays %s" % ["%.3f" % d for d in delays], self.logs())
        self.assertLess(delays[0], 1.0, ctx)
        # 100 ms, 200 ms, 400 ms: the third replacement waits at least ~300 ms.
        self.assertGreaterEqual(delays[2], 0.3, ctx)
        self.assertGreater(delays[2], delays[0], ctx)
        self.assertLess(delays[2], 3.0, ctx)
        sp2 = sv.wait_pool(self.sock, 2, timeout=10)
        self.assertIsNotNone(sp2, self.logs())
        self.assertEqual(sp2.worker(2).pid, other, "the other worker was touched")
        self.assertEqual(sv.echo_once(port)["txn.x"], "hello")


class Signals(Base):
    name = "sup-signals"

    def pool(self, name="spoad"):
        port1, port2 = harness.free_port(), harness.free_port()
        p, sp = self.start([sv.iprep_agent(port1, 2), sv.echo_agent(port2, 2)], 4, grace="3s",
                           name=name)
        return p, sp, port2

    def wait_all_dead(self, pids, limit, what):
        t0 = time.time()
        ok = harness.wait_for(lambda: sv.all_dead(pids), timeout=limit + 4, interval=0.01)
        elapsed = time.time() - t0
        alive = [p for p in pids if harness.pid_alive(p)]
        self.assertTrue(ok, ("%s: still alive: %s" % (what, alive), self.logs()))
        self.assertLess(elapsed, limit, ("%s took %.3f s" % (what, elapsed), self.logs()))

    def test_sigterm_and_sigint_hard_stop(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig):
                p, sp, _ = self.pool("spoad-%d" % sig)
                pids = [p.pid] + list(sp.pids())
                p.send_signal(sig)
                self.wait_all_dead(pids, 1.0, "hard-stop")
                self.assertEqual(p.wait(5), 0, self.logs())

    def test_sigkill_of_the_master_ends_the_workers(self):
        p, sp, port = self.pool()
        os.kill(p.pid, signal.SIGKILL)
        self.wait_all_dead(list(sp.pids()), 1.0, "workers after the master's death")
        self.assertEqual(p.wait(5), -signal.SIGKILL)
        self.assertTrue(harness.wait_for(lambda: not harness.port_open(port), timeout=3),
                        "someone still listens on the agent port")

    def test_sigusr1_soft_stop(self):
        p, sp, port = self.pool()
        idle = spop.Client(("127.0.0.1", port))
        busy = spop.Client(("127.0.0.1", port))
        try:
            idle.handshake()
            busy.handshake()
            busy.send(spop.notify(7, 1, [("m", [("delay_ms", 800)])]))
            # The NOTIFY has been read by a worker before the signal.
            self.assertTrue(harness.wait_for(
                lambda: sum(int(self.info(r)["CumNotify"]) for r in (3, 4)) >= 1, timeout=5))
            t0 = time.time()
            p.send_signal(signal.SIGUSR1)
            f = idle.recv_frame()
            self.assertIsNotNone(f, "the idle connection closed without AGENT-DISCONNECT")
            self.assertEqual(f.type, spop.AGENT_DISCONNECT, f)
            self.assertEqual(f.kv()["status-code"], 0)
            f = busy.recv_frame()
            self.assertEqual((f.type, f.sid, f.fid), (spop.ACK, 7, 1), "the NOTIFY in flight")
            f = busy.recv_frame()
            self.assertEqual(f.type, spop.AGENT_DISCONNECT, f)
            self.assertEqual(f.kv()["status-code"], 0)
            self.assertEqual(p.wait(6), 0, self.logs())
            self.assertLess(time.time() - t0, 3.0 + 1.5, "soft-stop exceeded the grace")
            self.wait_all_dead(list(sp.pids()), 1.0, "workers after the master's exit")
        finally:
            idle.close()
            busy.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
