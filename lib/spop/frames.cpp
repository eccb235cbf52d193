#include "spop/frames.h"

#include "spop/writer.h"
#include "util/text.h"  // header-only: spop still links nothing

namespace spoad::spop {

namespace {

constexpr std::string_view kStatusTexts[] = {
    "normal",
    "I/O error",
    "a timeout occurred",
    "frame is too big",
    "invalid frame received",
    "version value not found",
    "max-frame-size value not found",
    "capabilities value not found",
    "unsupported version",
    "max-frame-size too big or too small",
    "fragmentation not supported",
    "invalid interlaced frames",
    "frame-id not found",
    "resource allocation error",
};

// Parses "M.m" (spaces around allowed). Returns false if it is not two decimal numbers.
bool parse_version(std::string_view v, unsigned* major, unsigned* minor) {
  v = util::trim(v);
  const size_t dot = v.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == v.size()) return false;
  unsigned parts[2] = {0, 0};
  std::string_view strs[2] = {v.substr(0, dot), v.substr(dot + 1)};
  for (int i = 0; i < 2; ++i) {
    if (strs[i].size() > 4) return false;
    for (char c : strs[i]) {
      if (c < '0' || c > '9') return false;
      parts[i] = parts[i] * 10 + static_cast<unsigned>(c - '0');
    }
  }
  *major = parts[0];
  *minor = parts[1];
  return true;
}

Result check_control_frame(const Frame& f) {
  if (!f.fin()) return Result::Fail(Status::kFragNotSupported, "HELLO/DISCONNECT without FIN");
  if (f.stream_id != 0 || f.frame_id != 0)
    return Result::Fail(Status::kInvalid, "HELLO/DISCONNECT with a non-zero stream-id or frame-id");
  return Result::Ok();
}

}  // namespace

std::string_view status_text(uint32_t code) {
  if (code < std::size(kStatusTexts)) return kStatusTexts[code];
  return "an unknown error occurred";
}

std::string_view status_text(Status s) {
  return status_text(static_cast<uint32_t>(s));
}

