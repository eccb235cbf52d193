// Fuzz target: the SPOP frame reader and decoder (lib/spop: varint, reader, frames), fed a byte
// stream as a connection receives it (SPOE.txt 3.2.1): <FRAME-LENGTH><frame>... Each frame is
// decoded, its payload parsed as its type says (HELLO, DISCONNECT, NOTIFY, ACK), and every
// accepted item is written back with lib/spop/writer and decoded again: decode -> encode ->
// decode must give the same values, and a re-encoded frame must equal the bytes received
// (SPOP's varints have a single encoding per value).
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_check.h"
#include "spop/frames.h"
#include "spop/reader.h"
#include "spop/varint.h"
#include "spop/writer.h"

namespace {

using namespace spoad::spop;

// The largest frame accepted; below the reader's own limits so the length checks are exercised.
constexpr uint32_t kMaxFrameSize = 65536;

bool same_value(const Value& a, const Value& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case DataType::kNull:
      return true;
    case DataType::kBool:
      return a.b == b.b;
    case DataType::kInt32:
    case DataType::kUint32:
    case DataType::kInt64:
    case DataType::kUint64:
      return a.u64 == b.u64;
    default:
      return a.bytes == b.bytes;
  }
}

// Every varint at the start of `in` re-encodes to the bytes it was read from.
void check_varint(Bytes in) {
  uint64_t v = 0;
  const int n = decode_varint(in, &v);
  FUZZ_CHECK(n >= -1 && n <= static_cast<int>(kMaxVarintLength));
  if (n <= 0) return;
  uint8_t buf[kMaxVarintLength];
  const size_t m = encode_varint(v, buf);
  FUZZ_CHECK(m == varint_size(v));
  FUZZ_CHECK(m == static_cast<size_t>(n));
  FUZZ_CHECK(std::memcmp(buf, in.data(), m) == 0);
}

void check_messages(Bytes payload) {
  uint32_t count = 0;
  if (!validate_messages(payload, &count).ok()) return;
  std::vector<uint8_t> again;
  Writer w(again);
  uint32_t seen = 0;
  for (const Message& m : messages(payload)) {
    ++seen;
    std::vector<KV> kvs;
    for (const KV& kv : args(m))
      kvs.push_back(kv);
    FUZZ_CHECK(kvs.size() == m.nargs);  // validated: every argument decodes
    for (size_t i = 0; i < kvs.size(); ++i) {
      const std::optional<KV> at = arg_at(m, i);
      FUZZ_CHECK(at && at->name == kvs[i].name && same_value(at->value, kvs[i].value));
      const std::optional<KV> named = find_arg(m, kvs[i].name);
      FUZZ_CHECK(named.has_value());
      (void)type_name(kvs[i].value.type);
    }
    FUZZ_CHECK(!arg_at(m, kvs.size()));
    w.message(m.name, kvs);
  }
  FUZZ_CHECK(seen == count);
  // Decode what was written: the same messages and arguments.
  uint32_t count2 = 0;
  const Bytes b2(again.data(), again.size());
  FUZZ_CHECK(validate_messages(b2, &count2).ok());
  FUZZ_CHECK(count2 == count);
  auto it1 = messages(payload).begin();
  for (const Message& m2 : messages(b2)) {
    const Message& m1 = *it1;
    FUZZ_CHECK(m1.name == m2.name && m1.nargs == m2.nargs);
    auto a1 = args(m1).begin();
    for (const KV& kv2 : args(m2)) {
      FUZZ_CHECK(a1->name == kv2.name && same_value(a1->value, kv2.value));
      ++a1;
    }
    ++it1;
  }
}

void check_actions(Bytes payload) {
  uint32_t count = 0;
  if (!validate_actions(payload, &count).ok()) return;
  std::vector<uint8_t> again;
  Writer w(again);
  uint32_t seen = 0;
  for (const Action& a : actions(payload)) {
    ++seen;
    FUZZ_CHECK(static_cast<uint8_t>(a.scope) <= static_cast<uint8_t>(Scope::kResponse));
    if (a.type == ActionType::kSetVar)
      w.set_var(a.scope, a.name, a.value);
    else
      w.unset_var(a.scope, a.name);
  }
  FUZZ_CHECK(seen == count);
  uint32_t count2 = 0;
  const Bytes b2(again.data(), again.size());
  FUZZ_CHECK(validate_actions(b2, &count2).ok() && count2 == count);
  auto it = actions(payload).begin();
  for (const Action& a2 : actions(b2)) {
    FUZZ_CHECK(it->type == a2.type && it->scope == a2.scope && it->name == a2.name &&
               same_value(it->value, a2.value));
    ++it;
  }
}

