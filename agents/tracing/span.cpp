#include "agents/tracing/span.h"

#include "util/escape.h"
#include "util/text.h"

namespace spoad::agents::tracing {

void Span::add(std::string_view key, std::string_view value) {
  if (value.empty()) return;
  if (nattrs == kMaxAttributes) {
    ++dropped_attrs;
    return;
  }
  if (value.size() > value_limit) {
    value = cut_utf8(value, value_limit);
    ++truncated_attrs;
  }
  Attribute& a = attrs[nattrs++];
  a.key = key;
  a.type = Attribute::Type::kString;
  a.str = value;
}

void Span::add(std::string_view key, int64_t value) {
  if (nattrs == kMaxAttributes) {
    ++dropped_attrs;
    return;
  }
  Attribute& a = attrs[nattrs++];
  a.key = key;
  a.type = Attribute::Type::kInt;
  a.num = value;
}

std::string_view cut_utf8(std::string_view s, size_t max) {
  if (s.size() <= max) return s;
  // s[max] is the first byte left out. If it continues a character that starts before it,
  // that whole character is left out.
  size_t lead = max;
  while (lead > 0 && max - lead < 3 && (static_cast<uint8_t>(s[lead]) & 0xC0) == 0x80)
    --lead;
  if (lead == max) return s.substr(0, max);
  const auto c = static_cast<uint8_t>(s[lead]);
  const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (lead + len > max && lead + len <= s.size() && util::is_utf8(s.substr(lead, len)))
    return s.substr(0, lead);
  return s.substr(0, max);
}

std::string encode_span(const Span& s) {
  std::string o;
  size_t size = 320 + s.trace_state.size();
  for (size_t i = 0; i < s.nattrs; ++i)
    size += 48 + s.attrs[i].key.size() + s.attrs[i].str.size();
  o.reserve(size);
  o += "{\"traceId\":\"";
  o += util::hex_encode(s.trace_id.data(), 16);
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
    util::append_json_string(o, s.trace_state);
  }
  o += ",\"name\":";
  util::append_json_string(o, s.name);
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
    util::append_json_string(o, a.key);
    if (a.type == Attribute::Type::kString) {
      o += ",\"value\":{\"stringValue\":";
      util::append_json_string(o, a.str);
      o += "}}";
    } else {
      o += ",\"value\":{\"intValue\":\"";
      o += std::to_string(a.num);
      o += "\"}}";
    }
  }
  o += ']';
  if (s.dropped_attrs) {
    o += ",\"droppedAttributesCount\":";
    o += std::to_string(s.dropped_attrs);
  }
  if (s.link_span_id) {
    o += ",\"links\":[{\"traceId\":\"";
    o += util::hex_encode(s.trace_id.data(), 16);
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
      util::append_json_string(o, s.status_message);
    }
  }
  o += "}}";
  return o;
}

}  // namespace spoad::agents::tracing
