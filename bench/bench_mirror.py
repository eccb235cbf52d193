"""Mirror benchmarks (bench/run.py mirror, mirror-down): req/s with every request mirrored,
and the latency added when the mirror target is down."""
import json
import os
import statistics
import time

from bench_common import fig, haproxy_cfg, harness, sv, wrk


MIRROR_FRONTENDS = """
frontend mirror
    bind 127.0.0.1:%(fe_mirror)d
    option http-buffer-request
    filter spoe engine mirror config %(spoe_up)s
    default_backend app
frontend mirror_down
    bind 127.0.0.1:%(fe_down)d
    option http-buffer-request
    filter spoe engine mirror config %(spoe_down)s
    default_backend app
frontend plain
    bind 127.0.0.1:%(fe_plain)d
    option http-buffer-request
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:%(app)d
"""


def mirror_haproxy(p):
    return (haproxy_cfg.head(bufsize=False) + MIRROR_FRONTENDS % p
            + haproxy_cfg.spoe_backend("spoe-mirror", "127.0.0.1:%d" % p["agent_up"])
            + haproxy_cfg.spoe_backend("spoe-mirror-down", "127.0.0.1:%d" % p["agent_down"])
            + haproxy_cfg.return_frontend("server", p["app"]))

# The mirror target: a separate HAProxy process (its own thread), so that the replays do not
# take the measured HAProxy's only thread; the Python target would be the bottleneck.
def mirror_target(p):
    return haproxy_cfg.head(bufsize=False) + haproxy_cfg.return_frontend("target", p["target"], "mirrored")


def bench_mirror(rounds, seconds):
    print("== mirror: wrk -> HAProxy 2.6 (nbthread 1) -> backend, every request mirrored by "
          "spoad (one worker) to a target (a second HAProxy, http-request return)")
    env = harness.Env("bench-mirror")
    try:
        agent_up, agent_down = harness.free_port(), harness.free_port()
        dead = harness.free_port()  # nothing listens there
        p = {"fe_mirror": harness.free_port(), "fe_down": harness.free_port(),
             "fe_plain": harness.free_port(), "app": harness.free_port(),
             "target": harness.free_port(), "agent_up": agent_up, "agent_down": agent_down,
             "spoe_up": os.path.join(harness.CONFIG_DIR, "spoe-mirror.cfg")}
        with open(p["spoe_up"]) as f:
            spoe = f.read()
        down = spoe.replace("use-backend spoe-mirror\n", "use-backend spoe-mirror-down\n")
        if down == spoe:
            raise RuntimeError("config/spoe-mirror.cfg: no `use-backend spoe-mirror` line")
        p["spoe_down"] = env.write("spoe-mirror-down.cfg", down)
        sock = env.path("master.sock")
        cfg = env.write("spoad.yaml", """
cli:
  socket: %s
agents:
  - name: mirror
    type: mirror
    listen: 127.0.0.1:%d
    workers: 1
    targets:
      - url: http://127.0.0.1:%d
  - name: mirror-down
    type: mirror
    listen: 127.0.0.1:%d
    workers: 1
    targets:
      - url: http://127.0.0.1:%d
""" % (sock, agent_up, p["target"], agent_down, dead))
        env.spoad(cfg, args=["-l", "warn"])
        harness.wait_for(lambda: harness.port_open(agent_up) and harness.port_open(agent_down))
        env.haproxy(env.write("target.cfg", mirror_target(p)), name="haproxy-target")
        env.haproxy(env.write("haproxy.cfg", mirror_haproxy(p)))
        harness.wait_for(lambda: all(harness.port_open(p[k]) for k in (
            "fe_mirror", "fe_down", "fe_plain", "target")))

        def counters(rel):
            j = json.loads(sv.cli(sock, "@%d show stat json" % rel))
            return next(iter(v for v in j.values() if isinstance(v, dict)
                             and "agent_stats" in v))["agent_stats"]

        wrk(p["fe_mirror"], 1, 16)  # warm-up: HAProxy's connections to the agents are open
        wrk(p["fe_down"], 1, 16)
        before = counters(1)
        mirror, plain, bad, p99_down, p99_plain = [], [], 0, [], []
        for _ in range(rounds):
            a, na, ea, _ = wrk(p["fe_mirror"], seconds, 32)
            b, nb, eb, _ = wrk(p["fe_plain"], seconds, 32)
            mirror.append(a)
            plain.append(b)
            # Latency at a modest load (8 connections): target down vs no SPOE.
            _, nc, ec, pc = wrk(p["fe_down"], seconds, 8)
            _, nd, ed, pd = wrk(p["fe_plain"], seconds, 8)
            p99_down.append(pc)
            p99_plain.append(pd)
            bad += na + ea + nb + eb + nc + ec + nd + ed
        # The replays still in flight complete (each bounded by replay-timeout).
        harness.wait_for(lambda: counters(1)["in_flight"] == 0 and counters(2)["in_flight"] == 0,
                         interval=0.1)
        after, down = counters(1), counters(2)
        med = statistics.median
        msgs = after["messages"] - before["messages"]
        sent = after["sent"] - before["sent"]
        fig("mirror.req_per_s", int(med(mirror)), "/s", "every request mirrored")
        fig("mirror.no_spoe_req_per_s", int(med(plain)), "/s", "baseline, same run")
        fig("mirror.ratio", "%.2f" % (med(mirror) / med(plain)), "",
            "target >= 0.40 (median of %d)" % rounds)
        fig("mirror.replayed_share", "%.3f" % (sent / msgs if msgs else 0), "",
            "%d of %d messages got the target's answer; dropped_limit %d, failed %d" % (
                sent, msgs, after["dropped_limit"] - before["dropped_limit"],
                sum(after[k] - before[k] for k in ("failed_connect", "failed_timeout",
                                                    "failed_tls", "failed_other"))))
        fig("mirror.replay_latency_avg", after["latency_avg_us"], "us",
            "max %d us" % after["latency_max_us"])
        fig("mirror.target_down_p99", "%.0f" % med(p99_down), "us", "wrk -c 8")
        fig("mirror.no_spoe_p99", "%.0f" % med(p99_plain), "us", "wrk -c 8, same run")
        fig("mirror.target_down_added_p99", "%.0f" % (med(p99_down) - med(p99_plain)), "us",
            "target <= 1000 (median p99s)")
        fig("mirror.target_down_p99_ratio", "%.2f" % (med(p99_down) / med(p99_plain)), "",
            "to no SPOE, same run")
        fig("mirror.target_down_failed_connect", down["failed_connect"], "",
            "of %d messages" % down["messages"])
        fig("mirror.failed_or_non2xx", bad, "", "must be 0")
    finally:
        env.stop()


