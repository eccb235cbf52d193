#include "connection.h"

#include <algorithm>
#include <cstring>

#include "runner.h"
#include "spop/frames.h"

namespace spoad::bench {

namespace {

// How long a closing connection waits for the agent's AGENT-DISCONNECT or EOF, at most.
constexpr uint64_t kMaxLingerNs = 1'000'000'000;
// The read buffer starts at min(max-frame-size + 4, this), in bytes, and grows for bigger
// frames.
constexpr size_t kInitialReadBuffer = 64 * 1024;

std::string frame_name(uint8_t t) {
  return "frame type " + std::to_string(t);
}

bool known_frame_type(uint8_t t) {
  return t <= 3 || (t >= 101 && t <= 103);
}

}  // namespace

Connection::Connection(Runner& runner, int index)
    : runner_(runner),
      index_(index),
      max_frame_size_(runner.opts().max_frame_size),
      depth_(runner.opts().depth),
      inflight_(static_cast<size_t>(runner.opts().depth)),
      encoder_(runner.opts(), runner.opts().seed + static_cast<uint64_t>(index)) {}

void Connection::start(uint64_t now) {
  deadline_ns_ = now + runner_.plan().timeout_ns;
  connect_req_.data = this;
  const Address& a = runner_.opts().address;
  if (a.kind == Address::Kind::kUnix) {
    is_unix_ = true;
    uv_pipe_init(runner_.loop(), &handle_.pipe, 0);
    handle_.pipe.data = this;
    handle_open_ = true;
    uv_pipe_connect(&connect_req_, &handle_.pipe, a.path.c_str(), on_connect);
    return;
  }
  uv_tcp_init(runner_.loop(), &handle_.tcp);
  handle_.tcp.data = this;
  handle_open_ = true;
  const int rc =
      uv_tcp_connect(&connect_req_, &handle_.tcp,
                     reinterpret_cast<const sockaddr*>(&runner_.plan().addr), on_connect);
  if (rc < 0) {
    ++runner_.mutable_stats().errors.connect_failed;
    runner_.report(index_, "connect failed", uv_strerror(rc));
    close();
  }
}

void Connection::on_connect(uv_connect_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  if (c->state_ != State::kConnecting) return;  // closed meanwhile (UV_ECANCELED)
  if (status < 0) {
    ++c->runner_.mutable_stats().errors.connect_failed;
    c->runner_.report(c->index_, "connect failed", uv_strerror(status));
    c->close();
    return;
  }
  c->connected(uv_hrtime());
}

void Connection::connected(uint64_t now) {
  const Options& o = runner_.opts();
  if (!is_unix_) uv_tcp_nodelay(&handle_.tcp, 1);
  state_ = State::kHello;
  deadline_ns_ = now + runner_.plan().timeout_ns;
  spop::Capabilities caps;
  caps.pipelining = o.pipelining;
  caps.async = o.async;
  spop::write_haproxy_hello(out_, o.max_frame_size, spop::format_capabilities(caps),
                            runner_.engine_id(), /*healthcheck=*/false);
  const int rc = uv_read_start(stream(), on_alloc, on_read);
  if (rc < 0) {
    ++runner_.mutable_stats().errors.unexpected_close;
    runner_.report(index_, "read failed", uv_strerror(rc));
    close();
    return;
  }
  flush();
}

void Connection::on_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  if (c->rbuf_.empty()) {
    c->rbuf_.resize(
        std::min<size_t>(size_t{c->runner_.opts().max_frame_size} + 4, kInitialReadBuffer));
  } else if (c->rlen_ == c->rbuf_.size()) {
    c->rbuf_.resize(c->rbuf_.size() * 2);
  }
  buf->base = reinterpret_cast<char*>(c->rbuf_.data() + c->rlen_);
  buf->len = c->rbuf_.size() - c->rlen_;
}

void Connection::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* /*buf*/) {
  auto* c = static_cast<Connection*>(s->data);
  if (c->state_ == State::kClosed) return;
  if (n > 0) {
    c->runner_.mutable_stats().bytes_in += static_cast<uint64_t>(n);
    c->rlen_ += static_cast<size_t>(n);
    c->process(uv_hrtime());
    return;
  }
  if (n == 0) return;                  // EAGAIN
  if (c->state_ == State::kClosing) {  // we said DISCONNECT: the agent closing is expected
    c->close();
    return;
  }
  ++c->runner_.mutable_stats().errors.unexpected_close;
  c->runner_.report(c->index_, "unexpected close",
                    n == UV_EOF ? std::string("the agent closed the connection")
                                : std::string(uv_strerror(static_cast<int>(n))));
  c->close();
}

