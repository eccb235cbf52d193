// Text layouts of the CLI answers, following HAProxy's (management.txt 9.3 `show info`,
// 9.4.1 `show proc`). No I/O.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spoad::cli {

// "%dd%02dh%02dm%02ds" of `show proc`, e.g. "0d00h02m07s". `seconds` of uptime.
std::string proc_uptime(uint64_t seconds);
// "%ud %uh%02um%02us" of `show info`, e.g. "0d 0h00m05s".
std::string info_uptime(uint64_t seconds);

// One process row of `show proc`.
struct ProcRow {
  int pid = 0;
  std::string type;       // "master" or the worker's agent name
  int relative_pid = 0;   // 0 for the master
  int reloads = 0;        // reloads this process has seen
  uint64_t uptime_s = 0;  // seconds
  std::string version;
};

// `show proc`: HAProxy's fixed-width layout with the <relative PID> column of HAProxy 2.1
// (every column padded to 15 characters, trailing spaces included):
//   #<PID>          <type>          <relative PID>  <reloads>       <uptime>        <version>
//   <master row, reloads written "N [failed: F]">
//   # workers
//   <current workers>
//   # old workers            (only when some are still running)
//   <old workers>
std::string show_proc(const ProcRow& master, int failed_reloads,
                      const std::vector<ProcRow>& workers, const std::vector<ProcRow>& old_workers);

// An ordered list of named fields: `show info`, `show stat`.
using Fields = std::vector<std::pair<std::string, nlohmann::json>>;

// "Name: value" lines (`show info`). Strings are written as they are, numbers in decimal.
std::string info_text(const Fields& fields);
// `show info json`: HAProxy's layout, an array of
// {"field":{"pos":N,"name":...},"processNum":P,"value":{"type":"str"|"u64"|"s64","value":...}}.
std::string info_json(const Fields& fields, int process_num);

// `show stat`: CSV with a "# name1,name2,..." header line, one line per row. Each row must
// have the same fields in the same order; values with ',' or '\n' have them replaced by ' '.
std::string stat_csv(const std::vector<Fields>& rows);

// What came back from one worker for a routed command.
struct WorkerAnswer {
  enum class Status {
    kOk,        // the command ran: `text` is its answer
    kFailed,    // it failed (agent::CommandError, unknown command): `text` says why
    kNoAnswer,  // no answer in time (the worker is stuck)
    kGone,      // the worker exited, or its channel is closed
  };
  Status status = Status::kGone;
  std::string text;  // bytes as the worker wrote them (kOk, kFailed)
};

// A worker a pool-wide command (`@<agent> CMD`) was sent to.
struct PoolMember {
  int pid = 0;
  int relative_pid = 0;
};

// The master's answer to `@<agent> CMD`, from the answers of `members` (same order):
//   - when every answer (kOk or kFailed, kNoAnswer counting as the failure "No answer from the
//     worker.") is the same, that text once;
//   - otherwise each distinct answer once, in the order of its first worker, preceded by
//     "# workers 1,2 (pids 10,11):" (relative pids and pids of the workers that gave it);
//   - then "# <agent>: applied on N of M workers", plus ", failed on F" and ", G gone" when
//     not zero (N: kOk answers, F: kFailed and kNoAnswer, G: kGone, M: all of them).
// Each answer ends with a newline (one is added where missing).
std::string pool_answer(std::string_view agent, const std::vector<PoolMember>& members,
                        const std::vector<WorkerAnswer>& answers);

}  // namespace spoad::cli
