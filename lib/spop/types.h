// SPOP 2.0 protocol types (SPOE.txt section 3). Types only; the functions that read and
// write them live in varint.h, reader.h, writer.h and frames.h.
//
// Every view (std::string_view, std::span) in these types points into the buffer the value
// was decoded from. It stays valid only as long as that buffer does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace spoad::spop {

using Bytes = std::span<const uint8_t>;

// The only protocol version HAProxy (2.6 to 3.x) speaks. SPOE.txt 3.2.5.
inline constexpr std::string_view kVersion = "2.0";

// Smallest max-frame-size a peer may announce (SPOE.txt 3.2.5), and HAProxy's default
// (tune.bufsize 16384 minus the 4 length bytes).
inline constexpr uint32_t kMinFrameSize = 256;
inline constexpr uint32_t kDefaultFrameSize = 16380;

// Frame metadata: type (1 byte) + flags (4 bytes) + stream-id and frame-id (>= 1 byte each).
inline constexpr size_t kMinFrameLength = 7;

// DISCONNECT status codes, SPOE.txt 3.2.7 (values fixed by the protocol).
enum class Status : uint32_t {
  kNormal = 0,
  kIoError = 1,
  kTimeout = 2,
  kTooBig = 3,
  kInvalid = 4,
  kNoVersion = 5,
  kNoFrameSize = 6,
  kNoCapabilities = 7,
  kBadVersion = 8,
  kBadFrameSize = 9,
  kFragNotSupported = 10,
  kInterlaced = 11,
  kFrameIdNotFound = 12,
  kResourceError = 13,
  kUnknown = 99,
};

// Outcome of a decode step: kNormal when it succeeded, otherwise the DISCONNECT status the
// error maps to and a static, human-readable detail ("truncated KV list", ...).
struct Result {
  Status status = Status::kNormal;
  const char* detail = "";

  constexpr bool ok() const { return status == Status::kNormal; }
  static constexpr Result Ok() { return {}; }
  static constexpr Result Fail(Status s, const char* d) { return {s, d}; }
};

// Frame types, SPOE.txt 3.2.3. kUnset is the continuation fragment type of HAProxy 2.6.
enum class FrameType : uint8_t {
  kUnset = 0,
  kHaproxyHello = 1,
  kHaproxyDisconnect = 2,
  kNotify = 3,
  kAgentHello = 101,
  kAgentDisconnect = 102,
  kAck = 103,
};

// Frame flags, SPOE.txt 3.2.2 (32 bits, network order on the wire).
inline constexpr uint32_t kFlagFin = 0x00000001;
inline constexpr uint32_t kFlagAbort = 0x00000002;

// A decoded frame. `payload` excludes the length prefix and the metadata.
struct Frame {
  FrameType type = FrameType::kUnset;
  uint8_t raw_type = 0;  // as received; equal to type unless the type is unknown
  uint32_t flags = 0;
  uint64_t stream_id = 0;
  uint64_t frame_id = 0;
  Bytes payload;

  bool fin() const { return (flags & kFlagFin) != 0; }
  bool abort() const { return (flags & kFlagAbort) != 0; }
};

// Typed data identifiers, SPOE.txt 3.1 (low 4 bits of the type byte). 10-15 are reserved.
enum class DataType : uint8_t {
  kNull = 0,
  kBool = 1,
  kInt32 = 2,
  kUint32 = 3,
  kInt64 = 4,
  kUint64 = 5,
  kIpv4 = 6,
  kIpv6 = 7,
  kString = 8,
  kBinary = 9,
};

// One typed value. Integers share `u64` (signed ones are stored two's complement, as on the
// wire). `bytes` views the string or binary content, or the 4/16 network-order bytes of an
// address. A Value never owns memory.
struct Value {
  DataType type = DataType::kNull;
  bool b = false;
  uint64_t u64 = 0;
  std::string_view bytes;  // kString, kBinary, kIpv4 (4 bytes), kIpv6 (16 bytes)

