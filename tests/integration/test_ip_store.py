"""ip-checker runtime bans shared through Redis, end to end (issue 11, "How it is shown").

A real redis-server (tests/integration/redis_server.py: a free port, its data in the test's
directory, `appendonly yes`), and two spoad instances standing for two hosts, A and B: each has
its own CLI socket and agent port, no metrics endpoint, an ip-checker agent `iprep` with 2
workers, a deny list `runtime` (score 100, no file, no entries: a list for runtime entries) and
`store: {url: redis://127.0.0.1:PORT/0, key-prefix: <unique per test>}`. Each sits behind its
own HAProxy (harness.HAPROXY, Debian's 2.6 by default) whose frontend answers 403 when
txn.iprep.blocked is true and 200 otherwise, with X-SPOE-Error when the SPOE filter failed.

- `@iprep add ip deny runtime 127.0.0.1 ttl 20s` on A's CLI (socat): A's HAProxy answers 403 on
  the next requests; B's answers 403 once the change arrived (the time is printed: the issue
  claims 1 s, the test only fails if it never arrives); both answer 200 again after the TTL,
  and neither answered 200 before the entry's expiry.
- kill -9 of a worker of A, then `reload` on A's CLI, under HTTP load: the respawned worker and
  every worker of the new generation hold the entry (`@N show ip`), and every answer HAProxy
  got from spoad meanwhile was a 403 (no gap).
- Redis killed (SIGKILL), then restarted on the same port and directory, under HTTP load on
  both hosts: every request is answered as before (0 SPOE errors in HAProxy's log and headers,
  spoad's error counters unchanged); an add on A fails with a clear error while Redis is down
  and is not applied; once the workers say the store is connected again, an add on A reaches
  B and a del on A is gone from every worker of both hosts.

Nothing sleeps to synchronise: each step waits for its event (a CLI answer, an HTTP status, a
process, PING) with harness.GUARD_S as a guard; durations are printed, never asserted.
"""
import calendar
import math
import os
import re
import signal
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import redis_server  # noqa: E402
import stack  # noqa: E402
import supervisor as sv  # noqa: E402

AGENT = "iprep"
LIST = "runtime"
TTL_S = 20  # seconds: the ban of the first case

SPOAD_YAML = """
agents:
  - name: %(agent)s
    type: ip-checker
    listen: 127.0.0.1:%(port)d
    workers: 2
    block-threshold: 50
    deny:
      - name: %(list)s
        score: 100
    store:
      url: %(url)s
      key-prefix: "%(key_prefix)s"
"""

HAPROXY_CFG = """
global
    log stderr format raw local0 info
    stats socket %(stats)s mode 600 level admin
defaults
    mode http
    log global
    timeout connect 5s
    timeout client %(guard)ds
    timeout server %(guard)ds
frontend www
    bind 127.0.0.1:%(fe)d
    filter spoe engine ip-checker config %(spoe)s
    http-request deny deny_status 403 if { var(txn.iprep.blocked) -m bool }
    http-request return status 200 content-type text/plain string "ok"
    http-after-response set-header X-IP-Score "%%[var(sess.iprep.ip_score)]"
    http-after-response set-header X-IP-List "%%[var(txn.iprep.list)]" if { var(txn.iprep.list) -m found }
    http-after-response set-header X-SPOE-Error "%%[var(txn.iprep.error)]" if { var(txn.iprep.error) -m found }
backend spoe-ip-checker
    .if version_atleast(3.1)
        mode spop
    .else
        mode tcp
    .endif
    balance roundrobin
    timeout connect 1s
    timeout server 3m
    server spoad 127.0.0.1:%(agent)d
"""

# HAProxy's SPOE log line (`log global` in config/spoe-ip-checker.cfg; 2.6 and 3.x): agent,
# event, stream id, status (0: the event was processed).
SPOE_LINE = re.compile(r"SPOE: \[([^\]]+)\] <(?:EVENT|GROUP):[^>]+> sid=\d+ st=(\d+)")
APPLIED = re.compile(r"^# %s: applied on (\d+) of (\d+) workers(.*)$" % AGENT, re.M)


def has_addr(text, addr):
    """True if `addr` appears in `text` as a whole address (127.0.0.3 is not in 127.0.0.30)."""
    return re.search(r"(?<![\d.])%s(?![\d])" % re.escape(addr), text) is not None


def store_connected(text):
    """`show store` of one worker says connected (and not "disconnected")."""
    return re.search(r"(?<![a-z])connected", text) is not None and "disconnected" not in text


