// The master's per-agent totals of the workers that exited: when a worker is reaped, its
// counters and histograms (not its gauges) are added here, so that the sum of the live
// workers' series and these totals never goes backwards across respawns, reloads and kills.
#pragma once

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "metrics/arena.h"
#include "metrics/exposition.h"

namespace spoad::metrics {

class Totals {
 public:
  // Adds the final values of `arena`'s counters and histogram series. Gauges are dropped.
  void add_final(const Arena& arena);
  // Appends one Sample per accumulated series to `out`.
  void append(std::vector<Sample>& out) const;
  size_t size() const { return series_.size(); }

 private:
  using Key = std::tuple<std::string, Role, uint64_t, std::string>;  // family, role, bound, labels
  struct Entry {
    std::string help;
    Type type;
    Unit unit;
    uint64_t value = 0;
  };
  std::map<Key, Entry> series_;
  std::vector<Key> order_;  // first-seen order, for a stable exposition
};

}  // namespace spoad::metrics
