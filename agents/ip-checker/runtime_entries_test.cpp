// Tests of RuntimeEntries: the set and its statuses, expiry to the second, the pool-state
// encoding (round trip, binary comments, garbage), and the combined verdict of the lists'
// Matcher and the overlay against a brute-force scan of every entry.
#include "agents/ip-checker/runtime_entries.h"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "agents/ip-checker/test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using test::A;
using test::P;

// allow: office (0); deny: drop (1, score 100), watch (2, score 30).
std::vector<ListInfo> kLists() {
  return {{"office", true, 0}, {"drop", false, 100}, {"watch", false, 30}};
}

Change add(const std::string& list, const std::string& prefix, bool allow, uint8_t score,
           int64_t expires_s = 0, const std::string& comment = "") {
  Change c;
  c.kind = Change::Kind::kAdd;
  c.entry = {list, P(prefix), allow, score, expires_s, comment};
  return c;
}

Change del(const std::string& list, const std::string& prefix) {
  Change c;
  c.kind = Change::Kind::kDel;
  c.entry.list = list;
  c.entry.prefix = P(prefix);
  return c;
}

Change clear(const std::string& list) {
  Change c;
  c.kind = Change::Kind::kClear;
  c.entry.list = list;
  return c;
}

using S = RuntimeEntries::Status;

TEST(RuntimeEntries, AddReplaceDeleteClear) {
  RuntimeEntries r(kLists(), 100);
  EXPECT_EQ(r.apply(add("drop", "203.0.113.0/24", false, 100), 1000), S::kApplied);
  EXPECT_EQ(r.apply(add("drop", "203.0.113.7/24", false, 80, 0, "again"), 1000), S::kApplied);
  ASSERT_EQ(r.size(), 1u);  // the same key: host bits cleared, replaced
  EXPECT_EQ(r.entries(1)[0].score, 80);
  EXPECT_EQ(r.entries(1)[0].comment, "again");
  EXPECT_EQ(r.entries(1)[0].prefix, P("203.0.113.0/24"));
  EXPECT_EQ(r.apply(add("drop", "2001:db8::/32", false, 100), 1000), S::kApplied);
  EXPECT_EQ(r.apply(add("office", "192.0.2.1", true, 0), 1000), S::kApplied);
  EXPECT_EQ(r.size(), 3u);
  EXPECT_EQ(r.size(1), 2u);
  EXPECT_EQ(r.size(0), 1u);
  size_t removed = 9;
  EXPECT_EQ(r.apply(del("drop", "203.0.113.0/24"), 1000, &removed), S::kApplied);
  EXPECT_EQ(removed, 1u);
  EXPECT_EQ(r.apply(del("drop", "203.0.113.0/24"), 1000, &removed), S::kNotFound);
  EXPECT_EQ(removed, 0u);
  EXPECT_EQ(r.apply(add("drop", "198.51.100.0/24", false, 100), 1000), S::kApplied);
  EXPECT_EQ(r.apply(clear("drop"), 1000, &removed), S::kApplied);
  EXPECT_EQ(removed, 2u);
  EXPECT_EQ(r.size(), 1u);
  EXPECT_EQ(r.size(1), 0u);
  EXPECT_EQ(r.apply(clear("watch"), 1000, &removed), S::kApplied);
  EXPECT_EQ(removed, 0u);
}

TEST(RuntimeEntries, RefusedChanges) {
  RuntimeEntries r(kLists(), 2);
  EXPECT_EQ(r.apply(add("nope", "10.0.0.1", false, 1), 1000), S::kUnknownList);
  EXPECT_EQ(r.apply(del("nope", "10.0.0.1"), 1000), S::kUnknownList);
  EXPECT_EQ(r.apply(clear("nope"), 1000), S::kUnknownList);
  EXPECT_EQ(r.apply(add("office", "10.0.0.1", false, 1), 1000), S::kWrongKind);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.1", true, 0), 1000), S::kWrongKind);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.1", false, 101), 1000), S::kInvalid);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.1", false, 1, 0, std::string(kMaxComment + 1, 'x')), 1000),
            S::kInvalid);
  Change bad = add("drop", "10.0.0.1", false, 1);
  bad.entry.prefix.len = 33;
  EXPECT_EQ(r.apply(bad, 1000), S::kInvalid);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.1", false, 1, 1000), 1000), S::kExpired);
  EXPECT_EQ(r.size(), 0u);
  // The budget: a new key past max_entries is refused, a replacement is not.
  EXPECT_EQ(r.apply(add("drop", "10.0.0.1", false, 1), 1000), S::kApplied);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.2", false, 1), 1000), S::kApplied);
  EXPECT_EQ(r.check(add("drop", "10.0.0.3", false, 1), 1000), S::kFull);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.3", false, 1), 1000), S::kFull);
  EXPECT_EQ(r.apply(add("drop", "10.0.0.2", false, 9), 1000), S::kApplied);
  EXPECT_EQ(r.size(), 2u);
  // An add that is already expired removes the entry it would replace (as Redis does).
  size_t removed = 0;
  EXPECT_EQ(r.apply(add("drop", "10.0.0.2", false, 1, 999), 1000, &removed), S::kExpired);
  EXPECT_EQ(removed, 1u);
  EXPECT_EQ(r.size(), 1u);
  // check() changes nothing.
  EXPECT_EQ(r.check(del("drop", "10.0.0.1"), 1000), S::kApplied);
  EXPECT_EQ(r.size(), 1u);
  EXPECT_STREQ(RuntimeEntries::status_name(S::kFull), "too many entries");
}

