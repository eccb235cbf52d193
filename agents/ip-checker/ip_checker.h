// ip-checker: allow/deny decisions and a reputation score for a client address, from allow
// and deny lists of IPv4/IPv6 addresses and CIDRs (inline or in files that reload when they
// change). Compatible with haproxy/spoa-example's SPOE configuration: message
// "check-client-ip" with argument "ip", answer in sess.<prefix>.ip_score. Options and
// variables are documented in agents/ip-checker/README.md.
//
// For each message `message` (others are ignored), the address is the argument `argument`
// (else the first argument), of SPOP type IPV4 or IPV6, or a STRING holding an address.
// The ACK then sets:
//   sess.<prefix>.ip_score  int   highest score of the deny lists that match, 0 if none
//                                 matches or an allow list matches
//   txn.<prefix>.blocked    bool  not allowed and ip_score >= block-threshold
//   txn.<prefix>.list       str   the list that decided (the allow list, or the deny list
//                                 that gave the score); not set when no list matches
// A missing or unparsable address sets nothing (the ACK is empty), is counted and logged.
//
// Lists are loaded at create() (errors are fatal), then reloaded on reload() and, if `watch`
// is on, when their files change (their directories are watched, so files replaced by rename
// are seen). Reloads parse and build on the libuv thread pool and swap the new matcher in on
// the loop thread; a list that fails to reload keeps its previous entries.
//
// Runtime entries (runtime_entries.h) are added to the configured lists on the CLI (commands.h)
// or by the shared store (store.h). They are looked up in a second Matcher, the overlay,
// rebuilt on the loop thread after each change (at once for the CLI, once per loop turn for
// store changes) and combined with the lists' verdict (Overlay::lookup). They expire at their
// wall-clock second: a timer armed for the next expiry removes them and rebuilds the overlay,
// and a request that arrives first runs the expiry itself. They are the agent's pool state
// (agent.h), so a new worker of the pool starts with them.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/registry.h"
#include "agents/ip-checker/lists.h"
#include "agents/ip-checker/matcher.h"
#include "agents/ip-checker/runtime_entries.h"
#include "agents/ip-checker/store.h"
#include "metrics/arena.h"
#include "metrics/counter_list.h"
#include "util/rate_limit.h"
#include "util/uv_handle.h"

namespace spoad::agents::ip_checker {

// One configured list.
struct ListConfig {
  ListInfo info;     // name, allow or deny, score
  std::string file;  // the list file (relative paths already resolved); "" for inline entries
  // The `entries` key's prefixes; null when the list has neither `file` nor `entries` (a list
  // for runtime entries only).
  std::shared_ptr<const ParsedList> inline_entries;
};

struct IpCheckerOptions : agent::AgentOptions {
  std::string message = "check-client-ip";  // the SPOE message to answer
  std::string argument = "ip";              // the argument holding the address
  int block_threshold = 50;                 // blocked = !allowed && ip_score >= this (0-100)
  bool watch = true;                        // reload list files when they change on disk
  uint64_t watch_delay_ms = 200;            // quiet time after a change before reloading
  std::vector<ListConfig> lists;            // allow lists, then deny lists, as configured
  size_t max_runtime_entries = 1'000'000;   // runtime entries held at most (all lists)
  StoreOptions store;                       // the shared store; url "" for none
};

// The agent's counters, each declared once with its key in `show stat json`
// (metrics/counter_list.h): X(member, type, key). The metrics:: handles are also Prometheus
// series of the worker's arena (README.md, "Metrics"), registered in the constructor.
#define SPOAD_IP_CHECKER_COUNTERS(X)                                                         \
  X(checks_, uint64_t, "checks")                                                             \
  /* spoad_ip_checker_decisions_total{decision="allowed", "blocked", "denied", "unknown"} */ \
  X(allowed_, metrics::Counter, "allowed")                                                   \
  X(blocked_, metrics::Counter, "blocked")                                                   \
  X(scored_, metrics::Counter, "scored")                                                     \
  X(no_match_, metrics::Counter, "no_match")                                                 \
  X(bad_argument_, metrics::Counter, "bad_argument") /* ..._bad_arguments_total */           \
  X(ignored_, uint64_t, "ignored_messages")                                                  \
  X(reloads_ok_, metrics::Counter, "reloads_ok")         /* ..._list_reloads_total */        \
  X(reloads_failed_, metrics::Counter, "reloads_failed") /* ..._list_reload_failures_total */

class IpCheckerAgent : public agent::Agent {
 public:
  // Loads every list synchronously. Throws std::runtime_error ("list \"drop\": FILE:LINE:
  // malformed entry ...") when one does not load. Touches no loop (start() does).
  IpCheckerAgent(const agent::Context& ctx, const IpCheckerOptions& opts);
  ~IpCheckerAgent() override;

