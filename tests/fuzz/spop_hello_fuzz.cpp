// Fuzz target: HAPROXY-HELLO decoding as the agent does it (lib/spop/frames.h,
// parse_haproxy_hello; SPOE.txt 3.2.5), then the agent's side of the handshake.
// Input: byte 0 picks the frame's flags and ids (bit 0: FIN, bit 1: ABORT, bit 2: stream-id 1,
// bit 3: frame-id 1); the rest is the KV-LIST payload, so the fuzzer works on the keys and
// values directly. An accepted HELLO must satisfy what the header promises, and the
// AGENT-HELLO and AGENT-DISCONNECT the agent would answer with (built from the peer's own
// strings: capabilities, engine-id) must decode back to what was written.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "fuzz_check.h"
#include "spop/frames.h"

using namespace spoad::spop;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Frame f;
  f.type = FrameType::kHaproxyHello;
  f.raw_type = 1;
  f.flags = (data[0] & 1 ? kFlagFin : 0) | (data[0] & 2 ? kFlagAbort : 0);
  f.stream_id = (data[0] >> 2) & 1;
  f.frame_id = (data[0] >> 3) & 1;
  f.payload = Bytes(data + 1, size - 1);

  HaproxyHello h;
  const Result r = parse_haproxy_hello(f, &h);
  if (!r.ok()) {
    FUZZ_CHECK(r.detail != nullptr);
    (void)status_text(r.status);
    return 0;
  }
  FUZZ_CHECK(f.fin() && f.stream_id == 0 && f.frame_id == 0);
  FUZZ_CHECK(h.has_versions && supports_version_2_0(h.supported_versions));
  FUZZ_CHECK(h.has_max_frame_size && h.max_frame_size >= kMinFrameSize);
  FUZZ_CHECK(h.has_capabilities);

  // The agent's answer: min(its size, HAProxy's), the capabilities both sides have.
  const uint32_t mine = kDefaultFrameSize;
  const uint32_t size_out = static_cast<uint32_t>(std::min<uint64_t>(mine, h.max_frame_size));
  const Capabilities theirs = parse_capabilities(h.capabilities);
  const std::string caps = format_capabilities(theirs);
  std::vector<uint8_t> out;
  write_agent_hello(out, size_out, caps);
  FUZZ_CHECK(out.size() >= 4 && read_frame_length(out.data()) == out.size() - 4);
  Frame af;
  FUZZ_CHECK(decode_frame(Bytes(out.data() + 4, out.size() - 4), &af).ok());
  FUZZ_CHECK(af.type == FrameType::kAgentHello && af.fin());
  AgentHello ah;
  FUZZ_CHECK(parse_agent_hello(af, mine, &ah).ok());
  FUZZ_CHECK(ah.max_frame_size == size_out && ah.capabilities == caps);
  const Capabilities back = parse_capabilities(ah.capabilities);
  FUZZ_CHECK(back.pipelining == theirs.pipelining && back.async == theirs.async &&
             back.fragmentation == theirs.fragmentation);

  // A DISCONNECT whose message is the peer's engine-id (any bytes) survives the round trip,
  // cut to 255 bytes.
  out.clear();
  write_agent_disconnect(out, Status::kBadVersion, h.engine_id);
  FUZZ_CHECK(decode_frame(Bytes(out.data() + 4, out.size() - 4), &af).ok());
  Disconnect d;
  FUZZ_CHECK(parse_disconnect(af, &d).ok());
  FUZZ_CHECK(d.status_code == static_cast<uint32_t>(Status::kBadVersion));
  if (!h.engine_id.empty()) FUZZ_CHECK(d.message == h.engine_id.substr(0, 255));

  // The client side (spoa-bench, tests) writes a HELLO that the agent's parser accepts.
  out.clear();
  write_haproxy_hello(out, size_out, h.capabilities, h.engine_id, h.healthcheck);
  FUZZ_CHECK(decode_frame(Bytes(out.data() + 4, out.size() - 4), &af).ok());
  HaproxyHello h2;
  FUZZ_CHECK(parse_haproxy_hello(af, &h2).ok());
  FUZZ_CHECK(h2.capabilities == h.capabilities && h2.healthcheck == h.healthcheck);
  if (!h.healthcheck) FUZZ_CHECK(h2.engine_id == h.engine_id);
  return 0;
}
