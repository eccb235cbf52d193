#include "runtime/worker.h"

#include <memory>

#include "agent/registry.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::runtime {

Worker::Worker(uv_loop_t* loop, std::vector<config::AgentConfig> agents,
               std::shared_ptr<metrics::Arena> arena)
    : loop_(loop),
      agents_(std::move(agents)),
      arena_(arena ? std::move(arena)
                   : std::shared_ptr<metrics::Arena>(metrics::Arena::private_memory())) {
  uv_timer_init(loop_, &grace_timer_);
  grace_timer_.data = this;
}

Worker::~Worker() = default;

void Worker::start(const std::vector<std::vector<int>>& fds) {
  for (size_t i = 0; i < agents_.size(); ++i) {
    const config::AgentConfig& ac = agents_[i];
    agent::Context ctx;
    ctx.name = ac.name;
    ctx.loop = loop_;
    ctx.log = util::make_logger(ac.name);
    ctx.metrics = metrics::Scope(arena_, ac.name, ac.type);
    // Set when the pool state did not restore: this worker then holds less than its pool, and
    // its state must never replace the master's copy (the next new worker would start with it).
    auto muted = std::make_shared<bool>(false);
    ctx.pool_state_changed = [this, i, muted] {
      // servers_[i] exists once the constructor returned; a call from it is ignored.
      if (pool_state_cb_ && i < servers_.size() && !*muted) pool_state_cb_(*servers_[i]);
    };
    metrics::Counter restore_failures =
        ctx.metrics.counter("spoad_pool_state_restore_failures_total",
                            "Pool states the agent could not restore at start (it then serves "
                            "as configured).");
    std::unique_ptr<agent::Agent> a = ac.agent_type->create(ctx, *ac.options);
    if (auto it = pool_states_.find(ac.name); it != pool_states_.end() && !it->second.empty()) {
      try {
        a->restore_pool_state(it->second);
        ctx.log->info("pool state restored ({} bytes)", it->second.size());
      } catch (const std::exception& e) {
        ++restore_failures;
        *muted = true;
        ctx.log->error(
            "cannot restore the pool state ({} bytes): {}; serving without it, and not "
            "reporting this worker's pool state to the master",
            it->second.size(), util::printable(e.what(), 1024));
      }
      pool_states_.erase(it);
    }
    // Kept in servers_ before listen(): if it throws, hard_stop() closes the handles it made.
    servers_.push_back(std::make_unique<Server>(loop_, ac, std::move(a), ctx.log, ctx.metrics));
    Server& s = *servers_.back();
    s.agent().start();
    s.listen(i < fds.size() ? fds[i] : std::vector<int>{});
    ctx.log->info("{} agent listening on {}", ac.type, s.address());
  }
  running_ = servers_.size();
}

void Worker::server_stopped() {
  if (running_ > 0 && --running_ > 0) return;
  if (grace_armed_) {
    uv_timer_stop(&grace_timer_);
    grace_armed_ = false;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&grace_timer_), nullptr);
  if (done_) {
    auto cb = std::move(done_);
    done_ = nullptr;
    cb();
  }
}

void Worker::soft_stop(uint64_t grace_ms, std::function<void()> done, DrainMode mode) {
  if (stopping_) {
    // Already soft-stopping: only the way connections are let go changes (a hand-off whose
    // taker went away falls back to a DISCONNECT). The first grace period still bounds it.
    for (auto& s : servers_)
      s->soft_stop(nullptr, mode);
    return;
  }
  stopping_ = true;
  done_ = std::move(done);
  if (servers_.empty()) {
    running_ = 1;
    server_stopped();
    return;
  }
  grace_armed_ = true;
  uv_timer_start(&grace_timer_, on_grace, grace_ms, 0);
  for (auto& s : servers_)
    s->soft_stop([this] { server_stopped(); }, mode);
}

void Worker::on_grace(uv_timer_t* t) {
  auto* w = static_cast<Worker*>(t->data);
  w->grace_armed_ = false;
  size_t left = 0;
  for (auto& s : w->servers_)
    left += s->connection_count();
  util::make_logger("spoad")->warn("grace period over: closing {} connection(s) still open", left);
  for (auto& s : w->servers_)
    s->hard_stop([w] { w->server_stopped(); });
}

void Worker::hard_stop(std::function<void()> done) {
  const bool was_stopping = stopping_;
  stopping_ = true;
  if (done) done_ = std::move(done);
  if (servers_.empty()) {
    if (!was_stopping) {
      running_ = 1;
      server_stopped();
    }
    return;
  }
  if (!was_stopping) running_ = servers_.size();
  for (auto& s : servers_)
    s->hard_stop([this] { server_stopped(); });
}

void Worker::begin_succession(const std::unordered_set<std::string>& old_engines) {
  for (auto& s : servers_)
    s->begin_succession(old_engines);
}

void Worker::reload_agents() {
  for (auto& s : servers_)
    s->agent().reload();
}

}  // namespace spoad::runtime
