#include "runtime/connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include "runtime/server.h"
#include "spop/frames.h"
#include "util/escape.h"
#include "util/text.h"

namespace spoad::runtime {

namespace {

// Pending output (bytes) beyond which the connection stops reading until HAProxy catches up.
constexpr size_t kMaxPendingOutput = 256 * 1024;
// How long a closing connection waits for HAProxy to read the DISCONNECT and close.
constexpr uint64_t kLingerMs = 1000;
// Replies kept for reuse per connection.
constexpr size_t kReplyPool = 64;
// A read buffer above this size is released once empty.
constexpr size_t kKeepReadBuffer = 64 * 1024;

}  // namespace

Connection::Connection(Server& server)
    : server_(server),
      max_frame_size_(server.config().runtime.max_frame_size),
      reasm_(server.config().runtime.max_fragmented_size, &server.reassembly_budget()) {
  if (server_.config().listen.kind == config::ListenAddress::Kind::kUnix)
    uv_pipe_init(server_.loop(), &handle_.pipe, 0);
  else
    uv_tcp_init(server_.loop(), &handle_.tcp);
  handle_.tcp.data = this;
  uv_timer_init(server_.loop(), &timer_);
  timer_.data = this;
  open_handles_ = 2;
}

Connection::~Connection() {
  for (agent::Reply* r : free_replies_)
    delete r;
}

uv_loop_t* Connection::loop() const {
  return server_.loop();
}

int Connection::adopt(int fd) {
  const int rc = server_.config().listen.kind == config::ListenAddress::Kind::kUnix
                     ? uv_pipe_open(&handle_.pipe, fd)
                     : uv_tcp_open(&handle_.tcp, fd);
  if (rc != 0) return rc;
  started();
  return 0;
}

int Connection::adopt_established(int fd, const nlohmann::json& st) {
  // The bytes the old worker had read but not processed. Only a broken state lacks its even
  // number of hex digits: the connection is then refused, as its stream would be out of step.
  std::string buffered;
  if (!util::hex_decode(st.value("buffered", std::string()), &buffered)) return UV_EINVAL;
  const int rc = server_.config().listen.kind == config::ListenAddress::Kind::kUnix
                     ? uv_pipe_open(&handle_.pipe, fd)
                     : uv_tcp_open(&handle_.tcp, fd);
  if (rc != 0) return rc;
  if (server_.config().listen.kind == config::ListenAddress::Kind::kTcp)
    uv_tcp_nodelay(&handle_.tcp, 1);
  peer_ = util::printable(st.value("peer", std::string("?")), 64);  // logged as is from now on
  max_frame_size_ = std::min<uint32_t>(st.value("max_frame_size", uint32_t{spop::kMinFrameSize}),
                                       server_.config().runtime.max_frame_size);
  caps_.pipelining = st.value("pipelining", false);
  caps_.async = st.value("async", false);
  caps_.fragmentation = st.value("fragmentation", false);
  rbuf_.assign(buffered.begin(), buffered.end());
  rlen_ = rbuf_.size();
  if (rbuf_.size() < size_t{max_frame_size_} + 4) rbuf_.resize(size_t{max_frame_size_} + 4);
  state_ = State::kReady;
  set_inflight(0);
  last_activity_ms_ = uv_now(loop());
  deadline_ms_ = last_activity_ms_ + server_.config().runtime.idle_timeout_ms;
  arm_timer();
  update_reading();
  if (rlen_ > 0) process();
  return 0;
}

void Connection::started() {
  if (server_.config().listen.kind == config::ListenAddress::Kind::kTcp) {
    uv_tcp_nodelay(&handle_.tcp, 1);
    sockaddr_storage ss{};
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&handle_.tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
      char host[INET6_ADDRSTRLEN] = "?";
      uint16_t port = 0;
      if (uv_ip_name(reinterpret_cast<sockaddr*>(&ss), host, sizeof(host)) == 0)
        port = ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
      peer_ = std::string(host) + ":" + std::to_string(port);
    }
  } else {
    peer_ = "unix";
  }
  last_activity_ms_ = uv_now(loop());
  deadline_ms_ = last_activity_ms_ + server_.config().runtime.hello_timeout_ms;
  arm_timer();
  update_reading();
}

