// runtime::Connection, its input: reading into the buffer, decoding whole frames, HELLO,
// NOTIFY (reassembly, then the agent), DISCONNECT, protocol errors; a reply's completion.
#include <algorithm>
#include <cstring>
#include <exception>

#include "runtime/connection.h"
#include "spop/frames.h"
#include "util/escape.h"

namespace spoad::runtime {

void Connection::on_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  if (c->rbuf_.empty()) {
    c->rbuf_.resize(std::min<size_t>(c->max_frame_size_ + 4, kKeepReadBuffer));
  } else if (c->rlen_ == c->rbuf_.size()) {
    // Full without a complete frame: only possible if the frame length is not known yet.
    c->rbuf_.resize(c->rbuf_.size() + 4096);
  }
  buf->base = reinterpret_cast<char*>(c->rbuf_.data() + c->rlen_);
  buf->len = c->rbuf_.size() - c->rlen_;
}

void Connection::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* /*buf*/) {
  auto* c = static_cast<Connection*>(s->data);
  if (n > 0) {
    c->stats_.bytes_in += static_cast<uint64_t>(n);
    c->last_activity_ms_ = uv_now(c->loop());
    if (c->state_ == State::kClosing) return;  // lingering: discard what HAProxy still sends
    c->rlen_ += static_cast<size_t>(n);
    c->process();
    return;
  }
  if (n == 0) return;
  // UV_EOF, ECONNRESET, ...: the peer went away. Without a DISCONNECT this is a normal end.
  if (c->state_ != State::kClosing && c->log_.should_log(spdlog::level::debug))
    c->log_.debug("connection from {} closed by peer ({})", c->peer_, uv_err_name(n));
  c->close_now();
}

void Connection::process() {
  in_process_ = true;
  size_t off = 0;
  while (state_ == State::kHello || state_ == State::kReady) {
    if (state_ == State::kReady && inflight_ >= rt_.max_inflight) break;  // backpressure
    const size_t avail = rlen_ - off;
    if (avail < 4) break;
    const uint32_t len = spop::read_frame_length(rbuf_.data() + off);
    if (spop::Result r = spop::check_frame_length(len, max_frame_size_); !r.ok()) {
      fail(r);
      break;
    }
    if (avail < 4 + size_t{len}) break;
    spop::Frame f;
    if (spop::Result r = spop::decode_frame(spop::Bytes(rbuf_.data() + off + 4, len), &f);
        !r.ok()) {
      fail(r);
      break;
    }
    off += 4 + size_t{len};
    ++stats_.frames_in;
    handle_frame(f);
  }
  if (state_ == State::kClosing || state_ == State::kClosed) {
    rlen_ = 0;
  } else if (off > 0) {
    std::memmove(rbuf_.data(), rbuf_.data() + off, rlen_ - off);
    rlen_ -= off;
  }
  // Make room for the frame that is arriving (its length is already checked).
  if (rlen_ >= 4) {
    const size_t need = 4 + size_t{spop::read_frame_length(rbuf_.data())};
    if (need <= size_t{max_frame_size_} + 4 && rbuf_.size() < need) rbuf_.resize(need);
  } else if (rlen_ == 0 && rbuf_.size() > kKeepReadBuffer) {
    std::vector<uint8_t>().swap(rbuf_);
  }
  in_process_ = false;
  settle();
}

void Connection::handle_frame(const spop::Frame& f) {
  using spop::FrameType;
  const uint8_t t = f.raw_type;
  const bool known = t <= 3 || (t >= 101 && t <= 103);
  if (!known) return;  // SPOE.txt 3.2.3: unknown frames may be skipped
  if (state_ == State::kHello) {
    switch (f.type) {
      case FrameType::kHaproxyHello:
        handle_hello(f);
        return;
      case FrameType::kHaproxyDisconnect:
        handle_disconnect(f);
        return;
      case FrameType::kNotify:
      case FrameType::kUnset:
        fail(spop::Result::Fail(spop::Status::kInvalid, "NOTIFY before HELLO"));
        return;
      default:
        break;
    }
  } else {
    switch (f.type) {
      case FrameType::kNotify:
      case FrameType::kUnset:
        handle_notify(f);
        return;
      case FrameType::kHaproxyDisconnect:
        handle_disconnect(f);
        return;
      case FrameType::kHaproxyHello:
        fail(spop::Result::Fail(spop::Status::kInvalid, "HELLO received twice"));
        return;
      default:
        break;
    }
  }
  // AGENT-HELLO, AGENT-DISCONNECT or ACK: frames only an agent sends.
  fail(spop::Result::Fail(spop::Status::kInvalid, "agent frame type received from HAProxy"));
}

