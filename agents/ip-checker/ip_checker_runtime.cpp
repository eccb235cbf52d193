// IpCheckerAgent (ip_checker.h): its runtime entries. Changes from the CLI (commands.cpp)
// and from the shared store (store.h), the overlay and its rebuilds, expiry, the pool state,
// and their counters. Everything runs on the worker's loop thread.
#include <chrono>

#include "agents/ip-checker/commands.h"
#include "agents/ip-checker/ip_checker.h"
#include "util/clock.h"
#include "util/escape.h"

namespace spoad::agents::ip_checker {

namespace {

constexpr size_t kMaxPoolState = 60u << 20;  // bytes; past it comments are left out

using util::ms_since;

}  // namespace

int64_t IpCheckerAgent::clock_ms() const {
  return wall_clock_ ? wall_clock_() : util::wall_ms();
}

void IpCheckerAgent::warn_runtime(const std::string& what) {
  if (!runtime_limiter_.allow(now_ms())) return;
  if (const uint64_t n = runtime_limiter_.take_suppressed(); n > 0)
    ctx_.log->warn("{} similar messages suppressed", n);
  ctx_.log->warn("{}", what);
}

void IpCheckerAgent::count_change(Change::Kind kind, size_t n) {
  switch (kind) {
    case Change::Kind::kAdd:
      changes_add_ += n;
      break;
    case Change::Kind::kDel:
      changes_del_ += n;
      break;
    case Change::Kind::kClear:
      changes_clear_ += n;
      break;
  }
  last_change_ms_ = clock_ms();
}

void IpCheckerAgent::commit(const Change& c, size_t* removed) {
  const int64_t now_s = clock_ms() / 1000;
  const RuntimeEntries::Status st = runtime_.check(c, now_s);
  if (st == RuntimeEntries::Status::kFull) {
    ++runtime_refused_;
    const std::string why =
        runtime_.size() >= runtime_.max_entries()
            ? "too many runtime entries (max-runtime-entries: " +
                  std::to_string(runtime_.max_entries()) + ")"
            : std::string("too many distinct list and score pairs among runtime entries");
    warn_runtime("add ip " + to_string(c.entry.prefix) + " to " + c.entry.list +
                 " refused: " + why);
    throw agent::CommandError(why + "\n");
  }
  if (st != RuntimeEntries::Status::kApplied)
    throw agent::CommandError(std::string("cannot apply: ") + RuntimeEntries::status_name(st) +
                              "\n");
  if (store_) commit_to_store(c);
  runtime_.apply(c, now_s, removed);
  count_change(c.kind, 1);
  rebuild_overlay();
  notify_pool();
}

void IpCheckerAgent::commit_to_store(const Change& c) {
  std::string err;
  if (!store_->write(c, &err)) {
    ++store_refused_writes_;
    throw agent::CommandError(util::printable(err, 1024) + "\n");
  }
}

void IpCheckerAgent::rebuild_overlay() {
  if (const size_t n = runtime_.expire(clock_ms() / 1000); n > 0) {
    changes_expire_ += n;
    last_change_ms_ = clock_ms();
    ctx_.log->info("{} runtime entr{} expired", n, n == 1 ? "y" : "ies");
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    overlay_ = runtime_.build_overlay();
  } catch (const std::exception& e) {  // std::bad_alloc: the previous overlay stays
    ctx_.log->error("cannot build the lookup table of the runtime entries: {}", e.what());
  }
  last_rebuild_ms_ = ms_since(t0);
  last_rebuild_end_ms_ = now_ms();
  if (rebuild_pending_) {
    rebuild_pending_ = false;
    if (rebuild_timer_ && !rebuild_timer_->closing()) uv_timer_stop(&rebuild_timer_->u.timer);
  }
  runtime_entries_ = runtime_.size();
  arm_expiry();
}

void IpCheckerAgent::schedule_rebuild() {
  if (!rebuild_timer_ || rebuild_timer_->closing()) {
    rebuild_overlay();
    return;
  }
  if (rebuild_pending_) return;
  rebuild_pending_ = true;
  // Once per loop turn; and while a large set changes fast, at most one build per four build
  // durations (so that builds take at most a fifth of the loop), never more than 500 ms apart.
  const auto gap = static_cast<uint64_t>(std::min(500.0, 4 * last_rebuild_ms_));
  const uint64_t next = last_rebuild_end_ms_ + gap;
  const uint64_t now = now_ms();
  uv_timer_start(&rebuild_timer_->u.timer, on_rebuild_timer, next > now ? next - now : 0, 0);
}

void IpCheckerAgent::on_rebuild_timer(uv_timer_t* t) {
  HandleBox* b = HandleBox::from(t);
  if (b->live() && b->owner()->rebuild_pending_) b->owner()->rebuild_overlay();
}

void IpCheckerAgent::arm_expiry() {
  const int64_t next = runtime_.next_expiry_s();
  const bool timer = expiry_timer_ && !expiry_timer_->closing();
  if (next == 0) {
    expiry_due_ms_ = UINT64_MAX;
    if (timer) uv_timer_stop(&expiry_timer_->u.timer);
    return;
  }
  const auto delay = static_cast<uint64_t>(std::max<int64_t>(0, next * 1000 - clock_ms()));
  expiry_due_ms_ = now_ms() + delay;
  if (timer) uv_timer_start(&expiry_timer_->u.timer, on_expiry_timer, delay, 0);
}

void IpCheckerAgent::expire_due() {
  const int64_t next = runtime_.next_expiry_s();
  if (next != 0 && next * 1000 <= clock_ms())
    rebuild_overlay();
  else
    arm_expiry();  // early (clock adjusted): wait again
}

void IpCheckerAgent::on_expiry_timer(uv_timer_t* t) {
  HandleBox* b = HandleBox::from(t);
  if (b->live()) b->owner()->expire_due();
}

void IpCheckerAgent::notify_pool() {
  pool_dirty_ = false;
  last_pool_notify_ms_ = now_ms();
  if (pool_timer_ && !pool_timer_->closing()) uv_timer_stop(&pool_timer_->u.timer);
  if (ctx_.pool_state_changed) ctx_.pool_state_changed();
}

void IpCheckerAgent::schedule_pool_notify() {
  pool_dirty_ = true;
  if (!pool_timer_ || pool_timer_->closing()) return;
  if (uv_is_active(&pool_timer_->u.handle)) return;
  const uint64_t next = last_pool_notify_ms_ + 1000;
  const uint64_t now = now_ms();
  uv_timer_start(&pool_timer_->u.timer, on_pool_timer, next > now ? next - now : 0, 0);
}

void IpCheckerAgent::on_pool_timer(uv_timer_t* t) {
  HandleBox* b = HandleBox::from(t);
  if (b->live() && b->owner()->pool_dirty_) b->owner()->notify_pool();
}

std::string IpCheckerAgent::pool_state() const {
  bool dropped = false;
  std::string s = runtime_.encode(kMaxPoolState, &dropped);
  if (dropped)
    ctx_.log->warn(
        "pool state: comments of runtime entries left out ({} entries, more than {} "
        "MiB with them)",
        runtime_.size(), kMaxPoolState >> 20);
  return s;
}

void IpCheckerAgent::restore_pool_state(std::string_view bytes) {
  std::vector<RuntimeEntry> entries = RuntimeEntries::decode(bytes);
  const size_t n = entries.size();
  const RuntimeEntries::Replaced r = runtime_.replace_all(std::move(entries), clock_ms() / 1000);
  runtime_refused_ += r.over_budget;
  ctx_.log->info(
      "restored {} runtime entries of {} from the pool state ({} expired, {} of lists no "
      "longer configured, {} invalid, {} past max-runtime-entries left out)",
      r.kept, n, r.expired, r.unknown, r.invalid, r.over_budget);
  rebuild_overlay();
}

// ---- the shared store ---------------------------------------------------------------------

void IpCheckerAgent::on_store_change(const Change& c) {
  size_t removed = 0;
  const RuntimeEntries::Status st = runtime_.apply(c, clock_ms() / 1000, &removed);
  switch (st) {
    case RuntimeEntries::Status::kApplied:
      count_change(c.kind, 1);
      break;
    case RuntimeEntries::Status::kNotFound:
    case RuntimeEntries::Status::kExpired:  // removed the entry it replaced, if any
      break;
    case RuntimeEntries::Status::kFull:
      ++runtime_refused_;
      warn_runtime("store: entry " + to_string(c.entry.prefix) + " of list " +
                   util::printable(c.entry.list, 64) + " left out: max-runtime-entries (" +
                   std::to_string(runtime_.max_entries()) + ") reached");
      break;
    default:
      ++store_ignored_;
      warn_runtime("store: change to list \"" + util::printable(c.entry.list, 64) +
                   "\" ignored: " + RuntimeEntries::status_name(st));
      break;
  }
  if (st == RuntimeEntries::Status::kApplied || removed > 0) {
    schedule_rebuild();
    schedule_pool_notify();
  }
}

void IpCheckerAgent::on_store_resync(std::vector<RuntimeEntry> entries) {
  const size_t n = entries.size();
  const RuntimeEntries::Replaced r = runtime_.replace_all(std::move(entries), clock_ms() / 1000);
  runtime_refused_ += r.over_budget;
  store_ignored_ += r.unknown + r.invalid;
  last_change_ms_ = clock_ms();
  auto log = r.unknown + r.invalid + r.over_budget > 0 ? spdlog::level::warn : spdlog::level::info;
  ctx_.log->log(log,
                "store resync: {} runtime entries of {} ({} expired, {} of unknown lists or the "
                "wrong kind, {} invalid, {} past max-runtime-entries left out)",
                r.kept, n, r.expired, r.unknown, r.invalid, r.over_budget);
  schedule_rebuild();
  schedule_pool_notify();
  sync_store_metrics();
}

void IpCheckerAgent::on_store_state(bool connected) {
  (void)connected;
  sync_store_metrics();
}

void IpCheckerAgent::on_store_tick(uv_timer_t* t) {
  HandleBox* b = HandleBox::from(t);
  if (b->live()) b->owner()->sync_store_metrics();
}

void IpCheckerAgent::sync_store_metrics() {
  if (!store_) return;
  store_connected_ = store_->connected() ? 1 : 0;
  store_disconnected_since_ =
      store_->connected()
          ? 0
          : static_cast<uint64_t>(std::max<int64_t>(0, store_->disconnected_since_s()));
  auto follow = [](metrics::Counter& c, uint64_t v) {
    if (v > c.get()) c += v - c.get();
  };
  follow(store_resyncs_, store_->resyncs());
  follow(store_reconnects_, store_->reconnects());
  follow(store_write_failures_, store_->write_failures());
  follow(store_received_, store_->changes_received());
  follow(store_malformed_, store_->malformed());
  follow(store_budget_refusals_, store_->budget_refusals());
}

void IpCheckerAgent::runtime_stats(nlohmann::json& out) const {
  out["runtime_entries"] = runtime_.size();
  out["max_runtime_entries"] = runtime_.max_entries();
  out["runtime_changes"] = {{"add", changes_add_.get()},
                            {"del", changes_del_.get()},
                            {"clear", changes_clear_.get()},
                            {"expire", changes_expire_.get()}};
  out["runtime_refused"] = runtime_refused_.get();
  const int64_t next = runtime_.next_expiry_s();
  out["next_expiry"] = next ? nlohmann::json(format_utc(next)) : nullptr;
  out["last_change"] =
      last_change_ms_ ? nlohmann::json(format_utc(last_change_ms_ / 1000)) : nullptr;
  out["overlay_bytes"] = overlay_->memory_bytes();
  out["overlay_build_ms"] = last_rebuild_ms_;
  if (opts_.store.url.empty()) {
    out["store"] = nullptr;
    return;
  }
  nlohmann::json st;
  st["url"] = util::to_utf8(redact_url(opts_.store.url));
  st["key_prefix"] = util::to_utf8(opts_.store.key_prefix);
  const bool up = store_ && store_->connected();
  const int64_t since = store_ ? store_->disconnected_since_s() : 0;
  st["connected"] = up;
  st["status"] = store_status(up, since);
  st["disconnected_since"] = !up && since ? nlohmann::json(format_utc(since)) : nullptr;
  st["resyncs"] = store_ ? store_->resyncs() : 0;
  st["reconnects"] = store_ ? store_->reconnects() : 0;
  st["write_failures"] = store_ ? store_->write_failures() : 0;
  st["changes_received"] = store_ ? store_->changes_received() : 0;
  st["changes_ignored"] = store_ignored_;
  st["malformed"] = store_ ? store_->malformed() : 0;
  st["budget_refusals"] = store_ ? store_->budget_refusals() : 0;
  st["writes_refused"] = store_refused_writes_.get();
  out["store"] = std::move(st);
}

}  // namespace spoad::agents::ip_checker