TEST(RuntimeEntries, ExpiryIsExactToTheSecond) {
  RuntimeEntries r(kLists(), 100);
  EXPECT_EQ(r.next_expiry_s(), 0);
  r.apply(add("drop", "10.0.0.1", false, 100, 2000), 1000);
  r.apply(add("drop", "10.0.0.2", false, 100, 1500), 1000);
  r.apply(add("drop", "10.0.0.3", false, 100), 1000);  // never
  EXPECT_EQ(r.next_expiry_s(), 1500);
  EXPECT_EQ(r.expire(1499), 0u);
  EXPECT_EQ(r.size(), 3u);
  EXPECT_EQ(r.expire(1500), 1u);
  EXPECT_EQ(r.next_expiry_s(), 2000);
  // Replacing with another expiry moves it.
  r.apply(add("drop", "10.0.0.1", false, 100, 3000), 1600);
  EXPECT_EQ(r.next_expiry_s(), 3000);
  r.apply(add("drop", "10.0.0.1", false, 100, 0), 1600);
  EXPECT_EQ(r.next_expiry_s(), 0);
  EXPECT_EQ(r.expire(1'000'000'000), 0u);
  EXPECT_EQ(r.size(), 2u);
  // Deleted or cleared entries leave the expiry index too.
  r.apply(add("drop", "10.0.0.4", false, 100, 5000), 1600);
  r.apply(clear("drop"), 1600);
  EXPECT_EQ(r.next_expiry_s(), 0);
}

TEST(RuntimeEntries, ReplaceAllCountsWhatItLeavesOut) {
  RuntimeEntries r(kLists(), 3);
  r.apply(add("drop", "10.9.9.9", false, 100), 1000);
  std::vector<RuntimeEntry> in = {
      add("drop", "10.0.0.1", false, 100).entry,
      add("drop", "10.0.0.2", false, 100, 900).entry,  // expired
      add("gone", "10.0.0.3", false, 100).entry,       // list no longer configured
      add("office", "10.0.0.4", false, 50).entry,      // wrong kind
      add("drop", "10.0.0.5", false, 200).entry,       // invalid
      add("watch", "10.0.0.6", false, 30, 2000).entry,
      add("office", "10.0.0.7", true, 0).entry,
      add("drop", "10.0.0.8", false, 100).entry,  // over the budget
  };
  const RuntimeEntries::Replaced x = r.replace_all(in, 1000);
  EXPECT_EQ(x.kept, 3u);
  EXPECT_EQ(x.expired, 1u);
  EXPECT_EQ(x.unknown, 2u);
  EXPECT_EQ(x.invalid, 1u);
  EXPECT_EQ(x.over_budget, 1u);
  EXPECT_EQ(r.size(1), 1u);  // 10.9.9.9 is gone
  EXPECT_EQ(r.next_expiry_s(), 2000);
}

TEST(RuntimeEntries, EntriesAreSortedAndBounded) {
  RuntimeEntries r(kLists(), 100);
  for (const char* p : {"2001:db8::1", "10.0.0.2", "10.0.0.0/8", "192.0.2.1", "::/0"})
    r.apply(add("drop", p, false, 100), 1000);
  r.apply(add("watch", "1.1.1.1", false, 30), 1000);
  std::vector<std::string> got;
  for (const RuntimeEntry& e : r.entries(1))
    got.push_back(to_string(e.prefix));
  EXPECT_EQ(got, (std::vector<std::string>{"10.0.0.0/8", "10.0.0.2/32", "192.0.2.1/32", "::/0",
                                           "2001:db8::1/128"}));
  EXPECT_EQ(r.entries(1, 2).size(), 2u);
  EXPECT_EQ(r.entries(7).size(), 0u);
  EXPECT_EQ(r.all().size(), 6u);
  EXPECT_EQ(r.all().back().list, "watch");
}

TEST(RuntimeEntries, DecidingEntry) {
  RuntimeEntries r(kLists(), 100);
  r.apply(add("drop", "10.0.0.0/8", false, 100), 1000);
  r.apply(add("drop", "10.1.0.0/16", false, 60), 1000);
  r.apply(add("drop", "10.1.2.0/24", false, 100), 1000);
  r.apply(add("drop", "::ffff:10.1.2.3/128", false, 100), 1000);  // = 10.1.2.3/32
  r.apply(add("office", "::/0", true, 0), 1000);
  r.apply(add("office", "10.0.0.0/8", true, 0), 1000);
  EXPECT_EQ(to_string(r.deciding_entry(1, A("10.1.2.3"))->prefix), "::ffff:10.1.2.3/128");
  EXPECT_EQ(to_string(r.deciding_entry(1, A("10.1.2.4"))->prefix), "10.1.2.0/24");
  EXPECT_EQ(to_string(r.deciding_entry(1, A("10.1.3.4"))->prefix), "10.0.0.0/8");  // 100 > 60
  EXPECT_FALSE(r.deciding_entry(1, A("11.0.0.1")));
  EXPECT_EQ(to_string(r.deciding_entry(0, A("10.1.2.3"))->prefix), "10.0.0.0/8");
  EXPECT_EQ(to_string(r.deciding_entry(0, A("11.0.0.1"))->prefix), "::/0");
  EXPECT_EQ(to_string(r.deciding_entry(0, A("2001:db8::1"))->prefix), "::/0");
}

// ---- pool state encoding ------------------------------------------------------------------

TEST(RuntimeEntries, EncodeDecodeRoundTrip) {
  RuntimeEntries r(kLists(), 100);
  const std::string binary("a\0b\xff\x1b[2J\"\\\n", 11);
  r.apply(add("drop", "203.0.113.0/24", false, 100, 1'900'000'000, binary), 1000);
  r.apply(add("drop", "2001:db8:bad::/48", false, 7), 1000);
  r.apply(add("office", "192.0.2.1", true, 0, 0, std::string(kMaxComment, '\x80')), 1000);
  r.apply(add("watch", "::ffff:198.51.100.0/120", false, 30, 5000), 1000);
  const std::string bytes = r.encode();
  const std::vector<RuntimeEntry> back = RuntimeEntries::decode(bytes);
  EXPECT_EQ(back, r.all());
  RuntimeEntries r2(kLists(), 100);
  EXPECT_EQ(r2.replace_all(back, 1000).kept, 4u);
  EXPECT_EQ(r2.encode(), bytes);
  // An empty set encodes too.
  EXPECT_TRUE(RuntimeEntries::decode(RuntimeEntries(kLists(), 1).encode()).empty());
  // Past max_bytes, comments are left out.
  bool dropped = false;
  const std::string small = r.encode(bytes.size() - 1, &dropped);
  EXPECT_TRUE(dropped);
  EXPECT_EQ(small.size(), bytes.size() - binary.size() - kMaxComment);
  for (const RuntimeEntry& e : RuntimeEntries::decode(small))
    EXPECT_TRUE(e.comment.empty());
  r.encode(bytes.size(), &dropped);
  EXPECT_FALSE(dropped);
}

std::string decode_error(const std::string& bytes) {
  try {
    RuntimeEntries::decode(bytes);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "no error";
}

TEST(RuntimeEntries, DecodeRejectsGarbage) {
  RuntimeEntries r(kLists(), 100);
  r.apply(add("drop", "203.0.113.0/24", false, 100, 0, "why"), 1000);
  r.apply(add("watch", "2001:db8::/32", false, 30), 1000);
  const std::string good = r.encode();
  // Every truncation throws.
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_NE(decode_error(good.substr(0, n)), "no error") << n;
  EXPECT_EQ(decode_error(good + "x"), "pool state: trailing bytes");
  EXPECT_EQ(decode_error("XPRT" + good.substr(4)),
            "pool state: not ip-checker runtime entries (bad magic)");
  std::string v2 = good;
  v2[4] = 2;
  EXPECT_EQ(decode_error(v2), "pool state: unsupported version 2");
  // The first entry starts after the header, the list names and the count.
  size_t at = 4 + 1 + 4;
  for (const ListInfo& l : kLists())
    at += 1 + l.name.size();
  at += 4;
  // 203.0.113.0/24 of drop (1): u16 list, flags, len, 4 bytes, score, expiry, comment.
  auto patched = [&](size_t off, char v) {
    std::string b = good;
    b[at + off] = v;
    return decode_error(b);
  };
  EXPECT_EQ(patched(1, 9), "pool state: list index out of range");
  EXPECT_EQ(patched(2, 4), "pool state: unknown entry flags");
  EXPECT_EQ(patched(3, 33), "pool state: prefix length out of range");
  EXPECT_EQ(patched(3, 16), "pool state: host bits set in a prefix");
  EXPECT_EQ(patched(8, 101), "pool state: score above 100");
  EXPECT_EQ(patched(9, '\x80'), "pool state: negative expiry");
  EXPECT_EQ(patched(17, 2), "pool state: comment too long");
  // Random bytes and random corruptions: an error or entries, never a crash.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    std::string b = i % 2 ? good : std::string("IPRT\x01", 5);
    const size_t edits = 1 + rng() % 4;
    for (size_t k = 0; k < edits; ++k) {
      if (rng() % 3 == 0 || b.empty())
        b.push_back(static_cast<char>(rng()));
      else
        b[rng() % b.size()] = static_cast<char>(rng());
    }
    try {
      for (const RuntimeEntry& e : RuntimeEntries::decode(b)) {
        EXPECT_LE(e.prefix.len, e.prefix.addr.v6 ? 128 : 32);
        EXPECT_LE(e.score, 100);
        EXPECT_LE(e.comment.size(), kMaxComment);
      }
    } catch (const std::runtime_error&) {
    }
  }
}

// ---- the combined verdict against a brute-force scan --------------------------------------

U128 wide(const Address& a) {
  return a.v6 ? a.bits : (kMappedTop96 << 32) | a.v4();
}
unsigned wide_len(const Prefix& p) {
  return p.addr.v6 ? p.len : p.len + 96u;
}
bool contains(const Prefix& p, const Address& a) {
  return ((wide(p.addr) ^ wide(a)) & ~host_mask(wide_len(p), 128)) == 0;
}

struct Naive {
  bool allowed = false, denied = false;
  int score = 0;
  int32_t list = -1;
};

// One scan of entries (list index, score, prefix), with the Matcher's rules (matcher.h):
// allow: the longest allow prefix, then the lowest `order`; deny: the highest score, then the
// longest prefix, then the lowest `order`.
struct Item {
  int32_t list;
  bool allow;
  int score;
  Prefix p;
  int order;
};
Naive scan(const std::vector<Item>& items, const Address& a) {
  const Item* best_allow = nullptr;
  const Item* best_deny = nullptr;
  for (const Item& it : items) {
    if (!contains(it.p, a)) continue;
    if (it.allow) {
      if (!best_allow || wide_len(it.p) > wide_len(best_allow->p) ||
          (wide_len(it.p) == wide_len(best_allow->p) && it.order < best_allow->order))
        best_allow = &it;
    } else if (!best_deny || it.score > best_deny->score ||
               (it.score == best_deny->score &&
                (wide_len(it.p) > wide_len(best_deny->p) ||
                 (wide_len(it.p) == wide_len(best_deny->p) && it.order < best_deny->order)))) {
      best_deny = &it;
    }
  }
  Naive n;
  if (best_allow) {
    n.allowed = true;
    n.list = best_allow->list;
  } else if (best_deny) {
    n.denied = true;
    n.score = best_deny->score;
    n.list = best_deny->list;
  }
  return n;
}

// A random prefix in a small space so that entries overlap: IPv4 in 10.0.0.0/16, IPv6 in
// 2001:db8::/112 and its IPv4-mapped twin ::ffff:10.0.0.0/112, and now and then ::/0 or
// 0.0.0.0/0.
Prefix random_prefix(std::mt19937_64& rng) {
  Prefix p;
  const unsigned kind = rng() % 20;
  if (kind == 0) {
    p.addr = (rng() % 2) ? Address::V4(0) : Address::V6(0);
    p.len = 0;
    return p;
  }
  if (kind < 12) {
    p.len = static_cast<uint8_t>(16 + rng() % 17);
    p.addr = Address::V4((10u << 24) | static_cast<uint32_t>(rng() % 65536));
    p.addr.bits &= ~host_mask(p.len, 32);
  } else {
    p.len = static_cast<uint8_t>(112 + rng() % 17);
    const U128 base = kind < 16 ? (U128{0x20010db8} << 96) : ((kMappedTop96 << 32) | (10u << 24));
    p.addr = Address::V6(base | (rng() % 65536));
    p.addr.bits &= ~host_mask(p.len, 128);
  }
  return p;
}

Address random_address(std::mt19937_64& rng) {
  switch (rng() % 4) {
    case 0:
    case 1:
      return Address::V4((10u << 24) | static_cast<uint32_t>(rng() % 65536));
    case 2:
      return Address::V6((U128{0x20010db8} << 96) | (rng() % 65536));
    default:
      return Address::V4(static_cast<uint32_t>(rng()));
  }
}

TEST(RuntimeEntries, CombinedVerdictMatchesABruteForceScan) {
  std::mt19937_64 rng(20240501);
  for (int round = 0; round < 40; ++round) {
    // Configured lists: 2 allow, 4 deny with scores that often tie.
    std::vector<ListInfo> lists = {{"a0", true, 0}, {"a1", true, 0}};
    for (int i = 0; i < 4; ++i)
      lists.push_back({"d" + std::to_string(i), false, static_cast<uint8_t>(10 * (rng() % 6))});
    // Base (file/config) entries.
    std::vector<PrefixSet> sets(lists.size());
    std::vector<Item> base;
    const size_t nbase = rng() % 60;
    for (size_t i = 0; i < nbase; ++i) {
      const auto l = static_cast<int32_t>(rng() % lists.size());
      const Prefix p = random_prefix(rng);
      sets[l].add(p);
      base.push_back({l, lists[l].allow, lists[l].score, p, l});
    }
    std::vector<Matcher::Input> inputs;
    for (size_t i = 0; i < lists.size(); ++i)
      inputs.push_back({&lists[i], &sets[i]});
    const Matcher m = Matcher::build(inputs);
    // Runtime entries, with scores of their own; some replaced, some deleted.
    RuntimeEntries r(lists, 1000);
    const size_t nrt = rng() % 60;
    for (size_t i = 0; i < nrt; ++i) {
      const auto l = static_cast<int32_t>(rng() % lists.size());
      const Prefix p = random_prefix(rng);
      const uint8_t score = lists[l].allow ? 0 : static_cast<uint8_t>(10 * (rng() % 6));
      Change c;
      c.entry = {lists[l].name, p, lists[l].allow, score, 0, ""};
      if (rng() % 8 == 0) c.kind = Change::Kind::kDel;
      r.apply(c, 1000);
    }
    std::vector<Item> rt;
    for (const RuntimeEntry& e : r.all()) {
      const int32_t l = r.list_index(e.list);
      rt.push_back({l, e.allow, e.score, e.prefix, l});  // overlay order: (list, score)
    }
    const std::shared_ptr<const Overlay> ov = r.build_overlay();
    ASSERT_EQ(ov->entries, rt.size());
    for (int q = 0; q < 2000; ++q) {
      Address a = random_address(rng);
      if (!a.v6 && rng() % 5 == 0) a = Address::V6((kMappedTop96 << 32) | a.v4());  // as HAProxy
      const Naive nb = scan(base, a);
      const Naive no = scan(rt, a);
      // The combination: allow wins; then the highest score; a tie goes to the runtime entry.
      Naive want = nb;
      bool want_rt = false;
      if (no.list >= 0 && (no.allowed || (!nb.allowed && (!nb.denied || no.score >= nb.score)))) {
        want = no;
        want_rt = true;
      }
      bool got_rt = false;
      const Verdict got = ov->lookup(m.lookup(a), a, &got_rt);
      const std::string where = "round " + std::to_string(round) + " address " + to_string(a);
      ASSERT_EQ(got.allowed, want.allowed) << where;
      ASSERT_EQ(got.denied, want.denied) << where;
      ASSERT_EQ(got.score, want.score) << where;
      ASSERT_EQ(got.list, want.list) << where;
      ASSERT_EQ(got_rt, want_rt) << where;
      if (got_rt) {
        const std::optional<RuntimeEntry> e = r.deciding_entry(got.list, a);
        ASSERT_TRUE(e) << where;
        EXPECT_TRUE(contains(e->prefix, a)) << where;
        EXPECT_EQ(e->score, got.score) << where;
      }
    }
  }
}

TEST(RuntimeEntries, EmptyOverlayReturnsTheBaseVerdict) {
  RuntimeEntries r(kLists(), 10);
  const auto ov = r.build_overlay();
  Verdict base;
  base.denied = true;
  base.score = 42;
  base.list = 2;
  bool rt = true;
  const Verdict v = ov->lookup(base, A("10.0.0.1"), &rt);
  EXPECT_EQ(v.score, 42);
  EXPECT_EQ(v.list, 2);
  EXPECT_FALSE(rt);
}

}  // namespace
}  // namespace spoad::agents::ip_checker
