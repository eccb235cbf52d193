// The master CLI: a Unix socket in the style of HAProxy's master CLI (management.txt 9.4),
// used with socat. It runs the master's own commands (help, prompt, quit, show version,
// reload, show proc) and routes the others to workers: `@<relative pid> CMD`, `@!<pid> CMD`,
// `@master CMD`, or `@N` alone to change the target of the next commands. spoad adds
// `@<agent name> CMD` (and `@<agent name>` alone): CMD runs on every live worker of that
// agent's pool, every generation (old ones draining, new ones starting) and the answers are
// gathered into one (cli/format.h, pool_answer).
//
// Each client is served asynchronously: a slow or stuck client never stalls the master, the
// workers, or other clients. At most kMaxClients are served at once; the others wait in the
// socket's backlog until a slot frees.
//
// Budgets per client (Limits, from the `cli:` section), each answered by one error line, then
// the client is closed once its output is written, and counted (master `show info` and
// `show stat`) and logged (rate-limited):
//   - a line longer than max_line bytes: "Command line too long (more than N bytes).";
//   - commands waiting behind a routed command or a reload (their words plus kQueuedOverhead
//     bytes each) above max_queued bytes: "Too many pending commands (more than N bytes
//     queued).";
//   - more than kMaxPendingOutput bytes of answers the client does not read (closed at once).
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>

#include "cli/command.h"
#include "cli/format.h"
#include "util/rate_limit.h"

namespace spoad::cli {

// What the master CLI needs from the master.
class MasterBackend {
 public:
  virtual ~MasterBackend() = default;
  // `show proc` text.
  virtual std::string show_proc() = 0;
  // The master's `show info` fields (Name, Version, Pid, Uptime, reloads, ...); the CLI
  // appends its own counters.
  virtual Fields info() = 0;
  // The version string (`show version`).
  virtual std::string version() = 0;
  // Starts a reload; `done` receives the answer ("Success=1\n..." or "Success=0\n--\n...").
  virtual void reload(std::function<void(std::string)> done) = 0;
  // The pid of the current worker with this relative pid, or 0.
  virtual int worker_by_relative_pid(uint64_t relative_pid) = 0;
  // True if `pid` is a worker (current or old).
  virtual bool is_worker(uint64_t pid) = 0;
  // The live workers of the agent named `name`: every generation, starting and stopping ones
  // included, by generation then relative pid. Returns false when no configuration in use and
  // no worker has an agent of that name (`out` is then empty).
  virtual bool agent_workers(const std::string& name, std::vector<PoolMember>* out) = 0;
  // Runs the command `words` (as the CLI parsed them, routing prefix removed) in worker `pid`;
  // `done` receives its answer: kGone, from within this call, when the worker is gone;
  // otherwise later, from the loop (kOk, kFailed; kNoAnswer after a timeout; kGone if the
  // worker exits first).
  virtual void worker_command(int pid, const Words& words,
                              std::function<void(WorkerAnswer)> done) = 0;
  // True when the last reload failed (the prompt then reads "master[ReloadFailed]> ").
  virtual bool last_reload_failed() = 0;
  // The metrics of the whole process tree, live workers and exited ones summed per agent, in
  // the Prometheus text format 0.0.4 (what `/metrics` answers), for `show stat`; "" if none.
  virtual std::string metrics_exposition() { return ""; }
};

class MasterCli {
 public:
  static constexpr size_t kMaxClients = 10;
  // A client that reads nothing while this much output waits (bytes) is closed.
  static constexpr size_t kMaxPendingOutput = 4u << 20;
  // A client silent that long (ms) is closed, so that stuck clients free their slot.
  static constexpr uint64_t kIdleTimeoutMs = 600'000;
  // What a queued command costs beside its words (bytes), for the max_queued budget.
  static constexpr size_t kQueuedOverhead = 64;

  struct Limits {
    size_t max_line = 64 * 1024;   // bytes of one line, '\n' excluded (cli.max-line)
    size_t max_queued = 1u << 20;  // bytes of commands waiting, per client (cli.max-queued)
  };

  // Counters since the master started.
  struct Stats {
    uint64_t clients_total = 0;  // clients accepted
    uint64_t line_too_long = 0;  // clients closed for a line longer than max_line
    uint64_t queue_full = 0;     // clients closed for more than max_queued bytes pending
    uint64_t slow_readers = 0;   // clients closed for more than kMaxPendingOutput unread
    uint64_t idle_timeouts = 0;  // clients closed after kIdleTimeoutMs of silence
    uint64_t pool_commands = 0;  // `@<agent> CMD` sent to a pool (counted once sent)
  };

  MasterCli(uv_loop_t* loop, MasterBackend& backend, Limits limits);
  ~MasterCli();

  // New limits (after a reload); they apply to every client from its next read on.
  void set_limits(Limits limits) { limits_ = limits; }
  const Stats& stats() const { return stats_; }
  size_t clients() const { return sessions_.size(); }

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
  void report_closed_when_done();
  // Counts and logs (at most 5 lines a second) a client closed by a budget.
  void budget_hit(uint64_t& counter, const std::string& why);
  // The master-level `show info` fields: the backend's, then the CLI's counters.
  Fields info();
  // The master-level `show stat`: the master's CSV row, then the metrics of the whole tree as
  // `name{labels} value` lines (the exposition without its # lines). `show stat json`:
  // {"master": {...}, "metrics": [{"name": ..., "labels": {...}, "value": ...}, ...]}.
  Fields stat_row();
  std::string stat_text();
  std::string stat_json();

  uv_loop_t* loop_;
  MasterBackend& backend_;
  Limits limits_;
  Stats stats_;
  util::RateLimiter log_limiter_{5};
  uv_pipe_t listener_;
  bool listener_open_ = false;
  bool listener_closing_ = false;
  bool waiting_ = false;  // a client waits in the backlog for a free slot
  bool closing_ = false;
  std::unordered_set<Session*> sessions_;
  std::function<void()> closed_cb_;
};

}  // namespace spoad::cli
