// The master CLI's questions to the master (cli::MasterBackend, cli/master_cli.h): `show proc`,
// `show info`, the workers behind `@N`, `@!pid` and `@<agent>`, and the commands routed to
// them, each answered or timed out (Master::on_tick).
#include <unistd.h>

#include "supervisor/master.h"
#include "supervisor/master_text.h"
#include "util/clock.h"
#include "version.h"

namespace spoad::supervisor {

namespace {

constexpr uint64_t kCliTimeoutMs = 10'000;

}  // namespace

std::string Master::show_proc() {
  cli::ProcRow m;
  m.pid = getpid();
  m.type = "master";
  m.relative_pid = 0;
  m.reloads = reloads_;
  m.uptime_s = util::wall_s() - start_time_s_;
  m.version = SPOAD_VERSION;
  std::vector<cli::ProcRow> current, old;
  auto row = [](const Proc& p) {
    cli::ProcRow r;
    r.pid = p.pid;
    r.type = p.agent_config().name;
    r.relative_pid = p.relative_pid;
    r.reloads = p.reloads;
    r.uptime_s = util::wall_s() - p.start_wall_s;
    r.version = p.version.empty() ? SPOAD_VERSION : p.version;
    return r;
  };
  if (current_)
    for (auto& s : current_->slots)
      if (s->proc && !s->proc->exited) current.push_back(row(*s->proc));
  for (auto& p : procs_)
    if (!p->exited && p->leaving && p->ready) old.push_back(row(*p));
  return cli::show_proc(m, failed_reloads_, current, old);
}

cli::Fields Master::info() {
  size_t workers = 0, old_workers = 0;
  for (auto& p : procs_) {
    if (p->exited) continue;
    if (current_ && p->gen == current_.get())
      ++workers;
    else if (p->leaving)
      ++old_workers;
  }
  const uint64_t up = util::wall_s() - start_time_s_;
  return {
      {"Name", "spoad"},
      {"Version", SPOAD_VERSION},
      {"Pid", getpid()},
      {"Process_type", "master"},
      {"Uptime", cli::info_uptime(up)},
      {"Uptime_sec", up},
      {"Start_time_sec", start_time_s_},
      {"Reloads", reloads_},
      {"FailedReloads", failed_reloads_},
      {"Workers", workers},
      {"OldWorkers", old_workers},
      {"Respawns", crashes_},
      {"PoolStates", pool_states_.size()},
      {"PoolStateBytes", pool_states_.bytes()},
  };
}

std::string Master::version() {
  return SPOAD_VERSION;
}

int Master::worker_by_relative_pid(uint64_t n) {
  if (!current_) return 0;
  const Proc* p = current_->live_worker(n);
  return p ? p->pid : 0;
}

bool Master::is_worker(uint64_t pid) {
  return procs_.find_live(static_cast<int>(pid)) != nullptr;
}

bool Master::agent_workers(const std::string& name, std::vector<cli::PoolMember>* out) {
  bool known = procs_.pool_members(name, out);
  auto configured = [&](const config::Config& c) {
    for (const auto& a : c.agents)
      known |= a.name == name;
  };
  configured(cfg_);
  if (next_) configured(next_->cfg);
  return known;
}

void Master::worker_command(int pid, const cli::Words& words,
                            std::function<void(cli::WorkerAnswer)> done) {
  // A worker still starting is asked too: the channel is ordered, the command runs after Init.
  Proc* p = procs_.find_live(pid);
  if (!p || !p->ch) {
    done({cli::WorkerAnswer::Status::kGone, {}});
    return;
  }
  const uint64_t id = next_cli_id_++;
  if (!p->ch->send(msg::CliRequest{id, words})) {
    done({cli::WorkerAnswer::Status::kGone, {}});
    return;
  }
  p->cli[id] = {uv_now(loop_) + kCliTimeoutMs, std::move(done)};
}

}  // namespace spoad::supervisor
