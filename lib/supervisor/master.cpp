#include "supervisor/master.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include "cli/format.h"
#include "runtime/listener.h"
#include "util/escape.h"
#include "util/log.h"
#include "version.h"

namespace spoad::supervisor {

namespace {

constexpr uint64_t kTickMs = 25;
constexpr uint64_t kCliTimeoutMs = 10'000;
constexpr uint64_t kHardStopKillMs = 800;

std::shared_ptr<spdlog::logger> mlog() {
  return util::make_logger("spoad");
}

uint64_t wall_s() {
  return static_cast<uint64_t>(std::time(nullptr));
}

std::string exit_text(int64_t status, int signal) {
  if (signal) return "code " + std::to_string(128 + signal) + " (" + strsignal(signal) + ")";
  return "code " + std::to_string(status) + " (Exit)";
}

// Writes `content` to `path` through a temporary file and a rename, so that readers never see
// a partial file and a previous owner's file is replaced atomically.
bool write_atomically(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return false;
    out << content;
    if (!out) return false;
  }
  return ::rename(tmp.c_str(), path.c_str()) == 0;
}

cli::MasterCli::Limits cli_limits(const config::Config& cfg) {
  return {static_cast<size_t>(cfg.cli.max_line), static_cast<size_t>(cfg.cli.max_queued)};
}

// Text from the file or a worker (an error message), safe for a log line or a CLI answer: as
// it is when it is printable UTF-8 on one line, else escaped by util::printable.
std::string shown(std::string_view s) {
  bool plain = util::is_utf8(s);
  for (const char c : s)
    plain = plain && static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  return plain ? std::string(s) : util::printable(s, 4096);
}

// `text`'s lines, each made safe by shown().
std::vector<std::string> shown_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(shown(l));
  return out;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines)
    s += (s.empty() ? "" : " / ") + l;
  return s;
}

}  // namespace

struct Master::Proc {
  Master* master = nullptr;
  uv_process_t handle;
  int pid = 0;
  Generation* gen = nullptr;
  Slot* slot = nullptr;
  size_t agent = 0;
  int relative_pid = 0;
  int reloads = 0;
  uint64_t start_ms = 0;  // loop time
  uint64_t start_wall_s = 0;
  std::string version;
  std::unique_ptr<metrics::Arena> arena;  // read-only; dropped once its totals are taken
  Channel* ch = nullptr;
  bool ready = false;
  bool leaving = false;
  bool exited = false;
  bool handle_closed = false;
  struct CliCall {
    uint64_t deadline_ms;
    std::function<void(cli::WorkerAnswer)> done;
  };
  std::map<uint64_t, CliCall> cli;
};

struct Master::Slot {
  Generation* gen = nullptr;
  size_t agent = 0;
  int index = 0;
  int relative_pid = 0;
  Proc* proc = nullptr;
  uint64_t backoff_ms = kBackoffMinMs;
  uint64_t respawn_at_ms = 0;  // 0: nothing scheduled
  uint64_t crashes = 0;
};

struct Master::Generation {
  int id = 0;
  config::Config cfg;
  std::string text;
  std::vector<std::unique_ptr<Slot>> slots;
  uint64_t deadline_ms = 0;  // readiness deadline while starting
  std::string errors;        // what the workers reported while starting
  bool ready = false;
};

Master::Master(uv_loop_t* loop, MasterOptions opts, config::Config cfg, std::string cfg_text)
    : loop_(loop),
      opts_(std::move(opts)),
      cfg_(std::move(cfg)),
      cfg_text_(std::move(cfg_text)),
      start_time_s_(wall_s()) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  exe_ = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("/proc/self/exe");
}

Master::~Master() = default;

// ---- start and processes ------------------------------------------------------------------

