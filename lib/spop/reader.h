// Bounded decoding of SPOP data: typed data, KV lists, messages and actions (SPOE.txt 3.1,
// 3.2.6, 3.4). Nothing here reads past its input or allocates.
#pragma once

#include <cstdint>
#include <iterator>
#include <optional>
#include <string_view>

#include "spop/types.h"

namespace spoad::spop {

// A cursor over a byte range. Each read either succeeds and advances, or fails, leaves the
// cursor where it was and records the first error (always Status::kInvalid, with a detail
// naming what was truncated or malformed). After a failure every later read fails too.
class Reader {
 public:
  explicit Reader(Bytes in) : in_(in) {}

  bool u8(uint8_t* v);
  bool u32be(uint32_t* v);             // 4 bytes, network order
  bool varint(uint64_t* v);            // SPOE.txt 3.1
  bool raw(size_t n, Bytes* out);      // n bytes as they are
  bool string(std::string_view* out);  // <varint length><bytes>, no type byte
  bool typed(Value* out);              // <type+flags byte><data>, SPOE.txt 3.1
  bool kv(KV* out);                    // <name: string><value: typed>
  bool message(Message* out);          // <name: string><nb-args: 1 byte><KV x nb-args>
  bool action(Action* out);            // <type><nb-args><args>, SPOE.txt 3.4

  bool empty() const { return pos_ == in_.size(); }
  size_t remaining() const { return in_.size() - pos_; }
  size_t position() const { return pos_; }
  const Result& error() const { return error_; }
  bool failed() const { return !error_.ok(); }

 private:
  bool fail(const char* detail);

  Bytes in_;
  size_t pos_ = 0;
  Result error_;
};

// The short name of a data type (SPOE.txt 3.1): null, bool, int32, uint32, int64, uint64,
// ipv4, ipv6, str, bin (the spellings of spoa-bench's --arg); "?" for a reserved one.
const char* type_name(DataType t);

// Iteration over the arguments of a Message decoded by validate_notify() (frames.h).
class ArgIterator {
 public:
  ArgIterator(Bytes args, uint8_t left) : reader_(args), left_(left) { advance(); }
  const KV& operator*() const { return current_; }
  const KV* operator->() const { return &current_; }
  ArgIterator& operator++() {
    advance();
    return *this;
  }
  bool operator==(std::default_sentinel_t) const { return done_; }

 private:
  void advance();

  Reader reader_;
  uint8_t left_;
  KV current_;
  bool done_ = false;
};

struct ArgRange {
  Bytes bytes;
  uint8_t count;
  ArgIterator begin() const { return ArgIterator(bytes, count); }
  std::default_sentinel_t end() const { return {}; }
};

// The arguments of `msg`, in the order HAProxy sent them.
inline ArgRange args(const Message& msg) {
  return {msg.args, msg.nargs};
}

// The first argument of `msg` called `name`, if any. Unnamed arguments have an empty name.
std::optional<KV> find_arg(const Message& msg, std::string_view name);

// The argument at `index` (0-based), if `msg` has that many.
std::optional<KV> arg_at(const Message& msg, size_t index);

}  // namespace spoad::spop
