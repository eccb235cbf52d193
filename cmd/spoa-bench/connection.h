// One SPOP connection of spoa-bench, on the HAProxy side (SPOE.txt 3.2):
//
//   connect -> HAPROXY-HELLO -> AGENT-HELLO (checked by spop::parse_agent_hello)
//     -> NOTIFY x depth, then one new NOTIFY per ACK (pipelining; depth 1 without it)
//     -> at the end: HAPROXY-DISCONNECT status 0 -> AGENT-DISCONNECT or EOF -> close
//   a fatal error (HELLO rejected, malformed frame...) -> HAPROXY-DISCONNECT <status> -> close
//   AGENT-DISCONNECT, EOF, reset -> close
//
// Stream ids as HAProxy 3.x allocates them: odd numbers per connection (1, 3, 5...), frame-id
// always 1. Frames are encoded whole into an output buffer; everything queued while handling
// one read goes out in one write call. No reconnection: a connection that fails stays closed.
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "inflight.h"
#include "notify.h"
#include "spop/types.h"

namespace spoad::bench {

class Runner;

class Connection {
 public:
  // `index`: the connection's number in the run (0-based), for messages and the PRNG seed.
  Connection(Runner& runner, int index);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts connecting. `now` is uv_hrtime(), nanoseconds.
  void start(uint64_t now);

  // Called periodically: the connect and HELLO deadline, the NOTIFY timeouts, the linger of
  // a closing connection. `now` in nanoseconds (uv_hrtime).
  void check_timers(uint64_t now);

  // Stops sending: says HAPROXY-DISCONNECT (status 0) and waits briefly for the agent to
  // answer or close. NOTIFYs still in flight are dropped, not counted as errors.
  void begin_close(uint64_t now);

  // Closes at once, without a DISCONNECT.
  void close();

  // The run has ended (no NOTIFY may be sent any more): close if nothing is in flight.
  void on_run_end(uint64_t now);

  bool closed() const { return state_ == State::kClosed; }

 private:
  enum class State { kConnecting, kHello, kReady, kClosing, kClosed };

  static void on_connect(uv_connect_t* req, int status);
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void on_write(uv_write_t* req, int status);
  static void on_close(uv_handle_t* h);

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle_); }
  uv_handle_t* handle() { return reinterpret_cast<uv_handle_t*>(&handle_); }

  void connected(uint64_t now);
  void process(uint64_t now);
  void handle_frame(const spop::Frame& f, uint64_t now);
  void handle_agent_hello(const spop::Frame& f, uint64_t now);
  void handle_ack(const spop::Frame& f, uint64_t now);
  void handle_agent_disconnect(const spop::Frame& f);
  // Counts a protocol-level error against this connection, says HAPROXY-DISCONNECT with
  // `status` and closes. `counter` is one of the Errors fields.
  void fail(uint64_t& counter, const char* kind, spop::Status status, const std::string& detail);
  void fill(uint64_t now);  // sends NOTIFYs until `depth_` are in flight
  void flush();             // hands the queued frames to the kernel (one write)
  void leave_active();      // tells the runner once that this connection stopped working

  Runner& runner_;
  const int index_;
  State state_ = State::kConnecting;
  bool active_ = true;  // counted by the runner as still working (not closing/closed)

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_;
  bool is_unix_ = false;
  bool handle_open_ = false;
  uv_connect_t connect_req_;
  uint64_t deadline_ns_ = 0;  // connect+HELLO deadline, or end of the closing linger

  uint32_t max_frame_size_;  // bytes: ours (announced), then min(ours, the agent's)
  int depth_;                // NOTIFYs in flight at most: --depth, or 1 without pipelining
  uint64_t next_stream_id_ = 1;
  InflightTable inflight_;
  std::unordered_set<uint64_t> abandoned_;  // stream-ids of NOTIFYs that timed out
  std::vector<uint64_t> expired_;           // scratch for check_timers()
  uint64_t oldest_sent_ns_ = 0;             // no NOTIFY in flight was sent before this (uv_hrtime)
  NotifyEncoder encoder_;

  std::vector<uint8_t> rbuf_;  // received bytes; [0, rlen_) not processed yet
  size_t rlen_ = 0;
  bool discard_input_ = false;    // after a protocol error: ignore what the agent still sends
  std::vector<uint8_t> out_;      // whole frames not handed to the kernel yet
  std::vector<uint8_t> writing_;  // bytes of the uv_write in progress
  uv_write_t write_req_;
  bool write_pending_ = false;
};

}  // namespace spoad::bench
