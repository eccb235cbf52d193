// Unit tests of the ip-checker's list parsing: comments, line endings, FireHOL and Spamhaus
// DROP files, errors with file:line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "agents/ip-checker/lists.h"
#include "agents/ip-checker/test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using test::TempDir;

std::vector<std::string> dump(const ParsedList& l) {
  std::vector<std::string> out;
  for (const auto& p : l.prefixes.v4)
    out.push_back(to_string(Prefix{Address::V4(p.addr), p.len}));
  for (const auto& p : l.prefixes.v6)
    out.push_back(to_string(Prefix{Address::V6(p.addr), p.len}));
  return out;
}

using V = std::vector<std::string>;

TEST(IpLists, CommentsAndBlankLines) {
  ParsedList l;
  std::string err;
  ASSERT_TRUE(
      parse_list_text("# a comment\n"
                      "; another one\n"
                      "\n"
                      "   \t \n"
                      "10.0.0.0/8   # trailing hash comment\n"
                      "192.0.2.1;trailing semicolon comment\n"
                      "\t2001:db8::/32\t\n"
                      "  # indented comment\n",
                      "inline.txt", &l, &err))
      << err;
  EXPECT_EQ(dump(l), (V{"10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"}));
  EXPECT_EQ(l.lines, 8u);
}

TEST(IpLists, CrLfAndBomAndNoFinalNewline) {
  ParsedList l;
  std::string err;
  ASSERT_TRUE(
      parse_list_text("\xEF\xBB\xBF# header\r\n10.0.0.0/8\r\n; c\r\n\r\n192.0.2.1", "x", &l, &err))
      << err;
  EXPECT_EQ(dump(l), (V{"10.0.0.0/8", "192.0.2.1/32"}));
}

TEST(IpLists, HostAddressesAndNonCanonicalCidrs) {
  ParsedList l;
  std::string err;
  ASSERT_TRUE(
      parse_list_text("10.0.0.1\n2001:db8::1\n10.0.0.1/8\n2001:db8::1/32\n", "x", &l, &err));
  EXPECT_EQ(dump(l), (V{"10.0.0.1/32", "10.0.0.0/8", "2001:db8::1/128", "2001:db8::/32"}));
  EXPECT_EQ(l.masked, 2u);  // host bits cleared, and counted
}

TEST(IpLists, MalformedLineNamesFileAndLine) {
  TempDir dir;
  for (const auto& [content, line, shown] : std::vector<std::tuple<std::string, int, std::string>>{
           {"10.0.0.0/8\n# ok\n1.2.3\n", 3, "1.2.3"},
           {"10.0.0.0/33\n", 1, "10.0.0.0/33"},
           {"\n\n10.0.0.0/8 10.1.0.0/16\n", 3, "10.0.0.0/8 10.1.0.0/16"},
           {"1.2.3.4-1.2.3.9\n", 1, "1.2.3.4-1.2.3.9"},
           {"ok\n", 1, "ok"},
           {"10.0.0.0/8\r\n::1/129 ; comment\r\n", 2, "::1/129"},
       }) {
    const std::string path = dir.write("bad.netset", content);
    ParsedList l;
    std::string err;
    EXPECT_FALSE(load_list_file(path, &l, &err, nullptr)) << content;
    EXPECT_EQ(
        err.rfind(path + ":" + std::to_string(line) + ": malformed entry \"" + shown + "\": ", 0),
        0u)
        << err;
  }
}

TEST(IpLists, MissingFile) {
  TempDir dir;
  ParsedList l;
  std::string err;
  const std::string missing = dir.write("x", "") + ".missing";
  EXPECT_FALSE(load_list_file(missing, &l, &err, nullptr));
  EXPECT_NE(err.find(missing + ": cannot open"), std::string::npos) << err;
  EXPECT_FALSE(file_sig(missing).exists);
}

TEST(IpLists, FireholNetsetAsIs) {
  TempDir dir;
  const std::string path = dir.write("firehol_level1.netset",
                                     "#\n"
                                     "# firehol_level1\n"
                                     "#\n"
                                     "# ipv4 hash:net ipset\n"
                                     "#\n"
                                     "# A firewall blacklist composed from IP lists, providing\n"
                                     "# maximum protection with minimum false positives.\n"
                                     "#\n"
                                     "# Source URL: https://iplists.firehol.org/\n"
                                     "#\n"
                                     "# Maintainer      : FireHOL\n"
                                     "# List source URL : \n"
                                     "# Source File Date: Mon May  6 10:00:00 UTC 2024\n"
                                     "#\n"
                                     "# This File Date  : Mon May  6 10:12:00 UTC 2024\n"
                                     "# Entries         : 4 subnets, 16777473 unique IPs\n"
                                     "#\n"
                                     "0.0.0.0/8\n"
                                     "1.10.16.0/20\n"
                                     "1.19.0.0/16\n"
                                     "5.188.10.179\n");
  ParsedList l;
  std::string err;
  FileSig sig;
  ASSERT_TRUE(load_list_file(path, &l, &err, &sig)) << err;
  EXPECT_EQ(dump(l), (V{"0.0.0.0/8", "1.10.16.0/20", "1.19.0.0/16", "5.188.10.179/32"}));
  EXPECT_TRUE(sig.exists);
  EXPECT_EQ(sig.size, static_cast<off_t>(std::filesystem::file_size(path)));
  EXPECT_TRUE(sig.racy);  // just written
  FileSig again = file_sig(path);
  again.racy = true;
  EXPECT_EQ(again, sig);
}

