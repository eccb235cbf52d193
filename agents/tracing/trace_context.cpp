#include "agents/tracing/trace_context.h"

#include "util/text.h"

namespace spoad::agents::tracing {

namespace {

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i]) return false;
  return true;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::string to_hex64(uint64_t v) {
  uint8_t b[8];
  for (int i = 7; i >= 0; --i) {
    b[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
  return util::hex_encode(b, 8);
}

bool from_hex64(std::string_view s, uint64_t* v) {
  uint8_t b[8];
  if (!util::hex_decode(s, b, 8)) return false;
  uint64_t r = 0;
  for (uint8_t x : b)
    r = r << 8 | x;
  *v = r;
  return true;
}

std::optional<TraceParent> parse_traceparent(std::string_view h) {
  // Surrounding spaces are tolerated (header folding); the fields are fixed-width. Uppercase
  // hex digits are accepted (the specification's version 00 writes lowercase).
  h = util::trim(h);
  if (h.size() < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-') return std::nullopt;
  uint8_t version = 0;
  if (!util::hex_decode(h.substr(0, 2), &version, 1) || version == 0xff) return std::nullopt;
  if (version == 0 && h.size() != 55) return std::nullopt;
  if (version != 0 && h.size() > 55 && h[55] != '-') return std::nullopt;
  TraceParent tp;
  uint8_t pid[8];
  if (!util::hex_decode(h.substr(3, 32), tp.trace_id.data(), 16) ||
      !util::hex_decode(h.substr(36, 16), pid, 8) ||
      !util::hex_decode(h.substr(53, 2), &tp.flags, 1))
    return std::nullopt;
  if (all_zero(tp.trace_id.data(), 16) || all_zero(pid, 8)) return std::nullopt;
  for (uint8_t x : pid)
    tp.parent_id = tp.parent_id << 8 | x;
  return tp;
}

std::string format_traceparent(const TraceId& trace_id, uint64_t span_id, uint8_t flags) {
  return "00-" + util::hex_encode(trace_id.data(), 16) + "-" + to_hex64(span_id) + "-" +
         util::hex_encode(&flags, 1);
}

namespace {

bool ts_key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
         c == '/' || c == '@';
}

// key "=" value, as the tracestate ABNF defines them.
bool valid_member(std::string_view m) {
  const size_t eq = m.find('=');
  if (eq == std::string_view::npos || eq == 0 || eq > 256) return false;
  const std::string_view key = m.substr(0, eq), value = m.substr(eq + 1);
  if (!((key[0] >= 'a' && key[0] <= 'z') || (key[0] >= '0' && key[0] <= '9'))) return false;
  for (char c : key)
    if (!ts_key_char(c)) return false;
  if (value.empty() || value.size() > 256 || value.back() == ' ') return false;
  for (char c : value)
    if (c < 0x20 || c > 0x7e || c == ',' || c == '=') return false;
  return true;
}

}  // namespace

TraceStateVerdict limit_tracestate(std::string_view header, size_t max_bytes, std::string* out) {
  out->clear();
  std::vector<std::string_view> members;
  size_t pos = 0;
  while (pos <= header.size()) {
    size_t comma = header.find(',', pos);
    if (comma == std::string_view::npos) comma = header.size();
    const std::string_view m = util::trim(header.substr(pos, comma - pos));
    pos = comma + 1;
    if (m.empty()) continue;
    if (!valid_member(m) || members.size() == kMaxTraceStateMembers)
      return TraceStateVerdict::kDropped;
    members.push_back(m);
  }
  auto joined = [&] {
    size_t n = members.empty() ? 0 : members.size() - 1;
    for (std::string_view m : members)
      n += m.size();
    return n;
  };
  TraceStateVerdict v = TraceStateVerdict::kKept;
  if (joined() > max_bytes) {
    v = TraceStateVerdict::kTruncated;
    // Members longer than 128 bytes go first (from the end), then members from the end.
    for (size_t i = members.size(); i-- > 0 && joined() > max_bytes;)
      if (members[i].size() > 128) members.erase(members.begin() + static_cast<long>(i));
    while (!members.empty() && joined() > max_bytes)
      members.pop_back();
    if (members.empty()) return TraceStateVerdict::kDropped;
  }
  for (size_t i = 0; i < members.size(); ++i) {
    if (i) *out += ',';
    *out += members[i];
  }
  return v;
}

std::string RequestContext::encode() const {
  return util::hex_encode(trace_id.data(), 16) + to_hex64(seed) + to_hex64(remote_parent) +
         util::hex_encode(&flags, 1);
}

std::optional<RequestContext> RequestContext::decode(std::string_view s) {
  RequestContext c;
  if (s.size() != 66 || !util::hex_decode(s.substr(0, 32), c.trace_id.data(), 16) ||
      !from_hex64(s.substr(32, 16), &c.seed) || !from_hex64(s.substr(48, 16), &c.remote_parent) ||
      !util::hex_decode(s.substr(64, 2), &c.flags, 1))
    return std::nullopt;
  return c;
}

uint64_t span_id(uint64_t seed, SpanKindId which) {
  uint64_t v = splitmix64(seed ^ (0x632BE59BD9B4E019ull * static_cast<uint64_t>(which)));
  return v ? v : 1;
}

IdGenerator::IdGenerator() {
  std::random_device rd;
  std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
  rng_.seed(seq);
}

TraceId IdGenerator::trace_id() {
  TraceId t;
  do {
    const uint64_t a = rng_(), b = rng_();
    for (int i = 0; i < 8; ++i) {
      t[i] = static_cast<uint8_t>(a >> (56 - 8 * i));
      t[8 + i] = static_cast<uint8_t>(b >> (56 - 8 * i));
    }
  } while (all_zero(t.data(), 16));
  return t;
}

uint64_t IdGenerator::u64() {
  uint64_t v;
  do
    v = rng_();
  while (v == 0);
  return v;
}

bool IdGenerator::sample(double ratio) {
  if (ratio >= 1.0) return true;
  if (ratio <= 0.0) return false;
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < ratio;
}

}  // namespace spoad::agents::tracing
