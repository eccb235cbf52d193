#!/usr/bin/env python3
"""spoad benchmarks. Prints figures; asserts nothing. Run through scripts/bench.

  agent    spoa-bench -> spoad ip-checker (one worker): NOTIFY->ACK per second and latency,
           beside the echo agent on the same runtime as a same-run baseline.
  e2e      wrk -> HAProxy 2.6 (nbthread 1, http-request return) with one NOTIFY per request to
           spoad, as a ratio of req/s to the same HAProxy frontend without SPOE, same run.
  metrics  the same e2e path with spoad's metrics endpoint on (--metrics, /metrics scraped
           every second) and off (a second spoad), same HAProxy, interleaved rounds: req/s
           medians and their ratio.
  memory   RSS of an idle spoad; load time and RSS with 1,000,000 deny prefixes; lookup
           latency from ip-checker-bench.
  reload-haproxy
           HAProxy reloads under keep-alive load: with spoad in a program section (2.x to
           3.2), the time from HAProxy's `reload` to the new spoad serving, and how long
           HAProxy's new worker waits for its first ACK (its own processing time of its first
           event); the same-run baseline is the same HAProxy with spoad apart (not reloaded).
           Also spoad's own `reload` under that traffic. Medians over the reloads.
  mirror   wrk -> HAProxy 2.6 (nbthread 1) -> backend, every request mirrored by spoad to a
           local target, as a ratio of req/s to the same path without SPOE, same run; and the
           p99 added when the target is down.
  mirror-down
           the shipped config/haproxy-mirror.cfg with the mirror target down: p99 latency of
           requests through the filter, as a ratio and a difference to a frontend without the
           filter in the same HAProxy, measured interleaved on keep-alive connections (the
           figure tests/integration/test_mirror.py used to assert; tests count outcomes only).
  ip-store 100,000 ip-checker runtime entries added through Redis (bench/ip_store.py): the time
           until two spoad instances applied them, RSS per worker, and lookup cost with and
           without them (e2e req/s through HAProxy, spoa-bench with random addresses, and
           ip-checker-bench --runtime in process), same run.

The machines are shared and noisy: every figure is a median of several rounds, and the
comparisons are ratios against a baseline measured in the same run.
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import haproxy_cfg  # noqa: E402
import ip_store  # noqa: E402
import supervisor as sv  # noqa: E402

BUILD = os.environ.get("BUILD_DIR", os.path.join(harness.SOURCE_ROOT, "build"))
SPOA_BENCH = os.path.join(BUILD, "cmd", "spoa-bench", "spoa-bench")
IPC_BENCH = os.path.join(BUILD, "agents", "ip-checker", "ip-checker-bench")


children = harness.children


def fig(name, value, unit="", note=""):
    print("%-34s %12s %-6s %s" % (name, value, unit, note), flush=True)


def spoa_bench(addr, seconds, conns, depth, message, args):
    argv = [SPOA_BENCH, "-a", addr, "-c", str(conns), "-d", str(depth), "-t", str(seconds),
            "--warmup", "1", "-m", message, "--json"]
    if args is None:
        argv.append("--no-args")
    for a in args or []:
        argv += ["--arg", a]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise RuntimeError("spoa-bench failed: %s %s" % (out.stdout, out.stderr))


def bench_agent(rounds, seconds):
    print("== agent: spoa-bench -> spoad (one worker per agent), 4 connections x depth 16")
    env = harness.Env("bench-agent")
    try:
        p_ip, p_echo = harness.free_port(), harness.free_port()
        lists = env.write("deny.txt", "".join("10.%d.%d.0/24 ; bench\n" % (i // 256, i % 256)
                                              for i in range(10000)))
        cfg = env.write("spoad.yaml", haproxy_cfg.iprep_yaml(p_ip, "file: " + lists) + """  - name: echo
    type: echo
    listen: 127.0.0.1:%d
