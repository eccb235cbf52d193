// Lets at most N events per second through, and counts the ones it held back. Used to keep
// per-request log lines (bad arguments, protocol errors) from flooding the log.
#pragma once

#include <cstdint>

namespace spoad::util {

class RateLimiter {
 public:
  explicit RateLimiter(uint32_t per_second) : per_second_(per_second) {}

  // True if one more event may pass at `now_ms` (any monotonic milliseconds).
  bool allow(uint64_t now_ms) {
    if (now_ms - window_start_ >= 1000) {
      window_start_ = now_ms;
      used_ = 0;
    }
    if (used_ < per_second_) {
      ++used_;
      return true;
    }
    ++suppressed_;
    return false;
  }

  // Events held back since the last call, then resets the count.
  uint64_t take_suppressed() {
    const uint64_t n = suppressed_;
    suppressed_ = 0;
    return n;
  }

 private:
  uint32_t per_second_;
  uint64_t window_start_ = 0;
  uint32_t used_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace spoad::util
