#include "agents/tracing/tracing.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstdlib>

#include "agents/tracing/span.h"
#include "spop/reader.h"
#include "util/escape.h"

namespace spoad::agents::tracing {

namespace {

enum class Stage {
  kClientSession,
  kFrontendTcpRequest,
  kFrontendHttpRequest,
  kBackendTcpRequest,
  kBackendHttpRequest,
  kServerSession,
  kTcpResponse,
  kHttpResponse,
  kUnknown,
};
static_assert(static_cast<size_t>(Stage::kUnknown) == 8, "TracingAgent::kEvents");

Stage stage_of(std::string_view name) {
  if (name == "trace-client-session") return Stage::kClientSession;
  if (name == "trace-frontend-tcp-request") return Stage::kFrontendTcpRequest;
  if (name == "trace-frontend-http-request") return Stage::kFrontendHttpRequest;
  if (name == "trace-backend-tcp-request") return Stage::kBackendTcpRequest;
  if (name == "trace-backend-http-request") return Stage::kBackendHttpRequest;
  if (name == "trace-server-session") return Stage::kServerSession;
  if (name == "trace-tcp-response") return Stage::kTcpResponse;
  if (name == "trace-http-response") return Stage::kHttpResponse;
  return Stage::kUnknown;
}

using S = SpanKindId;

const char* span_name(S s) {
  switch (s) {
    case S::kHaproxySession:
      return "HAProxy session";
    case S::kClientSession:
      return "Client session";
    case S::kFrontendTcpRequest:
      return "Frontend TCP request";
    case S::kFrontendHttpRequest:
      return "Frontend HTTP request";
    case S::kBackendTcpRequest:
      return "Backend TCP request";
    case S::kBackendHttpRequest:
      return "Backend HTTP request";
    case S::kServerSession:
      return "Server session";
    case S::kTcpResponse:
      return "TCP response";
    case S::kHttpResponse:
      return "HTTP response";
  }
  return "?";
}

Kind span_kind(S s) {
  switch (s) {
    case S::kHaproxySession:
    case S::kClientSession:
    case S::kFrontendTcpRequest:
    case S::kFrontendHttpRequest:
      return Kind::kServer;
    case S::kBackendTcpRequest:
    case S::kBackendHttpRequest:
    case S::kServerSession:
      return Kind::kClient;
    default:
      return Kind::kInternal;
  }
}

// Which spans of the request exist (were started), as the start-time variables tell.
struct Presence {
  bool cs = false, fth = false, fhr = false, bht = false, bhr = false, ss = false, tr = false;
};

// The parent of span `s` and whether it "follows from" it (then it is also a link). The tree
// adapts to the events configured: a span whose predecessor was not traced hangs from the
// closest ancestor that was (the lean configuration only has the root, the Frontend HTTP
// request and the HTTP response).
std::pair<std::optional<S>, bool> parent_of(S s, const Presence& p) {
  const S session = p.cs ? S::kClientSession : S::kHaproxySession;
  switch (s) {
    case S::kHaproxySession:
      return {std::nullopt, false};
    case S::kClientSession:
      return {S::kHaproxySession, false};
    case S::kFrontendTcpRequest:
      return {session, false};
    case S::kFrontendHttpRequest:
      if (p.fth) return {S::kFrontendTcpRequest, true};
      return {session, false};
    case S::kBackendTcpRequest:
      if (p.fhr) return {S::kFrontendHttpRequest, true};
      return {session, false};
    case S::kBackendHttpRequest:
      if (p.bht) return {S::kBackendTcpRequest, true};
      if (p.fhr) return {S::kFrontendHttpRequest, true};
      return {session, false};
    case S::kServerSession:
      return {S::kHaproxySession, false};
    case S::kTcpResponse:
      if (p.ss) return {S::kServerSession, false};
      return {S::kHaproxySession, false};
    case S::kHttpResponse:
      if (p.tr) return {S::kTcpResponse, true};
      if (p.ss) return {S::kServerSession, false};
      return {S::kHaproxySession, false};
  }
  return {std::nullopt, false};
}

std::string_view text(const spop::Value& v) {
  if (v.type == spop::DataType::kString || v.type == spop::DataType::kBinary) return v.bytes;
  return {};
}

// Splits "/path?query" (capture.req.uri) into its parts.
void split_uri(std::string_view uri, std::string_view* path, std::string_view* query) {
  const size_t q = uri.find('?');
  *path = uri.substr(0, q);
  *query = q == std::string_view::npos ? std::string_view() : uri.substr(q + 1);
}

}  // namespace

// The arguments of one message, by name (see config/spoe-tracing.cfg).
struct TracingAgent::Event {
  int64_t now = -1;
  std::optional<RequestContext> ctx;
  bool has_traceparent = false;  // the message carries the header (possibly absent: NULL)
  std::string_view traceparent, tracestate, ts;
  int64_t t_cs = -1, t0 = -1, t_fth = -1, t_fhr = -1, t_bht = -1, t_bhr = -1, t_ss = -1, t_tr = -1;
  std::string_view method, path, query, host, version, frontend, backend, server, unique_id;
  std::string client;
  int64_t client_port = -1;
  int64_t status = -1;