  void on_message(const spop::Message& msg, agent::Reply& reply) override;
  // Starts the file watchers (when `watch` is on, there is a loop and a list has a file), the
  // runtime entries' timers and the store (when configured).
  void start() override;
  // Closes the watchers and timers and waits for a running reload; then calls `done`. The
  // store stays connected (detached from the loop's liveness) until the agent is destroyed,
  // so that a draining worker still applies the pool's and other instances' changes.
  void stop(std::function<void()> done) override;
  // Re-reads every list file, on the thread pool (synchronously without a loop).
  void reload() override;
  void stats(nlohmann::json& out) const override;
  // "show lists", "show ip entries", "show ip", "add ip deny", "add ip allow", "del ip",
  // "clear ip", "show store" (commands.cpp; syntax in agents/ip-checker/README.md).
  std::vector<agent::CliCommand> cli_commands() override;
  // Every runtime entry, as RuntimeEntries::encode() writes them (comments left out past
  // 60 MiB, logged).
  std::string pool_state() const override;
  // Replaces the runtime entries with those of `bytes`, leaving out expired ones and those of
  // lists no longer configured (logged). Throws std::runtime_error when `bytes` do not decode.
  void restore_pool_state(std::string_view bytes) override;

  // The verdict for `a` with the current lists and runtime entries (counts nothing, expires
  // nothing). `runtime` (when not null) tells whether a runtime entry decided.
  Verdict check(const Address& a, bool* runtime = nullptr) const {
    return overlay_->lookup(matcher_->lookup(a), a, runtime);
  }
  // The name of the configured list a Verdict refers to ("" for -1).
  const std::string& list_name(int32_t list) const { return matcher_->list_name(list); }
  // Text of "show lists": a header line, then one line per list.
  std::string show_lists() const;
  // Text of "show ip <address>". Runs the expiry that is due first.
  std::string show_ip(const std::string& address);
  // Reload jobs completed since creation, and whether one runs now (for tests).
  uint64_t reloads_completed() const { return reloads_completed_; }
  bool reload_running() const { return job_ != nullptr; }
  // The runtime entries (for tests).
  const RuntimeEntries& runtime_entries() const { return runtime_; }
  // Replaces the wall clock (milliseconds since the epoch) that runtime entries' TTLs and
  // expiry use; for tests. Default: the system clock.
  void set_wall_clock(std::function<int64_t()> wall_ms) { wall_clock_ = std::move(wall_ms); }
  // Removes the runtime entries whose expiry is due by the wall clock, as the expiry timer
  // does; for tests.
  void expire_now() { expire_due(); }

 private:
  struct ListState {
    ListConfig cfg;
    std::shared_ptr<const ParsedList> data;  // the entries in use
    FileSig sig;                             // of the file at the last load attempt
    int64_t loaded_at_ms = 0;                // wall clock of the last successful load
    std::string error;                       // why the last attempt failed; "" if it did not
    uint64_t reloads_ok = 0;
    uint64_t reloads_failed = 0;
  };
  struct Job;
  // What a file watcher watches (empty for the timers).
  struct Watched {
    std::string dir;                 // the watched directory
    std::vector<std::string> names;  // the list files' names in `dir`
    bool any_event = false;          // a list file is a symlink: every event may change it
  };
  // The agent's libuv handles (file watchers, timers), on the heap: a handle closed after the
  // agent died must not touch it.
  using Handles = util::UvHandles<IpCheckerAgent, Watched>;
  using HandleBox = Handles::Box;

  // List files (ip_checker_lists.cpp).
  void load_lists();     // the constructor's load, synchronous; throws as the constructor
  void detach_reload();  // the destructor: a running reload job forgets the agent
  void list_stats(nlohmann::json& out) const;
  static void load(Job& job);  // runs on the thread pool (or inline)
  static void on_work(uv_work_t* req);
  static void on_work_done(uv_work_t* req, int status);
  static void on_fs_event(uv_fs_event_t* h, const char* filename, int events, int status);
  static void on_timer(uv_timer_t* t);
  static void on_expiry_timer(uv_timer_t* t);
  static void on_rebuild_timer(uv_timer_t* t);
  static void on_pool_timer(uv_timer_t* t);
  static void on_store_tick(uv_timer_t* t);
  void on_handle_closed(HandleBox* b);

  std::unique_ptr<Job> make_job(bool force) const;
  void apply(Job& job, bool startup);
  void start_reload(bool force);
  void start_watchers();
  void file_changed();
  // Calls stop()'s `done` once every handle is closed and no reload runs.
  void finish_stop_if_idle();
  uint64_t now_ms() const;
  void warn_bad_argument(const std::string& what);
  void register_metrics();
  void update_entry_gauges();

