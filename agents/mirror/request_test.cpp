// Unit tests of the mirror agent's request model: header samples, request targets, the
// headers of a replay.
#include "agents/mirror/request.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spop/varint.h"

namespace spoad::agents::mirror {
namespace {

// Encodes headers as req.hdrs_bin does: <varint len><name><varint len><value>..., 0, 0.
std::string hdrs_bin(const std::vector<std::pair<std::string, std::string>>& hs, bool end = true) {
  std::string out;
  auto str = [&out](const std::string& s) {
    uint8_t buf[10];
    const size_t n = spop::encode_varint(s.size(), buf);
    out.append(reinterpret_cast<const char*>(buf), n);
    out += s;
  };
  for (const auto& [k, v] : hs) {
    str(k);
    str(v);
  }
  if (end) {
    str("");
    str("");
  }
  return out;
}

TEST(HdrsBin, DecodesDuplicatesEmptyValuesAndLongValues) {
  const std::string long_value(300, 'v');  // a 2-byte varint length
  const std::string in = hdrs_bin({{"host", "a.example"},
                                   {"x-dup", "1"},
                                   {"x-dup", "2"},
                                   {"x-empty", ""},
                                   {"x-long", long_value}});
  std::vector<Header> hs;
  ASSERT_EQ(decode_hdrs_bin(in, &hs), "");
  ASSERT_EQ(hs.size(), 5u);
  EXPECT_EQ(hs[0].name, "host");
  EXPECT_EQ(hs[0].value, "a.example");
  EXPECT_EQ(hs[2].value, "2");
  EXPECT_EQ(hs[3].value, "");
  EXPECT_EQ(hs[4].value, long_value);
}

TEST(HdrsBin, EmptyListAndMissingEndMarker) {
  std::vector<Header> hs;
  EXPECT_EQ(decode_hdrs_bin(hdrs_bin({}), &hs), "");
  EXPECT_TRUE(hs.empty());
  EXPECT_EQ(decode_hdrs_bin("", &hs), "");
  EXPECT_EQ(decode_hdrs_bin(hdrs_bin({{"a", "b"}}, false), &hs), "");
  EXPECT_EQ(hs.size(), 1u);
}

TEST(HdrsBin, RejectsMalformedInput) {
  std::vector<Header> hs;
  const std::string good = hdrs_bin({{"name", "value"}});
  // Every truncation that does not end between two headers is an error.
  for (size_t n = 1; n < good.size(); ++n) {
    const std::string cut = good.substr(0, n);
    if (n == 1 + 4 + 1 + 5) continue;  // exactly after the first header: accepted
    EXPECT_NE(decode_hdrs_bin(cut, &hs), "") << "cut at " << n;
  }
  EXPECT_NE(decode_hdrs_bin(good + "x", &hs), "");                     // after the end
  EXPECT_NE(decode_hdrs_bin(hdrs_bin({{"", "v"}}), &hs), "");          // value, no name
  EXPECT_NE(decode_hdrs_bin(hdrs_bin({{"bad name", "v"}}), &hs), "");  // not a token
  EXPECT_NE(decode_hdrs_bin(hdrs_bin({{"x", "a\r\nInjected: 1"}}), &hs), "");
  EXPECT_NE(decode_hdrs_bin(hdrs_bin({{"x", std::string("a\0b", 3)}}), &hs), "");
  EXPECT_NE(decode_hdrs_bin(std::string(11, '\xff'), &hs), "");  // varint too long
  EXPECT_NE(decode_hdrs_bin("\xf0\xff\xff", &hs), "");           // length past the end
}

TEST(HdrsText, DecodesReqHdrs) {
  std::vector<Header> hs;
  ASSERT_EQ(
      decode_hdrs_text("Host: a\r\nX-Dup: 1\r\nX-Dup:2\r\nX-Empty:\r\nX-Sp:  v  \r\n\r\n", &hs),
      "");
  ASSERT_EQ(hs.size(), 5u);
  EXPECT_EQ(hs[2].value, "2");
  EXPECT_EQ(hs[3].value, "");
  EXPECT_EQ(hs[4].value, "v");
  ASSERT_EQ(decode_hdrs_text("A: 1\nB: 2", &hs), "");
  EXPECT_EQ(hs.size(), 2u);
  EXPECT_NE(decode_hdrs_text("no colon\r\n", &hs), "");
  EXPECT_NE(decode_hdrs_text("Bad Name: 1\r\n", &hs), "");
}

TEST(RequestTarget, OriginAbsoluteAndAsteriskForms) {
  std::string t;
  ASSERT_TRUE(request_target("/a/b?c=d&e", &t));
  EXPECT_EQ(t, "/a/b?c=d&e");
  ASSERT_TRUE(request_target("https://example.com:8443/a?b", &t));
  EXPECT_EQ(t, "/a?b");
  ASSERT_TRUE(request_target("http://user@example.com/x", &t));
  EXPECT_EQ(t, "/x");
  ASSERT_TRUE(request_target("http://example.com?q=1", &t));
  EXPECT_EQ(t, "/?q=1");
  ASSERT_TRUE(request_target("http://example.com", &t));
  EXPECT_EQ(t, "/");
  ASSERT_TRUE(request_target("http://[2001:db8::1]:80/v6", &t));
  EXPECT_EQ(t, "/v6");
  ASSERT_TRUE(request_target("*", &t));
  EXPECT_EQ(t, "*");
  for (const char* bad :
       {"", "example.com:443", "a/b", "://x/y", "/a b", "/a\r\nX: y", "ht tp://h/"})
    EXPECT_FALSE(request_target(bad, &t)) << bad;
}

// The path and query of absolute-form go byte for byte: no dot-segment removal, no
// re-encoding, any scheme; the fragment (never part of a request-target) is dropped.
TEST(RequestTarget, AbsoluteFormKeepsPathAndQueryBytes) {
  using namespace std::string_view_literals;
  std::string t;
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"http://h/a/./../b", "/a/./../b"},
      {"http://h/%2f%aa%ZZ?%20+&x", "/%2f%aa%ZZ?%20+&x"},
      {"http://h/\xc3\xa9?\xff\x80", "/\xc3\xa9?\xff\x80"},
      {"http://h/a?", "/a?"},
      {"http://h?", "/?"},
      {"http://h/a?b?c", "/a?b?c"},
      {"http://h/a?b#frag", "/a?b"},
      {"http://h#frag", "/"},
      {"foo+bar.1-x://h/x", "/x"},
      {"HTTP://H:8080/x", "/x"},
      {"http://u:p%41ss@h/x;p", "/x;p"},
      {"http://h/{x}|^`\"<>", "/{x}|^`\"<>"},
  };
  for (const auto& [in, want] : cases) {
    ASSERT_TRUE(request_target(in, &t)) << in;
    EXPECT_EQ(t, want) << in;
  }
  // origin-form is not parsed: every byte but CR, LF, NUL, space and tab passes as it is.
  ASSERT_TRUE(request_target("/a#f/../\xff\x01", &t));
  EXPECT_EQ(t, "/a#f/../\xff\x01");
}

