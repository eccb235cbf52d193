// The tracing exporter's options: their defaults, the OpenTelemetry SDK environment variables
// (OTEL_*) and the `exporter:` mapping of the agent's YAML options. No I/O, no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "options/options.h"

namespace spoad::agents::tracing {

struct ExporterOptions {
  enum class Kind { kOtlpHttp, kFile, kNone } kind = Kind::kOtlpHttp;
  std::string endpoint = "http://127.0.0.1:4318/v1/traces";  // full URL for OTLP/HTTP
  std::vector<std::pair<std::string, std::string>> headers;  // extra HTTP headers
  bool gzip = false;                                         // Content-Encoding: gzip
  std::string file;                   // Kind::kFile: path; one JSON line per batch
  size_t max_batch = 512;             // spans per export request
  uint64_t flush_interval_ms = 1000;  // longest wait of a span before its batch leaves
  size_t max_queue = 8192;            // spans held in memory; beyond, new spans are dropped
  size_t max_queue_bytes = 8u << 20;  // bytes of encoded spans held in memory; the same
  uint64_t timeout_ms = 10000;        // per HTTP request; also bounds stop()
  uint64_t retry_initial_ms = 500;    // first retry delay, doubling per attempt...
  uint64_t retry_max_ms = 30000;      // ...up to this
  std::string service_name = "haproxy";
  std::vector<std::pair<std::string, std::string>> resource_attributes;  // besides service.name
};

// Ordered (name, value) pairs: headers and resource attributes.
using KvList = std::vector<std::pair<std::string, std::string>>;

// Replaces the value of the first pair named `key` in `list` (names compared ignoring ASCII
// case when `nocase`, as HTTP field names are: RFC 9110 5.1), or appends the pair.
void set_kv(KvList& list, const std::string& key, const std::string& value, bool nocase);

// Reads the OpenTelemetry SDK environment variables into `o`, as the SDKs honour them. `env`
// looks a variable up (nullptr when unset; an empty value counts as unset), e.g. std::getenv.
//   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   endpoint, used as is
//   OTEL_EXPORTER_OTLP_ENDPOINT          else: base URL, "/v1/traces" appended
//   OTEL_SERVICE_NAME                    service_name
//   OTEL_RESOURCE_ATTRIBUTES             k=v,k2=v2 (percent-decoded) into resource_attributes;
//                                        its service.name is used unless OTEL_SERVICE_NAME is set
//   OTEL_EXPORTER_OTLP_HEADERS           k=v,... (percent-decoded) into headers; then
//   OTEL_EXPORTER_OTLP_TRACES_HEADERS    the same, overriding headers of the same name
//   OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION  gzip or none
//   OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT  timeout_ms (milliseconds)
//   OTEL_BSP_SCHEDULE_DELAY              flush_interval_ms (milliseconds)
//   OTEL_BSP_MAX_QUEUE_SIZE              max_queue
//   OTEL_BSP_MAX_EXPORT_BATCH_SIZE       max_batch
//   OTEL_TRACES_EXPORTER=none, OTEL_SDK_DISABLED=true   kind = kNone
//   OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=grpc            reported (spoad sends http/json)
// The _TRACES_ variable wins over the generic one. Returns one message per value it could not
// use (that variable is then ignored, as the SDKs do), for the caller to log; empty if none.
std::vector<std::string> apply_otel_env(ExporterOptions& o,
                                        const std::function<const char*(const char*)>& env);

// Reads the `exporter:` mapping of the agent's options into `out`. Keys that are absent keep
// the value `out` already has, so call apply_otel_env() first: YAML overrides the environment.
//   type                 otlp-http | file | none
//   endpoint             URL (http:// or https://), used as is
//   headers              list of "Name: value"; replaces a header of the same name
//   gzip                 boolean
//   file                 path (required with type file)
//   max-batch            1..100000 spans
//   flush-interval       duration, 1ms..1h
//   max-queue            1..10000000 spans
//   max-queue-bytes      size, 1k..1g: bytes of encoded spans held (default 8m)
//   timeout              duration, 1ms..10m
//   retry-initial        duration, 1ms..1h
//   retry-max            duration, 1ms..1d (not below retry-initial)
//   service-name         string
//   resource-attributes  list of "key=value"; replaces an attribute of the same key
// Then rejects unknown keys (check_unknown). Throws config::ConfigError (file:line:key).
void parse_exporter_options(config::Options& o, ExporterOptions* out);

}  // namespace spoad::agents::tracing