""" % p_echo)
        spoad = env.spoad(cfg, args=["-l", "warn"])
        if not harness.wait_for(lambda: harness.port_open(p_ip) and harness.port_open(p_echo)):
            raise RuntimeError(env.dump_logs())
        ip_runs, echo_runs = [], []
        for _ in range(rounds):
            ip_runs.append(spoa_bench("127.0.0.1:%d" % p_ip, seconds, 4, 16, "check-client-ip",
                                      ["ip=ipv4:10.1.2.3"]))
            echo_runs.append(spoa_bench("127.0.0.1:%d" % p_echo, seconds, 4, 16, "ping", None))
        def med(runs, *path):
            vals = []
            for r in runs:
                for k in path:
                    r = r[k]
                vals.append(r)
            return statistics.median(vals)
        errors = sum(r["errors"]["total"] for r in ip_runs + echo_runs)
        fig("agent.ip_checker.frames_per_s", int(med(ip_runs, "frames_per_s")), "/s",
            "target >= 200000 (median of %d x %ds)" % (rounds, seconds))
        fig("agent.ip_checker.p50_us", med(ip_runs, "latency_us", "p50"), "us")
        fig("agent.ip_checker.p99_us", med(ip_runs, "latency_us", "p99"), "us", "target < 1000")
        fig("agent.ip_checker.max_us", med(ip_runs, "latency_us", "max"), "us")
        fig("agent.echo_baseline.frames_per_s", int(med(echo_runs, "frames_per_s")), "/s",
            "same runtime, echo agent, message without arguments")
        fig("agent.ratio_ip_checker_to_echo",
            "%.2f" % (med(ip_runs, "frames_per_s") / med(echo_runs, "frames_per_s")), "")
        fig("agent.errors", errors, "", "must be 0")
        fig("agent.worker_rss_after", max(harness.rss_kib(k) for k in children(spoad.pid)) // 1024,
            "MiB")
    finally:
        env.stop()


def e2e_haproxy(p):
    """HAProxy of the e2e benchmark: the ip-checker frontend, and the same without SPOE."""
    return (haproxy_cfg.head() + haproxy_cfg.iprep_frontend("with_spoe", p["fe_spoe"], p["spoe"])
            + haproxy_cfg.return_frontend("without_spoe", p["fe_plain"])
            + haproxy_cfg.spoe_backend("spoe-ip-checker", p["agent"]))


def wrk(port, seconds, conns):
    out = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency",
                          "http://127.0.0.1:%d/" % port], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_us = None
    if p99:
        p99_us = float(p99.group(1)) * {"us": 1, "ms": 1000, "s": 1e6}[p99.group(2)]
    return (float(m.group(1)) if m else 0.0,
            int(non2xx.group(1)) if non2xx else 0,
            sum(int(x) for x in errs.groups()) if errs else 0, p99_us)


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


def bench_memory():
    print("== memory")
    env = harness.Env("bench-mem")
    try:
        port = harness.free_port()
        cfg = env.write("idle.yaml", """
agents:
  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%d
    deny:
      - name: small
        score: 100
        entries: [192.0.2.0/24]
""" % port)
        idle = env.spoad(cfg, args=["-l", "warn"], name="idle")
        harness.wait_for(lambda: harness.port_open(port))
        time.sleep(0.5)
        kids = children(idle.pid)
        fig("memory.idle_worker_rss", "%.1f" % (max(harness.rss_kib(k) for k in kids) / 1024), "MiB",
            "target <= 8")
        fig("memory.master_rss", "%.1f" % (harness.rss_kib(idle.pid) / 1024), "MiB")
        idle.stop()

        rng = random.Random(1)
        path = env.path("million.netset")
        with open(path, "w") as f:
            f.write("# 1,000,000 random deny prefixes\n")
            for _ in range(1_000_000):
                plen = rng.randint(8, 32)
                a = rng.getrandbits(32) & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
                f.write("%d.%d.%d.%d/%d\n" % (a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255, plen))
        port = harness.free_port()
        cfg = env.write("million.yaml", """
agents:
  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%d
    deny:
      - name: million
        score: 100
        file: %s
