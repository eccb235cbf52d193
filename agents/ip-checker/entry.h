// ip-checker runtime entries: an allow or deny entry added at run time (CLI, shared store),
// with an optional expiry, and the changes that travel between workers, the master (pool
// state) and the shared store. Types only; RuntimeEntries (runtime_entries.h) holds the set,
// Store (store.h) carries changes between instances.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "agents/ip-checker/address.h"
#include "util/text.h"

namespace spoad::agents::ip_checker {

// One runtime entry. Its key is (list, prefix): adding the same key again replaces it.
struct RuntimeEntry {
  std::string list;       // a configured list's name (allow lists take allow entries only)
  Prefix prefix;          // host bits clear, as parse_prefix() returns it
  bool allow = false;     // the list's kind, repeated so that a change is self-contained
  uint8_t score = 0;      // deny entries: 0-100 (default: the list's score); allow: 0
  int64_t expires_s = 0;  // wall clock, seconds since the epoch; 0: never
  std::string comment;    // bytes as typed (any content), at most kMaxComment
  bool operator==(const RuntimeEntry&) const = default;
};

inline constexpr size_t kMaxComment = 256;  // bytes

// True for a list name as the configuration accepts it (util::valid_name).
inline bool valid_list_name(std::string_view s) {
  return util::valid_name(s);
}

// A change to the runtime entries.
struct Change {
  enum class Kind : uint8_t {
    kAdd,    // add or replace `entry`
    kDel,    // remove the entry (entry.list, entry.prefix); other fields unused
    kClear,  // remove every runtime entry of entry.list; other fields unused
  };
  Kind kind = Kind::kAdd;
  RuntimeEntry entry;
  bool operator==(const Change&) const = default;
};

}  // namespace spoad::agents::ip_checker