void Connection::process(uint64_t now) {
  const uint32_t announced = runner_.opts().max_frame_size;
  size_t off = 0;
  while (state_ == State::kHello || state_ == State::kReady ||
         (state_ == State::kClosing && !discard_input_)) {
    const size_t avail = rlen_ - off;
    if (avail < 4) break;
    const uint32_t len = spop::read_frame_length(rbuf_.data() + off);
    if (spop::Result r = spop::check_frame_length(len, announced); !r.ok()) {
      fail(runner_.mutable_stats().errors.protocol_error, "protocol error", r.status, r.detail);
      break;
    }
    if (avail < 4 + size_t{len}) break;
    spop::Frame f;
    if (spop::Result r = spop::decode_frame(spop::Bytes(rbuf_.data() + off + 4, len), &f);
        !r.ok()) {
      fail(runner_.mutable_stats().errors.protocol_error, "protocol error", r.status, r.detail);
      break;
    }
    off += 4 + size_t{len};
    handle_frame(f, now);
  }
  if (state_ == State::kClosed) return;
  if (discard_input_) {
    rlen_ = 0;
  } else if (off > 0) {
    std::memmove(rbuf_.data(), rbuf_.data() + off, rlen_ - off);
    rlen_ -= off;
  }
  // Make room for the frame that is arriving (its length was checked above).
  if (rlen_ >= 4) {
    const size_t need = 4 + size_t{spop::read_frame_length(rbuf_.data())};
    if (rbuf_.size() < need) rbuf_.resize(need);
  }
  flush();
}

void Connection::handle_frame(const spop::Frame& f, uint64_t now) {
  using spop::FrameType;
  Stats& st = runner_.mutable_stats();
  const uint8_t t = f.raw_type;
  switch (state_) {
    case State::kHello:
      if (f.type == FrameType::kAgentHello) {
        handle_agent_hello(f, now);
      } else if (f.type == FrameType::kAgentDisconnect) {
        handle_agent_disconnect(f);
      } else {
        fail(st.errors.hello_rejected, "HELLO rejected", spop::Status::kInvalid,
             "expected AGENT-HELLO, got " + frame_name(t));
      }
      return;
    case State::kReady:
      if (f.type == FrameType::kAck) {
        handle_ack(f, now);
      } else if (f.type == FrameType::kAgentDisconnect) {
        handle_agent_disconnect(f);
      } else if (known_frame_type(t)) {
        fail(st.errors.protocol_error, "protocol error", spop::Status::kInvalid,
             "unexpected " + frame_name(t));
      } else {
        ++st.skipped_frames;  // SPOE.txt 3.2.3: unknown frames may be skipped
      }
      return;
    case State::kClosing:
      // We said DISCONNECT: ACKs may still come; the agent's DISCONNECT ends the connection.
      if (f.type == FrameType::kAgentDisconnect) close();
      return;
    case State::kConnecting:
    case State::kClosed:
      return;
  }
}

void Connection::handle_agent_hello(const spop::Frame& f, uint64_t now) {
  const Options& o = runner_.opts();
  Stats& st = runner_.mutable_stats();
  spop::AgentHello h;
  if (spop::Result r = spop::parse_agent_hello(f, o.max_frame_size, &h); !r.ok()) {
    fail(st.errors.hello_rejected, "HELLO rejected", r.status, r.detail);
    return;
  }
  max_frame_size_ = static_cast<uint32_t>(h.max_frame_size);  // <= ours, checked above
  const spop::Capabilities theirs = spop::parse_capabilities(h.capabilities);
  const bool pipelining = o.pipelining && theirs.pipelining;
  depth_ = pipelining ? o.depth : 1;
  ++st.connections_ready;
  if (!pipelining) {
    ++st.no_pipelining;
    if (o.depth > 1)
      runner_.report(index_, "warning",
                     "pipelining not negotiated (agent capabilities \"" +
                         std::string(h.capabilities) + "\"): one NOTIFY in flight");
  }
  state_ = State::kReady;
  fill(now);
}

