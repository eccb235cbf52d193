// runtime::Connection, its life cycle: adopting a socket (new or handed off), the hello, idle,
// fragment and linger timers, the drain modes and the hand-off, closing.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

#include <algorithm>

#include "runtime/connection.h"
#include "util/escape.h"
#include "util/text.h"

namespace spoad::runtime {

Connection::Connection(ConnectionHost& host)
    : host_(host),
      loop_(host.loop()),
      rt_(host.connection_settings().runtime),
      unix_socket_(host.connection_settings().unix_socket),
      stats_(host.mutable_stats()),
      agent_(host.agent()),
      log_(host.log()),
      max_frame_size_(rt_.max_frame_size),
      reasm_(rt_.max_fragmented_size, &host.reassembly_budget()) {
  if (unix_socket_)
    uv_pipe_init(loop_, &handle_.pipe, 0);
  else
    uv_tcp_init(loop_, &handle_.tcp);
  handle_.tcp.data = this;
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  open_handles_ = 2;
}

Connection::~Connection() {
  for (agent::Reply* r : free_replies_)
    delete r;
}

int Connection::adopt(int fd) {
  const int rc = unix_socket_ ? uv_pipe_open(&handle_.pipe, fd) : uv_tcp_open(&handle_.tcp, fd);
  if (rc != 0) return rc;
  started();
  return 0;
}

int Connection::adopt_established(int fd, const nlohmann::json& st) {
  // The bytes the old worker had read but not processed. Only a broken state lacks its even
  // number of hex digits: the connection is then refused, as its stream would be out of step.
  std::string buffered;
  if (!util::hex_decode(st.value("buffered", std::string()), &buffered)) return UV_EINVAL;
  const int rc = unix_socket_ ? uv_pipe_open(&handle_.pipe, fd) : uv_tcp_open(&handle_.tcp, fd);
  if (rc != 0) return rc;
  if (!unix_socket_) uv_tcp_nodelay(&handle_.tcp, 1);
  peer_ = util::printable(st.value("peer", std::string("?")), 64);  // logged as is from now on
  max_frame_size_ = std::min<uint32_t>(st.value("max_frame_size", uint32_t{spop::kMinFrameSize}),
                                       rt_.max_frame_size);
  caps_.pipelining = st.value("pipelining", false);
  caps_.async = st.value("async", false);
  caps_.fragmentation = st.value("fragmentation", false);
  rbuf_.assign(buffered.begin(), buffered.end());
  rlen_ = rbuf_.size();
  if (rbuf_.size() < size_t{max_frame_size_} + 4) rbuf_.resize(size_t{max_frame_size_} + 4);
  state_ = State::kReady;
  set_inflight(0);
  last_activity_ms_ = uv_now(loop());
  deadline_ms_ = last_activity_ms_ + rt_.idle_timeout_ms;
  arm_timer();
  update_reading();
  if (rlen_ > 0) process();
  return 0;
}

void Connection::started() {
  if (!unix_socket_) {
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
  deadline_ms_ = last_activity_ms_ + rt_.hello_timeout_ms;
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
      c->deadline_ms_ = c->last_activity_ms_ + c->rt_.idle_timeout_ms;
      if (c->inflight_ > 0) c->deadline_ms_ = now + c->rt_.idle_timeout_ms;
      if (now >= c->deadline_ms_) {
        c->fail(spop::Result::Fail(spop::Status::kTimeout, "idle timeout"));
        return;
      }
      if (c->reasm_.active() && now >= c->fragment_deadline_ms_) {
        if (!c->reading_) {
          // We stopped reading (backpressure): HAProxy cannot send the rest. Wait again.
          c->fragment_deadline_ms_ = now + c->rt_.fragment_timeout_ms;
        } else {
          ++c->stats_.fragment_timeouts;
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

// After any progress: DISCONNECT or hand off a draining connection once it can go, write what
// is queued, adjust reading.
void Connection::settle() {
  if (drain_now()) disconnect(spop::Status::kNormal, "");
  flush();
  update_reading();
  shutdown_if_all_written();
  hand_off_if_safe();
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
  host_.hand_off(st, stream(), [this](bool ok) {
    if (!ok) {  // the channel failed: fall back to a DISCONNECT
      log_.warn("could not hand the connection from {} over: closing it with a DISCONNECT", peer_);
      handing_off_ = false;
      drain_mode_ = DrainMode::kDisconnect;
      update_reading();
      settle();
      return;
    }
    ++stats_.handed_off;
    close_now();  // our copy only: the socket lives on in the new worker
  });
}

void Connection::set_inflight(uint32_t n) {
  Stats& st = stats_;
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
  c->host_.on_connection_closed(c);
  delete c;
}

}  // namespace spoad::runtime
