// Agent types by name. Each agent folder registers its type with SPOAD_REGISTER_AGENT in its
// own source file; agents/meson.build lists the folders. Nothing else names an agent.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "agent/agent.h"
#include "options/options.h"

namespace spoad::agent {

// An agent's parsed options. Each agent type derives its own.
class AgentOptions {
 public:
  virtual ~AgentOptions() = default;
};

struct AgentType {
  std::string_view name;         // the `type:` value in the configuration
  std::string_view description;  // one line, for `spoad --list-agents`
  // Reads the agent's own keys from `opts` (the agent's mapping; runtime keys are already
  // consumed). Throws config::ConfigError naming file, line and key. May read files the
  // options name, but starts no I/O on a loop.
  std::unique_ptr<AgentOptions> (*parse)(config::Options& opts);
  // Builds the agent. Throws std::runtime_error when it cannot start (a list that does not
  // load). With ctx.loop == nullptr (config check) it must not touch any loop.
  std::unique_ptr<Agent> (*create)(const Context& ctx, const AgentOptions& opts);
};

// Adds a type; a duplicate name is a programming error and aborts.
void register_agent_type(const AgentType& type);
// The type called `name`, or nullptr.
const AgentType* find_agent_type(std::string_view name);
// Every registered type, sorted by name.
std::vector<const AgentType*> agent_types();

struct AgentRegistrar {
  explicit AgentRegistrar(const AgentType& t) { register_agent_type(t); }
};

}  // namespace spoad::agent

// Registers an AgentType from the agent's own .cpp file (static initialisation).
#define SPOAD_REGISTER_AGENT(var, ...)                          \
  static const ::spoad::agent::AgentRegistrar var##_registrar { \
    ::spoad::agent::AgentType {                                 \
      __VA_ARGS__                                               \
    }                                                           \
  }