void Connection::handle_hello(const spop::Frame& f) {
  spop::HaproxyHello h;
  if (spop::Result r = spop::parse_haproxy_hello(f, &h); !r.ok()) {
    fail(r);
    return;
  }
  max_frame_size_ = static_cast<uint32_t>(std::min<uint64_t>(rt_.max_frame_size, h.max_frame_size));
  const spop::Capabilities theirs = spop::parse_capabilities(h.capabilities);
  spop::Capabilities ours;
  ours.pipelining = rt_.pipelining;
  ours.async = rt_.async;
  ours.fragmentation = rt_.fragmentation;
  caps_.pipelining = ours.pipelining && theirs.pipelining;
  caps_.async = ours.async && theirs.async;
  caps_.fragmentation = ours.fragmentation;
  spop::write_agent_hello(out_, max_frame_size_, spop::format_capabilities(ours));
  Stats& st = stats_;
  ++st.hellos;
  ++st.frames_out;
  if (h.healthcheck) {
    ++st.healthchecks;
    log_.debug("health check from {}", peer_);
    // SPOE.txt 3.2.5: after a health-check HELLO the agent may close.
    state_ = State::kClosing;
    deadline_ms_ = uv_now(loop()) + kLingerMs;
    arm_timer();
    return;
  }
  if (log_.should_log(spdlog::level::debug))
    log_.debug(
        "HELLO from {}: engine-id=\"{}\" max-frame-size={} (negotiated {}) capabilities=\"{}\"",
        peer_, util::printable(h.engine_id), h.max_frame_size, max_frame_size_,
        util::printable(h.capabilities));
  state_ = State::kReady;
  set_inflight(0);
  deadline_ms_ = last_activity_ms_ + rt_.idle_timeout_ms;
  arm_timer();
  // A connection that greets a draining server, or a new engine during a succession, is closed
  // right after its HELLO: HAProxy reads the AGENT-HELLO and the AGENT-DISCONNECT together,
  // before it sends any NOTIFY. In hand-off mode it is handed off once the AGENT-HELLO is
  // written, like any other.
  const bool welcome = host_.on_engine(std::string(h.engine_id));
  if (!welcome || (drain_mode_ != DrainMode::kNone && drain_mode_ != DrainMode::kHandOff))
    drain(DrainMode::kDisconnect);
}

void Connection::handle_notify(const spop::Frame& f) {
  if ((!f.fin() || f.type == spop::FrameType::kUnset) && !caps_.fragmentation) {
    fail(spop::Result::Fail(spop::Status::kFragNotSupported,
                            "fragmented NOTIFY, but fragmentation is disabled"));
    return;
  }
  spop::Reassembler::Step step;
  spop::Bytes payload;
  const bool first = !reasm_.active();
  if (spop::Result r = reasm_.feed(f, &step, &payload); !r.ok()) {
    if (r.status == spop::Status::kResourceError) {
      refuse_fragment(f);
      return;
    }
    fail(r);
    return;
  }
  if (step == spop::Reassembler::Step::kPending) {
    if (first) {  // the first fragment: the whole NOTIFY must follow within timeout.fragment
      fragment_deadline_ms_ = uv_now(loop()) + rt_.fragment_timeout_ms;
      arm_timer();
    }
    return;
  }
  if (step == spop::Reassembler::Step::kAborted) {
    ++stats_.aborted_total;
    return;
  }
  if (f.type == spop::FrameType::kUnset) ++stats_.fragmented_total;
  uint32_t nmessages = 0;
  if (spop::Result r = spop::validate_messages(payload, &nmessages); !r.ok()) {
    fail(r);
    return;
  }
  dispatch(payload, nmessages, f.stream_id, f.frame_id);
  reasm_.reset();  // the agent has seen the messages: free the reassembled payload now
}

