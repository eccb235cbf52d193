"""ip-store benchmark (scripts/bench ip-store): 100,000 ip-checker runtime entries added through
Redis, as another spoad instance (or any tool) would add them, and what they cost.

Setup: a redis-server on a free port (no persistence); spoad instances A and B standing for
two hosts (2 ip-checker workers each, the same `store:`) and C, configured alike with a key
prefix of its own (it never gets an entry: the baseline); one HAProxy (nbthread 1) with a
frontend to A and one to C.

1. Before any entry, `rounds` rounds of A then C (the order alternates): wrk -> HAProxy -> agent
   (one NOTIFY per request; req/s) and spoa-bench -> the agent's port (4 connections x depth
   16, a random IPv4 address per NOTIFY: frames/s and latency). Their A/C ratios are the noise
   floor.
2. `rounds` times: 100,000 deny entries (80% /32, 20% /24, random IPv4) written into Redis in
   the store's format (agents/ip-checker/store.h: one SET per entry, one PUBLISH per change
   on "<prefix>changes"), pipelined over one connection; the time from the first write until
   every worker of A, then of B, reports 100,000 runtime entries (`@N show stat json`). Then,
   but for the last time, `@iprep clear ip <list>` on A's CLI (through the store) and the
   time until every worker of both reports 0.
3. With the entries in A (and B), the rounds of 1 again: A/C with the entries.
4. kill -9 of a worker of B: the time until the respawned worker reports 100,000 entries
   (pool state from the master, then the store's resync).
5. In process, `ip-checker-bench --runtime 100000` (when built): the lookup time with and
   without an overlay of 100,000 runtime entries over 1,000,000 list prefixes.
RSS of every worker of A and B before the entries, with them, and after a clear.

Figures are printed (medians of the rounds, ratios with/without in the same run); nothing is
asserted.
"""
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import haproxy_cfg  # noqa: E402
import redis_server  # noqa: E402
import supervisor as sv  # noqa: E402

N_ENTRIES = 100_000
AGENT = "iprep"
LIST = "bench"

SPOAD_YAML = """
global:
  log-level: warn
agents:
  - name: %(agent)s
    type: ip-checker
    listen: 127.0.0.1:%(port)d
    workers: 2
    deny:
      - name: %(list)s
        score: 100
    store:
      url: %(url)s
      key-prefix: "%(prefix)s"
"""

