// Succession between spoad instances (supervisor/takeover.h): as the new instance, take the
// predecessor's listening sockets and pool states at start and adopt the connections it
// forwards; as the old one, give them to the successor and forward every connection our
// workers hand off; and, under HAProxy's master, serve until the successor does, falling back
// to a soft-stop when it comes without a takeover or not in time.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "supervisor/master.h"
#include "supervisor/master_text.h"

namespace spoad::supervisor {

// ---- the new instance's side ----------------------------------------------------------------

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
  for (auto& [name, state] : p.pool_states)
    pool_states_.update(name, std::move(state));
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

// ---- the old instance's side: takeover ------------------------------------------------------

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
    for (const auto& [name, e] : pool_states_.entries())
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
    exit_if_all_done();
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
  exit_if_all_done();
}

// ---- the old instance's side: SIGUSR1 under HAProxy's master ----------------------------------

void Master::await_successor(uint64_t wait_ms) {
  awaiting_successor_ = true;
  stop_requested_ms_ = uv_now(loop_);
  succession_deadline_ms_ = stop_requested_ms_ + wait_ms;
  mlog()->info("soft-stop: serving until the new spoad serves (at most {} ms)", wait_ms);
  // With a takeover socket, the new spoad takes our sockets and then our connections, those
  // of HAProxy's new engines included: nothing to close. Without one (no cli.socket), close
  // the new engines' connections at their HELLO (Server::begin_succession).
  succession_deferred_ = takeover_sock_ != nullptr;
  if (!succession_deferred_) send_engines_to_workers();
}

void Master::check_successor(uint64_t now_ms) {
  // A successor that took our sockets says when it serves (Serving); the files it publishes
  // just before must not make us fall back.
  if (now_ms >= succession_deadline_ms_)
    succession_fallback("no successor served in time");
  else if (!successor_ && successor_serves())
    succession_fallback("the new spoad serves, without a takeover");
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

void Master::succession_fallback(const char* why) {
  mlog()->info("soft-stop: {}", why);
  // No takeover: from now on, a new engine's connection is closed at its HELLO.
  if (succession_deferred_) send_engines_to_workers();
  // HAProxy soft-stops too and closes its own connections, which is the only way without a
  // race when nobody takes them: wait for it.
  begin_soft_stop(msg::StopMode::kWait);
}

void Master::send_engines_to_workers() {
  const msg::Succession engines{engines_.list()};
  for (auto& p : procs_)
    if (!p->exited && p->ch && p->ready) p->ch->send(engines);
}

}  // namespace spoad::supervisor
