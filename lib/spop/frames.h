// SPOP frames: framing, the payload of each frame type, and builders for the frames either
// side sends (SPOE.txt 3.2). Pure functions over byte ranges: no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "spop/reader.h"
#include "spop/types.h"

namespace spoad::spop {

// ---- Status codes (SPOE.txt 3.2.7) -----------------------------------------------------

// The message HAProxy sends with each status ("normal", "frame is too big", ...). Codes
// outside 0-13 read "an unknown error occurred", as code 99 does.
std::string_view status_text(Status s);
std::string_view status_text(uint32_t code);

// ---- Framing (SPOE.txt 3.2.1) ----------------------------------------------------------

// Reads the 4-byte, network-order FRAME-LENGTH at `p` (which must hold 4 bytes).
uint32_t read_frame_length(const uint8_t* p);

// Checks a FRAME-LENGTH (bytes, excluding its own 4) against the negotiated size.
// Errors: kInvalid below 7 bytes (type + flags + two varints); kTooBig above `max_frame_size`.
Result check_frame_length(uint32_t length, uint32_t max_frame_size);

// Splits FRAME-LENGTH bytes into type, flags, stream-id, frame-id and payload.
// Errors: kInvalid for truncated metadata, a >10-byte varint, or ABORT without FIN.
// Unknown types are returned with raw_type set; the caller decides (SPOE.txt 3.2.3 allows
// skipping them).
Result decode_frame(Bytes frame, Frame* out);

// ---- HELLO (SPOE.txt 3.2.5) ------------------------------------------------------------

// True if a supported-versions list ("2.0", " 1.0 , 2.0", "2.3", ...) includes 2.0: an entry
// of major 2 announces every earlier minor of it. Spaces are ignored.
bool supports_version_2_0(std::string_view supported_versions);

// Decodes and validates a HAPROXY-HELLO as an agent must (SPOE.txt 3.2.5). Errors:
//   kFragNotSupported  FIN not set (HELLO is never fragmented)
//   kInvalid           stream-id or frame-id not 0; malformed KV list; a key of the wrong type
//   kNoVersion         no "supported-versions"
//   kBadVersion        no 2.x in "supported-versions"
//   kNoFrameSize       no "max-frame-size"
//   kBadFrameSize      "max-frame-size" below 256
//   kNoCapabilities    no "capabilities"
// Unknown keys are skipped.
Result parse_haproxy_hello(const Frame& frame, HaproxyHello* out);

// Decodes an AGENT-HELLO as HAProxy 2.6 does (flt_spoe.c): keys matched by prefix, version
// "2.0" required (kNoVersion / kBadVersion), max-frame-size required (kNoFrameSize) and
// within [256, `announced_max`] (kBadFrameSize). Used by clients (spoa-bench, tests).
Result parse_agent_hello(const Frame& frame, uint32_t announced_max, AgentHello* out);

// Capability tokens, comma separated, leading spaces skipped, unknown tokens ignored
// (SPOE.txt 3.2.4).
Capabilities parse_capabilities(std::string_view list);
// "pipelining,async,fragmentation" (only the set ones), the form HAProxy sends.
std::string format_capabilities(const Capabilities& caps);

// ---- DISCONNECT (SPOE.txt 3.2.7) -------------------------------------------------------

// Decodes HAPROXY-DISCONNECT or AGENT-DISCONNECT: "status-code" (any integer type) and
// "message" (string); missing keys keep their defaults. Errors: kInvalid for a malformed KV
// list or a key of the wrong type.
Result parse_disconnect(const Frame& frame, Disconnect* out);

// ---- NOTIFY and ACK payloads (SPOE.txt 3.2.6, 3.2.8, 3.4) ------------------------------

// Validates a LIST-OF-MESSAGES completely, so that iterating it afterwards cannot fail.
// `*count` receives the number of messages (0 for the empty NOTIFY of HAProxy 3.1.x).
// Errors: kInvalid, with the detail of the first malformed item.
Result validate_messages(Bytes payload, uint32_t* count);

// Validates a LIST-OF-ACTIONS (set-var with 3 args, unset-var with 2, scopes 0-4).
// Errors: kInvalid.
Result validate_actions(Bytes payload, uint32_t* count);

// Iteration over a validated list of messages or actions.
template <typename T>
class ListIterator {
 public:
  explicit ListIterator(Bytes b) : reader_(b) { advance(); }
  const T& operator*() const { return current_; }
  const T* operator->() const { return &current_; }
  ListIterator& operator++() {
    advance();
    return *this;
  }
  bool operator==(std::default_sentinel_t) const { return done_; }

 private:
  void advance();
  Reader reader_;
  T current_{};
  bool done_ = false;
};

template <typename T>
struct ListRange {
  Bytes bytes;
  ListIterator<T> begin() const { return ListIterator<T>(bytes); }
  std::default_sentinel_t end() const { return {}; }
};

template <typename T>
void ListIterator<T>::advance() {
  bool ok = false;
  if (!reader_.empty()) {
    if constexpr (std::is_same_v<T, Message>)
      ok = reader_.message(&current_);
    else
      ok = reader_.action(&current_);
  }
  done_ = !ok;
}

inline ListRange<Message> messages(Bytes validated_payload) {
  return {validated_payload};
}
inline ListRange<Action> actions(Bytes validated_payload) {
  return {validated_payload};
}

// ---- Frame builders --------------------------------------------------------------------
// Each appends one whole frame (length prefix included) to `out`, with FIN set and, for
// HELLO and DISCONNECT, stream-id = frame-id = 0 (SPOE.txt 3.2.1).

// AGENT-HELLO: version "2.0", max-frame-size (UINT32), capabilities (always present).
void write_agent_hello(std::vector<uint8_t>& out, uint32_t max_frame_size,
                       std::string_view capabilities);

// AGENT-DISCONNECT: status-code (UINT32) and message, cut to 255 bytes as HAProxy 2.6
// requires. An empty `message` sends status_text(status).
void write_agent_disconnect(std::vector<uint8_t>& out, Status status, std::string_view message);

// ACK carrying an encoded LIST-OF-ACTIONS. Returns false, and appends nothing, if the frame
// would exceed `max_frame_size` bytes (ACKs cannot be fragmented: 2.6 rejects them).
bool write_ack(std::vector<uint8_t>& out, uint64_t stream_id, uint64_t frame_id, Bytes actions,
               uint32_t max_frame_size);

// HAPROXY-HELLO, in the key order HAProxy uses. healthcheck=true adds "healthcheck" and, as
// HAProxy does, no engine-id. Used by clients (spoa-bench, tests).
void write_haproxy_hello(std::vector<uint8_t>& out, uint32_t max_frame_size,
                         std::string_view capabilities, std::string_view engine_id,
                         bool healthcheck);

// HAPROXY-DISCONNECT. Used by clients.
void write_haproxy_disconnect(std::vector<uint8_t>& out, Status status, std::string_view message);

}  // namespace spoad::spop
