#include "supervisor/channel.h"

#include <sys/socket.h>
#include <unistd.h>

#include "util/log.h"
#include "util/rate_limit.h"

namespace spoad::supervisor {

namespace {

struct WriteReq {
  uv_write_t req;
  std::string data;
  std::function<void(bool)> done;
};

// A stream handle of the right kind around a socket fd, for uv_write2 or uv_accept.
uv_stream_t* wrap(uv_loop_t* loop, int fd, bool unix_socket) {
  if (unix_socket) {
    auto* p = new uv_pipe_t;
    uv_pipe_init(loop, p, 0);
    if (fd >= 0 && uv_pipe_open(p, fd) != 0) {
      delete p;
      return nullptr;
    }
    return reinterpret_cast<uv_stream_t*>(p);
  }
  auto* t = new uv_tcp_t;
  uv_tcp_init(loop, t);
  if (fd >= 0 && uv_tcp_open(t, fd) != 0) {
    delete t;
    return nullptr;
  }
  return reinterpret_cast<uv_stream_t*>(t);
}

void close_and_free(uv_stream_t* s) {
  uv_close(reinterpret_cast<uv_handle_t*>(s), [](uv_handle_t* h) {
    if (h->type == UV_NAMED_PIPE)
      delete reinterpret_cast<uv_pipe_t*>(h);
    else
      delete reinterpret_cast<uv_tcp_t*>(h);
  });
}

bool is_unix_socket(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && ss.ss_family == AF_UNIX;
}

}  // namespace

Channel* Channel::open(uv_loop_t* loop, int fd, MessageCb on_message, ClosedCb on_closed) {
  auto* c = new Channel();
  c->loop_ = loop;
  c->on_message_ = std::move(on_message);
  c->on_closed_ = std::move(on_closed);
  uv_pipe_init(loop, &c->pipe_, /*ipc=*/1);
  c->pipe_.data = c;
  if (uv_pipe_open(&c->pipe_, fd) != 0 ||
      uv_read_start(reinterpret_cast<uv_stream_t*>(&c->pipe_), on_alloc, on_read) != 0) {
    c->closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe_), on_close);
    return nullptr;
  }
  return c;
}

Channel::~Channel() {
  for (int fd : fds_)
    ::close(fd);
}

bool Channel::send(const msg::Message& m) {
  if (closed_ || msg::carries_fd(m)) return false;
  auto* w = new WriteReq;
  if (!msg::encode(m, w->data)) {
    delete w;
    util::make_logger("spoad")->error("channel: {} message longer than {} bytes: not sent",
                                      msg::name(m), msg::kMaxMessage);
    return false;
  }
  w->req.data = this;
  uv_buf_t b = uv_buf_init(w->data.data(), w->data.size());
  if (uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&pipe_), &b, 1, [](uv_write_t* r, int st) {
        auto* w = reinterpret_cast<WriteReq*>(r);
        auto* c = static_cast<Channel*>(r->data);
        delete w;
        --c->writes_;
        if (st < 0 && st != UV_ECANCELED) c->fail();
      }) != 0) {
    delete w;
    fail();
    return false;
  }
  ++writes_;
  return true;
}

void Channel::send_handle(const msg::Message& m, uv_stream_t* handle,
                          std::function<void(bool)> done) {
  if (closed_ || !msg::carries_fd(m)) {
    done(false);
    return;
  }
  auto* w = new WriteReq;
  if (!msg::encode(m, w->data)) {
    delete w;
    done(false);
    return;
  }
  w->req.data = this;
  w->done = std::move(done);
  uv_buf_t b = uv_buf_init(w->data.data(), w->data.size());
  const int rc = uv_write2(&w->req, reinterpret_cast<uv_stream_t*>(&pipe_), &b, 1, handle,
                           [](uv_write_t* r, int st) {
                             auto* w = reinterpret_cast<WriteReq*>(r);
                             auto* c = static_cast<Channel*>(r->data);
                             auto done = std::move(w->done);
                             delete w;
                             --c->writes_;
                             done(st == 0);
                             if (st < 0 && st != UV_ECANCELED) c->fail();
                           });
  if (rc != 0) {
    auto d = std::move(w->done);
    delete w;
    d(false);
    fail();
    return;
  }
  ++writes_;
}

void Channel::send_fd(const msg::Message& m, int fd) {
  uv_stream_t* h = wrap(loop_, fd, is_unix_socket(fd));
  if (!h) {
    ::close(fd);
    return;
  }
  send_handle(m, h, [h](bool) { close_and_free(h); });
}

void Channel::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Channel*>(h->data);
  *buf = uv_buf_init(c->rbuf_, sizeof(c->rbuf_));
}

void Channel::take_pending_fds() {
  while (uv_pipe_pending_count(&pipe_) > 0) {
    const uv_handle_type t = uv_pipe_pending_type(&pipe_);
    uv_stream_t* h = wrap(loop_, -1, t == UV_NAMED_PIPE);
    if (uv_accept(reinterpret_cast<uv_stream_t*>(&pipe_), h) == 0) {
      uv_os_fd_t fd;
      if (uv_fileno(reinterpret_cast<uv_handle_t*>(h), &fd) == 0) fds_.push_back(::dup(fd));
    }
    close_and_free(h);
  }
}

void Channel::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  auto* c = static_cast<Channel*>(s->data);
  if (n < 0) {
    c->fail();
    return;
  }
  c->take_pending_fds();
  c->in_.append(c->rbuf_, static_cast<size_t>(n));
  c->dispatch();
}

void Channel::dispatch() {
  static util::RateLimiter limiter(10);
  size_t start = 0;
  while (!closed_) {
    msg::Decoded d = msg::decode(std::string_view(in_).substr(start));
    if (d.status == msg::Decoded::Status::kNeedMore) break;
    if (d.status == msg::Decoded::Status::kTooBig) {
      util::make_logger("spoad")->error("channel: {}: closing it", d.error);
      fail();
      return;
    }
    start += d.used;
    int fd = -1;
    if (d.with_fd && !fds_.empty()) {
      fd = fds_.front();
      fds_.pop_front();
    }
    if (d.status == msg::Decoded::Status::kBadFrame) {
      if (limiter.allow(uv_now(loop_)))
        util::make_logger("spoad")->error("channel: a {}-byte frame was skipped: {}", d.used,
                                          d.error);
      if (fd >= 0) ::close(fd);
      continue;
    }
    on_message_(std::move(d.message), fd);
  }
  if (closed_) return;
  in_.erase(0, start);
}

void Channel::fail() {
  if (closed_) return;
  ClosedCb cb = std::move(on_closed_);
  close();
  if (cb) cb();
}

void Channel::close() {
  if (closed_) return;
  closed_ = true;  // on_message_ may be running: it stays, but nothing calls it any more
  on_closed_ = nullptr;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&pipe_));
  // Let the messages already queued leave first (a worker's last "error" message).
  auto* req = new uv_shutdown_t;
  req->data = this;
  if (writes_ == 0 ||
      uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&pipe_), [](uv_shutdown_t* r, int) {
        auto* c = static_cast<Channel*>(r->data);
        delete r;
        uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe_), on_close);
      }) != 0) {
    delete req;
    uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), on_close);
  }
}

void Channel::on_close(uv_handle_t* h) {
  delete static_cast<Channel*>(h->data);
}

}  // namespace spoad::supervisor