int Master::run() {
  auto log = mlog();
  uv_timer_init(loop_, &stop_timer_);
  stop_timer_.data = this;
  const int sigs[5] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP};
  for (int i = 0; i < 5; ++i) {
    uv_signal_init(loop_, &sig_[i]);
    sig_[i].data = this;
    uv_signal_start(&sig_[i], on_signal, sigs[i]);
  }
  uv_timer_init(loop_, &tick_);
  tick_.data = this;
  uv_timer_start(&tick_, on_tick, kTickMs, kTickMs);

  cli_path_ = !opts_.cli_socket.empty() ? opts_.cli_socket : cfg_.cli.socket;
  pidfile_ = !opts_.pidfile.empty() ? opts_.pidfile : cfg_.pidfile;
  metrics_http_ =
      std::make_unique<MetricsHttp>(loop_, [this](metrics::Format f) { return render_metrics(f); });
  try {
    take_over_at_start();
    listeners_.bind_missing(cfg_);
    // A predecessor we took over from keeps the address until it stops: retry meanwhile.
    metrics_http_->prepare(metrics_config(cfg_), predecessor_ != nullptr);
    metrics_http_->commit();
  } catch (const std::exception& e) {
    log->critical("cannot start: {}", e.what());
    exit_status_ = 1;
    stopping_ = true;
    close_everything();
    uv_run(loop_, UV_RUN_DEFAULT);
    return exit_status_;
  }
  log->info("spoad {} master started, pid {}", SPOAD_VERSION, getpid());
  current_ = std::make_unique<Generation>();
  current_->id = next_generation_id_++;
  current_->cfg = cfg_;
  current_->text = cfg_text_;
  start_generation(*current_);
  uv_run(loop_, UV_RUN_DEFAULT);
  return exit_status_;
}

void Master::publish() {
  // Only now, with every worker serving: a spoad being replaced (HAProxy program reload)
  // watches these paths to know that its successor serves (see soft_stop()), and the next
  // spoad finds the takeover socket of the instance that serves now.
  if (!cli_path_.empty()) {
    try {
      takeover_sock_ = TakeoverSocket::open(loop_, takeover_path(cli_path_),
                                            [this](int fd, int pid) { on_successor(fd, pid); });
    } catch (const std::exception& e) {
      mlog()->warn("{}: a new spoad will bind its own listening sockets", e.what());
    }
    const int fd =
        runtime::listen_unix(cli_path_, 64, &cli_inode_, static_cast<int>(cfg_.cli.mode));
    cli_ = std::make_unique<cli::MasterCli>(loop_, *this, cli_limits(cfg_));
    cli_->listen(fd);
  }
  if (!pidfile_.empty() && !write_atomically(pidfile_, std::to_string(getpid()) + "\n"))
    throw std::runtime_error("cannot write pidfile " + pidfile_ + ": " + std::strerror(errno));
}

bool Master::successor_serves() const {
  struct stat st {};
  if (!cli_path_.empty() && cli_inode_ != 0 && ::lstat(cli_path_.c_str(), &st) == 0 &&
      st.st_ino != cli_inode_)
    return true;
  if (!pidfile_.empty()) {
    std::ifstream in(pidfile_);
    std::string content;
    std::getline(in, content);
    if (!content.empty() && content != std::to_string(getpid())) return true;
  }
  return false;
}

void Master::take_over_at_start() {
  auto log = mlog();
  if (cli_path_.empty()) {
    log->info("no cli.socket: no takeover from a running spoad; binding the listening sockets");
    return;
  }
  if (cfg_.takeover_timeout_ms == 0) {
    log->info("global.takeover-timeout is 0: no takeover; binding the listening sockets");
    return;
  }
  Predecessor p = take_over(takeover_path(cli_path_), cfg_.takeover_timeout_ms);
  if (p.outcome == Predecessor::Outcome::kNone) {
    log->info("no running spoad to take over from ({}): binding the listening sockets", p.why);
    return;
  }
  if (p.outcome == Predecessor::Outcome::kFailed) {
    log->warn(
        "cannot take the listening sockets over from the running spoad: {}; binding new ones "
        "beside it (SO_REUSEPORT)",
        p.why);
    return;
  }
  for (auto& [name, state] : p.pool_states) {
    PoolStateEntry& e = pool_states_[name];
    e.state = std::move(state);
    ++e.updates;
  }
  if (!p.pool_states.empty())
    log->info("took {} pool state(s) from spoad pid {}", p.pool_states.size(), p.pid);
  size_t taken = 0;
  for (auto& sock : p.sockets)
    taken += listeners_.adopt(cfg_, sock.address, sock.slot, sock.fd, sock.inode) ? 1 : 0;
  predecessor_pid_ = p.pid;
  log->info("took {} listening sockets from spoad pid {}{}", taken, p.pid,
            taken == p.sockets.size()
                ? ""
                : " (" + std::to_string(p.sockets.size() - taken) + " not in our configuration)");
  predecessor_ = Channel::open(
      loop_, p.fd, [this](msg::Message&& m, int fd) { on_predecessor_message(std::move(m), fd); },
      [this] {
        predecessor_ = nullptr;
        mlog()->info("takeover: the connection to spoad pid {} closed", predecessor_pid_);
      });
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
    if (!p->exited) in_use.insert(p->gen->cfg.agents[p->agent].listen.str());
  listeners_.release_unused(in_use);
}

