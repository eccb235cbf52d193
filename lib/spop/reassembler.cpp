#include "spop/reassembler.h"

#include <algorithm>
#include <cstring>

namespace spoad::spop {

void Reassembler::release() {
  if (budget_) budget_->give_back(cap_);
  buf_.reset();
  cap_ = len_ = 0;
}

void Reassembler::reset() {
  active_ = false;
  sid_ = fid_ = 0;
  release();
}

bool Reassembler::reserve(size_t need) {
  if (need <= cap_) return true;
  // Grow geometrically (few copies for a long NOTIFY), but never past max_size, and ask the
  // budget for the exact need when it cannot cover the doubling.
  size_t want = std::min(max_size_, std::max(need, cap_ * 2));
  if (budget_ && !budget_->take(want - cap_)) {
    want = need;
    if (!budget_->take(want - cap_)) return false;
  }
  auto bigger = std::make_unique_for_overwrite<uint8_t[]>(want);
  if (len_ > 0) std::memcpy(bigger.get(), buf_.get(), len_);
  buf_ = std::move(bigger);
  cap_ = want;
  return true;
}

Result Reassembler::feed(const Frame& f, Step* step, Bytes* payload) {
  if (!active_ && cap_ > 0) release();  // the previous complete payload is no longer used
  if (f.type == FrameType::kNotify) {
    if (active_) {
      reset();
      return Result::Fail(Status::kInterlaced, "NOTIFY while another one is being reassembled");
    }
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
    if (!reserve(f.payload.size()))
      return Result::Fail(Status::kResourceError,
                          "fragmented NOTIFY refused: the worker's reassembly budget "
                          "(max-reassembly-bytes) is used up");
    active_ = true;
    sid_ = f.stream_id;
    fid_ = f.frame_id;
    if (!f.payload.empty()) std::memcpy(buf_.get(), f.payload.data(), f.payload.size());
    len_ = f.payload.size();
    *step = Step::kPending;
    return Result::Ok();
  }
  if (f.type != FrameType::kUnset) {
    reset();
    return Result::Fail(Status::kInvalid, "not a NOTIFY or UNSET frame");
  }

  if (!active_) {
    if (f.abort()) {  // nothing left to abort: harmless
      *step = Step::kAborted;
      return Result::Ok();
    }
    return Result::Fail(Status::kFrameIdNotFound, "UNSET fragment without a fragmented NOTIFY");
  }
  if (f.stream_id != sid_ || f.frame_id != fid_) {
    reset();
    return Result::Fail(Status::kInterlaced, "fragment for another stream-id/frame-id");
  }
  if (f.abort()) {
    reset();
    *step = Step::kAborted;
    return Result::Ok();
  }
  if (f.payload.size() > max_size_ - len_) {
    reset();
    return Result::Fail(Status::kTooBig, "fragmented NOTIFY larger than max-fragmented-size");
  }
  if (!reserve(len_ + f.payload.size())) {
    reset();
    return Result::Fail(Status::kResourceError,
                        "fragment refused: the worker's reassembly budget "
                        "(max-reassembly-bytes) is used up");
  }
  if (!f.payload.empty()) std::memcpy(buf_.get() + len_, f.payload.data(), f.payload.size());
  len_ += f.payload.size();
  if (!f.fin()) {
    *step = Step::kPending;
    return Result::Ok();
  }
  active_ = false;
  *step = Step::kComplete;
  *payload = Bytes(buf_.get(), len_);
  return Result::Ok();
}

}  // namespace spoad::spop
