// Test support (tests only): an agent's side of a NOTIFY without a connection. A message
// encoded and decoded with the real codec (lib/spop), a Reply owner, and the actions of the
// ACK decoded back.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "agent/reply.h"
#include "spop/frames.h"
#include "spop/reader.h"
#include "spop/types.h"
#include "spop/writer.h"

namespace spoad::testing {

// A Reply::Owner that counts the replies completed (their ACK would leave now).
struct CountingOwner : agent::Reply::Owner {
  int completed = 0;
  void on_reply_complete(agent::Reply&) override { ++completed; }
};

// One message of a NOTIFY as the runtime hands it to Agent::on_message: `name` and `args`
// written by spop::Writer (SPOE.txt 3.2.6, a message of LIST-OF-MESSAGES) and read back by
// spop::Reader. ok() is false if the reader refused the bytes. The message's views point into
// this object: it must outlive their use.
class EncodedMessage {
 public:
  EncodedMessage(std::string_view name, std::span<const spop::KV> args) {
    spop::Writer w(buf_);
    w.message(name, args);
    spop::Reader r(spop::Bytes(buf_.data(), buf_.size()));
    ok_ = r.message(&msg_);
  }
  EncodedMessage(const EncodedMessage&) = delete;
  EncodedMessage& operator=(const EncodedMessage&) = delete;

  bool ok() const { return ok_; }
  const spop::Message& get() const { return msg_; }

 private:
  std::vector<uint8_t> buf_;
  spop::Message msg_;
  bool ok_ = false;
};

// The actions a Reply holds (SPOE.txt 3.4, LIST-OF-ACTIONS), decoded: ok as
// spop::validate_actions() says, count the actions it counted, list the actions (empty when
// not ok). The actions' views point into the reply: it must outlive their use.
struct DecodedActions {
  bool ok = false;
  uint32_t count = 0;
  std::vector<spop::Action> list;
};

inline DecodedActions decode_actions(const agent::Reply& reply) {
  DecodedActions out;
  const spop::Bytes bytes(reply.actions().data(), reply.actions().size());
  out.ok = spop::validate_actions(bytes, &out.count).ok();
  if (out.ok)
    for (const spop::Action& a : spop::actions(bytes))
      out.list.push_back(a);
  return out;
}

}  // namespace spoad::testing
