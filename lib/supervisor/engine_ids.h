// The engine-ids of the HAProxy processes a spoad instance has served (from their HELLOs,
// reported by the workers in Engine messages), oldest first. In a succession without a
// takeover (supervisor/master.h), the workers keep serving these engines and close the
// connections of any other (a new HAProxy worker) after its HELLO.
#pragma once

#include <cstddef>
#include <deque>
#include <string>
#include <unordered_set>
#include <vector>

namespace spoad::supervisor {

class EngineIds {
 public:
  // At most this many are kept (the oldest are forgotten first).
  static constexpr size_t kMaxEngines = 4096;
  // Longer ids (bytes) are not kept; HAProxy's are UUIDs, 36 bytes.
  static constexpr size_t kMaxEngineId = 128;

  // Adds `id` unless it is empty, too long or already known.
  void add(const std::string& id) {
    if (id.empty() || id.size() > kMaxEngineId || !known_.insert(id).second) return;
    order_.push_back(id);
    if (order_.size() > kMaxEngines) {
      known_.erase(order_.front());
      order_.pop_front();
    }
  }
  // Every id kept, oldest first.
  std::vector<std::string> list() const { return {order_.begin(), order_.end()}; }

 private:
  std::unordered_set<std::string> known_;
  std::deque<std::string> order_;
};

}  // namespace spoad::supervisor
