#include "agents/tracing/tracing.h"

#include <charconv>
#include <cstdlib>

#include "agents/tracing/event.h"
#include "agents/tracing/span.h"
#include "agents/tracing/span_tree.h"
#include "spop/reader.h"
#include "util/escape.h"

namespace spoad::agents::tracing {

namespace {

constexpr uint64_t kMaxAttributeValueLimit = 16u << 20;

// OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, else OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, into `limit`
// (OpenTelemetry counts characters; spoad reads the number as bytes, which is never more).
void apply_attribute_limit_env(size_t* limit, std::vector<std::string>* problems) {
  for (const char* name :
       {"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"}) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    const std::string_view s(v);
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec == std::errc() && p == s.data() + s.size() && n > 0 && n <= kMaxAttributeValueLimit)
      *limit = static_cast<size_t>(n);
    else
      problems->push_back(std::string(name) + "=\"" + util::printable(s) + "\": expected 1.." +
                          std::to_string(kMaxAttributeValueLimit) + "; ignored");
    return;
  }
}

std::unique_ptr<agent::AgentOptions> parse(config::Options& o) {
  auto opts = std::make_unique<TracingOptions>();
  opts->sampling = o.number("sampling", 1.0, 0.0, 1.0);
  opts->env_warnings = apply_otel_env(opts->exporter, [](const char* k) { return std::getenv(k); });
  apply_attribute_limit_env(&opts->attribute_value_limit, &opts->env_warnings);
  opts->attribute_value_limit = static_cast<size_t>(
      o.size("attribute-value-limit", opts->attribute_value_limit, 1, kMaxAttributeValueLimit));
  opts->tracestate_max_bytes =
      static_cast<size_t>(o.size("tracestate-max-bytes", opts->tracestate_max_bytes, 0, 8192));
  config::Options ex = o.map("exporter");
  parse_exporter_options(ex, &opts->exporter);
  ex.check_unknown();
  return opts;
}

std::unique_ptr<agent::Agent> create(const agent::Context& ctx, const agent::AgentOptions& o) {
  return std::make_unique<TracingAgent>(ctx, static_cast<const TracingOptions&>(o));
}

}  // namespace

SPOAD_REGISTER_AGENT(tracing, "tracing",
                     "OpenTelemetry spans for each SPOE event, exported over OTLP/HTTP", parse,
                     create);

TracingAgent::TracingAgent(const agent::Context& ctx, const TracingOptions& opts)
    : ctx_(ctx), opts_(opts) {}

TracingAgent::~TracingAgent() = default;

void TracingAgent::start() {
  if (ctx_.log)
    for (const std::string& w : opts_.env_warnings)
      ctx_.log->warn("{}", w);
  if (ctx_.loop && !exporter_)
    exporter_ = std::make_unique<SpanExporter>(ctx_.loop, opts_.exporter, ctx_.log, ctx_.metrics);
}

void TracingAgent::stop(std::function<void()> done) {
  if (!exporter_) {
    done();
    return;
  }
  exporter_->stop(std::move(done));
}

void TracingAgent::emit(std::string span_json) {
  ++spans_ended_;
  if (sink_)
    sink_(std::move(span_json));
  else if (exporter_)
    exporter_->enqueue(std::move(span_json));
}

metrics::Counter& TracingAgent::event_spans(size_t stage, std::string_view name) {
  if (!event_registered_[stage]) {
    event_registered_[stage] = true;
    event_spans_[stage] = ctx_.metrics.counter(
        "spoad_tracing_spans_total",
        "Spans ended and handed to the exporter, by the SPOE message (event) that ended them",
        {{"event", name}});
  }
  return event_spans_[stage];
}

void TracingAgent::warn(const std::string& what) {
  ++bad_messages_;
  if (!log_limiter_.allow(ctx_.loop ? uv_now(ctx_.loop) : 0)) return;
  if (const uint64_t n = log_limiter_.take_suppressed(); n > 0)
    ctx_.log->warn("{} similar messages suppressed", n);
  ctx_.log->warn("{}", what);
}

void TracingAgent::note_limits(const Span& s) {
  if (!s.truncated_attrs && !s.dropped_attrs) return;
  attributes_truncated_ += s.truncated_attrs;
  attributes_dropped_ += s.dropped_attrs;
  if (!ctx_.log || !attr_log_limiter_.allow(ctx_.loop ? uv_now(ctx_.loop) : 0)) return;
  attr_log_limiter_.take_suppressed();  // the totals say it all
  ctx_.log->warn(
      "span \"{}\": {} attribute values cut to attribute-value-limit ({} bytes), {} attributes "
      "dropped ({} cut, {} dropped so far)",
      s.name, s.truncated_attrs, opts_.attribute_value_limit, s.dropped_attrs,
      attributes_truncated_, attributes_dropped_);
}

