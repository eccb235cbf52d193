// The ip-checker's lookup structure: given allow and deny lists of prefixes, answers "which
// verdict for this address" in a few tens of nanoseconds. A pure data structure: no I/O, no
// logging, immutable once built (share it between threads with std::shared_ptr<const>).
//
// Semantics, for an address A and every list entry (prefix) that contains A:
//   - if any allow entry contains A, A is allowed: score 0, and the reported list is the
//     allow list of the longest such prefix;
//   - otherwise the score is the highest score of the deny lists with an entry containing A,
//     and the reported list is the list that gave that score; among lists with the same
//     score, the one whose entry is the longest prefix;
//   - remaining ties (same prefix, same score) go to the list given first to build().
// IPv4 addresses are compared as their IPv4-mapped IPv6 form ::ffff:a.b.c.d, as HAProxy
// compares addresses with patterns: the IPv6 entry ::ffff:10.0.0.0/104 is 10.0.0.0/8, and
// ::/0 contains every IPv4 address. Prefix lengths are compared in that 128-bit form.
//
// Layout: per family, the address space is cut into disjoint ranges [start_i, start_i+1),
// each mapped to a verdict. build() sorts the prefixes and sweeps them with a stack (CIDR
// blocks either nest or are disjoint). lookup() is a binary search over the range starts,
// narrowed by a 65536-entry index on the top 16 bits when the table is large.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "agents/ip-checker/address.h"

namespace spoad::agents::ip_checker {

// The prefixes of one list, as parsed. Entries may repeat and come in any order.
struct PrefixSet {
  struct V4 {
    uint32_t addr;  // network address, host order, host bits clear
    uint8_t len;    // 0-32
  };
  struct V6 {
    U128 addr;    // network address, host order, host bits clear
    uint8_t len;  // 0-128
  };
  std::vector<V4> v4;
  std::vector<V6> v6;

  // Adds `p`, which must have its host bits clear (as parse_prefix() returns it).
  void add(const Prefix& p) {
    if (p.addr.v6)
      v6.push_back({p.addr.bits, p.len});
    else
      v4.push_back({p.addr.v4(), p.len});
  }
  size_t size() const { return v4.size() + v6.size(); }
  // Heap bytes held (capacity, not size).
  size_t memory_bytes() const { return v4.capacity() * sizeof(V4) + v6.capacity() * sizeof(V6); }
};

// What a list is, for the matcher.
struct ListInfo {
  std::string name;
  bool allow = false;  // allow list (else deny list)
  uint8_t score = 0;   // deny lists: 0-100
};

// The answer for one address.
struct Verdict {
  bool allowed = false;  // an allow list contains the address
  bool denied = false;   // a deny list contains it and no allow list does
  uint8_t score = 0;     // highest deny score; 0 when allowed or when nothing matched
  int32_t list = -1;     // index (in build()'s input) of the reported list; -1: nothing matched
};

class Matcher {
 public:
  struct Input {
    const ListInfo* info;
    const PrefixSet* prefixes;
  };

  // An empty matcher: every lookup answers "no match". Holds one Verdict on the heap.
  Matcher() = default;

  // Builds the matcher for `lists`, in priority order for ties. At most 65535 lists (throws
  // std::invalid_argument beyond). Time O(n log n) for n prefixes; the inputs are only read.
  static Matcher build(std::span<const Input> lists);

  // The verdict for `a` (IPv4-mapped IPv6 addresses are looked up as IPv4). The reference
  // stays valid as long as the Matcher.
  const Verdict& lookup(const Address& a) const {
    if (!a.v6) return verdicts_[v4_.find(a.v4())];
    if (a.is_v4_mapped()) return verdicts_[v4_.find(a.v4())];
    return verdicts_[v6_.find(a.bits)];
  }

  // The name of list `i` of build()'s input ("" if out of range).
  const std::string& list_name(int32_t i) const;

  // Sizes, for stats and the benchmark.
  size_t ranges_v4() const { return v4_.starts.size(); }
  size_t ranges_v6() const { return v6_.starts.size(); }
  size_t prefixes() const { return prefixes_; }
  // Heap bytes of the lookup tables.
  size_t memory_bytes() const;

 private:
  // Disjoint ranges of one address family, sorted by start; verdicts[i] applies from
  // starts[i] up to starts[i + 1] - 1 (to the end of the space for the last one). starts[0]
  // is 0 unless the table is empty.
  template <typename K>
  struct Table {
    std::vector<K> starts;
    std::vector<uint16_t> verdicts;
    // index[b]: the range holding the address (b << (bits - 16)); 65537 entries, or empty
    // when the table is small enough for a plain binary search.
    std::vector<uint32_t> index;

    uint16_t find(K x) const {
      const size_t n = starts.size();
      if (n == 0) return 0;
      const K* base = starts.data();
      size_t count = n;
      if (!index.empty()) {
        const size_t b = static_cast<size_t>(x >> (sizeof(K) * 8 - 16));
        const uint32_t lo = index[b];
        base += lo;
        count = index[b + 1] - lo + 1;
      }
      // Last element <= x in [base, base + count); base[0] <= x always holds.
      while (count > 1) {
        const size_t half = count / 2;
        base = base[half] <= x ? base + half : base;
        count -= half;
      }
      return verdicts[static_cast<size_t>(base - starts.data())];
    }
  };

  Table<uint32_t> v4_;
  Table<U128> v6_;
  // verdicts_[0] is "no match"; verdicts_[i + 1] is list i's verdict. Never empty.
  std::vector<Verdict> verdicts_ = std::vector<Verdict>(1);
  std::vector<std::string> names_;
  size_t prefixes_ = 0;
};

}  // namespace spoad::agents::ip_checker
