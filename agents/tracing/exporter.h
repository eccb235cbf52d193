// The tracing agent's span exporter: queues finished spans (each already encoded as one
// OTLP/JSON span object), groups them into batches and sends each batch as one OTLP
// ExportTraceServiceRequest, over OTLP/HTTP with JSON bodies (POST, optionally gzip:
// http_sink.h), or as one JSON line in a file (file_sink.h). Its options, and how the OTEL_*
// environment and the YAML set them, are in exporter_options.h. Everything runs on the
// worker's libuv loop and never blocks it.
//
// A batch leaves when max_batch spans wait or flush_interval_ms after its oldest span was
// queued. OTLP/HTTP: at most 2 requests at once (a batch waiting for its retry counts); success
// is a 2xx. Transport errors (refused, reset, timeout...) and HTTP 429, 502, 503, 504 are
// retried with backoff (retry_initial_ms doubling up to retry_max_ms, +/-20% jitter; a
// Retry-After header in seconds or as a date replaces it, up to 300 s); the batch keeps its
// spans. Any other status drops the batch (failed_exports), logged once per status.
//
// Kind::kFile: each batch is one line (the same request object) appended to `file`, one batch
// at a time.
//
// Memory is bounded: at most `max_queue` spans and `max_queue_bytes` bytes of encoded spans are
// held in total (waiting, being sent, waiting for a retry); a span that would pass either is
// refused, counted, and logged at most once a second. When the receiver is down,
// batches are retried with exponential backoff and export resumes by itself once it is back.
//
// Metrics (metrics/arena.h, in the scope given to the constructor): spans exported, spans
// dropped by reason, the spans and bytes held, export requests by outcome and their latency
// (agents/tracing/README.md, "Metrics"). All are written on the loop thread: curl's callbacks
// and the file write's completion run there; the file write itself (thread pool) counts
// nothing.
#pragma once

#include <spdlog/logger.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "agents/tracing/exporter_options.h"
#include "metrics/arena.h"
#include "metrics/counter_list.h"
#include "util/rate_limit.h"
#include "util/uv_handle.h"

namespace spoad::agents::tracing {

class HttpSink;
class FileSink;

// A snapshot of the exporter's figures (stats()), each declared once here with its key in
// the tracing agent's `show stat json` (metrics/counter_list.h). X(field, type, key):
#define SPOAD_EXPORTER_STATS(X)                                                           \
  /* spans accepted by enqueue(); the receiver accepted (2xx) or written to the file */   \
  X(enqueued, uint64_t, "spans_enqueued")                                                 \
  X(exported, uint64_t, "spans_exported")                                                 \
  /* spans refused by enqueue() (queue full, or stopped), of which for max_queue_bytes */ \
  X(dropped, uint64_t, "spans_dropped")                                                   \
  X(dropped_bytes, uint64_t, "spans_dropped_bytes")                                       \
  /* accepted spans lost later: rejected batch, stop timeout */                           \
  X(failed_spans, uint64_t, "spans_failed")                                               \
  /* batches dropped: non-retryable status, write error */                                \
  X(failed_exports, uint64_t, "export_failures")                                          \
  /* HTTP requests (retries included) or file writes; requests that were retries */       \
  X(export_requests, uint64_t, "export_requests")                                         \
  X(retries, uint64_t, "export_retries")                                                  \
  /* spans in memory now (waiting, in flight, in retry), their encoded size in bytes */   \
  X(queued, uint64_t, "spans_queued")                                                     \
  X(queued_bytes, uint64_t, "spans_queued_bytes")                                         \
  /* request start to completion, successful requests */                                  \
  X(export_latency_avg_ms, uint64_t, "export_latency_avg_ms")                             \
  X(export_latency_max_ms, uint64_t, "export_latency_max_ms")

class SpanExporter {
 public:
  struct Stats {
    SPOAD_EXPORTER_STATS(SPOAD_JSON_FIELD_AS)
  };

  // `loop` may be nullptr (configuration check): the exporter then touches no loop, refuses
  // every span and stop() calls `done` at once. Starts no I/O before the first span. Throws
  // std::runtime_error if curl cannot be set up. `metrics`: where its series are registered
  // (the agent's scope; by default a private arena nobody reads).
  SpanExporter(uv_loop_t* loop, ExporterOptions opts, std::shared_ptr<spdlog::logger> log,
               const metrics::Scope& metrics = metrics::Scope());
  // Safe at any time; without stop() (or before its `done`), spans not yet exported are lost,
  // `done` is not called, and the loop's handles are closed (freed on the loop's next run).
  ~SpanExporter();
  SpanExporter(const SpanExporter&) = delete;
  SpanExporter& operator=(const SpanExporter&) = delete;

  // Queues one finished span, already encoded as an OTLP/JSON span object ({"traceId":...}).
  // O(1): never blocks, never sends from inside the call. Returns false when the span was
  // dropped (max_queue spans already held, max_queue_bytes would be passed, or stop()
  // finished), and counts it in `dropped` (and `dropped_bytes` for the byte budget).
  // With Kind::kNone every span is counted in `enqueued` and discarded.
  bool enqueue(std::string span_json);

