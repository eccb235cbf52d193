// The exporter's Prometheus series (agents/tracing/README.md, "Metrics"): their names, help
// texts and labels, registered in one place.
#include <string_view>

#include "agents/tracing/exporter.h"

namespace spoad::agents::tracing {

namespace {

// Bounds of spoad_tracing_export_seconds, in microseconds: 250 us to 30 s (timeout's default
// is 10 s).
constexpr uint64_t kExportBoundsUs[] = {250,     500,     1000,     2500,    5000,   10000,
                                        25000,   50000,   100000,   250000,  500000, 1000000,
                                        2500000, 5000000, 10000000, 30000000};

}  // namespace

void SpanExporter::Series::register_in(const metrics::Scope& m) {
  exported = m.counter("spoad_tracing_spans_exported_total",
                       "Spans the receiver accepted (2xx) or written to the file");
  constexpr std::string_view kDropped =
      "Spans lost, by reason: refused by the queue (queue-full: max-queue, queue-bytes: "
      "max-queue-bytes, stopping), or dropped after they were queued (export-failed: batch "
      "rejected or not written, stop-timeout: abandoned at stop)";
  auto dropped = [&](std::string_view reason) {
    return m.counter("spoad_tracing_spans_dropped_total", kDropped, {{"reason", reason}});
  };
  dropped_queue_full = dropped("queue-full");
  dropped_queue_bytes = dropped("queue-bytes");
  dropped_stopping = dropped("stopping");
  dropped_export_failed = dropped("export-failed");
  dropped_stop_timeout = dropped("stop-timeout");
  queue_spans = m.gauge("spoad_tracing_queue_spans",
                        "Spans held in memory: queued, being sent, waiting for a retry");
  queue_bytes = m.gauge("spoad_tracing_queue_bytes", "Bytes of encoded spans held in memory");
  constexpr std::string_view kRequests =
      "Export requests completed (HTTP requests with retries, or file writes), by outcome";
  auto request = [&](std::string_view outcome) {
    return m.counter("spoad_tracing_export_requests_total", kRequests, {{"outcome", outcome}});
  };
  req_success = request("success");
  req_http_error = request("http-error");
  req_network_error = request("network-error");
  req_timeout = request("timeout");
  req_cancelled = request("cancelled");
  req_file_error = request("file-error");
  latency = m.histogram("spoad_tracing_export_seconds",
                        "Duration of completed export requests (not cancelled ones)", {},
                        kExportBoundsUs);
}

}  // namespace spoad::agents::tracing