void Connection::refuse_fragment(const spop::Frame& f) {
  // The worker's reassembly budget is used up: this connection goes, the others stay.
  Stats& st = stats_;
  ++st.reassembly_refused;
  ++st.protocol_errors[Stats::status_index(spop::Status::kResourceError)];
  const spop::ReassemblyBudget& b = host_.reassembly_budget();
  if (host_.limits_log_allow())
    log_.warn(
        "connection from {}: fragment of stream-id {} frame-id {} refused: the reassembly "
        "budget is used up ({} of max-reassembly-bytes {} held by other connections); sending "
        "AGENT-DISCONNECT status {} and closing this connection",
        peer_, f.stream_id, f.frame_id, b.used(), b.limit(),
        static_cast<uint32_t>(spop::Status::kResourceError));
  disconnect(spop::Status::kResourceError, "reassembly budget of the agent used up");
}

agent::Reply* Connection::new_reply() {
  if (free_replies_.empty()) return new agent::Reply();
  agent::Reply* r = free_replies_.back();
  free_replies_.pop_back();
  return r;
}

void Connection::dispatch(spop::Bytes payload, uint32_t nmessages, uint64_t sid, uint64_t fid) {
  Stats& st = stats_;
  ++st.notify_total;
  st.messages_total += nmessages;
  agent::Reply* r = new_reply();
  r->reset(this, sid, fid);
  r->set_start_us(now_us());
  r->set_slot(outstanding_.size());
  outstanding_.push_back(r);
  set_inflight(inflight_ + 1);
  agent::Agent& ag = agent_;
  for (const spop::Message& m : spop::messages(payload)) {
    try {
      ag.on_message(m, *r);
    } catch (const std::exception& e) {
      log_.error("agent failed on message \"{}\": {}", util::printable(m.name),
                 util::printable(e.what()));
    }
  }
  r->release();  // the runtime's hold; the ACK leaves now unless the agent deferred it
}

void Connection::on_reply_complete(agent::Reply& reply) {
  // Remove from the outstanding table (swap with the last entry).
  const size_t slot = reply.slot();
  outstanding_[slot] = outstanding_.back();
  outstanding_[slot]->set_slot(slot);
  outstanding_.pop_back();
  set_inflight(inflight_ - 1);
  if (state_ == State::kReady) queue_ack(reply);
  if (free_replies_.size() < kReplyPool)
    free_replies_.push_back(&reply);
  else
    delete &reply;
  if (!in_process_) process();  // resumes frames held back by backpressure, drains, flushes
}

void Connection::handle_disconnect(const spop::Frame& f) {
  ++stats_.disconnects_received;
  spop::Disconnect d;
  if (spop::Result r = spop::parse_disconnect(f, &d); !r.ok()) {
    fail(r);
    return;
  }
  if (d.status_code == 0)
    log_.debug("HAPROXY-DISCONNECT from {}: \"{}\"", peer_, util::printable(d.message));
  else if (host_.log_limiter_allow())
    log_.info("HAPROXY-DISCONNECT from {}: status {} (\"{}\")", peer_, d.status_code,
              util::printable(d.message));
  disconnect(spop::Status::kNormal, "");
}

void Connection::fail(spop::Result error, bool fragment_timeout) {
  Stats& st = stats_;
  ++st.protocol_errors[fragment_timeout ? Stats::kFragmentTimeoutKind
                                        : Stats::status_index(error.status)];
  if (host_.log_limiter_allow())
    log_.warn("connection from {}: {} ({}); sending AGENT-DISCONNECT status {}", peer_,
              spop::status_text(error.status), error.detail, static_cast<uint32_t>(error.status));
  disconnect(error.status, error.detail);
}

}  // namespace spoad::runtime
