// The master <-> worker channel: one end of a socketpair per worker, carrying one JSON object
// per line (commands, readiness, CLI requests and answers; never per-request data), and, for
// reloads, established SPOP connections handed from an old worker to a new one (SCM_RIGHTS).
//
// Messages (every one has "type"):
//   master -> worker  init {config, file, agent, relative_pid, generation, listen_fd}
//                     cli  {id, line}
//                     soft-stop {grace_ms, mode}  as SIGUSR1; mode: disconnect|handoff|wait
//                     hand-over {engines}         a successor starts: close new engines at HELLO
//                     adopt {agent, state} + fd   serve this established connection
//                     handoff-ack {}              a handoff was read (the worker may exit)
//   worker -> master  ready {pid, version}        the agent listens: the worker serves
//                     error {message}             the worker could not start; it exits
//                     cli  {id, output}
//                     handoff {agent, state} + fd an idle connection for the new generation
//                     engine {id}                 an engine-id (HAProxy process) seen first
// A closed channel means the peer is gone: a worker then stops at once (the master died).
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace spoad::supervisor {

class Channel {
 public:
  // `fd` is -1, or a socket that came with the message: the callback owns it.
  using MessageCb = std::function<void(const nlohmann::json&, int fd)>;
  using ClosedCb = std::function<void()>;

  // Opens a channel on `fd` (a connected Unix stream socket; the channel owns it from now
  // on). `on_message` runs for each line that parses as a JSON object; `on_closed` runs once
  // when the peer closes or the socket fails (not after close()). Returns nullptr on error.
  static Channel* open(uv_loop_t* loop, int fd, MessageCb on_message, ClosedCb on_closed);

  // Queues one message. Messages sent after close() are dropped.
  void send(const nlohmann::json& msg);

  // Queues `msg` with the socket of `handle` (a uv_tcp_t or uv_pipe_t) attached, and sets
  // msg["fd"] = true so the peer expects it. `done(ok)` runs once the kernel has it: the
  // caller may then close its handle (the peer holds its own copy of the socket).
  void send_handle(nlohmann::json msg, uv_stream_t* handle, std::function<void(bool)> done);

  // Same with a raw socket `fd`, which the channel owns and closes once sent.
  void send_fd(nlohmann::json msg, int fd);

  // Closes the socket once the messages already queued are written, and frees the channel.
  // No callback runs afterwards. The caller must forget its pointer.
  void close();

  // Lines longer than this (bytes) close the channel: a broken peer cannot exhaust memory.
  static constexpr size_t kMaxLine = 64u << 20;

 private:
  Channel() = default;
  ~Channel();
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void on_close(uv_handle_t* h);
  void take_pending_fds();
  void fail();

  uv_loop_t* loop_ = nullptr;
  uv_pipe_t pipe_;
  std::string in_;
  char rbuf_[65536];
  std::deque<int> fds_;  // sockets received, waiting for their message
  MessageCb on_message_;
  ClosedCb on_closed_;
  bool closed_ = false;
  int writes_ = 0;  // writes in flight
};

}  // namespace spoad::supervisor
