// The CLI of a worker process, reached through the master (`@1 show info`): help, show info,
// show stat, show version, and the commands its agent adds. Executes one command at a time,
// synchronously, from the worker's loop.
#pragma once

#include <cstdint>
#include <string>

#include "cli/command.h"
#include "cli/format.h"
#include "runtime/worker.h"

namespace spoad::cli {

struct WorkerIdentity {
  int pid = 0;
  int relative_pid = 0;
  int generation = 0;
  std::string version;
  uint64_t start_time_s = 0;  // wall clock, seconds since the epoch
};

class WorkerCli {
 public:
  WorkerCli(runtime::Worker& worker, WorkerIdentity id);

  struct Result {
    bool ok = true;  // false: the command failed (agent::CommandError) or is unknown
    std::string text;
  };
  // Runs one command (already split into words). Its output ends with a newline unless empty.
  // Unknown commands get HAProxy's usage message (ok false); a command that throws
  // agent::CommandError answers its what() (ok false). Other exceptions pass through.
  Result run(const Words& words);
  // run(words).text.
  std::string execute(const Words& words) { return run(words).text; }

  // `show info` fields, in order (Name, Version, Pid, Agent, ... CumErrors, ...).
  Fields info() const;
  // `show stat` rows: one per agent served by this worker.
  std::vector<Fields> stat() const;
  // `show stat json`: the same counters, plus each agent's own, as a JSON object.
  nlohmann::json stat_json() const;

 private:
  std::vector<CommandInfo> commands() const;

  runtime::Worker& worker_;
  WorkerIdentity id_;
};

}  // namespace spoad::cli
