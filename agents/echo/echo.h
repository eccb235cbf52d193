// echo: a diagnostic agent. For each message it sends back what it received, so an operator
// can check an SPOE configuration end to end, and the tests can check the codec through a
// real HAProxy:
//   <arg>         the argument's value, same type (strings and binaries up to echo-max-size)
//   <arg>_type    the SPOP type name ("str", "bin", "int32", "ipv4", ...)
//   <arg>_len     the length in bytes of a string or binary
//   <arg>_sha256  the SHA-256 (hex) of a string or binary
//   msg           the message name; nargs: the argument count
// Unnamed arguments are called arg0, arg1, ... An argument `delay_ms` (integer) holds the ACK
// back that long, through Reply::defer(), on the worker's loop.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>

#include "agent/agent.h"
#include "agent/registry.h"
#include "util/uv_handle.h"

namespace spoad::agents::echo {

struct EchoOptions : agent::AgentOptions {
  spop::Scope scope = spop::Scope::kTransaction;
  uint64_t echo_max_size = 1024;  // bytes
  uint64_t delay_ms = 0;          // default hold for every ACK
};

class EchoAgent : public agent::Agent {
 public:
  EchoAgent(const agent::Context& ctx, const EchoOptions& opts);
  ~EchoAgent() override;

  void on_message(const spop::Message& msg, agent::Reply& reply) override;
  void stop(std::function<void()> done) override;
  void stats(nlohmann::json& out) const override;

 private:
  // One held ACK: a timer, and the Deferred that lets the ACK leave when the timer fires.
  using Holds = util::UvHandles<EchoAgent, agent::Deferred>;
  static void on_timer(uv_timer_t* t);
  void on_hold_closed(Holds::Box* b);
  void finish_stop_if_idle();  // runs stop()'s callback once no ACK is held

  agent::Context ctx_;
  EchoOptions opts_;
  std::function<void()> stop_done_;
  uint64_t messages_ = 0;
  uint64_t deferred_ = 0;
  Holds holds_{this, &EchoAgent::on_hold_closed};  // until each timer handle is closed
};

// SHA-256 of `data`, as 64 lowercase hex characters.
std::string sha256_hex(std::string_view data);

}  // namespace spoad::agents::echo
