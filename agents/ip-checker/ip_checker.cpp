#include "agents/ip-checker/ip_checker.h"

#include <sys/stat.h>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>

#include "agents/ip-checker/commands.h"
#include "spop/reader.h"
#include "util/clock.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::agents::ip_checker {

namespace {

constexpr size_t kMaxLists = 65534;  // Matcher::build's limit
// max-runtime-entries at most: the pool state (31 bytes per entry without comments) must fit
// in one channel message (64 MiB, supervisor/messages.h).
constexpr int64_t kMaxRuntime = 2'000'000;

// Lists with a series of their own (list="<name>"); the others share list="(other)", which
// no list name can be (valid_list_name), so that a worker's arena (metrics/arena.h) stays
// bounded whatever the configuration.
constexpr size_t kMaxListSeries = 64;
constexpr std::string_view kOtherList = "(other)";

bool valid_list_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n\v\f";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

// A relative list path is relative to the directory of the configuration file.
std::string resolve_path(const std::string& config_file, const std::string& file) {
  std::filesystem::path p(file);
  if (p.is_absolute()) return file;
  const std::filesystem::path base = std::filesystem::path(config_file).parent_path();
  if (base.empty()) return file;
  return (base / p).lexically_normal().string();
}

ListConfig parse_list(config::Options& item, bool allow, std::set<std::string>* names) {
  ListConfig lc;
  auto name = item.str("name");
  if (!name) item.fail("", "missing key \"name\"");
  if (!valid_list_name(*name)) item.fail("name", "use 1-64 characters among A-Z a-z 0-9 _ - .");
  if (!names->insert(*name).second) item.fail("name", "duplicate list name \"" + *name + "\"");
  lc.info.name = *name;
  lc.info.allow = allow;
  if (!allow) {
    if (!item.has("score")) item.fail("", "missing key \"score\" (0-100)");
    lc.info.score = static_cast<uint8_t>(item.integer("score", 0, 0, 100));
  }
  const bool has_file = item.has("file");
  const bool has_entries = item.has("entries");
  if (has_file && has_entries) item.fail("", "use either \"file\" or \"entries\", not both");
  // Neither: a list for runtime entries only (inline_entries stays null).
  if (has_file) {
    const std::string f = item.str("file", "");
    if (f.empty()) item.fail("file", "empty path");
    lc.file = resolve_path(item.file(), f);
    struct stat st;
    if (::stat(lc.file.c_str(), &st) != 0 || ::access(lc.file.c_str(), R_OK) != 0)
      item.fail("file",
                "cannot read \"" + util::printable(lc.file, 4096) + "\": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode))
      item.fail("file", "\"" + util::printable(lc.file, 4096) + "\" is a directory");
  } else if (has_entries) {
    auto pl = std::make_shared<ParsedList>();
    const std::vector<std::string> entries = item.str_list("entries");
    for (size_t i = 0; i < entries.size(); ++i) {
      const char* why = "";
      if (!add_entry(trim(entries[i]), pl.get(), &why))
        item.fail("entries", "entry " + std::to_string(i + 1) + " \"" +
                                 util::printable(entries[i], 64) + "\": " + why);
    }
    lc.inline_entries = std::move(pl);
  }
  item.check_unknown();
  return lc;
}

std::unique_ptr<agent::AgentOptions> parse(config::Options& o) {
  auto opts = std::make_unique<IpCheckerOptions>();
  opts->message = o.str("message", opts->message);
  if (opts->message.empty()) o.fail("message", "must not be empty");
  opts->argument = o.str("argument", opts->argument);
  opts->block_threshold =
      static_cast<int>(o.integer("block-threshold", opts->block_threshold, 0, 100));
  opts->watch = o.boolean("watch", opts->watch);
  opts->watch_delay_ms = o.duration_ms("watch-delay", opts->watch_delay_ms, 0, 60'000);
  std::set<std::string> names;
  for (config::Options& item : o.map_list("allow"))
    opts->lists.push_back(parse_list(item, true, &names));
  for (config::Options& item : o.map_list("deny"))
    opts->lists.push_back(parse_list(item, false, &names));
  if (opts->lists.size() > kMaxLists)
    o.fail("deny", "too many lists (at most " + std::to_string(kMaxLists) + ")");
  opts->max_runtime_entries = static_cast<size_t>(o.integer(
      "max-runtime-entries", static_cast<int64_t>(opts->max_runtime_entries), 0, kMaxRuntime));
  opts->store = parse_store_options(o);
  return opts;
}

std::unique_ptr<agent::Agent> create(const agent::Context& ctx, const agent::AgentOptions& o) {
  return std::make_unique<IpCheckerAgent>(ctx, static_cast<const IpCheckerOptions&>(o));
}

using util::ms_since;
using util::wall_ms;

// "2024-05-01T12:00:00Z", or "-" for 0.
std::string format_time(int64_t ms) {
  return ms == 0 ? "-" : format_utc(ms / 1000);
}

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
      if (parse_address(trim(v.bytes), a)) return true;
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

#if defined(__GLIBC__)
void release_free_memory() {
  malloc_trim(0);
}
#else
void release_free_memory() {}
#endif

}  // namespace

SPOAD_REGISTER_AGENT(ip_checker, "ip-checker",
                     "allow/deny and a reputation score for a client address, from IP lists", parse,
                     create);

// ---- reload jobs ------------------------------------------------------------------------

// One load of the lists. Built on the loop thread from the current state, run by load() on
// the thread pool (or inline), applied by apply() on the loop thread. Owns copies of all it
// reads, so nothing is shared with the loop thread while it runs.
struct IpCheckerAgent::Job {
  uv_work_t req{};
  IpCheckerAgent* self = nullptr;  // nulled if the agent goes away first
  bool force = false;              // re-read every file, changed or not
  bool rebuild = false;            // build the matcher even if no list changed

  struct In {
    ListInfo info;
    std::string file;  // "" for inline lists
    std::shared_ptr<const ParsedList> data;
    FileSig sig;
  };
  struct Out {
    bool attempted = false;  // the file was read
    bool ok = false;
    std::shared_ptr<const ParsedList> data;  // when ok
    FileSig sig;
    std::string error;
    double ms = 0;
  };
  std::vector<In> in;
  std::vector<Out> out;
  std::shared_ptr<const Matcher> matcher;  // the new matcher; null if nothing changed
  double build_ms = 0;
  std::string build_error;
};

void IpCheckerAgent::load(Job& job) {
  static const ParsedList kEmpty;
  job.out.assign(job.in.size(), Job::Out{});
  bool changed = job.rebuild;
  for (size_t i = 0; i < job.in.size(); ++i) {
    const Job::In& in = job.in[i];
    Job::Out& out = job.out[i];
    if (in.file.empty()) continue;
    if (!job.force && !in.sig.racy && file_sig(in.file) == in.sig) continue;
    out.attempted = true;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      auto pl = std::make_shared<ParsedList>();
      if (load_list_file(in.file, pl.get(), &out.error, &out.sig)) {
        out.ok = true;
        out.data = std::move(pl);
        changed = true;
      }
    } catch (const std::exception& e) {
      out.error = util::printable(in.file, 4096) + ": " + util::printable(e.what());
    }
    out.ms = ms_since(t0);
  }
  if (!changed) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Matcher::Input> inputs;
  inputs.reserve(job.in.size());
  for (size_t i = 0; i < job.in.size(); ++i) {
    const ParsedList* pl = job.out[i].ok ? job.out[i].data.get() : job.in[i].data.get();
    inputs.push_back({&job.in[i].info, pl ? &pl->prefixes : &kEmpty.prefixes});
  }
  try {
    job.matcher = std::make_shared<const Matcher>(Matcher::build(inputs));
  } catch (const std::exception& e) {
    job.build_error = e.what();
  }
  job.build_ms = ms_since(t0);
}

std::unique_ptr<IpCheckerAgent::Job> IpCheckerAgent::make_job(bool force) const {
  auto job = std::make_unique<Job>();
  job->force = force;
  job->in.reserve(lists_.size());
  for (const ListState& st : lists_)
    job->in.push_back({st.cfg.info, st.cfg.file, st.data, st.sig});
  return job;
}

void IpCheckerAgent::apply(Job& job, bool startup) {
  const int64_t now = wall_ms();
  for (size_t i = 0; i < job.out.size(); ++i) {
    Job::Out& o = job.out[i];
    ListState& st = lists_[i];
    if (!o.attempted) continue;
    if (o.ok && !job.build_error.empty()) {
      // Read, but the table could not be built (out of memory): keep the old entries, and the
      // old signature so that the next change or reload reads the file again.
      o.ok = false;
      o.error = "cannot build the lookup table: " + job.build_error;
      o.sig = st.sig;
    }
    st.sig = o.sig;
    if (o.ok) {
      st.data = o.data;
      st.loaded_at_ms = now;
      st.error.clear();
      if (!startup) {
        ++st.reloads_ok;
        ++reloads_ok_;
      }
      ctx_.log->info("list {}: {} {} entries from {} in {:.0f} ms", st.cfg.info.name,
                     startup ? "loaded" : "reloaded", st.data->prefixes.size(),
                     util::printable(st.cfg.file, 4096), o.ms);
      if (st.data->masked > 0)
        ctx_.log->warn(
            "list {}: {} entries of {} had host bits set beyond their prefix length; "
            "they were cleared (10.0.0.1/8 is read as 10.0.0.0/8)",
            st.cfg.info.name, st.data->masked, util::printable(st.cfg.file, 4096));
    } else {
      st.error = o.error;
      if (!startup) {
        ++st.reloads_failed;
        ++reloads_failed_;
        ctx_.log->error("list {}: reload failed, keeping the {} entries loaded at {}: {}",
                        st.cfg.info.name, st.data ? st.data->prefixes.size() : 0,
                        format_time(st.loaded_at_ms), o.error);
      }
    }
  }
  if (job.matcher) {
    matcher_ = job.matcher;
    ctx_.log->info(
        "lookup table: {} prefixes, {} IPv4 and {} IPv6 ranges, {:.1f} MiB, built in "
        "{:.0f} ms",
        matcher_->prefixes(), matcher_->ranges_v4(), matcher_->ranges_v6(),
        static_cast<double>(matcher_->memory_bytes()) / (1 << 20), job.build_ms);
  }
  update_entry_gauges();
  if (!startup) {
    last_reload_ms_ = now;
    ++reloads_completed_;
  }
}

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
  const int64_t now = wall_ms();
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
  std::unique_ptr<Job> job = make_job(true);
  job->rebuild = true;
  load(*job);
  for (size_t i = 0; i < job->out.size(); ++i) {
    if (job->out[i].attempted && !job->out[i].ok)
      throw std::runtime_error("list \"" + lists_[i].cfg.info.name + "\": " + job->out[i].error);
  }
  if (!job->matcher) throw std::runtime_error("cannot build the lookup table: " + job->build_error);
  apply(*job, true);
  job.reset();
  release_free_memory();  // the parse and build temporaries
}

