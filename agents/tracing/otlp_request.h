// The OTLP/JSON ExportTraceServiceRequest (OTLP 1.x, "JSON Protobuf Encoding") that carries a
// batch of spans: one resourceSpans entry (the resource's attributes) with one scopeSpans
// entry (scope spoad.tracing, version SPOAD_VERSION). Built once per exporter.
#pragma once

#include <string>

#include "agents/tracing/exporter_options.h"

namespace spoad::agents::tracing {

// The request split around its spans: prefix + span objects joined with "," + suffix.
struct OtlpEnvelope {
  std::string prefix;
  std::string suffix;
};

// The resource attributes are service.name (o.service_name), host.name (gethostname(), left
// out when it fails), process.pid (an intValue), then o.resource_attributes, which may replace
// host.name or process.pid but not service.name. Strings are JSON-escaped (ill-formed UTF-8
// becomes U+FFFD).
OtlpEnvelope otlp_envelope(const ExporterOptions& o);

}  // namespace spoad::agents::tracing
