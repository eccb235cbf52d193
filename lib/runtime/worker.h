// The agents one process serves, each on its own Server, all on one libuv loop. Knows
// nothing of signals or of other processes: the caller (cmd/spoad, the supervisor) decides
// when to start and stop.
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "config/config.h"
#include "metrics/arena.h"
#include "runtime/server.h"

namespace spoad::runtime {

class Worker {
 public:
  // `agents`: the configured agents to serve. `arena`: where every counter of this process
  // goes (metrics/arena.h; the master's shared arena of this worker); nullptr: a private one.
  // Each agent gets a metrics::Scope of it (labels agent, type) in agent::Context::metrics,
  // and its Server registers runtime::Stats there. The heartbeat the master watches
  // (spoad_worker_heartbeat_ms) is the worker process's (supervisor/worker_process.cpp).
  Worker(uv_loop_t* loop, std::vector<config::AgentConfig> agents,
         std::shared_ptr<metrics::Arena> arena = nullptr);
  ~Worker();

  // Pool states (agent/agent.h), before start(): `states` maps an agent name to the state its
  // pool last sent. start() gives each agent its own (restore_pool_state, when not empty)
  // after constructing it and before it starts or accepts a connection. A restore that throws
  // is logged and counted (spoad_pool_state_restore_failures_total); the agent then serves as
  // constructed.
  void set_pool_states(std::map<std::string, std::string> states) {
    pool_states_ = std::move(states);
  }
  // `fn(server)` runs when the agent of `server` calls Context::pool_state_changed. Without
  // it, such calls do nothing.
  void set_pool_state_callback(std::function<void(Server&)> fn) { pool_state_cb_ = std::move(fn); }

  // Builds each agent and starts listening. `fds[i]`, if given and not empty, holds the
  // already-listening sockets for agents[i] (Server::listen); else the server binds itself.
  // Throws std::runtime_error (agent that cannot start, address that cannot be bound).
  void start(const std::vector<std::vector<int>>& fds = {});

  // Soft-stop every server (connections let go as `mode` says); after `grace_ms`
  // (milliseconds) whatever is left is closed at once. `done` runs when everything is closed.
  // Called again while stopping, it only changes `mode` (Server::soft_stop).
  void soft_stop(uint64_t grace_ms, std::function<void()> done,
                 DrainMode mode = DrainMode::kDisconnect);

  // Hard-stop: close everything now; `done` runs when all handles are closed.
  void hard_stop(std::function<void()> done);

  // Server::begin_succession() on every server (HAProxy program reload without a takeover).
  void begin_succession(const std::unordered_set<std::string>& old_engines);

  // Asks each agent to re-read its external data (lists).
  void reload_agents();

  const std::vector<std::unique_ptr<Server>>& servers() const { return servers_; }
  bool stopping() const { return stopping_; }

 private:
  static void on_grace(uv_timer_t* t);
  void server_stopped();

  uv_loop_t* loop_;
  std::vector<config::AgentConfig> agents_;
  std::shared_ptr<metrics::Arena> arena_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::map<std::string, std::string> pool_states_;  // agent name -> state, until start()
  std::function<void(Server&)> pool_state_cb_;
  uv_timer_t grace_timer_;
  bool grace_armed_ = false;
  bool stopping_ = false;
  size_t running_ = 0;
  std::function<void()> done_;
};

}  // namespace spoad::runtime
