#include "runtime/server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <vector>

#include "runtime/connection.h"
#include "runtime/listener.h"
#include "util/escape.h"

namespace spoad::runtime {

namespace {

// Connections accepted per readiness callback: the loop serves the others in between.
constexpr int kAcceptBatch = 64;
// Accept-error back-off: first pause and longest pause, in milliseconds.
constexpr uint64_t kAcceptBackoffMinMs = 100;
constexpr uint64_t kAcceptBackoffMaxMs = 1000;

}  // namespace

Server::Server(uv_loop_t* loop, const config::AgentConfig& cfg, std::unique_ptr<agent::Agent> agent,
               std::shared_ptr<spdlog::logger> log, const metrics::Scope& metrics)
    : loop_(loop),
      cfg_(cfg),
      conn_settings_{cfg.runtime, cfg.listen.kind == config::ListenAddress::Kind::kUnix},
      agent_(std::move(agent)),
      log_(std::move(log)),
      stats_(metrics),
      reasm_budget_(cfg.runtime.max_reassembly_bytes) {}

Server::~Server() = default;

std::string Server::address() const {
  return util::printable(cfg_.listen.str(), 4096);  // a unix path is bytes from the file
}

bool Server::allow(util::RateLimiter& limiter) {
  const uint64_t now = uv_now(loop_);
  if (!limiter.allow(now)) return false;
  if (const uint64_t n = limiter.take_suppressed(); n > 0)
    log_->warn("{} similar messages suppressed", n);
  return true;
}

bool Server::log_limiter_allow() {
  return allow(log_limiter_);
}

bool Server::limits_log_allow() {
  return allow(limits_limiter_);
}

void Server::listen(const std::vector<int>& given) {
  std::vector<int> fds = given;
  if (fds.empty()) {
    bound_here_ = true;
    if (cfg_.listen.kind == config::ListenAddress::Kind::kUnix) {
      fds.push_back(listen_unix(cfg_.listen.path, cfg_.runtime.backlog, &unix_inode_));
      unix_path_ = cfg_.listen.path;
    } else {
      fds.push_back(listen_tcp(cfg_.listen, cfg_.runtime.backlog));
    }
  }
  uv_timer_init(loop_, &accept_timer_);
  accept_timer_.data = this;
  listener_open_ = true;
  int rc = 0;
  for (const int fd : fds) {
    auto sock = std::make_unique<Socket>();
    sock->server = this;
    sock->fd = fd;
    // Inherited sockets listen already; listen() again only applies the backlog.
    if (rc == 0) rc = ::listen(fd, cfg_.runtime.backlog) == 0 ? 0 : uv_translate_sys_error(errno);
    if (rc == 0) rc = uv_poll_init(loop_, &sock->poll, fd);  // also makes it non-blocking
    if (rc != 0) {
      ::close(fd);
      continue;
    }
    sock->poll.data = sock.get();
    socks_.push_back(std::move(sock));
  }
  if (rc != 0) {
    close_listener();
    throw std::runtime_error("cannot listen on " + address() + ": " + uv_strerror(rc));
  }
  resume_accepting();
}

void Server::on_readable(uv_poll_t* p, int status, int /*events*/) {
  auto* sock = static_cast<Socket*>(p->data);
  if (status < 0) {
    sock->server->accept_error(status);
    return;
  }
  sock->server->accept_ready(*sock);
}

void Server::pause_accepting() {
  for (auto& sock : socks_)
    if (sock->polling) {
      uv_poll_stop(&sock->poll);
      sock->polling = false;
    }
}

void Server::resume_accepting() {
  if (!listener_open_ || stopping_ || backing_off_ || at_limit_) return;
  for (auto& sock : socks_)
    if (!sock->polling && uv_poll_start(&sock->poll, UV_READABLE, on_readable) == 0)
      sock->polling = true;
}

void Server::accept_ready(Socket& sock) {
  for (int i = 0; i < kAcceptBatch && listener_open_ && !stopping_; ++i) {
    if (conns_.size() >= cfg_.runtime.max_connections) {
      if (!connection_waiting()) return;
      // A connection waits and we may not take it: stop polling (it stays in the backlog)
      // until one of ours closes.
      at_limit_ = true;
      pause_accepting();
      ++stats_.max_conn_reached;
      if (limits_log_allow())
        log_->warn("max-connections ({}) reached on {}: new connections wait in the backlog",
                   cfg_.runtime.max_connections, address());
      return;
    }
    const int fd = ::accept4(sock.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      // The peer gave up before we took it, or a network error that accept(2) reports for
      // the pending connection: nothing is wrong with us, take the next one.
      if (e == EINTR || e == ECONNABORTED || e == EPROTO || e == ENETDOWN || e == ENOPROTOOPT ||
          e == EHOSTDOWN || e == ENONET || e == EHOSTUNREACH || e == ENETUNREACH || e == EPERM)
        continue;
      accept_error(uv_translate_sys_error(e));
      return;
    }
    accept_backoff_ms_ = 0;
    auto* c = new Connection(*this);
    conns_.insert(c);
    ++stats_.conns_current;
    if (c->adopt(fd) != 0) {
      ::close(fd);
      c->close_now();
      continue;
    }
    ++stats_.conns_total;
  }
}

bool Server::connection_waiting() const {
  std::vector<pollfd> p;
  for (const auto& sock : socks_)
    p.push_back({sock->fd, POLLIN, 0});
  if (::poll(p.data(), p.size(), 0) <= 0) return false;
  for (const pollfd& x : p)
    if (x.revents & POLLIN) return true;
  return false;
}

void Server::accept_error(int err) {
  // EMFILE/ENFILE (no fd left), ENOBUFS/ENOMEM: accepting again at once would fail again
  // and spin the loop. Stop for a while; the waiting connections stay in the backlog.
  ++stats_.accept_errors;
  accept_backoff_ms_ = accept_backoff_ms_ == 0
                           ? kAcceptBackoffMinMs
                           : std::min(accept_backoff_ms_ * 2, kAcceptBackoffMaxMs);
  if (limits_log_allow())
    log_->warn(
        "accept on {} failed: {} ({}) with {} connections open; accepting again in {} ms "
        "(new connections wait in the backlog)",
        address(), uv_err_name(err), uv_strerror(err), conns_.size(), accept_backoff_ms_);
  pause_accepting();
  backing_off_ = true;
  uv_timer_start(&accept_timer_, on_accept_timer, accept_backoff_ms_, 0);
}

void Server::on_accept_timer(uv_timer_t* t) {
  auto* s = static_cast<Server*>(t->data);
  s->backing_off_ = false;
  s->resume_accepting();
}

void Server::begin_succession(std::unordered_set<std::string> old_engines) {
  in_succession_ = true;
  old_engines_ = std::move(old_engines);
}

bool Server::on_engine(const std::string& engine_id) {
  if (in_succession_ && !old_engines_.contains(engine_id)) return false;
  if (!engine_id.empty() && seen_engines_.size() < kMaxEngines &&
      seen_engines_.insert(engine_id).second && engine_cb_)
    engine_cb_(engine_id);
  return true;
}

void Server::adopt(int fd, const nlohmann::json& state) {
  if (stopping_) {
    ::close(fd);
    return;
  }
  auto* c = new Connection(*this);
  conns_.insert(c);
  ++stats_.conns_current;
  if (c->adopt_established(fd, state) != 0) {
    ::close(fd);
    c->close_now();
    return;
  }
  ++stats_.adopted;
  ++stats_.conns_total;
}

void Server::hand_off(const nlohmann::json& state, uv_stream_t* handle,
                      std::function<void(bool)> done) {
  if (!handoff_) {
    done(false);
    return;
  }
  handoff_(state, handle, std::move(done));
}

void Server::on_connection_closed(Connection* c) {
  conns_.erase(c);
  --stats_.conns_current;
  if (at_limit_ && conns_.size() < cfg_.runtime.max_connections) {
    at_limit_ = false;
    resume_accepting();
  }
  check_stopped();
}

void Server::close_listener() {
  if (!listener_open_) return;
  listener_open_ = false;
  if (!unix_path_.empty()) unlink_if_owned(unix_path_, unix_inode_);
  listener_handles_closing_ = static_cast<int>(socks_.size()) + 1;
  for (auto& sock : socks_) {
    sock->polling = false;
    sock->poll.data = this;
    uv_close(reinterpret_cast<uv_handle_t*>(&sock->poll), on_listener_closed);
    // Our copy only: the master's keeps the connections waiting in the queue.
    ::close(sock->fd);  // the poll handle is stopped: the fd is no longer watched
    sock->fd = -1;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&accept_timer_), on_listener_closed);
}

