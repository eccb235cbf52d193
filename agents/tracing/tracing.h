// tracing: OpenTelemetry spans for each SPOE event, exported over OTLP/HTTP (JSON) or to a file.
//
// The spans follow the tree drawn in README.md (one trace per HTTP request):
//
//   HAProxy session                      on-client-session .. on-http-response   SERVER
//   ├─ Client session                    on-client-session .. on-http-response   SERVER
//   │  └─ Frontend TCP request           on-frontend-tcp-request .. fe-http-req  SERVER
//   │     └> Frontend HTTP request       on-frontend-http-request .. be-tcp-req  SERVER
//   │        └> Backend TCP request      on-backend-tcp-request .. be-http-req   CLIENT
//   │           └> Backend HTTP request  on-backend-http-request .. server-sess  CLIENT
//   └─ Server session                    on-server-session .. on-http-response   CLIENT
//      └─ TCP response                   on-tcp-response .. on-http-response     INTERNAL
//         └> HTTP response               on-http-response                        INTERNAL
//   (└─ child of; └> follows from: the predecessor is the parent and also a link, as
//    OpenTelemetry's OpenTracing shim maps "follows from")
//
// The agent keeps no per-request memory, so that any worker can take any event (HAProxy 3.x
// pools connections and SO_REUSEPORT spreads them): each event's ACK stores what later events
// need in transaction variables, and later messages send them back as arguments:
//
//   txn.<pfx>.ctx       trace id, span-id seed, remote parent span, flags (66 hex digits)
//   txn.<pfx>.sampled   bool, for the `event ... if { var(txn.<pfx>.sampled) -m bool }` guards
//   txn.<pfx>.ts        the incoming tracestate, if any
//   txn.<pfx>.t_cs .. t_tr   start time of each open span (microseconds, HAProxy's date(0,us))
//   txn.<pfx>.t0        start of the root span when there is no client-session event
//   txn.<pfx>.traceparent    the header HAProxy sends to the server (Backend HTTP request)
//
// Each span is encoded and queued when the event that ends it arrives; on-http-response ends
// every span still open. Span ids derive from the seed (trace_context.h), so the worker that
// ends a span can name its parent without having seen it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/agent.h"
#include "agent/registry.h"
#include "agents/tracing/exporter.h"
#include "agents/tracing/trace_context.h"
#include "metrics/arena.h"
#include "metrics/counter_list.h"
#include "util/rate_limit.h"

namespace spoad::agents::tracing {

struct Span;

struct TracingOptions : agent::AgentOptions {
  double sampling = 1.0;  // share of requests without an incoming traceparent that are traced
  // Bytes of a string attribute value (a longer one is cut on a UTF-8 boundary and counted):
  // `attribute-value-limit`, else OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT or
  // OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT (read as bytes).
  size_t attribute_value_limit = 4096;
  // Bytes of the tracestate kept (`tracestate-max-bytes`; W3C: at least 512 should pass).
  size_t tracestate_max_bytes = 512;
  ExporterOptions exporter;
  std::vector<std::string> env_warnings;  // OTEL_* values apply_otel_env() could not use
};

// The agent's counters, each declared once with its key in `show stat json`
// (metrics/counter_list.h): X(member, type, key).
#define SPOAD_TRACING_COUNTERS(X)                                                           \
  X(requests_sampled_, uint64_t, "requests_sampled")                                        \
  X(requests_unsampled_, uint64_t, "requests_unsampled")                                    \
  X(requests_continued_, uint64_t, "requests_continued") /* with an incoming traceparent */ \
  X(spans_started_, uint64_t, "spans_started")                                              \
  X(spans_ended_, uint64_t, "spans_ended")                                                  \
  /* no context where one was needed, unknown message */                                    \
  X(bad_messages_, uint64_t, "bad_messages")                                                \
  /* string values cut to attribute_value_limit; attributes beyond Span::kMaxAttributes */  \
  X(attributes_truncated_, uint64_t, "attributes_truncated")                                \
  X(attributes_dropped_, uint64_t, "attributes_dropped")                                    \
  /* members removed for tracestate_max_bytes; malformed, more than 32 members, or */       \
  /* nothing fitted */                                                                      \
  X(tracestate_truncated_, uint64_t, "tracestate_truncated")                                \
  X(tracestate_dropped_, uint64_t, "tracestate_dropped")

class TracingAgent : public agent::Agent {
 public:
  TracingAgent(const agent::Context& ctx, const TracingOptions& opts);
  ~TracingAgent() override;

  void on_message(const spop::Message& msg, agent::Reply& reply) override;
  void start() override;
  void stop(std::function<void()> done) override;
  void stats(nlohmann::json& out) const override;

  // The spans a message produced, for tests without an exporter (encoded OTLP/JSON objects).
  void set_span_sink(std::function<void(std::string)> sink) { sink_ = std::move(sink); }

 private:
  void emit(std::string span_json);
  void warn(const std::string& what);
  // Counts what the limits did to a span and logs it at most once a second.
  void note_limits(const Span& s);
  std::string_view limited_tracestate(std::string_view ts, std::string* storage);
  // The spoad_tracing_spans_total{event="<name>"} series of message kind `stage` (an index
  // below kEvents), registered the first time it ends a span.
  metrics::Counter& event_spans(size_t stage, std::string_view name);

  agent::Context ctx_;
  TracingOptions opts_;
  IdGenerator ids_;
  std::unique_ptr<SpanExporter> exporter_;
  std::function<void(std::string)> sink_;
  util::RateLimiter log_limiter_{10};
  util::RateLimiter attr_log_limiter_{1};
  util::RateLimiter ts_log_limiter_{1};

  SPOAD_TRACING_COUNTERS(SPOAD_JSON_FIELD_AS)  // see above

  // Spans ended, by the message that ended them: one series per known message name (there
  // are kEvents; others are refused as bad messages, so the label values are bounded).
  static constexpr size_t kEvents = 8;
  metrics::Counter event_spans_[kEvents];
  bool event_registered_[kEvents] = {};
};

}  // namespace spoad::agents::tracing
