// Unit tests of the SPOP codec (lib/spop), against SPOE.txt section 3 and HAProxy's own encoder
// (src/flt_spoe.c, src/mux_spop.c in haproxy/haproxy).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "spop/frames.h"
#include "spop/reader.h"
#include "spop/reassembler.h"
#include "spop/varint.h"
#include "spop/writer.h"
#include "tests/support/spop_frame.h"

namespace spoad::spop {
namespace {

using Buf = std::vector<uint8_t>;

Bytes B(const Buf& b) {
  return Bytes(b.data(), b.size());
}
Buf hex(const std::string& s) {
  Buf out;
  for (size_t i = 0; i + 1 < s.size();) {
    if (s[i] == ' ') {
      ++i;
      continue;
    }
    out.push_back(static_cast<uint8_t>(std::stoi(s.substr(i, 2), nullptr, 16)));
    i += 2;
  }
  return out;
}
Buf str_bytes(const std::string& s) {
  return Buf(s.begin(), s.end());
}
Buf cat(std::initializer_list<Buf> parts) {
  Buf out;
  for (const Buf& p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Splits a buffer holding exactly one frame (length prefix included) into a Frame.
Frame frame_of(const Buf& b) {
  EXPECT_GE(b.size(), 4u);
  const uint32_t len = read_frame_length(b.data());
  EXPECT_EQ(len + 4u, b.size());
  Frame f;
  Result r = decode_frame(Bytes(b.data() + 4, len), &f);
  EXPECT_TRUE(r.ok()) << r.detail;
  return f;
}

// ---- varint ---------------------------------------------------------------------------

// ---- typed values ----------------------------------------------------------------------

TEST(Value, TextIsTheContentOfAStringOrBinaryOnly) {
  EXPECT_TRUE(Value::String("ab").is_text());
  EXPECT_EQ(Value::String("ab").text(), "ab");
  EXPECT_TRUE(Value::Binary(std::string_view("\0\xff", 2)).is_text());
  EXPECT_EQ(Value::Binary(std::string_view("\0\xff", 2)).text().size(), 2u);
  EXPECT_TRUE(Value::String("").is_text());
  const uint8_t addr[4] = {127, 0, 0, 1};
  for (const Value& v :
       {Value::Null(), Value::Bool(true), Value::Int32(5), Value::Uint64(7), Value::Ipv4(addr)}) {
    EXPECT_FALSE(v.is_text()) << static_cast<int>(v.type);
    EXPECT_TRUE(v.text().empty()) << static_cast<int>(v.type);
  }
}

TEST(Varint, KnownVector16380) {
  uint8_t b[10];
  ASSERT_EQ(encode_varint(16380, b), 3u);
  EXPECT_EQ(b[0], 0xFC);
  EXPECT_EQ(b[1], 0xF0);
  EXPECT_EQ(b[2], 0x06);
  uint64_t v = 0;
  EXPECT_EQ(decode_varint(Bytes(b, 3), &v), 3);
  EXPECT_EQ(v, 16380u);
}

TEST(Varint, RangeBoundaries) {
  // SPOE.txt 3.1 / haproxy-facts.md: the first value of each length.
  const struct {
    uint64_t v;
    size_t len;
  } cases[] = {{0, 1},        {239, 1},        {240, 2},        {2287, 2},
               {2288, 3},     {264431, 3},     {264432, 4},     {33818863, 4},
               {33818864, 5}, {4328786159, 5}, {4328786160, 6}, {UINT64_MAX, 10}};
  for (const auto& c : cases) {
    uint8_t b[10];
    EXPECT_EQ(varint_size(c.v), c.len) << c.v;
    ASSERT_EQ(encode_varint(c.v, b), c.len) << c.v;
    uint64_t back = 0;
    EXPECT_EQ(decode_varint(Bytes(b, c.len), &back), static_cast<int>(c.len)) << c.v;
    EXPECT_EQ(back, c.v);
  }
}

TEST(Varint, RandomRoundTrip) {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t v = rng() >> (rng() % 64);
    uint8_t b[10];
    const size_t n = encode_varint(v, b);
    uint64_t back = 0;
    ASSERT_EQ(decode_varint(Bytes(b, n), &back), static_cast<int>(n));
    ASSERT_EQ(back, v);
  }
}

TEST(Varint, TruncatedNeverReadsPastInput) {
  uint8_t b[10];
  const size_t n = encode_varint(UINT64_MAX, b);
  for (size_t cut = 0; cut < n; ++cut) {
    uint64_t v = 0;
    EXPECT_EQ(decode_varint(Bytes(b, cut), &v), 0) << cut;
  }
}

TEST(Varint, MoreThanTenBytesIsAnError) {
  Buf b(12, 0xFF);
  uint64_t v = 0;
  EXPECT_EQ(decode_varint(B(b), &v), -1);
  // Exactly ten continuation-style bytes: the 11th would be needed, still an error.
  Buf ten(10, 0xF0);
  EXPECT_EQ(decode_varint(B(ten), &v), -1);
}

TEST(Varint, OverflowBeyond64BitsIsAnError) {
  // Ten bytes whose last one carries bits beyond 2^64.
  Buf b = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F};
  uint64_t v = 0;
  EXPECT_EQ(decode_varint(B(b), &v), -1);
}

// ---- typed data -----------------------------------------------------------------------

Value round_trip(const Value& in, Buf* storage) {
  storage->clear();
  Writer w(*storage);
  w.typed(in);
  Reader r(B(*storage));
  Value out;
  EXPECT_TRUE(r.typed(&out)) << r.error().detail;
  EXPECT_TRUE(r.empty());
  return out;
}

TEST(Typed, AllTenTypesRoundTrip) {
  Buf s;
  const uint8_t v4[4] = {192, 0, 2, 1};
  const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};

