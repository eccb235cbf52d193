#include "util/text.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>

using spoad::util::hex_decode;
using spoad::util::hex_digit;
using spoad::util::hex_encode;
using spoad::util::iequals;
using spoad::util::kWhitespace;
using spoad::util::percent_decode;
using spoad::util::trim;

using namespace std::string_view_literals;

TEST(Trim, DropsSpacesAndTabsAtBothEndsOnly) {
  EXPECT_EQ(trim("  a b\t "), "a b");
  EXPECT_EQ(trim("\t\tx"), "x");
  EXPECT_EQ(trim("x  "), "x");
  EXPECT_EQ(trim("a \t b"), "a \t b");
  EXPECT_EQ(trim(""), "");
  EXPECT_EQ(trim(" \t \t"), "");
  // CR, LF, VT, FF and NUL are not blanks; nor is 0xa0 (no-break space in Latin-1).
  EXPECT_EQ(trim("\r a \n"), "\r a \n");
  EXPECT_EQ(trim("\v\fa\f\v"), "\v\fa\f\v");
  EXPECT_EQ(trim(" \0a\0 "sv), "\0a\0"sv);
  EXPECT_EQ(trim("\xa0x\xa0"), "\xa0x\xa0");
  EXPECT_EQ(trim(" \xc3\xa9 "), "\xc3\xa9");
}

TEST(Trim, TakesAnySetAndViewsItsInput) {
  EXPECT_EQ(trim("\r\n a\tb \v\f", kWhitespace), "a\tb");
  EXPECT_EQ(trim("\r\n\v\f \t", kWhitespace), "");
  EXPECT_EQ(trim("xxaxbxx", "x"), "axb");
  EXPECT_EQ(trim("\xff\xfe"
                 "a\xff",
                 "\xff\xfe"),
            "a");
  EXPECT_EQ(trim(" a ", ""), " a ");
  const std::string s = "  mid  ";
  const std::string_view t = trim(s);
  EXPECT_EQ(t.data(), s.data() + 2);
  EXPECT_EQ(t.size(), 3u);
}

TEST(Iequals, FoldsAsciiLettersOnly) {
  EXPECT_TRUE(iequals("Content-Length", "content-LENGTH"));
  EXPECT_TRUE(iequals("", ""));
  EXPECT_TRUE(iequals("AZaz09", "azAZ09"));
  EXPECT_FALSE(iequals("host", "hosts"));
  EXPECT_FALSE(iequals("host", ""));
  EXPECT_FALSE(iequals("hast", "host"));
  // Pairs 32 apart that are not letters.
  EXPECT_FALSE(iequals("@", "`"));
  EXPECT_FALSE(iequals("[", "{"));
  EXPECT_FALSE(iequals("^", "~"));
  EXPECT_FALSE(iequals("\x10", "0"));
  // Bytes >= 0x80 compare exactly: no Latin-1 or UTF-8 folding.
  EXPECT_FALSE(iequals("\xc1", "\xe1"));          // Latin-1 A and a with acute
  EXPECT_FALSE(iequals("\xc3\x89", "\xc3\xa9"));  // UTF-8 E and e with acute
  EXPECT_TRUE(iequals("X\xc3\xa9", "x\xc3\xa9"));
  EXPECT_TRUE(iequals("a\0b"sv, "A\0B"sv));
  EXPECT_FALSE(iequals("a\0b"sv, "a\0c"sv));
}

TEST(HexDigit, DigitsAndLettersTheOthersAreMinusOne) {
  EXPECT_EQ(hex_digit('0'), 0);
  EXPECT_EQ(hex_digit('9'), 9);
  EXPECT_EQ(hex_digit('a'), 10);
  EXPECT_EQ(hex_digit('f'), 15);
  EXPECT_EQ(hex_digit('A'), 10);
  EXPECT_EQ(hex_digit('F'), 15);
  EXPECT_EQ(hex_digit('c', false), 12);
  EXPECT_EQ(hex_digit('7', false), 7);
  EXPECT_EQ(hex_digit('A', false), -1);
  EXPECT_EQ(hex_digit('F', false), -1);
  for (char c : {'g', 'G', '/', ':', '@', '`', ' ', '\0', '\x80', '\xff', 'x'}) {
    EXPECT_EQ(hex_digit(c), -1) << int(static_cast<uint8_t>(c));
    EXPECT_EQ(hex_digit(c, false), -1) << int(static_cast<uint8_t>(c));
  }
}

