// Clock helpers shared by agents, the runtime and the supervisor. Header-only, no state.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <ctime>

namespace spoad::util {

// The wall clock (CLOCK_REALTIME), in milliseconds since the Unix epoch.
inline int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The wall clock (CLOCK_REALTIME), in whole seconds since the Unix epoch.
inline uint64_t wall_s() {
  return static_cast<uint64_t>(std::time(nullptr));
}

// CLOCK_MONOTONIC in milliseconds: the clock of libuv's uv_hrtime(), the same in every process
// of the machine (so a value can be compared across processes), not the loop's cached uv_now().
inline uint64_t monotonic_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000;
}

// Milliseconds elapsed on the steady clock since `t0` (fractional).
inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace spoad::util