void Master::start_generation(Generation& g) {
  int relative = 1;
  for (size_t a = 0; a < g.cfg.agents.size(); ++a)
    for (int i = 0; i < g.cfg.agents[a].workers; ++i) {
      auto s = std::make_unique<Slot>();
      s->gen = &g;
      s->agent = a;
      s->index = i;
      s->relative_pid = relative++;
      g.slots.push_back(std::move(s));
    }
  g.deadline_ms = uv_now(loop_) + kReadyTimeoutMs;
  for (auto& s : g.slots)
    spawn(*s);
}

Master::Proc* Master::spawn(Slot& s) {
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
    procs_.push_back(std::move(p));
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
  p->start_wall_s = wall_s();
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
  msg::PoolState state{ac.name, {}};
  if (auto it = pool_states_.find(ac.name); it != pool_states_.end())
    state.state = it->second.state;
  if (raw->ch && (!raw->ch->send(listen) || (metrics_fd.fd >= 0 && !raw->ch->send(metrics_fd)) ||
                  !raw->ch->send(state) || !raw->ch->send(init)))
    g.errors += "cannot send the configuration to worker " + std::to_string(raw->pid) + "\n";
  s.proc = raw;
  procs_.push_back(std::move(p));
  mlog()->info("New worker ({}) of {} forked (relative pid {}, generation {})", raw->pid, ac.name,
               s.relative_pid, g.id);
  return raw;
}

void Master::on_message(Proc* p, msg::Message&& m, int fd) {
  if (auto* h = std::get_if<msg::Handoff>(&m)) {
    hand_off(std::move(*h), fd);
    if (p->ch) p->ch->send(msg::HandoffAck{});
    return;
  }
  if (fd >= 0) ::close(fd);
  if (auto* e = std::get_if<msg::Engine>(&m)) {
    // The HAProxy processes (engine-ids) this spoad has served, for a hand-over. HAProxy's are
    // UUIDs (36 bytes): longer ones are not kept, so the list stays small.
    const std::string& id = e->id;
    if (!id.empty() && id.size() <= kMaxEngineId && known_engines_.insert(id).second) {
      engine_order_.push_back(id);
      if (engine_order_.size() > kMaxEngines) {
        known_engines_.erase(engine_order_.front());
        engine_order_.pop_front();
      }
    }
  } else if (auto* r = std::get_if<msg::Ready>(&m)) {
    p->ready = true;
    p->version = util::printable(r->version, 64);
    check_generation(*p->gen);
  } else if (auto* err = std::get_if<msg::Error>(&m)) {
    p->gen->errors += err->message + "\n";
  } else if (auto* r = std::get_if<msg::CliResult>(&m)) {
    cli_answer(p, r->id,
               {r->ok ? cli::WorkerAnswer::Status::kOk : cli::WorkerAnswer::Status::kFailed,
                std::move(r->text)});
  } else if (auto* c = std::get_if<msg::CliReply>(&m)) {  // from an older worker
    cli_answer(p, c->id, {cli::WorkerAnswer::Status::kOk, std::move(c->output)});
  } else if (auto* ps = std::get_if<msg::PoolState>(&m)) {
    pool_state(p, std::move(*ps));
  } else {
    mlog()->warn("worker {} sent an unexpected {} message: ignored", p->pid, msg::name(m));
  }
}

void Master::cli_answer(Proc* p, uint64_t id, cli::WorkerAnswer a) {
  auto it = p->cli.find(id);
  if (it == p->cli.end()) return;  // answered too late: the CLI already said so
  auto done = std::move(it->second.done);
  p->cli.erase(it);
  done(std::move(a));
}

