// The master's start, signals, periodic work and stop. The rest of Master is spread by concern
// over master_*.cpp (see master.h).
#include "supervisor/master.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>

#include "runtime/listener.h"
#include "supervisor/master_text.h"
#include "util/clock.h"
#include "version.h"

namespace spoad::supervisor {

namespace {

constexpr uint64_t kTickMs = 25;
constexpr uint64_t kHardStopKillMs = 800;

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

}  // namespace

cli::MasterCli::Limits Master::cli_limits(const config::Config& cfg) {
  return {static_cast<size_t>(cfg.cli.max_line), static_cast<size_t>(cfg.cli.max_queued)};
}

Master::Master(uv_loop_t* loop, MasterOptions opts, config::Config cfg, std::string cfg_text)
    : loop_(loop),
      opts_(std::move(opts)),
      cfg_(std::move(cfg)),
      cfg_text_(std::move(cfg_text)),
      start_time_s_(util::wall_s()) {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  exe_ = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("/proc/self/exe");
}

Master::~Master() = default;

// ---- start ----------------------------------------------------------------------------------

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

// ---- periodic work: succession, respawns, deadlines, CLI timeouts ---------------------------

void Master::on_tick(uv_timer_t* t) {
  auto* m = static_cast<Master*>(t->data);
  const uint64_t now = uv_now(m->loop_);
  if (m->awaiting_successor_) m->check_successor(now);
  if (m->successor_unacked_ > 0 && m->ack_deadline_ms_ != 0 && now >= m->ack_deadline_ms_) {
    mlog()->warn("takeover: {} connection(s) not acknowledged by spoad pid {}",
                 m->successor_unacked_, m->successor_pid_);
    m->successor_unacked_ = 0;
    m->exit_if_all_done();
  }
  if (m->stopping_) return;
  m->respawn_due(now);
  if (m->current_ && !m->current_->ready && now >= m->current_->deadline_ms)
    m->generation_failed(*m->current_, m->current_->errors.empty() ? "workers not ready in time\n"
                                                                   : m->current_->errors);
  if (m->next_ && now >= m->next_->deadline_ms)
    m->generation_failed(*m->next_, m->next_->errors + "new workers not ready in time\n");
  // Collected first, called after: an answer may run the client's next command, and a
  // `reload` there spawns workers, which grows the process table under the walk.
  for (auto& done : m->procs_.take_expired_cli(now))
    done({cli::WorkerAnswer::Status::kNoAnswer, {}});
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
  if (stopping_ || awaiting_successor_) return;
  // Under HAProxy's master (a `program` section), SIGUSR1 means "a new spoad is starting
  // now": keep accepting until it serves, or HAProxy's new worker would find nobody on the
  // port, mark the agent DOWN and fail SPOE until its next health check.
  const uint64_t wait = std::min(cfg_.handover_ms, cfg_.grace_ms);
  if (started_ && wait > 0 && std::getenv("HAPROXY_MWORKER") != nullptr) {
    await_successor(wait);
    return;
  }
  stop_requested_ms_ = uv_now(loop_);
  begin_soft_stop(msg::StopMode::kDisconnect);
}

void Master::begin_soft_stop(msg::StopMode mode) {
  awaiting_successor_ = false;
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
  exit_if_all_done();
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
  awaiting_successor_ = false;
  stopping_ = true;
  if (next_) old_.push_back(std::move(next_));
  for (auto& p : procs_)
    if (!p->exited) ::kill(p->pid, SIGTERM);
  if (!was || uv_timer_get_due_in(&stop_timer_) > kHardStopKillMs)
    uv_timer_start(&stop_timer_, on_stop_timer, kHardStopKillMs, 0);
  finish_reload_on_stop();
  exit_if_all_done();
}

void Master::on_stop_timer(uv_timer_t* t) {
  auto* m = static_cast<Master*>(t->data);
  for (auto& p : m->procs_)
    if (!p->exited) {
      mlog()->warn("worker {} still running: SIGKILL", p->pid);
      ::kill(p->pid, SIGKILL);
    }
}

void Master::exit_if_all_done() {
  // Done: stopping, every worker reaped, every connection forwarded to a successor read.
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
