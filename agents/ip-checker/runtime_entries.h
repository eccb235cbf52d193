// The ip-checker's runtime entries: the allow and deny entries added at run time (CLI, shared
// store), each in a configured list, keyed by (list, prefix), with an optional expiry. A pure
// data structure: no I/O, no loop, no clock (callers pass the time).
//
// Lookups do not search this set: build_overlay() turns it into an Overlay, a second Matcher
// beside the one of the file and config lists, and Overlay::lookup() combines both verdicts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agents/ip-checker/entry.h"
#include "agents/ip-checker/matcher.h"

namespace spoad::agents::ip_checker {

// The lookup table of the runtime entries: one Matcher list per (configured list, score), in
// the order (list index, score), since the Matcher gives one score per list.
struct Overlay {
  Matcher matcher;
  std::vector<int32_t> list_of;  // overlay list i -> index of the configured list
  size_t entries = 0;

  // The verdict for `a` of the configured lists with the runtime entries in them, given
  // `base`, the verdict of the file and config lists' Matcher for `a` (its list indexes are
  // the configured lists' indexes). As if each runtime entry were in its list: an allow entry
  // anywhere wins; otherwise the highest deny score; a tie between the base lists and a
  // runtime entry goes to the runtime entry. The returned Verdict's `list` is a configured
  // list's index. *runtime (when not null) tells whether that list's runtime entry decided.
  // No allocation; a few tens of nanoseconds (one Matcher lookup) when entries > 0.
  Verdict lookup(const Verdict& base, const Address& a, bool* runtime = nullptr) const {
    if (runtime) *runtime = false;
    if (entries == 0) return base;
    const Verdict& o = matcher.lookup(a);
    if (o.list < 0) return base;
    if (!o.allowed && (base.allowed || (base.denied && base.score > o.score))) return base;
    Verdict v = o;
    v.list = list_of[static_cast<size_t>(o.list)];
    if (runtime) *runtime = true;
    return v;
  }
  // Heap bytes of the lookup tables.
  size_t memory_bytes() const { return matcher.memory_bytes() + list_of.capacity() * 4; }
};

class RuntimeEntries {
 public:
  // `lists`: the configured lists (name, kind, score), indexed as the agent indexes them.
  // `max_entries`: the budget; apply() refuses a new entry beyond it (kFull).
  RuntimeEntries(std::vector<ListInfo> lists, size_t max_entries);

  enum class Status : uint8_t {
    kApplied,      // added, replaced, deleted, or cleared (even 0 entries)
    kNotFound,     // kDel of an entry that is not there
    kUnknownList,  // no configured list has that name
    kWrongKind,    // kAdd of an allow entry to a deny list, or the reverse
    kInvalid,      // kAdd with a prefix length out of range, a deny score above 100 or a
                   // comment longer than kMaxComment bytes
    kExpired,      // kAdd whose expires_s <= now_s: not added (and an entry of that key removed)
    kFull,         // kAdd of a new key with max_entries held, or one (list, score) pair too many
                   // for the Matcher (65534)
  };
  // A short explanation of `s` ("unknown list"), for logs.
  static const char* status_name(Status s);

  // What apply(c, now_s) would return, without changing anything.
  Status check(const Change& c, int64_t now_s) const;
  // Applies `c` at wall clock `now_s` (seconds since the epoch). Host bits of the prefix are
  // cleared; an allow entry's score is stored as 0. *removed (when not null) receives the
  // number of entries removed (kDel: 0 or 1, kClear: the list's count; kAdd: 0).
  Status apply(const Change& c, int64_t now_s, size_t* removed = nullptr);

  struct Replaced {
    size_t kept = 0;
    size_t expired = 0;      // expires_s <= now_s
    size_t unknown = 0;      // kUnknownList or kWrongKind
    size_t invalid = 0;      // kInvalid
    size_t over_budget = 0;  // kFull: the first max_entries valid entries are kept
  };
  // Replaces the whole set with `entries` (a resync, a restored pool state); entries that
  // apply() would refuse are left out and counted. A later duplicate key replaces an earlier.
  Replaced replace_all(std::vector<RuntimeEntry> entries, int64_t now_s);