""" % (port, path))
        t0 = time.time()
        big = env.spoad(cfg, args=["-l", "warn"], name="million")
        harness.wait_for(lambda: harness.port_open(port), timeout=60, interval=0.01)
        load_s = time.time() - t0
        time.sleep(0.5)
        fig("memory.million_prefixes_worker_rss",
            "%.1f" % (max(harness.rss_kib(k) for k in children(big.pid)) / 1024), "MiB", "target <= 64")
        fig("memory.million_prefixes_start", int(load_s * 1000), "ms",
            "process start to listening, list load included; target < 2000")
        big.stop()
    finally:
        env.stop()
    if os.path.exists(IPC_BENCH):
        out = subprocess.run([IPC_BENCH], capture_output=True, text=True, timeout=300).stdout
        for line in out.splitlines():
            print("  ip-checker-bench: " + line)


def bench_reload(rounds):
    print("== reload: time from `reload` to the new workers serving (Success=1), 2 agents x 2 workers")
    env = harness.Env("bench-reload")
    try:
        p1, p2 = harness.free_port(), harness.free_port()
        sock = env.path("master.sock")
        cfg = env.write("spoad.yaml", """
cli:
  socket: %s
agents:
  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%d
    workers: 2
    deny:
      - name: drop
        score: 100
        file: %s
  - name: echo
    type: echo
    listen: 127.0.0.1:%d
    workers: 2
""" % (sock, p1, os.path.join(harness.CONFIG_DIR, "lists", "demo-drop.txt"), p2))
        env.spoad(cfg, args=["-l", "warn"])
        harness.wait_for(lambda: os.path.exists(sock), timeout=20)
        times, spawn = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            out = sv.cli(sock, "reload")
            t1 = time.perf_counter()
            if not out.startswith("Success=1"):
                raise RuntimeError(out)
            if not harness.port_open(p1) or not harness.port_open(p2):
                raise RuntimeError("not serving after reload")
            times.append((t1 - t0) * 1000)
            # Baseline, same run: starting one process of the same binary.
            t0 = time.perf_counter()
            subprocess.run([harness.SPOAD, "--version"], capture_output=True)
            spawn.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.2)
        fig("reload.to_serving_median", "%.1f" % statistics.median(times), "ms",
            "target < 300 (median of %d)" % rounds)
        fig("reload.to_serving_max", "%.1f" % max(times), "ms")
        fig("reload.process_start_baseline", "%.1f" % statistics.median(spawn), "ms",
            "spoad --version, same run")
        fig("reload.ratio_to_process_start",
            "%.1f" % (statistics.median(times) / statistics.median(spawn)), "")
    finally:
        env.stop()


RELOAD_HAPROXY = """
global
%(global)s
    stats socket %(stats)s mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
%(program)s
frontend www
    bind 127.0.0.1:%(fe)d
    filter spoe engine ip-checker config %(spoe)s
    http-request deny deny_status 403 if { var(txn.iprep.blocked) -m bool }
    http-after-response set-header X-Pid %%pid
    http-after-response set-header X-Rt %%rt
    http-after-response set-header X-Ptime %%[var(txn.iprep.ptime)] if { var(txn.iprep.ptime) -m found }
    http-after-response set-header X-SPOE-Error %%[var(txn.iprep.error)] if { var(txn.iprep.error) -m found }
    default_backend app
backend app
    http-request return status 200 content-type text/plain string "ok"
backend spoe-ip-checker
    mode tcp
    balance roundrobin
    timeout connect 1s
    timeout server 3m
    option spop-check
    server spoad 127.0.0.1:%(agent)d check inter 1s
"""


class _ReloadLoad:
    """A few keep-alive HTTP clients; every response is recorded as (time, pid, rt, ptime in
    ms, latency in us, SPOE error)."""

    def __init__(self, port, n=4):
        import threading
        self.port, self.stop_ev, self.lock = port, threading.Event(), threading.Lock()
        self.rows = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_ev.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                continue
            lat = (time.perf_counter() - t0) * 1e6
            h = {k.lower(): v for k, v in r.getheaders()}
            ptime = h.get("x-ptime")
            row = (time.time(), int(h.get("x-pid", 0)), int(h.get("x-rt", 0)),
                   int(ptime) if ptime not in (None, "") else None, lat, "x-spoe-error" in h)
            with self.lock:
                self.rows.append(row)

    def since(self, t):
        with self.lock:
            return [r for r in self.rows if r[0] >= t]

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)


def _reload_layout(rounds, program):
    """One layout of bench_reload_haproxy: `program` runs spoad from HAProxy's program section
    (HAProxy reloads spoad too), otherwise spoad runs apart (only HAProxy reloads). Returns
    {figure: [values per reload]}."""
    env = harness.Env("bench-reload-hap")
    try:
        agent, fe = harness.free_port(), harness.free_port()
        sock, hsock = env.path("spoad.sock"), env.path("haproxy-master.sock")
        with open(os.path.join(harness.CONFIG_DIR, "spoe-ip-checker.cfg")) as f:
            spoe = f.read()
        # The shipped file plus one line: HAProxy's own processing time of each event
        # (txn.iprep.ptime, milliseconds).
        spoe = spoe.replace("    option var-prefix iprep\n",
                            "    option var-prefix iprep\n    option set-process-time ptime\n")
        yaml = env.write("spoad.yaml", """
