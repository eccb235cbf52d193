// Tests of the ip-checker's shared store without a server: the text formats (exact forms, and
// random bytes through the parsers) and the `store:` options.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <random>
#include <string>
#include <vector>

#include "agents/ip-checker/store.h"
#include "agents/ip-checker/store_test_support.h"
#include "options/options.h"

namespace spoad::agents::ip_checker {
namespace {

using namespace test;
namespace fmt_ = store_format;

// ---- formats ----

TEST(StoreFormat, ExactForms) {
  const RuntimeEntry e = entry("deny", "192.0.2.0/24", false, 70, 1700000000, "hi");
  EXPECT_EQ(fmt_::entry_key("spoad:", e), "spoad:entry:deny:192.0.2.0/24");
  EXPECT_EQ(fmt_::entry_value(e), "d 70 1700000000 6869");
  EXPECT_EQ(fmt_::entry_value(entry("ok", "2001:db8::/32", true)), "a 0 0");
  EXPECT_EQ(fmt_::change_message(0x1234, add(e)),
            "0000000000001234 add deny 192.0.2.0/24 d 70 1700000000 6869");
  EXPECT_EQ(fmt_::change_message(~uint64_t{0}, del("deny", "2001:db8::1")),
            "ffffffffffffffff del deny 2001:db8::1/128");
  EXPECT_EQ(fmt_::change_message(1, clear("deny")), "0000000000000001 clear deny");

  RuntimeEntry back;
  std::string why;
  ASSERT_TRUE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24", "d 70 1700000000 6869",
                                &back, &why))
      << why;
  EXPECT_EQ(back, e);
  uint64_t origin = 0;
  Change c;
  ASSERT_TRUE(fmt_::parse_change_message(
      "00000000000000ab add deny 192.0.2.0/24 d 70 1700000000 6869", &origin, &c, &why));
  EXPECT_EQ(origin, 0xabu);
  EXPECT_EQ(c, add(e));
  // Binary comments travel as hex.
  const RuntimeEntry bin = entry("deny", "10.0.0.0/8", false, 1, 0, std::string("\0\xff\"\n", 4));
  ASSERT_TRUE(
      fmt_::parse_entry("p", fmt_::entry_key("p", bin), fmt_::entry_value(bin), &back, &why));
  EXPECT_EQ(back, bin);
}

TEST(StoreFormat, RejectsWhatTheWriterNeverProduces) {
  const char* bad_values[] = {
      "",           "d",       "d 70",    "x 70 0",       "d 101 0",
      "d 070 0",    "d 70 01", "d 70 0 ", "d  70 0",      "d 70 0 6A",
      "d 70 0 686", "d -1 0",  "d 70 -5", "d 70 0 68 69", "d 70 99999999999999999999",
      "d 70 0\n",   "D 70 0",  "d +7 0",
  };
  RuntimeEntry e;
  std::string why;
  for (const char* v : bad_values)
    EXPECT_FALSE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24", v, &e, &why)) << v;
  const char* bad_keys[] = {
      "spoad:entry:deny:192.0.2.1/24",  // host bits set
      "spoad:entry:deny:192.0.2.0",     // not as to_string prints it
      "spoad:entry:deny:",
      "spoad:entry::192.0.2.0/24",
      "spoad:entry:de ny:192.0.2.0/24",
      "other:entry:deny:192.0.2.0/24",
      "spoad:entry:deny",
      "spoad:entry:deny:2001:DB8::/32",
  };
  for (const char* k : bad_keys)
    EXPECT_FALSE(fmt_::parse_entry("spoad:", k, "d 1 0", &e, &why)) << k;
  // A comment longer than kMaxComment.
  EXPECT_FALSE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24",
                                 "d 1 0 " + std::string(2 * kMaxComment + 2, 'a'), &e, &why));
  EXPECT_TRUE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24",
                                "d 1 0 " + std::string(2 * kMaxComment, 'a'), &e, &why));
  const char* bad_messages[] = {
      "",
      "0000000000000001",
      "0000000000000001 clear",
      "000000000000001 clear deny",
      "00000000000000010 clear deny",
      "000000000000000G clear deny",
      "0000000000000001 clear deny extra",
      "0000000000000001 del deny",
      "0000000000000001 del deny 192.0.2.0/24 d 1 0",
      "0000000000000001 add deny 192.0.2.0/24",
      "0000000000000001 add deny 192.0.2.0/24 d 1",
      "0000000000000001 put deny 192.0.2.0/24 d 1 0",
      "0000000000000001  clear deny",
  };
  uint64_t origin = 0;
  Change c;
  for (const char* m : bad_messages)
    EXPECT_FALSE(fmt_::parse_change_message(m, &origin, &c, &why)) << m;
}

