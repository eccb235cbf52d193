// spoad: HAProxy SPOE agents under one supervisor.
//
//   spoad -f FILE          serve the agents of FILE
//   spoad -c -f FILE       check FILE and exit 0 (valid) or 1 (errors on stderr)
//   spoad --version
//   spoad --list-agents
//
// Signals: SIGTERM/SIGINT hard-stop, SIGUSR1 soft-stop (bounded by global.grace),
// SIGHUP/SIGUSR2 reload the agents' external data.
#include <uv.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "agent/registry.h"
#include "config/config.h"
#include "runtime/worker.h"
#include "util/log.h"
#include "version.h"

namespace {

using spoad::config::Config;

int check_config(const Config& cfg) {
  // Build every agent without a loop: this loads their lists and files as a start would.
  for (const auto& ac : cfg.agents) {
    spoad::agent::Context ctx;
    ctx.name = ac.name;
    ctx.log = spoad::util::make_logger(ac.name);
    try {
      ac.agent_type->create(ctx, *ac.options);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s:%d: agents: %s: %s\n", cfg.file.c_str(), ac.line, ac.name.c_str(),
                   e.what());
      return 1;
    }
  }
  std::printf("Configuration file is valid\n");
  return 0;
}

// Runs every agent in this process until a stop signal.
class SingleProcess {
 public:
  SingleProcess(uv_loop_t* loop, const Config& cfg)
      : loop_(loop),
        cfg_(cfg),
        log_(spoad::util::make_logger("spoad")),
        worker_(std::make_unique<spoad::runtime::Worker>(loop, cfg.agents)) {}

  int run() {
    try {
      worker_->start();
    } catch (const std::exception& e) {
      log_->critical("cannot start: {}", e.what());
      worker_->hard_stop(nullptr);
      uv_run(loop_, UV_RUN_DEFAULT);
      return 1;
    }
    log_->info("spoad {} ready, pid {}", SPOAD_VERSION, uv_os_getpid());
    watch(term_, SIGTERM);
    watch(intr_, SIGINT);
    watch(usr1_, SIGUSR1);
    watch(usr2_, SIGUSR2);
    watch(hup_, SIGHUP);
    uv_run(loop_, UV_RUN_DEFAULT);
    worker_.reset();
    uv_run(loop_, UV_RUN_DEFAULT);  // close callbacks of whatever the agents released
    uv_loop_close(loop_);
    log_->info("exiting");
    return 0;
  }

 private:
  void watch(uv_signal_t& s, int signum) {
    uv_signal_init(loop_, &s);
    s.data = this;
    uv_signal_start(&s, on_signal, signum);
  }

  static void on_signal(uv_signal_t* s, int signum) {
    auto* self = static_cast<SingleProcess*>(s->data);
    auto done = [self] { self->close_signals(); };
    switch (signum) {
      case SIGTERM:
      case SIGINT:
        self->log_->info("{}: hard-stop", signum == SIGTERM ? "SIGTERM" : "SIGINT");
        self->worker_->hard_stop(done);
        break;
      case SIGUSR1:
        self->log_->info("SIGUSR1: soft-stop (grace {} ms)", self->cfg_.grace_ms);
        self->worker_->soft_stop(self->cfg_.grace_ms, done);
        break;
      default:
        self->log_->info("{}: reloading agent data", signum == SIGHUP ? "SIGHUP" : "SIGUSR2");
        self->worker_->reload_agents();
        break;
    }
  }

  void close_signals() {
    for (uv_signal_t* s : {&term_, &intr_, &usr1_, &usr2_, &hup_})
      if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(s)))
        uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
  }

  uv_loop_t* loop_;
  const Config& cfg_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<spoad::runtime::Worker> worker_;
  uv_signal_t term_, intr_, usr1_, usr2_, hup_;
};

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"spoad: HAProxy Stream Processing Offload Agents under one supervisor"};
  std::string file;
  bool check = false;
  bool version = false;
  bool list_agents = false;
  std::string log_level;
  app.add_option("-f,--config", file, "configuration file (YAML)");
  app.add_flag("-c,--check", check, "check the configuration and exit 0 (valid) or 1");
  app.add_flag("-v,--version", version, "print the version and exit");
  app.add_flag("--list-agents", list_agents, "list the agent types and exit");
  app.add_option("-l,--log-level", log_level,
                 "trace, debug, info, warn, error, critical or off (overrides global.log-level)");
  CLI11_PARSE(app, argc, argv);

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
  if (file.empty()) {
    std::fprintf(stderr, "spoad: no configuration file: use -f FILE (see --help)\n");
    return 1;
  }
  Config cfg;
  try {
    cfg = spoad::config::load_config(file);
  } catch (const spoad::config::ConfigError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  spoad::util::set_log_level(log_level.empty() ? cfg.log_level : log_level);
  if (check) return check_config(cfg);
  return SingleProcess(uv_default_loop(), cfg).run();
}
