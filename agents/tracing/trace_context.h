// W3C Trace Context (https://www.w3.org/TR/trace-context/) and the identifiers of the spans of
// one request. The tracing agent keeps no per-request memory: what later events need travels in
// HAProxy variables (see tracing.h), encoded here.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace spoad::agents::tracing {

using TraceId = std::array<uint8_t, 16>;

// A 64-bit id as 16 lowercase hex digits, most significant first (W3C parent-id). Other
// lengths: util::hex_encode / util::hex_decode (util/text.h).
std::string to_hex64(uint64_t v);
// Parses exactly 16 hex digits (lowercase or uppercase) into `*v`; false if malformed.
bool from_hex64(std::string_view s, uint64_t* v);

// A parsed `traceparent` header: version 00 (later versions are read as 00, as the
// specification asks: their extra fields are ignored).
struct TraceParent {
  TraceId trace_id{};
  uint64_t parent_id = 0;
  uint8_t flags = 0;  // bit 0: sampled
  bool sampled() const { return (flags & 1) != 0; }
};

// Parses "00-<32 hex>-<16 hex>-<2 hex>". Rejects (nullopt) all-zero ids, version ff, wrong
// lengths or characters, as the specification requires.
std::optional<TraceParent> parse_traceparent(std::string_view header);
// "00-<trace id>-<span id>-<flags>".
std::string format_traceparent(const TraceId& trace_id, uint64_t span_id, uint8_t flags);

// The `tracestate` header (W3C Trace Context, "tracestate Header Field Values" and
// "tracestate Limits"), limited before it is stored in a variable and copied into spans.
enum class TraceStateVerdict {
  kKept,       // well-formed and within the limits: kept as is (OWS and empty members removed)
  kTruncated,  // longer than max_bytes: whole members removed, as the limits section says
  kDropped,    // malformed, or more than kMaxTraceStateMembers members: discarded
};
constexpr size_t kMaxTraceStateMembers = 32;  // the list ABNF: list-member 0*31(...)

// Parses `header` (a comma-separated list of key=value members; spaces and tabs around
// members and empty members are ignored) and writes to `out` the members kept, joined with
// ",", at most `max_bytes` bytes. A member whose key or value breaks the ABNF (key: lowercase
// letter or digit, then up to 255 of a-z 0-9 _ - * / @; value: up to 256 printable ASCII
// characters but ',' and '=', not ending with a space), or more than 32 members, drops the
// whole header (out empty). Beyond max_bytes, members longer than 128 bytes are removed
// first, then members from the end, until the rest fits. Reads `header` once; `out` is always
// printable ASCII. Never throws but std::bad_alloc.
TraceStateVerdict limit_tracestate(std::string_view header, size_t max_bytes, std::string* out);

// The per-request context, kept in one HAProxy variable as 66 hex digits:
// <trace id: 32><seed: 16><remote parent span id: 16, 0 if none><flags: 2>.
// Every span id of the request derives from the seed (span_id()), so a worker that handles
// any event of the request can name any of its spans.
struct RequestContext {
  TraceId trace_id{};
  uint64_t seed = 0;
  uint64_t remote_parent = 0;  // the span of the incoming traceparent, 0 if none
  uint8_t flags = 0;           // W3C flags: bit 0 sampled

  bool sampled() const { return (flags & 1) != 0; }
  std::string encode() const;
  static std::optional<RequestContext> decode(std::string_view s);
};

// The spans of one request: the tree SPOE events draw (README.md).
enum class SpanKindId : uint8_t {
  kHaproxySession = 1,
  kClientSession,
  kFrontendTcpRequest,
  kFrontendHttpRequest,
  kBackendTcpRequest,
  kBackendHttpRequest,
  kServerSession,
  kTcpResponse,
  kHttpResponse,
};

// The span id of span `which` of the request with `seed`: a 64-bit mix of both, never 0.
uint64_t span_id(uint64_t seed, SpanKindId which);

// Random identifiers, from a generator seeded once per process from the system's entropy.
class IdGenerator {
 public:
  IdGenerator();
  TraceId trace_id();
  uint64_t u64();  // never 0
  // True with probability `ratio` (0..1).
  bool sample(double ratio);

 private:
  std::mt19937_64 rng_;
};

}  // namespace spoad::agents::tracing