TEST(IpLists, SpamhausDropAsIs) {
  TempDir dir;
  const std::string path =
      dir.write("drop.txt",
                "; Spamhaus DROP List 2024/05/06 - (c) 2024 The Spamhaus Project SLU\n"
                "; https://www.spamhaus.org/drop/drop.txt\n"
                "; Last-Modified: Mon, 06 May 2024 09:21:33 GMT\n"
                "; Expires: Mon, 06 May 2024 10:26:53 GMT\n"
                "1.10.16.0/20 ; SBL256894\n"
                "1.19.0.0/16 ; SBL434604\n"
                "2.57.122.0/24 ; SBL636050\n"
                "2a06:e480::/29 ; SBL301771\n");
  ParsedList l;
  std::string err;
  ASSERT_TRUE(load_list_file(path, &l, &err, nullptr)) << err;
  EXPECT_EQ(dump(l), (V{"1.10.16.0/20", "1.19.0.0/16", "2.57.122.0/24", "2a06:e480::/29"}));
  EXPECT_EQ(l.lines, 8u);
}

TEST(IpLists, LargeFileAcrossReadChunks) {
  // More than one 1 MiB read chunk, so that lines straddle chunk boundaries.
  TempDir dir;
  std::string text;
  const size_t n = 120'000;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t a = static_cast<uint32_t>(i * 2654435761u);
    text += std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
            std::to_string((a >> 8) & 255) + "." + std::to_string(a & 255) +
            (i % 3 == 0 ? " ; SBL" + std::to_string(i) : "") + "\n";
  }
  ASSERT_GT(text.size(), 2u << 20);
  text += "bogus";  // last line, no newline
  const std::string path = dir.write("big.txt", text);
  ParsedList l;
  std::string err;
  EXPECT_FALSE(load_list_file(path, &l, &err, nullptr));
  EXPECT_EQ(err, path + ":" + std::to_string(n + 1) +
                     ": malformed entry \"bogus\": not an IPv4 "
                     "or IPv6 address");
  text.resize(text.size() - 5);
  dir.write("big.txt", text);
  ParsedList ok;
  ASSERT_TRUE(load_list_file(path, &ok, &err, nullptr)) << err;
  ASSERT_EQ(ok.prefixes.v4.size(), n);
  for (size_t i = 0; i < n; i += 997) {
    EXPECT_EQ(ok.prefixes.v4[i].addr, static_cast<uint32_t>(i * 2654435761u));
    EXPECT_EQ(ok.prefixes.v4[i].len, 32);
  }
}

TEST(IpLists, LongLineIsAnError) {
  TempDir dir;
  const std::string path = dir.write("long.txt", "10.0.0.0/8\n" + std::string(10000, ' ') + "\n");
  ParsedList l;
  std::string err;
  EXPECT_FALSE(load_list_file(path, &l, &err, nullptr));
  EXPECT_NE(err.find(path + ":2: line too long"), std::string::npos) << err;
}

// A malformed entry is quoted in the error (which reaches logs, the CLI and JSON) as printable
// ASCII: control bytes and every non-ASCII byte escaped, at most 64 bytes shown, so that a
// UTF-8 character at the cut cannot be split into invalid UTF-8.
TEST(IpLists, MalformedEntryIsQuotedAsAscii) {
  for (const std::string& entry : {std::string(63, 'a') + "\xc3\xa9", std::string("\x1b[31mx\"\\"),
                                   std::string("\xff\xfe"), std::string(200, 'b')}) {
    ParsedList l;
    std::string err;
    EXPECT_FALSE(parse_list_text(entry + "\n", "list.txt", &l, &err));
    for (char c : err)
      EXPECT_TRUE(c >= 0x20 && c < 0x7f)
          << "byte " << int(static_cast<unsigned char>(c)) << " in " << err;
    EXPECT_EQ(err.rfind("list.txt:1: malformed entry \"", 0), 0u) << err;
  }
  ParsedList l;
  std::string err;
  EXPECT_FALSE(parse_list_text(std::string(63, 'a') + "\xc3\xa9\n", "f", &l, &err));
  EXPECT_NE(err.find(std::string(63, 'a') + "\\xc3...(65 bytes)"), std::string::npos) << err;
}

}  // namespace
}  // namespace spoad::agents::ip_checker
