#include "supervisor/metrics_view.h"

#include <dirent.h>
#include <unistd.h>

#include <cstdio>

#include "version.h"

namespace spoad::supervisor {

namespace {

using metrics::Sample;
using metrics::Type;

using metrics::make_sample;

// Resident memory of `pid` ("self" for the master) in bytes, from /proc/<pid>/statm; -1 if
// unreadable (the process just exited).
double rss_bytes(const std::string& pid) {
  FILE* f = std::fopen(("/proc/" + pid + "/statm").c_str(), "r");
  if (!f) return -1;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  if (n != 2) return -1;
  return static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

// Open file descriptors of `pid`, from /proc/<pid>/fd; -1 if unreadable.
double open_fds(const std::string& pid) {
  DIR* d = ::opendir(("/proc/" + pid + "/fd").c_str());
  if (!d) return -1;
  double n = 0;
  while (const dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - (pid == "self" ? 1 : 0);  // the directory we are reading
}

const char* state_name(MetricsView::State s) {
  switch (s) {
    case MetricsView::State::kStarting:
      return "starting";
    case MetricsView::State::kReady:
      return "ready";
    case MetricsView::State::kStopping:
      return "stopping";
  }
  return "";
}

constexpr const char* kStartHelp = "Start time of the process since the unix epoch, in seconds.";
constexpr const char* kRssHelp = "Resident memory of the process, in bytes (/proc/PID/statm).";
constexpr const char* kFdsHelp = "Open file descriptors of the process (/proc/PID/fd).";

}  // namespace

void MetricsView::worker_exited(const std::string& agent, const std::string& type, int64_t status,
                                int signal, const metrics::Arena* arena) {
  if (arena) {
    totals_.add_final(*arena);
    exited_overflows_ += arena->overflows();
  }
  const char* cause = signal ? "signal" : status == 0 ? "exit" : "crash";
  ++exits_[{agent, type, cause}];
}

void MetricsView::worker_respawned(const std::string& agent, const std::string& type) {
  ++respawns_[{agent, type}];
}

std::vector<Sample> MetricsView::samples(const Master& m, const std::vector<Process>& procs,
                                         uint64_t now_mono_ms) const {
  std::vector<Sample> out;
  // The live workers' series, in place, and their heartbeats.
  std::vector<uint64_t> heartbeat(procs.size(), 0);
  uint64_t overflows = exited_overflows_;
  for (size_t i = 0; i < procs.size(); ++i) {
    const metrics::Arena* a = procs[i].arena;
    if (!a) continue;
    overflows += a->overflows();
    a->visit([&](const metrics::SeriesView& v) {
      if (v.family == kHeartbeatFamily) {
        heartbeat[i] = v.value;
        return;
      }
      out.push_back(metrics::to_sample(v));
    });
  }
  // The exited workers' counters.
  totals_.append(out);

  // Workers by state, per agent: every state of every configured agent, zeros included.
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> by_state;
  for (const auto& [name, type] : m.agents)
    for (auto s : {State::kStarting, State::kReady, State::kStopping})
      by_state[{name, type, state_name(s)}] += 0;
  for (const Process& p : procs)
    ++by_state[{p.agent, p.type, state_name(p.state)}];
  for (const auto& [k, n] : by_state) {
    const auto& [name, type, state] = k;
    out.push_back(make_sample(
        "spoad_workers", "Worker processes, by state.", Type::kGauge, static_cast<double>(n),
        metrics::render_labels({{"agent", name}, {"type", type}, {"state", state}})));
  }
  // Exits by cause and respawns: every configured agent, zeros included, as for the states: a
  // series that appears at 1 shows no increase() or rate(), so its first event would be lost.
  auto exits = exits_;
  auto respawns = respawns_;
  for (const auto& [name, type] : m.agents) {
    for (const char* cause : {"exit", "crash", "signal"})
      exits[{name, type, cause}] += 0;
    respawns[{name, type}] += 0;
  }
  for (const auto& [k, n] : exits) {
    const auto& [name, type, cause] = k;
    out.push_back(make_sample(
        "spoad_worker_exits_total",
        "Worker processes that exited, by cause: exit (code 0), crash (other code), signal.",
        Type::kCounter, static_cast<double>(n),
        metrics::render_labels({{"agent", name}, {"type", type}, {"cause", cause}})));
  }
  for (const auto& [k, n] : respawns)
    out.push_back(make_sample("spoad_respawns_total", "Workers that died and were started again.",
                              Type::kCounter, static_cast<double>(n),
                              metrics::render_labels({{"agent", k.first}, {"type", k.second}})));
  out.push_back(make_sample("spoad_reloads_total", "Reloads that succeeded.", Type::kCounter,
                            static_cast<double>(m.reloads)));
  out.push_back(make_sample("spoad_reload_failures_total", "Reloads that failed.", Type::kCounter,
                            static_cast<double>(m.failed_reloads)));
  out.push_back(make_sample("spoad_generation", "The current generation of workers (1 at start).",
                            Type::kGauge, static_cast<double>(m.generation)));

  // Per process: the master, then each worker.
  const std::string master_labels = metrics::render_labels({{"process", "master"}});
  out.push_back(make_sample("spoad_process_start_time_seconds", kStartHelp, Type::kGauge,
                            static_cast<double>(m.start_time_s), master_labels));
  out.push_back(make_sample("spoad_process_resident_memory_bytes", kRssHelp, Type::kGauge,
                            rss_bytes("self"), master_labels));
  out.push_back(make_sample("spoad_process_open_fds", kFdsHelp, Type::kGauge, open_fds("self"),
                            master_labels));
  for (const Process& p : procs) {
    const std::string pid = std::to_string(p.pid);
    const std::string rel = std::to_string(p.relative_pid);
    const std::string gen = std::to_string(p.generation);
    const std::string labels = metrics::render_labels({{"process", "worker"},
                                                       {"agent", p.agent},
                                                       {"type", p.type},
                                                       {"worker", rel},
                                                       {"generation", gen}});
    out.push_back(make_sample("spoad_process_start_time_seconds", kStartHelp, Type::kGauge,
                              static_cast<double>(p.start_time_s), labels));
    const double rss = rss_bytes(pid), fds = open_fds(pid);
    if (rss >= 0)
      out.push_back(
          make_sample("spoad_process_resident_memory_bytes", kRssHelp, Type::kGauge, rss, labels));
    if (fds >= 0)
      out.push_back(make_sample("spoad_process_open_fds", kFdsHelp, Type::kGauge, fds, labels));
  }
  for (size_t i = 0; i < procs.size(); ++i) {
    const Process& p = procs[i];
    if (!p.arena) continue;
    // A worker sets its heartbeat once it runs its loop: none yet is not a stall.
    const bool stalled = heartbeat[i] != 0 && now_mono_ms > heartbeat[i] + kStalledMs;
    out.push_back(make_sample(
        "spoad_worker_stalled",
        "1 when the worker's event loop has not run for 5 seconds (stopped or blocked).",
        Type::kGauge, stalled ? 1 : 0,
        metrics::render_labels({{"agent", p.agent},
                                {"type", p.type},
                                {"worker", std::to_string(p.relative_pid)},
                                {"generation", std::to_string(p.generation)}})));
  }
  out.push_back(make_sample("spoad_metrics_overflows_total",
                            "Metric series the workers could not register (arena full, bad name).",
                            Type::kCounter, static_cast<double>(overflows)));
  const std::string version = SPOAD_VERSION;
  out.push_back(
      make_sample("spoad_build_info", "spoad's version and git revision.", Type::kGauge, 1,
                  metrics::render_labels({{"version", version.substr(0, version.find('-'))},
                                          {"revision", SPOAD_GIT}})));
  out.push_back(make_sample("spoad_up", "1: the spoad master answers.", Type::kGauge, 1));
  return out;
}

}  // namespace spoad::supervisor
