// runtime::Connection, its output: ACKs and AGENT-DISCONNECT encoded into the output buffer,
// one write per batch, backpressure (when to read), the FIN after the last frame.
#include "runtime/connection.h"
#include "spop/frames.h"

namespace spoad::runtime {

void Connection::queue_ack(agent::Reply& reply) {
  Stats& st = stats_;
  const auto& a = reply.actions();
  if (!spop::write_ack(out_, reply.stream_id(), reply.frame_id(), spop::Bytes(a.data(), a.size()),
                       max_frame_size_)) {
    ++st.ack_too_big;
    if (host_.log_limiter_allow())
      log_.warn(
          "reply to stream-id {} frame-id {} is {} bytes of actions, more than max-frame-size {}: "
          "sending an empty ACK",
          reply.stream_id(), reply.frame_id(), a.size(), max_frame_size_);
    spop::write_ack(out_, reply.stream_id(), reply.frame_id(), {}, max_frame_size_);
  }
  ++st.ack_total;
  ++st.frames_out;
  st.processed(now_us() - reply.start_us());
}

void Connection::disconnect(spop::Status status, const char* message) {
  if (state_ == State::kClosing || state_ == State::kClosed) return;
  std::string msg = message && *message ? message : std::string(spop::status_text(status));
  spop::write_agent_disconnect(out_, status, msg);
  reasm_.reset();  // nothing more will be reassembled: free the buffer now
  Stats& st = stats_;
  ++st.disconnects_sent[Stats::status_index(status)];
  ++st.frames_out;
  // No ACK can follow a DISCONNECT: cancel the replies still being built.
  for (agent::Reply* r : outstanding_)
    r->detach();
  outstanding_.clear();
  state_ = State::kClosing;
  set_inflight(0);
  deadline_ms_ = uv_now(loop()) + kLingerMs;
  arm_timer();
  if (!in_process_) {
    flush();
    update_reading();
    shutdown_if_all_written();
  }
}

void Connection::flush() {
  if (write_pending_ || out_.empty() || state_ == State::kClosed) return;
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(out_.data()), out_.size());
  int n = uv_try_write(stream(), &b, 1);
  if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
  if (n < 0) {
    log_.debug("write to {} failed: {}", peer_, uv_err_name(n));
    close_now();
    return;
  }
  stats_.bytes_out += static_cast<uint64_t>(n);
  if (static_cast<size_t>(n) == out_.size()) {
    out_.clear();
    return;
  }
  // The kernel took part of it: hand the rest to libuv and collect new frames meanwhile.
  writing_.assign(out_.begin() + n, out_.end());
  out_.clear();
  uv_buf_t rest = uv_buf_init(reinterpret_cast<char*>(writing_.data()), writing_.size());
  wreq_.data = this;
  const int rc = uv_write(&wreq_, stream(), &rest, 1, on_write);
  if (rc != 0) {
    close_now();
    return;
  }
  write_pending_ = true;
}

void Connection::on_write(uv_write_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  c->write_pending_ = false;
  if (status < 0) {
    if (c->state_ != State::kClosed) c->close_now();
    return;
  }
  c->stats_.bytes_out += c->writing_.size();
  c->writing_.clear();
  c->settle();
}

void Connection::update_reading() {
  if (state_ == State::kClosed) return;
  // Handing off: read only the HELLO or the end of a fragmented NOTIFY; the rest stays for the
  // new owner.
  bool want = !(drain_mode_ == DrainMode::kHandOff && state_ == State::kReady && !reasm_.active());
  if (state_ == State::kReady) {
    want =
        want && inflight_ < rt_.max_inflight && out_.size() + writing_.size() < kMaxPendingOutput;
  }
  if (want && !reading_) {
    if (uv_read_start(stream(), on_alloc, on_read) == 0) reading_ = true;
  } else if (!want && reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
}

void Connection::shutdown_if_all_written() {
  if (state_ != State::kClosing || write_pending_ || !out_.empty() || shutdown_sent_) return;
  // Everything is written: send FIN and wait (bounded by the linger deadline) for HAProxy to
  // close, so that no unread data turns our close into a reset that could eat the DISCONNECT.
  shutdown_sent_ = true;
  shutdown_req_.data = this;
  if (uv_shutdown(&shutdown_req_, stream(), on_shutdown) != 0) close_now();
}

void Connection::on_shutdown(uv_shutdown_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  if (status < 0 && c->state_ != State::kClosed) c->close_now();
}

}  // namespace spoad::runtime