std::string_view TracingAgent::limited_tracestate(std::string_view ts, std::string* storage) {
  if (ts.empty()) return {};
  const TraceStateVerdict v = limit_tracestate(ts, opts_.tracestate_max_bytes, storage);
  if (v == TraceStateVerdict::kKept) return *storage;
  const bool dropped = v == TraceStateVerdict::kDropped;
  ++(dropped ? tracestate_dropped_ : tracestate_truncated_);
  if (ctx_.log && ts_log_limiter_.allow(ctx_.loop ? uv_now(ctx_.loop) : 0)) {
    ts_log_limiter_.take_suppressed();
    ctx_.log->warn(
        "tracestate of {} bytes {} (W3C: at most 32 members; tracestate-max-bytes {}): \"{}\" "
        "({} dropped, {} truncated so far)",
        ts.size(), dropped ? "dropped" : "truncated", opts_.tracestate_max_bytes,
        util::printable(ts, 64), tracestate_dropped_, tracestate_truncated_);
  }
  return *storage;
}

void TracingAgent::on_message(const spop::Message& msg, agent::Reply& reply) {
  const Stage stage = stage_of(msg.name);
  if (stage == Stage::kUnknown) {
    warn("unknown message \"" + util::printable(msg.name, 64) + "\": ignored");
    return;
  }
  const Event e(msg);
  if (e.now < 0) {
    warn("message \"" + util::printable(msg.name, 64) +
         "\" without a \"now\" argument (date(0,us))");
    return;
  }
  constexpr auto kTxn = spop::Scope::kTransaction;
  const uint64_t now = static_cast<uint64_t>(e.now);
  if (stage == Stage::kClientSession) {
    reply.set_var(kTxn, "t_cs", spop::Value::Int64(e.now));
    spans_started_ += 2;  // HAProxy session, Client session
    return;
  }

  // The request's context: from the variables, or decided now, by the first event that sees
  // the request's headers (W3C Trace Context: an incoming traceparent is continued, its
  // sampled flag honoured).
  RequestContext c;
  int64_t root_start = e.t_cs >= 0 ? e.t_cs : e.t0;
  std::string ts_storage;
  std::string_view trace_state;  // limited: W3C's 32 members, tracestate-max-bytes
  if (e.ctx) {
    c = *e.ctx;
    trace_state = limited_tracestate(e.ts, &ts_storage);
  } else if (e.has_traceparent || stage == Stage::kFrontendTcpRequest ||
             stage == Stage::kFrontendHttpRequest) {
    const std::optional<TraceParent> tp =
        e.traceparent.empty() ? std::nullopt : parse_traceparent(e.traceparent);
    if (tp) {
      c.trace_id = tp->trace_id;
      c.remote_parent = tp->parent_id;
      c.flags = tp->flags & 1;
      ++requests_continued_;
    } else {
      c.trace_id = ids_.trace_id();
      c.flags = ids_.sample(opts_.sampling) ? 1 : 0;
    }
    c.seed = ids_.u64();
    reply.set_var(kTxn, "ctx", spop::Value::String(c.encode()));
    reply.set_var(kTxn, "sampled", spop::Value::Bool(c.sampled()));
    // W3C: the tracestate is read only with a valid traceparent.
    if (tp) trace_state = limited_tracestate(e.tracestate, &ts_storage);
    if (!trace_state.empty()) reply.set_var(kTxn, "ts", spop::Value::String(trace_state));
    if (root_start < 0) {
      root_start = e.now;
      reply.set_var(kTxn, "t0", spop::Value::Int64(e.now));
      ++spans_started_;  // HAProxy session
    }
    if (c.sampled())
      ++requests_sampled_;
    else
      ++requests_unsampled_;
  } else {
    warn("message \"" + util::printable(msg.name, 64) +
         "\" without a trace context: is an earlier event missing from the SPOE file?");
    return;
  }
  if (!c.sampled()) return;

  Presence p = e.presence();
  auto make = [&](SpanKindId which, int64_t start, Span* s) {
    s->name = span_name(which);
    s->trace_id = c.trace_id;
    s->span_id = span_id(c.seed, which);
    s->kind = span_kind(which);
    s->start_us = static_cast<uint64_t>(start);
    s->end_us = now;
    s->trace_state = trace_state;
    s->value_limit = opts_.attribute_value_limit;
    auto [parent, follows] = parent_of(which, p);
    if (parent)
      s->parent_id = span_id(c.seed, *parent);
    else
      s->parent_id = c.remote_parent;
    if (follows && parent) s->link_span_id = s->parent_id;
  };
  auto http_attrs = [&e](Span& s) {
    s.add("http.request.method", e.method);
    s.add("url.path", e.path);
    s.add("url.query", e.query);
    s.add("server.address", e.host);
    s.add("client.address", e.client);
    if (e.client_port >= 0) s.add("client.port", e.client_port);
    s.add("network.protocol.version", e.version);
    s.add("haproxy.frontend.name", e.frontend);
    s.add("haproxy.unique_id", e.unique_id);
  };
  auto finish = [&](SpanKindId which, int64_t start, auto&& decorate) {
    Span s;
    make(which, start, &s);
    decorate(s);
    note_limits(s);
    emit(encode_span(s));
  };
  auto none = [](Span&) {};
  const uint64_t ended_before = spans_ended_;
  const bool failed = e.status >= 500 || (stage == Stage::kHttpResponse && e.status < 100);
  auto status = [&](Span& s) {
    if (e.status >= 0) s.add("http.response.status_code", e.status);
    if (failed) {
      s.error = true;
      s.status_message = e.status >= 500 ? "HTTP 5xx" : "no HTTP status";
    }
  };

  switch (stage) {
    case Stage::kFrontendTcpRequest:
      reply.set_var(kTxn, "t_fth", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kFrontendHttpRequest:
      if (p.fth)
        finish(SpanKindId::kFrontendTcpRequest, e.t_fth, [&](Span& s) {
          s.add("client.address", e.client);
          if (e.client_port >= 0) s.add("client.port", e.client_port);
        });
      reply.set_var(kTxn, "t_fhr", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kBackendTcpRequest:
      if (p.fhr) finish(SpanKindId::kFrontendHttpRequest, e.t_fhr, http_attrs);
      reply.set_var(kTxn, "t_bht", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kBackendHttpRequest:
      if (p.bht)
        finish(SpanKindId::kBackendTcpRequest, e.t_bht,
               [&](Span& s) { s.add("haproxy.frontend.name", e.frontend); });
      reply.set_var(kTxn, "t_bhr", spop::Value::Int64(e.now));
      // The server's spans become children of the Backend HTTP request.
      reply.set_var(kTxn, "traceparent",
                    spop::Value::String(format_traceparent(
                        c.trace_id, span_id(c.seed, SpanKindId::kBackendHttpRequest), c.flags)));
      ++spans_started_;
      break;
    case Stage::kServerSession:
      if (p.bhr)
        finish(SpanKindId::kBackendHttpRequest, e.t_bhr, [&](Span& s) {
          s.add("http.request.method", e.method);
          s.add("url.path", e.path);
          s.add("url.query", e.query);
          s.add("haproxy.server.name", e.server);
          s.add("haproxy.backend.name", e.backend);
        });
      reply.set_var(kTxn, "t_ss", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kTcpResponse:
      reply.set_var(kTxn, "t_tr", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kHttpResponse: {
      // on-http-response ends every span still open.
      if (p.fth && !p.fhr) finish(SpanKindId::kFrontendTcpRequest, e.t_fth, none);
      if (p.fhr && !p.bht) finish(SpanKindId::kFrontendHttpRequest, e.t_fhr, http_attrs);
      if (p.bht && !p.bhr) finish(SpanKindId::kBackendTcpRequest, e.t_bht, none);
      if (p.bhr && !p.ss) finish(SpanKindId::kBackendHttpRequest, e.t_bhr, none);
      if (p.tr) finish(SpanKindId::kTcpResponse, e.t_tr, none);
      ++spans_started_;
      finish(SpanKindId::kHttpResponse, e.now, status);
      if (p.ss)
        finish(SpanKindId::kServerSession, e.t_ss, [&](Span& s) {
          s.add("haproxy.backend.name", e.backend);
          s.add("haproxy.server.name", e.server);
          status(s);
        });
      if (p.cs)
        finish(SpanKindId::kClientSession, e.t_cs, [&](Span& s) {
          s.add("client.address", e.client);
          if (e.client_port >= 0) s.add("client.port", e.client_port);
          s.add("haproxy.frontend.name", e.frontend);
          status(s);
        });
      finish(SpanKindId::kHaproxySession, root_start >= 0 ? root_start : e.now, [&](Span& s) {
        http_attrs(s);
        s.add("haproxy.backend.name", e.backend);
        s.add("haproxy.server.name", e.server);
        status(s);
      });
      break;
    }
    default:
      break;
  }
  if (const uint64_t n = spans_ended_ - ended_before; n > 0)
    event_spans(static_cast<size_t>(stage), msg.name) += n;
}

void TracingAgent::stats(nlohmann::json& out) const {
  {
    const TracingAgent& s = *this;
    SPOAD_TRACING_COUNTERS(SPOAD_JSON_PUT_AS)
  }
  if (exporter_) {
    const SpanExporter::Stats s = exporter_->stats();
    SPOAD_EXPORTER_STATS(SPOAD_JSON_PUT_AS)
  }
}

}  // namespace spoad::agents::tracing
