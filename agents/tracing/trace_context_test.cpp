// Unit tests of the W3C trace context: traceparent parsing and formatting, the per-request
// context kept in a HAProxy variable, span ids, sampling and tracestate limits.
#include "agents/tracing/trace_context.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "util/text.h"

namespace spoad::agents::tracing {
namespace {

TEST(TraceParent, ParsesValidHeaders) {
  auto tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  ASSERT_TRUE(tp);
  EXPECT_EQ(util::hex_encode(tp->trace_id.data(), 16), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(to_hex64(tp->parent_id), "00f067aa0ba902b7");
  EXPECT_TRUE(tp->sampled());
  tp = parse_traceparent(" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00 ");
  ASSERT_TRUE(tp);
  EXPECT_FALSE(tp->sampled());
  // A later version may carry more fields: read as 00.
  EXPECT_TRUE(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
}

TEST(TraceParent, RejectsInvalidHeaders) {
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // extra with 00
           "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
       })
    EXPECT_FALSE(parse_traceparent(bad)) << bad;
}

TEST(TraceParent, FormatRoundTrip) {
  TraceId t{};
  t[15] = 1;
  EXPECT_EQ(format_traceparent(t, 0xabc, 1),
            "00-00000000000000000000000000000001-0000000000000abc-01");
}

TEST(Context, EncodeDecode) {
  IdGenerator ids;
  RequestContext c;
  c.trace_id = ids.trace_id();
  c.seed = ids.u64();
  c.remote_parent = 0x1234;
  c.flags = 1;
  const std::string s = c.encode();
  EXPECT_EQ(s.size(), 66u);
  auto d = RequestContext::decode(s);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trace_id, c.trace_id);
  EXPECT_EQ(d->seed, c.seed);
  EXPECT_EQ(d->remote_parent, 0x1234u);
  EXPECT_TRUE(d->sampled());
  EXPECT_FALSE(RequestContext::decode(s.substr(1)));
  EXPECT_FALSE(RequestContext::decode(std::string(66, 'z')));
}

TEST(SpanIds, DistinctNonZeroAndDeterministic) {
  for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{0xdeadbeef}, ~uint64_t{0}}) {
    std::set<uint64_t> seen;
    for (int k = 1; k <= 9; ++k) {
      const uint64_t id = span_id(seed, static_cast<SpanKindId>(k));
      EXPECT_NE(id, 0u);
      EXPECT_EQ(id, span_id(seed, static_cast<SpanKindId>(k)));
      seen.insert(id);
    }
    EXPECT_EQ(seen.size(), 9u);
  }
}

TEST(Sampling, RatioIsRespected) {
  IdGenerator ids;
  int yes = 0;
  for (int i = 0; i < 100000; ++i)
    yes += ids.sample(0.1);
  EXPECT_NEAR(yes / 100000.0, 0.1, 0.01);
  EXPECT_TRUE(ids.sample(1.0));
  EXPECT_FALSE(ids.sample(0.0));
}

TEST(TraceState, KeptWhenWithinTheLimits) {
  std::string out;
  EXPECT_EQ(limit_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 512, &out),
            TraceStateVerdict::kKept);
  EXPECT_EQ(out, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
  // OWS and empty members are not part of the list.
  EXPECT_EQ(limit_tracestate(" a=1 ,\t, b@v=x y ,", 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, "a=1,b@v=x y");
  EXPECT_EQ(limit_tracestate("", 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, "");
  std::string list;
  for (int i = 0; i < 32; ++i)
    list += (i ? "," : "") + std::string("k") + std::to_string(i) + "=v";
  EXPECT_EQ(limit_tracestate(list, 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, list);
}

TEST(TraceState, MalformedOrMoreThan32MembersIsDropped) {
  std::string out = "old";
  std::string list;
  for (int i = 0; i < 33; ++i)
    list += (i ? "," : "") + std::string("k") + std::to_string(i) + "=v";
  EXPECT_EQ(limit_tracestate(list, 100000, &out), TraceStateVerdict::kDropped);
  EXPECT_EQ(out, "");
  for (const char* bad : {"novalue", "=v", "Key=v", "k=a,b=", "k=v=w", "k=v\x01", "k=caf\xc3\xa9",
                          "k=v\n", "k!=v", "_k=v"})
    EXPECT_EQ(limit_tracestate(bad, 512, &out), TraceStateVerdict::kDropped) << bad;
  EXPECT_EQ(limit_tracestate(std::string(300, 'k') + "=v", 100000, &out),
            TraceStateVerdict::kDropped);  // a key has at most 256 characters
  EXPECT_EQ(limit_tracestate("k=" + std::string(257, 'v'), 100000, &out),
            TraceStateVerdict::kDropped);  // a value at most 256
  EXPECT_EQ(limit_tracestate(std::string(1 << 20, ','), 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, "");
}

TEST(TraceState, TruncatedToMaxBytesWholeMembersLongOnesFirst) {
  std::string out;
  const std::string long1 = "long1=" + std::string(200, 'a');  // > 128 bytes
  const std::string long2 = "long2=" + std::string(150, 'b');
  std::string list = "a=1," + long1 + ",b=2," + long2 + ",c=3";
  // 4+207+4+157+3 = 375 bytes with the commas: over 300, the long members go, from the end.
  EXPECT_EQ(limit_tracestate(list, 300, &out), TraceStateVerdict::kTruncated);
  EXPECT_EQ(out, "a=1," + long1 + ",b=2,c=3");
  EXPECT_EQ(limit_tracestate(list, 100, &out), TraceStateVerdict::kTruncated);
  EXPECT_EQ(out, "a=1,b=2,c=3");
  EXPECT_EQ(limit_tracestate(list, 8, &out), TraceStateVerdict::kTruncated);  // from the end
  EXPECT_EQ(out, "a=1,b=2");
  EXPECT_EQ(limit_tracestate(list, 2, &out), TraceStateVerdict::kDropped);  // nothing fits
  EXPECT_EQ(out, "");
  EXPECT_EQ(limit_tracestate("a=1", 0, &out), TraceStateVerdict::kDropped);
}

}  // namespace
}  // namespace spoad::agents::tracing
