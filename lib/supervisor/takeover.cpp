#include "supervisor/takeover.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <stdexcept>

#include "runtime/listener.h"
#include "supervisor/messages.h"
#include "util/clock.h"
#include "util/escape.h"
#include "util/log.h"
#include "util/rate_limit.h"
#include "version.h"

namespace spoad::supervisor {

namespace {

constexpr size_t kMaxFdsPerRead = 64;

// The uid and pid of the process at the other end of `fd`; false if unknown.
bool peer_cred(int fd, uid_t* uid, pid_t* pid) {
  ucred c{};
  socklen_t len = sizeof(c);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &len) != 0) return false;
  *uid = c.uid;
  *pid = c.pid;
  return true;
}

// Waits for `events` on `fd` until `deadline` (util::monotonic_ms()); false on timeout or error.
bool wait_fd(int fd, short events, uint64_t deadline) {
  for (;;) {
    const uint64_t now = util::monotonic_ms();
    if (now >= deadline) return false;
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(deadline - now));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
  }
}

}  // namespace

std::string takeover_path(const std::string& cli_path) {
  return cli_path + ".takeover";
}

Predecessor take_over(const std::string& path, uint64_t timeout_ms) {
  Predecessor out;
  std::deque<int> fds;
  auto failed = [&](std::string why) {
    for (const auto& s : out.sockets)
      ::close(s.fd);
    out.sockets.clear();
    out.pool_states.clear();
    for (int fd : fds)
      ::close(fd);
    if (out.fd >= 0) ::close(out.fd);
    out.fd = -1;
    out.outcome = Predecessor::Outcome::kFailed;
    out.why = std::move(why);
    return out;
  };
  const std::string shown = util::printable(path, 4096);
  sockaddr_un sa{};
  if (path.size() >= sizeof(sa.sun_path)) {
    out.why = "the takeover socket path " + shown + " is too long";
    return out;
  }
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.data(), path.size());
  out.fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (out.fd < 0) return failed(std::string("cannot create a socket: ") + std::strerror(errno));
  if (::connect(out.fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ECONNREFUSED) {
      ::close(out.fd);
      out.fd = -1;
      out.why = "no spoad serves at " + shown + " (" + std::strerror(e) + ")";
      return out;
    }
    return failed("cannot connect to " + shown + ": " + std::strerror(e));
  }
  uid_t uid = 0;
  pid_t pid = 0;
  if (!peer_cred(out.fd, &uid, &pid) || uid != ::geteuid())
    return failed("the process at " + shown + " runs as another user");
  const uint64_t deadline = util::monotonic_ms() + timeout_ms;

  std::string req;
  msg::encode(msg::Takeover{::getpid(), SPOAD_VERSION}, req);
  for (size_t off = 0; off < req.size();) {
    const ssize_t n = ::send(out.fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_fd(out.fd, POLLOUT, deadline))
        return failed("spoad pid " + std::to_string(pid) + " did not answer within " +
                      std::to_string(timeout_ms) + " ms");
    } else {
      return failed(std::string("cannot send the takeover request: ") + std::strerror(errno));
    }
  }

  std::string in;
  char buf[65536];
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFdsPerRead)];
  for (;;) {
    // Whole frames first.
    for (;;) {
      msg::Decoded d = msg::decode(in);
      if (d.status == msg::Decoded::Status::kNeedMore) break;
      if (d.status != msg::Decoded::Status::kMessage)
        return failed(std::string("garbage: ") + d.error);
      int fd = -1;
      if (d.with_fd) {
        if (fds.empty()) return failed("garbage: a listener came without its socket");
        fd = fds.front();
        fds.pop_front();
      }
      in.erase(0, d.used);
      if (auto* ps = std::get_if<msg::PoolState>(&d.message)) {
        out.pool_states.emplace_back(std::move(ps->agent), std::move(ps->state));
      } else if (const auto* l = std::get_if<msg::Listener>(&d.message)) {
        out.sockets.push_back({l->address, l->slot, l->inode, fd});
      } else if (const auto* end = std::get_if<msg::Listeners>(&d.message)) {
        if (end->count != out.sockets.size() || !fds.empty() || !in.empty())
          return failed("garbage: " + std::to_string(end->count) + " listeners announced, " +
                        std::to_string(out.sockets.size()) + " received");
        out.pid = end->pid;
        out.outcome = Predecessor::Outcome::kTaken;
        return out;
      } else {
        if (fd >= 0) ::close(fd);
        return failed(std::string("garbage: an unexpected ") + msg::name(d.message) + " message");
      }
    }
    if (in.size() > msg::kMaxMessage) return failed("garbage: an endless frame");
    if (!wait_fd(out.fd, POLLIN, deadline))
      return failed("spoad pid " + std::to_string(pid) + " did not answer within " +
                    std::to_string(timeout_ms) + " ms");
    iovec iov{buf, sizeof(buf)};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    const ssize_t n = ::recvmsg(out.fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) return failed(std::string("cannot read: ") + std::strerror(errno));
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds.push_back(fd);
        }
      }
    if (mh.msg_flags & MSG_CTRUNC) return failed("garbage: too many sockets at once");
    if (n == 0) return failed("spoad pid " + std::to_string(pid) + " closed the connection");
    in.append(buf, static_cast<size_t>(n));
  }
}

// ---- the predecessor's end ----------------------------------------------------------------

TakeoverSocket* TakeoverSocket::open(uv_loop_t* loop, const std::string& path, PeerCb on_peer) {
  auto* t = new TakeoverSocket();
  try {
    t->fd_ = runtime::listen_unix(path, 16, &t->inode_, 0600);
  } catch (...) {
    delete t;
    throw;
  }
  t->path_ = path;
  t->on_peer_ = std::move(on_peer);
  uv_poll_init(loop, &t->poll_, t->fd_);
  t->poll_.data = t;
  uv_poll_start(&t->poll_, UV_READABLE, on_readable);
  return t;
}

void TakeoverSocket::on_readable(uv_poll_t* p, int status, int) {
  auto* t = static_cast<TakeoverSocket*>(p->data);
  if (status < 0) return;
  static util::RateLimiter limiter(5);
  for (int i = 0; i < 16; ++i) {
    const int fd = ::accept4(t->fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    uid_t uid = 0;
    pid_t pid = 0;
    if (!peer_cred(fd, &uid, &pid) || uid != ::geteuid()) {
      if (limiter.allow(uv_now(p->loop)))
        util::make_logger("spoad")->warn(
            "takeover: refused a connection from pid {} (uid {}): not our uid", pid, uid);
      ::close(fd);
      continue;
    }
    t->on_peer_(fd, pid);
  }
}

void TakeoverSocket::close() {
  runtime::unlink_if_owned(path_, inode_);
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* h) {
    auto* t = static_cast<TakeoverSocket*>(h->data);
    ::close(t->fd_);
    delete t;
  });
}

}  // namespace spoad::supervisor
