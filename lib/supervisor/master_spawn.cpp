// The master's worker processes: spawn (uv_spawn of the spoad binary with its channel, its
// listening sockets and its metrics arena), exit, reap, and respawn with backoff.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "supervisor/master.h"
#include "supervisor/master_text.h"
#include "util/clock.h"

namespace spoad::supervisor {

void Master::start_generation(Generation& g) {
  int relative = 1;
  for (size_t a = 0; a < g.cfg.agents.size(); ++a)
    for (int i = 0; i < g.cfg.agents[a].workers; ++i) {
      auto s = std::make_unique<Slot>();
      s->gen = &g;
      s->agent = a;
      s->index = i;
      s->relative_pid = relative++;
      s->backoff_ms = kBackoffMinMs;
      g.slots.push_back(std::move(s));
    }
  g.deadline_ms = uv_now(loop_) + kReadyTimeoutMs;
  for (auto& s : g.slots)
    spawn(*s);
}

Proc* Master::spawn(Slot& s) {
  Generation& g = *s.gen;
  const config::AgentConfig& ac = g.cfg.agents[s.agent];
  int fds[2];
  if (uv_socketpair(SOCK_STREAM, 0, fds, 0, 0) != 0) {
    mlog()->error("cannot create a socketpair for a worker of {}: {}", ac.name,
                  std::strerror(errno));
    schedule_respawn(s);
    return nullptr;
  }
  auto p = std::make_unique<Proc>();
  p->master = this;
  p->gen = &g;
  p->slot = &s;
  p->agent = s.agent;
  p->relative_pid = s.relative_pid;
  p->handle.data = p.get();

  std::string exe = exe_;
  if (::access(exe.c_str(), X_OK) != 0) exe = "/proc/self/exe";
  std::string worker_flag = "--worker";
  char* args[] = {exe.data(), worker_flag.data(), nullptr};
  // fd 3: the channel; fds 4...: the listening sockets of this slot (Listen), then the
  // metrics arena (Metrics), if it could be created.
  const std::vector<int> listen_fds = listeners_.fds_for(ac, s.index);
  std::string arena_err;
  std::unique_ptr<metrics::Arena> arena = metrics::Arena::create_shared(&arena_err);
  if (!arena)
    mlog()->warn(
        "cannot create the metrics arena of a worker of {}: {}; its counters will not "
        "be seen",
        ac.name, arena_err);
  std::vector<uv_stdio_container_t> stdio(4 + listen_fds.size() + (arena ? 1 : 0));
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = fds[1];
  msg::Listen listen;
  for (size_t i = 0; i < listen_fds.size(); ++i) {
    stdio[4 + i].flags = UV_INHERIT_FD;
    stdio[4 + i].data.fd = listen_fds[i];
    listen.fds.push_back(static_cast<int64_t>(4 + i));
  }
  msg::Metrics metrics_fd;
  if (arena) {
    const size_t i = 4 + listen_fds.size();
    stdio[i].flags = UV_INHERIT_FD;
    stdio[i].data.fd = arena->fd();
    metrics_fd.fd = static_cast<int64_t>(i);
  }
  uv_process_options_t o{};
  o.file = exe.c_str();
  o.args = args;
  o.exit_cb = on_process_exit;
  o.stdio = stdio.data();
  o.stdio_count = static_cast<int>(stdio.size());
  const int rc = uv_spawn(loop_, &p->handle, &o);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    mlog()->error("cannot start a worker of {}: {}", ac.name, uv_strerror(rc));
    // libuv still closes the handle: keep the memory until then.
    p->exited = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) {
      auto* proc = static_cast<Proc*>(h->data);
      proc->handle_closed = true;
      proc->master->reap(proc);
    });
    procs_.add(std::move(p));
    schedule_respawn(s);
    return nullptr;
  }
  p->pid = p->handle.pid;
  if (arena) {
    // Ours to read only from now on: a read-only mapping of the same memfd.
    const int copy = ::fcntl(arena->fd(), F_DUPFD_CLOEXEC, 0);
    std::unique_ptr<metrics::Arena> ro =
        copy >= 0 ? metrics::Arena::attach(copy, false, &arena_err) : nullptr;
    p->arena = ro ? std::move(ro) : std::move(arena);
  }
  p->start_ms = uv_now(loop_);
  p->start_wall_s = util::wall_s();
  Proc* raw = p.get();
  raw->ch = Channel::open(
      loop_, fds[0], [this, raw](msg::Message&& m, int fd) { on_message(raw, std::move(m), fd); },
      [this, raw] {
        raw->ch = nullptr;
        reap(raw);
      });
  msg::Init init;
  init.config = g.text;
  init.file = g.cfg.file;
  init.agent = s.agent;
  init.relative_pid = s.relative_pid;
  init.generation = g.id;
  init.listen_fd = listen.fds.empty() ? -1 : 4;  // for a worker binary older than Listen
  init.log_level = opts_.log_level;
  // The pool's state, before Init: the worker restores it before it serves. Always sent, ""
  // when there is none: it also tells the worker that we read CliResult and PoolState.
  const msg::PoolState state{ac.name, pool_states_.state_of(ac.name)};
  if (raw->ch && (!raw->ch->send(listen) || (metrics_fd.fd >= 0 && !raw->ch->send(metrics_fd)) ||
                  !raw->ch->send(state) || !raw->ch->send(init)))
    g.errors += "cannot send the configuration to worker " + std::to_string(raw->pid) + "\n";
  s.proc = raw;
  procs_.add(std::move(p));
  mlog()->info("New worker ({}) of {} forked (relative pid {}, generation {})", raw->pid, ac.name,
               s.relative_pid, g.id);
  return raw;
}

