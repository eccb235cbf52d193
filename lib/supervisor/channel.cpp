#include "supervisor/channel.h"

#include <unistd.h>

namespace spoad::supervisor {

namespace {
struct WriteReq {
  uv_write_t req;
  std::string data;
};
}  // namespace

Channel* Channel::open(uv_loop_t* loop, int fd, MessageCb on_message, ClosedCb on_closed) {
  auto* c = new Channel();
  c->on_message_ = std::move(on_message);
  c->on_closed_ = std::move(on_closed);
  uv_pipe_init(loop, &c->pipe_, 0);
  c->pipe_.data = c;
  if (uv_pipe_open(&c->pipe_, fd) != 0 ||
      uv_read_start(reinterpret_cast<uv_stream_t*>(&c->pipe_), on_alloc, on_read) != 0) {
    c->closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe_), on_close);
    return nullptr;
  }
  return c;
}

void Channel::send(const nlohmann::json& msg) {
  if (closed_) return;
  auto* w = new WriteReq;
  w->data = msg.dump() + "\n";
  w->req.data = this;
  uv_buf_t b = uv_buf_init(w->data.data(), w->data.size());
  if (uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&pipe_), &b, 1, on_write) != 0) {
    delete w;
    fail();
    return;
  }
  ++writes_;
}

void Channel::on_write(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* c = static_cast<Channel*>(req->data);
  delete w;
  --c->writes_;
  if (status < 0 && status != UV_ECANCELED) c->fail();
}

void Channel::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Channel*>(h->data);
  *buf = uv_buf_init(c->rbuf_, sizeof(c->rbuf_));
}

void Channel::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  auto* c = static_cast<Channel*>(s->data);
  if (n < 0) {
    c->fail();
    return;
  }
  c->in_.append(c->rbuf_, static_cast<size_t>(n));
  size_t start = 0, nl;
  while (!c->closed_ && (nl = c->in_.find('\n', start)) != std::string::npos) {
    nlohmann::json msg = nlohmann::json::parse(c->in_.begin() + start, c->in_.begin() + nl,
                                               nullptr, /*allow_exceptions=*/false);
    start = nl + 1;
    if (msg.is_object() && msg.contains("type")) c->on_message_(msg);
  }
  if (c->closed_) return;
  c->in_.erase(0, start);
  if (c->in_.size() > kMaxLine) c->fail();
}

void Channel::fail() {
  if (closed_) return;
  ClosedCb cb = std::move(on_closed_);
  close();
  if (cb) cb();
}

void Channel::close() {
  if (closed_) return;
  closed_ = true;
  on_message_ = nullptr;
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

void Channel::on_close(uv_handle_t* h) { delete static_cast<Channel*>(h->data); }

}  // namespace spoad::supervisor
