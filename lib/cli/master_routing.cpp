// One master CLI command: its routing prefix (management.txt 9.4: `@<relative pid>`,
// `@!<pid>`, `@master`; spoad's `@<agent name>`), then the master's own commands. What goes to
// workers is in master_proxy.cpp.
#include <string>
#include <utility>
#include <vector>

#include "cli/master_session.h"
#include "util/escape.h"

namespace spoad::cli {

const std::vector<CommandInfo>& MasterCli::commands() {
  static const std::vector<CommandInfo> c = {
      {{"@<relative pid>"},
       usage_line("@<relative pid>", "send a command to the <relative pid> process")},
      {{"@!<pid>"}, usage_line("@!<pid>", "send a command to the <pid> process")},
      {{"@<agent name>"},
       usage_line("@<agent name>",
                  "send a command to every worker of that agent; one answer, with how many "
                  "applied it")},
      {{"@master"}, usage_line("@master", "send a command to the master process")},
      {{"reload"}, usage_line("reload", "reload spoad: new workers, then soft-stop the old ones")},
      {{"show", "proc"}, usage_line("show proc", "show processes status")},
      {{"show", "info"},
       usage_line("show info [json]",
                  "report information about the master (reloads, CLI budgets)")},
      {{"show", "stat"},
       usage_line("show stat [json]",
                  "report the master's counters and the metrics of every agent (live and exited "
                  "workers summed)")},
      {{"show", "version"}, usage_line("show version", "show version of the current process")},
  };
  return c;
}

void MasterCli::Session::execute(Words w) {
  if (w.empty()) {  // a blank line in prompt mode, whatever the target: the prompt
    if (prompt_) write(prompt_text());
    return;
  }
  int target = target_;
  std::string agent = target_agent_;
  const Route r = parse_route(w[0]);
  if (r.kind != Route::Kind::kNone) {
    int pid = 0;
    agent.clear();
    if (r.kind == Route::Kind::kRelative) pid = cli_.backend_.worker_by_relative_pid(r.number);
    if (r.kind == Route::Kind::kPid && cli_.backend_.is_worker(r.number))
      pid = static_cast<int>(r.number);
    if (r.kind == Route::Kind::kAgent) {
      std::vector<PoolMember> members;
      if (!cli_.backend_.agent_workers(r.name, &members)) {
        write(no_agent(r.name));
        finish();
        return;
      }
      agent = r.name;
    } else if (r.kind == Route::Kind::kInvalid || (r.kind != Route::Kind::kMaster && pid == 0)) {
      write("Can't find the target PID matching the prefix '" + util::printable(w[0], 64) + "'\n");
      finish();
      return;
    }
    w.erase(w.begin());
    if (w.empty()) {  // "@N" or "@<agent>" alone: the target of the next commands
      target_ = pid;
      target_agent_ = agent;
      if (prompt_) write(prompt_text());
      return;
    }
    target = pid;
  }
  if (!agent.empty()) {
    pool_command(agent, w);
    return;
  }
  if (target != 0) {
    worker_command(target, w);
    return;
  }
  master_command(w);
}

std::string MasterCli::Session::no_agent(const std::string& name) {
  return "Can't find the target agent matching the prefix '@" + util::printable(name, 64) + "'\n";
}

void MasterCli::Session::master_command(const Words& w) {
  if (w[0] == "quit") {
    finish();
    return;
  }
  if (w[0] == "prompt") {
    prompt_ = !prompt_;
    if (prompt_) write(prompt_text());
    return;
  }
  if (w[0] == "help") {
    answer(help_message(commands()));
    return;
  }
  if (w.size() == 2 && w[0] == "show" && w[1] == "proc") {
    answer(cli_.backend_.show_proc());
    return;
  }
  if (w.size() == 2 && w[0] == "show" && w[1] == "version") {
    answer(cli_.backend_.version() + "\n");
    return;
  }
  const bool json = w.size() == 3 && w[2] == "json";
  if ((w.size() == 2 || json) && w[0] == "show" && w[1] == "info") {
    const Fields f = cli_.info();
    answer(json ? info_json(f, 0) : info_text(f));
    return;
  }
  if ((w.size() == 2 || json) && w[0] == "show" && w[1] == "stat") {
    answer(json ? cli_.stat_json() : cli_.stat_text());
    return;
  }
  if (w.size() == 1 && w[0] == "reload") {
    // As HAProxy 2.7+: synchronous, the last command of the connection.
    busy_ = true;
    queue_.clear();
    queued_bytes_ = 0;
    ++refs_;
    cli_.backend_.reload([this](std::string out) {
      busy_ = false;
      if (!closed_) {
        write(out);
        finish();
      }
      unref();
    });
    return;
  }
  answer(unknown_command_message(commands(), w));
}

}  // namespace spoad::cli