void Master::pool_state(Proc* p, msg::PoolState&& ps) {
  // A worker speaks for its own pool only: the map holds configured agent names alone.
  const std::string& name = p->gen->cfg.agents[p->agent].name;
  if (ps.agent != name) {
    if (pool_state_log_.allow(uv_now(loop_)))
      mlog()->warn("worker {} of {} sent the pool state of {}: ignored", p->pid, name,
                   util::printable(ps.agent, 64));
    return;
  }
  PoolStateEntry& e = pool_states_[name];
  e.state = std::move(ps.state);
  ++e.updates;
  mlog()->debug("pool state of {} from worker {}: {} bytes", name, p->pid, e.state.size());
}

void Master::hand_off(msg::Handoff&& h, int fd) {
  // A connection an old worker let go at a safe point: give it to a current worker of the same
  // agent, in turn. Its unread bytes wait in the socket meanwhile.
  if (successor_ && successor_serving_ && fd >= 0) {
    // Handing over to a new spoad: it adopts the connection into one of its workers.
    ++successor_unacked_;
    successor_->send_fd(msg::Adopt{std::move(h.agent), std::move(h.state)}, fd);
    return;
  }
  const std::string& agent = h.agent;
  std::vector<Proc*> targets;
  if (current_)
    for (auto& s : current_->slots)
      if (s->proc && s->proc->ready && !s->proc->exited && s->proc->ch &&
          current_->cfg.agents[s->agent].name == agent)
        targets.push_back(s->proc);
  if (targets.empty() || fd < 0) {
    mlog()->warn("no current worker of {} to take over a connection: closing it",
                 util::printable(agent, 64));
    if (fd >= 0) ::close(fd);
    return;
  }
  Proc* t = targets[handoff_rr_++ % targets.size()];
  t->ch->send_fd(msg::Adopt{std::move(h.agent), std::move(h.state)}, fd);
}

void Master::on_process_exit(uv_process_t* h, int64_t status, int signal) {
  auto* p = static_cast<Proc*>(h->data);
  p->master->on_exit(p, status, signal);
}

void Master::log_exit(const Proc& p, int64_t status, int signal) {
  const std::string& name = p.gen->cfg.agents[p.agent].name;
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
  const config::AgentConfig& pac = p->gen->cfg.agents[p->agent];
  metrics_view_.worker_exited(pac.name, pac.type, status, signal, p->arena.get());
  p->arena.reset();
  // The channel stays open until it reports EOF: a worker's last messages (a connection handed
  // off just before it exited, with the socket in flight) are still in it.
  auto calls = std::move(p->cli);
  p->cli.clear();
  for (auto& [id, call] : calls)
    call.done({cli::WorkerAnswer::Status::kGone, {}});
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
  procs_.remove_if([p](const std::unique_ptr<Proc>& x) { return x.get() == p; });
  gc_generations();
  maybe_exit();
}

void Master::schedule_respawn(Slot& s) {
  if (stopping_) return;
  s.respawn_at_ms = uv_now(loop_) + s.backoff_ms;
  mlog()->info("respawning relative pid {} in {} ms", s.relative_pid, s.backoff_ms);
  s.backoff_ms = std::min(s.backoff_ms * 2, kBackoffMaxMs);
}

void Master::check_generation(Generation& g) {
  if (g.ready) return;
  for (auto& s : g.slots)
    if (!s->proc || !s->proc->ready) return;
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
      const config::AgentConfig& mine = p->gen->cfg.agents[p->agent];
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
  const std::string tag = "(" + std::to_string(getpid()) + ") : ";
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
    const std::string tag = "(" + std::to_string(getpid()) + ") : ";
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
  old_.remove_if([this](const std::unique_ptr<Generation>& g) {
    for (auto& p : procs_)
      if (p->gen == g.get()) return false;
    return true;
  });
  if (!closing_) release_listeners();
}

// ---- takeover: the old instance's side ------------------------------------------------------