TEST(RequestTarget, RefusesControlBytesEmptyAuthorityAndBadAuthority) {
  using namespace std::string_view_literals;
  std::string t = "unchanged";
  for (std::string_view bad :
       {"/a\0b"sv, "http://h/a\0b"sv, "\0"sv, "http://h/a\tb"sv, "http://h/a\rb"sv,
        "http://h/a\nb"sv, "http://h/a\x01"sv, "http://h/a\x7f"sv, "http://h/a?b\x1b"sv,
        // an empty authority (curl would read "x" as the host), one slash, no slash
        "http:///x"sv, "http://"sv, "http://?q"sv, "http://#f"sv, "foo:///x"sv, "http:/h/x"sv,
        "http:h/x"sv,
        // what curl's URL parser refuses in the authority
        "http://h:99999/x"sv, "http://[::1/x"sv, "http://a@b@c/x"sv, "http://h\\x/y"sv})
    EXPECT_FALSE(request_target(bad, &t)) << bad;
  EXPECT_EQ(t, "unchanged");
}

TEST(RequestTarget, MegabyteTargets) {
  std::string t;
  const std::string path = "/" + std::string(3 << 20, 'a') + "?q=" + std::string(1 << 20, 'b');
  ASSERT_TRUE(request_target(path, &t));
  EXPECT_EQ(t, path);
  ASSERT_TRUE(request_target("http://h" + path, &t));
  EXPECT_EQ(t, path);
  // libcurl's URL parser takes at most 8,000,000 bytes.
  EXPECT_FALSE(request_target("http://h/" + std::string(8'000'000, 'a'), &t));
  // A CR far into a long target is still found.
  EXPECT_FALSE(request_target(path + "\r", &t));
  EXPECT_FALSE(request_target("http://h" + path + "\n", &t));
}

