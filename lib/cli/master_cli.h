// The master CLI: a Unix socket in the style of HAProxy's master CLI (management.txt 9.4),
// used with socat. It runs the master's own commands (help, prompt, quit, show version,
// reload, show proc) and routes the others to workers: `@<relative pid> CMD`, `@!<pid> CMD`,
// `@master CMD`, or `@N` alone to change the target of the next commands.
//
// Each client is served asynchronously: a slow or stuck client never stalls the master, the
// workers, or other clients. At most kMaxClients are served at once; the others wait in the
// socket's backlog until a slot frees.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>

#include "cli/command.h"

namespace spoad::cli {

// What the master CLI needs from the master.
class MasterBackend {
 public:
  virtual ~MasterBackend() = default;
  // `show proc` text.
  virtual std::string show_proc() = 0;
  // The version string (`show version`).
  virtual std::string version() = 0;
  // Starts a reload; `done` receives the answer ("Success=1\n..." or "Success=0\n--\n...").
  virtual void reload(std::function<void(std::string)> done) = 0;
  // The pid of the current worker with this relative pid, or 0.
  virtual int worker_by_relative_pid(uint64_t relative_pid) = 0;
  // True if `pid` is a worker (current or old).
  virtual bool is_worker(uint64_t pid) = 0;
  // Runs `line` in worker `pid`; `done` receives its output ("" if the worker is gone: the CLI
  // then answers "Can't connect to the target CLI!").
  virtual void worker_command(int pid, const std::string& line,
                              std::function<void(bool ok, std::string)> done) = 0;
  // True when the last reload failed (the prompt then reads "master[ReloadFailed]> ").
  virtual bool last_reload_failed() = 0;
};

class MasterCli {
 public:
  static constexpr size_t kMaxClients = 10;
  // A client line longer than this (bytes) closes the client.
  static constexpr size_t kMaxLine = 64 * 1024;
  // A client that reads nothing while this much output waits (bytes) is closed.
  static constexpr size_t kMaxPendingOutput = 4u << 20;
  // A client silent that long (ms) is closed, so that stuck clients free their slot.
  static constexpr uint64_t kIdleTimeoutMs = 600'000;

  MasterCli(uv_loop_t* loop, MasterBackend& backend);
  ~MasterCli();

  // Serves on an already listening Unix socket `fd` (owned from now on).
  // Throws std::runtime_error.
  void listen(int fd);
  // Stops accepting and closes every client; `done` runs when all handles are closed.
  void close(std::function<void()> done);

  // The commands of the master level (for help and suggestions).
  static const std::vector<CommandInfo>& commands();

 private:
  class Session;
  static void on_connection(uv_stream_t* s, int status);
  void accept_one();
  void session_closed(Session* s);
  void maybe_closed();

  uv_loop_t* loop_;
  MasterBackend& backend_;
  uv_pipe_t listener_;
  bool listener_open_ = false;
  bool listener_closing_ = false;
  bool waiting_ = false;  // a client waits in the backlog for a free slot
  bool closing_ = false;
  std::unordered_set<Session*> sessions_;
  std::function<void()> closed_cb_;
};

}  // namespace spoad::cli