  static Value Null() { return {}; }
  static Value Bool(bool v) {
    Value x;
    x.type = DataType::kBool;
    x.b = v;
    return x;
  }
  static Value Int32(int32_t v) { return Integer(DataType::kInt32, Wrap(v)); }
  static Value Uint32(uint32_t v) { return Integer(DataType::kUint32, uint64_t{v}); }
  static Value Int64(int64_t v) { return Integer(DataType::kInt64, Wrap(v)); }
  static Value Uint64(uint64_t v) { return Integer(DataType::kUint64, v); }
  // `a` must hold 4 (IPv4) or 16 (IPv6) bytes in network order and outlive the Value.
  static Value Ipv4(const uint8_t* a) { return Blob(DataType::kIpv4, View(a, 4)); }
  static Value Ipv6(const uint8_t* a) { return Blob(DataType::kIpv6, View(a, 16)); }
  static Value String(std::string_view s) { return Blob(DataType::kString, s); }
  static Value Binary(std::string_view s) { return Blob(DataType::kBinary, s); }

  bool is_integer() const {
    return type == DataType::kInt32 || type == DataType::kUint32 || type == DataType::kInt64 ||
           type == DataType::kUint64;
  }
  // The integer as HAProxy reads it: any of the four integer types as a signed 64-bit value.
  int64_t as_int64() const { return static_cast<int64_t>(u64); }
  // A string or binary value (SPOE.txt 3.1: types 8 and 9), whose content is `bytes`.
  bool is_text() const { return type == DataType::kString || type == DataType::kBinary; }
  // The content of a string or binary value; empty for every other type (addresses included).
  std::string_view text() const { return is_text() ? bytes : std::string_view(); }

 private:
  static Value Integer(DataType t, uint64_t v) {
    Value x;
    x.type = t;
    x.u64 = v;
    return x;
  }
  static uint64_t Wrap(int64_t v) { return static_cast<uint64_t>(v); }
  static std::string_view View(const uint8_t* a, size_t n) {
    return {reinterpret_cast<const char*>(a), n};
  }
  static Value Blob(DataType t, std::string_view s) {
    Value x;
    x.type = t;
    x.bytes = s;
    return x;
  }
};

// A KV-LIST item (SPOE.txt 3.1): a name without type byte, then a typed value. NOTIFY
// arguments are KV items; an unnamed `args` entry has an empty name.
struct KV {
  std::string_view name;
  Value value;
};

// One message of a NOTIFY's LIST-OF-MESSAGES (SPOE.txt 3.2.6). `args` holds the `nargs`
// KV items, already validated by the decoder; read them with spop::args() or
// spop::find_arg() (reader.h), which decode on the fly and never allocate.
struct Message {
  std::string_view name;
  uint8_t nargs = 0;
  Bytes args;
};

// Variable scopes of set-var/unset-var actions, SPOE.txt 3.4.
enum class Scope : uint8_t {
  kProcess = 0,
  kSession = 1,
  kTransaction = 2,
  kRequest = 3,
  kResponse = 4,
};

// Action types, SPOE.txt 3.4.
enum class ActionType : uint8_t {
  kSetVar = 1,
  kUnsetVar = 2,
};

// A decoded action of an ACK (used by clients: spoa-bench and the tests).
struct Action {
  ActionType type = ActionType::kSetVar;
  Scope scope = Scope::kTransaction;
  std::string_view name;
  Value value;  // kNull for unset-var
};

// HAPROXY-HELLO content, SPOE.txt 3.2.5. Keys that were absent keep their defaults.
struct HaproxyHello {
  bool has_versions = false;
  std::string_view supported_versions;
  bool has_max_frame_size = false;
  uint64_t max_frame_size = 0;
  bool has_capabilities = false;
  std::string_view capabilities;
  std::string_view engine_id;
  bool healthcheck = false;
};

// AGENT-HELLO content, SPOE.txt 3.2.5.
struct AgentHello {
  bool has_version = false;
  std::string_view version;
  bool has_max_frame_size = false;
  uint64_t max_frame_size = 0;
  bool has_capabilities = false;
  std::string_view capabilities;
};

// HAPROXY-DISCONNECT / AGENT-DISCONNECT content, SPOE.txt 3.2.7.
struct Disconnect {
  uint32_t status_code = 0;
  std::string_view message;
};

// Capabilities negotiated in HELLO, SPOE.txt 3.2.4.
struct Capabilities {
  bool pipelining = false;
  bool async = false;
  bool fragmentation = false;
};

}  // namespace spoad::spop