  // Soft-stop: sends what is queued at once (batches of max_batch, retries allowed) for at
  // most timeout_ms, then abandons the rest (counted in failed_spans), closes the timers and
  // the HTTP connections, and calls `done` on the loop (or at once with nothing to do). Spans
  // enqueued meanwhile are still sent. Call once.
  void stop(std::function<void()> done);

  Stats stats() const;

  const ExporterOptions& options() const { return opts_; }

 private:
  struct Queued {
    std::string json;
    uint64_t t_ms;  // uv_now() when queued
  };
  // How many spans, and how many bytes of them, a batch or a file write holds.
  struct Held {
    size_t spans = 0;
    size_t bytes = 0;
  };
  struct Batch;
  // The timers, on the heap: a timer closed after the exporter died must not touch it.
  // Each timer's extra is the method it calls.
  using Timers = util::UvHandles<SpanExporter, void (SpanExporter::*)()>;
  using Timer = Timers::Box;

  bool slot_free() const;
  void schedule();
  void pump();
  void send_batch(size_t n);
  std::string build_body(size_t n, Held* taken);
  void release(const Held& h);
  void drop(const char* why, size_t bytes);
  void start_http(Batch* b);
  void on_http_done(Batch* b, int result, long status);
  void retry_later(Batch* b, uint64_t delay_ms);
  void on_retry_timer();
  void start_file(std::string body, const Held& h);
  void on_file_done(const Held& h, uint64_t started_ns, int error, const char* step);
  void finish_batch(Batch* b);
  void on_stop_deadline();
  void close_all();
  bool file_busy() const;
  // Closes everything once stop() was called and nothing is queued or in flight.
  void close_when_drained();
  // Calls stop()'s `done` once everything is closed.
  void finish_stop_if_closed();
  void note_latency(uint64_t ms);
  // Counts a completed export request (`outcome` one of Series' req_*) and its duration.
  void note_request(metrics::Counter& outcome, uint64_t started_ns);
  void held_changed();  // sets the queue gauges from held_
  void warn(const std::string& msg);

  Timer* make_timer(void (SpanExporter::*fn)());
  void close_timer(Timer*& t);
  static void on_timer(uv_timer_t* t);
  void on_timer_closed(Timer* t);

  uv_loop_t* loop_;
  ExporterOptions opts_;
  std::shared_ptr<spdlog::logger> log_;
  std::string endpoint_shown_;             // opts_.endpoint as util::printable shows it
  std::string body_prefix_, body_suffix_;  // the request around the spans
  std::shared_ptr<int> token_;  // callbacks that may outlive the exporter hold a weak_ptr

  std::deque<Queued> queue_;
  Held held_;                                            // in memory: queue_ plus every batch
  std::vector<std::unique_ptr<Batch>> batches_;          // in flight or waiting for a retry
  std::unique_ptr<HttpSink> http_;                       // Kind::kOtlpHttp
  std::unique_ptr<FileSink> file_;                       // Kind::kFile
  Timers timers_{this, &SpanExporter::on_timer_closed};  // not yet freed (closing ones too)
  Timer* flush_timer_ = nullptr;
  Timer* retry_timer_ = nullptr;
  Timer* stop_timer_ = nullptr;

  bool stopping_ = false;  // stop() called
  bool closing_ = false;   // closing the handles; nothing new starts
  bool finished_ = false;  // `done` called (or due)
  bool http_closed_ = false;
  std::function<void()> stop_done_;

  // Prometheus series (see the top of this file). Stats' exported, dropped, dropped_bytes and
  // failed_spans are read from them.
  metrics::Scope metrics_;  // keeps the arena the handles below point into alive
  struct Series {
    metrics::Counter exported;               // spoad_tracing_spans_exported_total
    metrics::Counter dropped_queue_full;     // spoad_tracing_spans_dropped_total{reason=...}
    metrics::Counter dropped_queue_bytes;    //   refused by enqueue(): max-queue, max-queue-bytes,
    metrics::Counter dropped_stopping;       //   after stop() finished (or without a loop)
    metrics::Counter dropped_export_failed;  // accepted, then lost: batch rejected, write error
    metrics::Counter dropped_stop_timeout;   // accepted, then abandoned by stop()'s deadline
    metrics::Gauge queue_spans;              // spoad_tracing_queue_spans
    metrics::Gauge queue_bytes;              // spoad_tracing_queue_bytes
    metrics::Counter req_success;            // spoad_tracing_export_requests_total{outcome=...}
    metrics::Counter req_http_error;
    metrics::Counter req_network_error;
    metrics::Counter req_timeout;
    metrics::Counter req_cancelled;
    metrics::Counter req_file_error;
    metrics::Histogram latency;  // spoad_tracing_export_seconds
    // Registers every series in `m` (exporter_metrics.cpp).
    void register_in(const metrics::Scope& m);
  };
  Series series_;
  Stats stats_;
  uint64_t latency_sum_ms_ = 0;
  uint64_t latency_n_ = 0;
  bool failing_ = false;  // the last export failed; log when it works again
  std::set<long> logged_statuses_;
  util::RateLimiter log_limiter_{2};
  util::RateLimiter drop_limiter_{1};
  std::minstd_rand rng_;
};

}  // namespace spoad::agents::tracing