  explicit Event(const spop::Message& msg) {
    for (const spop::KV& kv : spop::args(msg)) {
      const std::string_view n = kv.name;
      const spop::Value& v = kv.value;
      auto num = [&v](int64_t* out) {
        if (v.is_integer()) *out = v.as_int64();
      };
      if (n == "now")
        num(&now);
      else if (n == "ctx")
        ctx = RequestContext::decode(text(v));
      else if (n == "traceparent") {
        has_traceparent = true;
        traceparent = text(v);
      } else if (n == "tracestate")
        tracestate = text(v);
      else if (n == "ts")
        ts = text(v);
      else if (n == "t_cs")
        num(&t_cs);
      else if (n == "t0")
        num(&t0);
      else if (n == "t_fth")
        num(&t_fth);
      else if (n == "t_fhr")
        num(&t_fhr);
      else if (n == "t_bht")
        num(&t_bht);
      else if (n == "t_bhr")
        num(&t_bhr);
      else if (n == "t_ss")
        num(&t_ss);
      else if (n == "t_tr")
        num(&t_tr);
      else if (n == "method")
        method = text(v);
      else if (n == "path")
        path = text(v);
      else if (n == "query")
        query = text(v);
      else if (n == "uri")
        split_uri(text(v), &path, &query);
      else if (n == "host")
        host = text(v);
      else if (n == "version") {
        version = text(v);
        if (version.starts_with("HTTP/")) version.remove_prefix(5);  // capture.req.ver
      } else if (n == "frontend")
        frontend = text(v);
      else if (n == "backend")
        backend = text(v);
      else if (n == "server")
        server = text(v);
      else if (n == "unique_id")
        unique_id = text(v);
      else if (n == "client_port")
        num(&client_port);
      else if (n == "status")
        num(&status);
      else if (n == "client") {
        char buf[INET6_ADDRSTRLEN] = "";
        if (v.type == spop::DataType::kIpv4 && v.bytes.size() == 4)
          inet_ntop(AF_INET, v.bytes.data(), buf, sizeof(buf));
        else if (v.type == spop::DataType::kIpv6 && v.bytes.size() == 16)
          inet_ntop(AF_INET6, v.bytes.data(), buf, sizeof(buf));
        client = v.type == spop::DataType::kString ? std::string(v.bytes) : std::string(buf);
      }
    }
  }

