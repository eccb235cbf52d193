#include "agents/tracing/exporter.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <string_view>

#include "http/curl_loop.h"
#include "util/escape.h"
#include "util/log.h"
#include "version.h"

namespace spoad::agents::tracing {

namespace {

using KvList = std::vector<std::pair<std::string, std::string>>;

constexpr size_t kMaxHttpInFlight = 2;          // export requests at once (retry waits included)
constexpr uint64_t kMaxRetryAfterMs = 300'000;  // a longer Retry-After is cut to this
constexpr size_t kResponseExcerpt = 512;        // bytes of an error response kept for the log
constexpr int kGzipLevel = 1;                   // fastest: compression runs on the loop

// Bounds of spoad_tracing_export_seconds, in microseconds: 250 us to 30 s (timeout's default
// is 10 s).
constexpr uint64_t kExportBoundsUs[] = {250,     500,     1000,     2500,    5000,   10000,
                                        25000,   50000,   100000,   250000,  500000, 1000000,
                                        2500000, 5000000, 10000000, 30000000};

// A JSON string literal for `s`; each ill-formed UTF-8 byte becomes U+FFFD.
std::string json_string(std::string_view s) {
  std::string out;
  util::append_json_string(out, s);
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

bool equal_nocase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "%2C" -> ","; false on a malformed escape.
bool percent_decode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      *out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    *out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

// "k=v,k2=v2" as OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS write it (W3C
// baggage without properties): entries trimmed, keys and values percent-decoded, empty
// entries skipped. False (with `error`) on an entry without "=", an empty key or a bad escape.
bool parse_kv_list(std::string_view s, KvList* out, std::string* error) {
  out->clear();
  while (!s.empty()) {
    const size_t comma = s.find(',');
    const std::string_view entry = trim(s.substr(0, comma));
    s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    if (entry.empty()) continue;
    const size_t eq = entry.find('=');
    std::string k, v;
    if (eq == std::string_view::npos || !percent_decode(trim(entry.substr(0, eq)), &k) ||
        !percent_decode(trim(entry.substr(eq + 1)), &v) || k.empty()) {
      *error = "malformed entry \"" + util::printable(entry) + "\"";
      return false;
    }
    out->emplace_back(std::move(k), std::move(v));
  }
  return true;
}

// Replaces the value of `key` in `list`, or appends the pair.
void set_kv(KvList& list, const std::string& key, const std::string& value, bool nocase) {
  for (auto& [k, v] : list) {
    if (nocase ? equal_nocase(k, key) : k == key) {
      v = value;
      return;
    }
  }
  list.emplace_back(key, value);
}

// An HTTP header name (RFC 9110 token) and a value without control characters.
bool valid_header(std::string_view name, std::string_view value) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
    if (!ok || c == '\0') return false;
  }
  for (char c : value)
    if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) return false;
  return true;
}

bool valid_url(std::string_view u) {
  const bool http = u.starts_with("http://") && u.size() > 7;
  const bool https = u.starts_with("https://") && u.size() > 8;
  if (!http && !https) return false;
  for (char c : u)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  return true;
}

bool parse_u64(std::string_view s, uint64_t* v) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

const char* kind_name(ExporterOptions::Kind k) {
  switch (k) {
    case ExporterOptions::Kind::kOtlpHttp:
      return "otlp-http";
    case ExporterOptions::Kind::kFile:
      return "file";
    case ExporterOptions::Kind::kNone:
      return "none";
  }
  return "?";
}

// Compresses `in` as one gzip member (RFC 1952).
bool gzip_compress(std::string_view in, std::string* out) {
  z_stream z{};
  if (deflateInit2(&z, kGzipLevel, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return false;
  out->resize(deflateBound(&z, static_cast<uLong>(in.size())) + 32);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out->data());
  z.avail_out = static_cast<uInt>(out->size());
  const int rc = deflate(&z, Z_FINISH);
  out->resize(z.total_out);
  deflateEnd(&z);
  return rc == Z_STREAM_END;
}

bool retryable_status(long status) {
  return status == 429 || status == 502 || status == 503 || status == 504;
}

// Transport errors worth a retry: all but those a retry cannot fix.
bool retryable_curl(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_FAILED_INIT:
    case CURLE_ABORTED_BY_CALLBACK:
      return false;
    default:
      return true;
  }
}

size_t on_curl_write(char* data, size_t size, size_t n, void* userp) {
  auto* s = static_cast<std::string*>(userp);
  const size_t len = size * n;
  if (s->size() < kResponseExcerpt) s->append(data, std::min(len, kResponseExcerpt - s->size()));
  return len;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return {};
  return buf;
}

uint64_t now_ms_hr() {
  return uv_hrtime() / 1'000'000;
}

}  // namespace

