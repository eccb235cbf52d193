// Counters of one agent server in one worker: the SPOE figures of HAProxy (applets, idles,
// nb_waiting, nb_processed, errors) seen from the agent's side.
//
// Each one is a handle into the worker's metrics arena (metrics/arena.h), registered through
// the agent's metrics::Scope (labels agent="<name>",type="<agent type>"): the worker's CLI
// (`show stat`) reads them here, the master reads the same values from the shared arena for
// `/metrics`. Updating one is a relaxed load and store of a 64-bit word: nothing more on the
// request path than the plain integers they replace.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "metrics/arena.h"
#include "spop/types.h"

namespace spoad::runtime {

struct Stats {
  // Registers every handle in `scope`'s arena. A default-constructed Stats (no scope) counts in
  // a private arena of its own.
  explicit Stats(const metrics::Scope& scope = metrics::Scope());

  metrics::Gauge conns_current;           // open connections ("applets"): spoad_connections
  metrics::Gauge conns_idle;              // ... with no NOTIFY in flight ("idles")
  metrics::Counter conns_total;           // accepted since start: spoad_connections_total
  metrics::Counter hellos;                // HAPROXY-HELLOs answered (health checks included)
  metrics::Counter healthchecks;          // HELLO with healthcheck=true
  metrics::Counter notify_total;          // complete NOTIFYs received (fragments count once)
  metrics::Counter messages_total;        // messages inside them
  metrics::Counter ack_total;             // ACKs sent
  metrics::Gauge inflight;                // NOTIFYs waiting for their ACK ("nb_waiting")
  metrics::Counter fragmented_total;      // NOTIFYs that arrived in fragments
  metrics::Counter aborted_total;         // fragmented NOTIFYs HAProxy aborted
  metrics::Counter disconnects_received;  // HAPROXY-DISCONNECT frames
  metrics::Counter handed_off;            // connections given to the next generation (reload)
  metrics::Counter adopted;               // connections taken over from the previous one
  metrics::Counter frames_in;             // frames read whole (every fragment counts)
  metrics::Counter frames_out;            // frames queued for sending
  metrics::Counter bytes_in;
  metrics::Counter bytes_out;
  // NOTIFY read -> its ACK encoded for sending, microseconds (spoad_processing_seconds).
  metrics::Histogram proc_time;
  uint64_t proc_time_max_us = 0;  // this process only: not exported

  // AGENT-DISCONNECT frames sent, by status code: index = code for 0-13, 14 for any other.
  std::array<metrics::Counter, 15> disconnects_sent;
  // Protocol errors (AGENT-DISCONNECT with a status other than 0, plus timeouts), by kind:
  // index = status code for 0-13, 14 for any other status, 15 for a fragment timeout.
  static constexpr size_t kFragmentTimeoutKind = 15;
  std::array<metrics::Counter, 16> protocol_errors;

  // Budgets (see server.h): spoad_budget_refusals_total{budget=...}. Bytes held in reassembly
  // are read from Server::reassembly_budget().
  metrics::Counter reassembly_refused;  // connections closed: max-reassembly-bytes used up
  metrics::Counter fragment_timeouts;   // connections closed: NOTIFY not whole in timeout.fragment
  metrics::Counter max_conn_reached;    // times accepting paused at max-connections
  metrics::Counter accept_errors;       // accept() failures (EMFILE, ENFILE, ENOBUFS, ...)
  metrics::Counter ack_too_big;         // replies that did not fit the frame size (sent empty)

  // Index of a status in disconnects_sent and protocol_errors.
  static size_t status_index(spop::Status s) {
    const auto c = static_cast<uint32_t>(s);
    return c <= 13 ? c : 14;
  }
  // The label value of a status index: the SPOP status code's meaning (SPOE.txt 3.4) in
  // kebab-case ("normal", "io-error", "bad-frame-size", ...), "other" for 14.
  static std::string_view status_name(size_t index);

  // Records one NOTIFY processed in `us` microseconds.
  void processed(uint64_t us) {
    proc_time.observe_us(us);
    if (us > proc_time_max_us) proc_time_max_us = us;
  }
  uint64_t errors_total() const;
  uint64_t proc_time_total_us() const { return proc_time.sum_us(); }
  uint64_t proc_time_avg_us() const {
    return proc_time.count() ? proc_time.sum_us() / proc_time.count() : 0;
  }
};

}  // namespace spoad::runtime
