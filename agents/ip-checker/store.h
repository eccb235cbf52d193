// The ip-checker's shared store: runtime entries kept in Redis (or Valkey), so that every spoad
// instance naming the same store (one per host, each with its workers) applies the same
// entries. Each worker process has its own Store on its own loop; lookups never touch it.
//
// Data in Redis (key-prefix P, default "spoad:"):
//   P entry:<list>:<prefix>   one string key per entry, value "<a|d> <score> <expires_s>
//                             <comment as lowercase hex>", with EXPIREAT <expires_s> when
//                             the entry expires
//   P changes                 the pub/sub channel announcing each change:
//                             "<origin> add <list> <prefix> <a|d> <score> <expires_s> <hex>",
//                             "<origin> del <list> <prefix>", "<origin> clear <list>"; origin
//                             is a random 64-bit number (hex) per Store, so that a Store skips
//                             its own announcements
// Exact forms (store_format below writes them; anything else is malformed: skipped, counted,
// logged): fields are separated by one space; <list> is a list name (1-64 of A-Z a-z 0-9 _ -
// .); <prefix> as to_string(Prefix) prints it ("192.0.2.0/24", "2001:db8::/32", host bits
// clear); <score> 0-100 and <expires_s> (0: never) in decimal without leading zeros; <hex>
// two lowercase digits per byte, at most kMaxComment bytes, and the field with its space is
// left out when the comment is empty; <origin> exactly 16 lowercase hex digits. An add and
// a del are written and announced in one MULTI/EXEC; a clear deletes with SCAN + DEL, then
// announces (a Store's later writes wait for it). Redis pub/sub ignores SELECT: stores on
// different databases of one server must use different key prefixes.
// Two connections per Store (hiredis async, libuv adapter): one subscribed to P changes, one
// for commands. After each (re)connect: SUBSCRIBE first, then a full resync (SCAN MATCH P
// entry:* + MGET), delivered as one on_resync(); changes announced meanwhile are applied after
// it. A lost connection is retried with backoff (100 ms doubling to 5 s).
#pragma once

#include <spdlog/logger.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agents/ip-checker/entry.h"
#include "options/options.h"

namespace spoad::agents::ip_checker {

struct StoreOptions {
  std::string url;                    // redis://[:password@]host[:port][/db]; "" = no store
  std::string key_prefix = "spoad:";  // prefix of every key and of the channel
  // Budget of one resync (entries read plus changes announced meanwhile): a store holding more
  // is refused (logged, budget_refusals()) and retried with backoff, as if disconnected.
  uint64_t max_entries = 2'000'000;  // store.max-entries
  uint64_t max_bytes = 256 << 20;    // store.max-bytes: bytes of the keys and values read
};

// Reads the agent's `store:` map (url, key-prefix, max-entries, max-bytes). Absent: url "".
// Fails through `o` (config error naming file, line and key) for a URL that is not redis://,
// a bad port or db, rediss:// (TLS: not supported by Debian 12's hiredis 0.14), or a prefix
// with spaces or control bytes. The URL may also be redis://user:password@host (Redis 6 ACL);
// '%XX' escapes are decoded in the user and the password.
StoreOptions parse_store_options(config::Options& o);

// The text forms of the header comment, for the Store and its tests. The parsers take any
// bytes, never throw, and accept only what the writers produce (parse then write gives the
// input back). On failure they return false and set *why to a short reason.
namespace store_format {
// P entry:<list>:<prefix>
std::string entry_key(std::string_view key_prefix, const RuntimeEntry& e);
// "<a|d> <score> <expires_s>[ <hex>]"
std::string entry_value(const RuntimeEntry& e);
// A key and its value read back (key_prefix: P).
bool parse_entry(std::string_view key_prefix, std::string_view key, std::string_view value,
                 RuntimeEntry* out, std::string* why);
// "<origin> add|del|clear ..."
std::string change_message(uint64_t origin, const Change& c);
bool parse_change_message(std::string_view msg, uint64_t* origin, Change* out, std::string* why);
}  // namespace store_format

class Store {
 public:
  struct Callbacks {
    // A change another Store announced.
    std::function<void(const Change&)> on_change;
    // After each (re)connect: every entry the store holds (expired ones left out).
    std::function<void(std::vector<RuntimeEntry>)> on_resync;
    // The connection state changed (for logs and metrics).
    std::function<void(bool connected)> on_state;
  };

  // Callbacks run on `loop`, never from inside start(), write() or stop(); they may call
  // write() or stop() but must not destroy the Store. Throws std::invalid_argument for a URL
  // parse_store_options would refuse.
  Store(uv_loop_t* loop, StoreOptions opts, std::shared_ptr<spdlog::logger> log, Callbacks cb);
  ~Store();  // closes both connections at once (no callback runs afterwards)

  // Connects; retries on its own until stop(). Connect timeout 2 s (DNS, TCP, AUTH, SELECT,
  // SUBSCRIBE); once up, a PING every second on the command connection, none answered in 5 s
  // counts as a lost connection. Its handles keep the loop alive until stop() (or detach()).
  void start();
  // Closes both connections, then calls `done` (from the loop). Writes not yet confirmed by
  // Redis count as write failures. Once: a second call does nothing (its `done` never runs).
  void stop(std::function<void()> done);
  // From now on the Store no longer keeps the loop alive (its timers and sockets are
  // uv_unref'd; a DNS lookup under way still counts until it ends) but goes on as before:
  // connected, reconnecting, passing changes and taking writes until stop() or its
  // destruction. For an owner that has finished its work yet lives on while the loop runs for
  // others (a draining worker). Once: later calls do nothing.
  void detach();

  // True while both connections are up and the last resync completed.
  bool connected() const;
  // Wall clock (seconds since the epoch) since when it is not connected; 0 while connected.
  int64_t disconnected_since_s() const;

  // Writes `c` (SET with EXPIREAT, DEL, or SCAN + DEL for kClear) and announces it. Returns
  // false and sets *err ("store redis://host:6379/0 disconnected since 2026-...Z") when not
  // connected: nothing is written, and the caller must not apply the change either. A write
  // that fails later is logged and counted (write_failures()).
  bool write(const Change& c, std::string* err);

  uint64_t write_failures() const;    // writes refused by Redis or lost with a connection
  uint64_t changes_received() const;  // changes of other Stores passed to on_change
  uint64_t resyncs() const;           // resyncs completed (the first one included)
  uint64_t reconnects() const;        // connection attempts after the first
  uint64_t malformed() const;         // keys, values and messages skipped as malformed
  uint64_t budget_refusals() const;   // resyncs refused for max-entries or max-bytes

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spoad::agents::ip_checker
