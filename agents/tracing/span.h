// A finished span and its OTLP/JSON encoding
// (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding: ids in hex, enums as
// numbers, 64-bit integers as strings).
#pragma once

#include <cstddef>
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
  std::string_view trace_state;  // already limited (limit_tracestate)
  Attribute attrs[kMaxAttributes];
  size_t nattrs = 0;
  // The attribute limits (OpenTelemetry "Attribute Limits": a longer string value is cut,
  // attributes beyond the count are dropped and counted in droppedAttributesCount).
  size_t value_limit = SIZE_MAX;  // bytes of a string value; cut on a UTF-8 boundary
  uint32_t truncated_attrs = 0;   // string values add() cut to value_limit
  uint32_t dropped_attrs = 0;     // attributes add() refused (more than kMaxAttributes)

  // Adds an attribute; empty strings are skipped. A string longer than value_limit bytes is
  // cut (cut_utf8) and counted in truncated_attrs; beyond kMaxAttributes, counted in
  // dropped_attrs. The span keeps views: `key` and `value` must outlive encode_span().
  void add(std::string_view key, std::string_view value);
  void add(std::string_view key, int64_t value);
};

// The first bytes of `s`, at most `max` of them, without splitting a well-formed UTF-8
// character: a sequence that would be cut is left out whole. Ill-formed bytes count as one
// byte each (util::append_json_string later turns each into U+FFFD).
std::string_view cut_utf8(std::string_view s, size_t max);

// The OTLP/JSON object of one span. Every string goes through util::append_json_string: the
// result is valid UTF-8 JSON (RFC 8259) whatever bytes the span holds.
std::string encode_span(const Span& s);

}  // namespace spoad::agents::tracing
