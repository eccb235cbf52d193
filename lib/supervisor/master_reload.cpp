// The master's generations: readiness, the reload that starts a new one and soft-stops the
// old one when it serves (HAProxy's -sf), failures, and the listening sockets they still use.
#include <unistd.h>

#include <csignal>
#include <set>

#include "supervisor/master.h"
#include "supervisor/master_text.h"

namespace spoad::supervisor {

namespace {

// The prefix of the lines of a reload's answer, as HAProxy's master writes them.
std::string answer_tag() {
  return "(" + std::to_string(getpid()) + ") : ";
}

}  // namespace

void Master::check_generation(Generation& g) {
  if (g.ready || !g.all_workers_ready()) return;
  generation_ready(g);
}

void Master::generation_ready(Generation& g) {
  g.ready = true;
  if (current_ && &g == current_.get()) {
    started_ = true;
    try {
      publish();
    } catch (const std::exception& e) {
      mlog()->critical("cannot start: {}", e.what());
      exit_status_ = 1;
      hard_stop();
      return;
    }
    mlog()->info("{} worker(s) ready{}", g.slots.size(),
                 cli_path_.empty() ? "" : "; master CLI on " + cli_path_);
    if (predecessor_) {
      // Our workers poll the sockets we took: the predecessor may let go. The socket files
      // are ours from now on.
      listeners_.claim_files();
      predecessor_->send(msg::Serving{getpid()});
      mlog()->info("takeover: told spoad pid {} that we serve", predecessor_pid_);
    }
    return;
  }
  if (!next_ || &g != next_.get()) return;
  // The new generation serves: soft-stop the old one (HAProxy's -sf).
  std::vector<int> old_pids;
  for (auto& p : procs_) {
    if (p->exited || p->gen == &g) continue;
    ++p->reloads;
    if (!p->leaving) {
      old_pids.push_back(p->pid);
      const config::AgentConfig& mine = p->agent_config();
      bool successor = false;
      for (const auto& a : g.cfg.agents)
        successor |= a.name == mine.name && a.listen.kind == mine.listen.kind;
      soft_stop_worker(*p, g.cfg.grace_ms,
                       successor ? msg::StopMode::kHandOff : msg::StopMode::kDisconnect);
    }
  }
  ++reloads_;
  old_.push_back(std::move(current_));
  current_ = std::move(next_);
  cfg_ = current_->cfg;
  cfg_text_ = current_->text;
  if (cli_) cli_->set_limits(cli_limits(cfg_));
  metrics_http_->commit();
  // Sockets of addresses the new configuration no longer uses: kept while old workers run.
  release_listeners();
  std::string text = "Success=1\n--\n";
  const std::string tag = answer_tag();
  for (auto& s : current_->slots)
    text += "[NOTICE]   " + tag + "New worker (" + std::to_string(s->proc->pid) + ") of " +
            cfg_.agents[s->agent].name + " ready\n";
  std::string olds;
  for (int pid : old_pids)
    olds += (olds.empty() ? "" : " ") + std::to_string(pid);
  if (!olds.empty()) text += "[NOTICE]   " + tag + "Soft-stopping old workers (" + olds + ")\n";
  text += "[NOTICE]   " + tag + "Loading success.\n";
  mlog()->info("reload {}: {} new worker(s) ready; soft-stopping {}", reloads_,
               current_->slots.size(), olds.empty() ? "none" : olds);
  finish_reload(true, text);
}

void Master::generation_failed(Generation& g, const std::string& why) {
  if (next_ && &g == next_.get()) {
    for (auto& s : g.slots)
      if (s->proc && !s->proc->exited) ::kill(s->proc->pid, SIGTERM);
    for (auto& p : procs_)
      if (p->gen == &g) p->leaving = true;
    old_.push_back(std::move(next_));
    metrics_http_->abort();
    ++failed_reloads_;
    const std::string tag = answer_tag();
    std::string text = "Success=0\n--\n";
    const std::vector<std::string> lines = shown_lines(why);
    for (const std::string& l : lines)
      text += "[ALERT]    " + tag + l + "\n";
    text += "[WARNING]  " + tag + "Loading failure!\n";
    mlog()->error("reload failed, the current workers keep serving: {}", joined(lines));
    finish_reload(false, text);
    return;
  }
  // The first generation could not start: give up, as HAProxy does at its first start.
  mlog()->critical("cannot start: {}", joined(shown_lines(why)));
  exit_status_ = 1;
  hard_stop();
}

void Master::gc_generations() {
  old_.remove_if([this](const std::unique_ptr<Generation>& g) { return !procs_.runs(*g); });
  if (!closing_) release_listeners();
}

void Master::release_listeners() {
  // A socket stays while any configuration still run by a worker (or about to be) uses its
  // address: a stopping worker may hold connections of it, and a smaller pool polls the rest.
  std::set<std::string> in_use;
  auto add = [&in_use](const config::Config& c) {
    for (const auto& a : c.agents)
      in_use.insert(a.listen.str());
  };
  add(cfg_);
  if (current_) add(current_->cfg);
  if (next_) add(next_->cfg);
  for (auto& p : procs_)
    if (!p->exited) in_use.insert(p->agent_config().listen.str());
  listeners_.release_unused(in_use);
}

// ---- reload -------------------------------------------------------------------------------

void Master::reload(std::function<void(std::string)> done) {
  queued_reloads_.push_back(std::move(done));
  if (!reload_running_) do_reload();
}

void Master::do_reload() {
  if (stopping_ || queued_reloads_.empty()) return;
  reload_running_ = true;
  reload_waiters_ = std::move(queued_reloads_);
  queued_reloads_.clear();
  mlog()->info("Reloading spoad from {}", opts_.config_path);
  config::Config cfg;
  std::string text;
  try {
    text = config::read_text(opts_.config_path);
    cfg = config::parse_config(text, opts_.config_path);
    listeners_.bind_missing(cfg);
    metrics_http_->prepare(metrics_config(cfg));  // a new metrics.listen: bound now
  } catch (const std::exception& e) {
    release_listeners();
    ++failed_reloads_;
    const std::string tag = answer_tag();
    const std::string why = joined(shown_lines(e.what()));
    mlog()->error("reload failed, the current workers keep serving: {}", why);
    finish_reload(false, "Success=0\n--\n[ALERT]    " + tag + why + "\n[WARNING]  " + tag +
                             "Loading failure!\n");
    return;
  }
  next_ = std::make_unique<Generation>();
  next_->id = next_generation_id_++;
  next_->cfg = std::move(cfg);
  next_->text = std::move(text);
  start_generation(*next_);
}

void Master::finish_reload(bool ok, const std::string& text) {
  last_reload_failed_ = !ok;
  auto waiters = std::move(reload_waiters_);
  reload_waiters_.clear();
  reload_running_ = false;
  for (auto& w : waiters)
    if (w) w(text);
  if (!queued_reloads_.empty()) do_reload();
}

void Master::finish_reload_on_stop() {
  if (!reload_running_ && queued_reloads_.empty()) return;
  auto w = std::move(reload_waiters_);
  for (auto& q : queued_reloads_)
    w.push_back(std::move(q));
  reload_waiters_.clear();
  queued_reloads_.clear();
  reload_running_ = false;
  for (auto& f : w)
    if (f) f("Success=0\n--\nspoad is stopping\n");
}

}  // namespace spoad::supervisor
