// The master's metrics: the exposition of the whole process tree (`/metrics`, `show stat` on
// the master CLI), from the live workers' arenas, the totals of the exited ones
// (supervisor/metrics_view.h) and the master's own series.
#include "supervisor/master.h"
#include "util/clock.h"

namespace spoad::supervisor {

config::MetricsConfig Master::metrics_config(const config::Config& c) const {
  config::MetricsConfig m = c.metrics;
  std::string err;  // --metrics was checked by the caller
  if (!opts_.metrics_listen.empty() &&
      config::parse_metrics_listen(opts_.metrics_listen, &m.listen, &err))
    m.enabled = true;
  return m;
}

std::string Master::render_metrics(metrics::Format f) {
  MetricsView::Master m;
  m.start_time_s = start_time_s_;
  m.reloads = static_cast<uint64_t>(reloads_);
  m.failed_reloads = static_cast<uint64_t>(failed_reloads_);
  m.generation = current_ ? current_->id : 0;
  for (const auto& a : cfg_.agents)
    m.agents.emplace_back(a.name, a.type);
  std::vector<MetricsView::Process> procs;
  for (const auto& p : procs_) {
    if (p->exited || p->pid == 0) continue;
    const config::AgentConfig& ac = p->agent_config();
    MetricsView::Process v;
    v.pid = p->pid;
    v.relative_pid = p->relative_pid;
    v.generation = p->gen->id;
    v.agent = ac.name;
    v.type = ac.type;
    v.state = p->leaving ? MetricsView::State::kStopping
              : p->ready ? MetricsView::State::kReady
                         : MetricsView::State::kStarting;
    v.start_time_s = p->start_wall_s;
    v.arena = p->arena.get();
    procs.push_back(std::move(v));
  }
  std::vector<metrics::Sample> samples = metrics_view_.samples(m, procs, util::monotonic_ms());
  pool_states_.append_samples(samples);
  if (metrics_http_) metrics_http_->append_samples(samples);
  return metrics::render(samples, f);
}

std::string Master::metrics_exposition() {
  return render_metrics(metrics::Format::kText004);
}

}  // namespace spoad::supervisor
