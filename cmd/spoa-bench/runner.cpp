#include "runner.h"

#include <cstdio>

#include "connection.h"

namespace spoad::bench {

namespace {

// Period of the tick timer, milliseconds: the resolution of --timeout and of signal handling.
constexpr uint64_t kTickMs = 10;
// Errors shown on stderr without --verbose.
constexpr int kMaxReported = 20;

}  // namespace

Runner::Runner(const RunPlan& plan, int first, int count, std::string engine_id)
    : plan_(plan), engine_id_(std::move(engine_id)) {
  uv_loop_init(&loop_);
  uv_timer_init(&loop_, &tick_);
  tick_.data = this;
  uv_timer_init(&loop_, &end_);
  end_.data = this;
  for (int i = 0; i < count; ++i)
    conns_.push_back(std::make_unique<Connection>(*this, first + i));
}

Runner::~Runner() {
  conns_.clear();
  uv_loop_close(&loop_);
}

void Runner::run() {
  const uint64_t now = uv_hrtime();
  active_ = conns_.size();
  uv_timer_start(&tick_, on_tick, kTickMs, kTickMs);
  if (plan_.run_end_ns != 0) {
    const uint64_t left_ns = plan_.run_end_ns > now ? plan_.run_end_ns - now : 0;
    uv_timer_start(&end_, on_end, (left_ns + 999'999) / 1'000'000, 0);
  }
  for (auto& c : conns_)
    c->start(now);
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (window_end_ns_ == 0) window_end_ns_ = uv_hrtime();
}

bool Runner::claim(uint64_t now, bool* measured) {
  if (!running_) return false;
  if (plan_.run_end_ns != 0 && now >= plan_.run_end_ns) return false;
  *measured = now >= plan_.warmup_end_ns;
  if (*measured && plan_.budget != nullptr) {
    uint64_t left = plan_.budget->load(std::memory_order_relaxed);
    do {
      if (left == 0) return false;
    } while (!plan_.budget->compare_exchange_weak(left, left - 1, std::memory_order_relaxed));
  }
  return true;
}

void Runner::report(int conn, const char* kind, const std::string& detail) {
  const int n = plan_.reported->fetch_add(1, std::memory_order_relaxed);
  if (opts().verbose || n < kMaxReported)
    std::fprintf(stderr, "spoa-bench: connection %d: %s: %s\n", conn, kind, detail.c_str());
  else if (n == kMaxReported)
    std::fprintf(stderr, "spoa-bench: further errors are counted, not shown (-v shows them)\n");
}

void Runner::on_inactive() {
  if (active_ > 0) --active_;
  if (active_ == 0 && window_end_ns_ == 0) window_end_ns_ = uv_hrtime();
}

void Runner::on_closed() {
  if (++closed_ < conns_.size()) return;
  // Every connection is closed: release the timers and let uv_run() return.
  uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&end_), nullptr);
}

void Runner::on_tick(uv_timer_t* t) {
  auto* r = static_cast<Runner*>(t->data);
  const uint64_t now = uv_hrtime();
  const int sig = r->plan_.signals->load(std::memory_order_relaxed);
  if (sig > r->signals_seen_) {
    r->signals_seen_ = sig;
    if (!r->interrupted_) r->interrupt(now);
    if (sig >= 2) {  // a second signal: do not wait for the agents
      for (auto& c : r->conns_)
        c->close();
      return;
    }
  }
  if (r->running_ && r->plan_.run_end_ns != 0 && now >= r->plan_.run_end_ns) r->end_run(now);
  // check_timers() may close the last connection, which closes this timer; that is safe:
  // the connections stay allocated until the runner is destroyed.
  for (auto& c : r->conns_)
    c->check_timers(now);
}

void Runner::on_end(uv_timer_t* t) {
  auto* r = static_cast<Runner*>(t->data);
  const uint64_t now = uv_hrtime();
  if (now < r->plan_.run_end_ns) {  // libuv timers have 1 ms steps: wait for the rest
    uv_timer_start(t, on_end, (r->plan_.run_end_ns - now + 999'999) / 1'000'000, 0);
    return;
  }
  if (r->running_) r->end_run(now);
}

void Runner::end_run(uint64_t now) {
  running_ = false;
  for (auto& c : conns_)
    c->on_run_end(now);
}

void Runner::interrupt(uint64_t now) {
  interrupted_ = true;
  running_ = false;
  if (window_end_ns_ == 0) window_end_ns_ = now;
  for (auto& c : conns_)
    c->begin_close(now);
}

}  // namespace spoad::bench
