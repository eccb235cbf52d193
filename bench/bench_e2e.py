"""Benchmarks of the e2e path, wrk -> HAProxy -> SPOE -> spoad ip-checker (bench/run.py e2e,
metrics): req/s against the same HAProxy without SPOE, and with the metrics endpoint on and off."""
import os
import statistics
import subprocess
import time

from bench_common import fig, haproxy_cfg, harness, wrk


def e2e_haproxy(p):
    """HAProxy of the e2e benchmark: the ip-checker frontend, and the same without SPOE."""
    return (haproxy_cfg.head() + haproxy_cfg.iprep_frontend("with_spoe", p["fe_spoe"], p["spoe"])
            + haproxy_cfg.return_frontend("without_spoe", p["fe_plain"])
            + haproxy_cfg.spoe_backend("spoe-ip-checker", p["agent"]))


def bench_e2e(rounds, seconds):
    print("== e2e: wrk -> HAProxy %s (nbthread 1) -> SPOE -> spoad ip-checker"
          % subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2])
    env = harness.Env("bench-e2e")
    try:
        agent = harness.free_port()
        p = {"fe_spoe": harness.free_port(), "fe_plain": harness.free_port(),
             "agent": "127.0.0.1:%d" % agent,
             "spoe": os.path.join(harness.CONFIG_DIR, "spoe-ip-checker.cfg")}
        cfg = env.write("spoad.yaml", haproxy_cfg.iprep_yaml(agent))
        env.spoad(cfg, args=["-l", "warn"])
        harness.wait_for(lambda: harness.port_open(agent))
        env.haproxy(env.write("haproxy.cfg", e2e_haproxy(p)))
        harness.wait_for(lambda: harness.port_open(p["fe_spoe"]) and harness.port_open(p["fe_plain"]))
        wrk(p["fe_spoe"], 1, 16)  # warm-up: connections to the agent are open
        with_s, without_s, ratios, bad, p99s = [], [], [], 0, []
        for _ in range(rounds):
            a, na, ea, pa = wrk(p["fe_spoe"], seconds, 32)
            b, nb, eb, pb = wrk(p["fe_plain"], seconds, 32)
            with_s.append(a)
            without_s.append(b)
            ratios.append(a / b if b else 0)
            bad += na + ea + nb + eb
            p99s.append((pa, pb))
        fig("e2e.with_spoe_req_per_s", int(statistics.median(with_s)), "/s")
        fig("e2e.without_spoe_req_per_s", int(statistics.median(without_s)), "/s", "baseline")
        fig("e2e.ratio", "%.2f" % statistics.median(ratios), "", "target >= 0.5 (median of %d)"
            % rounds)
        fig("e2e.with_spoe_p99", statistics.median(x[0] for x in p99s if x[0]), "us")
        fig("e2e.without_spoe_p99", statistics.median(x[1] for x in p99s if x[1]), "us")
        fig("e2e.failed_or_non2xx", bad, "", "must be 0")
    finally:
        env.stop()


def metrics_haproxy(p):
    """HAProxy of the metrics benchmark: one ip-checker frontend per spoad (on, off)."""
    return (haproxy_cfg.head() + haproxy_cfg.iprep_frontend("metrics_on", p["fe_on"], p["spoe_on"])
            + haproxy_cfg.iprep_frontend("metrics_off", p["fe_off"], p["spoe_off"])
            + haproxy_cfg.spoe_backend("spoe-on", p["agent_on"])
            + haproxy_cfg.spoe_backend("spoe-off", p["agent_off"]))