void Connection::arm_timer() {
  if (state_ == State::kClosed) return;
  const uint64_t now = uv_now(loop());
  uint64_t due = deadline_ms_;
  if (state_ == State::kReady && reasm_.active()) due = std::min(due, fragment_deadline_ms_);
  const uint64_t wait = due > now ? due - now : 0;
  uv_timer_start(&timer_, on_timer, wait, 0);
}

void Connection::on_timer(uv_timer_t* t) {
  auto* c = static_cast<Connection*>(t->data);
  const uint64_t now = uv_now(c->loop());
  const auto& rt = c->server_.config().runtime;
  switch (c->state_) {
    case State::kHello:
      if (now >= c->deadline_ms_) {
        c->fail(spop::Result::Fail(spop::Status::kTimeout, "no HAPROXY-HELLO in time"));
        return;
      }
      break;
    case State::kReady:
      // Idle means: nothing in flight and nothing received for the idle timeout. The deadline
      // is recomputed here rather than on every read, so reads never touch the timer.
      c->deadline_ms_ = c->last_activity_ms_ + rt.idle_timeout_ms;
      if (c->inflight_ > 0) c->deadline_ms_ = now + rt.idle_timeout_ms;
      if (now >= c->deadline_ms_) {
        c->fail(spop::Result::Fail(spop::Status::kTimeout, "idle timeout"));
        return;
      }
      if (c->reasm_.active() && now >= c->fragment_deadline_ms_) {
        if (!c->reading_) {
          // We stopped reading (backpressure): HAProxy cannot send the rest. Wait again.
          c->fragment_deadline_ms_ = now + rt.fragment_timeout_ms;
        } else {
          ++c->server_.mutable_stats().fragment_timeouts;
          c->fail(spop::Result::Fail(spop::Status::kTimeout,
                                     "fragmented NOTIFY not completed within timeout.fragment"),
                  /*fragment_timeout=*/true);
          return;
        }
      }
      break;
    case State::kClosing:
      if (now >= c->deadline_ms_) {
        c->close_now();
        return;
      }
      break;
    case State::kClosed:
      return;
  }
  c->arm_timer();
}

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
    c->server_.mutable_stats().bytes_in += static_cast<uint64_t>(n);
    c->last_activity_ms_ = uv_now(c->loop());
    if (c->state_ == State::kClosing) return;  // lingering: discard what HAProxy still sends
    c->rlen_ += static_cast<size_t>(n);
    c->process();
    return;
  }
  if (n == 0) return;
  // UV_EOF, ECONNRESET, ...: the peer went away. Without a DISCONNECT this is a normal end.
  if (c->state_ != State::kClosing && c->server_.log().should_log(spdlog::level::debug))
    c->server_.log().debug("connection from {} closed by peer ({})", c->peer_, uv_err_name(n));
  c->close_now();
}

