// Unit tests of the ip-checker's Matcher, including a cross-check of random lists against a
// brute-force reference.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "agents/ip-checker/address.h"
#include "agents/ip-checker/matcher.h"
#include "agents/ip-checker/test_support.h"

namespace spoad::agents::ip_checker {
namespace {
using test::A;
using test::P;

struct L {
  std::string name;
  bool allow;
  int score;
  std::vector<std::string> prefixes;
};

// A matcher built from lists written as text.
class Built {
 public:
  explicit Built(const std::vector<L>& lists) {
    infos_.reserve(lists.size());
    sets_.reserve(lists.size());
    for (const L& l : lists) {
      infos_.push_back({l.name, l.allow, static_cast<uint8_t>(l.score)});
      PrefixSet s;
      for (const std::string& p : l.prefixes)
        s.add(P(p));
      sets_.push_back(std::move(s));
    }
    std::vector<Matcher::Input> in;
    for (size_t i = 0; i < lists.size(); ++i)
      in.push_back({&infos_[i], &sets_[i]});
    m = Matcher::build(in);
  }
  // "name/score" of the verdict, "allow:name", or "-" when nothing matched.
  std::string at(const std::string& addr) const { return describe(m.lookup(A(addr))); }
  std::string at(const Address& a) const { return describe(m.lookup(a)); }
  std::string describe(const Verdict& v) const {
    if (v.list < 0) {
      EXPECT_FALSE(v.allowed || v.denied || v.score != 0);
      return "-";
    }
    if (v.allowed) {
      EXPECT_EQ(v.score, 0);
      return "allow:" + m.list_name(v.list);
    }
    EXPECT_TRUE(v.denied);
    return m.list_name(v.list) + "/" + std::to_string(v.score);
  }

  Matcher m;

