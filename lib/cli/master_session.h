// One client of the master CLI (private to lib/cli, see master_cli.h). Its code is split by
// concern:
//   - master_session.cpp: the socket (reads, writes, idle timer, closing), the framing of the
//     input into lines and commands, the queue of commands and the per-client budgets;
//   - master_routing.cpp: one command: its routing prefix (`@<n>`, `@!<pid>`, `@master`,
//     `@<agent>`) and the master's own commands;
//   - master_proxy.cpp: a command proxied to one worker or to every worker of a pool.
#pragma once

#include <uv.h>

#include <deque>
#include <string>
#include <string_view>

#include "cli/command.h"
#include "cli/master_cli.h"

namespace spoad::cli {

class MasterCli::Session {
 public:
  explicit Session(MasterCli& cli);

  // Accepts the pending connection of `listener` and starts reading. Returns a libuv error
  // code (0 on success).
  int accept(uv_stream_t* listener);
  // Closes the socket and the idle timer (once); the session is freed once both are closed
  // and no write or worker/reload callback is still to come.
  void close();

  // The worker answering a routed command may come back after the session closed: the
  // session stays allocated until then (busy_), so the callback can check `closed_`.
  bool closed() const { return closed_; }

 private:
  // One queued command: its words and what it counts against Limits::max_queued (bytes).
  struct Pending {
    Words words;
    size_t cost = 0;
  };

  struct WriteReq {
    uv_write_t req;
    std::string data;
  };

  // master_session.cpp: I/O, framing, budgets, output, lifetime.
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&pipe_); }
  void touch();
  static void on_idle(uv_timer_t* t);
  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf);
  static void on_read(uv_stream_t* st, ssize_t n, const uv_buf_t*);
  // Runs the whole lines received, as long as nothing waits; queues them behind a command in
  // flight, within the budgets.
  void take_lines();
  void too_long();
  // A budget is exceeded: read nothing more, drop what waits, answer the command in flight (if
  // any), then `text`, then close.
  void refuse(std::string text, uint64_t& counter, const std::string& why);
  void take_line(std::string_view line);
  void push(Words w);
  std::string prompt_text();
  // Output of one command: its text, the empty line that ends every answer, the prompt.
  void answer(const std::string& text);
  void run();
  void write(const std::string& s);
  static void on_write(uv_write_t* r, int);
  // Drops one reference; frees the session once its handles are closed and nothing refers
  // to it any more.
  void unref();
  // Closes once the output is written.
  void finish();
  static void on_close(uv_handle_t* h);

  // master_routing.cpp: one command, routed.
  void execute(Words w);
  void master_command(const Words& w);  // `w` is not empty
  static std::string no_agent(const std::string& name);

  // master_proxy.cpp: commands run by workers.
  // CMD `w` to the worker `pid`; its answer (or "Can't connect to the target CLI!") once in.
  void worker_command(int pid, const Words& w);
  // `@<agent> CMD`: CMD to every live worker of the pool at once; one answer once all are in
  // (pool_answer). Each worker's answer is bounded by the master's CLI timeout.
  void pool_command(const std::string& agent, const Words& w);

  MasterCli& cli_;
  uv_pipe_t pipe_;
  uv_timer_t timer_;
  char rbuf_[4096];
  std::string in_;  // received, not yet split into commands: at most max_line + one read
  std::deque<Pending> queue_;
  size_t queued_bytes_ = 0;   // the costs of queue_
  std::string last_words_;    // a budget's error line, written once nothing is in flight
  int target_ = 0;            // 0: the master; else a worker pid
  std::string target_agent_;  // not empty: the pool of this agent is the target
  bool prompt_ = false;
  bool running_ = false;  // in run()
  bool busy_ = false;
  bool eof_ = false;
  bool finishing_ = false;
  bool stop_reading_ = false;
  bool closed_ = false;
  int handles_closed_ = 0;
  int refs_ = 0;  // writes and worker/reload callbacks still to come
  size_t pending_ = 0;
};

}  // namespace spoad::cli
