// Serves one agent on one address in one worker: the listening socket, its connections, the
// agent, and their counters. Knows nothing of processes.
#pragma once

#include <spdlog/logger.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>

#include "agent/agent.h"
#include "config/config.h"
#include "runtime/connection.h"
#include "runtime/stats.h"
#include "util/rate_limit.h"

namespace spoad::runtime {

class Server {
 public:
  Server(uv_loop_t* loop, const config::AgentConfig& cfg, std::unique_ptr<agent::Agent> agent,
         std::shared_ptr<spdlog::logger> log);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts accepting on cfg.listen: TCP sockets are bound with SO_REUSEPORT, so several
  // workers can share the address; Unix sockets replace a stale socket file. If `fd` >= 0,
  // that already-listening socket is used instead. Throws std::runtime_error naming the
  // address and the system error.
  void listen(int fd = -1);

  // Soft-stop: stop accepting, let each connection finish its NOTIFYs in flight and let go of
  // it as `mode` says (kHandOff needs a hand-off function, else it falls back to
  // kDisconnect); once the last connection is gone, stop the agent (Agent::stop) and when it
  // is done, call `done`.
  void soft_stop(std::function<void()> done, DrainMode mode = DrainMode::kDisconnect);

  // Where connections go when handed off: `fn(state, handle, done)` sends the socket of
  // `handle` and its `state` to the new generation and calls done(ok) once sent.
  using HandOffFn = std::function<void(const nlohmann::json& state, uv_stream_t* handle,
                                       std::function<void(bool)> done)>;
  void set_hand_off(HandOffFn fn) { handoff_ = std::move(fn); }

  // Serves an established connection handed off by the previous generation (`fd` owned).
  void adopt(int fd, const nlohmann::json& state);

  // A successor is starting on the same address (HAProxy program reload): keep accepting, so
  // that HAProxy finds someone on the port. Connections from the HAProxy processes seen before
  // (`old_engines`: the engine-ids of their HELLOs; the old HAProxy worker, soft-stopping
  // too) are served until HAProxy closes them. Those from new engines (HAProxy's new worker)
  // are closed right after their HELLO: HAProxy reads the AGENT-HELLO and the
  // AGENT-DISCONNECT together, before it sends any NOTIFY, and reconnects, soon to the
  // successor. No event is lost either way.
  void hand_over(std::unordered_set<std::string> old_engines);

  // Called by a Connection with the engine-id of its HELLO. Returns false when the connection
  // must be closed after its HELLO (a new engine during a hand-over).
  bool on_engine(const std::string& engine_id);
  // Told once per engine-id this server sees first (for the master's list of engines).
  void set_engine_callback(std::function<void(const std::string&)> cb) {
    engine_cb_ = std::move(cb);
  }

  // Hard-stop: close every connection now. `done` runs once all handles are closed, unless the
  // server had already stopped (then nothing happens).
  void hard_stop(std::function<void()> done);

  const Stats& stats() const { return stats_; }
  Stats& mutable_stats() { return stats_; }
  agent::Agent& agent() { return *agent_; }
  const config::AgentConfig& config() const { return cfg_; }
  spdlog::logger& log() { return *log_; }
  uv_loop_t* loop() const { return loop_; }
  bool stopping() const { return stopping_; }
  size_t connection_count() const { return conns_.size(); }

  // Called by Connection.
  void on_connection_closed(Connection* c);
  void hand_off(const nlohmann::json& state, uv_stream_t* handle, std::function<void(bool)> done);
  // True if a per-request warning may be logged now (at most 10 per second per server).
  bool log_limiter_allow();
  // Microseconds of a monotonic clock.
  static uint64_t now_us();

 private:
  static void on_connection(uv_stream_t* listener, int status);
  static void on_listener_closed(uv_handle_t* h);
  void accept_pending();
  void drain_accept_queue();
  void close_listener();
  void check_stopped();

  uv_loop_t* loop_;
  config::AgentConfig cfg_;
  std::unique_ptr<agent::Agent> agent_;
  std::shared_ptr<spdlog::logger> log_;
  Stats stats_;
  util::RateLimiter log_limiter_{10};
  std::string unix_path_;  // the socket file this server created, if any
  uint64_t unix_inode_ = 0;

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } listener_;
  bool listening_ = false;
  bool listener_open_ = false;
  bool listener_closing_ = false;
  bool accept_pending_ = false;  // a connection waits in the backlog (max-connections)
  bool stopping_ = false;
  bool handing_over_ = false;
  static constexpr size_t kMaxEngines = 4096;
  std::unordered_set<std::string> seen_engines_;
  std::unordered_set<std::string> old_engines_;
  std::function<void(const std::string&)> engine_cb_;
  HandOffFn handoff_;
  bool agent_stop_called_ = false;  // Agent::stop() called (after the last connection)
  bool agent_stopped_ = false;      // ... and its `done` ran
  bool stopped_ = false;            // the stop callback has run
  std::function<void()> stopped_cb_;
  std::unordered_set<Connection*> conns_;
};

}  // namespace spoad::runtime