// ---- options ----------------------------------------------------------------------------

std::vector<std::string> apply_otel_env(ExporterOptions& o,
                                        const std::function<const char*(const char*)>& env) {
  std::vector<std::string> problems;
  // The value of the first variable set (non-empty), with its name.
  auto get = [&](std::initializer_list<const char*> names)
      -> std::optional<std::pair<std::string, std::string>> {
    for (const char* n : names) {
      const char* v = env(n);
      if (v && *v) return std::make_pair(std::string(n), std::string(trim(v)));
    }
    return std::nullopt;
  };
  auto bad = [&](const std::string& name, const std::string& value, const std::string& why) {
    problems.push_back(name + "=\"" + util::printable(value) + "\": " + why + "; ignored");
  };

  if (auto v = get({"OTEL_SDK_DISABLED"}); v && equal_nocase(v->second, "true"))
    o.kind = ExporterOptions::Kind::kNone;
  if (auto v = get({"OTEL_TRACES_EXPORTER"})) {
    if (v->second == "none")
      o.kind = ExporterOptions::Kind::kNone;
    else if (v->second != "otlp")
      bad(v->first, v->second, "spoad exports with otlp (or none)");
  }

  if (auto v = get({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"})) {
    if (valid_url(v->second))
      o.endpoint = v->second;
    else
      bad(v->first, v->second, "expected an http:// or https:// URL");
  } else if (auto b = get({"OTEL_EXPORTER_OTLP_ENDPOINT"})) {
    std::string base = b->second;
    while (!base.empty() && base.back() == '/')
      base.pop_back();
    if (valid_url(base))
      o.endpoint = base + "/v1/traces";
    else
      bad(b->first, b->second, "expected an http:// or https:// URL");
  }

  if (auto v = get({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"})) {
    if (v->second == "grpc")
      bad(v->first, v->second, "spoad sends OTLP/HTTP with JSON bodies (http/json)");
  }

  // Resource attributes, then the service name, which wins over their service.name.
  if (auto v = get({"OTEL_RESOURCE_ATTRIBUTES"})) {
    KvList attrs;
    std::string err;
    if (!parse_kv_list(v->second, &attrs, &err)) {
      bad(v->first, v->second, err);
    } else {
      for (auto& [k, val] : attrs) {
        if (k == "service.name")
          o.service_name = val;
        else
          set_kv(o.resource_attributes, k, val, false);
      }
    }
  }
  if (auto v = get({"OTEL_SERVICE_NAME"})) o.service_name = v->second;

  for (const char* name : {"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"}) {
    auto v = get({name});
    if (!v) continue;
    KvList hs;
    std::string err;
    if (!parse_kv_list(v->second, &hs, &err)) {
      bad(v->first, v->second, err);
      continue;
    }
    auto invalid = std::find_if(hs.begin(), hs.end(),
                                [](const auto& h) { return !valid_header(h.first, h.second); });
    if (invalid != hs.end()) {
      bad(v->first, v->second, "invalid header \"" + util::printable(invalid->first) + "\"");
      continue;
    }
    for (auto& [k, val] : hs)
      set_kv(o.headers, k, val, true);
  }

  if (auto v = get({"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"})) {
    if (v->second == "gzip")
      o.gzip = true;
    else if (v->second == "none")
      o.gzip = false;
    else
      bad(v->first, v->second, "expected gzip or none");
  }

  // Milliseconds, greater than zero.
  auto millis = [&](std::initializer_list<const char*> names, uint64_t* out) {
    auto v = get(names);
    if (!v) return;
    uint64_t ms = 0;
    if (parse_u64(v->second, &ms) && ms > 0)
      *out = ms;
    else
      bad(v->first, v->second, "expected a positive number of milliseconds");
  };
  millis({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"}, &o.timeout_ms);
  millis({"OTEL_BSP_SCHEDULE_DELAY"}, &o.flush_interval_ms);
  auto count = [&](const char* name, size_t* out) {
    auto v = get({name});
    if (!v) return;
    uint64_t n = 0;
    if (parse_u64(v->second, &n) && n > 0)
      *out = n;
    else
      bad(v->first, v->second, "expected a positive integer");
  };
  count("OTEL_BSP_MAX_QUEUE_SIZE", &o.max_queue);
  count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &o.max_batch);
  return problems;
}

void parse_exporter_options(config::Options& o, ExporterOptions* out) {
  const std::string type = o.str("type", kind_name(out->kind));
  if (type == "otlp-http")
    out->kind = ExporterOptions::Kind::kOtlpHttp;
  else if (type == "file")
    out->kind = ExporterOptions::Kind::kFile;
  else if (type == "none")
    out->kind = ExporterOptions::Kind::kNone;
  else
    o.fail("type", "expected otlp-http, file or none, got \"" + util::printable(type) + "\"");

  if (auto e = o.str("endpoint")) {
    if (!valid_url(*e))
      o.fail("endpoint",
             "expected an http:// or https:// URL, got \"" + util::printable(*e) + "\"");
    out->endpoint = *e;
  }
  for (const std::string& h : o.str_list("headers")) {
    const size_t colon = h.find(':');
    const std::string name(trim(std::string_view(h).substr(0, colon)));
    const std::string value(colon == std::string::npos
                                ? std::string_view()
                                : trim(std::string_view(h).substr(colon + 1)));
    if (colon == std::string::npos || !valid_header(name, value))
      o.fail("headers", "expected \"Name: value\", got \"" + util::printable(h) + "\"");
    set_kv(out->headers, name, value, true);
  }
  out->gzip = o.boolean("gzip", out->gzip);
  out->file = o.str("file", out->file);
  out->max_batch = static_cast<size_t>(o.integer("max-batch", out->max_batch, 1, 100'000));
  out->flush_interval_ms = o.duration_ms("flush-interval", out->flush_interval_ms, 1, 3'600'000);
  out->max_queue = static_cast<size_t>(o.integer("max-queue", out->max_queue, 1, 10'000'000));
  out->max_queue_bytes =
      static_cast<size_t>(o.size("max-queue-bytes", out->max_queue_bytes, 1024, uint64_t{1} << 30));
  out->timeout_ms = o.duration_ms("timeout", out->timeout_ms, 1, 600'000);
  out->retry_initial_ms = o.duration_ms("retry-initial", out->retry_initial_ms, 1, 3'600'000);
  out->retry_max_ms = o.duration_ms("retry-max", out->retry_max_ms, 1, 86'400'000);
  if (out->retry_max_ms < out->retry_initial_ms) {
    o.fail(o.has("retry-max") ? "retry-max" : "retry-initial",
           "retry-max (" + std::to_string(out->retry_max_ms) + "ms) is below retry-initial (" +
               std::to_string(out->retry_initial_ms) + "ms)");
  }
  out->service_name = o.str("service-name", out->service_name);
  if (out->service_name.empty()) o.fail("service-name", "must not be empty");
  for (const std::string& a : o.str_list("resource-attributes")) {
    const size_t eq = a.find('=');
    const std::string key(trim(std::string_view(a).substr(0, eq)));
    if (eq == std::string::npos || key.empty())
      o.fail("resource-attributes", "expected \"key=value\", got \"" + util::printable(a) + "\"");
    if (key == "service.name") o.fail("resource-attributes", "set service.name with service-name");
    set_kv(out->resource_attributes, key, std::string(trim(std::string_view(a).substr(eq + 1))),
           false);
  }
  if (out->kind == ExporterOptions::Kind::kFile && out->file.empty())
    o.fail(o.has("type") ? "type" : "", "type file needs a file path in \"file\"");
  o.check_unknown();
}

// ---- exporter ---------------------------------------------------------------------------

// Allocated with new; freed by on_timer_closed(), which may run after the exporter is gone.
struct SpanExporter::Timer {
  SpanExporter* self = nullptr;  // nulled when the exporter is destroyed first
  void (SpanExporter::*fn)() = nullptr;
  bool closing = false;
  uv_timer_t t;
};

// One HTTP export: the request body and its curl handle, kept across retries.
struct SpanExporter::Batch {
  std::string body;
  size_t spans = 0;
  size_t bytes = 0;  // of the spans, counted in held_ until the batch ends
  uint64_t attempts = 0;
  uint64_t backoff_ms = 0;   // the next retry delay, before jitter
  bool waiting = false;      // waiting for a retry (else in flight)
  uint64_t retry_at_ms = 0;  // uv_now() of the retry
  uint64_t started_ns = 0;   // the current request's start (uv_hrtime)
  CURL* easy = nullptr;
  std::string response;  // the start of the response body, for the log
  char errbuf[CURL_ERROR_SIZE] = {};
  ~Batch() {
    if (easy) curl_easy_cleanup(easy);
  }
};

// One append to the file, run on libuv's thread pool: open, write, close.
struct SpanExporter::FileJob {
  uv_work_t req{};
  SpanExporter* self = nullptr;  // nulled when the exporter is destroyed first
  std::string path;
  std::string data;
  size_t spans = 0;
  size_t bytes = 0;  // of the spans, counted in held_ until the write ends
  int error = 0;     // errno of the failed step
  const char* step = "";
  uint64_t started_ns = 0;  // uv_hrtime
};

SpanExporter::SpanExporter(uv_loop_t* loop, ExporterOptions opts,
                           std::shared_ptr<spdlog::logger> log, const metrics::Scope& metrics)
    : loop_(loop),
      opts_(std::move(opts)),
      log_(log ? std::move(log) : util::make_logger("tracing")),
      token_(std::make_shared<int>(0)),
      metrics_(metrics),
      rng_(static_cast<uint32_t>(uv_hrtime() ^ static_cast<uint64_t>(getpid()))) {
  opts_.max_batch = std::max<size_t>(opts_.max_batch, 1);
  opts_.max_queue = std::max<size_t>(opts_.max_queue, 1);
  opts_.max_queue_bytes = std::max<size_t>(opts_.max_queue_bytes, 1);
  endpoint_shown_ = util::printable(opts_.endpoint);
  opts_.retry_initial_ms = std::max<uint64_t>(opts_.retry_initial_ms, 1);
  opts_.retry_max_ms = std::max(opts_.retry_max_ms, opts_.retry_initial_ms);

  const metrics::Scope& m = metrics_;
  series_.exported = m.counter("spoad_tracing_spans_exported_total",
                               "Spans the receiver accepted (2xx) or written to the file");
  constexpr std::string_view kDropped =
      "Spans lost, by reason: refused by the queue (queue-full: max-queue, queue-bytes: "
      "max-queue-bytes, stopping), or dropped after they were queued (export-failed: batch "
      "rejected or not written, stop-timeout: abandoned at stop)";
  auto dropped = [&](std::string_view reason) {
    return m.counter("spoad_tracing_spans_dropped_total", kDropped, {{"reason", reason}});
  };
  series_.dropped_queue_full = dropped("queue-full");
  series_.dropped_queue_bytes = dropped("queue-bytes");
  series_.dropped_stopping = dropped("stopping");
  series_.dropped_export_failed = dropped("export-failed");
  series_.dropped_stop_timeout = dropped("stop-timeout");
  series_.queue_spans = m.gauge("spoad_tracing_queue_spans",
                                "Spans held in memory: queued, being sent, waiting for a retry");
  series_.queue_bytes =
      m.gauge("spoad_tracing_queue_bytes", "Bytes of encoded spans held in memory");
  constexpr std::string_view kRequests =
      "Export requests completed (HTTP requests with retries, or file writes), by outcome";
  auto request = [&](std::string_view outcome) {
    return m.counter("spoad_tracing_export_requests_total", kRequests, {{"outcome", outcome}});
  };
  series_.req_success = request("success");
  series_.req_http_error = request("http-error");
  series_.req_network_error = request("network-error");
  series_.req_timeout = request("timeout");
  series_.req_cancelled = request("cancelled");
  series_.req_file_error = request("file-error");
  series_.latency = m.histogram("spoad_tracing_export_seconds",
                                "Duration of completed export requests (not cancelled ones)", {},
                                kExportBoundsUs);

  // The request around the spans: resource (service.name, host.name, process.pid, then the
  // configured attributes, which may replace host.name or process.pid) and scope.
  struct Attr {
    std::string key, value;
    bool is_int;
  };
  std::vector<Attr> attrs{{"service.name", opts_.service_name, false}};
  if (std::string h = host_name(); !h.empty()) attrs.push_back({"host.name", h, false});
  attrs.push_back({"process.pid", std::to_string(getpid()), true});
  for (const auto& kv : opts_.resource_attributes) {
    const std::string& k = kv.first;
    if (k == "service.name") continue;  // service_name wins
    auto it = std::find_if(attrs.begin(), attrs.end(), [&k](const Attr& a) { return a.key == k; });
    if (it != attrs.end())
      *it = Attr{k, kv.second, false};
    else
      attrs.push_back({k, kv.second, false});
  }
  body_prefix_ = R"({"resourceSpans":[{"resource":{"attributes":[)";
  for (size_t i = 0; i < attrs.size(); ++i) {
    if (i) body_prefix_ += ',';
    body_prefix_ += R"({"key":)" + json_string(attrs[i].key) + R"(,"value":{)";
    body_prefix_ += attrs[i].is_int ? R"("intValue":")" + attrs[i].value + '"'
                                    : R"("stringValue":)" + json_string(attrs[i].value);
    body_prefix_ += "}}";
  }
  body_prefix_ += R"(]},"scopeSpans":[{"scope":{"name":"spoad.tracing","version":)" +
                  json_string(SPOAD_VERSION) + R"(},"spans":[)";
  body_suffix_ = "]}]}]}";

  if (!loop_ || opts_.kind == ExporterOptions::Kind::kNone) return;
  flush_timer_ = make_timer(&SpanExporter::pump);
  if (opts_.kind == ExporterOptions::Kind::kOtlpHttp) {
    curl_ = std::make_unique<http::CurlLoop>(loop_);
    retry_timer_ = make_timer(&SpanExporter::on_retry_timer);
    // Headers: ours, then the configured ones (same name: theirs). "Expect:" stops curl from
    // waiting for a 100-continue on large bodies.
    KvList hs{{"Content-Type", "application/json"}};
    if (opts_.gzip) hs.emplace_back("Content-Encoding", "gzip");
    hs.emplace_back("Expect", "");
    for (const auto& [k, v] : opts_.headers)
      set_kv(hs, k, v, true);
    for (const auto& [k, v] : hs) {
      // curl: "Name:" removes a header, "Name;" sends it empty.
      const std::string line =
          v.empty() ? k + (equal_nocase(k, "Expect") ? ":" : ";") : k + ": " + v;
      curl_slist* l = curl_slist_append(headers_, line.c_str());
      if (!l) throw std::runtime_error("out of memory");
      headers_ = l;
    }
    user_agent_ = std::string("spoad/") + SPOAD_VERSION;
  }
}

SpanExporter::~SpanExporter() {
  closing_ = true;  // callbacks from now on only free memory
  stop_done_ = nullptr;
  for (Timer* t : timers_) {
    t->self = nullptr;
    if (!t->closing) {
      t->closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&t->t), &SpanExporter::on_timer_closed);
    }
  }
  timers_.clear();
  if (curl_) {
    curl_->close([] {});  // cancels the requests in flight (their callbacks see closing_)
    curl_.reset();
  }
  batches_.clear();
  if (file_job_) file_job_->self = nullptr;
  curl_slist_free_all(headers_);
}

SpanExporter::Timer* SpanExporter::make_timer(void (SpanExporter::*fn)()) {
  auto* t = new Timer;
  t->self = this;
  t->fn = fn;
  t->t.data = t;
  uv_timer_init(loop_, &t->t);
  timers_.push_back(t);
  return t;
}

void SpanExporter::close_timer(Timer*& t) {
  if (!t) return;
  if (!t->closing) {
    t->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&t->t), &SpanExporter::on_timer_closed);
  }
  t = nullptr;
}

void SpanExporter::on_timer(uv_timer_t* h) {
  auto* t = static_cast<Timer*>(h->data);
  if (t->self && !t->closing) (t->self->*(t->fn))();
}

void SpanExporter::on_timer_closed(uv_handle_t* h) {
  auto* t = static_cast<Timer*>(h->data);
  SpanExporter* self = t->self;
  if (self)
    self->timers_.erase(std::remove(self->timers_.begin(), self->timers_.end(), t),
                        self->timers_.end());
  delete t;
  if (self) self->maybe_finished();
}

bool SpanExporter::enqueue(std::string span_json) {
  if (!loop_ || closing_) {
    ++series_.dropped_stopping;
    return false;
  }
  if (opts_.kind == ExporterOptions::Kind::kNone) {
    ++stats_.enqueued;
    return true;
  }
  if (held_.spans >= opts_.max_queue) {
    ++series_.dropped_queue_full;
    drop("max-queue", span_json.size());
    return false;
  }
  if (span_json.size() > opts_.max_queue_bytes - std::min(held_.bytes, opts_.max_queue_bytes)) {
    ++series_.dropped_queue_bytes;
    drop("max-queue-bytes", span_json.size());
    return false;
  }
  held_.bytes += span_json.size();
  ++held_.spans;
  held_changed();
  queue_.push_back(Queued{std::move(span_json), uv_now(loop_)});
  ++stats_.enqueued;
  // The flush timer is set when the first span arrives and when a batch is full.
  if (queue_.size() == 1 || queue_.size() == opts_.max_batch) schedule();
  return true;
}

void SpanExporter::drop(const char* why, size_t bytes) {
  if (!drop_limiter_.allow(uv_now(loop_))) return;
  drop_limiter_.take_suppressed();  // the total below says it all
  log_->warn(
      "span queue full ({} spans, {} bytes held; max-queue {}, max-queue-bytes {}): dropping "
      "a span of {} bytes for {} ({} dropped so far)",
      held_.spans, held_.bytes, opts_.max_queue, opts_.max_queue_bytes, bytes, why,
      stats().dropped);
}

void SpanExporter::release(const Held& h) {
  held_.spans -= h.spans;
  held_.bytes -= h.bytes;
  held_changed();
}

void SpanExporter::held_changed() {
  series_.queue_spans = held_.spans;
  series_.queue_bytes = held_.bytes;
}

bool SpanExporter::slot_free() const {
  if (opts_.kind == ExporterOptions::Kind::kFile) return file_job_ == nullptr;
  return batches_.size() < kMaxHttpInFlight;
}

void SpanExporter::schedule() {
  if (!flush_timer_ || closing_) return;
  if (queue_.empty() || !slot_free()) {
    uv_timer_stop(&flush_timer_->t);
    return;
  }
  uint64_t delay = 0;
  if (!stopping_ && queue_.size() < opts_.max_batch) {
    const uint64_t now = uv_now(loop_);
    const uint64_t due = queue_.front().t_ms + opts_.flush_interval_ms;
    delay = due > now ? due - now : 0;
  }
  uv_timer_start(&flush_timer_->t, &SpanExporter::on_timer, delay, 0);
}

void SpanExporter::pump() {
  if (closing_) return;
  const uint64_t now = uv_now(loop_);
  while (!queue_.empty() && slot_free()) {
    const bool full = queue_.size() >= opts_.max_batch;
    const bool due = now >= queue_.front().t_ms + opts_.flush_interval_ms;
    if (!full && !due && !stopping_) break;
    send_batch(std::min(queue_.size(), opts_.max_batch));
  }
  schedule();
  maybe_done();
}

std::string SpanExporter::build_body(size_t n, Held* taken) {
  taken->spans = n;
  taken->bytes = 0;
  for (size_t i = 0; i < n; ++i)
    taken->bytes += queue_[i].json.size();
  std::string body;
  body.reserve(body_prefix_.size() + body_suffix_.size() + n + taken->bytes + 1);
  body += body_prefix_;
  for (size_t i = 0; i < n; ++i) {
    if (i) body += ',';
    body += queue_.front().json;
    queue_.pop_front();
  }
  body += body_suffix_;
  return body;
}

void SpanExporter::send_batch(size_t n) {
  Held h;
  std::string body = build_body(n, &h);
  if (opts_.kind == ExporterOptions::Kind::kFile) {
    start_file(std::move(body), h);
    return;
  }
  auto b = std::make_unique<Batch>();
  b->spans = n;
  b->bytes = h.bytes;
  b->backoff_ms = opts_.retry_initial_ms;
  if (opts_.gzip) {
    if (!gzip_compress(body, &b->body)) {
      // Cannot happen short of memory; the headers announce gzip, so drop the batch.
      ++stats_.failed_exports;
      series_.dropped_export_failed += n;
      release(h);
      warn("cannot compress a batch: " + std::to_string(n) + " spans dropped");
      return;
    }
  } else {
    b->body = std::move(body);
  }
  CURL* e = curl_easy_init();
  if (!e) {
    ++stats_.failed_exports;
    series_.dropped_export_failed += n;
    release(h);
    warn("curl_easy_init failed: " + std::to_string(n) + " spans dropped");
    return;
  }
  b->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, opts_.endpoint.c_str());
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, b->body.data());
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(b->body.size()));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
  curl_easy_setopt(e, CURLOPT_USERAGENT, user_agent_.c_str());
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.timeout_ms));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_curl_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &b->response);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, b->errbuf);
  Batch* raw = b.get();
  batches_.push_back(std::move(b));
  start_http(raw);
}

