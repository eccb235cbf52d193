// Unit tests of the ip-checker's addresses and prefixes: parsing, masking, SPOP bytes.
#include <gtest/gtest.h>

#include <string>

#include "agents/ip-checker/address.h"
#include "agents/ip-checker/test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using test::A;
using test::P;

TEST(IpAddress, ParsesIpv4AndIpv6) {
  EXPECT_EQ(A("192.0.2.1"), Address::V4(0xC0000201));
  EXPECT_EQ(A("0.0.0.0"), Address::V4(0));
  EXPECT_EQ(A("255.255.255.255"), Address::V4(0xFFFFFFFF));
  EXPECT_EQ(A("2001:db8::1"), Address::V6((U128{0x20010db800000000ull} << 64) | 1));
  EXPECT_EQ(A("::"), Address::V6(0));
  EXPECT_EQ(to_string(A("2001:db8::1")), "2001:db8::1");
  EXPECT_EQ(to_string(A("198.51.100.7")), "198.51.100.7");
}

TEST(IpAddress, MappedIpv6IsIpv4) {
  EXPECT_EQ(A("::ffff:192.0.2.1"), Address::V4(0xC0000201));
  EXPECT_EQ(A("::FFFF:c000:0201"), Address::V4(0xC0000201));
  // ::192.0.2.1 (IPv4-compatible) and 64:ff9b::/96 are not IPv4-mapped.
  EXPECT_TRUE(A("::192.0.2.1").v6);
  EXPECT_TRUE(A("64:ff9b::c000:201").v6);
}

TEST(IpAddress, RejectsJunk) {
  Address a;
  for (const char* s : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4 ", " 1.2.3.4",
                        "1.2.3.-4", "1..2.3", "a.b.c.d", "::1::2", "fe80::1%eth0", "[::1]",
                        "1.2.3.4:80", "1.2.3.4/32", "12345::", "gggg::"}) {
    EXPECT_FALSE(parse_address(s, &a)) << '"' << s << '"';
  }
}

TEST(IpAddress, PrefixesAndMasking) {
  Prefix p;
  bool masked = true;
  const char* why = "";
  ASSERT_TRUE(parse_prefix("10.0.0.0/8", &p, &masked, &why));
  EXPECT_FALSE(masked);
  EXPECT_EQ(to_string(p), "10.0.0.0/8");
  ASSERT_TRUE(parse_prefix("10.0.0.1/8", &p, &masked, &why));
  EXPECT_TRUE(masked);
  EXPECT_EQ(to_string(p), "10.0.0.0/8");
  ASSERT_TRUE(parse_prefix("10.0.0.1", &p, &masked, &why));
  EXPECT_EQ(p.len, 32);
  ASSERT_TRUE(parse_prefix("2001:db8::1", &p, &masked, &why));
  EXPECT_EQ(p.len, 128);
  ASSERT_TRUE(parse_prefix("2001:db8::1/32", &p, &masked, &why));
  EXPECT_TRUE(masked);
  EXPECT_EQ(to_string(p), "2001:db8::/32");
  ASSERT_TRUE(parse_prefix("0.0.0.0/0", &p, &masked, &why));
  EXPECT_EQ(p.len, 0);
  ASSERT_TRUE(parse_prefix("1.2.3.4/0", &p, &masked, &why));
  EXPECT_TRUE(masked);
  EXPECT_EQ(p.addr, Address::V4(0));
  // An IPv4-mapped prefix keeps its family (the Matcher maps it).
  ASSERT_TRUE(parse_prefix("::ffff:10.0.0.0/104", &p, &masked, &why));
  EXPECT_TRUE(p.addr.v6);
  EXPECT_EQ(p.len, 104);

  EXPECT_FALSE(parse_prefix("10.0.0.0/33", &p, &masked, &why));
  EXPECT_STREQ(why, "the prefix length must be 0-32");
  EXPECT_FALSE(parse_prefix("::/129", &p, &masked, &why));
  EXPECT_STREQ(why, "the prefix length must be 0-128");
  EXPECT_FALSE(parse_prefix("10.0.0.0/", &p, &masked, &why));
  EXPECT_FALSE(parse_prefix("10.0.0.0/-1", &p, &masked, &why));
  EXPECT_FALSE(parse_prefix("10.0.0.0/8/8", &p, &masked, &why));
  EXPECT_FALSE(parse_prefix("10.0.0/8", &p, &masked, &why));
  EXPECT_STREQ(why, "not an IPv4 or IPv6 address");
}

TEST(IpAddress, FromSpopBytes) {
  const uint8_t v4[4] = {192, 0, 2, 1};
  EXPECT_EQ(address_from_v4_bytes(v4), Address::V4(0xC0000201));
  uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8};
  v6[15] = 1;
  EXPECT_EQ(address_from_v6_bytes(v6), A("2001:db8::1"));
  const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7};
  EXPECT_EQ(address_from_v6_bytes(mapped), A("198.51.100.7"));
}

}  // namespace
}  // namespace spoad::agents::ip_checker