  // Runtime entries (ip_checker_runtime.cpp).
  void runtime_stats(nlohmann::json& out) const;
  HandleBox* new_timer();
  int64_t clock_ms() const;  // the wall clock of runtime entries (set_wall_clock)
  // Applies a change typed on the CLI: written to the store first (when there is one), then
  // applied, the overlay rebuilt and the pool told. Throws agent::CommandError when the
  // change is refused (budget, store disconnected); *removed as RuntimeEntries::apply().
  void commit(const Change& c, size_t* removed = nullptr);
  // Writes `c` to the store (store_ must be set); throws agent::CommandError with the store's
  // error when it is refused (not connected).
  void commit_to_store(const Change& c);
  void count_change(Change::Kind kind, size_t n);
  void rebuild_overlay();
  void schedule_rebuild();
  void arm_expiry();
  void expire_due();
  void notify_pool();
  void schedule_pool_notify();
  void on_store_change(const Change& c);
  void on_store_resync(std::vector<RuntimeEntry> entries);
  void on_store_state(bool connected);
  void sync_store_metrics();
  void warn_runtime(const std::string& what);

  // CLI (commands.cpp).
  std::string cmd_add(const std::vector<std::string>& args, bool allow);
  std::string cmd_del(const std::vector<std::string>& args);
  std::string cmd_clear(const std::vector<std::string>& args);
  std::string cmd_show_entries(const std::vector<std::string>& args) const;
  std::string cmd_show_store() const;
  // The index of list `name`; throws agent::CommandError when there is none, or when `allow`
  // is set and the list is of the other kind.
  int32_t find_list(const std::string& name, std::optional<bool> allow) const;

  agent::Context ctx_;
  IpCheckerOptions opts_;
  std::vector<ListState> lists_;
  std::shared_ptr<const Matcher> matcher_;

  Handles handles_{this, &IpCheckerAgent::on_handle_closed};  // open or closing ones
  HandleBox* timer_ = nullptr;
  bool timer_armed_ = false;
  uint64_t first_change_ms_ = 0;  // loop time of the first change not yet reloaded
  Job* job_ = nullptr;            // the reload running on the thread pool
  bool pending_ = false;          // a change arrived while job_ ran
  bool pending_force_ = false;    // reload() was called while job_ ran
  bool stopping_ = false;
  std::function<void()> stop_done_;
  util::RateLimiter log_limiter_{10};

  // Counters (see SPOAD_IP_CHECKER_COUNTERS above).
  SPOAD_IP_CHECKER_COUNTERS(SPOAD_JSON_FIELD_AS)
  // Per list (index as in lists_): the list that decided, and entries loaded. The first
  // kMaxListSeries lists have their own series; the others share list="(other)".
  std::vector<metrics::Counter> list_matches_;
  std::vector<metrics::Gauge> list_entries_;
  metrics::Gauge other_entries_;
  uint64_t reloads_completed_ = 0;
  int64_t last_reload_ms_ = 0;  // wall clock of the last completed reload (0: none yet)

  // Runtime entries.
  RuntimeEntries runtime_;
  std::shared_ptr<const Overlay> overlay_;
  std::function<int64_t()> wall_clock_;   // set_wall_clock(); empty: the system clock
  uint64_t expiry_due_ms_ = UINT64_MAX;   // loop time (now_ms()) of the next expiry
  HandleBox* expiry_timer_ = nullptr;     // armed for the next expiry
  HandleBox* rebuild_timer_ = nullptr;    // coalesces store changes into one rebuild
  HandleBox* pool_timer_ = nullptr;       // store changes: pool state at most once a second
  bool rebuild_pending_ = false;          // rebuild_timer_ is armed
  double last_rebuild_ms_ = 0;            // duration of the last overlay build
  uint64_t last_rebuild_end_ms_ = 0;      // loop time it ended
  bool pool_dirty_ = false;               // the pool has not been told of a change
  uint64_t last_pool_notify_ms_ = 0;      // loop time the pool was last told
  util::RateLimiter runtime_limiter_{5};  // budget and store warnings
  metrics::Gauge runtime_entries_;        // spoad_ip_checker_runtime_entries
  metrics::Counter changes_add_, changes_del_, changes_clear_, changes_expire_;
  metrics::Counter runtime_refused_;  // spoad_ip_checker_runtime_refused_total
  uint64_t store_ignored_ = 0;        // store changes refused by RuntimeEntries
  int64_t last_change_ms_ = 0;        // wall clock of the last change (0: none)

  // The shared store (when `store.url` is set and there is a loop).
  std::unique_ptr<Store> store_;
  HandleBox* store_tick_ = nullptr;          // copies the store's counters to metrics, 1 s
  metrics::Gauge store_connected_;           // spoad_ip_checker_store_connected
  metrics::Gauge store_disconnected_since_;  // ..._store_disconnected_since_seconds
  metrics::Counter store_resyncs_, store_reconnects_, store_write_failures_, store_received_;
  metrics::Counter store_malformed_, store_budget_refusals_;
  metrics::Counter store_refused_writes_;  // CLI changes refused: store disconnected
};

}  // namespace spoad::agents::ip_checker
