// Reassembly of the fragmented NOTIFYs that HAProxy 2.6 sends when the agent announced the
// "fragmentation" capability (SPOE.txt 3.2.2 and 3.2.4): a NOTIFY without FIN, then UNSET
// (type 0) frames with the same stream-id and frame-id, the last one with FIN. HAProxy sends
// the fragments of one frame back to back on a connection, so one reassembly at a time is
// enough; anything else is an interlacing error. No I/O.
//
// Memory: a Reassembler holds one buffer, allocated when a fragmented NOTIFY starts and freed
// when it aborts or fails, by reset() (the caller resets once it has used a complete payload)
// and by the next feed(). Its bytes (the buffer's capacity, not
// just what it holds) are charged to a ReassemblyBudget shared by every connection of one
// agent server, so that the reassembly memory of a worker has a ceiling whatever the number
// of connections.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "spop/types.h"

namespace spoad::spop {

// Bytes of reassembly buffers held together by the Reassemblers that share it (one agent
// server in one worker: config key max-reassembly-bytes). Single-threaded (one libuv loop).
class ReassemblyBudget {
 public:
  // `limit`: the most bytes that may be held at once.
  explicit ReassemblyBudget(size_t limit) : limit_(limit) {}
  ReassemblyBudget(const ReassemblyBudget&) = delete;
  ReassemblyBudget& operator=(const ReassemblyBudget&) = delete;

  // Takes `n` bytes. Returns false, and takes nothing, if used() + n would exceed limit().
  bool take(size_t n) {
    if (n > limit_ - used_) return false;
    used_ += n;
    if (used_ > peak_) peak_ = used_;
    return true;
  }
  // Gives back `n` bytes taken before.
  void give_back(size_t n) { used_ -= n < used_ ? n : used_; }

  size_t limit() const { return limit_; }
  size_t used() const { return used_; }  // bytes held now
  size_t peak() const { return peak_; }  // most bytes ever held at once

 private:
  size_t limit_;
  size_t used_ = 0;
  size_t peak_ = 0;
};

class Reassembler {
 public:
  enum class Step {
    kComplete,  // `payload` holds the whole LIST-OF-MESSAGES
    kPending,   // more fragments are expected
    kAborted,   // HAProxy aborted the frame (ABORT flag): drop it, send no ACK
  };

  // `max_size`: the largest reassembled payload accepted, in bytes (max-fragmented-size).
  // `budget`: charged with the bytes of the buffer while it exists; null for none. It must
  // outlive the Reassembler.
  explicit Reassembler(size_t max_size, ReassemblyBudget* budget = nullptr)
      : max_size_(max_size), budget_(budget) {}
  ~Reassembler() { release(); }
  Reassembler(const Reassembler&) = delete;
  Reassembler& operator=(const Reassembler&) = delete;

  // Feeds a NOTIFY or UNSET frame. On kComplete, `*payload` views either the frame's own
  // payload (unfragmented case, no copy, no buffer) or the internal buffer; it stays valid
  // until the next feed() or reset().
  // Errors (the reassembly is then reset and its buffer freed): kInterlaced (a NOTIFY while
  // another is being reassembled, or an UNSET frame for other ids), kFrameIdNotFound (an
  // UNSET frame with nothing to continue), kTooBig (the payload grows beyond max_size),
  // kResourceError (the budget cannot cover the bytes needed: SPOE.txt 3.5 status 13,
  // "resource allocation error"), kInvalid (a frame type other than NOTIFY or UNSET).
  Result feed(const Frame& frame, Step* step, Bytes* payload);

  bool active() const { return active_; }
  uint64_t stream_id() const { return sid_; }
  uint64_t frame_id() const { return fid_; }
  size_t buffered() const { return len_; }   // payload bytes received so far
  size_t allocated() const { return cap_; }  // bytes of the buffer (charged to the budget)
  // Ends any reassembly and frees the buffer (its bytes go back to the budget).
  void reset();

 private:
  // Makes room for `need` bytes in all; false if the budget refuses.
  bool reserve(size_t need);
  void release();

  size_t max_size_;
  ReassemblyBudget* budget_;
  bool active_ = false;
  uint64_t sid_ = 0;
  uint64_t fid_ = 0;
  std::unique_ptr<uint8_t[]> buf_;
  size_t len_ = 0;
  size_t cap_ = 0;
};

}  // namespace spoad::spop