void Master::on_successor(int fd, int pid) {
  if (successor_) {
    mlog()->warn(
        "takeover: spoad pid {} asks for our sockets while spoad pid {} takes them: refused", pid,
        successor_pid_);
    ::close(fd);
    return;
  }
  successor_pid_ = pid;
  successor_serving_ = false;
  successor_unacked_ = 0;
  successor_ = Channel::open(
      loop_, fd, [this](msg::Message&& m, int sock) { on_successor_message(std::move(m), sock); },
      [this] { successor_lost(); });
}

void Master::on_successor_message(msg::Message&& m, int fd) {
  if (fd >= 0) ::close(fd);
  if (std::holds_alternative<msg::Takeover>(m)) {
    // The pools' states first: the successor's first workers start with them.
    size_t states = 0;
    for (const auto& [name, e] : pool_states_)
      if (!e.state.empty()) states += successor_->send(msg::PoolState{name, e.state}) ? 1 : 0;
    if (states)
      mlog()->info("takeover: giving {} pool state(s) to spoad pid {}", states, successor_pid_);
    const auto& socks = listeners_.sockets();
    mlog()->info("takeover: giving {} listening sockets to spoad pid {}", socks.size(),
                 successor_pid_);
    for (const auto& sock : socks) {
      const int copy = ::fcntl(sock.fd, F_DUPFD_CLOEXEC, 0);
      if (copy >= 0) successor_->send_fd(msg::Listener{sock.address, sock.slot, sock.inode}, copy);
    }
    successor_->send(msg::Listeners{getpid(), socks.size()});
  } else if (std::holds_alternative<msg::Serving>(m)) {
    if (successor_serving_) return;
    successor_serving_ = true;
    listeners_.disown_files();  // the successor serves on them: its files now
    metrics_http_->close();     // and it binds the metrics address once we let it go
    mlog()->info("takeover: spoad pid {} serves: handing our connections over to it",
                 successor_pid_);
    if (!stopping_) {
      stop_requested_ms_ = uv_now(loop_);
      begin_soft_stop(msg::StopMode::kHandOff);
    }
  } else if (std::holds_alternative<msg::HandoffAck>(m)) {
    if (successor_unacked_ > 0) --successor_unacked_;
    maybe_exit();
  } else {
    mlog()->warn("takeover: spoad pid {} sent an unexpected {} message: ignored", successor_pid_,
                 msg::name(m));
  }
}

void Master::successor_lost() {
  successor_ = nullptr;
  if (!successor_serving_) {
    mlog()->info("takeover: spoad pid {} left before it served; we keep serving", successor_pid_);
    return;
  }
  if (closing_) return;
  // What is left is let go as a plain soft-stop would: DISCONNECT at the first idle moment.
  mlog()->warn(
      "takeover: the connection to spoad pid {} broke; {} connection(s) sent, unacknowledged; "
      "the connections left get a DISCONNECT",
      successor_pid_, successor_unacked_);
  successor_unacked_ = 0;
  const uint64_t elapsed = uv_now(loop_) - stop_requested_ms_;
  const uint64_t grace = cfg_.grace_ms > elapsed ? cfg_.grace_ms - elapsed : 0;
  for (auto& p : procs_)
    if (!p->exited && p->ch && p->ready)
      p->ch->send(msg::SoftStop{grace, msg::StopMode::kDisconnect});
  maybe_exit();
}

// ---- takeover: the new instance's side ------------------------------------------------------

void Master::on_predecessor_message(msg::Message&& m, int fd) {
  if (auto* a = std::get_if<msg::Adopt>(&m)) {
    // A connection the predecessor's worker let go at a safe point: one of ours adopts it,
    // as from an old generation. Acknowledged once read (we hold our copy of the socket).
    hand_off(msg::Handoff{std::move(a->agent), std::move(a->state)}, fd);
    if (predecessor_) predecessor_->send(msg::HandoffAck{});
    return;
  }
  if (fd >= 0) ::close(fd);
  mlog()->warn("takeover: spoad pid {} sent an unexpected {} message: ignored", predecessor_pid_,
               msg::name(m));
}

// ---- periodic work: respawns, deadlines ---------------------------------------------------