global:
  log-level: warn
  grace: 10s
cli:
  socket: %s
agents:
  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%d
    workers: 2
    deny:
      - name: drop
        score: 100
        file: %s
""" % (sock, agent, os.path.join(harness.CONFIG_DIR, "lists", "demo-drop.txt")))
        glob_lines = []
        prog = ""
        if program:
            if harness.haproxy_at_least(3, 1):
                glob_lines.append("    expose-deprecated-directives")
            prog = "program spoad\n    command %s -f %s\n" % (harness.SPOAD, yaml)
        else:
            env.spoad(yaml)
            harness.wait_for(lambda: harness.port_open(agent))
        cfg = env.write("haproxy.cfg", RELOAD_HAPROXY % {
            "global": "\n".join(glob_lines), "program": prog, "fe": fe, "agent": agent,
            "stats": env.path("haproxy.sock"), "spoe": env.write("spoe-ip-checker.cfg", spoe)})
        env.start("haproxy", [harness.HAPROXY, "-W", "-db", "-S", hsock, "-f", cfg], cwd=env.dir)

        def spoad_serving(exclude):
            """The spoad master pid once its CLI answers from a master not in `exclude` with
            its 2 workers answering `show info`."""
            try:
                sp = sv.show_proc(sock, timeout=2)
                if sp.master.pid in exclude or len(sp.workers) != 2:
                    return None
                for w in sp.workers:
                    if "Pid: %d\n" % w.pid not in sv.cli(sock, "@%d show info" % w.rel, timeout=2):
                        return None
                return sp.master.pid
            except (OSError, ValueError, sv.CliTimeout):
                return None

        harness.wait_for(lambda: harness.haproxy_workers(hsock) and spoad_serving(()), interval=0.05)
        load = _ReloadLoad(fe)
        try:
            harness.wait_for(lambda: len(load.since(0)) > 200)
            masters = {spoad_serving(())}
            figs = {"takeover_ms": [], "first_ack_ms": [], "worst_first20_ms": [],
                    "first_latency_us": [], "steady_latency_us": [], "steady_ptime_ms": [],
                    "spoe_errors": [], "spoad_reload_ms": [], "first_errors": []}
            for _ in range(rounds):
                t_steady = time.time()
                time.sleep(1.0)
                steady = load.since(t_steady)
                figs["steady_latency_us"].append(statistics.median(r[4] for r in steady))
                figs["steady_ptime_ms"].append(statistics.median(r[3] or 0 for r in steady))
                old = harness.haproxy_workers(hsock) or set()
                t0 = time.perf_counter()
                t0_wall = time.time()
                sv.cli(hsock, "reload", timeout=30)
                if program:
                    m = harness.wait_for(lambda: spoad_serving(masters), interval=0.005)
                    figs["takeover_ms"].append((time.perf_counter() - t0) * 1000)
                    masters.add(m)
                new = harness.wait_for(lambda: (harness.haproxy_workers(hsock) or old) - old, interval=0.01)
                # The new worker's first events: its lowest request counters (%rt).
                def first_rows():
                    rows = [r for r in load.since(t0_wall) if r[1] in new]
                    return rows if len(rows) >= 50 else None
                rows = harness.wait_for(first_rows, timeout=10, interval=0.05) or \
                    [r for r in load.since(t0_wall) if r[1] in new]
                rows.sort(key=lambda r: r[2])
                if rows:
                    figs["first_errors"].append(int(rows[0][5]))
                    figs["first_ack_ms"].append(rows[0][3] or 0)
                    figs["first_latency_us"].append(rows[0][4])
                    figs["worst_first20_ms"].append(max(r[3] or 0 for r in rows[:20]))
                figs["spoe_errors"].append(sum(r[5] for r in load.since(t0_wall)))
                # spoad's own reload under the same traffic: `reload` to Success=1.
                t1 = time.perf_counter()
                out = sv.cli(sock, "reload", timeout=30)
                if out.startswith("Success=1"):
                    figs["spoad_reload_ms"].append((time.perf_counter() - t1) * 1000)
        finally:
            load.stop()
        return figs
    finally:
        env.stop()


def bench_reload_haproxy(rounds):
    """HAProxy reloads with spoad in a program section (2.x to 3.2) and, as the same-run
    baseline, with spoad running apart (HAProxy alone reloads; its new worker still opens new
    connections to spoad and sends its HELLO)."""
    ver = ".".join(str(x) for x in harness.haproxy_version())
    print("== reload-haproxy: HAProxy %s reloads under keep-alive load (4 clients), %d rounds; "
          "ip-checker, 2 workers" % (ver, rounds))
    med = statistics.median
    apart = _reload_layout(rounds, program=False)
    prog = _reload_layout(rounds, program=True) if not harness.haproxy_at_least(3, 3) else None
    if prog:
        fig("reload_haproxy.takeover", "%.1f" % med(prog["takeover_ms"]), "ms",
            "program: HAProxy `reload` -> the new spoad serving (CLI, all workers); max %.1f"
            % max(prog["takeover_ms"]))
        fig("reload_haproxy.first_ack_wait", "%.0f" % med(prog["first_ack_ms"]), "ms",
            "program: HAProxy's processing time of the new worker's first event; max %d; "
            "%d of %d failed" % (max(prog["first_ack_ms"]), sum(prog["first_errors"]),
                                 len(prog["first_errors"])))
        fig("reload_haproxy.first20_worst", "%.0f" % med(prog["worst_first20_ms"]), "ms",
            "program: slowest of the new worker's first 20 events; max %d"
            % max(prog["worst_first20_ms"]))
        fig("reload_haproxy.first_req_latency", "%.0f" % med(prog["first_latency_us"]), "us",
            "program: the new worker's first request, client side")
    else:
        print("  (HAProxy %s has no program section: the systemd layout only)" % ver)
    fig("reload_haproxy.base_first_ack_wait", "%.0f" % med(apart["first_ack_ms"]), "ms",
        "baseline, same run (spoad apart, not reloaded); max %d; %d of %d failed" % (
            max(apart["first_ack_ms"]), sum(apart["first_errors"]), len(apart["first_errors"])))
    fig("reload_haproxy.base_first20_worst", "%.0f" % med(apart["worst_first20_ms"]), "ms",
        "baseline, same run")
    fig("reload_haproxy.base_first_req_lat", "%.0f" % med(apart["first_latency_us"]), "us",
        "baseline, same run")
    fig("reload_haproxy.steady_req_latency", "%.0f" % med(apart["steady_latency_us"]), "us",
        "any request between reloads, same run")
    if prog:
        fig("reload_haproxy.first_req_ratio",
            "%.2f" % (med(prog["first_latency_us"]) / med(apart["first_latency_us"])), "",
            "program / baseline, the new worker's first request")
    both = apart["spoad_reload_ms"] + (prog["spoad_reload_ms"] if prog else [])
    fig("reload_haproxy.spoad_reload", "%.1f" % med(both), "ms",
        "spoad `reload` -> Success=1 under the same traffic, median of %d" % len(both))
    errors = sum(apart["spoe_errors"]) + (sum(prog["spoe_errors"]) if prog else 0)
    fig("reload_haproxy.spoe_errors", errors, "", "responses with X-SPOE-Error; should be 0")


TRACING_FRONTENDS = """
frontend full
    bind 127.0.0.1:%(fe_full)d
    option httplog
    unique-id-format %%{+X}o\\ %%ci:%%cp_%%fi:%%fp_%%Ts_%%rt:%%pid
    filter spoe engine tracing config %(spoe_full)s
    default_backend app
