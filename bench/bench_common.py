"""What the benchmark modules share (bench/run.py runs them): the integration tests' support on
the path (harness, supervisor), the build's binaries, the figure printer, and the spoa-bench and
wrk runners."""
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402,F401
import haproxy_cfg  # noqa: E402,F401
import supervisor as sv  # noqa: E402,F401

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