  Presence presence() const {
    return {t_cs >= 0, t_fth >= 0, t_fhr >= 0, t_bht >= 0, t_bhr >= 0, t_ss >= 0, t_tr >= 0};
  }
};

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
  auto make = [&](S which, int64_t start, Span* s) {
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
  auto finish = [&](S which, int64_t start, auto&& decorate) {
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
        finish(S::kFrontendTcpRequest, e.t_fth, [&](Span& s) {
          s.add("client.address", e.client);
          if (e.client_port >= 0) s.add("client.port", e.client_port);
        });
      reply.set_var(kTxn, "t_fhr", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kBackendTcpRequest:
      if (p.fhr) finish(S::kFrontendHttpRequest, e.t_fhr, http_attrs);
      reply.set_var(kTxn, "t_bht", spop::Value::Int64(e.now));
      ++spans_started_;
      break;
    case Stage::kBackendHttpRequest:
      if (p.bht)
        finish(S::kBackendTcpRequest, e.t_bht,
               [&](Span& s) { s.add("haproxy.frontend.name", e.frontend); });
      reply.set_var(kTxn, "t_bhr", spop::Value::Int64(e.now));
      // The server's spans become children of the Backend HTTP request.
      reply.set_var(kTxn, "traceparent",
                    spop::Value::String(format_traceparent(
                        c.trace_id, span_id(c.seed, S::kBackendHttpRequest), c.flags)));
      ++spans_started_;
      break;
    case Stage::kServerSession:
      if (p.bhr)
        finish(S::kBackendHttpRequest, e.t_bhr, [&](Span& s) {
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
      if (p.fth && !p.fhr) finish(S::kFrontendTcpRequest, e.t_fth, none);
      if (p.fhr && !p.bht) finish(S::kFrontendHttpRequest, e.t_fhr, http_attrs);
      if (p.bht && !p.bhr) finish(S::kBackendTcpRequest, e.t_bht, none);
      if (p.bhr && !p.ss) finish(S::kBackendHttpRequest, e.t_bhr, none);
      if (p.tr) finish(S::kTcpResponse, e.t_tr, none);
      ++spans_started_;
      finish(S::kHttpResponse, e.now, status);
      if (p.ss)
        finish(S::kServerSession, e.t_ss, [&](Span& s) {
          s.add("haproxy.backend.name", e.backend);
          s.add("haproxy.server.name", e.server);
          status(s);
        });
      if (p.cs)
        finish(S::kClientSession, e.t_cs, [&](Span& s) {
          s.add("client.address", e.client);
          if (e.client_port >= 0) s.add("client.port", e.client_port);
          s.add("haproxy.frontend.name", e.frontend);
          status(s);
        });
      finish(S::kHaproxySession, root_start >= 0 ? root_start : e.now, [&](Span& s) {
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
  out["requests_sampled"] = requests_sampled_;
  out["requests_unsampled"] = requests_unsampled_;
  out["requests_continued"] = requests_continued_;
  out["spans_started"] = spans_started_;
  out["spans_ended"] = spans_ended_;
  out["bad_messages"] = bad_messages_;
  out["attributes_truncated"] = attributes_truncated_;
  out["attributes_dropped"] = attributes_dropped_;
  out["tracestate_truncated"] = tracestate_truncated_;
  out["tracestate_dropped"] = tracestate_dropped_;
  if (exporter_) {
    const SpanExporter::Stats s = exporter_->stats();
    out["spans_enqueued"] = s.enqueued;
    out["spans_exported"] = s.exported;
    out["spans_failed"] = s.failed_spans;
    out["spans_dropped"] = s.dropped;
    out["spans_dropped_bytes"] = s.dropped_bytes;
    out["spans_queued"] = s.queued;
    out["spans_queued_bytes"] = s.queued_bytes;
    out["export_requests"] = s.export_requests;
    out["export_failures"] = s.failed_exports;
    out["export_retries"] = s.retries;
    out["export_latency_avg_ms"] = s.export_latency_avg_ms;
    out["export_latency_max_ms"] = s.export_latency_max_ms;
  }
}

}  // namespace spoad::agents::tracing