frontend lean
    bind 127.0.0.1:%(fe_lean)d
    option httplog
    unique-id-format %%{+X}o\\ %%ci:%%cp_%%fi:%%fp_%%Ts_%%rt:%%pid
    filter spoe engine tracing config %(spoe_lean)s
    default_backend app
frontend plain
    bind 127.0.0.1:%(fe_plain)d
    default_backend app
backend app
    http-request set-header traceparent %%[var(txn.trace.traceparent)] if { var(txn.trace.traceparent) -m found }
    http-reuse always
    server app 127.0.0.1:%(app)d
"""


def tracing_haproxy(p):
    return (haproxy_cfg.head(bufsize=False) + TRACING_FRONTENDS % p
            + haproxy_cfg.spoe_backend("spoe-tracing", p["agent"])
            + haproxy_cfg.return_frontend("server", p["app"]))


def bench_tracing(rounds, seconds):
    print("== tracing: wrk -> HAProxy 2.6 (nbthread 1) -> real backend, every request traced "
          "(file exporter)")
    env = harness.Env("bench-tracing")
    try:
        agent = harness.free_port()
        p = {"fe_full": harness.free_port(), "fe_lean": harness.free_port(),
             "fe_plain": harness.free_port(), "app": harness.free_port(),
             "agent": "127.0.0.1:%d" % agent,
             "spoe_full": os.path.join(harness.CONFIG_DIR, "spoe-tracing.cfg"),
             "spoe_lean": os.path.join(harness.CONFIG_DIR, "spoe-tracing-lean.cfg")}
        cfg = env.write("spoad.yaml", """