std::vector<Header> H(const std::vector<std::pair<std::string_view, std::string_view>>& v) {
  std::vector<Header> out;
  for (const auto& [k, x] : v)
    out.push_back({k, x});
  return out;
}

TEST(BuildHeaders, DropsHopByHopKeepsOrderDuplicatesAndEmptyValues) {
  HeaderRules rules;
  const ReplayHeaders r = build_headers("GET",
                                        H({{"Host", "a"},
                                           {"Connection", "keep-alive, X-Conn-Only"},
                                           {"X-Conn-Only", "1"},
                                           {"Accept", "*/*"},
                                           {"X-Dup", "1"},
                                           {"Keep-Alive", "5"},
                                           {"X-Dup", "2"},
                                           {"X-Empty", ""},
                                           {"TE", "trailers"},
                                           {"Upgrade", "h2c"},
                                           {"Proxy-Authorization", "x"},
                                           {"Transfer-Encoding", "chunked"},
                                           {"Expect", "100-continue"}}),
                                        0, rules);
  const std::vector<std::string> want = {"Host: a",  "Accept: */*",   "X-Dup: 1", "X-Dup: 2",
                                         "X-Empty;", "Content-Type:", "Expect:"};
  EXPECT_EQ(r.lines, want);
  EXPECT_TRUE(r.has_body);  // Transfer-Encoding announced one
}

TEST(BuildHeaders, HostRemoveAddAndCurlDefaults) {
  HeaderRules rules;
  rules.keep_host = false;
  rules.remove = {"x-secret"};
  rules.add = {{"X-Mirrored-By", "spoad"}, {"X-Flag", ""}};
  const ReplayHeaders r = build_headers(
      "POST", H({{"host", "a"}, {"X-Secret", "s"}, {"Content-Length", "3"}}), 3, rules);
  const std::vector<std::string> want = {"X-Mirrored-By: spoad", "X-Flag;",
                                         "Accept:", "Content-Type:", "Expect:"};
  EXPECT_EQ(r.lines, want);
  EXPECT_TRUE(r.has_body);
  EXPECT_EQ(r.content_length, 3);
}

TEST(BuildHeaders, WhichRequestsCarryABody) {
  HeaderRules rules;
  EXPECT_FALSE(build_headers("GET", {}, 0, rules).has_body);
  EXPECT_TRUE(build_headers("GET", {}, 5, rules).has_body);
  EXPECT_TRUE(build_headers("DELETE", H({{"Content-Length", "0"}}), 0, rules).has_body);
  EXPECT_TRUE(build_headers("POST", {}, 0, rules).has_body);
  EXPECT_TRUE(build_headers("PUT", {}, 0, rules).has_body);
  EXPECT_TRUE(build_headers("PATCH", {}, 0, rules).has_body);
  EXPECT_FALSE(build_headers("HEAD", H({{"Content-Length", "4"}}), 4, rules).has_body);
  EXPECT_FALSE(build_headers("OPTIONS", {}, 0, rules).has_body);
  EXPECT_EQ(build_headers("POST", H({{"Content-Length", "x1"}}), 0, rules).content_length, -1);
}

}  // namespace
}  // namespace spoad::agents::mirror
