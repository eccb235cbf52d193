#include "agents/ip-checker/ip_checker.h"

#include <algorithm>
#include <optional>

#include "spop/reader.h"
#include "util/clock.h"
#include "util/escape.h"
#include "util/log.h"
#include "util/text.h"

namespace spoad::agents::ip_checker {

namespace {

// Lists with a series of their own (list="<name>"); the others share list="(other)", which
// no list name can be (valid_list_name), so that a worker's arena (metrics/arena.h) stays
// bounded whatever the configuration.
constexpr size_t kMaxListSeries = 64;
constexpr std::string_view kOtherList = "(other)";

// The address held by `v`, or false with *why.
bool address_of(const spop::Value& v, Address* a, std::string* why) {
  switch (v.type) {
    case spop::DataType::kIpv4:
      if (v.bytes.size() != 4) break;
      *a = address_from_v4_bytes(v.bytes.data());
      return true;
    case spop::DataType::kIpv6:
      if (v.bytes.size() != 16) break;
      *a = address_from_v6_bytes(v.bytes.data());
      return true;
    case spop::DataType::kString:
      if (parse_address(util::trim(v.bytes, util::kWhitespace), a)) return true;
      *why = "\"" + util::printable(v.bytes, 64) + "\" is not an IP address";
      return false;
    case spop::DataType::kNull:
      *why = "no value (null: the sample was missing)";
      return false;
    default:
      break;
  }
  *why = std::string("type ") + spop::type_name(v.type) +
         " is not an address (expected ipv4, ipv6 or str)";
  return false;
}

std::vector<ListInfo> list_infos(const std::vector<ListConfig>& lists) {
  std::vector<ListInfo> out;
  out.reserve(lists.size());
  for (const ListConfig& l : lists)
    out.push_back(l.info);
  return out;
}

}  // namespace

void IpCheckerAgent::register_metrics() {
  const metrics::Scope& m = ctx_.metrics;
  constexpr std::string_view kDecisions =
      "Addresses looked up, by decision: allowed (an allow list contains it), blocked "
      "(ip_score >= block-threshold), denied (a deny list contains it, below the threshold), "
      "unknown (no list contains it)";
  allowed_ = m.counter("spoad_ip_checker_decisions_total", kDecisions, {{"decision", "allowed"}});
  blocked_ = m.counter("spoad_ip_checker_decisions_total", kDecisions, {{"decision", "blocked"}});
  scored_ = m.counter("spoad_ip_checker_decisions_total", kDecisions, {{"decision", "denied"}});
  no_match_ = m.counter("spoad_ip_checker_decisions_total", kDecisions, {{"decision", "unknown"}});
  bad_argument_ = m.counter("spoad_ip_checker_bad_arguments_total",
                            "Messages whose address argument was missing or not an address");
  reloads_ok_ = m.counter("spoad_ip_checker_list_reloads_total",
                          "List files reloaded (one per list and reload)");
  reloads_failed_ = m.counter("spoad_ip_checker_list_reload_failures_total",
                              "List files that failed to reload and kept their entries");
  runtime_entries_ =
      m.gauge("spoad_ip_checker_runtime_entries", "Runtime entries (CLI, store) held, all lists",
              {}, metrics::Unit::kNone, metrics::Merge::kMax);
  constexpr std::string_view kChanges =
      "Changes to the runtime entries, by operation: add, del and clear (one per command or "
      "store change applied), expire (one per entry)";
  changes_add_ = m.counter("spoad_ip_checker_runtime_changes_total", kChanges, {{"op", "add"}});
  changes_del_ = m.counter("spoad_ip_checker_runtime_changes_total", kChanges, {{"op", "del"}});
  changes_clear_ = m.counter("spoad_ip_checker_runtime_changes_total", kChanges, {{"op", "clear"}});
  changes_expire_ =
      m.counter("spoad_ip_checker_runtime_changes_total", kChanges, {{"op", "expire"}});
  runtime_refused_ = m.counter("spoad_ip_checker_runtime_refused_total",
                               "Runtime entries refused: max-runtime-entries reached");
  if (!opts_.store.url.empty()) {
    store_connected_ = m.gauge("spoad_ip_checker_store_connected",
                               "Workers connected to the shared store (1 per connected worker)");
    store_disconnected_since_ = m.gauge(
        "spoad_ip_checker_store_disconnected_since_seconds",
        "Unix time since when the shared store is disconnected, the latest among workers; 0 "
        "while connected",
        {}, metrics::Unit::kNone, metrics::Merge::kMax);
    store_resyncs_ = m.counter("spoad_ip_checker_store_resyncs_total",
                               "Full reads of the shared store, after each (re)connection");
    store_reconnects_ =
        m.counter("spoad_ip_checker_store_reconnects_total",
                  "Connection attempts to the shared store after a lost or failed one");
    store_write_failures_ = m.counter("spoad_ip_checker_store_write_failures_total",
                                      "Writes to the shared store that failed after being sent");
    store_received_ = m.counter("spoad_ip_checker_store_changes_received_total",
                                "Changes announced by other instances through the shared store");
    store_malformed_ = m.counter(
        "spoad_ip_checker_store_malformed_total",
        "Keys, values and announcements read from the shared store that do not parse (skipped)");
    store_budget_refusals_ =
        m.counter("spoad_ip_checker_store_budget_refusals_total",
                  "Resyncs refused for holding more than store.max-entries or store.max-bytes");
    store_refused_writes_ =
        m.counter("spoad_ip_checker_store_writes_refused_total",
                  "CLI changes refused because the shared store was disconnected");
  }
  constexpr std::string_view kMatches = "Addresses decided by a list, by the list that decided";
  constexpr std::string_view kEntries = "Entries (addresses and CIDRs) loaded, by list";
  list_matches_.reserve(lists_.size());
  list_entries_.reserve(std::min(lists_.size(), kMaxListSeries));
  metrics::Counter other_matches;
  if (lists_.size() > kMaxListSeries) {
    other_matches = m.counter("spoad_ip_checker_matches_total", kMatches, {{"list", kOtherList}});
    other_entries_ = m.gauge("spoad_ip_checker_list_entries", kEntries, {{"list", kOtherList}},
                             metrics::Unit::kNone, metrics::Merge::kMax);
  }
  for (size_t i = 0; i < lists_.size(); ++i) {
    if (i >= kMaxListSeries) {
      list_matches_.push_back(other_matches);
      continue;
    }
    const std::string& name = lists_[i].cfg.info.name;
    list_matches_.push_back(
        m.counter("spoad_ip_checker_matches_total", kMatches, {{"list", name}}));
    list_entries_.push_back(m.gauge("spoad_ip_checker_list_entries", kEntries, {{"list", name}},
                                    metrics::Unit::kNone, metrics::Merge::kMax));
  }
}

void IpCheckerAgent::update_entry_gauges() {
  uint64_t other = 0;
  for (size_t i = 0; i < lists_.size(); ++i) {
    const uint64_t n = lists_[i].data ? lists_[i].data->prefixes.size() : 0;
    if (i < list_entries_.size())
      list_entries_[i] = n;
    else
      other += n;
  }
  if (lists_.size() > list_entries_.size()) other_entries_ = other;
}

// ---- the agent --------------------------------------------------------------------------

IpCheckerAgent::IpCheckerAgent(const agent::Context& ctx, const IpCheckerOptions& opts)
    : ctx_(ctx),
      opts_(opts),
      runtime_(list_infos(opts.lists), opts.max_runtime_entries),
      overlay_(std::make_shared<const Overlay>()) {
  if (!ctx_.log) ctx_.log = util::make_logger(ctx_.name.empty() ? "ip-checker" : ctx_.name);
  const int64_t now = util::wall_ms();
  lists_.reserve(opts_.lists.size());
  for (const ListConfig& lc : opts_.lists) {
    ListState st;
    st.cfg = lc;
    if (lc.file.empty()) {
      st.data = lc.inline_entries ? lc.inline_entries : std::make_shared<const ParsedList>();
      st.loaded_at_ms = now;
    }
    lists_.push_back(std::move(st));
  }
  register_metrics();
  load_lists();
}

IpCheckerAgent::~IpCheckerAgent() {
  // Normally stop() closed everything. Otherwise handles_' destructor closes what is left; the
  // close callbacks still to come only free their memory.
  detach_reload();
}

uint64_t IpCheckerAgent::now_ms() const {
  return ctx_.loop ? uv_now(ctx_.loop) : util::monotonic_ms();
}

void IpCheckerAgent::warn_bad_argument(const std::string& what) {
  if (!log_limiter_.allow(now_ms())) return;
  if (const uint64_t n = log_limiter_.take_suppressed(); n > 0)
    ctx_.log->warn("{} similar messages suppressed", n);
  ctx_.log->warn("message \"{}\": {}: no score set", util::printable(opts_.message), what);
}

void IpCheckerAgent::on_message(const spop::Message& msg, agent::Reply& reply) {
  if (msg.name != opts_.message) {
    ++ignored_;
    return;
  }
  std::optional<spop::KV> arg = spop::find_arg(msg, opts_.argument);
  if (!arg) arg = spop::arg_at(msg, 0);
  Address a;
  std::string why;
  if (!arg) {
    ++bad_argument_;
    warn_bad_argument("no argument \"" + util::printable(opts_.argument) +
                      "\" and no other argument");
    return;
  }
  if (!address_of(arg->value, &a, &why)) {
    ++bad_argument_;
    warn_bad_argument("argument \"" + util::printable(arg->name, 64) + "\": " + why);
    return;
  }
  ++checks_;
  // The expiry timer may not have run yet in this loop turn: a request never sees an entry
  // past its expiry (one compare of the loop's cached time).
  if (now_ms() >= expiry_due_ms_) expire_due();
  const Verdict v = overlay_->lookup(matcher_->lookup(a), a);
  const bool blocked = !v.allowed && v.score >= opts_.block_threshold;
  if (v.allowed)
    ++allowed_;
  else if (blocked)
    ++blocked_;
  else if (v.denied)
    ++scored_;
  else
    ++no_match_;
  if (v.list >= 0 && static_cast<size_t>(v.list) < list_matches_.size()) ++list_matches_[v.list];
  reply.set_var(spop::Scope::kSession, "ip_score", spop::Value::Int32(v.score));
  reply.set_var(spop::Scope::kTransaction, "blocked", spop::Value::Bool(blocked));
  if (v.list >= 0)
    reply.set_var(spop::Scope::kTransaction, "list",
                  spop::Value::String(matcher_->list_name(v.list)));
}

IpCheckerAgent::HandleBox* IpCheckerAgent::new_timer() {
  HandleBox* b = handles_.make();
  uv_timer_init(ctx_.loop, &b->u.timer);  // cannot fail
  return b;
}

void IpCheckerAgent::start() {
  if (!ctx_.loop || stopping_ || expiry_timer_) return;
  expiry_timer_ = new_timer();
  rebuild_timer_ = new_timer();
  pool_timer_ = new_timer();
  arm_expiry();
  if (!opts_.store.url.empty()) {
    Store::Callbacks cb;
    cb.on_change = [this](const Change& c) { on_store_change(c); };
    cb.on_resync = [this](std::vector<RuntimeEntry> e) { on_store_resync(std::move(e)); };
    cb.on_state = [this](bool connected) { on_store_state(connected); };
    store_ = std::make_unique<Store>(ctx_.loop, opts_.store, ctx_.log, std::move(cb));
    store_->start();
    store_tick_ = new_timer();
    uv_timer_start(&store_tick_->u.timer, on_store_tick, 1000, 1000);
    sync_store_metrics();
  }
  if (opts_.watch) start_watchers();
}
void IpCheckerAgent::stop(std::function<void()> done) {
  stopping_ = true;
  stop_done_ = std::move(done);
  timer_armed_ = false;
  if (rebuild_pending_) rebuild_overlay();  // store changes received: in force while draining
  handles_.close_all();
  // The store stays connected until the agent is destroyed: the worker may serve other agents
  // for a while yet, and pool-wide commands and other instances' changes still reach it. It no
  // longer keeps the loop alive, so that the worker's loop can end.
  if (store_) store_->detach();
  finish_stop_if_idle();
}

void IpCheckerAgent::on_handle_closed(HandleBox* b) {
  for (HandleBox** p : {&timer_, &expiry_timer_, &rebuild_timer_, &pool_timer_, &store_tick_})
    if (*p == b) *p = nullptr;
  finish_stop_if_idle();
}

void IpCheckerAgent::finish_stop_if_idle() {
  if (!stop_done_ || !handles_.empty() || job_) return;
  auto cb = std::move(stop_done_);
  stop_done_ = nullptr;
  cb();
}

// ---- stats and CLI ----------------------------------------------------------------------

void IpCheckerAgent::stats(nlohmann::json& out) const {
  const IpCheckerAgent& s = *this;
  SPOAD_IP_CHECKER_COUNTERS(SPOAD_JSON_PUT_AS)
  list_stats(out);
  runtime_stats(out);
}

}  // namespace spoad::agents::ip_checker