class Host(stack.Stack):
    """One spoad instance (ip-checker with the store) behind its own HAProxy, in a directory
    the test owns (files and processes named after the host)."""

    def __init__(self, env, name, redis, key_prefix):
        super().__init__(env, suffix=name)
        self.name = name
        self.sock = env.path("%s.sock" % name)
        self.agent_port = harness.free_port()
        self.fe_port = harness.free_port()
        self.config = SPOAD_YAML % {
            "agent": AGENT, "port": self.agent_port, "list": LIST, "url": redis.url(),
            "key_prefix": key_prefix}

    def start(self):
        """Starts spoad (its 2 workers, the store connected), then HAProxy (answering)."""
        self.start_spoad(self.config, args=["-S", self.sock], workers=2)
        if not self.wait_store(True):
            raise RuntimeError("spoad %s: the store did not connect:\n%s" % (
                self.name, self.logs()))
        self.start_haproxy(HAPROXY_CFG % {
            "stats": self.env.path("haproxy-%s.sock" % self.name), "fe": self.fe_port,
            "agent": self.agent_port, "guard": int(harness.GUARD_S),
            "spoe": os.path.join(harness.spoe_dir(self.env), "spoe-ip-checker.cfg")},
            ready=lambda: self.answer("127.0.0.2") == (200, None))

    # ---- HTTP through HAProxy

    def answer(self, src):
        """(status, X-SPOE-Error or None) of one request from `src`; (None, error) when the
        request itself failed."""
        try:
            st, hdrs, _ = harness.http_request(self.fe_port, "/", source=src)
        except OSError as e:
            return None, "%s: %s" % (type(e).__name__, e)
        return st, hdrs.get("x-spoe-error")

    def spoe_log(self, since=0):
        """(events, [lines with a non-zero status]) of the SPOE events HAProxy logged from
        offset `since` of its log."""
        lines = [m for m in SPOE_LINE.finditer(self.haproxy.output()[since:])]
        return len(lines), [m.group(0) for m in lines if m.group(2) != "0"]

    # ---- spoad's master CLI

    def cli(self, cmd):
        return sv.cli(self.sock, cmd)

    def workers(self):
        return sv.show_proc(self.sock).workers

    def per_worker(self, cmd):
        """{relative pid: answer} of `@N cmd` for each current worker."""
        return {w.rel: self.cli("@%d %s" % (w.rel, cmd)) for w in self.workers()}

    def wait_store(self, connected):
        def ok():
            sp = sv.try_show_proc(self.sock)
            if sp is None or len(sp.workers) != 2:
                return False
            for w in sp.workers:
                out = sv.try_cli(self.sock, "@%d show store" % w.rel)
                if out is None or store_connected(out) != connected:
                    return False
            return True
        return harness.wait_for(ok, interval=0.1)

    def error_counters(self):
        """Protocol errors and non-zero AGENT-DISCONNECTs of the current workers, summed."""
        total = 0
        for w in self.workers():
            j = sv.load_json(self.cli("@%d show stat json" % w.rel))[AGENT]
            total += j["nb_error"] + sum(
                v for k, v in j.items()
                if k.startswith("disconnect_") and k != "disconnect_normal")
        return total


class Load:
    """One thread per (host, source) doing sequential requests until stop(); records every
    answer as (time received, host, source, status, X-SPOE-Error)."""

    def __init__(self, targets):
        self.targets = targets  # [(host, source, expected status)]
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.answers = []
        self.threads = [threading.Thread(target=self._run, args=t, daemon=True) for t in targets]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, host, src, expected):
        while not self.stop_ev.is_set():
            st, err = host.answer(src)
            with self.lock:
                self.answers.append((time.time(), host.name, src, st, err, expected))
            self.stop_ev.wait(0.005)  # the shape of the load, not a synchronisation

    def count(self):
        with self.lock:
            return len(self.answers)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(harness.GUARD_S)

    def wrong(self, allow_spoe_errors=False):
        """Answers that are not the expected status. With allow_spoe_errors, answers HAProxy
        gave without the agent (X-SPOE-Error set) are left out."""
        with self.lock:
            return [a for a in self.answers
                    if not (allow_spoe_errors and a[4] is not None)
                    and (a[3] != a[5] or a[4] is not None)]

    def spoe_errors(self):
        with self.lock:
            return [a for a in self.answers if a[4] is not None]


