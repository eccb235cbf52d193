#include "spop/reassembler.h"

#include <algorithm>

namespace spoad::spop {

namespace {
// Buffers larger than this are released after use instead of being kept for the next one.
constexpr size_t kKeepCapacity = 64 * 1024;
}  // namespace

void Reassembler::reset() {
  active_ = false;
  sid_ = fid_ = 0;
  buf_.clear();
  if (buf_.capacity() > kKeepCapacity) std::vector<uint8_t>().swap(buf_);
}

Result Reassembler::feed(const Frame& f, Step* step, Bytes* payload) {
  if (f.type == FrameType::kNotify) {
    if (active_)
      return Result::Fail(Status::kInterlaced, "NOTIFY while another one is being reassembled");
    if (f.fin()) {
      if (f.abort()) {
        *step = Step::kAborted;
        return Result::Ok();
      }
      *step = Step::kComplete;
      *payload = f.payload;
      return Result::Ok();
    }
    if (f.payload.size() > max_size_)
      return Result::Fail(Status::kTooBig, "fragmented NOTIFY larger than max-fragmented-size");
    reset();
    active_ = true;
    sid_ = f.stream_id;
    fid_ = f.frame_id;
    buf_.assign(f.payload.begin(), f.payload.end());
    *step = Step::kPending;
    return Result::Ok();
  }
  if (f.type != FrameType::kUnset)
    return Result::Fail(Status::kInvalid, "not a NOTIFY or UNSET frame");

  if (!active_) {
    if (f.abort()) {  // nothing left to abort: harmless
      *step = Step::kAborted;
      return Result::Ok();
    }
    return Result::Fail(Status::kFrameIdNotFound, "UNSET fragment without a fragmented NOTIFY");
  }
  if (f.stream_id != sid_ || f.frame_id != fid_)
    return Result::Fail(Status::kInterlaced, "fragment for another stream-id/frame-id");
  if (f.abort()) {
    reset();
    *step = Step::kAborted;
    return Result::Ok();
  }
  if (buf_.size() + f.payload.size() > max_size_)
    return Result::Fail(Status::kTooBig, "fragmented NOTIFY larger than max-fragmented-size");
  const size_t need = buf_.size() + f.payload.size();
  if (need > buf_.capacity())  // grow geometrically, but never past max_size
    buf_.reserve(std::min(max_size_, std::max(need, buf_.capacity() * 2)));
  buf_.insert(buf_.end(), f.payload.begin(), f.payload.end());
  if (!f.fin()) {
    *step = Step::kPending;
    return Result::Ok();
  }
  active_ = false;
  *step = Step::kComplete;
  *payload = Bytes(buf_.data(), buf_.size());
  return Result::Ok();
}

}  // namespace spoad::spop