// Random bytes, and random edits of valid texts, through both parsers: no crash (the sanitized
// build checks reads), and whatever parses is written back byte for byte.
TEST(StoreFormat, RandomBytes) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const std::string alphabet = "0123456789abcdef adcelr:./x\xff\n";
  const std::vector<std::string> valid_messages = {
      "0123456789abcdef add deny 192.0.2.0/24 d 70 1700000000 6869",
      "0123456789abcdef add a.b-c_D 2001:db8::/32 a 0 0",
      "0123456789abcdef del deny 10.0.0.0/8",
      "0123456789abcdef clear deny",
  };
  const std::vector<std::pair<std::string, std::string>> valid_entries = {
      {"p:entry:deny:192.0.2.0/24", "d 70 1700000000 6869"},
      {"p:entry:allow:2001:db8::/32", "a 0 0"},
  };
  auto random_text = [&](size_t max) {
    std::string s(rng() % (max + 1), '\0');
    for (char& c : s)
      c = rng() % 4 == 0 ? static_cast<char>(rng()) : alphabet[rng() % alphabet.size()];
    return s;
  };
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < edits; ++i) {
      const size_t at = s.empty() ? 0 : rng() % s.size();
      switch (rng() % 3) {
        case 0:
          if (!s.empty()) s[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          s.insert(s.begin() + static_cast<long>(at), alphabet[rng() % alphabet.size()]);
          break;
        default:
          if (!s.empty()) s.erase(at, 1);
      }
    }
    return s;
  };
  int parsed_messages = 0, parsed_entries = 0;
  for (int i = 0; i < 100000; ++i) {
    const std::string m = i % 2 ? random_text(120) : mutate(valid_messages[rng() % 4]);
    uint64_t origin = 0;
    Change c;
    std::string why;
    if (fmt_::parse_change_message(m, &origin, &c, &why)) {
      ++parsed_messages;
      ASSERT_EQ(fmt_::change_message(origin, c), m);
    }
    const auto& [k0, v0] = valid_entries[rng() % 2];
    const std::string key = i % 3 == 0 ? random_text(60) : i % 3 == 1 ? mutate(k0) : k0;
    const std::string value = i % 3 == 2 ? mutate(v0) : i % 3 == 0 ? random_text(40) : v0;
    RuntimeEntry e;
    if (fmt_::parse_entry("p:", key, value, &e, &why)) {
      ++parsed_entries;
      ASSERT_EQ(fmt_::entry_key("p:", e), key);
      ASSERT_EQ(fmt_::entry_value(e), value);
    }
  }
  // The edits left some texts valid, so the round trip above was exercised.
  EXPECT_GT(parsed_messages, 0);
  EXPECT_GT(parsed_entries, 0);
}

// ---- options ----

StoreOptions parse_yaml(const std::string& text) {
  config::Options o(YAML::Load(text), std::make_shared<const std::string>("spoad.yaml"),
                    "agents[0]");
  return parse_store_options(o);
}

TEST(StoreOptions, Parse) {
  EXPECT_EQ(parse_yaml("name: x\n").url, "");
  StoreOptions s = parse_yaml(
      "store:\n  url: redis://:s%40cret@127.0.0.1:6380/2\n  key-prefix: \"fleet:\"\n"
      "  max-entries: 10\n  max-bytes: 4m\n");
  EXPECT_EQ(s.url, "redis://:s%40cret@127.0.0.1:6380/2");
  EXPECT_EQ(s.key_prefix, "fleet:");
  EXPECT_EQ(s.max_entries, 10u);
  EXPECT_EQ(s.max_bytes, 4u << 20);
  s = parse_yaml("store: {url: \"redis://[::1]\"}\n");
  EXPECT_EQ(s.key_prefix, "spoad:");
  EXPECT_EQ(s.max_entries, 2'000'000u);
  EXPECT_NO_THROW(parse_yaml("store: {url: \"redis://user:pw@cache.example:6379\"}"));
}

TEST(StoreOptions, ErrorsNameFileLineAndKey) {
  struct Case {
    std::string yaml, key, words;
  };
  const std::vector<Case> cases = {
      {"store:\n  url: rediss://h:6379/0\n", "agents[0].store.url", "TLS"},
      {"store:\n  url: http://h/\n", "agents[0].store.url", "redis://"},
      {"store:\n  url: redis://h:0/0\n", "agents[0].store.url", "port"},
      {"store:\n  url: redis://h:70000/0\n", "agents[0].store.url", "port"},
      {"store:\n  url: redis://h:6379/x\n", "agents[0].store.url", "database"},
      {"store:\n  url: redis://h/0?ssl=1\n", "agents[0].store.url", "query"},
      {"store:\n  url: redis://pw@h/0\n", "agents[0].store.url", "password"},
      {"store:\n  url: redis://[::1/0\n", "agents[0].store.url", "]"},
      {"store:\n  url: redis://h\n  key-prefix: \"a b\"\n", "agents[0].store.key-prefix", "spaces"},
      {"store:\n  url: redis://h\n  max-entries: 0\n", "agents[0].store.max-entries", ""},
      {"store:\n  url: redis://h\n  urls: x\n", "agents[0].store.urls", ""},
      {"store:\n  key-prefix: x\n", "agents[0].store", "url"},
      {"store: redis://h\n", "agents[0].store", "mapping"},
  };
  for (const auto& c : cases) {
    try {
      parse_yaml(c.yaml);
      ADD_FAILURE() << "accepted: " << c.yaml;
    } catch (const config::ConfigError& e) {
      EXPECT_EQ(e.file(), "spoad.yaml") << c.yaml;
      EXPECT_EQ(e.key(), c.key) << c.yaml << " -> " << e.what();
      EXPECT_GE(e.line(), 1) << c.yaml;
      EXPECT_NE(e.message().find(c.words), std::string::npos) << e.what();
    }
  }
}
}  // namespace
}  // namespace spoad::agents::ip_checker
