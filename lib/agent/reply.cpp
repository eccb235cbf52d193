#include "agent/reply.h"

#include "spop/writer.h"

namespace spoad::agent {

void Reply::set_var(spop::Scope scope, std::string_view name, const spop::Value& v) {
  spop::Writer w(actions_);
  w.set_var(scope, name, v);
}

void Reply::unset_var(spop::Scope scope, std::string_view name) {
  spop::Writer w(actions_);
  w.unset_var(scope, name);
}

Deferred Reply::defer() {
  return Deferred(this);
}

void Reply::reset(Owner* owner, uint64_t stream_id, uint64_t frame_id) {
  owner_ = owner;
  stream_id_ = stream_id;
  frame_id_ = frame_id;
  holds_ = 1;
  actions_.clear();
}

void Reply::release() {
  if (--holds_ > 0) return;
  if (owner_)
    owner_->on_reply_complete(*this);
  else
    delete this;
}

}  // namespace spoad::agent
