// Counters of one agent server in one worker: the SPOE figures of HAProxy (applets, idles,
// nb_waiting, nb_processed, errors) seen from the agent's side.
//
// Each one is a handle into the worker's metrics arena (metrics/arena.h), registered through
// the agent's metrics::Scope (labels agent="<name>",type="<agent type>"): the worker's CLI
// (`show stat`) reads them here, the master reads the same values from the shared arena for
// `/metrics`. Updating one is a relaxed load and store of a 64-bit word: nothing more on the
// request path than the plain integers they replace.
//
// Each counter is declared once, in SPOAD_RUNTIME_COUNTERS or SPOAD_RUNTIME_BUDGETS below
// (metrics/counter_list.h): its field, its Prometheus family and help, its `show stat` key.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "metrics/arena.h"
#include "metrics/counter_list.h"
#include "spop/types.h"

// X(field, handle, family, help, `show stat` key), in registration order (the order of the
// families in /metrics). `show stat` lays its columns out in its own order (cli/worker_cli.cpp).
#define SPOAD_RUNTIME_COUNTERS(X)                                                                \
  /* open connections ("applets") */                                                             \
  X(conns_current, Gauge, "spoad_connections", "Open connections from HAProxy.", "applets")      \
  /* ... with no NOTIFY in flight ("idles") */                                                   \
  X(conns_idle, Gauge, "spoad_connections_idle",                                                 \
    "Open connections with no NOTIFY waiting for its ACK.", "idles")                             \
  X(conns_total, Counter, "spoad_connections_total", "Connections accepted.", "cum_conns")       \
  X(hellos, Counter, "spoad_hello_total",                                                        \
    "HAPROXY-HELLO frames answered, health checks included.", "")                                \
  X(healthchecks, Counter, "spoad_healthchecks_total", "Health-check HAPROXY-HELLO frames.",     \
    "healthchecks")                                                                              \
  X(notify_total, Counter, "spoad_notify_total",                                                 \
    "Complete NOTIFY frames received (a fragmented one counts once).", "cum_notify")             \
  X(messages_total, Counter, "spoad_messages_total", "SPOE messages in the NOTIFY frames.",      \
    "cum_messages")                                                                              \
  X(ack_total, Counter, "spoad_ack_total", "ACK frames sent.", "nb_processed")                   \
  /* NOTIFYs waiting for their ACK ("nb_waiting") */                                             \
  X(inflight, Gauge, "spoad_notify_in_flight", "NOTIFY frames waiting for their ACK.",           \
    "nb_waiting")                                                                                \
  X(fragmented_total, Counter, "spoad_notify_fragmented_total",                                  \
    "NOTIFY frames that arrived in fragments.", "fragmented")                                    \
  X(aborted_total, Counter, "spoad_notify_aborted_total",                                        \
    "Fragmented NOTIFY frames HAProxy aborted.", "aborted")                                      \
  X(disconnects_received, Counter, "spoad_disconnects_received_total",                           \
    "HAPROXY-DISCONNECT frames received.", "disconnects_received")                               \
  X(handed_off, Counter, "spoad_connections_handed_off_total",                                   \
    "Connections handed to the next generation at a reload.", "handed_off")                      \
  X(adopted, Counter, "spoad_connections_adopted_total",                                         \
    "Connections taken over from the previous generation.", "adopted")                           \
  /* frames read whole (every fragment counts), frames queued for sending */                     \
  X(frames_in, Counter, "spoad_frames_received_total", "SPOP frames received.", "")              \
  X(frames_out, Counter, "spoad_frames_sent_total", "SPOP frames sent.", "")                     \
  X(bytes_in, Counter, "spoad_received_bytes_total", "Bytes received from HAProxy.", "bytes_in") \
  X(bytes_out, Counter, "spoad_sent_bytes_total", "Bytes sent to HAProxy.", "bytes_out")

// Budgets (see server.h), one family spoad_budget_refusals_total{budget=...}: X(field, label),
// the field's name being its `show stat` key. Registered last (after the labelled families of
// Stats), in this order. Bytes held in reassembly are read from Server::reassembly_budget().
#define SPOAD_RUNTIME_BUDGETS(X)                                                              \
  X(reassembly_refused, "reassembly")      /* connections closed: max-reassembly-bytes */     \
  X(fragment_timeouts, "fragment-timeout") /* closed: NOTIFY not whole in timeout.fragment */ \
  X(max_conn_reached, "max-connections")   /* times accepting paused at max-connections */    \
  X(accept_errors, "accept-error")         /* accept() failures (EMFILE, ENFILE, ...) */      \
  X(ack_too_big, "ack-too-big")            /* replies that did not fit the frame size */
// X(field, label) -> the field, its enumerator in Stats::Id.
#define SPOAD_RUNTIME_BUDGET_FIELD(field, label) ::spoad::metrics::Counter field;
#define SPOAD_RUNTIME_BUDGET_ID(field, label) field,

namespace spoad::runtime {

struct Stats {
  // Registers every handle in `scope`'s arena, and keeps the arena alive as long as itself. A
  // default-constructed Stats (no scope) counts in a private arena of its own.
  explicit Stats(const metrics::Scope& scope = metrics::Scope());

 private:
  metrics::Scope scope_;  // first: the handles below point into its arena

 public:
  SPOAD_RUNTIME_COUNTERS(SPOAD_METRIC_FIELD)
  SPOAD_RUNTIME_BUDGETS(SPOAD_RUNTIME_BUDGET_FIELD)

  // NOTIFY read -> its ACK encoded for sending, microseconds (spoad_processing_seconds).
  metrics::Histogram proc_time;
  uint64_t proc_time_max_us = 0;  // this process only: not exported

  // AGENT-DISCONNECT frames sent, by status code: index = code for 0-13, 14 for any other.
  std::array<metrics::Counter, 15> disconnects_sent;
  // Protocol errors (AGENT-DISCONNECT with a status other than 0, plus timeouts), by kind:
  // index = status code for 0-13, 14 for any other status, 15 for a fragment timeout.
  static constexpr size_t kFragmentTimeoutKind = 15;
  std::array<metrics::Counter, 16> protocol_errors;

  // One enumerator per counter of the two lists, for outputs in an order of their own.
  enum class Id {
    SPOAD_RUNTIME_COUNTERS(SPOAD_METRIC_ID) SPOAD_RUNTIME_BUDGETS(SPOAD_RUNTIME_BUDGET_ID)
  };
  // Its `show stat` key ("" when not shown there) and its value now.
  static std::string_view key(Id id);
  uint64_t get(Id id) const;

  // Index of a status in disconnects_sent and protocol_errors.
  static size_t status_index(spop::Status s) {
    const auto c = static_cast<uint32_t>(s);
    return c <= 13 ? c : 14;
  }
  // The label value of a status index: the SPOP status code's meaning (SPOE.txt 3.4) in
  // kebab-case ("normal", "io-error", "bad-frame-size", ...), "other" for 14.
  static std::string_view status_name(size_t index);
  // The `show stat` key of disconnects_sent[index]: "disconnect_" + a short name ("normal",
  // "io", "too_big", ...), "disconnect_other" for 14.
  static std::string_view disconnect_key(size_t index);

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