def random_prefixes(n, seed=11):
    """n distinct IPv4 prefixes as text (80% /32, 20% /24), none in 0/8 or 127/8 (the clients
    of the e2e measure are loopback addresses)."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        plen = 24 if rng.random() < 0.2 else 32
        a = rng.getrandbits(32) & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
        if (a >> 24) in (0, 127) or (a, plen) in seen:
            continue
        seen.add((a, plen))
        out.append("%d.%d.%d.%d/%d" % (a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255, plen))
    return out


def store_commands(prefixes, key_prefix, origin):
    """The Redis commands that add `prefixes` to LIST as the store does (store.h): the entry's
    key, then the change announced on the channel. No expiry, score 100, comment "bench"."""
    comment = b"bench".hex()
    cmds = []
    for p in prefixes:
        cmds.append(["SET", "%sentry:%s:%s" % (key_prefix, LIST, p), "d 100 0 %s" % comment])
        cmds.append(["PUBLISH", key_prefix + "changes",
                     "%s add %s %s d 100 0 %s" % (origin, LIST, p, comment)])
    return cmds


def random_ip_bench(spoa_bench_path, addr, seconds):
    """spoa-bench, 4 connections x depth 16, a new random IPv4 address per NOTIFY."""
    argv = [spoa_bench_path, "-a", addr, "-c", "4", "-d", "16", "-t", str(seconds), "--warmup", "1",
            "-m", "check-client-ip", "--random-ip", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise RuntimeError("spoa-bench failed: %s %s" % (out.stdout, out.stderr))


def runtime_entries(sock, rel):
    """Runtime entries of worker `rel` (its `show stat json`), or None if it does not answer."""
    out = sv.try_cli(sock, "@%d show stat json" % rel, timeout=10)
    if out is None:
        return None
    try:
        st = sv.load_json(out)[AGENT]["agent_stats"]
    except (AssertionError, KeyError):
        return None
    v = st.get("runtime_entries")
    if isinstance(v, dict):  # per list
        v = sum(v.values())
    return v


class Instance:
    def __init__(self, env, name, redis, key_prefix):
        self.name = name
        self.sock = env.path(name + ".sock")
        self.port = harness.free_port()
        cfg = env.write(name + ".yaml", SPOAD_YAML % {
            "agent": AGENT, "port": self.port, "list": LIST, "url": redis.url(),
            "prefix": key_prefix})
        self.proc = env.spoad(cfg, args=["-S", self.sock], name="spoad-" + name)
        self.tracker = sv.Tracker()

    def ready(self):
        sp = sv.wait_pool(self.sock, 2, proc=self.proc)
        if sp is None:
            raise RuntimeError("spoad %s did not start:\n%s" % (self.name, self.proc.output()))
        self.tracker.add_proc(sp)
        ok = harness.wait_for(lambda: all(
            "disconnected" not in (sv.try_cli(self.sock, "@%d show store" % w.rel) or
                                   "disconnected") for w in sp.workers), interval=0.1)
        if not ok:
            raise RuntimeError("spoad %s: store not connected:\n%s" % (self.name,
                                                                     self.proc.output()))

    def workers(self):
        return sv.show_proc(self.sock).workers

    def counts(self):
        return [runtime_entries(self.sock, w.rel) for w in self.workers()]

    def rss_mib(self):
        return [harness.rss_kib(w.pid) / 1024 for w in self.workers()]


def wait_all(instances, n, t0, guard=600):
    """Polls until every worker of each instance reports `n` runtime entries; returns
    {name: seconds since t0 when its last worker got there} (None: not within `guard`)."""
    done = {}

    def check():
        for i in instances:
            if i.name not in done and all(c == n for c in i.counts()):
                done[i.name] = time.time() - t0
        return len(done) == len(instances)
    harness.wait_for(check, timeout=guard, interval=0.05)
    return {i.name: done.get(i.name) for i in instances}


def bench(rounds, seconds, fig, wrk, spoa_bench_path, ipc_bench_path):
    """fig, wrk: bench/run.py's figure printer and wrk runner; spoa_bench_path,
    ipc_bench_path: the spoa-bench and ip-checker-bench binaries."""
    if not redis_server.available():
        print("== ip-store: SKIPPED, redis-server is not installed (scripts/deps.sh)")
        return
    print("== ip-store: %d runtime entries through Redis, spoad instances A and B (2 ip-checker "
          "workers each, same store), C (same, its own key prefix: never any entry), HAProxy in "
          "front of A and C; %d rounds" % (N_ENTRIES, rounds), flush=True)
    env = harness.Env("bench-ip-store")
    med = statistics.median
    insts = []
    try:
        redis = redis_server.Redis(env, persist=False).start()
        key_prefix = "spoad-bench-%d:" % os.getpid()
        a = Instance(env, "a", redis, key_prefix)
        b = Instance(env, "b", redis, key_prefix)
        c = Instance(env, "c", redis, key_prefix + "baseline:")
        insts = [a, b, c]
        for i in insts:
            i.ready()
        fe = {"a": harness.free_port(), "c": harness.free_port()}
        with open(os.path.join(harness.CONFIG_DIR, "spoe-ip-checker.cfg")) as f:
            spoe = f.read()
        cfg = []
        for k in ("a", "c"):
            spoe_k = env.write("spoe-%s.cfg" % k, spoe.replace(
                "use-backend spoe-ip-checker", "use-backend spoe-%s" % k))
            cfg.append(haproxy_cfg.iprep_frontend("fe-%s" % k, fe[k], spoe_k)
                       + haproxy_cfg.spoe_backend("spoe-%s" % k,
                                                  "127.0.0.1:%d" % {"a": a, "c": c}[k].port))
        env.haproxy(env.write("haproxy.cfg", haproxy_cfg.head() + "".join(cfg)))
        harness.wait_for(lambda: all(harness.port_open(p) for p in fe.values()))
        for p in fe.values():
            wrk(p, 1, 16)  # warm-up: HAProxy's connections to the agents are open

        def compare(label):
            """Rounds of A and C measured in turn (the order alternates): {"e2e": [A/C per
            round], "agent": [...], "rows": [...]}."""
            out = {"e2e": [], "agent": [], "rows": []}
            for r in range(rounds):
                got = {}
                for k in (("a", "c") if r % 2 == 0 else ("c", "a")):
                    rps, non2xx, errs, _ = wrk(fe[k], seconds, 32)
                    sb = random_ip_bench(spoa_bench_path, "127.0.0.1:%d" % {"a": a, "c": c}[k].port,
                                         seconds)
                    got[k] = {"rps": rps, "fps": sb["frames_per_s"], "p50": sb["latency_us"]["p50"],
                              "p99": sb["latency_us"]["p99"],
                              "bad": non2xx + errs + sb["errors"]["total"]}
                out["e2e"].append(got["a"]["rps"] / got["c"]["rps"] if got["c"]["rps"] else 0)
                out["agent"].append(got["a"]["fps"] / got["c"]["fps"] if got["c"]["fps"] else 0)
                out["rows"].append(got)
                print("  %s, round %d: e2e A %d req/s, C %d req/s (%.3f); spoa-bench A %d/s p50 "
                      "%s us, C %d/s p50 %s us (%.3f)" % (
                          label, r, got["a"]["rps"], got["c"]["rps"], out["e2e"][-1],
                          got["a"]["fps"], got["a"]["p50"], got["c"]["fps"], got["c"]["p50"],
                          out["agent"][-1]), flush=True)
            return out

        before = compare("no entries")
        rss_before = {i.name: i.rss_mib() for i in (a, b)}

        prefixes = random_prefixes(N_ENTRIES)
        # Encoded before the clock starts: what is timed is Redis and spoad, not Python.
        batches = redis_server.Resp.batches(
            store_commands(prefixes, key_prefix, "%016x" % random.getrandbits(64)))
        rss_with, rss_cleared = None, None
        write_s, apply, clear = [], {"a": [], "b": []}, []
        for r in range(rounds):
            rc = redis.client()
            t0 = time.time()
            try:
                replies = rc.pipeline_encoded(batches)
            finally:
                rc.close()
            write_s.append(time.time() - t0)
            bad = [x for x in replies if isinstance(x, redis_server.RedisError)]
            if bad:
                raise RuntimeError("redis refused %d commands: %s" % (len(bad), bad[:3]))
            got = wait_all((a, b), N_ENTRIES, t0)
            for k, v in got.items():
                apply[k].append(v)
            print("  write %d: written and announced in %.2f s; every worker of A at %d after %s "
                  "s, of B after %s s" % (r, write_s[-1], N_ENTRIES, _s(got["a"]), _s(got["b"])),
                  flush=True)
            if rss_with is None:
                rss_with = {i.name: i.rss_mib() for i in (a, b)}
            if r == rounds - 1:
                break
            t0 = time.time()
            out = sv.cli(a.sock, "@%s clear ip %s" % (AGENT, LIST))
            got = wait_all((a, b), 0, t0)
            clear.append(None if None in got.values() else max(got.values()))
            print("  clear %d: %s; every worker of A and B at 0 after %s s" % (
                r, out.strip().splitlines()[0] if out.strip() else "(no answer)", _s(clear[-1])),
                flush=True)
            if rss_cleared is None:
                rss_cleared = {i.name: i.rss_mib() for i in (a, b)}
        if not all(c_ == 0 for c_ in c.counts()):
            raise RuntimeError("C got runtime entries: %s" % c.counts())

        after = compare("A with %d entries" % N_ENTRIES)

        # A respawned worker: pool state from the master, then the store's resync.
        victim = b.workers()[0]
        t0 = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        sp = sv.wait_pool(b.sock, 2, exclude={victim.pid}, proc=b.proc)
        respawn = None
        if sp is not None:
            b.tracker.add_proc(sp)
            if harness.wait_for(lambda: runtime_entries(b.sock, victim.rel) == N_ENTRIES,
                                timeout=600, interval=0.05):
                respawn = time.time() - t0

        fig("ip_store.entries", N_ENTRIES, "", "deny, 80% /32 + 20% /24, random IPv4")
        fig("ip_store.redis_write", "%.2f" % med(write_s), "s",
            "SET + PUBLISH each, pipelined from Python, one connection (median of %d)"
            % len(write_s))
        for k in ("a", "b"):
            vals = [v for v in apply[k] if v is not None]
            fig("ip_store.applied_%s" % k, "%.2f" % med(vals) if vals else "never", "s",
                "first write -> every worker of %s at %d (median; %s)" % (
                    k.upper(), N_ENTRIES, ", ".join(_s(v) for v in apply[k])))
        lag = [max(x, y) - w for x, y, w in zip(apply["a"], apply["b"], write_s)
               if x is not None and y is not None]
        if lag:
            fig("ip_store.applied_after_last_write", "%.2f" % med(lag), "s",
                "last write acknowledged -> every worker of A and B at %d" % N_ENTRIES)
        if clear:
            vals = [v for v in clear if v is not None]
            fig("ip_store.clear", "%.2f" % med(vals) if vals else "never", "s",
                "`@iprep clear ip` on A -> every worker of A and B at 0")
        fig("ip_store.respawn_to_entries", _s(respawn), "s",
            "kill -9 of a worker of B -> the new one reports %d" % N_ENTRIES)
        for k in ("a", "b"):
            fig("ip_store.worker_rss_%s" % k, " / ".join("%.1f" % x for x in rss_before[k]),
                "MiB", "each worker, before the entries")
            fig("ip_store.worker_rss_%s_with" % k, " / ".join("%.1f" % x for x in rss_with[k]),
                "MiB", "with %d entries" % N_ENTRIES)
            if rss_cleared:
                fig("ip_store.worker_rss_%s_cleared" % k,
                    " / ".join("%.1f" % x for x in rss_cleared[k]), "MiB", "after a clear")

        def col(res, k, f):
            return med(row[k][f] for row in res["rows"])
        fig("ip_store.e2e_a_with", int(col(after, "a", "rps")), "/s",
            "wrk -> HAProxy -> A with the entries (median of %d x %ds)" % (rounds, seconds))
        fig("ip_store.e2e_c", int(col(after, "c", "rps")), "/s", "-> C, no entry, same rounds")
        fig("ip_store.e2e_ratio_with", "%.3f" % med(after["e2e"]), "",
            "A/C per round, A with the entries")
        fig("ip_store.e2e_ratio_without", "%.3f" % med(before["e2e"]), "",
            "A/C per round before the entries (the noise floor)")
        fig("ip_store.agent_a_with", int(col(after, "a", "fps")), "/s",
            "spoa-bench -> A, random IPv4, p50 %s us, p99 %s us" % (col(after, "a", "p50"),
                                                                 col(after, "a", "p99")))
        fig("ip_store.agent_c", int(col(after, "c", "fps")), "/s",
            "-> C, p50 %s us, p99 %s us" % (col(after, "c", "p50"), col(after, "c", "p99")))
        fig("ip_store.agent_ratio_with", "%.3f" % med(after["agent"]), "", "A/C per round")
        fig("ip_store.agent_ratio_without", "%.3f" % med(before["agent"]), "",
            "A/C per round before the entries")
        fig("ip_store.errors", sum(row[k]["bad"] for res in (before, after) for row in res["rows"]
                                   for k in row), "", "failed or non-2xx requests, spoa-bench "
            "errors; must be 0")
    finally:
        env.stop()
        for i in insts:
            i.tracker.cleanup()
    # In process: one lookup with and without an overlay of N_ENTRIES runtime entries over
    # 1,000,000 list prefixes, same addresses, alternating runs (ip-checker-bench --runtime).
    if os.path.exists(ipc_bench_path):
        out = subprocess.run([ipc_bench_path, "--runtime", str(N_ENTRIES)], capture_output=True,
                             text=True, timeout=600).stdout
        for line in out.splitlines():
            if line.startswith("rt_") or "runtime entries" in line:
                print("  ip-checker-bench: " + line, flush=True)


def _s(v):
    return "never" if v is None else "%.2f" % v
