// The master <-> worker channel: one end of a socketpair per worker, carrying typed messages
// (supervisor/messages.h: commands, readiness, CLI requests and answers; never per-request
// data) as length-prefixed binary frames, and, for reloads, established SPOP connections
// handed from an old worker to a new one (SCM_RIGHTS, attached to Handoff and Adopt frames).
// The same channel carries a takeover between two masters (supervisor/takeover.h).
//
//   master -> worker  Listen, Metrics, PoolState, Init, CliRequest, SoftStop, Succession,
//                     Adopt (+ socket), HandoffAck
//   worker -> master  Ready, Error, CliResult (CliReply from older workers), PoolState,
//                     Handoff (+ socket), Engine
//   takeover          Takeover, PoolState, Listener (+ socket), Listeners, Serving,
//                     Adopt (+ socket), HandoffAck
//
// Every field is bytes: no content (invalid UTF-8, NUL, control bytes) can make either end
// throw. A frame that does not decode is logged and skipped (its socket, if any, closed); a
// frame longer than msg::kMaxMessage closes the channel. A closed channel means the peer is
// gone: a worker then stops at once (the master died).
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <string>

#include "supervisor/messages.h"

namespace spoad::supervisor {

class Channel {
 public:
  // `fd` is -1, or the socket that came with the message (Adopt, Handoff): the callback owns it.
  using MessageCb = std::function<void(msg::Message&& m, int fd)>;
  using ClosedCb = std::function<void()>;

  // Opens a channel on `fd` (a connected Unix stream socket; the channel owns it from now
  // on). `on_message` runs for each frame that decodes; `on_closed` runs once when the peer
  // closes, the socket fails or a frame is too long (not after close()). Returns nullptr on
  // error.
  static Channel* open(uv_loop_t* loop, int fd, MessageCb on_message, ClosedCb on_closed);

  // Queues one message (not Adopt, Handoff or Listener: see send_handle). Returns false when
  // it is dropped: the channel is closed, or the message is longer than msg::kMaxMessage.
  bool send(const msg::Message& m);

  // Queues `m` (Adopt, Handoff or Listener) with the socket of `handle` (a uv_tcp_t or uv_pipe_t)
  // attached. `done(ok)` runs once the kernel has it: the caller may then close its handle
  // (the peer holds its own copy of the socket).
  void send_handle(const msg::Message& m, uv_stream_t* handle, std::function<void(bool)> done);

  // Same with a raw socket `fd`, which the channel owns and closes once sent.
  void send_fd(const msg::Message& m, int fd);

  // Closes the socket once the messages already queued are written, and frees the channel.
  // No callback runs afterwards. The caller must forget its pointer.
  void close();

 private:
  Channel() = default;
  ~Channel();
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void on_close(uv_handle_t* h);
  void take_pending_fds();
  void dispatch();
  void fail();

  uv_loop_t* loop_ = nullptr;
  uv_pipe_t pipe_;
  std::string in_;  // bytes received, not yet decoded (at most one frame and a read)
  char rbuf_[65536];
  std::deque<int> fds_;  // sockets received, waiting for their message
  MessageCb on_message_;
  ClosedCb on_closed_;
  bool closed_ = false;
  int writes_ = 0;  // writes in flight
};

}  // namespace spoad::supervisor
