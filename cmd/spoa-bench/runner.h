// One event loop of spoa-bench (one per --threads) and its share of the connections. It
// owns the timers, decides when NOTIFYs may be sent and when the run ends, and keeps the
// Stats of its connections.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "options.h"
#include "stats.h"

namespace spoad::bench {

class Connection;

// The part of a run that every runner shares. Times are uv_hrtime() values, nanoseconds.
struct RunPlan {
  const Options* opts = nullptr;
  sockaddr_storage addr{};                  // resolved TCP address (unused for unix sockets)
  uint64_t start_ns = 0;                    // when the connections are opened
  uint64_t warmup_end_ns = 0;               // NOTIFYs sent from here on are measured
  uint64_t run_end_ns = 0;                  // no NOTIFY sent from here on; 0 = no time limit
  uint64_t timeout_ns = 0;                  // --timeout
  std::atomic<uint64_t>* budget = nullptr;  // measured NOTIFYs left to send (--requests)
  std::atomic<int>* signals = nullptr;      // SIGINT/SIGTERM received
  std::atomic<int>* reported = nullptr;     // errors printed on stderr so far
};

class Runner {
 public:
  // Runs connections [first, first + count) of the run. `engine_id` goes in every HELLO.
  Runner(const RunPlan& plan, int first, int count, std::string engine_id);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Runs until every connection is closed.
  void run();

  const Stats& stats() const { return stats_; }
  // When the measured window ended (nanoseconds): the last connection stopped working, or
  // the run was interrupted.
  uint64_t window_end_ns() const { return window_end_ns_; }
  bool interrupted() const { return interrupted_; }

  // ---- For the connections ----
  const RunPlan& plan() const { return plan_; }
  const Options& opts() const { return *plan_.opts; }
  Stats& mutable_stats() { return stats_; }
  uv_loop_t* loop() { return &loop_; }
  const std::string& engine_id() const { return engine_id_; }

  // Takes the right to send one more NOTIFY at `now`. False once the run is over (time, the
  // --requests budget or a signal). `*measured` tells whether the NOTIFY counts.
  bool claim(uint64_t now, bool* measured);

  // Reports an error of connection `conn` on stderr (only the first ones unless --verbose).
  void report(int conn, const char* kind, const std::string& detail);

  // A connection stopped working (closing or closed); called once per connection.
  void on_inactive();
  // A connection's handle is closed; called once per connection.
  void on_closed();

 private:
  static void on_tick(uv_timer_t* t);
  static void on_end(uv_timer_t* t);
  void end_run(uint64_t now);
  void interrupt(uint64_t now);

  RunPlan plan_;
  std::string engine_id_;
  uv_loop_t loop_;
  uv_timer_t tick_;  // periodic: signals, deadlines, timeouts
  uv_timer_t end_;   // one-shot at run_end_ns
  std::vector<std::unique_ptr<Connection>> conns_;
  Stats stats_;
  bool running_ = true;  // NOTIFYs may still be sent
  bool interrupted_ = false;
  int signals_seen_ = 0;
  size_t active_ = 0;  // connections still working
  size_t closed_ = 0;
  uint64_t window_end_ns_ = 0;
};

}  // namespace spoad::bench
