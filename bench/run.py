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

This file is the command line; the benchmarks are in bench_agent.py (agent, memory), bench_e2e.py
(e2e, metrics), bench_reload.py (reload, reload-haproxy), bench_tracing.py, bench_mirror.py
(mirror, mirror-down) and ip_store.py, their shared helpers in bench_common.py.
"""
import argparse

import ip_store
from bench_agent import bench_agent, bench_memory
from bench_common import IPC_BENCH, SPOA_BENCH, fig, wrk
from bench_e2e import bench_e2e, bench_metrics
from bench_mirror import bench_mirror, bench_mirror_down
from bench_reload import bench_reload, bench_reload_haproxy
from bench_tracing import bench_tracing


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