void SpanExporter::start_http(Batch* b) {
  ++b->attempts;
  if (b->attempts > 1) ++stats_.retries;
  ++stats_.export_requests;
  b->waiting = false;
  b->response.clear();
  b->errbuf[0] = '\0';
  b->started_ns = uv_hrtime();
  std::weak_ptr<int> alive = token_;
  curl_->add(b->easy, [this, b, alive](CURLcode rc, long status) {
    if (!alive.expired()) on_http_done(b, rc, status);
  });
}

void SpanExporter::on_http_done(Batch* b, int result, long status) {
  const auto rc = static_cast<CURLcode>(result);
  if (closing_) {  // cancelled: stop() gave up, or the exporter is going away
    ++series_.req_cancelled;
    series_.dropped_stop_timeout += b->spans;
    finish_batch(b);
    return;
  }
  const uint64_t ms = (uv_hrtime() - b->started_ns) / 1'000'000;
  if (rc == CURLE_OK && status >= 200 && status < 300) {
    note_request(series_.req_success, b->started_ns);
    series_.exported += b->spans;
    note_latency(ms);
    if (failing_) {
      failing_ = false;
      log_->info("export to {} works again", endpoint_shown_);
    }
    finish_batch(b);
  } else {
    note_request(rc == CURLE_OK                   ? series_.req_http_error
                 : rc == CURLE_OPERATION_TIMEDOUT ? series_.req_timeout
                                                  : series_.req_network_error,
                 b->started_ns);
    failing_ = true;
    std::string what;
    if (rc != CURLE_OK) {
      what = curl_easy_strerror(rc);
      if (b->errbuf[0]) what += " (" + util::printable(b->errbuf) + ")";
    } else {
      what = "HTTP " + std::to_string(status);
      if (!b->response.empty()) what += ": " + util::printable(b->response, kResponseExcerpt);
    }
    const bool retry = rc != CURLE_OK ? retryable_curl(rc) : retryable_status(status);
    if (retry) {
      uint64_t delay = b->backoff_ms;
      // Jitter: 80% to 120% of the backoff, so that workers do not retry in step.
      delay = delay * 8 / 10 + std::uniform_int_distribution<uint64_t>(0, delay * 4 / 10)(rng_);
      b->backoff_ms = std::min(b->backoff_ms * 2, opts_.retry_max_ms);
      curl_off_t retry_after = 0;
      if (rc == CURLE_OK &&
          curl_easy_getinfo(b->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
          retry_after > 0) {
        delay = std::min<uint64_t>(static_cast<uint64_t>(retry_after) * 1000, kMaxRetryAfterMs);
      }
      warn("export to " + endpoint_shown_ + " failed: " + what + "; retrying " +
           std::to_string(b->spans) + " spans in " + std::to_string(delay) + " ms");
      retry_later(b, delay);
    } else {
      ++stats_.failed_exports;
      series_.dropped_export_failed += b->spans;
      const long key = rc != CURLE_OK ? -static_cast<long>(rc) : status;
      if (logged_statuses_.insert(key).second) {
        log_->error(
            "export to {} failed: {}; {} spans dropped (not retried; logged once per "
            "status)",
            endpoint_shown_, what, b->spans);
      } else {
        log_->debug("export to {} failed: {}; {} spans dropped", endpoint_shown_, what, b->spans);
      }
      finish_batch(b);
    }
  }
  schedule();
  maybe_done();
}

void SpanExporter::retry_later(Batch* b, uint64_t delay_ms) {
  b->waiting = true;
  b->retry_at_ms = uv_now(loop_) + delay_ms;
  on_retry_timer();  // arms the timer for the earliest retry
}

void SpanExporter::on_retry_timer() {
  if (closing_ || !retry_timer_) return;
  const uint64_t now = uv_now(loop_);
  std::vector<Batch*> due;
  uint64_t next = UINT64_MAX;
  for (auto& b : batches_) {
    if (!b->waiting) continue;
    if (b->retry_at_ms <= now)
      due.push_back(b.get());
    else
      next = std::min(next, b->retry_at_ms);
  }
  if (next != UINT64_MAX)
    uv_timer_start(&retry_timer_->t, &SpanExporter::on_timer, next - now, 0);
  else
    uv_timer_stop(&retry_timer_->t);
  for (Batch* b : due)
    start_http(b);
}

void SpanExporter::start_file(std::string body, const Held& h) {
  const size_t n = h.spans;
  auto* job = new FileJob;
  job->req.data = job;
  job->self = this;
  job->path = opts_.file;
  job->data = std::move(body);
  job->data += '\n';
  job->spans = n;
  job->bytes = h.bytes;
  job->started_ns = uv_hrtime();
  ++stats_.export_requests;
  file_job_ = job;
  const int rc = uv_queue_work(
      loop_, &job->req,
      [](uv_work_t* req) {
        auto* j = static_cast<FileJob*>(req->data);
        const int fd = ::open(j->path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
          j->error = errno;
          j->step = "open";
          return;
        }
        size_t off = 0;
        while (off < j->data.size()) {
          const ssize_t w = ::write(fd, j->data.data() + off, j->data.size() - off);
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) {
            j->error = w < 0 ? errno : EIO;
            j->step = "write";
            break;
          }
          off += static_cast<size_t>(w);
        }
        if (::close(fd) != 0 && j->error == 0) {
          j->error = errno;
          j->step = "close";
        }
      },
      [](uv_work_t* req, int) {
        auto* j = static_cast<FileJob*>(req->data);
        if (j->self) j->self->on_file_done(j);
        delete j;
      });
  if (rc != 0) {
    // Cannot queue work (cannot happen on a live loop): report it like a failed write.
    file_job_ = nullptr;
    job->error = -rc;
    job->step = "queue";
    job->self = nullptr;
    note_request(series_.req_file_error, job->started_ns);
    ++stats_.failed_exports;
    series_.dropped_export_failed += n;
    release(h);
    warn("cannot write to " + util::printable(opts_.file) + ": " + uv_strerror(rc));
    delete job;
  }
}

