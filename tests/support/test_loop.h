// Test support (tests only): a libuv loop for one test, and ways to run a loop until a
// condition holds. Tests wait for events this way; every deadline only guards against a hang.
#pragma once

#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace spoad::testing {

// Milliseconds a test waits for an event before it gives up: a guard against a hang, not a
// claim about speed (a loaded machine must pass), hence generous.
constexpr uint64_t kGuardMs = 60'000;

// Runs `loop` until `pred` holds or `timeout_ms` passed; true if it holds. A 1 ms timer keeps
// the loop turning so that `pred` is checked often. Tests wait for events this way; the
// timeout only guards against a hang.
inline bool run_until(uv_loop_t* loop, const std::function<bool()>& pred,
                      uint64_t timeout_ms = kGuardMs) {
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(
      &tick, [](uv_timer_t*) {}, 1, 1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  bool ok = pred();
  while (!ok && std::chrono::steady_clock::now() < deadline) {
    uv_run(loop, UV_RUN_ONCE);
    ok = pred();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);  // runs the close
  return ok;
}

// Runs `loop` for `ms` milliseconds. Not a way to wait for something: use run_until with the
// event itself.
inline void run_for(uv_loop_t* loop, uint64_t ms) {
  run_until(
      loop, [] { return false; }, ms);
}

// A loop for one test. The destructor runs it until nothing is left (at most kGuardMs) and
// checks that every handle was closed (a test failure names those left open).
class TestLoop {
 public:
  TestLoop() { uv_loop_init(&loop_); }
  ~TestLoop() {
    drain();
    const int rc = uv_loop_close(&loop_);
    if (rc != 0) {
      std::string open;
      uv_walk(
          &loop_,
          [](uv_handle_t* h, void* arg) {
            *static_cast<std::string*>(arg) += std::string(" ") + uv_handle_type_name(h->type);
          },
          &open);
      ADD_FAILURE() << "uv_loop_close: " << uv_strerror(rc) << "; handles left:" << open;
    }
  }
  uv_loop_t* get() { return &loop_; }
  // Runs the loop until no handle or request is left, for at most `max_ms`. True if so.
  bool drain(uint64_t max_ms = kGuardMs) {
    // A 1 ms timer that does not keep the loop alive wakes each uv_run up, so that the
    // deadline is checked.
    uv_timer_t tick;
    uv_timer_init(&loop_, &tick);
    uv_timer_start(
        &tick, [](uv_timer_t*) {}, 1, 1);
    uv_unref(reinterpret_cast<uv_handle_t*>(&tick));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(max_ms);
    while (uv_loop_alive(&loop_) && std::chrono::steady_clock::now() < deadline)
      uv_run(&loop_, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);  // runs the close
    return !uv_loop_alive(&loop_);
  }

 private:
  uv_loop_t loop_;
};

}  // namespace spoad::testing