  // Removes every entry with 0 < expires_s <= now_s; returns how many.
  size_t expire(int64_t now_s);
  // The smallest expires_s of all entries (seconds since the epoch); 0 when none expires.
  int64_t next_expiry_s() const { return expiry_.empty() ? 0 : expiry_.begin()->first; }

  size_t size() const { return map_.size(); }
  // Entries of configured list `list` (0 for an index out of range).
  size_t size(int32_t list) const;
  size_t max_entries() const { return max_entries_; }
  const std::vector<ListInfo>& lists() const { return lists_; }
  // The index of the configured list `name`, or -1.
  int32_t list_index(std::string_view name) const;

  // The entries of list `list`, sorted (IPv4 first, then by address and length), at most
  // `max` of them.
  std::vector<RuntimeEntry> entries(int32_t list, size_t max = SIZE_MAX) const;
  // Every entry, sorted by list index, then as entries() sorts them.
  std::vector<RuntimeEntry> all() const;
  // The entry of list `list` that decides for `a` as the Matcher would: for an allow list the
  // longest prefix containing `a`; for a deny list the highest score, then the longest prefix.
  // IPv4 addresses match IPv6 entries as ::ffff:a.b.c.d (as in matcher.h). Linear in the
  // list's entries (for the CLI, not the request path).
  std::optional<RuntimeEntry> deciding_entry(int32_t list, const Address& a) const;

  // The lookup table of the current entries. Time O(n log n); throws std::bad_alloc only.
  std::shared_ptr<const Overlay> build_overlay() const;

  // The entries as bytes (the agent's pool state, agent.h), format version 1:
  //   "IPRT" u8 version=1, u32 list count, per list: u8 name length + name bytes,
  //   u32 entry count, per entry: u16 list, u8 flags (bit 0 IPv6, bit 1 allow), u8 prefix
  //   length, the address (4 or 16 bytes, network order), u8 score, i64 expires_s, u16
  //   comment length + comment bytes (any bytes); integers big-endian.
  // When the result would exceed `max_bytes`, comments are left out (*dropped_comments, when
  // not null, is set to true); the size is then bounded by 31 bytes per entry plus the names.
  std::string encode(size_t max_bytes = SIZE_MAX, bool* dropped_comments = nullptr) const;
  // Decodes encode()'s bytes. Throws std::runtime_error ("pool state: ...") for anything else:
  // a wrong magic or version, a truncated or oversized field, a prefix length out of range,
  // host bits set, a score above 100, unknown flags, trailing bytes. Never reads past `bytes`.
  static std::vector<RuntimeEntry> decode(std::string_view bytes);

 private:
  // (list, family, address, length): entries() order.
  struct Key {
    uint32_t list = 0;
    bool v6 = false;
    U128 bits = 0;
    uint8_t len = 0;
    bool operator<(const Key& o) const;
  };
  // Compact, since there may be a million: a comment is usually absent.
  struct Value {
    int64_t expires_s = 0;
    uint8_t score = 0;
    std::unique_ptr<const std::string> comment;  // null when empty
  };
  // (expires_s, the key inside map_'s node: stable until that entry is erased).
  using ExpiryItem = std::pair<int64_t, const Key*>;
  struct ExpiryLess {
    bool operator()(const ExpiryItem& a, const ExpiryItem& b) const {
      return a.first != b.first ? a.first < b.first : std::less<const Key*>()(a.second, b.second);
    }
  };

  Status validate(const Change& c, int64_t now_s, int32_t* list, Key* key) const;
  void erase(std::map<Key, Value>::iterator it);
  RuntimeEntry to_entry(const Key& k, const Value& v) const;
  static uint32_t group_of(uint32_t list, uint8_t score) { return list * 128 + score; }

  std::vector<ListInfo> lists_;
  std::unordered_map<std::string, int32_t> index_;
  size_t max_entries_;
  std::map<Key, Value> map_;
  std::set<ExpiryItem, ExpiryLess> expiry_;  // the entries that expire
  std::vector<size_t> counts_;               // per configured list
  std::map<uint32_t, size_t> groups_;        // group_of(list, score) -> entries
};

}  // namespace spoad::agents::ip_checker
