// A finished span and its OTLP/JSON encoding
// (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding: ids in hex, enums as
// numbers, 64-bit integers as strings).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "agents/tracing/trace_context.h"

namespace spoad::agents::tracing {

// OTLP Span.SpanKind values.
enum class Kind : int { kInternal = 1, kServer = 2, kClient = 3 };

struct Attribute {
  enum class Type : uint8_t { kString, kInt };
  std::string_view key;
  Type type = Type::kString;
  std::string_view str;
  int64_t num = 0;
};

struct Span {
  static constexpr size_t kMaxAttributes = 16;

  std::string_view name;
  TraceId trace_id{};
  uint64_t span_id = 0;
  uint64_t parent_id = 0;     // 0: no parent
  uint64_t link_span_id = 0;  // 0: no link; else a link to that span of the same trace
  Kind kind = Kind::kInternal;
  uint64_t start_us = 0;  // microseconds since the epoch (HAProxy's date(0,us))
  uint64_t end_us = 0;
  bool error = false;  // status ERROR (else UNSET)
  std::string_view status_message;
  std::string_view trace_state;
  Attribute attrs[kMaxAttributes];
  size_t nattrs = 0;

  // Adds an attribute; empty strings are skipped, extra attributes beyond kMaxAttributes too.
  void add(std::string_view key, std::string_view value);
  void add(std::string_view key, int64_t value);
};

// Appends `s` to `out` as a JSON string (quotes included), escaping as RFC 8259 requires.
// Bytes that are not valid UTF-8 are replaced by U+FFFD.
void append_json_string(std::string& out, std::string_view s);

// The OTLP/JSON object of one span.
std::string encode_span(const Span& s);

}  // namespace spoad::agents::tracing
