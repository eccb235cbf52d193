// The inside of the ip-checker's shared store (store.h), shared by its .cpp files and by
// nothing else: the Store, its state and timers, failure and backoff, stop (store.cpp); the
// connections and the callbacks of hiredis (store_connection.cpp); the resync and the
// subscription (store_sync.cpp); the writes (store_write.cpp). hiredis 0.14's async API on the
// worker's libuv loop. Everything runs on that loop's thread.
#pragma once

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include <cstdint>
#include <ctime>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agents/ip-checker/store.h"
#include "util/rate_limit.h"
#include "util/uv_handle.h"

namespace spoad::agents::ip_checker {

namespace store_detail {

inline constexpr uint64_t kConnectTimeoutMs = 2000;  // DNS + TCP + AUTH + SELECT + SUBSCRIBE
inline constexpr uint64_t kBackoffFirstMs = 100;
inline constexpr uint64_t kBackoffMaxMs = 5000;
inline constexpr uint64_t kPingEveryMs = 1000;
inline constexpr uint64_t kPingTimeoutMs = 5000;
inline constexpr const char* kScanCount = "1000";   // keys asked per SCAN (and so per MGET)
inline constexpr size_t kMaxPendingWrites = 10000;  // writes sent or queued, not yet confirmed

// A Store's view of its URL (store_options.cpp).
struct Url {
  std::string host;  // a name, an IPv4 address, or an IPv6 address (no brackets)
  bool v6 = false;
  int port = 6379;
  int64_t db = 0;
  std::string user, password;  // decoded; password "" = no AUTH
};
// Parses redis://[user:password@]host[:port][/db] as parse_store_options documents it; false
// with *why (one line) otherwise.
bool parse_url(std::string_view url, Url* u, std::string* why);
// "redis://host:port/db", without the password (for logs and errors).
std::string shown_url(const Url& u);

// A decimal number without sign or leading zeros, at most `max` (store_format.cpp).
bool parse_dec(std::string_view s, uint64_t max, uint64_t* out);

// Seconds since the epoch, by the wall clock.
inline int64_t now_s() {
  return static_cast<int64_t>(::time(nullptr));
}

// `s` with glob characters escaped for SCAN MATCH.
inline std::string glob_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// The bytes of a string, status or error reply.
inline std::string_view reply_text(const redisReply* r) {
  if (r->str == nullptr) return {};
  return std::string_view(r->str, r->len);
}

}  // namespace store_detail

struct Store::Impl {
  enum class State { kIdle, kConnecting, kSyncing, kUp, kBackoff, kStopped };
  enum class Op : uint8_t { kAuth, kSelect, kReady, kPing, kScan, kMget, kExec, kClearScan };

  struct Conn {
    Impl* impl;
    bool sub;
    redisAsyncContext* ac = nullptr;  // ours while set; ac->data == this
    bool ready = false;               // command: AUTH, SELECT, PING answered; sub: subscribed
  };
  struct Pending {
    Op op;
    std::vector<std::string> keys;  // kMget: the keys asked, in order
  };
  // The timers, on the heap: a timer closed after the Store died must not touch it.
  using Timers = util::UvHandles<Impl>;
  using TimerBox = Timers::Box;
  struct Resolve {
    uv_getaddrinfo_t req;
    Impl* impl;  // nullptr once cancelled
  };
  struct Resync {
    std::vector<RuntimeEntry> entries;
    std::vector<Change> buffered;  // announced meanwhile, applied after
    uint64_t bytes = 0;
    uint32_t mgets = 0;  // MGETs sent, not answered
    bool scan_done = false;
    uint64_t started_ms = 0;
  };

  uv_loop_t* loop;
  StoreOptions opts;
  store_detail::Url url;
  std::string shown;         // redis://host:port/db (no password)
  std::string channel;       // P changes
  std::string entry_head;    // P entry:
  std::string scan_pattern;  // glob-escaped P entry:*
  std::shared_ptr<spdlog::logger> log;
  Callbacks cb;
  uint64_t origin;