void SpanExporter::on_file_done(FileJob* job) {
  file_job_ = nullptr;
  release(Held{job->spans, job->bytes});
  if (job->error == 0) {
    note_request(series_.req_success, job->started_ns);
    series_.exported += job->spans;
    note_latency((uv_hrtime() - job->started_ns) / 1'000'000);
  } else {
    note_request(series_.req_file_error, job->started_ns);
    ++stats_.failed_exports;
    series_.dropped_export_failed += job->spans;
    warn(std::string("cannot ") + job->step + " " + util::printable(job->path) + ": " +
         std::strerror(job->error) + "; " + std::to_string(job->spans) + " spans dropped");
  }
  if (closing_) {
    maybe_finished();
    return;
  }
  schedule();
  maybe_done();
}

void SpanExporter::finish_batch(Batch* b) {
  release(Held{b->spans, b->bytes});
  auto it = std::find_if(batches_.begin(), batches_.end(),
                         [b](const std::unique_ptr<Batch>& p) { return p.get() == b; });
  if (it != batches_.end()) batches_.erase(it);
}

void SpanExporter::note_request(metrics::Counter& outcome, uint64_t started_ns) {
  ++outcome;
  series_.latency.observe_us((uv_hrtime() - started_ns) / 1000);
}

void SpanExporter::note_latency(uint64_t ms) {
  latency_sum_ms_ += ms;
  ++latency_n_;
  stats_.export_latency_max_ms = std::max(stats_.export_latency_max_ms, ms);
}

