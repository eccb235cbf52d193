#include "agent/registry.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace spoad::agent {

namespace {
std::map<std::string, AgentType, std::less<>>& types() {
  static std::map<std::string, AgentType, std::less<>> m;
  return m;
}
}  // namespace

void register_agent_type(const AgentType& type) {
  auto [it, inserted] = types().emplace(std::string(type.name), type);
  if (!inserted) {
    std::fprintf(stderr, "spoad: agent type \"%s\" registered twice\n", it->first.c_str());
    std::abort();
  }
}

const AgentType* find_agent_type(std::string_view name) {
  auto it = types().find(name);
  return it == types().end() ? nullptr : &it->second;
}

std::vector<const AgentType*> agent_types() {
  std::vector<const AgentType*> out;
  for (const auto& [name, t] : types())
    out.push_back(&t);
  return out;
}

}  // namespace spoad::agent