uint32_t read_frame_length(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

Result check_frame_length(uint32_t length, uint32_t max_frame_size) {
  if (length < kMinFrameLength) return Result::Fail(Status::kInvalid, "frame shorter than 7 bytes");
  if (length > max_frame_size)
    return Result::Fail(Status::kTooBig, "frame longer than the negotiated max-frame-size");
  return Result::Ok();
}

Result decode_frame(Bytes frame, Frame* out) {
  Reader r(frame);
  uint8_t type = 0;
  uint32_t flags = 0;
  uint64_t sid = 0, fid = 0;
  if (!r.u8(&type) || !r.u32be(&flags) || !r.varint(&sid) || !r.varint(&fid)) {
    Result e = r.error();
    e.detail = "truncated or malformed frame metadata";
    return e;
  }
  if ((flags & kFlagAbort) && !(flags & kFlagFin))
    return Result::Fail(Status::kInvalid, "ABORT flag without FIN");
  out->raw_type = type;
  out->type = static_cast<FrameType>(type);
  out->flags = flags;
  out->stream_id = sid;
  out->frame_id = fid;
  out->payload = frame.subspan(r.position());
  return Result::Ok();
}

bool supports_version_2_0(std::string_view list) {
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view item = list.substr(0, comma);
    unsigned major = 0, minor = 0;
    if (parse_version(item, &major, &minor) && major == 2) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

Result parse_haproxy_hello(const Frame& f, HaproxyHello* out) {
  if (Result e = check_control_frame(f); !e.ok()) return e;
  Reader r(f.payload);
  HaproxyHello h;
  while (!r.empty()) {
    KV kv;
    if (!r.kv(&kv)) return r.error();
    if (kv.name == "supported-versions") {
      if (kv.value.type != DataType::kString)
        return Result::Fail(Status::kInvalid, "supported-versions is not a STRING");
      h.has_versions = true;
      h.supported_versions = kv.value.bytes;
    } else if (kv.name == "max-frame-size") {
      if (!kv.value.is_integer())
        return Result::Fail(Status::kInvalid, "max-frame-size is not an integer");
      h.has_max_frame_size = true;
      h.max_frame_size = kv.value.u64;
    } else if (kv.name == "capabilities") {
      if (kv.value.type != DataType::kString)
        return Result::Fail(Status::kInvalid, "capabilities is not a STRING");
      h.has_capabilities = true;
      h.capabilities = kv.value.bytes;
    } else if (kv.name == "engine-id") {
      if (kv.value.type != DataType::kString)
        return Result::Fail(Status::kInvalid, "engine-id is not a STRING");
      h.engine_id = kv.value.bytes;
    } else if (kv.name == "healthcheck") {
      if (kv.value.type != DataType::kBool)
        return Result::Fail(Status::kInvalid, "healthcheck is not a BOOLEAN");
      h.healthcheck = kv.value.b;
    }
  }
  if (!h.has_versions) return Result::Fail(Status::kNoVersion, "no supported-versions in HELLO");
  if (!supports_version_2_0(h.supported_versions))
    return Result::Fail(Status::kBadVersion, "HAProxy does not support SPOP 2.0");
  if (!h.has_max_frame_size)
    return Result::Fail(Status::kNoFrameSize, "no max-frame-size in HELLO");
  if (h.max_frame_size < kMinFrameSize)
    return Result::Fail(Status::kBadFrameSize, "max-frame-size below 256");
  if (!h.has_capabilities) return Result::Fail(Status::kNoCapabilities, "no capabilities in HELLO");
  *out = h;
  return Result::Ok();
}

Result parse_agent_hello(const Frame& f, uint32_t announced_max, AgentHello* out) {
  if (Result e = check_control_frame(f); !e.ok()) return e;
  Reader r(f.payload);
  AgentHello h;
  while (!r.empty()) {
    KV kv;
    if (!r.kv(&kv)) return r.error();
    if (kv.name.starts_with("version")) {
      if (kv.value.type != DataType::kString)
        return Result::Fail(Status::kInvalid, "version is not a STRING");
      h.has_version = true;
      h.version = kv.value.bytes;
    } else if (kv.name.starts_with("max-frame-size")) {
      if (!kv.value.is_integer())
        return Result::Fail(Status::kInvalid, "max-frame-size is not an integer");
      h.has_max_frame_size = true;
      h.max_frame_size = kv.value.u64;
    } else if (kv.name.starts_with("capabilities")) {
      if (kv.value.type != DataType::kString)
        return Result::Fail(Status::kInvalid, "capabilities is not a STRING");
      h.has_capabilities = true;
      h.capabilities = kv.value.bytes;
    }
  }
  if (!h.has_version) return Result::Fail(Status::kNoVersion, "no version in AGENT-HELLO");
  unsigned major = 0, minor = 0;
  if (!parse_version(h.version, &major, &minor) || major != 2 || minor != 0)
    return Result::Fail(Status::kBadVersion, "AGENT-HELLO version is not 2.0");
  if (!h.has_max_frame_size)
    return Result::Fail(Status::kNoFrameSize, "no max-frame-size in AGENT-HELLO");
  if (h.max_frame_size < kMinFrameSize || h.max_frame_size > announced_max)
    return Result::Fail(Status::kBadFrameSize, "AGENT-HELLO max-frame-size out of range");
  *out = h;
  return Result::Ok();
}

Capabilities parse_capabilities(std::string_view list) {
  Capabilities c;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view tok = util::trim(list.substr(0, comma));
    if (tok == "pipelining")
      c.pipelining = true;
    else if (tok == "async")
      c.async = true;
    else if (tok == "fragmentation")
      c.fragmentation = true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return c;
}

std::string format_capabilities(const Capabilities& caps) {
  std::string s;
  auto add = [&s](const char* tok) {
    if (!s.empty()) s += ',';
    s += tok;
  };
  if (caps.pipelining) add("pipelining");
  if (caps.async) add("async");
  if (caps.fragmentation) add("fragmentation");
  return s;
}

Result parse_disconnect(const Frame& f, Disconnect* out) {
  if (Result e = check_control_frame(f); !e.ok()) return e;
  Reader r(f.payload);
  Disconnect d;
  while (!r.empty()) {
    KV kv;
    if (!r.kv(&kv)) return r.error();
    if (kv.name == "status-code") {
      if (!kv.value.is_integer())
        return Result::Fail(Status::kInvalid, "status-code is not an integer");
      d.status_code = static_cast<uint32_t>(kv.value.u64);
    } else if (kv.name == "message") {
      if (kv.value.type != DataType::kString)
        return Result::Fail(Status::kInvalid, "message is not a STRING");
      d.message = kv.value.bytes;
    }
  }
  *out = d;
  return Result::Ok();
}

Result validate_messages(Bytes payload, uint32_t* count) {
  Reader r(payload);
  uint32_t n = 0;
  while (!r.empty()) {
    Message m;
    if (!r.message(&m)) return r.error();
    ++n;
  }
  *count = n;
  return Result::Ok();
}

Result validate_actions(Bytes payload, uint32_t* count) {
  Reader r(payload);
  uint32_t n = 0;
  while (!r.empty()) {
    Action a;
    if (!r.action(&a)) return r.error();
    ++n;
  }
  *count = n;
  return Result::Ok();
}

void write_agent_hello(std::vector<uint8_t>& out, uint32_t max_frame_size,
                       std::string_view capabilities) {
  FrameWriter w(out, FrameType::kAgentHello, kFlagFin, 0, 0);
  w.kv("version", Value::String(kVersion));
  w.kv("max-frame-size", Value::Uint32(max_frame_size));
  w.kv("capabilities", Value::String(capabilities));
  w.finish(UINT32_MAX);
}

void write_agent_disconnect(std::vector<uint8_t>& out, Status status, std::string_view message) {
  if (message.empty()) message = status_text(status);
  FrameWriter w(out, FrameType::kAgentDisconnect, kFlagFin, 0, 0);
  w.kv("status-code", Value::Uint32(static_cast<uint32_t>(status)));
  w.kv("message", Value::String(message.substr(0, 255)));
  w.finish(UINT32_MAX);
}

bool write_ack(std::vector<uint8_t>& out, uint64_t stream_id, uint64_t frame_id, Bytes actions,
               uint32_t max_frame_size) {
  FrameWriter w(out, FrameType::kAck, kFlagFin, stream_id, frame_id);
  w.raw(actions);
  return w.finish(max_frame_size);
}

void write_haproxy_hello(std::vector<uint8_t>& out, uint32_t max_frame_size,
                         std::string_view capabilities, std::string_view engine_id,
                         bool healthcheck) {
  FrameWriter w(out, FrameType::kHaproxyHello, kFlagFin, 0, 0);
  w.kv("supported-versions", Value::String(kVersion));
  w.kv("max-frame-size", Value::Uint32(max_frame_size));
  w.kv("capabilities", Value::String(capabilities));
  if (healthcheck) {
    w.kv("healthcheck", Value::Bool(true));
  } else if (!engine_id.empty()) {
    w.kv("engine-id", Value::String(engine_id));
  }
  w.finish(UINT32_MAX);
}

void write_haproxy_disconnect(std::vector<uint8_t>& out, Status status, std::string_view message) {
  if (message.empty()) message = status_text(status);
  FrameWriter w(out, FrameType::kHaproxyDisconnect, kFlagFin, 0, 0);
  w.kv("status-code", Value::Uint32(static_cast<uint32_t>(status)));
  w.kv("message", Value::String(message.substr(0, 255)));
  w.finish(UINT32_MAX);
}

}  // namespace spoad::spop
