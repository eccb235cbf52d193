// The ip-checker's CLI: parsing the words of the runtime-entry commands and formatting the
// answers. The commands themselves are IpCheckerAgent members (commands.cpp); the functions
// here hold no state. Words come from the CLI as bytes: every one shown back goes through
// util::printable.
//
//   add ip deny <list> <addr|cidr> [score N] [ttl DUR] [comment TEXT...]
//   add ip allow <list> <addr|cidr> [ttl DUR] [comment TEXT...]
//   del ip [deny|allow] <list> <addr|cidr>
//   clear ip <list>
//   show ip entries <list>
//   show ip <addr>
//   show store
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agents/ip-checker/address.h"
#include "agents/ip-checker/entry.h"

namespace spoad::agents::ip_checker {

inline constexpr int64_t kMaxTtl = 365 * 86400;     // seconds
inline constexpr size_t kMaxShownEntries = 10'000;  // lines of `show ip entries`

// The words after "add ip deny" or "add ip allow".
struct AddArgs {
  std::string list;
  Prefix prefix;                 // host bits cleared
  std::optional<uint8_t> score;  // deny only; absent: the list's score
  int64_t ttl_s = 0;             // 1 .. kMaxTtl seconds; 0: no expiry
  std::string comment;           // the words after `comment` joined by one space, surrounding
                                 // double quotes stripped; at most kMaxComment bytes
};
// Parses `args` (<list> <addr|cidr> then options in any order, `comment` last). Throws
// agent::CommandError with a one-line answer: usage, bad address, score (deny only, 0-100),
// ttl, option given twice, unknown option, comment missing or too long.
AddArgs parse_add_args(const std::vector<std::string>& args, bool allow);

// The words after "del ip": [deny|allow] <list> <addr|cidr>.
struct DelArgs {
  std::optional<bool> allow;  // the kind named, if any
  std::string list;
  Prefix prefix;
};
// Throws agent::CommandError (usage, bad address).
DelArgs parse_del_args(const std::vector<std::string>& args);

// A TTL: "90" or "90s" (seconds), "10m", "1h", "1d". Sets *seconds; false when malformed or
// outside 1 s .. 365 d.
bool parse_ttl(std::string_view s, int64_t* seconds);

// Seconds since the epoch as "2026-05-01T12:00:00Z" (UTC).
std::string format_utc(int64_t s);
// "expires=2026-05-01T12:10:00Z left=598s" (whole seconds left: 0 during the last one), or
// "expires=never" for expires_s 0. `now_ms`: wall clock, milliseconds since the epoch.
std::string format_expiry(int64_t expires_s, int64_t now_ms);
// One line of `show ip entries` (no newline): "203.0.113.0/24 score=100 expires=... left=...
// comment=\"...\"" (no score for allow entries, no comment when empty).
std::string format_entry(const RuntimeEntry& e, int64_t now_ms);

// `url` with its user and password replaced by "***" ("redis://***@host:6379/0").
std::string redact_url(std::string_view url);
// "connected", or "disconnected since 2026-05-01T12:00:00Z" (since_s 0: "disconnected").
std::string store_status(bool connected, int64_t since_s);

}  // namespace spoad::agents::ip_checker
