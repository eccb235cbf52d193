// The master's view of the metrics of the whole process tree, for `/metrics`
// (supervisor/metrics_http.h) and the master CLI's `show stat`:
//
//   - the series of every live worker's arena (metrics/arena.h), read in place: the master
//     maps each worker's arena read-only for the worker's life, so a scrape sends no message
//     and waits for nobody, and a stuck worker cannot stall it;
//   - the totals of the workers that exited (metrics/totals.h): when a worker is reaped, for
//     whatever reason (soft-stop after a reload, crash, kill -9), its arena is read one last
//     time and its counters and histograms added to per-agent totals, so that the sum of live
//     and exited never goes backwards;
//   - the supervisor's own samples: workers by state, exits by cause, respawns, reloads,
//     generation, each process's start time, resident memory and open fds, stalled workers,
//     build info.
//
// A worker writes a heartbeat (kHeartbeatFamily, CLOCK_MONOTONIC milliseconds) every second;
// one whose heartbeat is older than kStalledMs shows as spoad_worker_stalled 1 (its loop is
// blocked or the process stopped). The heartbeat itself is not exported.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "metrics/arena.h"
#include "metrics/exposition.h"
#include "metrics/totals.h"

namespace spoad::supervisor {

// The gauge a worker sets to util::monotonic_ms() every second (not exported).
inline constexpr std::string_view kHeartbeatFamily = "spoad_worker_heartbeat_ms";
// How often a worker sets it, and the age past which the master calls it stalled (ms).
inline constexpr uint64_t kHeartbeatMs = 1000;
inline constexpr uint64_t kStalledMs = 5000;

class MetricsView {
 public:
  enum class State { kStarting, kReady, kStopping };

  // A worker process not yet reaped.
  struct Process {
    int pid = 0;
    int relative_pid = 0;
    int generation = 0;
    std::string agent;  // its agent's name and type
    std::string type;
    State state = State::kStarting;
    uint64_t start_time_s = 0;              // unix time
    const metrics::Arena* arena = nullptr;  // its arena, or nullptr if it has none
  };

  // The master's own figures.
  struct Master {
    uint64_t start_time_s = 0;  // unix time
    uint64_t reloads = 0;
    uint64_t failed_reloads = 0;
    int generation = 0;  // the current generation's number
    // The agents (name, type) of the current configuration: their worker gauges are shown
    // even when they have no worker in a state.
    std::vector<std::pair<std::string, std::string>> agents;
  };

  // A worker exited: `status` its exit code, `signal` the signal that killed it (0 if none).
  // Adds the final values of its counters and histograms (`arena`, may be nullptr) to the
  // totals, and counts the exit by cause: "exit" (code 0), "crash" (other code), "signal".
  void worker_exited(const std::string& agent, const std::string& type, int64_t status, int signal,
                     const metrics::Arena* arena);
  // A worker of `agent` died and its slot is respawned.
  void worker_respawned(const std::string& agent, const std::string& type);

  // The samples of the whole tree now: the live arenas (heartbeat excepted), the totals, then
  // the supervisor's samples. `now_mono_ms`: util::monotonic_ms(), for the heartbeats.
  std::vector<metrics::Sample> samples(const Master& m, const std::vector<Process>& procs,
                                       uint64_t now_mono_ms) const;

  const metrics::Totals& totals() const { return totals_; }

 private:
  using AgentKey = std::pair<std::string, std::string>;  // name, type
  metrics::Totals totals_;
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> exits_;  // +cause
  std::map<AgentKey, uint64_t> respawns_;
  uint64_t exited_overflows_ = 0;  // registrations refused in arenas of exited workers
};

}  // namespace spoad::supervisor
