// The interface every agent implements. An agent sees decoded SPOE messages and fills the
// Reply that becomes the ACK; it knows nothing of sockets, frames or processes. Agents that do
// I/O (timers, HTTP) use the worker's event loop from their Context.
#pragma once

#include <spdlog/logger.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "agent/reply.h"
#include "metrics/arena.h"
#include "spop/reader.h"
#include "spop/types.h"

namespace spoad::agent {

// What an agent may use of its environment.
struct Context {
  std::string name;                     // the agent's configured name ("iprep")
  uv_loop_t* loop = nullptr;            // the worker's loop; nullptr during `spoad -c`
  std::shared_ptr<spdlog::logger> log;  // tagged with the agent name
  // Where the agent registers its counters (metrics/arena.h): labelled agent="<name>",
  // type="<agent type>", read by the master for `/metrics`. Default: a private arena.
  metrics::Scope metrics;
  // Call after the agent's pool state (Agent::pool_state) changed: the worker then sends
  // pool_state() to the master at once. Set by the worker; empty during `spoad -c` and in
  // unit tests (then calling it does nothing: check before calling).
  std::function<void()> pool_state_changed;
};

// Thrown by a CliCommand's `run` to answer with an error: what() is the whole answer (ending
// with a newline). A pool-wide command (`@<agent> CMD` on the master CLI) counts the worker as
// failed; a command to one worker answers what() as is.
struct CommandError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A command an agent adds to its worker's CLI (`@1 show lists`).
struct CliCommand {
  std::string name;         // words that select it, e.g. "show lists"
  std::string syntax;       // for `help`, e.g. "show ip <address>" (empty: the name)
  std::string description;  // for `help`, one short line
  // Runs the command; `args` are the words after `name`. Returns the output text.
  std::function<std::string(const std::vector<std::string>& args)> run;
};

class Agent {
 public:
  virtual ~Agent() = default;

  // Called for each message of a NOTIFY, in order, all with the same Reply. `msg` and its
  // arguments are valid only during the call (SPOE.txt 3.2.6).
  virtual void on_message(const spop::Message& msg, Reply& reply) = 0;

  // Called once the worker's loop runs, before the first connection is accepted.
  virtual void start() {}

  // Soft-stop: finish outstanding work (pending replies, exports), then call `done`. The
  // default has nothing to finish. After a hard-stop the agent may be destroyed before `done`
  // was called: its destructor must then close whatever loop handles it still has.
  virtual void stop(std::function<void()> done) { done(); }

  // Re-reads external data (lists, files) after a reload request. Default: nothing.
  virtual void reload() {}

  // Adds the agent's counters to a `show stat` object. Default: none.
  virtual void stats(nlohmann::json& out) const { (void)out; }

  // Commands the agent adds to its worker's CLI. Default: none.
  virtual std::vector<CliCommand> cli_commands() { return {}; }

  // Pool state: runtime state that every worker of the agent's pool shares and that must
  // outlive one worker (ip-checker: the entries added on the CLI). The master keeps the latest
  // copy a worker of the pool sent (Context::pool_state_changed) and gives it to each new
  // worker of the pool (respawn, reload, takeover) before it serves. The supervisor never
  // reads it: any bytes, at most 64 MiB (supervisor/messages.h kMaxMessage).
  // pool_state(): the state now. Default: "" (no state).
  virtual std::string pool_state() const { return {}; }
  // Called at most once, after the constructor and before start(), with the last state the
  // pool sent. Throws std::runtime_error when `bytes` do not decode: the worker logs it and
  // serves with the agent as constructed.
  virtual void restore_pool_state(std::string_view bytes) { (void)bytes; }
};

}  // namespace spoad::agent