  EXPECT_EQ(round_trip(Value::Null(), &s).type, DataType::kNull);
  EXPECT_EQ(s, hex("00"));

  Value t = round_trip(Value::Bool(true), &s);
  EXPECT_EQ(t.type, DataType::kBool);
  EXPECT_TRUE(t.b);
  EXPECT_EQ(s, hex("11"));
  t = round_trip(Value::Bool(false), &s);
  EXPECT_FALSE(t.b);
  EXPECT_EQ(s, hex("01"));

  t = round_trip(Value::Int32(-5), &s);
  EXPECT_EQ(t.type, DataType::kInt32);
  EXPECT_EQ(t.as_int64(), -5);
  EXPECT_EQ(s.size(), 11u);  // negative ints take 10 varint bytes, as HAProxy encodes them

  t = round_trip(Value::Uint32(4000000000u), &s);
  EXPECT_EQ(t.type, DataType::kUint32);
  EXPECT_EQ(t.u64, 4000000000u);

  t = round_trip(Value::Int64(INT64_MIN), &s);
  EXPECT_EQ(t.type, DataType::kInt64);
  EXPECT_EQ(t.as_int64(), INT64_MIN);

  t = round_trip(Value::Uint64(UINT64_MAX), &s);
  EXPECT_EQ(t.type, DataType::kUint64);
  EXPECT_EQ(t.u64, UINT64_MAX);

  t = round_trip(Value::Ipv4(v4), &s);
  EXPECT_EQ(t.type, DataType::kIpv4);
  EXPECT_EQ(s, hex("06 c0000201"));
  EXPECT_EQ(0, std::memcmp(t.bytes.data(), v4, 4));

  t = round_trip(Value::Ipv6(v6), &s);
  EXPECT_EQ(t.type, DataType::kIpv6);
  EXPECT_EQ(s.size(), 17u);
  EXPECT_EQ(0, std::memcmp(t.bytes.data(), v6, 16));

