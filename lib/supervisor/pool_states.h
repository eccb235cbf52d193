// The pool states the master keeps (Agent::pool_state, agent/agent.h): for each agent name,
// the latest state one of its workers sent (or the spoad we took over from gave), kept across
// reloads and given to every new worker of that agent before its Init, and to a successor in
// a takeover. The master never reads a state: bytes in, bytes out.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "metrics/exposition.h"

namespace spoad::supervisor {

class PoolStates {
 public:
  struct Entry {
    std::string state;     // bytes, as the agent produced them
    uint64_t updates = 0;  // states received for this agent
  };

  // Keeps `state` as the latest of `agent` and counts it. Returns its entry.
  const Entry& update(const std::string& agent, std::string state);
  // The latest state of `agent`, or "" when there is none.
  std::string state_of(const std::string& agent) const;
  // Every entry, by agent name.
  const std::map<std::string, Entry>& entries() const { return states_; }
  // How many agents have one, and their total size in bytes.
  size_t size() const { return states_.size(); }
  uint64_t bytes() const;
  // Appends spoad_pool_state_bytes and spoad_pool_state_updates_total, per agent.
  void append_samples(std::vector<metrics::Sample>& out) const;

 private:
  std::map<std::string, Entry> states_;
};

}  // namespace spoad::supervisor
