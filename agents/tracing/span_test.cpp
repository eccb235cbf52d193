// Unit tests of span encoding: OTLP/JSON, always valid UTF-8, and attribute value limits.
#include "agents/tracing/span.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/escape.h"

namespace spoad::agents::tracing {
namespace {

// Ill-formed UTF-8 of every kind (overlong C0 80, a surrogate ED A0 80, U+110000 F4 90 80 80,
// an F5 lead, a truncated sequence, a lone continuation byte) in every string of a span: the
// encoding is valid UTF-8 that a strict parser reads, each bad byte shown as U+FFFD.
TEST(Json, SpanEncodingIsAlwaysValidUtf8) {
  const std::vector<std::string> bad = {"evil\xc0\x80",
                                        "sur\xed\xa0\x80",
                                        "big\xf4\x90\x80\x80",
                                        "f5\xf5\x80\x80\x80",
                                        "cut\xe2\x82",
                                        "lone\x80",
                                        "ctl\x01\x7f\n\"\\",
                                        std::string("nul\0x", 5),
                                        "ok caf\xc3\xa9 \xf0\x9f\x98\x80"};
  for (const std::string& b : bad) {
    Span s;
    s.name = b;
    s.trace_state = b;
    s.error = true;
    s.status_message = b;
    s.add(b, b);
    const std::string out = encode_span(s);
    EXPECT_TRUE(util::is_utf8(out)) << util::printable(b);
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(out)) << util::printable(b);
    EXPECT_TRUE(util::is_utf8(j["attributes"][0]["value"]["stringValue"].get<std::string>()));
  }
  Span s;
  s.add("server.address", "evil\xc0\x80");
  const auto j = nlohmann::json::parse(encode_span(s));
  EXPECT_EQ(j["attributes"][0]["value"]["stringValue"], "evil\xEF\xBF\xBD\xEF\xBF\xBD");
  Span ok;
  ok.add("k", "caf\xc3\xa9 \xf0\x9f\x98\x80");  // well-formed: copied as is
  EXPECT_EQ(nlohmann::json::parse(encode_span(ok))["attributes"][0]["value"]["stringValue"],
            "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

TEST(Attributes, ValuesAreCutOnACharacterBoundary) {
  EXPECT_EQ(cut_utf8("abcdef", 4), "abcd");
  EXPECT_EQ(cut_utf8("abc", 4), "abc");
  EXPECT_EQ(cut_utf8("ab\xc3\xa9", 3), "ab");  // é would be split: left out
  EXPECT_EQ(cut_utf8("ab\xc3\xa9", 4), "ab\xc3\xa9");
  EXPECT_EQ(cut_utf8("a\xf0\x9f\x98\x80z", 2), "a");  // 4-byte character
  EXPECT_EQ(cut_utf8("a\xf0\x9f\x98\x80z", 4), "a");
  EXPECT_EQ(cut_utf8("a\xf0\x9f\x98\x80z", 5), "a\xf0\x9f\x98\x80");
  EXPECT_EQ(cut_utf8("a\xc0\x80\x80\x80", 3), "a\xc0\x80");  // ill-formed: bytes, cut anywhere
  EXPECT_EQ(cut_utf8("\x80\x80\x80\x80\x80", 2), "\x80\x80");

  Span s;
  s.value_limit = 4;
  s.add("url.path", "/abcdef");
  s.add("short", "/ab");
  s.add("int", int64_t{7});
  EXPECT_EQ(s.truncated_attrs, 1u);
  EXPECT_EQ(s.attrs[0].str, "/abc");
  EXPECT_EQ(s.attrs[1].str, "/ab");
  for (size_t i = s.nattrs; i < Span::kMaxAttributes + 2; ++i)
    s.add("more", "x");
  EXPECT_EQ(s.dropped_attrs, 2u);
  EXPECT_EQ(nlohmann::json::parse(encode_span(s))["droppedAttributesCount"], 2);
}

TEST(Json, SpanEncodingFollowsOtlp) {
  Span s;
  s.name = "Frontend HTTP request";
  s.trace_id[0] = 0xab;
  s.span_id = 0x1122334455667788;
  s.parent_id = 0x99;
  s.link_span_id = 0x99;
  s.kind = Kind::kServer;
  s.start_us = 1700000000000001;
  s.end_us = 1700000000000002;
  s.error = true;
  s.status_message = "HTTP 5xx";
  s.trace_state = "k=v";
  s.add("http.request.method", "GET");
  s.add("http.response.status_code", int64_t{503});
  s.add("empty", "");  // skipped
  const auto j = nlohmann::json::parse(encode_span(s));
  EXPECT_EQ(j["traceId"], "ab000000000000000000000000000000");
  EXPECT_EQ(j["spanId"], "1122334455667788");
  EXPECT_EQ(j["parentSpanId"], "0000000000000099");
  EXPECT_EQ(j["traceState"], "k=v");
  EXPECT_EQ(j["kind"], 2);
  EXPECT_EQ(j["startTimeUnixNano"], "1700000000000001000");  // 64-bit integers as strings
  EXPECT_EQ(j["endTimeUnixNano"], "1700000000000002000");
  ASSERT_EQ(j["attributes"].size(), 2u);
  EXPECT_EQ(j["attributes"][0]["value"]["stringValue"], "GET");
  EXPECT_EQ(j["attributes"][1]["value"]["intValue"], "503");
  EXPECT_EQ(j["links"][0]["spanId"], "0000000000000099");
  EXPECT_EQ(j["status"]["code"], 2);
}
}  // namespace
}  // namespace spoad::agents::tracing
