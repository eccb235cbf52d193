"""Reload benchmarks (bench/run.py reload, reload-haproxy): spoad's own `reload` to serving,
and HAProxy reloads under keep-alive load with spoad in a program section or apart."""
import os
import statistics
import subprocess
import time

from bench_common import fig, harness, sv


def iprep_pool_yaml(sock, port):
    """spoad's CLI on `sock` and one ip-checker agent of 2 workers on 127.0.0.1:`port`, its
    deny list config/lists/demo-drop.txt (further agents may follow)."""
    return """
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
""" % (sock, port, os.path.join(harness.CONFIG_DIR, "lists", "demo-drop.txt"))


def bench_reload(rounds):
    print("== reload: time from `reload` to the new workers serving (Success=1), 2 agents x 2 workers")
    env = harness.Env("bench-reload")
    try:
        p1, p2 = harness.free_port(), harness.free_port()
        sock = env.path("master.sock")
        cfg = env.write("spoad.yaml", iprep_pool_yaml(sock, p1) + """  - name: echo
    type: echo
    listen: 127.0.0.1:%d
    workers: 2
""" % p2)
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
        yaml = env.write("spoad.yaml", "\nglobal:\n  log-level: warn\n  grace: 10s"
                         + iprep_pool_yaml(sock, agent))
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