void SpanExporter::warn(const std::string& msg) {
  if (!log_limiter_.allow(loop_ ? uv_now(loop_) : now_ms_hr())) return;
  const uint64_t n = log_limiter_.take_suppressed();
  if (n)
    log_->warn("{} ({} similar messages suppressed)", msg, n);
  else
    log_->warn("{}", msg);
}

void SpanExporter::stop(std::function<void()> done) {
  if (stopping_) return;
  stopping_ = true;
  stop_done_ = std::move(done);
  if (!loop_ || opts_.kind == ExporterOptions::Kind::kNone) {
    closing_ = finished_ = true;
    auto d = std::move(stop_done_);
    if (d) d();
    return;
  }
  stop_timer_ = make_timer(&SpanExporter::on_stop_deadline);
  uv_timer_start(&stop_timer_->t, &SpanExporter::on_timer, opts_.timeout_ms, 0);
  // Batches waiting for a retry go now; queued spans leave without waiting for the interval.
  for (auto& b : batches_)
    if (b->waiting) b->retry_at_ms = uv_now(loop_);
  if (retry_timer_) uv_timer_start(&retry_timer_->t, &SpanExporter::on_timer, 0, 0);
  pump();
}

void SpanExporter::maybe_done() {
  if (!stopping_ || closing_) return;
  if (!queue_.empty() || !batches_.empty() || file_job_) return;
  close_all();
}

