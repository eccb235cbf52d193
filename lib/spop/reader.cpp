#include "spop/reader.h"

#include "spop/varint.h"

namespace spoad::spop {

bool Reader::fail(const char* detail) {
  if (error_.ok()) error_ = Result::Fail(Status::kInvalid, detail);
  return false;
}

bool Reader::u8(uint8_t* v) {
  if (failed()) return false;
  if (remaining() < 1) return fail("truncated frame");
  *v = in_[pos_++];
  return true;
}

bool Reader::u32be(uint32_t* v) {
  if (failed()) return false;
  if (remaining() < 4) return fail("truncated frame");
  const uint8_t* p = in_.data() + pos_;
  *v = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  pos_ += 4;
  return true;
}

bool Reader::varint(uint64_t* v) {
  if (failed()) return false;
  const int n = decode_varint(in_.subspan(pos_), v);
  if (n == 0) return fail("truncated varint");
  if (n < 0) return fail("varint longer than 10 bytes or above 2^64");
  pos_ += static_cast<size_t>(n);
  return true;
}

bool Reader::raw(size_t n, Bytes* out) {
  if (failed()) return false;
  if (remaining() < n) return fail("truncated data");
  *out = in_.subspan(pos_, n);
  pos_ += n;
  return true;
}

bool Reader::string(std::string_view* out) {
  const size_t start = pos_;
  uint64_t len = 0;
  if (!varint(&len)) return false;
  if (len > remaining()) {
    pos_ = start;
    return fail("string length beyond the end of the frame");
  }
  *out = {reinterpret_cast<const char*>(in_.data() + pos_), static_cast<size_t>(len)};
  pos_ += static_cast<size_t>(len);
  return true;
}

bool Reader::typed(Value* out) {
  const size_t start = pos_;
  uint8_t tb = 0;
  if (!u8(&tb)) return false;
  Value v;
  const uint8_t type = tb & 0x0F;
  if (type > static_cast<uint8_t>(DataType::kBinary)) {
    pos_ = start;
    return fail("unknown typed-data type (10-15 are reserved)");
  }
  v.type = static_cast<DataType>(type);
  Bytes b;
  switch (v.type) {
    case DataType::kNull:
      break;
    case DataType::kBool:
      v.b = (tb & 0x10) != 0;
      break;
    case DataType::kInt32:
    case DataType::kUint32:
    case DataType::kInt64:
    case DataType::kUint64:
      varint(&v.u64);
      break;
    case DataType::kIpv4:
    case DataType::kIpv6:
      if (raw(v.type == DataType::kIpv4 ? 4 : 16, &b))
        v.bytes = {reinterpret_cast<const char*>(b.data()), b.size()};
      break;
    case DataType::kString:
    case DataType::kBinary:
      string(&v.bytes);
      break;
  }
  if (failed()) {
    pos_ = start;
    return false;
  }
  *out = v;
  return true;
}

bool Reader::kv(KV* out) {
  const size_t start = pos_;
  if (!string(&out->name) || !typed(&out->value)) {
    pos_ = start;
    return false;
  }
  return true;
}

bool Reader::message(Message* out) {
  const size_t start = pos_;
  if (!string(&out->name) || !u8(&out->nargs)) {
    pos_ = start;
    return false;
  }
  const size_t args_start = pos_;
  KV kv_item;
  for (unsigned i = 0; i < out->nargs; ++i) {
    if (!kv(&kv_item)) {
      pos_ = start;
      return false;
    }
  }
  out->args = in_.subspan(args_start, pos_ - args_start);
  return true;
}

bool Reader::action(Action* out) {
  const size_t start = pos_;
  uint8_t type = 0, nargs = 0, scope = 0;
  if (!u8(&type) || !u8(&nargs) || !u8(&scope) || !string(&out->name)) {
    pos_ = start;
    return false;
  }
  if (scope > static_cast<uint8_t>(Scope::kResponse)) {
    pos_ = start;
    return fail("unknown variable scope");
  }
  out->scope = static_cast<Scope>(scope);
  if (type == static_cast<uint8_t>(ActionType::kSetVar) && nargs == 3) {
    out->type = ActionType::kSetVar;
    if (!typed(&out->value)) {
      pos_ = start;
      return false;
    }
    return true;
  }
  if (type == static_cast<uint8_t>(ActionType::kUnsetVar) && nargs == 2) {
    out->type = ActionType::kUnsetVar;
    out->value = Value::Null();
    return true;
  }
  pos_ = start;
  return fail("unknown action type or wrong NB-ARGS");
}

void ArgIterator::advance() {
  if (left_ == 0 || !reader_.kv(&current_)) {
    done_ = true;
    return;
  }
  --left_;
}

std::optional<KV> find_arg(const Message& msg, std::string_view name) {
  for (const KV& kv : args(msg))
    if (kv.name == name) return kv;
  return std::nullopt;
}

std::optional<KV> arg_at(const Message& msg, size_t index) {
  size_t i = 0;
  for (const KV& kv : args(msg))
    if (i++ == index) return kv;
  return std::nullopt;
}

const char* type_name(DataType t) {
  switch (t) {
    case DataType::kNull:
      return "null";
    case DataType::kBool:
      return "bool";
    case DataType::kInt32:
      return "int32";
    case DataType::kUint32:
      return "uint32";
    case DataType::kInt64:
      return "int64";
    case DataType::kUint64:
      return "uint64";
    case DataType::kIpv4:
      return "ipv4";
    case DataType::kIpv6:
      return "ipv6";
    case DataType::kString:
      return "str";
    case DataType::kBinary:
      return "bin";
  }
  return "?";
}

}  // namespace spoad::spop
