// Counters of one agent server in one worker: the SPOE figures of HAProxy (applets, idles,
// nb_waiting, nb_processed, errors) seen from the agent's side.
#pragma once

#include <array>
#include <cstdint>

#include "spop/types.h"

namespace spoad::runtime {

struct Stats {
  uint64_t conns_current = 0;         // open connections ("applets")
  uint64_t conns_idle = 0;            // open connections with no NOTIFY in flight ("idles")
  uint64_t conns_total = 0;           // accepted since start
  uint64_t healthchecks = 0;          // HELLO with healthcheck=true
  uint64_t notify_total = 0;          // complete NOTIFYs received (fragments count once)
  uint64_t messages_total = 0;        // messages inside them
  uint64_t ack_total = 0;             // ACKs sent
  uint64_t inflight = 0;              // NOTIFYs waiting for their ACK ("nb_waiting")
  uint64_t fragmented_total = 0;      // NOTIFYs that arrived in fragments
  uint64_t aborted_total = 0;         // fragmented NOTIFYs HAProxy aborted
  uint64_t ack_too_big = 0;           // replies that did not fit the frame size (sent empty)
  uint64_t disconnects_received = 0;  // HAPROXY-DISCONNECT frames
  uint64_t handed_off = 0;            // connections given to the next generation at a reload
  uint64_t adopted = 0;               // connections taken over from the previous generation
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t proc_time_total_us = 0;  // NOTIFY received -> ACK queued, summed
  uint64_t proc_time_max_us = 0;
  // AGENT-DISCONNECT frames sent, by status code: index = code for 0-13, 14 for any other.
  std::array<uint64_t, 15> disconnects_sent{};
  // Protocol errors (AGENT-DISCONNECT with a status other than 0, plus timeouts).
  uint64_t errors_total = 0;
  // Budgets (see server.h). Bytes held in reassembly are read from Server::reassembly_budget().
  uint64_t reassembly_refused = 0;  // connections closed: max-reassembly-bytes used up
  uint64_t fragment_timeouts = 0;   // connections closed: NOTIFY not whole in timeout.fragment
  uint64_t max_conn_reached = 0;    // times accepting paused at max-connections
  uint64_t accept_errors = 0;       // accept() failures (EMFILE, ENFILE, ENOBUFS, ...)

  static size_t status_index(spop::Status s) {
    const auto c = static_cast<uint32_t>(s);
    return c <= 13 ? c : 14;
  }
  uint64_t proc_time_avg_us() const { return ack_total ? proc_time_total_us / ack_total : 0; }
};

}  // namespace spoad::runtime
