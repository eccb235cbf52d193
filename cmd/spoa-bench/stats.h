// What one event loop measured, merged over loops at the end. Counters are plain integers:
// each Stats belongs to one loop (thread) until the loops have ended.
#pragma once

#include <cstdint>
#include <map>

#include "histogram.h"

namespace spoad::bench {

// Error kinds. Any non-zero count makes spoa-bench exit with status 1.
struct Errors {
  uint64_t connect_failed = 0;    // connect() failed, or did not complete within --timeout
  uint64_t hello_timeout = 0;     // no AGENT-HELLO within --timeout of the connection
  uint64_t hello_rejected = 0;    // AGENT-HELLO invalid (parse_agent_hello) or not a HELLO
  uint64_t agent_disconnect = 0;  // AGENT-DISCONNECT received (statuses in Stats)
  uint64_t unexpected_close = 0;  // EOF, reset or write error before we said DISCONNECT
  uint64_t unknown_ack = 0;       // ACK for a stream-id/frame-id never sent
  uint64_t duplicate_ack = 0;     // second ACK for a NOTIFY already acknowledged
  uint64_t timeout = 0;           // NOTIFY without ACK within --timeout
  uint64_t protocol_error = 0;    // malformed or unexpected frame, invalid ACK actions
  uint64_t frame_too_big = 0;     // the NOTIFY exceeds the agent's max-frame-size

  uint64_t total() const {
    return connect_failed + hello_timeout + hello_rejected + agent_disconnect + unexpected_close +
           unknown_ack + duplicate_ack + timeout + protocol_error + frame_too_big;
  }
  void merge(const Errors& o);
};

struct Stats {
  Errors errors;
  std::map<uint32_t, uint64_t> disconnect_status;  // AGENT-DISCONNECT status-code -> count

  // Measured NOTIFYs: those sent after the warm-up, before the end of the run.
  uint64_t sent = 0;
  uint64_t acks = 0;
  Histogram latency_ns;  // send to ACK, per measured NOTIFY, nanoseconds

  uint64_t warmup_sent = 0;
  uint64_t warmup_acks = 0;
  uint64_t late_acks = 0;          // ACKs that came after their NOTIFY timed out (not errors)
  uint64_t skipped_frames = 0;     // frames of unknown type, skipped (SPOE.txt 3.2.3)
  uint64_t connections_ready = 0;  // connections whose HELLO succeeded
  uint64_t no_pipelining = 0;      // of which without "pipelining" (then depth 1)
  uint64_t bytes_out = 0;
  uint64_t bytes_in = 0;

  void merge(const Stats& o);
};

}  // namespace spoad::bench
