#include "util/escape.h"

#include <gtest/gtest.h>

#include <string>

using spoad::util::append_json_string;
using spoad::util::is_utf8;
using spoad::util::printable;
using spoad::util::to_utf8;

namespace {

std::string json(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

}  // namespace

TEST(Printable, KeepsPrintableAsciiAndEscapesTheRest) {
  EXPECT_EQ(printable("abc DEF"), "abc DEF");
  EXPECT_EQ(printable(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(printable("x\r\n[2026] forged"), "x\\x0d\\x0a[2026] forged");
  EXPECT_EQ(printable("\x1b[31mred"), "\\x1b[31mred");
  EXPECT_EQ(printable("caf\xc3\xa9"), "caf\\xc3\\xa9");
  EXPECT_EQ(printable("q\"b\\"), "q\\\"b\\\\");
  EXPECT_EQ(printable("\x7f\xff"), "\\x7f\\xff");
}

TEST(Printable, CutsLongInputAndSaysHowLong) {
  const std::string big(1 << 20, 'a');
  const std::string out = printable(big, 8);
  EXPECT_EQ(out, "aaaaaaaa...(1048576 bytes)");
  EXPECT_EQ(printable("abcd", 4), "abcd");
}

TEST(Utf8, AcceptsWellFormed) {
  EXPECT_TRUE(is_utf8(""));
  EXPECT_TRUE(is_utf8("plain"));
  EXPECT_TRUE(is_utf8("caf\xc3\xa9"));
  EXPECT_TRUE(is_utf8("\xe2\x82\xac"));      // U+20AC
  EXPECT_TRUE(is_utf8("\xed\x9f\xbf"));      // U+D7FF
  EXPECT_TRUE(is_utf8("\xee\x80\x80"));      // U+E000
  EXPECT_TRUE(is_utf8("\xf0\x9f\x98\x80"));  // U+1F600
  EXPECT_TRUE(is_utf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
}

TEST(Utf8, RejectsIllFormed) {
  EXPECT_FALSE(is_utf8("\xff"));
  EXPECT_FALSE(is_utf8("\xc0\x80"));          // overlong NUL
  EXPECT_FALSE(is_utf8("\xc1\xbf"));          // overlong
  EXPECT_FALSE(is_utf8("\xe0\x80\x80"));      // overlong 3-byte
  EXPECT_FALSE(is_utf8("\xed\xa0\x80"));      // surrogate U+D800
  EXPECT_FALSE(is_utf8("\xf0\x80\x80\x80"));  // overlong 4-byte
  EXPECT_FALSE(is_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_utf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(is_utf8("\xf7\xbf\xbf\xbf"));
  EXPECT_FALSE(is_utf8("\xc3"));      // truncated
  EXPECT_FALSE(is_utf8("\xe2\x82"));  // truncated
  EXPECT_FALSE(is_utf8("\x80"));      // lone continuation
}

TEST(JsonString, EscapesAndReplaces) {
  EXPECT_EQ(json("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(json(std::string("\0\x1f", 2)), "\"\\u0000\\u001f\"");
  EXPECT_EQ(json("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
  EXPECT_EQ(json("evil\xc0\x80"), "\"evil\xef\xbf\xbd\xef\xbf\xbd\"");
  EXPECT_EQ(json("\xed\xa0\x80"), "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
  EXPECT_EQ(json("\xf5"), "\"\xef\xbf\xbd\"");
}

TEST(JsonString, OutputIsAlwaysValidUtf8ForEveryTwoByteInput) {
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      const char in[2] = {static_cast<char>(a), static_cast<char>(b)};
      const std::string out = json(std::string_view(in, 2));
      ASSERT_TRUE(is_utf8(out)) << a << " " << b;
      ASSERT_TRUE(is_utf8(to_utf8(std::string_view(in, 2)))) << a << " " << b;
    }
  }
}
