#include "supervisor/process_table.h"

#include <algorithm>
#include <tuple>

namespace spoad::supervisor {

const config::AgentConfig& Proc::agent_config() const {
  return gen->cfg.agents[agent];
}

void Proc::answer_cli(uint64_t id, cli::WorkerAnswer a) {
  auto it = cli.find(id);
  if (it == cli.end()) return;  // answered too late: the CLI already said so
  auto done = std::move(it->second.done);
  cli.erase(it);
  done(std::move(a));
}

void Proc::answer_all_cli(cli::WorkerAnswer::Status status) {
  auto calls = std::move(cli);
  cli.clear();
  for (auto& [id, call] : calls)
    call.done({status, {}});
}

bool Generation::all_workers_ready() const {
  for (const auto& s : slots)
    if (!s->proc || !s->proc->ready) return false;
  return true;
}

Proc* Generation::live_worker(uint64_t relative_pid) const {
  for (const auto& s : slots)
    if (static_cast<uint64_t>(s->relative_pid) == relative_pid && s->proc && !s->proc->exited)
      return s->proc;
  return nullptr;
}

std::vector<Proc*> Generation::ready_workers(const std::string& name) const {
  std::vector<Proc*> out;
  for (const auto& s : slots)
    if (s->proc && s->proc->ready && !s->proc->exited && s->proc->ch &&
        cfg.agents[s->agent].name == name)
      out.push_back(s->proc);
  return out;
}

Proc* ProcessTable::add(std::unique_ptr<Proc> p) {
  procs_.push_back(std::move(p));
  return procs_.back().get();
}

void ProcessTable::remove(const Proc* p) {
  procs_.remove_if([p](const std::unique_ptr<Proc>& x) { return x.get() == p; });
}

Proc* ProcessTable::find_live(int pid) const {
  for (const auto& p : procs_)
    if (p->pid == pid && !p->exited) return p.get();
  return nullptr;
}

bool ProcessTable::runs(const Generation& g) const {
  for (const auto& p : procs_)
    if (p->gen == &g) return true;
  return false;
}

bool ProcessTable::pool_members(const std::string& name, std::vector<cli::PoolMember>* out) const {
  struct Member {
    int generation, relative_pid, pid;
  };
  bool any = false;
  std::vector<Member> found;
  for (const auto& p : procs_) {
    if (p->exited || p->pid == 0 || p->agent_config().name != name) continue;
    any = true;
    if (p->ch) found.push_back({p->gen->id, p->relative_pid, p->pid});
  }
  std::sort(found.begin(), found.end(), [](const Member& a, const Member& b) {
    return std::tie(a.generation, a.relative_pid, a.pid) <
           std::tie(b.generation, b.relative_pid, b.pid);
  });
  out->clear();
  for (const Member& m : found)
    out->push_back({m.pid, m.relative_pid});
  return any;
}

std::vector<std::function<void(cli::WorkerAnswer)>> ProcessTable::take_expired_cli(
    uint64_t now_ms) {
  std::vector<std::function<void(cli::WorkerAnswer)>> expired;
  for (auto& p : procs_) {
    for (auto it = p->cli.begin(); it != p->cli.end();) {
      if (now_ms < it->second.deadline_ms) {
        ++it;
        continue;
      }
      expired.push_back(std::move(it->second.done));
      it = p->cli.erase(it);
    }
  }
  return expired;
}

}  // namespace spoad::supervisor
