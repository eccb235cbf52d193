#include "runtime/server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>
#include <vector>

#include "runtime/connection.h"
#include "runtime/listener.h"

namespace spoad::runtime {

Server::Server(uv_loop_t* loop, const config::AgentConfig& cfg, std::unique_ptr<agent::Agent> agent,
               std::shared_ptr<spdlog::logger> log)
    : loop_(loop), cfg_(cfg), agent_(std::move(agent)), log_(std::move(log)) {}

Server::~Server() = default;

uint64_t Server::now_us() {
  return uv_hrtime() / 1000;
}

bool Server::log_limiter_allow() {
  const uint64_t now = uv_now(loop_);
  if (!log_limiter_.allow(now)) return false;
  if (const uint64_t n = log_limiter_.take_suppressed(); n > 0)
    log_->warn("{} similar messages suppressed", n);
  return true;
}

void Server::listen(int fd) {
  const bool unix_socket = cfg_.listen.kind == config::ListenAddress::Kind::kUnix;
  int rc = 0;
  if (unix_socket) {
    if (fd < 0) {
      fd = listen_unix(cfg_.listen.path, cfg_.runtime.backlog, &unix_inode_);
      unix_path_ = cfg_.listen.path;
    }
    uv_pipe_init(loop_, &listener_.pipe, 0);
    rc = uv_pipe_open(&listener_.pipe, fd);
  } else {
    if (fd < 0) fd = listen_tcp(cfg_.listen, cfg_.runtime.backlog);
    uv_tcp_init(loop_, &listener_.tcp);
    rc = uv_tcp_open(&listener_.tcp, fd);
  }
  listener_.tcp.data = this;
  listener_open_ = true;
  if (rc == 0)
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), cfg_.runtime.backlog, on_connection);
  if (rc != 0) {
    close_listener();
    throw std::runtime_error("cannot listen on " + cfg_.listen.str() + ": " + uv_strerror(rc));
  }
  listening_ = true;
}

void Server::on_connection(uv_stream_t* listener, int status) {
  auto* s = static_cast<Server*>(listener->data);
  if (status < 0) {
    s->log_->error("accept on {} failed: {}", s->cfg_.listen.str(), uv_strerror(status));
    return;
  }
  s->accept_pending();
}

void Server::accept_pending() {
  if (stopping_ || !listener_open_) return;
  if (conns_.size() >= cfg_.runtime.max_connections) {
    // Leave it in libuv's hands: libuv stops polling the listener until we accept.
    if (!accept_pending_ && log_limiter_allow())
      log_->warn("max-connections ({}) reached on {}: new connections wait",
                 cfg_.runtime.max_connections, cfg_.listen.str());
    accept_pending_ = true;
    return;
  }
  accept_pending_ = false;
  auto* c = new Connection(*this);
  conns_.insert(c);
  ++stats_.conns_current;
  const int rc = c->accept(reinterpret_cast<uv_stream_t*>(&listener_));
  if (rc != 0) {
    if (rc != UV_EAGAIN) log_->warn("accept on {} failed: {}", cfg_.listen.str(), uv_strerror(rc));
    c->close_now();
    return;
  }
  ++stats_.conns_total;
}

void Server::hand_over(std::unordered_set<std::string> old_engines) {
  handing_over_ = true;
  old_engines_ = std::move(old_engines);
}

bool Server::on_engine(const std::string& engine_id) {
  if (handing_over_ && !old_engines_.contains(engine_id)) return false;
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
  if (accept_pending_) accept_pending();
  check_stopped();
}

void Server::close_listener() {
  if (!listener_open_) return;
  listener_open_ = false;
  listening_ = false;
  if (!unix_path_.empty()) unlink_if_owned(unix_path_, unix_inode_);
  listener_closing_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&listener_), on_listener_closed);
}

void Server::on_listener_closed(uv_handle_t* h) {
  auto* s = static_cast<Server*>(h->data);
  s->listener_closing_ = false;
  s->check_stopped();
}

void Server::drain_accept_queue() {
  if (!listener_open_ || cfg_.listen.kind != config::ListenAddress::Kind::kTcp) return;
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&listener_), &fd) != 0) return;
  for (;;) {
    const int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
  if (stopping_) return;
  if (mode == DrainMode::kHandOff && !handoff_) mode = DrainMode::kDisconnect;
  stopping_ = true;
  stopped_cb_ = std::move(done);
  // With SO_REUSEPORT each listener has its own accept queue, and closing it would reset the
  // connections waiting there: take them first, and drain them with the others.
  drain_accept_queue();
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
  if (!stopping_ || !conns_.empty() || listener_open_ || listener_closing_) return;
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