  t = round_trip(Value::String("hello"), &s);
  EXPECT_EQ(t.type, DataType::kString);
  EXPECT_EQ(t.bytes, "hello");
  EXPECT_EQ(s, cat({hex("08 05"), str_bytes("hello")}));

  t = round_trip(Value::String(""), &s);
  EXPECT_EQ(s, hex("08 00"));  // an empty string is the type byte and a 0 length
  EXPECT_EQ(t.bytes, "");

  const std::string bin("\x00\xff\x00", 3);
  t = round_trip(Value::Binary(bin), &s);
  EXPECT_EQ(t.type, DataType::kBinary);
  EXPECT_EQ(t.bytes, bin);
}

TEST(Typed, LongStringLengthUsesMultiByteVarint) {
  const std::string big(20000, 'x');
  Buf s;
  Value t = round_trip(Value::Binary(big), &s);
  EXPECT_EQ(t.bytes.size(), big.size());
  EXPECT_EQ(s.size(), 1 + 3 + big.size());
}

TEST(Typed, ReservedTypeIdsAreInvalid) {
  for (uint8_t id = 10; id <= 15; ++id) {
    Buf b = {id, 0, 0, 0, 0};
    Reader r(B(b));
    Value v;
    EXPECT_FALSE(r.typed(&v));
    EXPECT_EQ(r.error().status, Status::kInvalid);
    EXPECT_EQ(r.position(), 0u);  // a failed read does not advance
  }
}

TEST(Typed, TruncatedValuesAreInvalid) {
  const Buf cases[] = {hex("06 c00002"), hex("07 20010db8"), hex("08 05 6865"), hex("02 f0"),
                       hex("09")};
  for (const Buf& b : cases) {
    Reader r(B(b));
    Value v;
    EXPECT_FALSE(r.typed(&v));
    EXPECT_EQ(r.error().status, Status::kInvalid);
  }
}

// ---- KV lists, messages, actions --------------------------------------------------------

TEST(Lists, MessagesRoundTripAndIterate) {
  Buf payload;
  Writer w(payload);
  const uint8_t ip[4] = {10, 1, 2, 3};
  const KV args1[] = {{"ip", Value::Ipv4(ip)}, {"", Value::Int64(7)}, {"", Value::Null()}};
  w.message("check-client-ip", args1);
  w.message("empty", {});
  uint32_t n = 0;
  ASSERT_TRUE(validate_messages(B(payload), &n).ok());
  EXPECT_EQ(n, 2u);
  std::vector<std::string> names;
  for (const Message& m : messages(B(payload)))
    names.emplace_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"check-client-ip", "empty"}));

  const Message first = *messages(B(payload)).begin();
  EXPECT_EQ(first.nargs, 3);
  auto ipa = find_arg(first, "ip");
  ASSERT_TRUE(ipa.has_value());
  EXPECT_EQ(ipa->value.type, DataType::kIpv4);
  auto second = arg_at(first, 1);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->name, "");
  EXPECT_EQ(second->value.as_int64(), 7);
  EXPECT_FALSE(find_arg(first, "nope").has_value());
  EXPECT_FALSE(arg_at(first, 3).has_value());
  int count = 0;
  for (const KV& kv : args(first)) {
    (void)kv;
    ++count;
  }
  EXPECT_EQ(count, 3);
}

TEST(Lists, EmptyNotifyPayloadHasZeroMessages) {
  uint32_t n = 99;
  ASSERT_TRUE(validate_messages(Bytes(), &n).ok());
  EXPECT_EQ(n, 0u);
}

TEST(Lists, TruncatedMessageListIsInvalidAtEveryCut) {
  Buf payload;
  Writer w(payload);
  const KV a[] = {{"s", Value::String("abcdef")}, {"i", Value::Uint64(1u << 20)}};
  w.message("m", a);
  for (size_t cut = 1; cut < payload.size(); ++cut) {
    uint32_t n = 0;
    Result r = validate_messages(Bytes(payload.data(), cut), &n);
    EXPECT_EQ(r.status, Status::kInvalid) << cut;
  }
}

