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
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/registry.h"
#include "agents/ip-checker/lists.h"
#include "agents/ip-checker/matcher.h"
#include "metrics/arena.h"
#include "util/rate_limit.h"

namespace spoad::agents::ip_checker {

// One configured list.
struct ListConfig {
  ListInfo info;     // name, allow or deny, score
  std::string file;  // the list file (relative paths already resolved); "" for inline entries
  std::shared_ptr<const ParsedList> inline_entries;  // set when `file` is ""
};

struct IpCheckerOptions : agent::AgentOptions {
  std::string message = "check-client-ip";  // the SPOE message to answer
  std::string argument = "ip";              // the argument holding the address
  int block_threshold = 50;                 // blocked = !allowed && ip_score >= this (0-100)
  bool watch = true;                        // reload list files when they change on disk
  uint64_t watch_delay_ms = 200;            // quiet time after a change before reloading
  std::vector<ListConfig> lists;            // allow lists, then deny lists, as configured
};

class IpCheckerAgent : public agent::Agent {
 public:
  // Loads every list synchronously. Throws std::runtime_error ("list \"drop\": FILE:LINE:
  // malformed entry ...") when one does not load. Touches no loop (start() does).
  IpCheckerAgent(const agent::Context& ctx, const IpCheckerOptions& opts);
  ~IpCheckerAgent() override;

  void on_message(const spop::Message& msg, agent::Reply& reply) override;
  // Starts the file watchers (when `watch` is on, there is a loop and a list has a file).
  void start() override;
  // Closes the watchers and waits for a running reload; then calls `done`.
  void stop(std::function<void()> done) override;
  // Re-reads every list file, on the thread pool (synchronously without a loop).
  void reload() override;
  void stats(nlohmann::json& out) const override;
  // "show lists" and "show ip <address>".
  std::vector<agent::CliCommand> cli_commands() override;

  // The verdict for `a` with the current lists (counts nothing).
  Verdict check(const Address& a) const { return matcher_->lookup(a); }
  // The name of the list a Verdict refers to ("" for -1).
  const std::string& list_name(int32_t list) const { return matcher_->list_name(list); }
  // Text of "show lists": a header line, then one line per list.
  std::string show_lists() const;
  // Text of "show ip <address>".
  std::string show_ip(const std::string& address) const;
  // Reload jobs completed since creation, and whether one runs now (for tests).
  uint64_t reloads_completed() const { return reloads_completed_; }
  bool reload_running() const { return job_ != nullptr; }

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
  struct HandleBox;

  static void load(Job& job);  // runs on the thread pool (or inline)
  static void on_work(uv_work_t* req);
  static void on_work_done(uv_work_t* req, int status);
  static void on_fs_event(uv_fs_event_t* h, const char* filename, int events, int status);
  static void on_timer(uv_timer_t* t);
  static void on_handle_closed(uv_handle_t* h);

  std::unique_ptr<Job> make_job(bool force) const;
  void apply(Job& job, bool startup);
  void start_reload(bool force);
  void file_changed();
  void maybe_stopped();
  uint64_t now_ms() const;
  void warn_bad_argument(const std::string& what);
  void register_metrics();
  void update_entry_gauges();

  agent::Context ctx_;
  IpCheckerOptions opts_;
  std::vector<ListState> lists_;
  std::shared_ptr<const Matcher> matcher_;

  std::vector<HandleBox*> handles_;  // open or closing watchers and the timer
  HandleBox* timer_ = nullptr;
  bool timer_armed_ = false;
  uint64_t first_change_ms_ = 0;  // loop time of the first change not yet reloaded
  Job* job_ = nullptr;            // the reload running on the thread pool
  bool pending_ = false;          // a change arrived while job_ ran
  bool pending_force_ = false;    // reload() was called while job_ ran
  bool stopping_ = false;
  std::function<void()> stop_done_;
  util::RateLimiter log_limiter_{10};

  // Counters (see stats()). The metrics:: handles are also Prometheus series of the
  // worker's arena (README.md, "Metrics"), registered in the constructor.
  uint64_t checks_ = 0;
  metrics::Counter allowed_;       // decision="allowed"
  metrics::Counter blocked_;       // decision="blocked"
  metrics::Counter scored_;        // decision="denied"
  metrics::Counter no_match_;      // decision="unknown"
  metrics::Counter bad_argument_;  // spoad_ip_checker_bad_arguments_total
  uint64_t ignored_ = 0;
  metrics::Counter reloads_ok_;      // spoad_ip_checker_list_reloads_total
  metrics::Counter reloads_failed_;  // spoad_ip_checker_list_reload_failures_total
  // Per list (index as in lists_): the list that decided, and entries loaded. The first
  // kMaxListSeries lists have their own series; the others share list="(other)".
  std::vector<metrics::Counter> list_matches_;
  std::vector<metrics::Gauge> list_entries_;
  metrics::Gauge other_entries_;
  uint64_t reloads_completed_ = 0;
  int64_t last_reload_ms_ = 0;  // wall clock of the last completed reload (0: none yet)
};

}  // namespace spoad::agents::ip_checker
