"""Benchmarks of spoad alone, without HAProxy (bench/run.py agent, memory): NOTIFY->ACK
throughput and latency with spoa-bench, and memory (idle, with 1,000,000 prefixes)."""
import os
import random
import statistics
import subprocess
import time

from bench_common import IPC_BENCH, children, fig, haproxy_cfg, harness, spoa_bench


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


def bench_memory():
    print("== memory")
    env = harness.Env("bench-mem")
    try:
        port = harness.free_port()
        cfg = env.write("idle.yaml", haproxy_cfg.iprep_yaml(port))  # one deny entry
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
        cfg = env.write("million.yaml", haproxy_cfg.iprep_yaml(port, "file: " + path))
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