void Connection::process() {
  const auto& rt = server_.config().runtime;
  in_process_ = true;
  size_t off = 0;
  while (state_ == State::kHello || state_ == State::kReady) {
    if (state_ == State::kReady && inflight_ >= rt.max_inflight) break;  // backpressure
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
    ++server_.mutable_stats().frames_in;
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

// After any progress: DISCONNECT or hand off a draining connection once it can go, write what
// is queued, adjust reading.
void Connection::settle() {
  if (drain_now()) disconnect(spop::Status::kNormal, "");
  flush();
  update_reading();
  shutdown_if_all_written();
  hand_off_if_safe();
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
  const auto& rt = server_.config().runtime;
  spop::HaproxyHello h;
  if (spop::Result r = spop::parse_haproxy_hello(f, &h); !r.ok()) {
    fail(r);
    return;
  }
  max_frame_size_ = static_cast<uint32_t>(std::min<uint64_t>(rt.max_frame_size, h.max_frame_size));
  const spop::Capabilities theirs = spop::parse_capabilities(h.capabilities);
  spop::Capabilities ours;
  ours.pipelining = rt.pipelining;
  ours.async = rt.async;
  ours.fragmentation = rt.fragmentation;
  caps_.pipelining = ours.pipelining && theirs.pipelining;
  caps_.async = ours.async && theirs.async;
  caps_.fragmentation = ours.fragmentation;
  spop::write_agent_hello(out_, max_frame_size_, spop::format_capabilities(ours));
  Stats& st = server_.mutable_stats();
  ++st.hellos;
  ++st.frames_out;
  if (h.healthcheck) {
    ++st.healthchecks;
    server_.log().debug("health check from {}", peer_);
    // SPOE.txt 3.2.5: after a health-check HELLO the agent may close.
    state_ = State::kClosing;
    deadline_ms_ = uv_now(loop()) + kLingerMs;
    arm_timer();
    return;
  }
  if (server_.log().should_log(spdlog::level::debug))
    server_.log().debug(
        "HELLO from {}: engine-id=\"{}\" max-frame-size={} (negotiated {}) capabilities=\"{}\"",
        peer_, util::printable(h.engine_id), h.max_frame_size, max_frame_size_,
        util::printable(h.capabilities));
  state_ = State::kReady;
  set_inflight(0);
  deadline_ms_ = last_activity_ms_ + rt.idle_timeout_ms;
  arm_timer();
  // A connection that greets a draining server, or a new engine during a succession, is closed
  // right after its HELLO: HAProxy reads the AGENT-HELLO and the AGENT-DISCONNECT together,
  // before it sends any NOTIFY. In hand-off mode it is handed off once the AGENT-HELLO is
  // written, like any other.
  const bool welcome = server_.on_engine(std::string(h.engine_id));
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
      fragment_deadline_ms_ = uv_now(loop()) + server_.config().runtime.fragment_timeout_ms;
      arm_timer();
    }
    return;
  }
  if (step == spop::Reassembler::Step::kAborted) {
    ++server_.mutable_stats().aborted_total;
    return;
  }
  if (f.type == spop::FrameType::kUnset) ++server_.mutable_stats().fragmented_total;
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
  Stats& st = server_.mutable_stats();
  ++st.reassembly_refused;
  ++st.protocol_errors[Stats::status_index(spop::Status::kResourceError)];
  const spop::ReassemblyBudget& b = server_.reassembly_budget();
  if (server_.limits_log_allow())
    server_.log().warn(
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
  Stats& st = server_.mutable_stats();
  ++st.notify_total;
  st.messages_total += nmessages;
  agent::Reply* r = new_reply();
  r->reset(this, sid, fid);
  r->set_start_us(Server::now_us());
  r->set_slot(outstanding_.size());
  outstanding_.push_back(r);
  set_inflight(inflight_ + 1);
  agent::Agent& ag = server_.agent();
  for (const spop::Message& m : spop::messages(payload)) {
    try {
      ag.on_message(m, *r);
    } catch (const std::exception& e) {
      server_.log().error("agent failed on message \"{}\": {}", util::printable(m.name),
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

void Connection::hand_off_if_safe() {
  // The safe point: nothing in flight, nothing half reassembled, every ACK written. Whatever
  // HAProxy sends from now on waits in the socket for the new owner.
  if (drain_mode_ != DrainMode::kHandOff || state_ != State::kReady || !idle() || write_pending_ ||
      !out_.empty() || handing_off_)
    return;
  if (reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
  handing_off_ = true;
  nlohmann::json st = {{"max_frame_size", max_frame_size_},
                       {"pipelining", caps_.pipelining},
                       {"async", caps_.async},
                       {"fragmentation", caps_.fragmentation},
                       {"peer", peer_},
                       {"buffered", util::hex_encode(rbuf_.data(), rlen_)}};
  server_.hand_off(st, stream(), [this](bool ok) {
    if (!ok) {  // the channel failed: fall back to a DISCONNECT
      server_.log().warn("could not hand the connection from {} over: closing it with a DISCONNECT",
                         peer_);
      handing_off_ = false;
      drain_mode_ = DrainMode::kDisconnect;
      update_reading();
      settle();
      return;
    }
    ++server_.mutable_stats().handed_off;
    close_now();  // our copy only: the socket lives on in the new worker
  });
}

void Connection::queue_ack(agent::Reply& reply) {
  Stats& st = server_.mutable_stats();
  const auto& a = reply.actions();
  if (!spop::write_ack(out_, reply.stream_id(), reply.frame_id(), spop::Bytes(a.data(), a.size()),
                       max_frame_size_)) {
    ++st.ack_too_big;
    if (server_.log_limiter_allow())
      server_.log().warn(
          "reply to stream-id {} frame-id {} is {} bytes of actions, more than max-frame-size {}: "
          "sending an empty ACK",
          reply.stream_id(), reply.frame_id(), a.size(), max_frame_size_);
    spop::write_ack(out_, reply.stream_id(), reply.frame_id(), {}, max_frame_size_);
  }
  ++st.ack_total;
  ++st.frames_out;
  st.processed(Server::now_us() - reply.start_us());
}

void Connection::handle_disconnect(const spop::Frame& f) {
  ++server_.mutable_stats().disconnects_received;
  spop::Disconnect d;
  if (spop::Result r = spop::parse_disconnect(f, &d); !r.ok()) {
    fail(r);
    return;
  }
  if (d.status_code == 0)
    server_.log().debug("HAPROXY-DISCONNECT from {}: \"{}\"", peer_, util::printable(d.message));
  else if (server_.log_limiter_allow())
    server_.log().info("HAPROXY-DISCONNECT from {}: status {} (\"{}\")", peer_, d.status_code,
                       util::printable(d.message));
  disconnect(spop::Status::kNormal, "");
}

void Connection::fail(spop::Result error, bool fragment_timeout) {
  Stats& st = server_.mutable_stats();
  ++st.protocol_errors[fragment_timeout ? Stats::kFragmentTimeoutKind
                                        : Stats::status_index(error.status)];
  if (server_.log_limiter_allow())
    server_.log().warn("connection from {}: {} ({}); sending AGENT-DISCONNECT status {}", peer_,
                       spop::status_text(error.status), error.detail,
                       static_cast<uint32_t>(error.status));
  disconnect(error.status, error.detail);
}

void Connection::disconnect(spop::Status status, const char* message) {
  if (state_ == State::kClosing || state_ == State::kClosed) return;
  std::string msg = message && *message ? message : std::string(spop::status_text(status));
  spop::write_agent_disconnect(out_, status, msg);
  reasm_.reset();  // nothing more will be reassembled: free the buffer now
  Stats& st = server_.mutable_stats();
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

void Connection::drain(DrainMode mode) {
  drain_mode_ = mode;
  if (in_process_) return;  // process() settles at its end
  settle();
}

bool Connection::drain_now() {
  if (drain_mode_ != DrainMode::kDisconnect || state_ != State::kReady || !idle() || rlen_ != 0)
    return false;
  // HAProxy may have sent a NOTIFY we have not read yet: a DISCONNECT now would make it fail.
  // Read and answer it first; the DISCONNECT then leaves with its ACK, and HAProxy reads both
  // before it sends anything else on this connection.
  uv_os_fd_t fd;
  int unread = 0;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&handle_), &fd) == 0 &&
      ::ioctl(fd, FIONREAD, &unread) == 0 && unread > 0)
    return false;
  return true;
}

void Connection::flush() {
  if (write_pending_ || out_.empty() || state_ == State::kClosed) return;
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(out_.data()), out_.size());
  int n = uv_try_write(stream(), &b, 1);
  if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
  if (n < 0) {
    server_.log().debug("write to {} failed: {}", peer_, uv_err_name(n));
    close_now();
    return;
  }
  server_.mutable_stats().bytes_out += static_cast<uint64_t>(n);
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
  c->server_.mutable_stats().bytes_out += c->writing_.size();
  c->writing_.clear();
  c->settle();
}

void Connection::update_reading() {
  if (state_ == State::kClosed) return;
  // Handing off: read only the HELLO or the end of a fragmented NOTIFY; the rest stays for the
  // new owner.
  bool want = !(drain_mode_ == DrainMode::kHandOff && state_ == State::kReady && !reasm_.active());
  if (state_ == State::kReady) {
    const auto& rt = server_.config().runtime;
    want = want && inflight_ < rt.max_inflight && out_.size() + writing_.size() < kMaxPendingOutput;
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

void Connection::set_inflight(uint32_t n) {
  Stats& st = server_.mutable_stats();
  st.inflight -= inflight_;
  st.inflight += n;
  inflight_ = n;
  const bool idle_now = state_ == State::kReady && n == 0;
  if (idle_now != counted_idle_) {
    counted_idle_ = idle_now;
    if (idle_now)
      ++st.conns_idle;
    else
      --st.conns_idle;
  }
}

void Connection::close_now() {
  if (state_ == State::kClosed) return;
  for (agent::Reply* r : outstanding_)
    r->detach();
  outstanding_.clear();
  reasm_.reset();
  state_ = State::kClosed;
  set_inflight(0);
  reading_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_), on_close);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
}

void Connection::on_close(uv_handle_t* h) {
  auto* c = static_cast<Connection*>(h->data);
  if (--c->open_handles_ > 0) return;
  c->server_.on_connection_closed(c);
  delete c;
}

}  // namespace spoad::runtime