void Master::on_process_exit(uv_process_t* h, int64_t status, int signal) {
  auto* p = static_cast<Proc*>(h->data);
  p->master->on_exit(p, status, signal);
}

void Master::log_exit(const Proc& p, int64_t status, int signal) {
  const std::string& name = p.agent_config().name;
  const bool clean = !signal && status == 0;
  if (p.leaving || stopping_) {
    mlog()->info("Former worker ({}) of {} exited with {}", p.pid, name, exit_text(status, signal));
  } else if (clean) {
    mlog()->warn("Current worker ({}) of {} exited with {}", p.pid, name,
                 exit_text(status, signal));
  } else {
    mlog()->error("Current worker ({}) of {} exited with {}", p.pid, name,
                  exit_text(status, signal));
  }
}

void Master::on_exit(Proc* p, int64_t status, int signal) {
  log_exit(*p, status, signal);
  p->exited = true;
  // Dead: its arena holds its final counters. They go to the totals.
  const config::AgentConfig& pac = p->agent_config();
  metrics_view_.worker_exited(pac.name, pac.type, status, signal, p->arena.get());
  p->arena.reset();
  // The channel stays open until it reports EOF: a worker's last messages (a connection handed
  // off just before it exited, with the socket in flight) are still in it.
  p->answer_all_cli(cli::WorkerAnswer::Status::kGone);
  Generation& g = *p->gen;
  Slot* s = p->slot;
  if (s && s->proc == p) s->proc = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), [](uv_handle_t* h) {
    auto* proc = static_cast<Proc*>(h->data);
    proc->handle_closed = true;
    proc->master->reap(proc);
  });
  if (stopping_) return;
  if (next_ && &g == next_.get()) {
    std::string why = g.errors;
    if (why.empty())
      why = "worker " + std::to_string(p->pid) + " of " + g.cfg.agents[p->agent].name +
            " exited with " + exit_text(status, signal) + " before it was ready\n";
    generation_failed(g, why);
    return;
  }
  if (current_ && &g == current_.get()) {
    if (!g.ready) {
      std::string why =
          g.errors.empty() ? "a worker exited with " + exit_text(status, signal) : g.errors;
      generation_failed(g, why);
      return;
    }
    if (s && !p->leaving) {
      ++s->crashes;
      ++crashes_;
      metrics_view_.worker_respawned(pac.name, pac.type);
      if (uv_now(loop_) - p->start_ms >= kStableMs) s->backoff_ms = kBackoffMinMs;
      schedule_respawn(*s);
    }
  }
}

void Master::reap(Proc* p) {
  // Forget a worker once libuv is done with its process handle and its channel is closed.
  if (!p->handle_closed || p->ch) return;
  procs_.remove(p);
  gc_generations();
  exit_if_all_done();
}

void Master::schedule_respawn(Slot& s) {
  if (stopping_) return;
  s.respawn_at_ms = uv_now(loop_) + s.backoff_ms;
  mlog()->info("respawning relative pid {} in {} ms", s.relative_pid, s.backoff_ms);
  s.backoff_ms = std::min(s.backoff_ms * 2, kBackoffMaxMs);
}

void Master::respawn_due(uint64_t now_ms) {
  if (!current_) return;
  for (auto& s : current_->slots)
    if (s->respawn_at_ms && now_ms >= s->respawn_at_ms && !s->proc) {
      s->respawn_at_ms = 0;
      spawn(*s);
    }
}

}  // namespace spoad::supervisor