void Server::on_listener_closed(uv_handle_t* h) {
  auto* s = static_cast<Server*>(h->data);
  if (--s->listener_handles_closing_ == 0) {
    s->socks_.clear();
    s->check_stopped();
  }
}

void Server::drain_accept_queue() {
  // Our copy may be the last one (a plain soft-stop: the master closed its own; or a socket
  // this process bound itself), and closing it would reset the connections waiting in its
  // queue. Take them first.
  if (!listener_open_) return;
  for (auto& sock : socks_)
    for (;;) {
      const int c = ::accept4(sock->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) break;
      auto* conn = new Connection(*this);
      conns_.insert(conn);
      ++stats_.conns_current;
      if (conn->adopt(c) != 0) {
        ::close(c);
        conn->close_now();
        continue;
      }
      ++stats_.conns_total;
    }
}

void Server::soft_stop(std::function<void()> done, DrainMode mode) {
  if (mode == DrainMode::kHandOff && !handoff_) mode = DrainMode::kDisconnect;
  if (stopping_) {
    if (stopped_) return;
    std::vector<Connection*> conns(conns_.begin(), conns_.end());
    for (Connection* c : conns)
      c->drain(mode);
    return;
  }
  stopping_ = true;
  stopped_cb_ = std::move(done);
  // Handing off (reload, takeover), the master's copy of each listening socket keeps its queue
  // for the next worker of the slot. Otherwise nobody may poll it again: take what waits.
  if (mode != DrainMode::kHandOff || bound_here_) drain_accept_queue();
  close_listener();
  std::vector<Connection*> conns(conns_.begin(), conns_.end());
  for (Connection* c : conns)
    c->drain(mode);
  check_stopped();  // stops the agent once the last connection is gone
}

void Server::hard_stop(std::function<void()> done) {
  if (stopped_) return;  // already fully stopped: `done` was called then
  stopping_ = true;
  stopped_cb_ = std::move(done);
  close_listener();
  std::vector<Connection*> conns(conns_.begin(), conns_.end());
  for (Connection* c : conns)
    c->close_now();
  if (!agent_stop_called_) {
    agent_stop_called_ = true;
    agent_->stop([] {});
  }
  agent_stopped_ = true;
  check_stopped();
}

void Server::check_stopped() {
  if (!stopping_ || !conns_.empty() || listener_open_ || listener_handles_closing_ > 0) return;
  // The agent stops after the last message: a draining connection may still bring NOTIFYs
  // (kWait serves until HAProxy closes), and the agent must still act on them.
  if (!agent_stop_called_) {
    agent_stop_called_ = true;
    agent_->stop([this] {
      agent_stopped_ = true;
      check_stopped();
    });
  }
  if (!agent_stopped_ || stopped_) return;
  stopped_ = true;
  if (stopped_cb_) {
    auto cb = std::move(stopped_cb_);
    stopped_cb_ = nullptr;
    cb();
  }
}

}  // namespace spoad::runtime