TEST(Lists, ActionsRoundTripAllScopes) {
  Buf payload;
  Writer w(payload);
  const Scope scopes[] = {Scope::kProcess, Scope::kSession, Scope::kTransaction, Scope::kRequest,
                          Scope::kResponse};
  for (Scope s : scopes)
    w.set_var(s, "score", Value::Int32(42));
  w.unset_var(Scope::kTransaction, "gone");
  // Layout of set-var: <01><03><scope><name: varint len + bytes, no type byte><typed value>.
  EXPECT_EQ(Buf(payload.begin(), payload.begin() + 11),
            cat({hex("01 03 00 05"), str_bytes("score"), hex("02 2a")}));
  uint32_t n = 0;
  ASSERT_TRUE(validate_actions(B(payload), &n).ok());
  EXPECT_EQ(n, 6u);
  int i = 0;
  for (const Action& a : actions(B(payload))) {
    if (i < 5) {
      EXPECT_EQ(a.type, ActionType::kSetVar);
      EXPECT_EQ(a.scope, scopes[i]);
      EXPECT_EQ(a.name, "score");
      EXPECT_EQ(a.value.as_int64(), 42);
    } else {
      EXPECT_EQ(a.type, ActionType::kUnsetVar);
      EXPECT_EQ(a.name, "gone");
    }
    ++i;
  }
}

TEST(Lists, BadActionsAreInvalid) {
  uint32_t n = 0;
  EXPECT_EQ(validate_actions(B(hex("03 03 02 01 61 00")), &n).status, Status::kInvalid);  // type 3
  EXPECT_EQ(validate_actions(B(hex("01 02 02 01 61 00")), &n).status, Status::kInvalid);  // nargs
  EXPECT_EQ(validate_actions(B(hex("01 03 05 01 61 00")), &n).status, Status::kInvalid);  // scope
}

// ---- frames -----------------------------------------------------------------------------

TEST(Frames, EveryFrameTypeRoundTrips) {
  const FrameType types[] = {
      FrameType::kUnset,  FrameType::kHaproxyHello, FrameType::kHaproxyDisconnect,
      FrameType::kNotify, FrameType::kAgentHello,   FrameType::kAgentDisconnect,
      FrameType::kAck};
  for (FrameType t : types) {
    for (uint32_t flags : {0u, kFlagFin, kFlagFin | kFlagAbort}) {
      Buf b;
      FrameWriter w(b, t, flags, 300, 70000);
      w.raw(std::string_view("payload"));
      ASSERT_TRUE(w.finish(16380));
      Frame f = frame_of(b);
      EXPECT_EQ(f.type, t);
      EXPECT_EQ(f.flags, flags);
      EXPECT_EQ(f.stream_id, 300u);
      EXPECT_EQ(f.frame_id, 70000u);
      EXPECT_EQ(std::string(f.payload.begin(), f.payload.end()), "payload");
      EXPECT_EQ(f.fin(), (flags & kFlagFin) != 0);
      EXPECT_EQ(f.abort(), (flags & kFlagAbort) != 0);
    }
  }
}

TEST(Frames, MetadataLayoutOfHelloIsElevenBytes) {
  Buf b;
  write_agent_hello(b, 16380, "pipelining");
  // <len:4> <type 101> <flags 00000001> <sid 00> <fid 00>
  EXPECT_EQ(Buf(b.begin() + 4, b.begin() + 11), hex("65 00000001 00 00"));
}

TEST(Frames, AbortWithoutFinIsInvalid) {
  Buf b;
  FrameWriter w(b, FrameType::kUnset, kFlagAbort, 1, 1);
  ASSERT_TRUE(w.finish(16380));
  Frame f;
  EXPECT_EQ(decode_frame(Bytes(b.data() + 4, b.size() - 4), &f).status, Status::kInvalid);
}