def bench_metrics(rounds, seconds):
    """e2e with the metrics endpoint on (--metrics, scraped every second) and off: two spoad
    instances (one ip-checker worker each), the same HAProxy, runs interleaved."""
    import threading
    import urllib.request

    print("== metrics: wrk -> HAProxy (nbthread 1) -> SPOE -> spoad ip-checker, with --metrics "
          "and a scraper on /metrics every second, and without, %d interleaved rounds" % rounds)
    env = harness.Env("bench-metrics")
    stop = threading.Event()
    scrapes = {"ok": 0, "failed": 0, "ms": [], "bytes": 0}

    def scraper(addr):
        next_t = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen("http://%s/metrics" % addr, timeout=10) as r:
                    scrapes["bytes"] = len(r.read())
                scrapes["ok"] += 1
                scrapes["ms"].append((time.monotonic() - t0) * 1000)
            except OSError:
                scrapes["failed"] += 1
            next_t += 1.0  # the scrape interval: the shape of the load
            stop.wait(max(0.0, next_t - time.monotonic()))

    try:
        a_on, a_off, m_port = harness.free_port(), harness.free_port(), harness.free_port()
        with open(os.path.join(harness.CONFIG_DIR, "spoe-ip-checker.cfg")) as f:
            spoe = f.read()
        p = {"fe_on": harness.free_port(), "fe_off": harness.free_port(),
             "agent_on": "127.0.0.1:%d" % a_on, "agent_off": "127.0.0.1:%d" % a_off,
             "spoe_on": env.write("spoe-on.cfg", spoe.replace("use-backend spoe-ip-checker",
                                                              "use-backend spoe-on")),
             "spoe_off": env.write("spoe-off.cfg", spoe.replace("use-backend spoe-ip-checker",
                                                                "use-backend spoe-off"))}
        m_addr = "127.0.0.1:%d" % m_port
        env.spoad(env.write("on.yaml", haproxy_cfg.iprep_yaml(a_on)),
                  args=["-l", "warn", "--metrics", m_addr],
                  name="spoad-on")
        env.spoad(env.write("off.yaml", haproxy_cfg.iprep_yaml(a_off)), args=["-l", "warn"],
                  name="spoad-off")
        ports = (a_on, a_off, m_port)
        if not harness.wait_for(lambda: all(harness.port_open(x) for x in ports)):
            raise RuntimeError(env.dump_logs())
        env.haproxy(env.write("haproxy.cfg", metrics_haproxy(p)))
        harness.wait_for(lambda: harness.port_open(p["fe_on"]) and harness.port_open(p["fe_off"]))
        threading.Thread(target=scraper, args=(m_addr,), daemon=True).start()
        wrk(p["fe_on"], 1, 16)  # warm-up: connections to both agents are open
        wrk(p["fe_off"], 1, 16)
        on, off, ratios, bad = [], [], [], 0
        for i in range(rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            got = {}
            for which in order:
                rps, non2xx, errs, _ = wrk(p["fe_" + which], seconds, 32)
                got[which] = rps
                bad += non2xx + errs
            on.append(got["on"])
            off.append(got["off"])
            ratios.append(got["on"] / got["off"] if got["off"] else 0)
            print("  round %d (%s first): on %d req/s, off %d req/s, ratio %.3f" % (
                i, order[0], got["on"], got["off"], ratios[-1]), flush=True)
        stop.set()
        med = statistics.median
        fig("metrics.on_req_per_s", int(med(on)), "/s",
            "--metrics, /metrics scraped every second")
        fig("metrics.off_req_per_s", int(med(off)), "/s", "baseline, same run")
        # The headline is the median of the per-round ratios: each compares two runs a few
        # seconds apart, which a shared machine's load disturbs less than the whole run.
        fig("metrics.ratio", "%.3f" % med(ratios), "",
            "median of per-round on/off ratios; target >= 0.97 (%d rounds x %ds; ratio of the "
            "medians %.3f)" % (rounds, seconds, med(on) / med(off)))
        fig("metrics.ratio_range", "%.3f-%.3f" % (min(ratios), max(ratios)), "",
            "per-round ratios, min-max: their spread shows the machine's noise")
        fig("metrics.scrapes", scrapes["ok"], "", "failed %d; last %d bytes" % (
            scrapes["failed"], scrapes["bytes"]))
        if scrapes["ms"]:
            fig("metrics.scrape_ms_median", "%.2f" % med(scrapes["ms"]), "ms",
                "max %.2f ms" % max(scrapes["ms"]))
        fig("metrics.failed_or_non2xx", bad, "", "must be 0")
    finally:
        stop.set()
        env.stop()