void Master::on_tick(uv_timer_t* t) {
  auto* m = static_cast<Master*>(t->data);
  const uint64_t now = uv_now(m->loop_);
  if (m->handover_) {
    // A successor that took our sockets says when it serves (Serving); the files it publishes
    // just before must not make us fall back.
    if (now >= m->handover_deadline_ms_)
      m->handover_fallback("no successor served in time");
    else if (!m->successor_ && m->successor_serves())
      m->handover_fallback("the new spoad serves, without a takeover");
  }
  if (m->successor_unacked_ > 0 && m->ack_deadline_ms_ != 0 && now >= m->ack_deadline_ms_) {
    mlog()->warn("takeover: {} connection(s) not acknowledged by spoad pid {}",
                 m->successor_unacked_, m->successor_pid_);
    m->successor_unacked_ = 0;
    m->maybe_exit();
  }
  if (m->stopping_) return;
  if (m->current_)
    for (auto& s : m->current_->slots)
      if (s->respawn_at_ms && now >= s->respawn_at_ms && !s->proc) {
        s->respawn_at_ms = 0;
        m->spawn(*s);
      }
  if (m->current_ && !m->current_->ready && now >= m->current_->deadline_ms)
    m->generation_failed(*m->current_, m->current_->errors.empty() ? "workers not ready in time\n"
                                                                   : m->current_->errors);
  if (m->next_ && now >= m->next_->deadline_ms)
    m->generation_failed(*m->next_, m->next_->errors + "new workers not ready in time\n");
  // Collected first, called after: an answer may run the client's next command, and a
  // `reload` there spawns workers, which grows procs_ under this loop.
  std::vector<std::function<void(cli::WorkerAnswer)>> expired;
  for (auto& p : m->procs_) {
    for (auto it = p->cli.begin(); it != p->cli.end();) {
      if (now < it->second.deadline_ms) {
        ++it;
        continue;
      }
      expired.push_back(std::move(it->second.done));
      it = p->cli.erase(it);
    }
  }
  for (auto& done : expired)
    done({cli::WorkerAnswer::Status::kNoAnswer, {}});
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
    const std::string tag = "(" + std::to_string(getpid()) + ") : ";
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

// ---- CLI backend ----------------------------------------------------------------------------

std::string Master::show_proc() {
  cli::ProcRow m;
  m.pid = getpid();
  m.type = "master";
  m.relative_pid = 0;
  m.reloads = reloads_;
  m.uptime_s = wall_s() - start_time_s_;
  m.version = SPOAD_VERSION;
  std::vector<cli::ProcRow> current, old;
  auto row = [this](const Proc& p) {
    cli::ProcRow r;
    r.pid = p.pid;
    r.type = p.gen->cfg.agents[p.agent].name;
    r.relative_pid = p.relative_pid;
    r.reloads = p.reloads;
    r.uptime_s = wall_s() - p.start_wall_s;
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
  uint64_t pool_state_bytes = 0;
  for (const auto& [name, e] : pool_states_)
    pool_state_bytes += e.state.size();
  const uint64_t up = wall_s() - start_time_s_;
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
      {"PoolStateBytes", pool_state_bytes},
  };
}

std::string Master::version() {
  return SPOAD_VERSION;
}

// ---- metrics --------------------------------------------------------------------------------

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
    const config::AgentConfig& ac = p->gen->cfg.agents[p->agent];
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
  std::vector<metrics::Sample> samples = metrics_view_.samples(m, procs, monotonic_ms());
  for (const auto& [name, e] : pool_states_) {
    const std::string labels = metrics::render_labels({{"agent", name}});
    samples.push_back(metrics::make_sample(
        "spoad_pool_state_bytes",
        "Size of the pool state the master keeps for the agent (given to its new workers).",
        metrics::Type::kGauge, static_cast<double>(e.state.size()), labels));
    samples.push_back(metrics::make_sample("spoad_pool_state_updates_total",
                                           "Pool states the master received from the agent's "
                                           "workers (or from the spoad it took over from).",
                                           metrics::Type::kCounter, static_cast<double>(e.updates),
                                           labels));
  }
  if (metrics_http_) metrics_http_->append_samples(samples);
  return metrics::render(samples, f);
}

std::string Master::metrics_exposition() {
  return render_metrics(metrics::Format::kText004);
}

int Master::worker_by_relative_pid(uint64_t n) {
  if (!current_) return 0;
  for (auto& s : current_->slots)
    if (static_cast<uint64_t>(s->relative_pid) == n && s->proc && !s->proc->exited)
      return s->proc->pid;
  return 0;
}

