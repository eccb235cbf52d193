// One SPOP connection from HAProxy, on the agent side (SPOE.txt 3.2):
//
//   accept -> wait HAPROXY-HELLO (hello timeout) -> AGENT-HELLO
//          -> NOTIFY ... ACK (pipelined, fragments reassembled, idle timeout)
//             (a fragmented NOTIFY must complete within the fragment timeout, and its buffer
//             is charged to the server's reassembly budget: beyond it, AGENT-DISCONNECT
//             status 13 "resource allocation error", SPOE.txt 3.5)
//          -> HAPROXY-DISCONNECT -> AGENT-DISCONNECT status 0 -> close
//   any protocol error -> AGENT-DISCONNECT <status> -> close
//   EOF or RST -> close (a normal end, not an error)
//
// Every frame is encoded whole into the output buffer and the buffer is handed to the kernel
// in one write call. At most `max_inflight` NOTIFYs wait for their ACK; beyond that the
// connection stops reading (backpressure) and never drops a frame.
//
// A Connection knows its owner only through runtime::ConnectionHost (connection_host.h): its
// settings, counters, agent, reassembly budget, logger, and the closed / hand-off / engine
// events. runtime::Server is the host in spoad; tests/unit/runtime_connection_test.cpp drives one
// over a socketpair with a fake host. The code is split by concern: connection.cpp (life cycle,
// timers, drain and hand-off), connection_read.cpp (reading, frames, NOTIFY to the agent),
// connection_write.cpp (ACKs and DISCONNECT, writing, backpressure, shutdown).
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/reply.h"
#include "runtime/connection_host.h"
#include "spop/reassembler.h"
#include "spop/types.h"

namespace spoad::runtime {

// How a soft-stopping server lets go of an established connection.
enum class DrainMode {
  kNone,
  // Answer the NOTIFYs in flight, then AGENT-DISCONNECT status 0 at the first idle moment
  // (plain soft-stop: nobody takes over).
  kDisconnect,
  // Answer the NOTIFYs in flight, then hand the socket to a worker of the new generation
  // (reload): no DISCONNECT, so no NOTIFY can cross one, and HAProxy sees nothing.
  kHandOff,
  // Keep serving until HAProxy closes (HAProxy soft-stops too: program-section reload); the
  // grace period bounds it.
  kWait,
};

class Connection final : public agent::Reply::Owner {
 public:
  // A connection of `host` (its settings, counters, agent...: see ConnectionHost), not yet
  // serving a socket. It deletes itself once closed, after host.on_connection_closed(this).
  explicit Connection(ConnectionHost& host);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Serves `fd`, a socket the caller accepted (TCP, or AF_UNIX when
  // ConnectionSettings::unix_socket; owned from now on). Returns a libuv error code (0 on success);
  // on failure the caller must close `fd` and call close_now(), which frees the connection.
  int adopt(int fd);

  // Closes at once, without a DISCONNECT (hard-stop). Outstanding replies are cancelled.
  void close_now();

  // Soft-stop (see DrainMode). A connection still waiting for its HELLO is closed right
  // after it, except in kHandOff mode (handed off once its AGENT-HELLO is written).
  void drain(DrainMode mode);

  // Takes over an established connection handed off by a worker of the previous generation:
  // `fd` (owned from now on) and the state that worker negotiated (max_frame_size,
  // capabilities, peer, bytes it had read but not processed). Returns a libuv error code.
  int adopt_established(int fd, const nlohmann::json& state);

  // Nothing in flight and nothing half reassembled.
  bool idle() const { return inflight_ == 0 && !reasm_.active(); }
  bool open() const { return state_ != State::kClosed; }

  // agent::Reply::Owner: the reply's ACK can leave (queued, then written with the batch).
  void on_reply_complete(agent::Reply& reply) override;

 private:
  enum class State { kHello, kReady, kClosing, kClosed };

  // Pending output (bytes) beyond which the connection stops reading until HAProxy catches up.
  static constexpr size_t kMaxPendingOutput = 256 * 1024;
  // How long a closing connection waits for HAProxy to read the DISCONNECT and close (ms).
  static constexpr uint64_t kLingerMs = 1000;
  // Replies kept for reuse per connection.
  static constexpr size_t kReplyPool = 64;
  // A read buffer above this size (bytes) is released once empty.
  static constexpr size_t kKeepReadBuffer = 64 * 1024;

  ~Connection();

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void on_write(uv_write_t* req, int status);
  static void on_close(uv_handle_t* h);
  static void on_timer(uv_timer_t* t);
  static void on_shutdown(uv_shutdown_t* req, int status);

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle_); }
  uv_loop_t* loop() const { return loop_; }
  void started();  // after accept: peer name, hello timer, reading

  void process();
  void handle_frame(const spop::Frame& f);
  void handle_hello(const spop::Frame& f);
  void handle_notify(const spop::Frame& f);
  void handle_disconnect(const spop::Frame& f);
  void refuse_fragment(const spop::Frame& f);  // reassembly budget used up
  void dispatch(spop::Bytes payload, uint32_t nmessages, uint64_t sid, uint64_t fid);
  void queue_ack(agent::Reply& reply);
  // AGENT-DISCONNECT with the error's status, counted as a protocol error of that status (or
  // of kind "fragment-timeout").
  void fail(spop::Result error, bool fragment_timeout = false);
  void disconnect(spop::Status status, const char* message);
  void flush();
  void update_reading();
  void arm_timer();
  void shutdown_if_all_written();
  bool drain_now();  // draining, idle, and nothing unread: time for the DISCONNECT
  void hand_off_if_safe();
  void settle();
  void set_inflight(uint32_t n);
  agent::Reply* new_reply();
  // Microseconds of a monotonic clock (a reply's processing time).
  static uint64_t now_us() { return uv_hrtime() / 1000; }

  ConnectionHost& host_;
  // The host's, read once (see ConnectionHost).
  uv_loop_t* const loop_;
  const config::RuntimeSettings& rt_;
  const bool unix_socket_;
  Stats& stats_;
  agent::Agent& agent_;
  spdlog::logger& log_;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_;
  uv_timer_t timer_;
  uv_shutdown_t shutdown_req_;
  std::string peer_;  // "addr:port" of HAProxy, for logs
  int open_handles_ = 0;
  bool shutdown_sent_ = false;
  State state_ = State::kHello;
  DrainMode drain_mode_ = DrainMode::kNone;
  bool handing_off_ = false;
  bool reading_ = false;
  bool in_process_ = false;
  bool counted_idle_ = false;

  uint32_t max_frame_size_;  // ours until HELLO, then the negotiated one
  spop::Capabilities caps_;
  spop::Reassembler reasm_;

  std::vector<uint8_t> rbuf_;  // received bytes; [0, rlen_) is unprocessed
  size_t rlen_ = 0;

  std::vector<uint8_t> out_;      // whole frames not yet handed to the kernel
  std::vector<uint8_t> writing_;  // bytes of the uv_write in progress
  uv_write_t wreq_;
  bool write_pending_ = false;

  uint32_t inflight_ = 0;
  std::vector<agent::Reply*> outstanding_;  // replies not complete yet
  std::vector<agent::Reply*> free_replies_;

  uint64_t last_activity_ms_ = 0;
  uint64_t deadline_ms_ = 0;           // hello, idle or closing deadline (loop time)
  uint64_t fragment_deadline_ms_ = 0;  // while reassembling: when the NOTIFY must be whole
};

}  // namespace spoad::runtime