TEST(HexEncode, LowercaseTwoDigitsPerByte) {
  EXPECT_EQ(hex_encode(""), "");
  EXPECT_EQ(hex_encode(nullptr, 0), "");
  const uint8_t b[] = {0x00, 0x0f, 0x7f, 0x80, 0xab, 0xff};
  EXPECT_EQ(hex_encode(b, sizeof(b)), "000f7f80abff");
  EXPECT_EQ(hex_encode("\xde\xad\xbe\xef"), "deadbeef");
  EXPECT_EQ(hex_encode("a\0b"sv), "610062");
}

TEST(HexDecode, ToStringRoundTripsEveryByte) {
  std::string all;
  for (int i = 0; i < 256; ++i)
    all += static_cast<char>(i);
  const std::string hex = hex_encode(all);
  ASSERT_EQ(hex.size(), 512u);
  std::string back = "junk";
  ASSERT_TRUE(hex_decode(hex, &back));
  EXPECT_EQ(back, all);
}

TEST(HexDecode, ToString) {
  std::string out = "junk";
  ASSERT_TRUE(hex_decode("", &out));
  EXPECT_EQ(out, "");
  ASSERT_TRUE(hex_decode("00ff80", &out));
  EXPECT_EQ(out, "\0\xff\x80"sv);
  ASSERT_TRUE(hex_decode("ABcd", &out));
  EXPECT_EQ(out, "\xab\xcd");
  EXPECT_FALSE(hex_decode("ABcd", &out, false));
  EXPECT_TRUE(hex_decode("abcd", &out, false));
  EXPECT_EQ(out, "\xab\xcd");
  // Odd length: refused, not a trailing digit dropped.
  EXPECT_FALSE(hex_decode("a", &out));
  EXPECT_FALSE(hex_decode("abc", &out));
  EXPECT_FALSE(hex_decode("0x12", &out));
  EXPECT_FALSE(hex_decode("zz", &out));
  EXPECT_FALSE(hex_decode("1 ", &out));
  EXPECT_FALSE(hex_decode("\xff\xff", &out));
  EXPECT_FALSE(
      hex_decode("12\0"
                 "0"sv,
                 &out));
}

TEST(HexDecode, ToFixedSizeBuffer) {
  uint8_t out[3] = {0, 0, 0};
  ASSERT_TRUE(hex_decode("01fE80", out, 3));
  EXPECT_EQ(out[0], 0x01);
  EXPECT_EQ(out[1], 0xfe);
  EXPECT_EQ(out[2], 0x80);
  EXPECT_FALSE(hex_decode("01fE80", out, 3, false));
  EXPECT_FALSE(hex_decode("01fe", out, 3));      // too short
  EXPECT_FALSE(hex_decode("01fe8000", out, 3));  // too long
  EXPECT_FALSE(hex_decode("01fe8", out, 3));     // odd
  EXPECT_FALSE(hex_decode("01fe8g", out, 3));
  EXPECT_TRUE(hex_decode("", out, 0));
}

TEST(PercentDecode, DecodesEscapesOfEitherCaseAndCopiesTheRest) {
  std::string out = "old";
  ASSERT_TRUE(percent_decode("a%2Cb%2cc+d", &out));
  EXPECT_EQ(out, "a,b,c+d");  // '+' is not a space
  ASSERT_TRUE(percent_decode("", &out));
  EXPECT_EQ(out, "");
  ASSERT_TRUE(percent_decode("%00%0d%0A%ff%80", &out));
  EXPECT_EQ(out, "\0\r\n\xff\x80"sv);
  // Bytes that are not escapes pass as they are, NUL and high bytes included.
  ASSERT_TRUE(percent_decode("\0x\xc3\xa9 \t"sv, &out));
  EXPECT_EQ(out, "\0x\xc3\xa9 \t"sv);
  ASSERT_TRUE(percent_decode("%25%32%35", &out));  // decoded once, not twice
  EXPECT_EQ(out, "%25");
}

TEST(PercentDecode, RefusesAPercentWithoutTwoHexDigits) {
  std::string out;
  for (std::string_view bad : {"%"sv, "a%"sv, "%2"sv, "a%2"sv, "%zz"sv, "%2g"sv, "%g2"sv, "% 20"sv,
                               "%+1"sv, "%-1"sv, "%\0\0"sv, "ok%%41"sv})
    EXPECT_FALSE(percent_decode(bad, &out)) << bad;
}