Master::Proc* Master::find_pid(int pid) {
  for (auto& p : procs_)
    if (p->pid == pid && !p->exited) return p.get();
  return nullptr;
}

bool Master::is_worker(uint64_t pid) {
  return find_pid(static_cast<int>(pid)) != nullptr;
}

bool Master::agent_workers(const std::string& name, std::vector<cli::PoolMember>* out) {
  bool known = false;
  auto configured = [&](const config::Config& c) {
    for (const auto& a : c.agents)
      known |= a.name == name;
  };
  configured(cfg_);
  if (next_) configured(next_->cfg);
  struct Member {
    int generation, relative_pid, pid;
  };
  std::vector<Member> found;
  for (auto& p : procs_) {
    if (p->exited || p->pid == 0 || p->gen->cfg.agents[p->agent].name != name) continue;
    known = true;
    if (p->ch) found.push_back({p->gen->id, p->relative_pid, p->pid});
  }
  std::sort(found.begin(), found.end(), [](const Member& a, const Member& b) {
    return std::tie(a.generation, a.relative_pid, a.pid) <
           std::tie(b.generation, b.relative_pid, b.pid);
  });
  out->clear();
  for (const Member& m : found)
    out->push_back({m.pid, m.relative_pid});
  return known;
}

void Master::worker_command(int pid, const cli::Words& words,
                            std::function<void(cli::WorkerAnswer)> done) {
  // A worker still starting is asked too: the channel is ordered, the command runs after Init.
  Proc* p = find_pid(pid);
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

// ---- signals and stop -----------------------------------------------------------------------

void Master::on_signal(uv_signal_t* s, int signum) {
  auto* m = static_cast<Master*>(s->data);
  // One logger for all cases: clang 14's ASan reports a false stack-use-after-scope for
  // temporaries made inside switch cases.
  const auto log = mlog();
  switch (signum) {
    case SIGUSR2:
    case SIGHUP:
      log->info("{}: reload", signum == SIGHUP ? "SIGHUP" : "SIGUSR2");
      m->reload(nullptr);
      break;
    case SIGUSR1:
      log->info("SIGUSR1: soft-stop (grace {} ms)", m->cfg_.grace_ms);
      m->soft_stop();
      break;
    default:
      log->info("{}: hard-stop", signum == SIGTERM ? "SIGTERM" : "SIGINT");
      m->hard_stop();
      break;
  }
}

void Master::soft_stop() {
  if (stopping_ || handover_) return;
  // Under HAProxy's master (a `program` section), SIGUSR1 means "a new spoad is starting
  // now": keep accepting until it serves, or HAProxy's new worker would find nobody on the
  // port, mark the agent DOWN and fail SPOE until its next health check.
  const uint64_t handover = std::min(cfg_.handover_ms, cfg_.grace_ms);
  if (started_ && handover > 0 && std::getenv("HAPROXY_MWORKER") != nullptr) {
    handover_ = true;
    stop_requested_ms_ = uv_now(loop_);
    handover_deadline_ms_ = stop_requested_ms_ + handover;
    mlog()->info("soft-stop: serving until the new spoad serves (at most {} ms)", handover);
    // With a takeover socket, the new spoad takes our sockets and then our connections, those
    // of HAProxy's new engines included: nothing to close. Without one (no cli.socket), close
    // the new engines' connections at their HELLO (Server::hand_over).
    handover_deferred_ = takeover_sock_ != nullptr;
    if (!handover_deferred_) {
      const msg::HandOver engines{{engine_order_.begin(), engine_order_.end()}};
      for (auto& p : procs_)
        if (!p->exited && p->ch && p->ready) p->ch->send(engines);
    }
    return;
  }
  stop_requested_ms_ = uv_now(loop_);
  begin_soft_stop(msg::StopMode::kDisconnect);
}

void Master::handover_fallback(const char* why) {
  mlog()->info("soft-stop: {}", why);
  if (handover_deferred_) {
    // No takeover: from now on, a new engine's connection is closed at its HELLO.
    const msg::HandOver engines{{engine_order_.begin(), engine_order_.end()}};
    for (auto& p : procs_)
      if (!p->exited && p->ch && p->ready) p->ch->send(engines);
  }
  // HAProxy soft-stops too and closes its own connections, which is the only way without a
  // race when nobody takes them: wait for it.
  begin_soft_stop(msg::StopMode::kWait);
}

void Master::begin_soft_stop(msg::StopMode mode) {
  handover_ = false;
  stopping_ = true;
  const uint64_t elapsed = uv_now(loop_) - stop_requested_ms_;
  const uint64_t grace = cfg_.grace_ms > elapsed ? cfg_.grace_ms - elapsed : 0;
  if (next_) {
    for (auto& s : next_->slots)
      if (s->proc && !s->proc->exited) ::kill(s->proc->pid, SIGTERM);
    old_.push_back(std::move(next_));
  }
  // Nobody takes our connections: nobody needs our sockets either. Closing our copies first
  // lets each worker take what waits in its queue and then close the socket for good, so new
  // connections are refused at once rather than left in a queue nobody reads. A successor
  // that took copies keeps them.
  if (mode != msg::StopMode::kHandOff) listeners_.close_all();
  for (auto& p : procs_)
    if (!p->exited) soft_stop_worker(*p, grace, mode);
  // The workers bound their soft-stop by the grace period; past it (and a margin), kill.
  uv_timer_start(&stop_timer_, on_stop_timer, grace + 2000, 0);
  finish_reload_on_stop();
  maybe_exit();
}

void Master::soft_stop_worker(Proc& p, uint64_t grace_ms, msg::StopMode mode) {
  p.leaving = true;
  if (p.ch && p.ready)
    p.ch->send(msg::SoftStop{grace_ms, mode});
  else
    ::kill(p.pid, SIGUSR1);
}

void Master::hard_stop() {
  const bool was = stopping_;
  handover_ = false;
  stopping_ = true;
  if (next_) old_.push_back(std::move(next_));
  for (auto& p : procs_)
    if (!p->exited) ::kill(p->pid, SIGTERM);
  if (!was || uv_timer_get_due_in(&stop_timer_) > kHardStopKillMs)
    uv_timer_start(&stop_timer_, on_stop_timer, kHardStopKillMs, 0);
  finish_reload_on_stop();
  maybe_exit();
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

void Master::on_stop_timer(uv_timer_t* t) {
  auto* m = static_cast<Master*>(t->data);
  for (auto& p : m->procs_)
    if (!p->exited) {
      mlog()->warn("worker {} still running: SIGKILL", p->pid);
      ::kill(p->pid, SIGKILL);
    }
}

void Master::maybe_exit() {
  if (!stopping_ || closing_ || !procs_.empty()) return;
  // The successor must have read every connection forwarded before we close the link (a
  // hang-up behind a passed socket makes libuv drop what follows); on_tick bounds the wait.
  if (successor_ && successor_unacked_ > 0) {
    if (ack_deadline_ms_ == 0) ack_deadline_ms_ = uv_now(loop_) + kTakeoverAckTimeoutMs;
    return;
  }
  mlog()->info("All workers exited. Exiting... ({})", exit_status_);
  close_everything();
}

void Master::close_everything() {
  if (closing_) return;
  closing_ = true;
  for (auto& s : sig_)
    if (uv_is_active(reinterpret_cast<uv_handle_t*>(&s)) || true)
      uv_close(reinterpret_cast<uv_handle_t*>(&s), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&stop_timer_), nullptr);
  if (metrics_http_) metrics_http_->close();
  if (cli_) cli_->close([] {});
  if (!cli_path_.empty()) runtime::unlink_if_owned(cli_path_, cli_inode_);
  if (takeover_sock_) takeover_sock_->close();
  takeover_sock_ = nullptr;
  if (successor_) successor_->close();
  successor_ = nullptr;
  if (predecessor_) predecessor_->close();
  predecessor_ = nullptr;
  // Unix socket files a successor took over are its own now (Listeners::disown_files).
  listeners_.close_all();
  if (!pidfile_.empty()) {
    std::ifstream in(pidfile_);
    std::string content;
    std::getline(in, content);
    if (content == std::to_string(getpid())) ::unlink(pidfile_.c_str());
  }
}

}  // namespace spoad::supervisor