TEST(Frames, TruncatedMetadataIsInvalid) {
  Frame f;
  const Buf cases[] = {hex("03"), hex("03 000000"), hex("03 00000001"), hex("03 00000001 f0"),
                       hex("03 00000001 01")};
  for (const Buf& b : cases)
    EXPECT_EQ(decode_frame(B(b), &f).status, Status::kInvalid);
}

TEST(Frames, LengthChecks) {
  for (uint32_t len = 0; len < 7; ++len)
    EXPECT_EQ(check_frame_length(len, 16380).status, Status::kInvalid) << len;
  EXPECT_TRUE(check_frame_length(7, 16380).ok());
  EXPECT_TRUE(check_frame_length(16380, 16380).ok());
  EXPECT_EQ(check_frame_length(16381, 16380).status, Status::kTooBig);
}

TEST(Frames, FrameWriterRefusesOversizedFrameAndLeavesBufferIntact) {
  Buf b = {1, 2, 3};
  FrameWriter w(b, FrameType::kAck, kFlagFin, 1, 1);
  w.raw(std::string(300, 'x'));
  EXPECT_FALSE(w.finish(256));
  EXPECT_EQ(b, (Buf{1, 2, 3}));
  EXPECT_FALSE(write_ack(b, 1, 1, B(Buf(300, 0)), 256));
  EXPECT_EQ(b, (Buf{1, 2, 3}));
}

// ---- HELLO ------------------------------------------------------------------------------

// The exact health-check HELLO HAProxy 3.x sends (tcpcheck.c; haproxy-facts.md A.2).
const Buf kHealthCheckHello = cat(
    {hex("0000004e 01 00000001 00 00"), hex("12"), str_bytes("supported-versions"), hex("08 03"),
     str_bytes("2.0"), hex("0e"), str_bytes("max-frame-size"), hex("03 fcf006"), hex("0c"),
     str_bytes("capabilities"), hex("08 00"), hex("0b"), str_bytes("healthcheck"), hex("11")});

TEST(Hello, HealthCheckHelloOfHaproxy3Is78Bytes) {
  ASSERT_EQ(kHealthCheckHello.size(), 4u + 78u);
  Frame f = frame_of(kHealthCheckHello);
  EXPECT_EQ(f.type, FrameType::kHaproxyHello);
  HaproxyHello h;
  Result r = parse_haproxy_hello(f, &h);
  ASSERT_TRUE(r.ok()) << r.detail;
  EXPECT_TRUE(h.healthcheck);
  EXPECT_EQ(h.max_frame_size, 16380u);
  EXPECT_TRUE(h.has_capabilities);
  EXPECT_EQ(h.capabilities, "");
  EXPECT_EQ(h.engine_id, "");
}

TEST(Hello, OurHealthCheckHelloIsByteIdenticalToHaproxys) {
  Buf b;
  write_haproxy_hello(b, 16380, "", "ignored-in-healthchecks", true);
  EXPECT_EQ(b, kHealthCheckHello);
}

TEST(Hello, RegularHelloWithEngineId) {
  Buf b;
  write_haproxy_hello(b, 16380, "pipelining,async", "6c3d5bb1-bd21-4e8e-97e5-d1b6ba9e6e4a", false);
  HaproxyHello h;
  ASSERT_TRUE(parse_haproxy_hello(frame_of(b), &h).ok());
  EXPECT_FALSE(h.healthcheck);
  EXPECT_EQ(h.engine_id, "6c3d5bb1-bd21-4e8e-97e5-d1b6ba9e6e4a");
  const Capabilities c = parse_capabilities(h.capabilities);
  EXPECT_TRUE(c.pipelining);
  EXPECT_TRUE(c.async);
  EXPECT_FALSE(c.fragmentation);
}