void check_frame(Bytes whole, const Frame& f) {
  // Re-encoding the metadata and the payload gives back the bytes received.
  std::vector<uint8_t> out;
  FrameWriter fw(out, static_cast<FrameType>(f.raw_type), f.flags, f.stream_id, f.frame_id);
  fw.raw(f.payload);
  FUZZ_CHECK(fw.finish(UINT32_MAX));
  FUZZ_CHECK(out.size() == whole.size() && std::memcmp(out.data(), whole.data(), out.size()) == 0);

  // Every payload is also tried as each kind of list, whatever the type says.
  check_messages(f.payload);
  check_actions(f.payload);

  switch (f.type) {
    case FrameType::kHaproxyHello: {
      HaproxyHello h;
      if (parse_haproxy_hello(f, &h).ok()) {
        FUZZ_CHECK(h.has_versions && h.has_max_frame_size && h.has_capabilities);
        FUZZ_CHECK(supports_version_2_0(h.supported_versions));
        FUZZ_CHECK(h.max_frame_size >= kMinFrameSize);
        const Capabilities c = parse_capabilities(h.capabilities);
        const Capabilities c2 = parse_capabilities(format_capabilities(c));
        FUZZ_CHECK(c.pipelining == c2.pipelining && c.async == c2.async &&
                   c.fragmentation == c2.fragmentation);
      }
      break;
    }
    case FrameType::kAgentHello: {
      AgentHello h;
      if (parse_agent_hello(f, kMaxFrameSize, &h).ok())
        FUZZ_CHECK(h.max_frame_size >= kMinFrameSize && h.max_frame_size <= kMaxFrameSize);
      break;
    }
    case FrameType::kHaproxyDisconnect:
    case FrameType::kAgentDisconnect: {
      Disconnect d;
      if (parse_disconnect(f, &d).ok()) {
        (void)status_text(d.status_code);
        // What the agent would answer: the peer's message, cut to 255 bytes.
        std::vector<uint8_t> reply;
        write_agent_disconnect(reply, Status::kNormal, d.message);
        Frame rf;
        FUZZ_CHECK(reply.size() >= 4);
        FUZZ_CHECK(decode_frame(Bytes(reply.data() + 4, reply.size() - 4), &rf).ok());
        Disconnect d2;
        FUZZ_CHECK(parse_disconnect(rf, &d2).ok());
        if (!d.message.empty()) FUZZ_CHECK(d2.message == d.message.substr(0, 255));
      }
      break;
    }
    case FrameType::kAck: {
      uint32_t n = 0;
      std::vector<uint8_t> ack;
      // The agent's ACK builder writes the same frame (it always sets FIN, and only FIN).
      if (validate_actions(f.payload, &n).ok() && f.flags == kFlagFin) {
        FUZZ_CHECK(write_ack(ack, f.stream_id, f.frame_id, f.payload, kMaxFrameSize));
        FUZZ_CHECK(ack.size() == whole.size() &&
                   std::memcmp(ack.data(), whole.data(), ack.size()) == 0);
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  check_varint(in);
  while (in.size() >= 4) {
    const uint32_t len = read_frame_length(in.data());
    if (!check_frame_length(len, kMaxFrameSize).ok()) break;
    FUZZ_CHECK(len >= kMinFrameLength && len <= kMaxFrameSize);
    if (len > in.size() - 4) break;  // a connection would wait for more bytes
    const Bytes whole = in.subspan(0, 4 + len);
    Frame f;
    if (decode_frame(whole.subspan(4), &f).ok()) {
      FUZZ_CHECK(!f.abort() || f.fin());
      FUZZ_CHECK(f.payload.size() <= len);
      check_frame(whole, f);
    }
    in = in.subspan(4 + len);
  }
  return 0;
}
