"""End to end with a real HAProxy (harness.HAPROXY: Debian's 2.6, or 3.2, 3.4 built by
scripts/haproxy): real SPOE traffic from a real HAProxy to spoad.

- config/haproxy.cfg + config/spoe-ip-checker.cfg + config/spoad.yaml run unchanged (but for the
  SPOE timeouts, see harness.spoe_dir): denied addresses get 403, the others 200, and the score
  shows in a response header;
- `option spop-check` marks the agent UP (and DOWN once spoad is gone);
- HAProxy 2.6 fragments a large NOTIFY when spoad announces a small max-frame-size, and the
  agent receives the whole argument (checked by its SHA-256, returned as a variable); skipped
  on 3.1 and later, which never fragment (test_haproxy3.py tests what they do instead).

Nothing here measures speed or sleeps: each step waits for its event (a port, a status in
HAProxy's `show stat`, a log line, an agent's answer), with harness.GUARD_S as a guard.
"""
import hashlib
import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import stack  # noqa: E402
import supervisor as sv  # noqa: E402


def server_status(stats_sock, backend, server):
    """(status, check_status, check_desc) of a server from HAProxy's `show stat`."""
    row = stack.server_row(stats_sock, backend, server) or {}
    return row.get("status"), row.get("check_status"), row.get("check_desc")


class ShippedConfig(unittest.TestCase):
    """The files in config/, as users copy them."""

    @classmethod
    def setUpClass(cls):
        cls.s = stack.shipped_stack("haproxy")
        cls.env, cls.fe_port = cls.s.env, cls.s.fe
        cls.stats = cls.s.vars["HAPROXY_STATS_SOCKET"]

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def get(self, source):
        return harness.http_request(self.fe_port, "/", source=source)

    def test_decisions_and_scores(self):
        # (client address, expected status, score, list)
        cases = [
            ("127.0.0.1", 200, "0", None),           # no list matches
            ("127.0.0.66", 403, "100", "demo-drop"),  # Spamhaus DROP-style list, score 100
            ("127.0.10.7", 200, "30", "suspicious"),  # FireHOL-style list, score 30 < 50
            ("127.0.10.5", 200, "0", "office"),      # in a deny range, but the allow list wins
        ]
        for _ in range(3):  # several rounds: both workers, fresh and reused connections
            for src, status, score, lst in cases:
                with self.subTest(source=src):
                    st, hdrs, body = self.get(src)
                    self.assertEqual(st, status, (src, hdrs, self.env.dump_logs()[-3000:]))
                    self.assertEqual(hdrs.get("x-ip-score"), score, (src, hdrs))
                    self.assertEqual(hdrs.get("x-ip-list"), lst, (src, hdrs))
                    self.assertNotIn("x-spoe-error", hdrs, (src, hdrs))
                    if status == 200:
                        self.assertEqual(body, b"hello from the backend")

    def test_spop_check_marks_the_agent_up(self):
        ok = harness.wait_for(
            lambda: server_status(self.stats, "spoe-ip-checker", "spoad")[0] == "UP")
        status, check, desc = server_status(self.stats, "spoe-ip-checker", "spoad")
        self.assertTrue(ok, (status, check, desc))
        self.assertEqual(check, "L7OK")  # the SPOP HELLO handshake passed (Layer 7)
        self.assertEqual(desc, "Layer7 check passed")


class HealthCheckDown(unittest.TestCase):
    def test_agent_goes_down_when_spoad_stops(self):
        s = stack.shipped_stack("spopcheck")
        self.addCleanup(s.stop)
        env, v, spoad = s.env, s.vars, s.spoad
        self.assertTrue(harness.wait_for(
            lambda: server_status(v["HAPROXY_STATS_SOCKET"], "spoe-ip-checker", "spoad")[0] == "UP"),
            env.dump_logs())
        spoad.stop(signal.SIGTERM)
        self.assertTrue(harness.wait_for(
            lambda: (server_status(v["HAPROXY_STATS_SOCKET"], "spoe-ip-checker", "spoad")[0] or "")
            .startswith("DOWN")), env.dump_logs())


RELOAD_SPOAD = """
agents:
  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%(agent)d
    watch: %(watch)s
    watch-delay: 100ms
    deny:
      - name: live
        score: 100
        file: %(list)s
  # The same list, always watched, asked directly over SPOP: once it has seen a change, an
  # agent that watches would have too (the test's clock, instead of a sleep).
  - name: iprep-watched
    type: ip-checker
    listen: 127.0.0.1:%(watched)d
    watch: true
    watch-delay: 100ms
    deny:
      - name: live
        score: 100
        file: %(list)s
  # The other agents config/haproxy.cfg talks to (HAProxy 2.6 stalls a request when the
  # second SPOE filter of an event finds its agent's port closed, see haproxy.cfg).
  - name: tracing
    type: tracing
    listen: %(tracing)s
    exporter:
      type: none
  - name: mirror
    type: mirror
    listen: %(mirror)s
    targets:
      - url: http://%(mirror_target)s
"""