 private:
  std::vector<ListInfo> infos_;
  std::vector<PrefixSet> sets_;
};

TEST(IpMatcher, EmptyMatchesNothing) {
  Matcher m;
  EXPECT_EQ(m.lookup(A("1.2.3.4")).list, -1);
  EXPECT_EQ(m.lookup(A("2001:db8::1")).list, -1);
  EXPECT_EQ(m.ranges_v4(), 0u);
  EXPECT_LT(m.memory_bytes(), 64u);
  Built b({{"a", false, 50, {}}, {"b", true, 0, {}}});
  EXPECT_EQ(b.at("0.0.0.0"), "-");
  EXPECT_EQ(b.at("::"), "-");
  EXPECT_EQ(b.m.ranges_v4(), 0u);
  EXPECT_EQ(b.m.ranges_v6(), 0u);
}

TEST(IpMatcher, LongestPrefixNamesTheList) {
  Built b({{"wide", false, 50, {"10.0.0.0/8"}},
           {"narrow", false, 50, {"10.1.0.0/16"}},
           {"host", false, 50, {"10.1.2.3"}}});
  EXPECT_EQ(b.at("10.2.0.1"), "wide/50");
  EXPECT_EQ(b.at("10.1.2.2"), "narrow/50");
  EXPECT_EQ(b.at("10.1.2.3"), "host/50");
  EXPECT_EQ(b.at("10.1.2.4"), "narrow/50");
  EXPECT_EQ(b.at("10.1.255.255"), "narrow/50");
  EXPECT_EQ(b.at("10.2.0.0"), "wide/50");
  EXPECT_EQ(b.at("11.0.0.0"), "-");
  EXPECT_EQ(b.at("9.255.255.255"), "-");
}

TEST(IpMatcher, HighestScoreWinsOverLongerPrefix) {
  Built b({{"bad-net", false, 80, {"10.0.0.0/8"}}, {"meh", false, 30, {"10.1.0.0/16"}}});
  EXPECT_EQ(b.at("10.1.2.3"), "bad-net/80");
  Built c({{"meh", false, 30, {"10.0.0.0/8"}}, {"bad-host", false, 80, {"10.1.2.3/32"}}});
  EXPECT_EQ(c.at("10.1.2.3"), "bad-host/80");
  EXPECT_EQ(c.at("10.1.2.4"), "meh/30");
}

TEST(IpMatcher, NestedPrefixesInSeveralLists) {
  Built b({{"a", false, 10, {"10.0.0.0/8", "10.1.2.0/24"}},
           {"b", false, 20, {"10.1.0.0/16"}},
           {"c", false, 5, {"10.1.2.128/25"}}});
  EXPECT_EQ(b.at("10.0.0.1"), "a/10");
  EXPECT_EQ(b.at("10.1.0.1"), "b/20");
  EXPECT_EQ(b.at("10.1.2.1"), "b/20");    // a's /24 scores less than b's /16
  EXPECT_EQ(b.at("10.1.2.200"), "b/20");  // c scores less too
  EXPECT_EQ(b.at("10.1.3.0"), "b/20");
  EXPECT_EQ(b.at("10.2.0.0"), "a/10");
}

TEST(IpMatcher, AllowWinsOverAnyDeny) {
  Built b(
      {{"office", true, 0, {"10.1.2.0/24"}}, {"drop", false, 100, {"10.0.0.0/8", "10.1.2.3/32"}}});
  EXPECT_EQ(b.at("10.1.2.3"), "allow:office");
  EXPECT_EQ(b.at("10.1.2.0"), "allow:office");
  EXPECT_EQ(b.at("10.1.2.255"), "allow:office");
  EXPECT_EQ(b.at("10.1.3.0"), "drop/100");
  EXPECT_EQ(b.at("10.1.1.255"), "drop/100");
  // The longest allow prefix names the list.
  Built c({{"corp", true, 0, {"10.0.0.0/8"}},
           {"lab", true, 0, {"10.9.0.0/16"}},
           {"drop", false, 100, {"10.9.9.9"}}});
  EXPECT_EQ(c.at("10.9.9.9"), "allow:lab");
  EXPECT_EQ(c.at("10.8.9.9"), "allow:corp");
}

TEST(IpMatcher, IdenticalPrefixesInSeveralLists) {
  Built b({{"first", false, 50, {"192.0.2.0/24"}}, {"second", false, 50, {"192.0.2.0/24"}}});
  EXPECT_EQ(b.at("192.0.2.7"), "first/50");
  Built c({{"first", false, 50, {"192.0.2.0/24"}}, {"second", false, 60, {"192.0.2.0/24"}}});
  EXPECT_EQ(c.at("192.0.2.7"), "second/60");
  Built d({{"a1", true, 0, {"192.0.2.0/24"}}, {"a2", true, 0, {"192.0.2.0/24"}}});
  EXPECT_EQ(d.at("192.0.2.7"), "allow:a1");
  // Duplicates within a list change nothing.
  Built e({{"dup", false, 40, {"192.0.2.0/24", "192.0.2.0/24", "192.0.2.0/24"}}});
  EXPECT_EQ(e.at("192.0.2.0"), "dup/40");
  EXPECT_EQ(e.at("192.0.3.0"), "-");
  EXPECT_EQ(e.m.ranges_v4(), 3u);
}

TEST(IpMatcher, EdgesOfTheAddressSpace) {
  Built b({{"all", false, 10, {"0.0.0.0/0"}},
           {"zero", false, 20, {"0.0.0.0/32"}},
           {"top", false, 90, {"255.255.255.255/32"}}});
  EXPECT_EQ(b.at("0.0.0.0"), "zero/20");
  EXPECT_EQ(b.at("0.0.0.1"), "all/10");
  EXPECT_EQ(b.at("128.0.0.0"), "all/10");
  EXPECT_EQ(b.at("255.255.255.254"), "all/10");
  EXPECT_EQ(b.at("255.255.255.255"), "top/90");
  EXPECT_EQ(b.at("2001:db8::1"), "-");  // IPv4 lists say nothing of IPv6

  Built c({{"top", false, 90, {"255.255.255.255/32"}}, {"bottom", false, 90, {"0.0.0.0/32"}}});
  EXPECT_EQ(c.at("255.255.255.255"), "top/90");
  EXPECT_EQ(c.at("255.255.255.254"), "-");
  EXPECT_EQ(c.at("0.0.0.0"), "bottom/90");
  EXPECT_EQ(c.at("0.0.0.1"), "-");

  Built v6({{"all6", false, 10, {"::/0"}},
            {"zero6", false, 20, {"::/128"}},
            {"top6", false, 90, {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"}}});
  EXPECT_EQ(v6.at("::"), "zero6/20");
  EXPECT_EQ(v6.at("::1"), "all6/10");
  EXPECT_EQ(v6.at("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "top6/90");
  EXPECT_EQ(v6.at("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), "all6/10");
}

TEST(IpMatcher, AdjacentRanges) {
  Built b({{"lo", false, 10, {"10.0.0.0/25"}},
           {"hi", false, 20, {"10.0.0.128/25"}},
           {"next", false, 10, {"10.0.1.0/24"}}});
  EXPECT_EQ(b.at("9.255.255.255"), "-");
  EXPECT_EQ(b.at("10.0.0.0"), "lo/10");
  EXPECT_EQ(b.at("10.0.0.127"), "lo/10");
  EXPECT_EQ(b.at("10.0.0.128"), "hi/20");
  EXPECT_EQ(b.at("10.0.0.255"), "hi/20");
  EXPECT_EQ(b.at("10.0.1.0"), "next/10");
  EXPECT_EQ(b.at("10.0.1.255"), "next/10");
  EXPECT_EQ(b.at("10.0.2.0"), "-");
  // Adjacent blocks of one list merge into one range.
  Built c({{"x", false, 10, {"10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24"}}});
  EXPECT_EQ(c.m.ranges_v4(), 3u);  // [0, 10.0.0.0) [10.0.0.0, 10.0.2.0) [10.0.2.0, end]
  EXPECT_EQ(c.at("10.0.1.200"), "x/10");
}

TEST(IpMatcher, Ipv4MappedAddressesAndEntries) {
  Built b({{"v4", false, 50, {"192.0.2.0/24"}},
           {"mapped", false, 60, {"::ffff:198.51.100.0/120"}},
           {"v6", false, 70, {"2001:db8::/32"}}});
  // A mapped address that was not normalised still finds the IPv4 entries.
  const Address raw = Address::V6((U128{0xffff} << 32) | 0xC0000201);
  ASSERT_TRUE(raw.is_v4_mapped());
  EXPECT_EQ(b.at(raw), "v4/50");
  EXPECT_EQ(b.at("::ffff:192.0.2.1"), "v4/50");
  // A mapped entry matches the IPv4 address.
  EXPECT_EQ(b.at("198.51.100.7"), "mapped/60");
  EXPECT_EQ(b.at(Address::V6((U128{0xffff} << 32) | 0xC6336407)), "mapped/60");
  EXPECT_EQ(b.at("198.51.101.7"), "-");
  EXPECT_EQ(b.at("2001:db8::5"), "v6/70");
  EXPECT_EQ(b.at("::c000:201"), "-");  // IPv4-compatible, not mapped

  // IPv6 prefixes that contain ::ffff:0:0/96 contain every IPv4 address, with the length of
  // the IPv6 prefix: an IPv4 /0 (a /96 in IPv6 terms) is longer than ::/64.
  Built c({{"any6", false, 40, {"::/0"}},
           {"low64", false, 40, {"::/64"}},
           {"any4", false, 40, {"0.0.0.0/0"}}});
  EXPECT_EQ(c.at("1.2.3.4"), "any4/40");
  EXPECT_EQ(c.at("::1"), "low64/40");
  EXPECT_EQ(c.at("2001:db8::1"), "any6/40");
  Built d({{"any6", false, 40, {"::/0"}}, {"other", false, 90, {"2001:db8::/32"}}});
  EXPECT_EQ(d.at("1.2.3.4"), "any6/40");
  EXPECT_EQ(d.at("2001:db8::1"), "other/90");
}

// ---- brute force cross-check --------------------------------------------------------------

struct RefEntry {
  Prefix p;
  int list;
};

// Every prefix as a 128-bit (IPv4-mapped for IPv4) block.
U128 to128(const Address& a) {
  return a.v6 ? a.bits : (kMappedTop96 << 32) | a.v4();
}
unsigned len128(const Prefix& p) {
  return p.addr.v6 ? p.len : p.len + 96u;
}

Verdict reference(const std::vector<RefEntry>& entries, const std::vector<ListInfo>& infos,
                  const Address& a) {
  const U128 x = to128(a);
  int allow = -1, deny = -1;
  unsigned allow_len = 0, deny_len = 0, score = 0;
  for (const RefEntry& e : entries) {
    const unsigned l = len128(e.p);
    if ((x & ~host_mask(l, 128)) != to128(e.p.addr)) continue;
    const ListInfo& info = infos[static_cast<size_t>(e.list)];
    if (info.allow) {
      if (allow < 0 || l > allow_len || (l == allow_len && e.list < allow)) {
        allow = e.list;
        allow_len = l;
      }
    } else if (deny < 0 || info.score > score ||
               (info.score == score && (l > deny_len || (l == deny_len && e.list < deny)))) {
      deny = e.list;
      deny_len = l;
      score = info.score;
    }
  }
  Verdict v;
  if (allow >= 0) {
    v.allowed = true;
    v.list = allow;
  } else if (deny >= 0) {
    v.denied = true;
    v.score = static_cast<uint8_t>(score);
    v.list = deny;
  }
  return v;
}

void cross_check(const Matcher& m, const std::vector<RefEntry>& entries,
                 const std::vector<ListInfo>& infos, const Address& a) {
  const Verdict got = m.lookup(a);
  const Verdict want = reference(entries, infos, a);
  ASSERT_TRUE(got.allowed == want.allowed && got.denied == want.denied && got.score == want.score &&
              got.list == want.list)
      << to_string(a) << ": got list " << got.list << " score " << int{got.score} << " allowed "
      << got.allowed << ", want list " << want.list << " score " << int{want.score} << " allowed "
      << want.allowed;
}

std::vector<ListInfo> random_lists(std::mt19937_64& rng) {
  std::vector<ListInfo> infos;
  for (int i = 0; i < 3; ++i)
    infos.push_back({"allow" + std::to_string(i), true, 0});
  for (int i = 0; i < 6; ++i)
    infos.push_back({"deny" + std::to_string(i), false, static_cast<uint8_t>(rng() % 4 * 25)});
  std::shuffle(infos.begin(), infos.end(), rng);
  return infos;
}

Matcher build_from(const std::vector<RefEntry>& entries, const std::vector<ListInfo>& infos) {
  std::vector<PrefixSet> sets(infos.size());
  for (const RefEntry& e : entries)
    sets[static_cast<size_t>(e.list)].add(e.p);
  std::vector<Matcher::Input> in;
  for (size_t i = 0; i < infos.size(); ++i)
    in.push_back({&infos[i], &sets[i]});
  return Matcher::build(in);
}

TEST(IpMatcher, RandomIpv4AgainstBruteForce) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    std::mt19937_64 rng(seed);
    const std::vector<ListInfo> infos = random_lists(rng);
    std::vector<RefEntry> entries;
    // Dense: prefixes of 10.0.0.0/10 (large runs) or 10.0.0.0/14 (small runs), mostly /20-/32
    // with some shorter ones so that they nest, and fewer allow entries than deny entries.
    const size_t n = seed % 2 ? 3000 : 300;
    const uint32_t region = seed % 2 ? 0x3FFFFF : 0x3FFFF;
    const bool shallow = seed % 3 == 0;
    for (size_t i = 0; i < n; ++i) {
      // The large runs have fewer wide prefixes (and no wide allow entries, below), else most
      // ranges merge and the table does not get large enough for its top-16-bit index. In
      // the "shallow" runs no prefix covers the whole region, so the stack often gets back
      // to one or zero open prefixes.
      const size_t mid = seed % 2 ? 151 : 7;
      unsigned len = 20 + static_cast<unsigned>(rng() % 13);
      if (shallow) {
        if (i % mid == 0) len = 16 + static_cast<unsigned>(rng() % 4);
      } else if (i > 0 && i % (seed % 2 ? 997 : 97) == 0) {
        len = static_cast<unsigned>(rng() % 10);
      } else if (i % mid == 0) {
        len = 10 + static_cast<unsigned>(rng() % 10);
      }
      const uint32_t addr = 0x0A000000u | (static_cast<uint32_t>(rng()) & region);
      Prefix p{Address::V4(addr & ~static_cast<uint32_t>(host_mask(len, 32))),
               static_cast<uint8_t>(len)};
      int list = static_cast<int>(rng() % infos.size());
      if (infos[static_cast<size_t>(list)].allow && rng() % 4 != 0)
        list = static_cast<int>(rng() % infos.size());  // fewer allow entries
      if (seed % 2 && len < 20 && infos[static_cast<size_t>(list)].allow)
        p = {Address::V4(addr), 32};
      entries.push_back({p, list});
      if (rng() % 20 == 0) entries.push_back({p, static_cast<int>(rng() % infos.size())});
    }
    const Matcher m = build_from(entries, infos);
    if (n >= 3000) {
      EXPECT_GT(m.ranges_v4(), 1024u) << "the top-16-bit index is not exercised";
    }
    for (const RefEntry& e : entries) {
      const uint32_t start = e.p.addr.v4();
      const uint32_t last = start | static_cast<uint32_t>(host_mask(e.p.len, 32));
      for (uint32_t x : {start - 1, start, start + 1, last - 1, last, last + 1})
        ASSERT_NO_FATAL_FAILURE(cross_check(m, entries, infos, Address::V4(x)));
    }
    for (int i = 0; i < 3000; ++i) {
      const uint32_t x = 0x0A000000u | (static_cast<uint32_t>(rng()) & region);
      ASSERT_NO_FATAL_FAILURE(cross_check(m, entries, infos, Address::V4(x)));
      ASSERT_NO_FATAL_FAILURE(
          cross_check(m, entries, infos, Address::V4(static_cast<uint32_t>(rng()))));
    }
  }
}

TEST(IpMatcher, RandomIpv6AgainstBruteForce) {
  const U128 base = U128{0x20010db800000000ull} << 64;  // 2001:db8::/32
  const U128 mapped = kMappedTop96 << 32;
  for (uint64_t seed = 11; seed <= 14; ++seed) {
    std::mt19937_64 rng(seed);
    const std::vector<ListInfo> infos = random_lists(rng);
    std::vector<RefEntry> entries;
    auto rand128 = [&rng] { return (U128{rng()} << 64) | rng(); };
    const size_t n = seed % 2 ? 4000 : 250;
    for (size_t i = 0; i < n; ++i) {
      Prefix p;
      unsigned kind = static_cast<unsigned>(rng() % 10);
      // The large runs have fewer short prefixes, else most ranges merge and the table does
      // not get large enough for its top-16-bit index.
      if (seed % 2 && kind >= 8 && rng() % 5 != 0) kind = 0;
      if (kind < 6) {
        // Prefixes of 2001:db8::/32, half of them in 2001:db8::/72 so that they nest.
        const unsigned len = rng() % 50 == 0 ? 32 + static_cast<unsigned>(rng() % 97)
                                             : 80 + static_cast<unsigned>(rng() % 49);
        U128 a = base | (rand128() & host_mask(32, 128));
        if (rng() % 2) a &= ~(((U128{1} << 40) - 1) << 56);
        p = {Address::V6(a & ~host_mask(len, 128)), static_cast<uint8_t>(len)};
      } else if (kind < 8) {
        // IPv4-mapped entries, and IPv4 entries, over the same IPv4 space.
        const unsigned len4 = 8 + static_cast<unsigned>(rng() % 25);
        const uint32_t a4 = 0xC0000000u | (static_cast<uint32_t>(rng()) & 0x00FFFFFF);
        const uint32_t m4 = a4 & ~static_cast<uint32_t>(host_mask(len4, 32));
        if (kind == 6)
          p = {Address::V6(mapped | m4), static_cast<uint8_t>(96 + len4)};
        else
          p = {Address::V4(m4), static_cast<uint8_t>(len4)};
      } else if (kind == 8) {
        // Short prefixes, some containing ::ffff:0:0/96.
        const unsigned len = static_cast<unsigned>(rng() % 96);
        const U128 a = rng() % 2 ? mapped : base;
        p = {Address::V6(a & ~host_mask(len, 128)), static_cast<uint8_t>(len)};
      } else {
        const unsigned len = static_cast<unsigned>(rng() % 129);
        p = {Address::V6(rand128() & ~host_mask(len, 128)), static_cast<uint8_t>(len)};
      }
      entries.push_back({p, static_cast<int>(rng() % infos.size())});
    }
    const Matcher m = build_from(entries, infos);
    if (n >= 2500) {
      EXPECT_GT(m.ranges_v6(), 1024u) << "the top-16-bit index is not exercised";
    }
    auto probe = [&](const Address& a) {
      Address x = a;
      if (x.is_v4_mapped() && rng() % 2) x = Address::V4(x.v4());
      cross_check(m, entries, infos, x);
    };
    for (const RefEntry& e : entries) {
      const U128 start = to128(e.p.addr);
      const U128 last = start | host_mask(len128(e.p), 128);
      for (U128 x : {start - 1, start, start + 1, last - 1, last, last + 1})
        ASSERT_NO_FATAL_FAILURE(probe(Address::V6(x)));
    }
    for (int i = 0; i < 3000; ++i) {
      ASSERT_NO_FATAL_FAILURE(probe(Address::V6(base | (rand128() & host_mask(32, 128)))));
      ASSERT_NO_FATAL_FAILURE(probe(Address::V6(mapped | static_cast<uint32_t>(rng()))));
      ASSERT_NO_FATAL_FAILURE(probe(Address::V6(rand128())));
    }
  }
}

}  // namespace
}  // namespace spoad::agents::ip_checker
