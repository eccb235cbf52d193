#include "runtime/stats.h"

namespace spoad::runtime {

namespace {

// SPOE.txt 3.4, the status codes of a DISCONNECT frame, as label values.
constexpr std::string_view kStatusNames[15] = {
    "normal",                       // 0
    "io-error",                     // 1  I/O error
    "timeout",                      // 2  a timeout occurred
    "frame-too-big",                // 3  frame is too big
    "invalid-frame",                // 4  invalid frame received
    "no-version",                   // 5  version value not found
    "no-frame-size",                // 6  max-frame-size value not found
    "no-capabilities",              // 7  capabilities value not found
    "bad-version",                  // 8  unsupported version
    "bad-frame-size",               // 9  max-frame-size too big or too small
    "fragmentation-not-supported",  // 10 payload fragmentation is not supported
    "interlaced-frames",            // 11 invalid interlaced frames
    "frame-id-not-found",           // 12 frame-id not found
    "resource-error",               // 13 resource allocation error
    "other",                        // any other code
};

}  // namespace

std::string_view Stats::status_name(size_t index) {
  return index < 15 ? kStatusNames[index] : "other";
}

Stats::Stats(const metrics::Scope& m)
    : conns_current(m.gauge("spoad_connections", "Open connections from HAProxy.")),
      conns_idle(m.gauge("spoad_connections_idle",
                         "Open connections with no NOTIFY waiting for its ACK.")),
      conns_total(m.counter("spoad_connections_total", "Connections accepted.")),
      hellos(
          m.counter("spoad_hello_total", "HAPROXY-HELLO frames answered, health checks included.")),
      healthchecks(m.counter("spoad_healthchecks_total", "Health-check HAPROXY-HELLO frames.")),
      notify_total(m.counter("spoad_notify_total",
                             "Complete NOTIFY frames received (a fragmented one counts once).")),
      messages_total(m.counter("spoad_messages_total", "SPOE messages in the NOTIFY frames.")),
      ack_total(m.counter("spoad_ack_total", "ACK frames sent.")),
      inflight(m.gauge("spoad_notify_in_flight", "NOTIFY frames waiting for their ACK.")),
      fragmented_total(
          m.counter("spoad_notify_fragmented_total", "NOTIFY frames that arrived in fragments.")),
      aborted_total(
          m.counter("spoad_notify_aborted_total", "Fragmented NOTIFY frames HAProxy aborted.")),
      disconnects_received(
          m.counter("spoad_disconnects_received_total", "HAPROXY-DISCONNECT frames received.")),
      handed_off(m.counter("spoad_connections_handed_off_total",
                           "Connections handed to the next generation at a reload.")),
      adopted(m.counter("spoad_connections_adopted_total",
                        "Connections taken over from the previous generation.")),
      frames_in(m.counter("spoad_frames_received_total", "SPOP frames received.")),
      frames_out(m.counter("spoad_frames_sent_total", "SPOP frames sent.")),
      bytes_in(m.counter("spoad_received_bytes_total", "Bytes received from HAProxy.")),
      bytes_out(m.counter("spoad_sent_bytes_total", "Bytes sent to HAProxy.")),
      proc_time(m.histogram("spoad_processing_seconds",
                            "Time from a NOTIFY read whole to its ACK encoded for sending.")) {
  for (size_t i = 0; i < disconnects_sent.size(); ++i)
    disconnects_sent[i] = m.counter("spoad_disconnects_sent_total", "AGENT-DISCONNECT frames sent.",
                                    {{"status", status_name(i)}});
  for (size_t i = 1; i < protocol_errors.size(); ++i)  // never "normal"
    protocol_errors[i] = m.counter(
        "spoad_protocol_errors_total",
        "Connections ended by a protocol error or a timeout (an AGENT-DISCONNECT other than "
        "normal).",
        {{"kind",
          i == kFragmentTimeoutKind ? std::string_view("fragment-timeout") : status_name(i)}});
  auto budget = [&](std::string_view name) {
    return m.counter("spoad_budget_refusals_total",
                     "Refusals by a budget: reassembly, max-connections, accept-error, "
                     "fragment-timeout, ack-too-big.",
                     {{"budget", name}});
  };
  reassembly_refused = budget("reassembly");
  fragment_timeouts = budget("fragment-timeout");
  max_conn_reached = budget("max-connections");
  accept_errors = budget("accept-error");
  ack_too_big = budget("ack-too-big");
}

uint64_t Stats::errors_total() const {
  uint64_t n = 0;
  for (const metrics::Counter& c : protocol_errors)
    n += c.get();
  return n;
}

}  // namespace spoad::runtime
