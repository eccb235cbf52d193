// Master CLI commands run by workers: one worker (`@<relative pid>`, `@!<pid>`) or every live
// worker of an agent's pool (`@<agent name>`), through MasterBackend::worker_command.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/master_session.h"

namespace spoad::cli {

void MasterCli::Session::worker_command(int pid, const Words& w) {
  busy_ = true;
  ++refs_;
  // The words as parsed here reach the worker unchanged: nothing is joined or split again.
  cli_.backend_.worker_command(pid, w, [this](WorkerAnswer a) {
    busy_ = false;
    if (!closed_) {
      const bool answered =
          a.status == WorkerAnswer::Status::kOk || a.status == WorkerAnswer::Status::kFailed;
      answer(answered ? a.text : std::string("Can't connect to the target CLI!\n"));
      run();
    }
    unref();
  });
}

void MasterCli::Session::pool_command(const std::string& agent, const Words& w) {
  struct Call {
    std::string agent;
    std::vector<PoolMember> members;
    std::vector<WorkerAnswer> answers;
    size_t left = 0;
  };
  auto call = std::make_shared<Call>();
  call->agent = agent;
  if (!cli_.backend_.agent_workers(agent, &call->members)) {
    // The sticky target's agent left the configuration (a reload) and its workers exited.
    answer(no_agent(agent));
    return;
  }
  call->answers.resize(call->members.size());
  call->left = call->members.size() + 1;  // + 1: ours, dropped once every command is sent
  busy_ = true;
  ++refs_;
  auto one_done = [this, call] {
    if (--call->left > 0) return;
    busy_ = false;
    if (!closed_) {
      answer(pool_answer(call->agent, call->members, call->answers));
      run();
    }
    unref();
  };
  for (size_t i = 0; i < call->members.size(); ++i)
    cli_.backend_.worker_command(call->members[i].pid, w, [call, i, one_done](WorkerAnswer a) {
      call->answers[i] = std::move(a);
      one_done();
    });
  ++cli_.stats_.pool_commands;
  one_done();
}

}  // namespace spoad::cli
