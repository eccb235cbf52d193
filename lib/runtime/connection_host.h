// What a Connection (runtime/connection.h) needs from its owner, and nothing more: the owner's
// settings, the counters it adds to, the agent it calls, the reassembly budget it charges, the
// logger and its rate limiters, and the events it reports (HELLO engine, hand-off, closed).
// runtime::Server implements it; the unit tests (tests/unit/runtime_connection_test.cpp) implement
// a fake one to drive the state machine over a socketpair.
//
// A Connection reads loop(), connection_settings(), mutable_stats(), agent(),
// reassembly_budget() and log() once, when it is built, and keeps the references: they must
// stay valid until the host's on_connection_closed() for the last of its connections. The
// other functions are called as events happen, never per byte; none per NOTIFY.
#pragma once

#include <spdlog/logger.h>
#include <uv.h>

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "config/config.h"
#include "runtime/stats.h"
#include "spop/reassembler.h"

namespace spoad::runtime {

class Connection;

// A connection's settings, fixed for its whole life.
struct ConnectionSettings {
  // max-frame-size, max-inflight, max-fragmented-size, the capabilities announced, the hello,
  // idle and fragment timeouts (config/config.h: bytes, NOTIFYs, milliseconds).
  config::RuntimeSettings runtime;
  // The sockets given to adopt() are AF_UNIX (served as uv_pipe_t), not TCP (uv_tcp_t).
  bool unix_socket = false;
};

class ConnectionHost {
 public:
  // ---- read once, when a Connection is built ----
  virtual uv_loop_t* loop() const = 0;
  virtual const ConnectionSettings& connection_settings() const = 0;
  // The counters of the connections (runtime/stats.h).
  virtual Stats& mutable_stats() = 0;
  // Called with each message of each NOTIFY (agent/agent.h).
  virtual agent::Agent& agent() = 0;
  // Charged with the bytes each connection holds in reassembly (max-reassembly-bytes).
  virtual spop::ReassemblyBudget& reassembly_budget() = 0;
  virtual spdlog::logger& log() = 0;

  // ---- called as events happen ----
  // True if a per-request warning (protocol error, ACK too big) may be logged now.
  virtual bool log_limiter_allow() = 0;
  // True if a budget warning (reassembly refused) may be logged now.
  virtual bool limits_log_allow() = 0;
  // The engine-id of a HAPROXY-HELLO (bytes as sent). Returns false when the connection must
  // be closed right after its AGENT-HELLO (a new engine during a succession).
  virtual bool on_engine(const std::string& engine_id) = 0;
  // Drain mode kHandOff reached its safe point: pass the socket of `handle` and `state` (the
  // negotiated state, see Connection::adopt_established) to a new owner, then call done(true),
  // or done(false) if it could not (the connection then sends AGENT-DISCONNECT status 0).
  // `done` may run later, on the loop; the connection reads nothing meanwhile.
  virtual void hand_off(const nlohmann::json& state, uv_stream_t* handle,
                        std::function<void(bool)> done) = 0;
  // `c` closed its handles and is about to be deleted (once per connection, the last call).
  virtual void on_connection_closed(Connection* c) = 0;

 protected:
  ~ConnectionHost() = default;
};

}  // namespace spoad::runtime