agents:
  - name: tracing
    type: tracing
    listen: 127.0.0.1:%d
    workers: 1
    exporter:
      type: file
      file: %s
""" % (agent, env.path("traces.jsonl")))
        env.spoad(cfg, args=["-l", "warn"])
        harness.wait_for(lambda: harness.port_open(agent))
        env.haproxy(env.write("haproxy.cfg", tracing_haproxy(p)))
        harness.wait_for(lambda: all(harness.port_open(p[k]) for k in ("fe_full", "fe_lean",
                                                                           "fe_plain")))
        wrk(p["fe_full"], 1, 16)
        wrk(p["fe_lean"], 1, 16)
        full, lean, plain, bad = [], [], [], 0
        for _ in range(rounds):
            a, na, ea, _ = wrk(p["fe_full"], seconds, 32)
            b, nb, eb, _ = wrk(p["fe_lean"], seconds, 32)
            c, nc, ec, _ = wrk(p["fe_plain"], seconds, 32)
            full.append(a)
            lean.append(b)
            plain.append(c)
            bad += na + ea + nb + eb + nc + ec
        med = statistics.median
        fig("tracing.full_req_per_s", int(med(full)), "/s")
        fig("tracing.lean_req_per_s", int(med(lean)), "/s")
        fig("tracing.no_spoe_req_per_s", int(med(plain)), "/s", "baseline, same run")
        fig("tracing.full_ratio", "%.2f" % (med(full) / med(plain)), "",
            "target >= 0.30 (spoa-opentracing: 0.14)")
        fig("tracing.lean_ratio", "%.2f" % (med(lean) / med(plain)), "", "target >= 0.50")
        fig("tracing.failed_or_non2xx", bad, "", "must be 0")
        with open(env.path("traces.jsonl")) as f:
            lines = sum(1 for _ in f)
        fig("tracing.export_batches_written", lines, "")
    finally:
        env.stop()


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*",
                    default=["agent", "e2e", "metrics", "memory", "reload", "reload-haproxy",
                             "tracing", "mirror", "mirror-down", "ip-store"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    for w in a.which:
        {"agent": lambda: bench_agent(a.rounds, a.seconds),
         "e2e": lambda: bench_e2e(a.rounds, a.seconds),
         "metrics": lambda: bench_metrics(max(10, a.rounds), a.seconds),
         "memory": bench_memory,
         "reload": lambda: bench_reload(max(10, a.rounds)),
         "reload-haproxy": lambda: bench_reload_haproxy(max(7, a.rounds)),
         "tracing": lambda: bench_tracing(a.rounds, a.seconds),
         "mirror": lambda: bench_mirror(a.rounds, a.seconds),
         "mirror-down": lambda: bench_mirror_down(max(5, a.rounds)),
         "ip-store": lambda: ip_store.bench(a.rounds, a.seconds, fig, wrk, SPOA_BENCH,
                                            IPC_BENCH)}[w]()


if __name__ == "__main__":
    main()
