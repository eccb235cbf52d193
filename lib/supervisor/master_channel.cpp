// What the master's workers send on their channels (supervisor/messages.h): readiness,
// errors, CLI answers, pool states, engine-ids, and connections they hand off.
#include <unistd.h>

#include "supervisor/master.h"
#include "supervisor/master_text.h"
#include "util/escape.h"

namespace spoad::supervisor {

void Master::on_message(Proc* p, msg::Message&& m, int fd) {
  if (auto* h = std::get_if<msg::Handoff>(&m)) {
    hand_off(std::move(*h), fd);
    if (p->ch) p->ch->send(msg::HandoffAck{});
    return;
  }
  if (fd >= 0) ::close(fd);
  if (auto* e = std::get_if<msg::Engine>(&m)) {
    engines_.add(e->id);  // for a succession
  } else if (auto* r = std::get_if<msg::Ready>(&m)) {
    p->ready = true;
    p->version = util::printable(r->version, 64);
    check_generation(*p->gen);
  } else if (auto* err = std::get_if<msg::Error>(&m)) {
    p->gen->errors += err->message + "\n";
  } else if (auto* r = std::get_if<msg::CliResult>(&m)) {
    p->answer_cli(r->id,
                  {r->ok ? cli::WorkerAnswer::Status::kOk : cli::WorkerAnswer::Status::kFailed,
                   std::move(r->text)});
  } else if (auto* c = std::get_if<msg::CliReply>(&m)) {  // from an older worker
    p->answer_cli(c->id, {cli::WorkerAnswer::Status::kOk, std::move(c->output)});
  } else if (auto* ps = std::get_if<msg::PoolState>(&m)) {
    pool_state(p, std::move(*ps));
  } else {
    mlog()->warn("worker {} sent an unexpected {} message: ignored", p->pid, msg::name(m));
  }
}

void Master::pool_state(Proc* p, msg::PoolState&& ps) {
  // A worker speaks for its own pool only: the map holds configured agent names alone.
  const std::string& name = p->agent_config().name;
  if (ps.agent != name) {
    if (pool_state_log_.allow(uv_now(loop_)))
      mlog()->warn("worker {} of {} sent the pool state of {}: ignored", p->pid, name,
                   util::printable(ps.agent, 64));
    return;
  }
  const PoolStates::Entry& e = pool_states_.update(name, std::move(ps.state));
  mlog()->debug("pool state of {} from worker {}: {} bytes", name, p->pid, e.state.size());
}

void Master::hand_off(msg::Handoff&& h, int fd) {
  // A connection an old worker let go at a safe point: give it to a current worker of the same
  // agent, in turn. Its unread bytes wait in the socket meanwhile.
  if (successor_ && successor_serving_ && fd >= 0) {
    // Forwarded to a new spoad (our successor): it adopts the connection into one of its
    // workers.
    ++successor_unacked_;
    successor_->send_fd(msg::Adopt{std::move(h.agent), std::move(h.state)}, fd);
    return;
  }
  const std::string& agent = h.agent;
  const std::vector<Proc*> targets =
      current_ ? current_->ready_workers(agent) : std::vector<Proc*>{};
  if (targets.empty() || fd < 0) {
    mlog()->warn("no current worker of {} to take over a connection: closing it",
                 util::printable(agent, 64));
    if (fd >= 0) ::close(fd);
    return;
  }
  Proc* t = targets[handoff_rr_++ % targets.size()];
  t->ch->send_fd(msg::Adopt{std::move(h.agent), std::move(h.state)}, fd);
}

}  // namespace spoad::supervisor
