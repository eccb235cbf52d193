#include "agents/tracing/otlp_request.h"

#include <unistd.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "util/escape.h"
#include "version.h"

namespace spoad::agents::tracing {

namespace {

// A JSON string literal for `s`; each ill-formed UTF-8 byte becomes U+FFFD.
std::string json_string(std::string_view s) {
  std::string out;
  util::append_json_string(out, s);
  return out;
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return {};
  return buf;
}

}  // namespace

OtlpEnvelope otlp_envelope(const ExporterOptions& o) {
  struct Attr {
    std::string key, value;
    bool is_int;
  };
  std::vector<Attr> attrs{{"service.name", o.service_name, false}};
  if (std::string h = host_name(); !h.empty()) attrs.push_back({"host.name", h, false});
  attrs.push_back({"process.pid", std::to_string(getpid()), true});
  for (const auto& kv : o.resource_attributes) {
    const std::string& k = kv.first;
    if (k == "service.name") continue;  // service_name wins
    auto it = std::find_if(attrs.begin(), attrs.end(), [&k](const Attr& a) { return a.key == k; });
    if (it != attrs.end())
      *it = Attr{k, kv.second, false};
    else
      attrs.push_back({k, kv.second, false});
  }
  OtlpEnvelope e;
  e.prefix = R"({"resourceSpans":[{"resource":{"attributes":[)";
  for (size_t i = 0; i < attrs.size(); ++i) {
    if (i) e.prefix += ',';
    e.prefix += R"({"key":)" + json_string(attrs[i].key) + R"(,"value":{)";
    e.prefix += attrs[i].is_int ? R"("intValue":")" + attrs[i].value + '"'
                                : R"("stringValue":)" + json_string(attrs[i].value);
    e.prefix += "}}";
  }
  e.prefix += R"(]},"scopeSpans":[{"scope":{"name":"spoad.tracing","version":)" +
              json_string(SPOAD_VERSION) + R"(},"spans":[)";
  e.suffix = "]}]}]}";
  return e;
}

}  // namespace spoad::agents::tracing
