#include "spop/writer.h"

#include "spop/varint.h"

namespace spoad::spop {

void Writer::u32be(uint32_t v) {
  const uint8_t b[4] = {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16),
                        static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
  out_.insert(out_.end(), b, b + 4);
}

void Writer::varint(uint64_t v) {
  uint8_t b[kMaxVarintLength];
  const size_t n = encode_varint(v, b);
  out_.insert(out_.end(), b, b + n);
}

void Writer::raw(std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  out_.insert(out_.end(), p, p + bytes.size());
}

void Writer::raw(Bytes bytes) {
  out_.insert(out_.end(), bytes.begin(), bytes.end());
}

void Writer::string(std::string_view s) {
  varint(s.size());
  raw(s);
}

void Writer::typed(const Value& v) {
  switch (v.type) {
    case DataType::kNull:
      u8(0x00);
      break;
    case DataType::kBool:
      u8(v.b ? 0x11 : 0x01);
      break;
    case DataType::kInt32:
    case DataType::kUint32:
    case DataType::kInt64:
    case DataType::kUint64:
      u8(static_cast<uint8_t>(v.type));
      varint(v.u64);
      break;
    case DataType::kIpv4:
    case DataType::kIpv6:
      u8(static_cast<uint8_t>(v.type));
      raw(v.bytes.substr(0, v.type == DataType::kIpv4 ? 4 : 16));
      break;
    case DataType::kString:
    case DataType::kBinary:
      u8(static_cast<uint8_t>(v.type));
      string(v.bytes);
      break;
  }
}

void Writer::kv(std::string_view name, const Value& v) {
  string(name);
  typed(v);
}

void Writer::message(std::string_view name, std::span<const KV> args) {
  const size_t n = args.size() > 255 ? 255 : args.size();
  string(name);
  u8(static_cast<uint8_t>(n));
  for (size_t i = 0; i < n; ++i)
    kv(args[i].name, args[i].value);
}

void Writer::set_var(Scope scope, std::string_view name, const Value& v) {
  u8(static_cast<uint8_t>(ActionType::kSetVar));
  u8(3);
  u8(static_cast<uint8_t>(scope));
  string(name);
  typed(v);
}

void Writer::unset_var(Scope scope, std::string_view name) {
  u8(static_cast<uint8_t>(ActionType::kUnsetVar));
  u8(2);
  u8(static_cast<uint8_t>(scope));
  string(name);
}

FrameWriter::FrameWriter(std::vector<uint8_t>& out, FrameType type, uint32_t flags,
                         uint64_t stream_id, uint64_t frame_id)
    : Writer(out), start_(out.size()) {
  u32be(0);  // FRAME-LENGTH, patched by finish()
  u8(static_cast<uint8_t>(type));
  u32be(flags);
  varint(stream_id);
  varint(frame_id);
}

bool FrameWriter::finish(uint32_t max_frame_size) {
  const size_t len = frame_length();
  if (len > max_frame_size) {
    out_.resize(start_);
    return false;
  }
  uint8_t* p = out_.data() + start_;
  p[0] = static_cast<uint8_t>(len >> 24);
  p[1] = static_cast<uint8_t>(len >> 16);
  p[2] = static_cast<uint8_t>(len >> 8);
  p[3] = static_cast<uint8_t>(len);
  return true;
}

}  // namespace spoad::spop