void Connection::handle_ack(const spop::Frame& f, uint64_t now) {
  Stats& st = runner_.mutable_stats();
  if (!f.fin()) {
    // HAProxy cannot receive fragmented ACKs (SPOE.txt 3.2.2, flt_spoe.c).
    fail(st.errors.protocol_error, "protocol error", spop::Status::kFragNotSupported,
         "fragmented ACK (FIN not set)");
    return;
  }
  InflightEntry* e = f.frame_id == 1 ? inflight_.find(f.stream_id) : nullptr;
  if (e == nullptr) {
    const std::string ids =
        "stream-id " + std::to_string(f.stream_id) + " frame-id " + std::to_string(f.frame_id);
    if (f.frame_id == 1 && abandoned_.erase(f.stream_id) > 0) {
      ++st.late_acks;  // its timeout was already counted
    } else if (f.frame_id == 1 && (f.stream_id & 1) == 1 && f.stream_id < next_stream_id_) {
      ++st.errors.duplicate_ack;
      runner_.report(index_, "duplicate ACK", ids + " was already acknowledged");
    } else {
      ++st.errors.unknown_ack;
      runner_.report(index_, "unknown ACK", ids + " was never sent");
    }
    return;
  }
  uint32_t nactions = 0;
  if (spop::Result r = spop::validate_actions(f.payload, &nactions); !r.ok()) {
    ++st.errors.protocol_error;
    runner_.report(index_, "invalid ACK",
                   std::string(r.detail) + " (stream-id " + std::to_string(f.stream_id) + ")");
  }
  if (e->measured) {
    ++st.acks;
    st.latency_ns.record(now > e->sent_ns ? now - e->sent_ns : 0);
  } else {
    ++st.warmup_acks;
  }
  inflight_.erase(e);
  fill(now);
}

void Connection::handle_agent_disconnect(const spop::Frame& f) {
  Stats& st = runner_.mutable_stats();
  ++st.errors.agent_disconnect;
  spop::Disconnect d;
  if (spop::Result r = spop::parse_disconnect(f, &d); !r.ok()) {
    runner_.report(index_, "AGENT-DISCONNECT", std::string("malformed: ") + r.detail);
  } else {
    ++st.disconnect_status[d.status_code];
    runner_.report(index_, "AGENT-DISCONNECT",
                   "status " + std::to_string(d.status_code) + " (" + std::string(d.message) + ")");
  }
  close();  // the agent closes after its DISCONNECT (SPOE.txt 3.2.7)
}

void Connection::fill(uint64_t now) {
  Stats& st = runner_.mutable_stats();
  while (state_ == State::kReady && inflight_.size() < static_cast<size_t>(depth_)) {
    bool measured = false;
    if (!runner_.claim(now, &measured)) {
      if (inflight_.size() == 0) begin_close(now);
      return;
    }
    const uint64_t sid = next_stream_id_;
    if (!encoder_.encode(out_, sid, 1, max_frame_size_)) {
      ++st.errors.frame_too_big;
      runner_.report(
          index_, "NOTIFY too big",
          "the message does not fit the agent's max-frame-size " + std::to_string(max_frame_size_));
      begin_close(now);
      return;
    }
    next_stream_id_ += 2;
    const uint64_t sent = uv_hrtime();
    if (inflight_.size() == 0) oldest_sent_ns_ = sent;
    inflight_.insert({sid, sent, measured});
    if (measured)
      ++st.sent;
    else
      ++st.warmup_sent;
  }
}