  Conn cmd{this, false};
  Conn sub{this, true};
  Timers timers{this, &Impl::on_timer_closed};
  TimerBox* phase_timer = nullptr;  // connect timeout, retry, deferred failure
  TimerBox* ping_timer = nullptr;
  Resolve* resolve = nullptr;
  State state = State::kIdle;
  bool up = false;  // connected(): both connections and the last resync done
  int64_t down_since_s;
  uint64_t backoff_ms = store_detail::kBackoffFirstMs;
  std::string deferred_failure;  // fail() from the phase timer (not inside write())
  bool ping_out = false;
  uint64_t ping_sent_ms = 0;
  Resync rs;
  // Writes: sent (EXEC or a clear's final PUBLISH not answered) and queued behind a clear.
  size_t in_flight = 0;
  bool clearing = false;
  Change clear_change;
  std::deque<Change> queued;
  bool stopping = false;  // stop() or the destructor runs
  bool detached = false;  // detach(): our handles do not keep the loop alive
  std::function<void()> stop_done;

  uint64_t write_failures = 0, changes_received = 0, resyncs = 0, reconnects = 0, malformed = 0,
           budget_refusals = 0;
  util::RateLimiter state_log{2};
  std::string last_why;  // the last failure logged at warn, and when (uv_now)
  uint64_t last_why_ms = 0;
  util::RateLimiter bad_log{5};

  // Throws std::invalid_argument for a URL parse_url refuses.
  Impl(uv_loop_t* l, StoreOptions o, std::shared_ptr<spdlog::logger> lg, Callbacks c);
  ~Impl();

  // -- logging (store.cpp) --

  void log_state(spdlog::level::level_enum lvl, const std::string& msg);
  void skip_malformed(const char* what, std::string_view where, std::string_view bytes,
                      const std::string& why);
  // Runs a user callback; an exception is logged, never passed to hiredis or libuv.
  template <typename F>
  void safe(const char* name, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      log->error("store {}: {} callback failed: {}", shown, name, e.what());
    } catch (...) {
      log->error("store {}: {} callback failed", shown, name);
    }
  }

  // -- the timers: connect timeout and backoff, PING (store.cpp) --

  TimerBox* new_timer();
  static void on_phase_timer(uv_timer_t* h);
  static void on_ping_timer(uv_timer_t* h);
  void on_timer_closed(TimerBox* t);

  // -- the connections (store_connection.cpp) --

  void start();
  void attempt();
  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res);
  void connect(const std::string& ip);
  // Sends one command; its reply goes to on_reply with a Pending of `op`.
  bool send(Conn& c, Op op, const std::vector<std::string>& args,
            std::vector<std::string> keys = {});
  // Sends one command whose reply nobody reads (inside MULTI).
  bool send_plain(const std::vector<std::string>& args);
  static void on_connect(const redisAsyncContext* ac, int status);
  static void on_disconnect(const redisAsyncContext* ac, int);
  static void on_reply(redisAsyncContext* ac, void* r, void* privdata);
  static void on_sub_reply(redisAsyncContext* ac, void* r, void*);
  void handle_reply(Conn& c, Pending& p, redisReply* r);
  // Frees both contexts and forgets the session's work. No user callback runs.
  void teardown_session();
  // uv_unref()s the poll handle of `ac` (hiredis' libuv adapter) when detached.
  void unref_conn(redisAsyncContext* ac);

  // -- failure and backoff, stop (store.cpp) --

  // The session failed: close it, retry after the backoff. Runs user callbacks (on_state) only
  // when called from a hiredis or libuv callback (write() uses fail_later).
  void fail(std::string why);
  void fail_later(std::string why);
  void stop(std::function<void()> done);
  void detach();

  // -- resync (SCAN + MGET) and the subscription (store_sync.cpp) --

  // Starts a resync once both connections are ready.
  void resync_if_ready();
  bool over_budget(uint64_t more_entries, uint64_t more_bytes);
  // [cursor, [key...]], checked.
  static bool scan_reply(redisReply* r, std::string_view* cursor);
  void on_scan(redisReply* r);
  void on_mget(Pending& p, redisReply* r);
  // Ends the resync once the SCAN is done and every MGET answered.
  void finish_resync_if_complete();
  void handle_sub(redisReply* r);

  // -- writes (store_write.cpp) --

  std::string down_text() const;
  bool write(const Change& c, std::string* err);
  bool issue(const Change& c);
  void write_failed(const std::string& why);
  void on_exec(redisReply* r);
  void on_clear_scan(redisReply* r);
};

}  // namespace spoad::agents::ip_checker
