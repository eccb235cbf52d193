"""The HAProxy stack of the integration suites: one spoad and one HAProxy (harness.HAPROXY) in a
test's directory, each started and waited for (its ports, its workers), with their logs and
spoad's counters.

    s = stack.Stack("name")                  # or Stack(env, suffix="A"): a second stack in a
    s.start_spoad(yaml_text_or_path, ...)    # directory another stack or the test owns
    s.start_haproxy(cfg_text_or_path, env=variables, extra=more_cfg_text, ports=[fe])
    ...
    s.stop()

A test keeps what is its own (its configuration text, its application, its client); the
starting, waiting, failing with the logs and cleaning up are here, once. The shipped files run
through shipped() (config/ with fresh ports, harness.shipped_env).
"""
import collections
import os

import harness
import supervisor as sv


def shipped(name):
    """The path of config/<name>."""
    return os.path.join(harness.CONFIG_DIR, name)


def worker_stats(sock, rel, agent, part=None):
    """`@rel show stat json` of a spoad worker: the runtime counters of `agent` (or its `part`,
    e.g. "agent_stats", the agent's own counters)."""
    j = sv.load_json(sv.cli(sock, "@%d show stat json" % rel))[agent]
    return j[part] if part else j


def total_stats(sock, rels, agent, part=None):
    """Sums of the numeric counters of worker_stats() over the workers `rels` (a Counter)."""
    tot = collections.Counter()
    for rel in rels:
        for k, v in worker_stats(sock, rel, agent, part).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tot[k] += v
    return tot


class Stack:
    """spoad + HAProxy. `where` is a name (a fresh harness.Env, removed by stop()) or an Env a
    test owns (stop() then stops only this stack's processes); `suffix` names its processes
    and files apart from another stack's in the same directory."""

    def __init__(self, where, suffix=""):
        self.own_env = not isinstance(where, harness.Env)
        self.env = harness.Env(where) if self.own_env else where
        self.suffix = "-" + suffix if suffix else ""
        self.spoad = self.haproxy = None
        self.sock = None  # spoad's master CLI, once known
        self.tracker = sv.Tracker()

    def _file(self, config, base, ext):
        """`config` as a path: an existing file, or text written to the test's directory."""
        if "\n" not in config and os.path.exists(config):
            return config
        return self.env.write("%s%s.%s" % (base, self.suffix, ext), config)

    def start_spoad(self, config, sock=None, env=None, args=(), ports=(), workers=None):
        """Starts spoad on `config` (YAML text or a path) and waits until its CLI socket `sock`
        exists (when given), the `ports` accept and, with `workers`, that many workers answer
        (sv.wait_pool, tracked for the cleanup). Raises RuntimeError with the logs if it does
        not come up."""
        self.sock = sock or self.sock
        self.spoad = self.env.spoad(self._file(config, "spoad", "yaml"), env=env, args=args,
                                    name="spoad" + self.suffix)
        if workers is not None:
            sp = sv.wait_pool(self.sock, workers, proc=self.spoad)
            if sp is None:
                raise RuntimeError("spoad did not start its workers:\n" + self.logs())
            self.tracker.add_proc(sp)
        if not harness.wait_for(lambda: not self.spoad.alive() or (
                (sock is None or os.path.exists(sock))
                and all(harness.port_open(p) for p in ports))) or not self.spoad.alive():
            raise RuntimeError("spoad did not start:\n" + self.logs())
        return self.spoad

    def start_haproxy(self, config, env=None, extra=None, ports=(), ready=None):
        """Starts HAProxy (-db) on `config` (text or a path) plus, with `extra`, a second -f
        file of that text; waits until the `ports` accept and `ready()` (if given) is true.
        Raises RuntimeError with the logs if it does not come up."""
        args = ["-f", self.env.write("haproxy-extra%s.cfg" % self.suffix, extra)] if extra else []
        self.haproxy = self.env.haproxy(self._file(config, "haproxy", "cfg"), env=env,
                                        args=args, name="haproxy" + self.suffix)
        if not harness.wait_for(lambda: not self.haproxy.alive() or (
                all(harness.port_open(p) for p in ports) and (ready is None or ready()))) \
                or not self.haproxy.alive():
            raise RuntimeError("haproxy did not start:\n" + self.logs())
        return self.haproxy

    # ---- the shipped files: config/spoad.yaml and an HAProxy file of config/, with the
    # variables of harness.shipped_env (fresh ports and paths in the test's directory)

    def use_shipped(self, **overrides):
        """Sets self.vars (harness.shipped_env; `overrides` replace some), self.sock and
        self.fe (HAProxy's frontend port); returns self.vars, which a test may still change
        before it starts the processes."""
        self.vars = harness.shipped_env(self.env, **overrides)
        self.sock = self.vars["SPOAD_CLI_SOCKET"]
        self.fe = harness.port_of(self.vars["HAPROXY_BIND"])
        return self.vars

    def start_shipped_spoad(self, args=(), workers=None):
        """config/spoad.yaml; waits for its three agents' ports, or for `workers` workers."""
        agents = [harness.port_of(self.vars[k])
                  for k in ("SPOAD_IPREP_ADDR", "SPOAD_TRACING_ADDR", "SPOAD_MIRROR_ADDR")]
        return self.start_spoad(shipped("spoad.yaml"), sock=self.sock, env=self.vars, args=args,
                                ports=agents if workers is None else (), workers=workers)

    def start_shipped_haproxy(self, name="haproxy.cfg", text=None, ready=None):
        """config/<name> (or `text`, a changed copy of it); waits for its frontend to accept,
        or, if given, for `ready()` alone (a test counting HAProxy's log lines: a bare
        connection is a line of its own)."""
        return self.start_haproxy(text or shipped(name), env=self.vars,
                                  ports=[self.fe] if ready is None else (), ready=ready)

    def worker_stats(self, rel, agent, part=None):
        return worker_stats(self.sock, rel, agent, part)

    def total_stats(self, rels, agent, part=None):
        return total_stats(self.sock, rels, agent, part)

    def logs(self, chars=4000):
        """The end of each process's log (this stack's only, in a shared directory)."""
        return "\n".join("----- %s (%s) -----\n%s" % (p.name, p.log_path, p.output()[-chars:])
                         for p in (self.spoad, self.haproxy) if p is not None)

    def stop(self):
        if self.own_env:
            self.env.stop()
        else:
            for p in (self.haproxy, self.spoad):
                if p is not None:
                    p.stop()
        self.tracker.cleanup()


def shipped_stack(name, spoad_args=(), workers=None, haproxy="haproxy.cfg", haproxy_text=None,
                  **overrides):
    """A Stack on the shipped files, started (Stack.use_shipped, start_shipped_spoad,
    start_shipped_haproxy). The caller stops it (s.stop())."""
    s = Stack(name)
    try:
        s.use_shipped(**overrides)
        s.start_shipped_spoad(spoad_args, workers)
        s.start_shipped_haproxy(haproxy, haproxy_text)
    except BaseException:
        s.stop()
        raise
    return s


def server_row(stats_sock, backend, server):
    """The row (a dict) of `server` in `backend` from HAProxy's `show stat` on its stats
    socket, or None (not there, or HAProxy not up yet)."""
    for row in harness.haproxy_stat_rows(stats_sock) or []:
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    return None
