#include "agents/tracing/span.h"

namespace spoad::agents::tracing {

void Span::add(std::string_view key, std::string_view value) {
  if (value.empty() || nattrs == kMaxAttributes) return;
  Attribute& a = attrs[nattrs++];
  a.key = key;
  a.type = Attribute::Type::kString;
  a.str = value;
}

void Span::add(std::string_view key, int64_t value) {
  if (nattrs == kMaxAttributes) return;
  Attribute& a = attrs[nattrs++];
  a.key = key;
  a.type = Attribute::Type::kInt;
  a.num = value;
}

void append_json_string(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      // Copy a valid UTF-8 sequence as is; anything else becomes U+FFFD.
      size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
      bool ok = len > 0 && i + len <= s.size();
      for (size_t k = 1; ok && k < len; ++k)
        ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
      if (ok) {
        out.append(s.data() + i, len);
        i += len - 1;
      } else {
        out += "\xEF\xBF\xBD";
      }
    }
  }
  out += '"';
}

std::string encode_span(const Span& s) {
  std::string o;
  o.reserve(256 + 48 * s.nattrs);
  o += "{\"traceId\":\"";
  o += to_hex(s.trace_id.data(), 16);
  o += "\",\"spanId\":\"";
  o += to_hex64(s.span_id);
  o += '"';
  if (s.parent_id) {
    o += ",\"parentSpanId\":\"";
    o += to_hex64(s.parent_id);
    o += '"';
  }
  if (!s.trace_state.empty()) {
    o += ",\"traceState\":";
    append_json_string(o, s.trace_state);
  }
  o += ",\"name\":";
  append_json_string(o, s.name);
  o += ",\"kind\":";
  o += std::to_string(static_cast<int>(s.kind));
  o += ",\"startTimeUnixNano\":\"";
  o += std::to_string(s.start_us * 1000);
  o += "\",\"endTimeUnixNano\":\"";
  o += std::to_string(s.end_us * 1000);
  o += "\",\"attributes\":[";
  for (size_t i = 0; i < s.nattrs; ++i) {
    const Attribute& a = s.attrs[i];
    if (i) o += ',';
    o += "{\"key\":";
    append_json_string(o, a.key);
    if (a.type == Attribute::Type::kString) {
      o += ",\"value\":{\"stringValue\":";
      append_json_string(o, a.str);
      o += "}}";
    } else {
      o += ",\"value\":{\"intValue\":\"";
      o += std::to_string(a.num);
      o += "\"}}";
    }
  }
  o += ']';
  if (s.link_span_id) {
    o += ",\"links\":[{\"traceId\":\"";
    o += to_hex(s.trace_id.data(), 16);
    o += "\",\"spanId\":\"";
    o += to_hex64(s.link_span_id);
    o += "\",\"attributes\":[{\"key\":\"opentracing.ref_type\",\"value\":{\"stringValue\":"
         "\"follows_from\"}}]}]";
  }
  o += ",\"status\":{";
  if (s.error) {
    o += "\"code\":2";
    if (!s.status_message.empty()) {
      o += ",\"message\":";
      append_json_string(o, s.status_message);
    }
  }
  o += "}}";
  return o;
}

}  // namespace spoad::agents::tracing
