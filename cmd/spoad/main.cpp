// spoad: HAProxy SPOE agents under one supervisor.
//
//   spoad -f FILE [-S SOCKET] [-p PIDFILE] [--metrics ADDR]
//                                            master: starts and supervises the worker pools
//   spoad -c -f FILE                         check FILE: exit 0 (valid) or 1 (errors on stderr)
//   spoad --version | --list-agents
//
// The master re-executes this binary with --worker for each worker process (internal).
#include <uv.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <string>

#include "agent/registry.h"
#include "config/config.h"
#include "supervisor/master.h"
#include "supervisor/worker_process.h"
#include "util/escape.h"
#include "util/log.h"
#include "version.h"

namespace {

using spoad::config::Config;

// The same checks as a start: parse_config (done by the caller) is what the master and each
// worker run on the same bytes (the channel carries them unchanged), and each agent is built
// as a worker builds it, which loads its lists and files. Only what needs the running system
// (binding the addresses) is left to the start.
int check_config(const Config& cfg) {
  for (const auto& ac : cfg.agents) {
    spoad::agent::Context ctx;
    ctx.name = ac.name;
    ctx.log = spoad::util::make_logger(ac.name);
    try {
      ac.agent_type->create(ctx, *ac.options);
    } catch (const std::exception& e) {
      // Worded as a worker that cannot start reports it (supervisor/worker_process.cpp).
      const spoad::config::ConfigError err(cfg.file, ac.line, "agents", ac.name + ": " + e.what());
      std::fprintf(stderr, "%s\n", err.what());
      return 1;
    }
  }
  std::printf("Configuration file is valid\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"spoad: HAProxy Stream Processing Offload Agents under one supervisor"};
  spoad::supervisor::MasterOptions mo;
  bool check = false;
  bool version = false;
  bool list_agents = false;
  bool worker = false;
  app.add_option("-f,--config", mo.config_path, "configuration file (YAML)");
  app.add_flag("-c,--check", check, "check the configuration and exit 0 (valid) or 1");
  app.add_option("-S,--cli-socket", mo.cli_socket, "master CLI socket path (overrides cli.socket)");
  app.add_option("-p,--pidfile", mo.pidfile,
                 "write the master pid there (overrides global.pidfile)");
  app.add_option("-l,--log-level", mo.log_level,
                 "trace, debug, info, warn, error, critical or off (overrides global.log-level)");
  app.add_option("--metrics", mo.metrics_listen,
                 "serve Prometheus metrics on ADDR (host:port or [v6]:port; overrides "
                 "metrics.listen)");
  app.add_flag("-v,--version", version, "print the version and exit");
  app.add_flag("--list-agents", list_agents, "list the agent types and exit");
  app.add_flag("--worker", worker, "internal: run as a worker of a master")->group("");
  CLI11_PARSE(app, argc, argv);

  if (worker) return spoad::supervisor::run_worker(3);
  if (version) {
    std::printf("spoad version %s\n", SPOAD_VERSION);
    return 0;
  }
  if (list_agents) {
    for (const auto* t : spoad::agent::agent_types())
      std::printf("%-12.*s %.*s\n", static_cast<int>(t->name.size()), t->name.data(),
                  static_cast<int>(t->description.size()), t->description.data());
    return 0;
  }
  if (!mo.metrics_listen.empty()) {
    spoad::config::ListenAddress a;
    std::string err;
    if (!spoad::config::parse_metrics_listen(mo.metrics_listen, &a, &err)) {
      std::fprintf(stderr, "spoad: --metrics %s: %s\n",
                   spoad::util::printable(mo.metrics_listen, 256).c_str(), err.c_str());
      return 1;
    }
  }
  if (mo.config_path.empty()) {
    std::fprintf(stderr, "spoad: no configuration file: use -f FILE (see --help)\n");
    return 1;
  }
  Config cfg;
  std::string text;
  try {
    text = spoad::config::read_text(mo.config_path);
    cfg = spoad::config::parse_config(text, mo.config_path);
  } catch (const std::exception& e) {  // ConfigError, or anything else the parser throws
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  spoad::util::set_log_level(mo.log_level.empty() ? cfg.log_level : mo.log_level);
  if (check) return check_config(cfg);
  spoad::supervisor::Master master(uv_default_loop(), mo, std::move(cfg), std::move(text));
  const int status = master.run();
  uv_loop_close(uv_default_loop());
  return status;
}