Buf hello_with(std::initializer_list<std::pair<std::string, Value>> kvs, uint32_t flags = kFlagFin,
               uint64_t sid = 0) {
  Buf b;
  FrameWriter w(b, FrameType::kHaproxyHello, flags, sid, 0);
  for (const auto& [k, v] : kvs)
    w.kv(k, v);
  w.finish(UINT32_MAX);
  return b;
}

Status hello_status(const Buf& b) {
  HaproxyHello h;
  return parse_haproxy_hello(frame_of(b), &h).status;
}

TEST(Hello, HaproxyHelloErrorsMapToDisconnectStatuses) {
  const auto v = Value::String("2.0");
  const auto m = Value::Uint32(16380);
  const auto c = Value::String("pipelining");
  EXPECT_EQ(hello_status(hello_with(
                {{"supported-versions", v}, {"max-frame-size", m}, {"capabilities", c}})),
            Status::kNormal);
  EXPECT_EQ(hello_status(hello_with({{"max-frame-size", m}, {"capabilities", c}})),
            Status::kNoVersion);
  EXPECT_EQ(hello_status(hello_with({{"supported-versions", Value::String("1.0")},
                                     {"max-frame-size", m},
                                     {"capabilities", c}})),
            Status::kBadVersion);
  EXPECT_EQ(hello_status(hello_with({{"supported-versions", v}, {"capabilities", c}})),
            Status::kNoFrameSize);
  EXPECT_EQ(hello_status(hello_with({{"supported-versions", v},
                                     {"max-frame-size", Value::Uint32(255)},
                                     {"capabilities", c}})),
            Status::kBadFrameSize);
  EXPECT_EQ(hello_status(hello_with({{"supported-versions", v}, {"max-frame-size", m}})),
            Status::kNoCapabilities);
  EXPECT_EQ(
      hello_status(hello_with(
          {{"supported-versions", Value::Int32(2)}, {"max-frame-size", m}, {"capabilities", c}})),
      Status::kInvalid);
  EXPECT_EQ(hello_status(hello_with(
                {{"supported-versions", v}, {"max-frame-size", m}, {"capabilities", c}}, 0)),
            Status::kFragNotSupported);
  EXPECT_EQ(
      hello_status(hello_with(
          {{"supported-versions", v}, {"max-frame-size", m}, {"capabilities", c}}, kFlagFin, 5)),
      Status::kInvalid);
  // Unknown keys are skipped; any integer type is accepted for max-frame-size.
  EXPECT_EQ(hello_status(hello_with({{"x-custom", Value::Bool(true)},
                                     {"supported-versions", v},
                                     {"max-frame-size", Value::Int64(1024)},
                                     {"capabilities", c}})),
            Status::kNormal);
}

TEST(Hello, SupportedVersions) {
  for (const char* ok : {"2.0", " 2.0 ", "1.0,2.0", "1.0, 2.0", "2.3", "3.0,2.1"})
    EXPECT_TRUE(supports_version_2_0(ok)) << ok;
  for (const char* bad : {"", "1.0", "3.0", "2", "x.y", "2.", ".0", "20"})
    EXPECT_FALSE(supports_version_2_0(bad)) << bad;
}

TEST(Hello, AgentHelloAsHaproxyChecksIt) {
  Buf b;
  write_agent_hello(b, 4096, "pipelining,fragmentation");
  AgentHello h;
  Result r = parse_agent_hello(frame_of(b), 16380, &h);
  ASSERT_TRUE(r.ok()) << r.detail;
  EXPECT_EQ(h.version, "2.0");
  EXPECT_EQ(h.max_frame_size, 4096u);
  EXPECT_EQ(h.capabilities, "pipelining,fragmentation");
  // Larger than what HAProxy announced.
  EXPECT_EQ(parse_agent_hello(frame_of(b), 2048, &h).status, Status::kBadFrameSize);

  Buf v1;
  FrameWriter w(v1, FrameType::kAgentHello, kFlagFin, 0, 0);
  w.kv("version", Value::String("1.0"));
  w.kv("max-frame-size", Value::Uint32(1024));
  w.finish(UINT32_MAX);
  EXPECT_EQ(parse_agent_hello(frame_of(v1), 16380, &h).status, Status::kBadVersion);

  Buf nomfs;
  FrameWriter w2(nomfs, FrameType::kAgentHello, kFlagFin, 0, 0);
  w2.kv("version", Value::String("2.0"));
  w2.finish(UINT32_MAX);
  EXPECT_EQ(parse_agent_hello(frame_of(nomfs), 16380, &h).status, Status::kNoFrameSize);
}

