// The master's process table (supervisor/master.h): the generations it starts (one per start
// or reload), their slots (one per worker of each agent: `workers: N`), the worker process
// that fills a slot (Proc), and the lookups over them. No I/O here: the master spawns, signals
// and reaps; this file only says who is who.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/format.h"
#include "config/config.h"
#include "metrics/arena.h"
#include "supervisor/channel.h"

namespace spoad::supervisor {

class Master;
struct Generation;
struct Slot;

// One worker process, from uv_spawn until libuv closed its handle and its channel closed.
struct Proc {
  Master* master = nullptr;  // for the libuv callbacks
  uv_process_t handle;
  int pid = 0;  // 0 until uv_spawn succeeded
  Generation* gen = nullptr;
  Slot* slot = nullptr;  // null once the slot is filled again, or for a worker of no slot
  size_t agent = 0;      // index in gen->cfg.agents
  int relative_pid = 0;
  int reloads = 0;        // reloads it lived through
  uint64_t start_ms = 0;  // loop time
  uint64_t start_wall_s = 0;
  std::string version;                    // from its Ready, printable
  std::unique_ptr<metrics::Arena> arena;  // read-only; dropped once its totals are taken
  Channel* ch = nullptr;                  // null once the channel closed
  bool ready = false;
  bool leaving = false;  // soft-stopped, or of a generation that failed
  bool exited = false;
  bool handle_closed = false;
  // CLI commands sent to it and not answered yet, by request id; deadline in loop time (ms).
  struct CliCall {
    uint64_t deadline_ms;
    std::function<void(cli::WorkerAnswer)> done;
  };
  std::map<uint64_t, CliCall> cli;

  // Its agent's configuration, in its own generation.
  const config::AgentConfig& agent_config() const;
  // Gives `a` to the caller of command `id`. Does nothing when the command already timed out
  // (the CLI said so then).
  void answer_cli(uint64_t id, cli::WorkerAnswer a);
  // Gives every command still waiting the answer `status` (kGone when the worker exited).
  void answer_all_cli(cli::WorkerAnswer::Status status);
};

// A place for one worker of one agent in a generation; refilled (with backoff) when its
// worker dies.
struct Slot {
  Generation* gen = nullptr;
  size_t agent = 0;  // index in gen->cfg.agents
  int index = 0;     // among the agent's slots: which listening socket (supervisor/listeners.h)
  int relative_pid = 0;
  Proc* proc = nullptr;        // its current worker, if any
  uint64_t backoff_ms = 0;     // the next respawn delay
  uint64_t respawn_at_ms = 0;  // loop time; 0: nothing scheduled
  uint64_t crashes = 0;
};

// One configuration and the workers that run it.
struct Generation {
  int id = 0;
  config::Config cfg;
  std::string text;  // the configuration file's bytes, given to each worker
  std::vector<std::unique_ptr<Slot>> slots;
  uint64_t deadline_ms = 0;  // readiness deadline while starting (loop time)
  std::string errors;        // what the workers reported while starting
  bool ready = false;

  // True when every slot has a worker that said Ready.
  bool all_workers_ready() const;
  // The live worker of the slot with this relative pid, or null.
  Proc* live_worker(uint64_t relative_pid) const;
  // The ready, live workers of agent `name` with an open channel, in slot order: where a
  // connection handed off goes.
  std::vector<Proc*> ready_workers(const std::string& name) const;
};

// Every worker process not yet reaped, oldest first.
class ProcessTable {
 public:
  using List = std::list<std::unique_ptr<Proc>>;

  List::iterator begin() { return procs_.begin(); }
  List::iterator end() { return procs_.end(); }
  bool empty() const { return procs_.empty(); }

  // Takes `p` into the table; returns it.
  Proc* add(std::unique_ptr<Proc> p);
  // Forgets `p` (freed).
  void remove(const Proc* p);
  // The worker with this pid that has not exited, or null.
  Proc* find_live(int pid) const;
  // True while a process of `g` is in the table.
  bool runs(const Generation& g) const;
  // The live workers of agent `name` with an open channel, by generation, relative pid, pid
  // (into `out`). Returns true when some live worker (with a channel or not) is of that agent.
  bool pool_members(const std::string& name, std::vector<cli::PoolMember>* out) const;
  // Takes out the callbacks of the CLI commands past their deadline (`now_ms`, loop time), to
  // be called by the caller once it no longer walks the table.
  std::vector<std::function<void(cli::WorkerAnswer)>> take_expired_cli(uint64_t now_ms);

 private:
  List procs_;
};

}  // namespace spoad::supervisor