IpCheckerAgent::~IpCheckerAgent() {
  // Normally stop() closed everything. Otherwise close what is left; the callbacks that are
  // still to come find self == nullptr and only free their memory.
  for (HandleBox* b : handles_) {
    b->self = nullptr;
    if (!b->closing) {
      b->closing = true;
      uv_close(&b->u.handle, on_handle_closed);
    }
  }
  if (job_) job_->self = nullptr;
}

uint64_t IpCheckerAgent::now_ms() const {
  return ctx_.loop ? uv_now(ctx_.loop) : uv_hrtime() / 1'000'000;
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
  auto* b = new HandleBox;
  b->self = this;
  uv_timer_init(ctx_.loop, &b->u.timer);
  b->u.handle.data = b;
  handles_.push_back(b);
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
    store_stopped_ = false;
    store_->start();
    store_tick_ = new_timer();
    uv_timer_start(&store_tick_->u.timer, on_store_tick, 1000, 1000);
    sync_store_metrics();
  }
  if (opts_.watch) start_watchers();
}

void IpCheckerAgent::start_watchers() {
  // Watch the directories, not the files: editors and tools replace a file by renaming a new
  // one over it, which ends a watch on the file itself.
  std::map<std::string, std::vector<const ListState*>> dirs;
  for (const ListState& st : lists_) {
    if (st.cfg.file.empty()) continue;
    std::string dir = std::filesystem::path(st.cfg.file).parent_path().string();
    dirs[dir.empty() ? "." : dir].push_back(&st);
  }
  if (dirs.empty()) return;
  timer_ = new_timer();
  for (const auto& [dir, files] : dirs) {
    auto* b = new HandleBox;
    b->self = this;
    b->dir = dir;
    for (const ListState* st : files) {
      b->names.push_back(std::filesystem::path(st->cfg.file).filename().string());
      struct stat lst;
      if (::lstat(st->cfg.file.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) b->any_event = true;
    }
    uv_fs_event_init(ctx_.loop, &b->u.fs);
    b->u.handle.data = b;
    handles_.push_back(b);
    const int rc = uv_fs_event_start(&b->u.fs, on_fs_event, dir.c_str(), 0);
    if (rc != 0) {
      ctx_.log->error("cannot watch {}: {}; its lists reload only on a reload command",
                      util::printable(dir, 4096), uv_strerror(rc));
      b->closing = true;
      uv_close(&b->u.handle, on_handle_closed);
      continue;
    }
    ctx_.log->debug("watching {} for changes to {} list file(s)", util::printable(dir, 4096),
                    files.size());
  }
}

void IpCheckerAgent::on_fs_event(uv_fs_event_t* h, const char* filename, int events, int status) {
  (void)events;
  auto* b = static_cast<HandleBox*>(h->data);
  IpCheckerAgent* self = b->self;
  if (!self || self->stopping_) return;
  if (status < 0) {
    self->ctx_.log->warn("watching {}: {}", util::printable(b->dir, 4096), uv_strerror(status));
    return;
  }
  if (!b->any_event && filename &&
      std::find(b->names.begin(), b->names.end(), filename) == b->names.end())
    return;
  self->file_changed();
}

void IpCheckerAgent::file_changed() {
  if (!timer_ || timer_->closing) return;
  // Wait for watch-delay without events (a file is often written in several steps), but no
  // longer than max(1 s, 5 x watch-delay) after the first one.
  const uint64_t now = uv_now(ctx_.loop);
  if (!timer_armed_) {
    timer_armed_ = true;
    first_change_ms_ = now;
  }
  const uint64_t delay = opts_.watch_delay_ms;
  const uint64_t latest = first_change_ms_ + std::max<uint64_t>(1000, 5 * delay);
  const uint64_t due = std::max(now, std::min(now + delay, latest));
  uv_timer_start(&timer_->u.timer, on_timer, due - now, 0);
}

void IpCheckerAgent::on_timer(uv_timer_t* t) {
  auto* b = static_cast<HandleBox*>(t->data);
  IpCheckerAgent* self = b->self;
  if (!self) return;
  self->timer_armed_ = false;
  self->start_reload(false);
}

void IpCheckerAgent::reload() {
  start_reload(true);
}

void IpCheckerAgent::start_reload(bool force) {
  if (stopping_) return;
  if (!ctx_.loop) {
    std::unique_ptr<Job> job = make_job(force);
    load(*job);
    apply(*job, false);
    return;
  }
  if (job_) {
    (force ? pending_force_ : pending_) = true;
    return;
  }
  std::unique_ptr<Job> job = make_job(force);
  job->self = this;
  job->req.data = job.get();
  const int rc = uv_queue_work(ctx_.loop, &job->req, on_work, on_work_done);
  if (rc != 0) {
    ctx_.log->error("cannot start a reload of the lists: {}", uv_strerror(rc));
    return;
  }
  job_ = job.release();
}

void IpCheckerAgent::on_work(uv_work_t* req) {
  load(*static_cast<Job*>(req->data));
}

void IpCheckerAgent::on_work_done(uv_work_t* req, int status) {
  std::unique_ptr<Job> job(static_cast<Job*>(req->data));
  IpCheckerAgent* self = job->self;
  if (!self) return;
  self->job_ = nullptr;
  if (status == 0) self->apply(*job, false);
  job.reset();  // drops the replaced lists and matcher
  release_free_memory();
  if (self->stopping_) {
    self->maybe_stopped();
  } else if (self->pending_force_) {
    self->pending_force_ = self->pending_ = false;
    self->start_reload(true);
  } else if (self->pending_) {
    self->pending_ = false;
    self->start_reload(false);
  }
}

void IpCheckerAgent::stop(std::function<void()> done) {
  stopping_ = true;
  stop_done_ = std::move(done);
  timer_armed_ = false;
  if (rebuild_pending_) rebuild_overlay();  // store changes received: in force while draining
  const std::vector<HandleBox*> boxes = handles_;
  for (HandleBox* b : boxes) {
    if (b->closing) continue;
    b->closing = true;
    uv_close(&b->u.handle, on_handle_closed);
  }
  if (store_ && !store_stopped_) {
    store_->stop([this] {
      store_stopped_ = true;
      maybe_stopped();
    });
  }
  maybe_stopped();
}

void IpCheckerAgent::on_handle_closed(uv_handle_t* h) {
  auto* b = static_cast<HandleBox*>(h->data);
  IpCheckerAgent* self = b->self;
  if (self) {
    auto& hs = self->handles_;
    hs.erase(std::remove(hs.begin(), hs.end(), b), hs.end());
    for (HandleBox** p : {&self->timer_, &self->expiry_timer_, &self->rebuild_timer_,
                          &self->pool_timer_, &self->store_tick_})
      if (*p == b) *p = nullptr;
  }
  delete b;
  if (self) self->maybe_stopped();
}

void IpCheckerAgent::maybe_stopped() {
  if (!stop_done_ || !handles_.empty() || job_ || !store_stopped_) return;
  auto cb = std::move(stop_done_);
  stop_done_ = nullptr;
  cb();
}

// ---- stats and CLI ----------------------------------------------------------------------

void IpCheckerAgent::stats(nlohmann::json& out) const {
  out["checks"] = checks_;
  out["allowed"] = allowed_.get();
  out["blocked"] = blocked_.get();
  out["scored"] = scored_.get();
  out["no_match"] = no_match_.get();
  out["bad_argument"] = bad_argument_.get();
  out["ignored_messages"] = ignored_;
  out["reloads_ok"] = reloads_ok_.get();
  out["reloads_failed"] = reloads_failed_.get();
  out["last_reload"] = last_reload_ms_ ? nlohmann::json(format_time(last_reload_ms_)) : nullptr;
  out["reload_running"] = job_ != nullptr;
  out["prefixes"] = matcher_->prefixes();
  out["ranges_v4"] = matcher_->ranges_v4();
  out["ranges_v6"] = matcher_->ranges_v6();
  out["table_bytes"] = matcher_->memory_bytes();
  nlohmann::json lists = nlohmann::json::array();
  for (const ListState& st : lists_) {
    nlohmann::json l;
    l["name"] = st.cfg.info.name;
    l["kind"] = st.cfg.info.allow ? "allow" : "deny";
    if (!st.cfg.info.allow) l["score"] = st.cfg.info.score;
    l["entries"] = st.data ? st.data->prefixes.size() : 0;
    l["source"] = !st.cfg.file.empty()    ? util::to_utf8(st.cfg.file)
                  : st.cfg.inline_entries ? "inline"
                                          : "runtime";
    l["runtime_entries"] = runtime_.size(static_cast<int32_t>(&st - lists_.data()));
    l["loaded_at"] = format_time(st.loaded_at_ms);
    l["status"] = st.error.empty() ? "ok" : "failed";
    if (!st.error.empty()) l["error"] = st.error;
    l["reloads_ok"] = st.reloads_ok;
    l["reloads_failed"] = st.reloads_failed;
    lists.push_back(std::move(l));
  }
  out["lists"] = std::move(lists);

  runtime_stats(out);
}

}  // namespace spoad::agents::ip_checker