TEST(Hello, CapabilitiesParseAndFormat) {
  Capabilities c = parse_capabilities(" pipelining, async ,fragmentation,unknown-thing");
  EXPECT_TRUE(c.pipelining && c.async && c.fragmentation);
  EXPECT_EQ(format_capabilities(c), "pipelining,async,fragmentation");
  EXPECT_EQ(format_capabilities(parse_capabilities("")), "");
  EXPECT_EQ(format_capabilities(parse_capabilities("async")), "async");
}

// ---- DISCONNECT -------------------------------------------------------------------------

TEST(Disconnect, RoundTripAndTexts) {
  Buf b;
  write_agent_disconnect(b, Status::kTooBig, "");
  Disconnect d;
  ASSERT_TRUE(parse_disconnect(frame_of(b), &d).ok());
  EXPECT_EQ(d.status_code, 3u);
  EXPECT_EQ(d.message, "frame is too big");

  b.clear();
  write_haproxy_disconnect(b, Status::kNormal, "");
  ASSERT_TRUE(parse_disconnect(frame_of(b), &d).ok());
  EXPECT_EQ(d.status_code, 0u);
  EXPECT_EQ(d.message, "normal");
}

TEST(Disconnect, MessageIsCutTo255Bytes) {
  Buf b;
  write_agent_disconnect(b, Status::kInvalid, std::string(1000, 'm'));
  Disconnect d;
  ASSERT_TRUE(parse_disconnect(frame_of(b), &d).ok());
  EXPECT_EQ(d.message.size(), 255u);
}

TEST(Disconnect, StatusTextsOfEveryCode) {
  const char* texts[] = {"normal",
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
                         "resource allocation error"};
  for (uint32_t c = 0; c <= 13; ++c)
    EXPECT_EQ(status_text(c), texts[c]) << c;
  EXPECT_EQ(status_text(Status::kUnknown), "an unknown error occurred");
  EXPECT_EQ(status_text(uint32_t{50}), "an unknown error occurred");
}

// ---- fragment reassembly ----------------------------------------------------------------

constexpr auto* frag = &spoad::testing::frame_of;

TEST(Reassembly, UnfragmentedNotifyIsNotCopied) {
  Reassembler r(1 << 20);
  Buf p = {1, 2, 3};
  Reassembler::Step st;
  Bytes out;
  ASSERT_TRUE(r.feed(frag(FrameType::kNotify, kFlagFin, 1, 1, p), &st, &out).ok());
  EXPECT_EQ(st, Reassembler::Step::kComplete);
  EXPECT_EQ(out.data(), p.data());
}

