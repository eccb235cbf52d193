// Clock helpers shared by agents and the runtime. Header-only, no state.
#pragma once

#include <chrono>
#include <cstdint>

namespace spoad::util {

// The wall clock (CLOCK_REALTIME), in milliseconds since the Unix epoch.
inline int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Milliseconds elapsed on the steady clock since `t0` (fractional).
inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace spoad::util
