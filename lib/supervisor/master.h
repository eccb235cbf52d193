// The master process: owns the listening sockets (supervisor/listeners.h), starts `workers: N`
// worker processes per agent, respawns the ones that die, reloads (new generation, then
// soft-stop of the old one), gives way to a new spoad instance (succession: a successor takes
// our sockets and connections, supervisor/takeover.h), handles signals as HAProxy's master
// does, and serves the master CLI.
//
//   SIGUSR2, SIGHUP   reload
//   SIGUSR1           soft-stop: workers stop accepting, finish, exit; then the master exits.
//                     Under HAProxy's master (HAPROXY_MWORKER set: a `program` section), the
//                     workers first keep accepting until the new spoad HAProxy started at the
//                     same time serves (succession), at most global.handover: when it took
//                     our sockets (takeover), its "serving" message makes us hand off every
//                     connection to it; otherwise (fallback: it replaced the CLI socket or
//                     the pidfile without a takeover, or nobody came in time) we soft-stop in
//                     `wait` mode.
//                     With no successor and no HAPROXY_MWORKER: `disconnect` mode.
//   SIGTERM, SIGINT   hard-stop: every process exits now
//
// Takeover, as the old instance: a new spoad with the same cli.socket connects to our takeover
// socket, gets a copy of every listening socket, and once it serves says so; we then soft-stop
// in `handoff` mode and forward each connection our workers let go (Handoff) to it (Adopt), and
// exit once they are all done and acknowledged, leaving the socket files to it. As the new
// instance: at start, before binding, take the predecessor's sockets (bind only what is
// missing), serve, say so, and adopt the connections it forwards as from an old generation.
//
// Pool state (agent/agent.h, Agent::pool_state): the master keeps the latest state a worker of
// each agent sent (PoolState, by agent name, across reloads) and gives it to every new worker
// of that agent before its Init (respawn, reload), so that it serves with it from its first
// connection; a successor gets them all in a takeover, before the listening sockets. The
// master never reads them. Without a takeover they are lost when the master stops.
//
// Metrics: the master creates each worker's metrics arena (a memfd, metrics/arena.h) and keeps
// it mapped read-only; `/metrics` (supervisor/metrics_http.h) and the master CLI's `show stat`
// read every live arena in place and the totals of the exited workers (metrics_view.h).
//
// Workers are spawned with libuv's process API (uv_spawn), which re-executes the spoad binary,
// rather than with fork(): a forked child would inherit the master's libuv loop (epoll set,
// signal pipe, thread pool) in a state libuv does not support sharing, and the master's
// memory. A fresh exec starts the worker clean and small (idle RSS of a few MiB), picks up a
// new binary on reload, and libuv reports exits on the master's loop.
//
// Files: master.cpp (start, signals, periodic work, stop), master_spawn.cpp (worker processes,
// respawn), master_channel.cpp (messages from the workers), master_reload.cpp (generations,
// reload), master_succession.cpp (takeover and its fallback), master_cli_backend.cpp (the
// master CLI's questions), master_metrics.cpp; process_table.h (who is who), pool_states.h,
// engine_ids.h, master_text.h (shared log and text helpers).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "cli/master_cli.h"
#include "config/config.h"
#include "supervisor/channel.h"
#include "supervisor/engine_ids.h"
#include "supervisor/listeners.h"
#include "supervisor/metrics_http.h"
#include "supervisor/metrics_view.h"
#include "supervisor/pool_states.h"
#include "supervisor/process_table.h"
#include "supervisor/takeover.h"
#include "util/rate_limit.h"

namespace spoad::supervisor {

struct MasterOptions {
  std::string config_path;     // -f
  std::string cli_socket;      // -S: overrides cli.socket
  std::string pidfile;         // -p: overrides global.pidfile
  std::string log_level;       // -l: overrides global.log-level (also given to workers)
  std::string metrics_listen;  // --metrics: overrides metrics.listen (checked by the caller)
};

class Master : public cli::MasterBackend {
 public:
  // Readiness deadline of a new generation (ms): past it, the reload (or the start) fails.
  static constexpr uint64_t kReadyTimeoutMs = 15'000;
  // Respawn backoff bounds (ms); a worker that lived this long resets its slot's backoff.
  static constexpr uint64_t kBackoffMinMs = 100;
  static constexpr uint64_t kBackoffMaxMs = 10'000;
  static constexpr uint64_t kStableMs = 10'000;

  Master(uv_loop_t* loop, MasterOptions opts, config::Config cfg, std::string cfg_text);
  ~Master() override;

  // Runs until stopped. Returns the exit status: 0 after a clean stop, 1 if the first
  // generation could not start.
  int run();

  // cli::MasterBackend (master_cli_backend.cpp)
  std::string show_proc() override;
  cli::Fields info() override;
  std::string version() override;
  void reload(std::function<void(std::string)> done) override;
  int worker_by_relative_pid(uint64_t relative_pid) override;
  bool is_worker(uint64_t pid) override;
  bool agent_workers(const std::string& name, std::vector<cli::PoolMember>* out) override;
  void worker_command(int pid, const cli::Words& words,
                      std::function<void(cli::WorkerAnswer)> done) override;
  bool last_reload_failed() override { return last_reload_failed_; }
  std::string metrics_exposition() override;

  // The exposition of the whole tree in format `f` (what `/metrics` answers).
  std::string render_metrics(metrics::Format f);