class ListReload(unittest.TestCase):
    """Deny lists change while HAProxy keeps sending traffic: no restart needed."""

    def start(self, watch):
        s = stack.Stack("reload")
        self.addCleanup(s.stop)
        env = s.env
        p = {"agent": harness.free_port(), "list": env.path("live.txt"), "watch": watch,
             "watched": harness.free_port()}
        self.write_list(p["list"], "192.0.2.0/24\n")
        v = harness.shipped_env(env, SPOAD_IPREP_ADDR="127.0.0.1:%d" % p["agent"])
        p.update(tracing=v["SPOAD_TRACING_ADDR"], mirror=v["SPOAD_MIRROR_ADDR"],
                 mirror_target=v["MIRROR_TARGET_ADDR"])
        fe = harness.port_of(v["HAPROXY_BIND"])
        spoad = s.start_spoad(RELOAD_SPOAD % p)
        # Every worker has loaded its lists (the master's sockets accept from the start): the
        # list changes below come after that.
        self.assertTrue(harness.wait_log(spoad, "worker(s) ready"), env.dump_logs())
        s.start_haproxy(stack.shipped("haproxy.cfg"), env=v, ports=[fe, p["watched"]])
        self.watched = p["watched"]
        return env, spoad, fe, p["list"]

    def watched_blocks(self, ip="127.0.0.77"):
        """True if the always-watched agent blocks `ip`."""
        return sv.check_ip(self.watched, ip).get("txn.blocked") is True

    @staticmethod
    def write_list(path, text):
        tmp = path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)  # as list updaters do: replace the file atomically

    def status(self, fe, src="127.0.0.77"):
        return harness.http_request(fe, "/", source=src)[0]

    def test_file_change_is_picked_up_and_a_broken_file_keeps_the_old_list(self):
        env, spoad, fe, lst = self.start("true")
        self.assertEqual(self.status(fe), 200)
        self.write_list(lst, "192.0.2.0/24\n127.0.0.77/32 ; added\n")
        self.assertTrue(harness.wait_for(lambda: self.status(fe) == 403),
                        env.dump_logs()[-3000:])
        with open(lst, "a") as f:  # in-place edit that breaks the file
            f.write("not-an-address\n")
        # The agent tried to reload the list and failed: its log says why, with file:line...
        self.assertTrue(harness.wait_for(lambda: any(
            "] iprep " in line and lst + ":3" in line
            for line in spoad.output().splitlines())), spoad.output())
        self.assertEqual(self.status(fe), 403)  # ...and the previous list still applies

    def test_sighup_reloads_lists(self):
        env, spoad, fe, lst = self.start("false")
        self.assertFalse(self.watched_blocks())
        self.write_list(lst, "127.0.0.77/32\n")
        # An agent that watches the file has seen the change...
        self.assertTrue(harness.wait_for(self.watched_blocks), env.dump_logs()[-3000:])
        self.assertEqual(self.status(fe), 200)  # ...this one does not: nothing changes by itself
        spoad.send_signal(signal.SIGHUP)
        self.assertTrue(harness.wait_for(lambda: self.status(fe) == 403),
                        env.dump_logs()[-3000:])


FRAG_SPOAD = """
agents:
  - name: echo
    type: echo
    listen: 127.0.0.1:%(agent)d
    max-frame-size: 1024     # much smaller than HAProxy's 16380: HAProxy 2.6 fragments
    echo-max-size: 64        # send digests back, not the bodies (an ACK cannot be fragmented)
"""

FRAG_SPOE = """
[echo]
spoe-agent echo-agent
    messages body
    option var-prefix echo
    option set-on-error error
    timeout hello 30s
    timeout idle 2m
    timeout processing 30s
    use-backend spoe-echo

spoe-message body
    args data=req.body
    event on-frontend-http-request
"""

FRAG_HAPROXY = """
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:%(fe)d
    option http-buffer-request
    filter spoe engine echo config %(spoe)s
    http-request return status 200 content-type text/plain string "ok" hdr x-len "%%[var(txn.echo.data_len)]" hdr x-sha "%%[var(txn.echo.data_sha256)]" hdr x-err "%%[var(txn.echo.error)]"
backend spoe-echo
    mode tcp
    timeout connect 1s
    timeout server 3m
    server spoad 127.0.0.1:%(agent)d
"""


@unittest.skipIf(harness.haproxy_at_least(3, 1),
                 "needs HAProxy < 3.1: fragmentation (3.1 and later never fragment a NOTIFY, "
                 "see test_haproxy3.NoFragmentation)")
class Fragmentation(unittest.TestCase):
    def test_large_argument_arrives_whole(self):
        s = stack.Stack("frag")
        self.addCleanup(s.stop)
        env = s.env
        p = {"fe": harness.free_port(), "agent": harness.free_port(), "spoe": env.path("spoe.cfg")}
        env.write("spoe.cfg", FRAG_SPOE)
        spoad = s.start_spoad(FRAG_SPOAD % p, args=["-l", "debug"], ports=[p["agent"]])
        s.start_haproxy(FRAG_HAPROXY % p, ports=[p["fe"]])

        # HAProxy learns the small frame size from the first AGENT-HELLO; before that, an
        # oversized message fails (haproxy-facts.md). Send a small request first.
        st, hdrs, _ = harness.http_request(p["fe"], "/", method="POST", body=b"small")
        self.assertEqual(hdrs.get("x-len"), "5", (hdrs, env.dump_logs()[-4000:]))

        for size in (1000, 5000, 12000):
            body = os.urandom(size)
            st, hdrs, _ = harness.http_request(p["fe"], "/", method="POST", body=body)
            self.assertEqual(st, 200)
            self.assertNotIn("x-err", hdrs, (size, hdrs))  # set-on-error never set
            self.assertEqual(hdrs.get("x-len"), str(size), (size, hdrs, env.dump_logs()[-4000:]))
            self.assertEqual(hdrs.get("x-sha"), hashlib.sha256(body).hexdigest(), size)
        self.assertTrue(spoad.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
