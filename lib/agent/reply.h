// The ACK an agent builds for one NOTIFY (SPOE.txt 3.2.8): a list of set-var / unset-var
// actions (SPOE.txt 3.4). The runtime sends it when the agent is done: when on_message()
// returns, or, if the agent called defer(), when every Deferred has been completed.
#pragma once

#include <cstdint>
#include <vector>

#include "spop/types.h"

namespace spoad::agent {

class Deferred;

class Reply {
 public:
  // Implemented by the runtime: told when a Reply is complete and its ACK can leave.
  class Owner {
   public:
    virtual void on_reply_complete(Reply& reply) = 0;

   protected:
    ~Owner() = default;
  };

  Reply() = default;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;

  // ---- for agents ----

  // Adds set-var <scope>.<var-prefix>.<name> = v. HAProxy builds the full name from the
  // SPOE var-prefix; `name` is the short name. A Null value makes HAProxy unset the variable.
  void set_var(spop::Scope scope, std::string_view name, const spop::Value& v);
  // Adds unset-var <scope>.<var-prefix>.<name>.
  void unset_var(spop::Scope scope, std::string_view name);

  // Keeps the ACK from leaving until the returned Deferred is completed (or destroyed). Use
  // it to finish the reply later, from a callback on the same event loop. Message arguments
  // are only valid during on_message(): copy what the later callback needs.
  [[nodiscard]] Deferred defer();

  // True once the connection that carried the NOTIFY is gone: the ACK will not be sent, and
  // the agent may skip the remaining work.
  bool cancelled() const { return owner_ == nullptr; }

  uint64_t stream_id() const { return stream_id_; }
  uint64_t frame_id() const { return frame_id_; }

  // ---- for the runtime ----

  // Prepares a pooled Reply for a NOTIFY; the runtime holds one reference until dispatch ends.
  void reset(Owner* owner, uint64_t stream_id, uint64_t frame_id);
  void hold() { ++holds_; }
  // Drops one reference. At zero: tells the owner, or, if the owner detached, deletes itself
  // (the runtime allocates Replies with new).
  void release();
  // The connection is closing: the ACK will never be sent.
  void detach() { owner_ = nullptr; }
  const std::vector<uint8_t>& actions() const { return actions_; }
  // Position in the owner's table of outstanding replies.
  size_t slot() const { return slot_; }
  void set_slot(size_t s) { slot_ = s; }
  // When the NOTIFY was received, in microseconds of the owner's clock.
  uint64_t start_us() const { return start_us_; }
  void set_start_us(uint64_t t) { start_us_ = t; }

 private:
  Owner* owner_ = nullptr;
  uint64_t stream_id_ = 0;
  uint64_t frame_id_ = 0;
  int holds_ = 0;
  size_t slot_ = 0;
  uint64_t start_us_ = 0;
  std::vector<uint8_t> actions_;  // encoded LIST-OF-ACTIONS
};

// A hold on a Reply, for agents that answer after doing I/O. Move-only. complete() (or the
// destructor) releases the hold; the ACK leaves when the last hold is released.
class Deferred {
 public:
  Deferred() = default;
  explicit Deferred(Reply* r) : reply_(r) { reply_->hold(); }
  Deferred(Deferred&& o) noexcept : reply_(o.reply_) { o.reply_ = nullptr; }
  Deferred& operator=(Deferred&& o) noexcept {
    if (this != &o) {
      complete();
      reply_ = o.reply_;
      o.reply_ = nullptr;
    }
    return *this;
  }
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;
  ~Deferred() { complete(); }

  // The Reply, to add actions before completing. Only valid before complete().
  Reply& reply() const { return *reply_; }
  bool active() const { return reply_ != nullptr; }
  void complete() {
    if (reply_) {
      Reply* r = reply_;
      reply_ = nullptr;
      r->release();
    }
  }

 private:
  Reply* reply_ = nullptr;
};

}  // namespace spoad::agent
