// Fuzz target: the ip-checker's list parsing and matcher (agents/ip-checker: lists.h,
// matcher.h), checked against a brute-force scan of the parsed prefixes.
//
// Input: lists separated by NUL bytes. The first byte of each list says what it is (bit 0:
// allow, else deny with score byte % 101); the rest is the text of a list file, parsed with
// parse_list_text(). A list that does not parse is left out. The matcher is built from the
// lists, then looked up for addresses derived from the input: each prefix's first and last
// address and their neighbours, and the input's last 4 and 16 bytes as an IPv4 and an IPv6
// address; IPv4 addresses are also looked up in their IPv4-mapped IPv6 form. Each verdict must
// equal the brute-force one, computed from the rules in matcher.h; a mismatch aborts.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "agents/ip-checker/lists.h"
#include "agents/ip-checker/matcher.h"
#include "fuzz_check.h"

using namespace spoad::agents::ip_checker;

namespace {

constexpr U128 kMapped = U128{0xffff} << 32;

// A prefix in the 128-bit space where IPv4 a.b.c.d is ::ffff:a.b.c.d.
struct P128 {
  U128 net;
  unsigned len;  // 0-128
};

bool contains(const P128& p, U128 a) {
  if (p.len == 0) return true;
  const unsigned shift = 128 - p.len;
  return (a >> shift) == (p.net >> shift);
}

U128 as128(const Address& a) {
  return a.v6 ? a.bits : (kMapped | a.v4());
}

struct List {
  ListInfo info;
  ParsedList parsed;
  std::vector<P128> all;  // every prefix, in the 128-bit space
};

// The verdict by the rules of matcher.h, scanning every prefix of every list.
Verdict brute_force(const std::vector<List>& lists, U128 a) {
  int best_allow = -1, best_allow_len = -1;
  int best_deny = -1, best_deny_score = -1, best_deny_len = -1;
  for (size_t i = 0; i < lists.size(); ++i) {
    for (const P128& p : lists[i].all) {
      if (!contains(p, a)) continue;
      const int len = static_cast<int>(p.len);
      if (lists[i].info.allow) {
        if (len > best_allow_len) {  // ties: the earlier list, already kept
          best_allow = static_cast<int>(i);
          best_allow_len = len;
        }
      } else {
        const int score = lists[i].info.score;
        if (score > best_deny_score || (score == best_deny_score && len > best_deny_len)) {
          best_deny = static_cast<int>(i);
          best_deny_score = score;
          best_deny_len = len;
        }
      }
    }
  }
  Verdict v;
  if (best_allow >= 0) {
    v.allowed = true;
    v.list = best_allow;
  } else if (best_deny >= 0) {
    v.denied = true;
    v.score = static_cast<uint8_t>(best_deny_score);
    v.list = best_deny;
  }
  return v;
}

void check(const Matcher& m, const std::vector<List>& lists, const Address& a) {
  const Verdict& got = m.lookup(a);
  const Verdict want = brute_force(lists, as128(a));
  if (got.allowed != want.allowed || got.denied != want.denied || got.score != want.score ||
      got.list != want.list) {
    std::fprintf(stderr,
                 "address %s: matcher says allowed=%d denied=%d score=%d list=%d, "
                 "brute force says allowed=%d denied=%d score=%d list=%d\n",
                 to_string(a).c_str(), got.allowed, got.denied, got.score, got.list, want.allowed,
                 want.denied, want.score, want.list);
    FUZZ_CHECK(false && "matcher disagrees with the brute-force scan");
  }
  // An IPv4 address and its IPv4-mapped IPv6 form get the same verdict.
  if (!a.v6) {
    const Verdict& mapped = m.lookup(Address::V6(kMapped | a.v4()));
    FUZZ_CHECK(mapped.allowed == got.allowed && mapped.denied == got.denied &&
               mapped.score == got.score && mapped.list == got.list);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<List> lists;
  size_t pos = 0;
  while (pos < in.size() && lists.size() < 16) {
    size_t end = in.find('\0', pos);
    if (end == std::string_view::npos) end = in.size();
    const std::string_view section = in.substr(pos, end - pos);
    pos = end + 1;
    if (section.empty()) continue;
    List l;
    const auto kind = static_cast<uint8_t>(section[0]);
    l.info.name = "list" + std::to_string(lists.size());
    l.info.allow = (kind & 1) != 0;
    l.info.score = l.info.allow ? 0 : static_cast<uint8_t>(kind % 101);
    std::string err;
    if (!parse_list_text(section.substr(1), l.info.name, &l.parsed, &err)) {
      FUZZ_CHECK(!err.empty());
      continue;
    }
    for (const auto& p : l.parsed.prefixes.v4) {
      FUZZ_CHECK(p.len <= 32 && (p.addr & static_cast<uint32_t>(host_mask(p.len, 32))) == 0);
      l.all.push_back({kMapped | p.addr, p.len + 96u});
    }
    for (const auto& p : l.parsed.prefixes.v6) {
      FUZZ_CHECK(p.len <= 128 && (p.addr & host_mask(p.len, 128)) == 0);
      l.all.push_back({p.addr, p.len});
    }
    lists.push_back(std::move(l));
  }

  std::vector<Matcher::Input> inputs;
  for (const List& l : lists)
    inputs.push_back({&l.info, &l.parsed.prefixes});
  const Matcher m = Matcher::build(inputs);
  size_t total = 0;
  for (const List& l : lists)
    total += l.parsed.prefixes.size();
  FUZZ_CHECK(m.prefixes() == total);
  for (size_t i = 0; i < lists.size(); ++i)
    FUZZ_CHECK(m.list_name(static_cast<int32_t>(i)) == lists[i].info.name);
  FUZZ_CHECK(m.list_name(static_cast<int32_t>(lists.size())).empty());

  // Probe addresses: the edges of each prefix and one step beyond them.
  size_t probes = 0;
  for (const List& l : lists) {
    for (const auto& p : l.parsed.prefixes.v4) {
      if (++probes > 256) break;
      const uint32_t first = p.addr;
      const uint32_t last = first | static_cast<uint32_t>(host_mask(p.len, 32));
      for (uint32_t a : {first, last, first - 1, last + 1})
        check(m, lists, Address::V4(a));
    }
    for (const auto& p : l.parsed.prefixes.v6) {
      if (++probes > 256) break;
      const U128 first = p.addr;
      const U128 last = first | host_mask(p.len, 128);
      for (U128 a : {first, last, first - 1, last + 1}) {
        // Mapped addresses are IPv4 ones (parse_address and the SPOP decoders return them so).
        const Address addr =
            (a >> 32) == 0xffff ? Address::V4(static_cast<uint32_t>(a)) : Address::V6(a);
        check(m, lists, addr);
      }
    }
  }
  // Addresses from the input's last bytes.
  if (size >= 4) {
    uint32_t a = 0;
    for (size_t i = size - 4; i < size; ++i)
      a = a << 8 | data[i];
    check(m, lists, Address::V4(a));
  }
  if (size >= 16) {
    U128 a = 0;
    for (size_t i = size - 16; i < size; ++i)
      a = a << 8 | data[i];
    check(m, lists, (a >> 32) == 0xffff ? Address::V4(static_cast<uint32_t>(a)) : Address::V6(a));
  }
  return 0;
}
