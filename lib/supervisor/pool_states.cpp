#include "supervisor/pool_states.h"

namespace spoad::supervisor {

const PoolStates::Entry& PoolStates::update(const std::string& agent, std::string state) {
  Entry& e = states_[agent];
  e.state = std::move(state);
  ++e.updates;
  return e;
}

std::string PoolStates::state_of(const std::string& agent) const {
  auto it = states_.find(agent);
  return it == states_.end() ? std::string() : it->second.state;
}

uint64_t PoolStates::bytes() const {
  uint64_t n = 0;
  for (const auto& [name, e] : states_)
    n += e.state.size();
  return n;
}

void PoolStates::append_samples(std::vector<metrics::Sample>& out) const {
  for (const auto& [name, e] : states_) {
    const std::string labels = metrics::render_labels({{"agent", name}});
    out.push_back(metrics::make_sample(
        "spoad_pool_state_bytes",
        "Size of the pool state the master keeps for the agent (given to its new workers).",
        metrics::Type::kGauge, static_cast<double>(e.state.size()), labels));
    out.push_back(metrics::make_sample("spoad_pool_state_updates_total",
                                       "Pool states the master received from the agent's "
                                       "workers (or from the spoad it took over from).",
                                       metrics::Type::kCounter, static_cast<double>(e.updates),
                                       labels));
  }
}

}  // namespace spoad::supervisor