void Connection::check_timers(uint64_t now) {
  const uint64_t timeout = runner_.plan().timeout_ns;
  Stats& st = runner_.mutable_stats();
  switch (state_) {
    case State::kConnecting:
      if (now >= deadline_ns_) {
        ++st.errors.connect_failed;
        runner_.report(index_, "connect failed", "not connected within --timeout");
        close();
      }
      return;
    case State::kHello:
      if (now >= deadline_ns_)
        fail(st.errors.hello_timeout, "HELLO timeout", spop::Status::kTimeout,
             "no AGENT-HELLO within --timeout");
      return;
    case State::kReady: {
      // Scan only when the oldest NOTIFY may have expired: about once per --timeout.
      if (inflight_.size() == 0 || now < oldest_sent_ns_ + timeout) return;
      expired_.clear();
      uint64_t oldest = now;
      inflight_.for_each([&](const InflightEntry& e) {
        if (now > e.sent_ns && now - e.sent_ns >= timeout)
          expired_.push_back(e.stream_id);
        else
          oldest = std::min(oldest, e.sent_ns);
      });
      oldest_sent_ns_ = oldest;
      if (expired_.empty()) return;
      for (uint64_t sid : expired_) {
        inflight_.erase(inflight_.find(sid));
        abandoned_.insert(sid);
      }
      st.errors.timeout += expired_.size();
      runner_.report(index_, "timeout",
                     std::to_string(expired_.size()) + " NOTIFY(s) without ACK within --timeout");
      fill(now);  // replaces them, as HAProxy goes on with other streams
      flush();
      return;
    }
    case State::kClosing:
      if (now >= deadline_ns_) close();
      return;
    case State::kClosed:
      return;
  }
}

void Connection::on_run_end(uint64_t now) {
  if (state_ == State::kConnecting || state_ == State::kHello ||
      (state_ == State::kReady && inflight_.size() == 0))
    begin_close(now);
}

void Connection::begin_close(uint64_t now) {
  switch (state_) {
    case State::kConnecting:
      close();
      return;
    case State::kHello:
    case State::kReady:
      spop::write_haproxy_disconnect(out_, spop::Status::kNormal, "");
      state_ = State::kClosing;
      deadline_ns_ = now + std::min(runner_.plan().timeout_ns, kMaxLingerNs);
      inflight_.clear();
      leave_active();
      flush();
      return;
    case State::kClosing:
    case State::kClosed:
      return;
  }
}

void Connection::fail(uint64_t& counter, const char* kind, spop::Status status,
                      const std::string& detail) {
  discard_input_ = true;  // what follows an error cannot be trusted
  if (state_ == State::kClosing || state_ == State::kClosed) return;
  ++counter;
  runner_.report(index_, kind, detail);
  // As HAProxy does on an error: DISCONNECT with the status, then wait for the agent.
  spop::write_haproxy_disconnect(out_, status, "");
  state_ = State::kClosing;
  deadline_ns_ = uv_hrtime() + std::min(runner_.plan().timeout_ns, kMaxLingerNs);
  inflight_.clear();
  leave_active();
  flush();
}

void Connection::close() {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  inflight_.clear();
  leave_active();
  if (handle_open_) {
    handle_open_ = false;
    uv_close(handle(), on_close);
  } else {
    runner_.on_closed();
  }
}

void Connection::on_close(uv_handle_t* h) {
  auto* c = static_cast<Connection*>(h->data);
  c->runner_.on_closed();
}

void Connection::leave_active() {
  if (!active_) return;
  active_ = false;
  runner_.on_inactive();
}

void Connection::flush() {
  if (write_pending_ || out_.empty()) return;
  if (state_ == State::kConnecting || state_ == State::kClosed) return;
  writing_.swap(out_);
  out_.clear();
  uv_buf_t b =
      uv_buf_init(reinterpret_cast<char*>(writing_.data()), static_cast<unsigned>(writing_.size()));
  write_req_.data = this;
  const int rc = uv_write(&write_req_, stream(), &b, 1, on_write);
  if (rc < 0) {
    writing_.clear();
    if (state_ != State::kClosing) {
      ++runner_.mutable_stats().errors.unexpected_close;
      runner_.report(index_, "write failed", uv_strerror(rc));
    }
    close();
    return;
  }
  write_pending_ = true;
}

void Connection::on_write(uv_write_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  c->write_pending_ = false;
  if (c->state_ == State::kClosed) return;  // UV_ECANCELED after close()
  if (status < 0) {
    if (c->state_ != State::kClosing) {
      ++c->runner_.mutable_stats().errors.unexpected_close;
      c->runner_.report(c->index_, "write failed", uv_strerror(status));
    }
    c->close();
    return;
  }
  c->runner_.mutable_stats().bytes_out += c->writing_.size();
  c->writing_.clear();
  c->flush();
}

}  // namespace spoad::bench