void SpanExporter::on_stop_deadline() {
  if (closing_) return;
  const uint64_t left = held_.spans;
  // Spans not yet sent, and batches waiting for a retry; close_all() cancels the requests in
  // flight, and on_http_done() counts theirs.
  series_.dropped_stop_timeout += queue_.size();
  Held q{queue_.size(), 0};
  for (const Queued& e : queue_)
    q.bytes += e.json.size();
  release(q);
  queue_.clear();
  std::vector<Batch*> waiting;
  for (auto& b : batches_)
    if (b->waiting) waiting.push_back(b.get());
  for (Batch* b : waiting) {
    series_.dropped_stop_timeout += b->spans;
    finish_batch(b);
  }
  log_->warn("stop: {} spans not exported after {} ms; giving up", left, opts_.timeout_ms);
  close_all();
}

void SpanExporter::close_all() {
  if (closing_) return;
  closing_ = true;
  close_timer(flush_timer_);
  close_timer(retry_timer_);
  close_timer(stop_timer_);
  if (curl_) {
    std::weak_ptr<int> alive = token_;
    curl_->close([this, alive] {
      if (alive.expired()) return;
      curl_closed_ = true;
      maybe_finished();
    });
  }
  maybe_finished();
}

void SpanExporter::maybe_finished() {
  if (!closing_ || finished_ || !stopping_) return;
  if (!timers_.empty() || (curl_ && !curl_closed_) || file_job_) return;
  finished_ = true;
  auto d = std::move(stop_done_);
  stop_done_ = nullptr;
  if (d) d();
}

SpanExporter::Stats SpanExporter::stats() const {
  Stats s = stats_;
  s.exported = series_.exported.get();
  s.dropped_bytes = series_.dropped_queue_bytes.get();
  s.dropped = series_.dropped_queue_full.get() + s.dropped_bytes + series_.dropped_stopping.get();
  s.failed_spans = series_.dropped_export_failed.get() + series_.dropped_stop_timeout.get();
  s.queued = held_.spans;
  s.queued_bytes = held_.bytes;
  s.export_latency_avg_ms = latency_n_ ? latency_sum_ms_ / latency_n_ : 0;
  return s;
}

}  // namespace spoad::agents::tracing
