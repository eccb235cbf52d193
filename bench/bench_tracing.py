"""The tracing benchmark (bench/run.py tracing): wrk -> HAProxy -> real backend, every request
traced by spoad (file exporter), full and lean SPOE files against no SPOE."""
import os
import statistics

from bench_common import fig, haproxy_cfg, harness, wrk


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
