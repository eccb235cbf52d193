// The master <-> worker channel: one end of a socketpair per worker, carrying one JSON object
// per line (commands, readiness, CLI requests and answers; never per-request data).
//
// Messages (every one has "type"):
//   master -> worker  init {config, file, agent, relative_pid, generation, listen_fd}
//                     cli  {id, line}
//   worker -> master  ready {pid, version}        the agent listens: the worker serves
//                     error {message}             the worker could not start; it exits
//                     cli  {id, output}
// A closed channel means the peer is gone: a worker then stops at once (the master died).
#pragma once

#include <uv.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace spoad::supervisor {

class Channel {
 public:
  using MessageCb = std::function<void(const nlohmann::json&)>;
  using ClosedCb = std::function<void()>;

  // Opens a channel on `fd` (a connected stream socket; the channel owns it from now on).
  // `on_message` runs for each line that parses as a JSON object; `on_closed` runs once when
  // the peer closes or the socket fails (not after close()). Returns nullptr on error.
  static Channel* open(uv_loop_t* loop, int fd, MessageCb on_message, ClosedCb on_closed);

  // Queues one message. Messages sent after close() are dropped.
  void send(const nlohmann::json& msg);

  // Closes the socket once the messages already queued are written, and frees the channel.
  // No callback runs afterwards. The caller must forget its pointer.
  void close();

  // Lines longer than this (bytes) close the channel: a broken peer cannot exhaust memory.
  static constexpr size_t kMaxLine = 64u << 20;

 private:
  Channel() = default;
  ~Channel() = default;
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
  static void on_write(uv_write_t* req, int status);
  static void on_close(uv_handle_t* h);
  void fail();

  uv_pipe_t pipe_;
  std::string in_;
  char rbuf_[65536];
  MessageCb on_message_;
  ClosedCb on_closed_;
  bool closed_ = false;
  int writes_ = 0;  // writes in flight
};

}  // namespace spoad::supervisor