def p99(samples):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def bench_mirror_down(rounds, clients=4, pairs=150):
    """Target down, shipped config: latency through the mirror filter against a frontend
    without it, same HAProxy and app, requests interleaved on keep-alive connections."""
    import threading
    import mirror_support as ms  # the test's stack: spoad + HAProxy with the shipped files

    print("== mirror-down: config/haproxy-mirror.cfg, mirror target down, %d rounds of %d "
          "clients x %d requests to each frontend, interleaved" % (rounds, clients, pairs))
    s = ms.MirrorStack("bench-mirror-down", [("http://127.0.0.1:%d" % harness.free_port(), {})],
                       app="haproxy", plain=True, shipped_timeouts=True,
                       extra="    connect-timeout: 1s\n    replay-timeout: 5s\n")
    try:
        s.warm_up()
        before = s.stats()

        def one_round(rnd):
            lat = {"mirror": [], "plain": []}
            errors = []
            lock = threading.Lock()

            def client(i):
                conns = {"mirror": ms.Client(s.fe), "plain": ms.Client(s.plain)}
                for k in range(pairs):
                    order = ("mirror", "plain") if (i + k) % 2 == 0 else ("plain", "mirror")
                    for which in order:
                        rid = "l%d-%d-%d" % (rnd, i, k)
                        req = ms.small_get(rid, "/lat/%s/%s?x=%d" % (which, rid, k))
                        t0 = time.perf_counter()
                        try:
                            r = conns[which].request(req)
                            dt = time.perf_counter() - t0
                            ok = r.status == 200 and r.body == b"mirrored\n"
                        except Exception as e:  # noqa: BLE001
                            ok, r, dt = False, e, None
                        with lock:
                            if ok:
                                lat[which].append(dt * 1e6)
                            else:
                                errors.append((which, repr(r)))
                for c in conns.values():
                    c.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return lat, errors

        med = statistics.median
        pm_all, pp_all, errors = [], [], 0
        for rnd in range(rounds):
            lat, errs = one_round(rnd)
            errors += len(errs)
            if not lat["mirror"] or not lat["plain"]:
                continue
            pm, pp = p99(lat["mirror"]), p99(lat["plain"])
            pm_all.append(pm)
            pp_all.append(pp)
            print("  round %d: mirror p50 %5.0f us p99 %5.0f us | plain p50 %5.0f us p99 %5.0f us"
                  " | p99 ratio %.2f, difference %5.0f us" % (
                      rnd, med(lat["mirror"]), pm, med(lat["plain"]), pp, pm / pp, pm - pp),
                  flush=True)
        s.wait_idle()
        st = ms.delta(s.stats(), before)
        if pm_all:
            fig("mirror_down.p99", "%.0f" % med(pm_all), "us", "median of %d rounds" % len(pm_all))
            fig("mirror_down.no_filter_p99", "%.0f" % med(pp_all), "us", "baseline, same run")
            fig("mirror_down.p99_ratio", "%.2f" % (med(pm_all) / med(pp_all)), "",
                "to the baseline")
            fig("mirror_down.added_p99", "%.0f" % (med(pm_all) - med(pp_all)), "us",
                "target <= 1000")
        fig("mirror_down.failed_requests", errors, "", "must be 0")
        fig("mirror_down.failed_connect", st["failed_connect"], "",
            "of %d messages" % st["messages"])
    finally:
        s.stop()
