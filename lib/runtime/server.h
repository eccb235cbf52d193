// Serves one agent in one worker: its listening sockets, its connections, the agent, and their
// counters. Knows nothing of processes.
//
// The listening sockets are normally inherited from the master (supervisor/listeners.h): one
// or more per worker, all polled alike (a reload that shrinks a pool leaves a worker several).
// The server never closes a socket it did not bind while connections may wait in its queue:
// a soft-stop just stops polling and closes this process's copy; the master's copy keeps the
// waiting connections for the next worker of the slot.
//
// Budgets, each with a counter (Stats) and a rate-limited log line:
// - max-connections: beyond it the server stops accepting (new connections wait in the
//   kernel's backlog) until one closes (Stats::max_conn_reached);
// - accept errors (EMFILE/ENFILE at fd exhaustion, ENOBUFS/ENOMEM...): the server stops
//   accepting for a while (100 ms, doubling up to 1 s while errors persist) and retries by
//   itself; waiting connections stay in the backlog rather than being accepted and closed as
//   libuv's own accept loop would (Stats::accept_errors);
// - max-reassembly-bytes: the reassembly buffers of all its connections together
//   (reassembly_budget(); Stats::reassembly_refused).
#pragma once

#include <spdlog/logger.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "agent/agent.h"
#include "config/config.h"
#include "runtime/connection.h"
#include "runtime/connection_host.h"
#include "runtime/stats.h"
#include "spop/reassembler.h"
#include "util/rate_limit.h"

namespace spoad::runtime {

// The host of its connections (runtime/connection_host.h): they see it only through that
// interface.
class Server final : public ConnectionHost {
 public:
  // `metrics`: where the counters (Stats) are registered, labelled with the agent; a default
  // Scope counts in a private arena.
  Server(uv_loop_t* loop, const config::AgentConfig& cfg, std::unique_ptr<agent::Agent> agent,
         std::shared_ptr<spdlog::logger> log, const metrics::Scope& metrics = metrics::Scope());
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts accepting on `fds`: already-listening sockets for cfg.listen (owned from now on),
  // polled alike. With none (a worker started by an older master), binds cfg.listen itself:
  // TCP with SO_REUSEPORT (runtime/listener.h), a unix socket by rename. Throws
  // std::runtime_error naming the address and the system error.
  void listen(const std::vector<int>& fds = {});

  // Soft-stop: stop accepting, let each connection finish its NOTIFYs in flight and let go of
  // it as `mode` says (kHandOff needs a hand-off function, else it falls back to
  // kDisconnect); once the last connection is gone, stop the agent (Agent::stop) and when it
  // is done, call `done`. Called again while stopping, only the mode of the connections left
  // changes (`done` is ignored).
  void soft_stop(std::function<void()> done, DrainMode mode = DrainMode::kDisconnect);

  // Where connections go when handed off: `fn(state, handle, done)` sends the socket of
  // `handle` and its `state` to the new generation and calls done(ok) once sent.
  using HandOffFn = std::function<void(const nlohmann::json& state, uv_stream_t* handle,
                                       std::function<void(bool)> done)>;
  void set_hand_off(HandOffFn fn) { handoff_ = std::move(fn); }

  // Serves an established connection handed off by the previous generation (`fd` owned).
  void adopt(int fd, const nlohmann::json& state);

  // Fallback of a HAProxy program reload when no successor took the sockets over
  // (supervisor/master.h): keep accepting, so that HAProxy finds someone on the port. Connections
  // from the HAProxy processes seen before
  // (`old_engines`: the engine-ids of their HELLOs; the old HAProxy worker, soft-stopping
  // too) are served until HAProxy closes them. Those from new engines (HAProxy's new worker)
  // are closed right after their HELLO: HAProxy reads the AGENT-HELLO and the
  // AGENT-DISCONNECT together, before it sends any NOTIFY, and reconnects, soon to the
  // successor. No event is lost either way.
  void begin_succession(std::unordered_set<std::string> old_engines);

  // Called by a Connection with the engine-id of its HELLO. Returns false when the connection
  // must be closed after its HELLO (a new engine during a succession).
  bool on_engine(const std::string& engine_id) override;
  // Told once per engine-id this server sees first (for the master's list of engines).
  void set_engine_callback(std::function<void(const std::string&)> cb) {
    engine_cb_ = std::move(cb);
  }

  // Hard-stop: close every connection now. `done` runs once all handles are closed, unless the
  // server had already stopped (then nothing happens).
  void hard_stop(std::function<void()> done);

  const Stats& stats() const { return stats_; }
  Stats& mutable_stats() override { return stats_; }
  // Bytes held in reassembly by all the connections (max-reassembly-bytes).
  spop::ReassemblyBudget& reassembly_budget() override { return reasm_budget_; }
  const spop::ReassemblyBudget& reassembly_budget() const { return reasm_budget_; }
  agent::Agent& agent() override { return *agent_; }
  const config::AgentConfig& config() const { return cfg_; }
  const ConnectionSettings& connection_settings() const override { return conn_settings_; }
  spdlog::logger& log() override { return *log_; }
  uv_loop_t* loop() const override { return loop_; }
  // The listen address as logs show it (util::printable).
  std::string address() const;
  bool stopping() const { return stopping_; }
  size_t connection_count() const { return conns_.size(); }

  // ConnectionHost, called by its connections.
  void on_connection_closed(Connection* c) override;
  void hand_off(const nlohmann::json& state, uv_stream_t* handle,
                std::function<void(bool)> done) override;
  // True if a per-request warning may be logged now (at most 10 per second per server).
  bool log_limiter_allow() override;
  // The same for the budget and accept-error warnings (their own 5 per second, so that a flood
  // of protocol errors cannot hide them).
  bool limits_log_allow() override;

 private:
  // One listening socket, polled for readability; the server accepts itself (accept4), so that
  // it sees accept errors and can leave connections in the backlog.
  struct Socket {
    Server* server = nullptr;
    int fd = -1;
    uv_poll_t poll;
    bool polling = false;
  };
  static void on_readable(uv_poll_t* p, int status, int events);
  static void on_accept_timer(uv_timer_t* t);
  static void on_listener_closed(uv_handle_t* h);
  void accept_ready(Socket& sock);
  void accept_error(int err);
  bool connection_waiting() const;  // a connection waits in a backlog
  void pause_accepting();
  void resume_accepting();
  bool allow(util::RateLimiter& limiter);
  void drain_accept_queue();
  void close_listener();
  void check_stopped();

  uv_loop_t* loop_;
  config::AgentConfig cfg_;
  ConnectionSettings conn_settings_;  // from cfg_
  std::unique_ptr<agent::Agent> agent_;
  std::shared_ptr<spdlog::logger> log_;
  Stats stats_;
  spop::ReassemblyBudget reasm_budget_;
  util::RateLimiter log_limiter_{10};
  util::RateLimiter limits_limiter_{5};
  std::string unix_path_;  // the socket file this server created, if any
  uint64_t unix_inode_ = 0;

  std::vector<std::unique_ptr<Socket>> socks_;
  bool bound_here_ = false;  // listen() bound the socket itself (no master's copy)
  uv_timer_t accept_timer_;  // accept-error back-off
  bool listener_open_ = false;
  int listener_handles_closing_ = 0;
  bool at_limit_ = false;     // paused at max-connections
  bool backing_off_ = false;  // paused after an accept error
  uint64_t accept_backoff_ms_ = 0;
  bool stopping_ = false;
  bool in_succession_ = false;  // begin_succession() was called
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