@unittest.skipUnless(redis_server.available(),
                     "redis-server not installed (apt-get install redis-server; scripts/deps.sh)")
class IpStore(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = harness.Env("ip-store")
        cls.redis = redis_server.Redis(cls.env).start()

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def setUp(self):
        if not self.redis.alive():  # a test that failed while Redis was down
            self.redis.start()
        self.key_prefix = "spoad-test-%s:" % uuid.uuid4().hex[:12]
        n = self._testMethodName[5:6]
        self.a = Host(self.env, "a" + n, self.redis, self.key_prefix)
        self.b = Host(self.env, "b" + n, self.redis, self.key_prefix)
        self.addCleanup(self.a.stop)
        self.addCleanup(self.b.stop)
        self.a.start()
        self.b.start()

    def logs(self):
        return "%s\n%s\n----- redis -----\n%s" % (self.a.logs(), self.b.logs(),
                                                   self.redis.proc.output()[-2000:])

    # ---- helpers

    def assert_applied(self, out, n=2):
        m = APPLIED.search(out)
        self.assertIsNotNone(m, "no '# %s: applied on N of M workers' line in %r" % (AGENT, out))
        self.assertEqual((int(m.group(1)), int(m.group(2))), (n, n), out)
        self.assertEqual(m.group(3), "", out)  # no ", failed on F", no ", G gone"

    def wait_status(self, host, src, status):
        """Polls `host` until `src` gets `status` (no SPOE error); returns the time it came."""
        def ok():
            st, err = host.answer(src)
            return time.time() if (st, err) == (status, None) else None
        t = harness.wait_for(ok, interval=0.01)
        self.assertTrue(t, "%s never answered %d for %s\n%s" % (
            host.name, status, src, self.logs()))
        return t

    def entry_expiry(self, host, addr):
        """expires_s of the runtime entry for `addr`, from `show ip entries` (an epoch number or
        an ISO time, whichever the line holds), or None when the line has neither."""
        for line in host.cli("@1 show ip entries %s" % LIST).splitlines():
            if not has_addr(line, addr):
                continue
            m = re.search(r"\b(1\d{9})\b", line)
            if m:
                return int(m.group(1))
            m = re.search(r"\b(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z", line)
            if m:
                return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
        return None

    def assert_runtime_verdict(self, host, addr, blocked=True, expiring=False):
        """Every current worker of `host` answers `show ip addr` with the runtime entry (with
        an expiry when `expiring`), or without one when not `blocked`. Waits for it: a worker
        of B applies a change from the store a moment after another."""
        if blocked:
            want = ["blocked=true", "list=%s" % LIST, "source=runtime",
                    "expires=" if expiring else "expires=never"]
        else:
            want = ["blocked=false"]
        last = {}

        def ok():
            last.update(host.per_worker("show ip %s" % addr))
            return all(w in out for out in last.values() for w in want)
        harness.wait_for(ok, interval=0.05)
        for rel, out in last.items():
            for w in want:
                self.assertIn(w, out, (host.name, rel, out))

    # ---- the cases

    def test_1_ban_reaches_both_hosts_and_expires(self):
        a, b = self.a, self.b
        for h in (a, b):
            self.assertEqual(h.answer("127.0.0.1"), (200, None), h.name)

        # B is polled from before the add, so that the first 403 is seen as soon as it comes.
        first_403 = []
        stop = threading.Event()

        def watch():
            while not stop.is_set() and not first_403:
                if b.answer("127.0.0.1") == (403, None):
                    first_403.append(time.time())
                stop.wait(0.005)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        self.addCleanup(stop.set)

        t0 = time.time()
        # Long enough that the checks below (requests on both hosts, several CLI calls) end
        # before the expiry on a loaded machine; the expiry itself is then waited for.
        out = sv.socat_cmd(a.sock, "@%s add ip deny %s 127.0.0.1 ttl %ds" % (AGENT, LIST, TTL_S))
        t1 = time.time()
        self.assert_applied(out)
        # The add answers once every worker of A applied it: the next requests are refused
        # (several, so that both workers answer some).
        for i in range(6):
            self.assertEqual(a.answer("127.0.0.1"), (403, None), (i, out, self.logs()))
        self.assertEqual(a.answer("127.0.0.2"), (200, None))  # another client is not touched

        harness.wait_for(lambda: first_403, interval=0.01)
        stop.set()
        watcher.join(harness.GUARD_S)
        self.assertTrue(first_403, "B never refused 127.0.0.1:\n" + self.logs())
        print("\n  B refused 127.0.0.1 %.3f s after the add was sent to A (%.3f s after A's "
              "answer; the issue claims 1 s)" % (first_403[0] - t0, first_403[0] - t1),
              flush=True)
        self.assertEqual(b.answer("127.0.0.2"), (200, None))
        for h in (a, b):
            self.assert_runtime_verdict(h, "127.0.0.1", expiring=True)

        # Expiry: the agent sets expires_s = now + TTL_S, "now" being between t0 and t1. No answer
        # received before that can be a 200; after it, both hosts let the client through.
        expires = self.entry_expiry(a, "127.0.0.1")
        lower = math.floor(t0) + TTL_S
        if expires is not None:
            self.assertGreaterEqual(expires, lower)
            self.assertLessEqual(expires, math.ceil(t1) + TTL_S)
            lower = expires
        # Both hosts polled in turn until both let the client through again.
        answers = {a.name: [], b.name: []}

        def lifted():
            for h in (a, b):
                seen = answers[h.name]
                if not seen or seen[-1][1:] != (200, None):
                    st, err = h.answer("127.0.0.1")
                    seen.append((time.time(), st, err))
            return all(seen and seen[-1][1:] == (200, None) for seen in answers.values())
        self.assertTrue(harness.wait_for(lifted, interval=0.02),
                        "127.0.0.1 still refused after the TTL: %r\n%s" % (
                            {k: v[-3:] for k, v in answers.items()}, self.logs()))
        for name, seen in answers.items():
            early = [x for x in seen if x[0] < lower and x[1:] != (403, None)]
            self.assertEqual(early, [], "%s let 127.0.0.1 through before its expiry %d" % (
                name, lower))
            print("  %s: 200 again at expires_s %+.3f s (%d answers polled, %d of them before "
                  "expires_s)" % (name, seen[-1][0] - lower, len(seen),
                                  sum(1 for x in seen if x[0] < lower)), flush=True)
        for h in (a, b):
            for rel, out in h.per_worker("show ip entries %s" % LIST).items():
                self.assertFalse(has_addr(out, "127.0.0.1"), (h.name, rel, out))

    def test_2_kill9_and_reload_keep_the_entry(self):
        a, b = self.a, self.b
        addr = "127.0.0.3"
        self.assert_applied(a.cli("@%s add ip deny %s %s comment kept across kill -9 and reload"
                                  % (AGENT, LIST, addr)))
        self.wait_status(b, addr, 403)

        load = Load([(a, addr, 403), (a, "127.0.0.2", 200)]).start()
        self.addCleanup(load.stop)
        harness.wait_for(lambda: load.count() >= 20)

        before = sv.show_proc(a.sock)
        victim = before.worker(1).pid
        os.kill(victim, signal.SIGKILL)
        sp = sv.wait_pool(a.sock, 2, exclude={victim}, proc=a.spoad)
        self.assertIsNotNone(sp, "no respawn after kill -9:\n" + self.logs())
        a.tracker.add_proc(sp)
        self.assertNotEqual(sp.worker(1).pid, victim)
        self.assert_runtime_verdict(a, addr)  # the respawned worker too
        n = load.count()
        harness.wait_for(lambda: load.count() >= n + 20)

        out = a.cli("reload")
        self.assertIn("Success=1", out, out + self.logs())
        old = sp.pids()
        sp = sv.wait_pool(a.sock, 2, exclude=old, proc=a.spoad)
        self.assertIsNotNone(sp, "no new generation:\n" + self.logs())
        a.tracker.add_proc(sp)
        self.assert_runtime_verdict(a, addr)  # every worker of the new generation
        # Once the old workers are gone, every answer comes from the new generation.
        self.assertTrue(harness.wait_for(lambda: sv.all_dead(old), interval=0.1), self.logs())
        n = load.count()
        harness.wait_for(lambda: load.count() >= n + 40)
        load.stop()
        for i in range(10):
            self.assertEqual(a.answer(addr), (403, None), (i, self.logs()))
        self.assertEqual(b.answer(addr), (403, None))

        # A request HAProxy could not ask spoad about (the killed worker's connections) carries
        # X-SPOE-Error; every answer that came from spoad refused the client: no gap.
        wrong = load.wrong(allow_spoe_errors=True)
        print("\n  kill -9 + reload under load: %d answers, %d without the agent (X-SPOE-Error, "
              "the killed worker's requests), %d wrong" % (
                  load.count(), len(load.spoe_errors()), len(wrong)), flush=True)
        self.assertEqual(wrong, [], self.logs())

    def test_3_redis_down_then_back(self):
        a, b = self.a, self.b
        kept, added = "127.0.0.3", "127.0.0.4"
        self.assert_applied(a.cli("@%s add ip deny %s %s" % (AGENT, LIST, kept)))
        self.wait_status(b, kept, 403)
        errors_before = {h.name: h.error_counters() for h in (a, b)}
        log_from = {h.name: len(h.haproxy.output()) for h in (a, b)}

        load = Load([(h, src, st) for h in (a, b)
                     for src, st in ((kept, 403), ("127.0.0.2", 200), (added, 200))]).start()
        self.addCleanup(load.stop)
        harness.wait_for(lambda: load.count() >= 30)

        self.redis.kill()
        for h in (a, b):
            self.assertTrue(h.wait_store(False), "%s: the workers do not say the store is "
                            "disconnected:\n%s" % (h.name, self.logs()))
        shown = a.cli("@1 show store")
        self.assertIn("disconnected since", shown)
        store = sv.load_json(a.cli("@2 show stat json"))[AGENT]["agent_stats"]["store"]
        self.assertFalse(store["connected"], store)
        self.assertTrue(store["status"].startswith("disconnected since "), store)
        out = a.cli("@%s add ip deny %s %s" % (AGENT, LIST, added))
        m = APPLIED.search(out)
        self.assertIsNotNone(m, out)
        self.assertEqual(int(m.group(1)), 0, out)
        self.assertIn("failed on 2", m.group(3), out)
        self.assertIn("disconnected since", out)
        print("\n  add while Redis is down: %r" % out, flush=True)
        self.assertEqual(a.answer(added), (200, None))  # not applied
        n = load.count()  # the outage lasts a few hundred requests
        self.assertTrue(harness.wait_for(lambda: load.count() >= n + 300), self.logs())
        during = load.count() - n

        self.redis.start()
        for h in (a, b):
            self.assertTrue(h.wait_store(True), "%s: the store did not reconnect:\n%s" % (
                h.name, self.logs()))
        n = load.count()
        harness.wait_for(lambda: load.count() >= n + 30)
        load.stop()
        # Redis kept the entry (append-only file); the resync after the reconnect kept it.
        for h in (a, b):
            self.assertEqual(h.answer(kept), (403, None), h.name)
            self.assert_runtime_verdict(h, kept)

        wrong = load.wrong()
        print("  under load across the outage: %d answers (%d while Redis was down), %d wrong, "
              "%d with X-SPOE-Error" % (load.count(), during, len(wrong),
                                        len(load.spoe_errors())), flush=True)
        self.assertEqual(wrong, [], self.logs())
        for h in (a, b):
            events, failed = h.spoe_log(log_from[h.name])
            print("  %s: HAProxy logged %d SPOE events, %d failed" % (h.name, events, len(failed)),
                  flush=True)
            self.assertGreater(events, 0, h.name)  # the log is read (HAProxy may drop lines)
            self.assertEqual(failed, [], h.name)
            self.assertEqual(h.error_counters(), errors_before[h.name], h.name)

        t0 = time.time()
        self.assert_applied(a.cli("@%s add ip deny %s %s" % (AGENT, LIST, added)))
        self.assertEqual(a.answer(added), (403, None))
        t = self.wait_status(b, added, 403)
        print("  after the reconnect, an add on A refused on B %.3f s after it was sent"
              % (t - t0), flush=True)

        self.assert_applied(a.cli("@%s del ip deny %s %s" % (AGENT, LIST, kept)))
        self.assertEqual(a.answer(kept), (200, None))
        self.wait_status(b, kept, 200)
        for h in (a, b):
            self.assertTrue(harness.wait_for(lambda: all(
                not has_addr(out, kept) and has_addr(out, added)
                for out in h.per_worker("show ip entries %s" % LIST).values())),
                "%s: %r" % (h.name, h.per_worker("show ip entries %s" % LIST)))
            self.assert_runtime_verdict(h, kept, blocked=False)
        c = self.redis.client()
        try:
            keys = c.command("KEYS", "%sentry:*" % self.key_prefix)
        finally:
            c.close()
        self.assertEqual(len(keys), 1, keys)
        self.assertTrue(has_addr(keys[0].decode(), added), keys)


if __name__ == "__main__":
    unittest.main(verbosity=2)
