#include "agents/tracing/exporter_options.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>
#include <string_view>

#include "util/escape.h"
#include "util/text.h"

namespace spoad::agents::tracing {

namespace {

// "k=v,k2=v2" as OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS write it (W3C
// baggage without properties): entries trimmed, keys and values percent-decoded, empty
// entries skipped. False (with `error`) on an entry without "=", an empty key or a bad escape.
bool parse_kv_list(std::string_view s, KvList* out, std::string* error) {
  out->clear();
  while (!s.empty()) {
    const size_t comma = s.find(',');
    const std::string_view entry = util::trim(s.substr(0, comma));
    s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
    if (entry.empty()) continue;
    const size_t eq = entry.find('=');
    std::string k, v;
    if (eq == std::string_view::npos ||
        !util::percent_decode(util::trim(entry.substr(0, eq)), &k) ||
        !util::percent_decode(util::trim(entry.substr(eq + 1)), &v) || k.empty()) {
      *error = "malformed entry \"" + util::printable(entry) + "\"";
      return false;
    }
    out->emplace_back(std::move(k), std::move(v));
  }
  return true;
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

}  // namespace

void set_kv(KvList& list, const std::string& key, const std::string& value, bool nocase) {
  for (auto& [k, v] : list) {
    if (nocase ? util::iequals(k, key) : k == key) {
      v = value;
      return;
    }
  }
  list.emplace_back(key, value);
}

std::vector<std::string> apply_otel_env(ExporterOptions& o,
                                        const std::function<const char*(const char*)>& env) {
  std::vector<std::string> problems;
  // The value of the first variable set (non-empty), with its name.
  auto get = [&](std::initializer_list<const char*> names)
      -> std::optional<std::pair<std::string, std::string>> {
    for (const char* n : names) {
      const char* v = env(n);
      if (v && *v) return std::make_pair(std::string(n), std::string(util::trim(v)));
    }
    return std::nullopt;
  };
  auto bad = [&](const std::string& name, const std::string& value, const std::string& why) {
    problems.push_back(name + "=\"" + util::printable(value) + "\": " + why + "; ignored");
  };

  if (auto v = get({"OTEL_SDK_DISABLED"}); v && util::iequals(v->second, "true"))
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
    const std::string name(util::trim(std::string_view(h).substr(0, colon)));
    const std::string value(colon == std::string::npos
                                ? std::string_view()
                                : util::trim(std::string_view(h).substr(colon + 1)));
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
    const std::string key(util::trim(std::string_view(a).substr(0, eq)));
    if (eq == std::string::npos || key.empty())
      o.fail("resource-attributes", "expected \"key=value\", got \"" + util::printable(a) + "\"");
    if (key == "service.name") o.fail("resource-attributes", "set service.name with service-name");
    set_kv(out->resource_attributes, key,
           std::string(util::trim(std::string_view(a).substr(eq + 1))), false);
  }
  if (out->kind == ExporterOptions::Kind::kFile && out->file.empty())
    o.fail(o.has("type") ? "type" : "", "type file needs a file path in \"file\"");
  o.check_unknown();
}

}  // namespace spoad::agents::tracing