 private:
  // Start, signals, periodic work and stop (master.cpp).
  static cli::MasterCli::Limits cli_limits(const config::Config& cfg);
  void publish();
  void soft_stop();
  void begin_soft_stop(msg::StopMode mode);
  void soft_stop_worker(Proc& p, uint64_t grace_ms, msg::StopMode mode);
  void hard_stop();
  // Closes everything once stopping, every worker reaped and every forwarded connection read.
  void exit_if_all_done();
  void close_everything();
  static void on_signal(uv_signal_t* s, int signum);
  static void on_tick(uv_timer_t* t);
  static void on_stop_timer(uv_timer_t* t);

  // Worker processes: spawn, exit, respawn (master_spawn.cpp).
  void start_generation(Generation& g);
  Proc* spawn(Slot& s);
  void on_exit(Proc* p, int64_t status, int signal);
  void log_exit(const Proc& p, int64_t status, int signal);
  void reap(Proc* p);
  void schedule_respawn(Slot& s);
  void respawn_due(uint64_t now_ms);  // spawns the slots whose backoff ended by `now_ms`
  static void on_process_exit(uv_process_t* h, int64_t status, int signal);

  // What the workers send on their channels (master_channel.cpp).
  void on_message(Proc* p, msg::Message&& m, int fd);
  void pool_state(Proc* p, msg::PoolState&& ps);
  void hand_off(msg::Handoff&& h, int fd);

  // Generations and reload (master_reload.cpp).
  void check_generation(Generation& g);
  void generation_ready(Generation& g);
  void generation_failed(Generation& g, const std::string& why);
  void gc_generations();
  void release_listeners();
  void do_reload();
  void finish_reload(bool ok, const std::string& text);
  void finish_reload_on_stop();

  // Succession between spoad instances: takeover, both sides, and the fallback without one
  // (master_succession.cpp).
  void take_over_at_start();
  void on_successor(int fd, int pid);
  void on_successor_message(msg::Message&& m, int fd);
  void successor_lost();
  void on_predecessor_message(msg::Message&& m, int fd);
  bool successor_serves() const;
  // SIGUSR1 under HAProxy's master: serve until the successor serves, at most `wait_ms`.
  void await_successor(uint64_t wait_ms);
  // Falls back to a soft-stop past the deadline, or when a successor serves without a takeover.
  void check_successor(uint64_t now_ms);
  void succession_fallback(const char* why);
  // Succession (the engine-ids served so far) to every ready worker: new engines get closed.
  void send_engines_to_workers();

  // Metrics (master_metrics.cpp).
  config::MetricsConfig metrics_config(const config::Config& c) const;

  uv_loop_t* loop_;
  MasterOptions opts_;
  config::Config cfg_;  // the configuration the current generation runs
  std::string cfg_text_;
  std::string exe_;  // the spoad binary, re-executed for each worker
  uint64_t start_time_s_;
  int reloads_ = 0;  // successful reloads
  int failed_reloads_ = 0;
  uint64_t crashes_ = 0;  // current workers that died and were respawned
  bool last_reload_failed_ = false;
  bool stopping_ = false;
  bool awaiting_successor_ = false;  // SIGUSR1 from HAProxy: serving until the successor serves
  size_t handoff_rr_ = 0;            // round robin over the workers taking connections
  EngineIds engines_;                // the HAProxy processes served so far, for a succession
  uint64_t stop_requested_ms_ = 0;
  uint64_t succession_deadline_ms_ = 0;
  bool started_ = false;  // the first generation became ready
  int exit_status_ = 0;

  ProcessTable procs_;  // every worker process not yet reaped
  std::unique_ptr<Generation> current_;
  std::unique_ptr<Generation> next_;  // being started by a reload
  std::list<std::unique_ptr<Generation>> old_;
  int next_generation_id_ = 1;
  uint64_t next_cli_id_ = 1;

  // Every listening socket, bound once (or taken from a predecessor) and inherited by the
  // workers.
  Listeners listeners_;

  // Takeover (supervisor/takeover.h).
  static constexpr uint64_t kTakeoverAckTimeoutMs = 5'000;
  TakeoverSocket* takeover_sock_ = nullptr;  // published with the CLI socket
  bool succession_deferred_ = false;  // SIGUSR1 under HAProxy: Succession only if no takeover
  Channel* successor_ = nullptr;      // a new spoad that took (or takes) our sockets
  int successor_pid_ = 0;
  bool successor_serving_ = false;
  int successor_unacked_ = 0;  // connections forwarded, not yet acknowledged
  uint64_t ack_deadline_ms_ = 0;
  Channel* predecessor_ = nullptr;  // the spoad we took the sockets from
  int64_t predecessor_pid_ = 0;

  PoolStates pool_states_;
  util::RateLimiter pool_state_log_{5};

  // Metrics (metrics_view.h, metrics_http.h).
  MetricsView metrics_view_;
  std::unique_ptr<MetricsHttp> metrics_http_;

  std::unique_ptr<cli::MasterCli> cli_;
  std::string cli_path_;
  uint64_t cli_inode_ = 0;
  std::string pidfile_;

  // Reload requests: the ones the running reload will answer, and the ones after it.
  std::vector<std::function<void(std::string)>> reload_waiters_;
  std::vector<std::function<void(std::string)>> queued_reloads_;
  bool reload_running_ = false;

  uv_signal_t sig_[5];
  uv_timer_t tick_;        // respawns, readiness deadlines, CLI timeouts
  uv_timer_t stop_timer_;  // SIGKILL for workers that outlive a stop
  bool closing_ = false;
};

}  // namespace spoad::supervisor
