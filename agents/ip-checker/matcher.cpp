#include "agents/ip-checker/matcher.h"

#include <algorithm>
#include <stdexcept>

namespace spoad::agents::ip_checker {

namespace {

// Tables with fewer ranges than this are searched without the top-16-bit index (which costs
// 256 KiB).
constexpr size_t kIndexMinRanges = 1024;
constexpr size_t kMaxLists = 65534;  // verdict ids are uint16_t: list i has id i + 1

// What the prefixes open at a point of the sweep add up to.
struct State {
  int32_t allow_list = -1;  // allow list of the longest allow prefix, or -1
  uint8_t allow_len = 0;    // its length, in 128-bit terms
  int32_t deny_list = -1;   // deny list that gives the score, or -1
  uint8_t deny_len = 0;     // length of its prefix, in 128-bit terms
  uint8_t score = 0;        // highest deny score
};

uint16_t verdict_id(const State& s) {
  if (s.allow_list >= 0) return static_cast<uint16_t>(s.allow_list + 1);
  if (s.deny_list >= 0) return static_cast<uint16_t>(s.deny_list + 1);
  return 0;
}

// The state inside a prefix of list `list` (length `len128`) nested in a region in state `s`.
// Prefixes arrive shortest first, and in list order for the same prefix, so a strict
// comparison keeps the first list on ties.
State combine(State s, int32_t list, uint8_t len128, const ListInfo& info) {
  if (info.allow) {
    if (s.allow_list < 0 || len128 > s.allow_len) {
      s.allow_list = list;
      s.allow_len = len128;
    }
  } else if (s.deny_list < 0 || info.score > s.score ||
             (info.score == s.score && len128 > s.deny_len)) {
    s.deny_list = list;
    s.deny_len = len128;
    s.score = info.score;
  }
  return s;
}

template <typename K>
struct Item {
  K start;
  uint8_t len;     // in the family's bits
  uint8_t len128;  // as an IPv6 (or IPv4-mapped) prefix
  int32_t list;
};

// Turns prefixes sorted by (start, len128, list) into disjoint ranges. `get(i)` returns item
// i. Appends to `starts`/`vids`, which must be empty.
template <typename K, unsigned Bits, typename Get>
void sweep(size_t n, Get get, std::span<const Matcher::Input> lists, std::vector<K>* starts,
           std::vector<uint16_t>* vids) {
  if (n == 0) return;
  struct Open {
    K last;
    State state;
    uint16_t vid;
  };
  std::vector<Open> stack;
  stack.reserve(Bits + 2);
  starts->reserve(2 * n + 1);
  vids->reserve(2 * n + 1);
  starts->push_back(0);
  vids->push_back(0);
  // Starts a range at `pos` with verdict `vid`, replacing a range that would be empty and
  // merging with the previous range when the verdict is the same.
  auto emit = [&](K pos, uint16_t vid) {
    if (starts->back() == pos) {
      vids->back() = vid;
      const size_t m = vids->size();
      if (m >= 2 && (*vids)[m - 2] == vid) {
        starts->pop_back();
        vids->pop_back();
      }
    } else if (vids->back() != vid) {
      starts->push_back(pos);
      vids->push_back(vid);
    }
  };
  for (size_t i = 0; i < n; ++i) {
    const Item<K> it = get(i);
    while (!stack.empty() && stack.back().last < it.start) {
      const K end = stack.back().last;  // < it.start, so end + 1 does not wrap
      stack.pop_back();
      emit(end + 1, stack.empty() ? uint16_t{0} : stack.back().vid);
    }
    const State parent = stack.empty() ? State{} : stack.back().state;
    const State s = combine(parent, it.list, it.len128, *lists[it.list].info);
    const uint16_t vid = verdict_id(s);
    const K last = it.start | static_cast<K>(host_mask(it.len, Bits));
    stack.push_back({last, s, vid});
    emit(it.start, vid);
  }
  while (!stack.empty()) {
    const K end = stack.back().last;
    stack.pop_back();
    if (end == static_cast<K>(host_mask(0, Bits))) break;  // up to the end of the space
    emit(end + 1, stack.empty() ? uint16_t{0} : stack.back().vid);
  }
  starts->shrink_to_fit();
  vids->shrink_to_fit();
}

template <typename K>
void build_index(std::vector<K>& starts, std::vector<uint32_t>* index) {
  const size_t n = starts.size();
  if (n < kIndexMinRanges) return;
  index->resize(65537);
  constexpr unsigned shift = sizeof(K) * 8 - 16;
  size_t i = 0;
  for (size_t b = 0; b < 65536; ++b) {
    const K key = static_cast<K>(b) << shift;
    while (i + 1 < n && starts[i + 1] <= key)
      ++i;
    (*index)[b] = static_cast<uint32_t>(i);
  }
  (*index)[65536] = static_cast<uint32_t>(n - 1);
}

}  // namespace

Matcher Matcher::build(std::span<const Input> lists) {
  if (lists.size() > kMaxLists)
    throw std::invalid_argument("too many lists (" + std::to_string(lists.size()) + ", max " +
                                std::to_string(kMaxLists) + ")");
  Matcher m;
  m.names_.reserve(lists.size());
  m.verdicts_.reserve(lists.size() + 1);
  for (size_t i = 0; i < lists.size(); ++i) {
    const ListInfo& info = *lists[i].info;
    m.names_.push_back(info.name);
    Verdict v;
    v.list = static_cast<int32_t>(i);
    if (info.allow) {
      v.allowed = true;
    } else {
      v.denied = true;
      v.score = info.score;
    }
    m.verdicts_.push_back(v);
  }

  // IPv4 (and IPv6 prefixes that cover IPv4-mapped addresses), packed for a fast sort:
  // start (32 bits) | len128 (8 bits, at bit 16) | list (16 bits).
  const U128 mapped_base = kMappedTop96 << 32;  // ::ffff:0:0
  size_t n4 = 0, n6 = 0;
  for (const Input& in : lists) {
    n4 += in.prefixes->v4.size();
    n6 += in.prefixes->v6.size();
    m.prefixes_ += in.prefixes->size();
  }
  {
    std::vector<uint64_t> keys;
    keys.reserve(n4);
    auto add4 = [&keys](uint32_t start, unsigned len128, size_t list) {
      keys.push_back((uint64_t{start} << 32) | (uint64_t{len128} << 16) | list);
    };
    for (size_t i = 0; i < lists.size(); ++i) {
      for (const PrefixSet::V4& p : lists[i].prefixes->v4)
        add4(p.addr, 96u + p.len, i);
      for (const PrefixSet::V6& p : lists[i].prefixes->v6) {
        if (p.len >= 96 && (p.addr >> 32) == kMappedTop96)
          add4(static_cast<uint32_t>(p.addr), p.len, i);
        else if (p.len < 96 && (mapped_base & ~host_mask(p.len, 128)) == p.addr)
          add4(0, p.len, i);  // ::/0, ::/64 ... contain all of ::ffff:0:0/96
      }
    }
    std::sort(keys.begin(), keys.end());
    auto get = [&keys](size_t i) {
      const uint64_t k = keys[i];
      const auto len128 = static_cast<uint8_t>((k >> 16) & 0xff);
      return Item<uint32_t>{static_cast<uint32_t>(k >> 32),
                            static_cast<uint8_t>(len128 >= 96 ? len128 - 96 : 0), len128,
                            static_cast<int32_t>(k & 0xffff)};
    };
    sweep<uint32_t, 32>(keys.size(), get, lists, &m.v4_.starts, &m.v4_.verdicts);
  }
  build_index(m.v4_.starts, &m.v4_.index);

  // IPv6, without the prefixes inside ::ffff:0:0/96 (IPv4-mapped addresses are looked up in
  // the IPv4 table).
  {
    std::vector<Item<U128>> items;
    items.reserve(n6);
    for (size_t i = 0; i < lists.size(); ++i) {
      for (const PrefixSet::V6& p : lists[i].prefixes->v6) {
        if (p.len >= 96 && (p.addr >> 32) == kMappedTop96) continue;
        items.push_back({p.addr, p.len, p.len, static_cast<int32_t>(i)});
      }
    }
    std::sort(items.begin(), items.end(), [](const Item<U128>& a, const Item<U128>& b) {
      if (a.start != b.start) return a.start < b.start;
      if (a.len != b.len) return a.len < b.len;
      return a.list < b.list;
    });
    auto get = [&items](size_t i) { return items[i]; };
    sweep<U128, 128>(items.size(), get, lists, &m.v6_.starts, &m.v6_.verdicts);
  }
  build_index(m.v6_.starts, &m.v6_.index);
  return m;
}

const std::string& Matcher::list_name(int32_t i) const {
  static const std::string kEmpty;
  if (i < 0 || static_cast<size_t>(i) >= names_.size()) return kEmpty;
  return names_[static_cast<size_t>(i)];
}

size_t Matcher::memory_bytes() const {
  size_t n = v4_.starts.capacity() * sizeof(uint32_t) + v4_.verdicts.capacity() * 2 +
             v4_.index.capacity() * 4;
  n +=
      v6_.starts.capacity() * sizeof(U128) + v6_.verdicts.capacity() * 2 + v6_.index.capacity() * 4;
  n += verdicts_.capacity() * sizeof(Verdict);
  for (const std::string& s : names_)
    n += sizeof(std::string) + s.capacity();
  return n;
}

}  // namespace spoad::agents::ip_checker