TEST(Reassembly, NotifyThenUnsetFrames) {
  Reassembler r(1 << 20);
  Buf a = {1, 2}, b = {3}, c = {4, 5, 6};
  Reassembler::Step st;
  Bytes out;
  ASSERT_TRUE(r.feed(frag(FrameType::kNotify, 0, 9, 2, a), &st, &out).ok());
  EXPECT_EQ(st, Reassembler::Step::kPending);
  EXPECT_TRUE(r.active());
  ASSERT_TRUE(r.feed(frag(FrameType::kUnset, 0, 9, 2, b), &st, &out).ok());
  EXPECT_EQ(st, Reassembler::Step::kPending);
  ASSERT_TRUE(r.feed(frag(FrameType::kUnset, kFlagFin, 9, 2, c), &st, &out).ok());
  EXPECT_EQ(st, Reassembler::Step::kComplete);
  EXPECT_EQ(Buf(out.begin(), out.end()), (Buf{1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(r.active());
}

TEST(Reassembly, AbortDiscards) {
  Reassembler r(1 << 20);
  Buf a = {1, 2};
  Reassembler::Step st;
  Bytes out;
  ASSERT_TRUE(r.feed(frag(FrameType::kNotify, 0, 9, 2, a), &st, &out).ok());
  ASSERT_TRUE(r.feed(frag(FrameType::kUnset, kFlagFin | kFlagAbort, 9, 2, {}), &st, &out).ok());
  EXPECT_EQ(st, Reassembler::Step::kAborted);
  EXPECT_FALSE(r.active());
  // The next frame starts afresh.
  ASSERT_TRUE(r.feed(frag(FrameType::kNotify, kFlagFin, 10, 1, a), &st, &out).ok());
  EXPECT_EQ(st, Reassembler::Step::kComplete);
}

TEST(Reassembly, Errors) {
  Buf a = {1, 2};
  Reassembler::Step st;
  Bytes out;
  {
    Reassembler r(1 << 20);
    EXPECT_EQ(r.feed(frag(FrameType::kUnset, kFlagFin, 1, 1, a), &st, &out).status,
              Status::kFrameIdNotFound);
  }
  {
    Reassembler r(1 << 20);
    ASSERT_TRUE(r.feed(frag(FrameType::kNotify, 0, 1, 1, a), &st, &out).ok());
    EXPECT_EQ(r.feed(frag(FrameType::kNotify, kFlagFin, 2, 1, a), &st, &out).status,
              Status::kInterlaced);
  }
  {
    Reassembler r(1 << 20);
    ASSERT_TRUE(r.feed(frag(FrameType::kNotify, 0, 1, 1, a), &st, &out).ok());
    EXPECT_EQ(r.feed(frag(FrameType::kUnset, kFlagFin, 1, 2, a), &st, &out).status,
              Status::kInterlaced);
  }
  {
    Reassembler r(3);
    ASSERT_TRUE(r.feed(frag(FrameType::kNotify, 0, 1, 1, a), &st, &out).ok());
    EXPECT_EQ(r.feed(frag(FrameType::kUnset, kFlagFin, 1, 1, a), &st, &out).status,
              Status::kTooBig);
  }
}

TEST(Reassembly, NeverAllocatesBeyondTheBound) {
  const size_t bound = 100000;
  Reassembler r(bound);
  Buf chunk(999, 7);
  Reassembler::Step st;
  Bytes out;
  ASSERT_TRUE(r.feed(frag(FrameType::kNotify, 0, 1, 1, chunk), &st, &out).ok());
  Result res;
  while ((res = r.feed(frag(FrameType::kUnset, 0, 1, 1, chunk), &st, &out)).ok()) {
  }
  EXPECT_EQ(res.status, Status::kTooBig);
  EXPECT_LE(r.buffered(), bound);
}

// ---- robustness: random input never crashes or over-reads --------------------------------

TEST(Robustness, RandomBytesAreRejectedOrDecodedWithinBounds) {
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) {
    Buf b(rng() % 64);
    for (auto& x : b)
      x = static_cast<uint8_t>(rng());
    Frame f;
    if (decode_frame(B(b), &f).ok()) {
      EXPECT_GE(f.payload.data(), b.data());
      EXPECT_LE(f.payload.data() + f.payload.size(), b.data() + b.size());
      HaproxyHello h;
      Disconnect d;
      uint32_t n;
      (void)parse_haproxy_hello(f, &h);
      (void)parse_disconnect(f, &d);
      if (validate_messages(f.payload, &n).ok())
        for (const Message& m : messages(f.payload))
          for (const KV& kv : args(m))
            (void)kv;
      (void)validate_actions(f.payload, &n);
    }
  }
}

}  // namespace
}  // namespace spoad::spop
