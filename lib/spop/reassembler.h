// Reassembly of the fragmented NOTIFYs that HAProxy 2.6 sends when the agent announced the
// "fragmentation" capability (SPOE.txt 3.2.2 and 3.2.4): a NOTIFY without FIN, then UNSET
// (type 0) frames with the same stream-id and frame-id, the last one with FIN. HAProxy sends
// the fragments of one frame back to back on a connection, so one reassembly at a time is
// enough; anything else is an interlacing error. No I/O.
#pragma once

#include <cstdint>
#include <vector>

#include "spop/types.h"

namespace spoad::spop {

class Reassembler {
 public:
  enum class Step {
    kComplete,  // `payload` holds the whole LIST-OF-MESSAGES
    kPending,   // more fragments are expected
    kAborted,   // HAProxy aborted the frame (ABORT flag): drop it, send no ACK
  };

  // `max_size`: the largest reassembled payload accepted, in bytes.
  explicit Reassembler(size_t max_size) : max_size_(max_size) {}

  // Feeds a NOTIFY or UNSET frame. On kComplete, `*payload` views either the frame's own
  // payload (unfragmented case, no copy) or the internal buffer; it stays valid until the
  // next feed() or reset().
  // Errors: kInterlaced (a NOTIFY while another is being reassembled, or an UNSET frame for
  // other ids), kFrameIdNotFound (an UNSET frame with nothing to continue), kTooBig (the
  // payload grows beyond max_size), kInvalid (a frame type other than NOTIFY or UNSET).
  Result feed(const Frame& frame, Step* step, Bytes* payload);

  bool active() const { return active_; }
  uint64_t stream_id() const { return sid_; }
  uint64_t frame_id() const { return fid_; }
  size_t buffered() const { return buf_.size(); }
  void reset();

 private:
  size_t max_size_;
  bool active_ = false;
  uint64_t sid_ = 0;
  uint64_t fid_ = 0;
  std::vector<uint8_t> buf_;
};

}  // namespace spoad::spop
