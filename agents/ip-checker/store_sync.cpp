// The ip-checker's shared store (store_impl.h): the resync after each (re)connection (SCAN
// MATCH P entry:* + MGET, within store.max-entries and store.max-bytes) and the changes other
// Stores announce on the subscribed channel.
#include <algorithm>
#include <tuple>

#include "agents/ip-checker/store_impl.h"

namespace spoad::agents::ip_checker {

using namespace store_detail;

void Store::Impl::resync_if_ready() {
  if (state != State::kConnecting || !cmd.ready || !sub.ready) return;
  uv_timer_stop(&phase_timer->u.timer);
  state = State::kSyncing;
  Resync fresh;
  std::swap(rs, fresh);
  rs.started_ms = uv_now(loop);
  uv_timer_start(&ping_timer->u.timer, &on_ping_timer, kPingEveryMs, kPingEveryMs);
  if (!send(cmd, Op::kScan, {"SCAN", "0", "MATCH", scan_pattern, "COUNT", kScanCount}))
    fail("cannot send SCAN");
}

bool Store::Impl::over_budget(uint64_t more_entries, uint64_t more_bytes) {
  const uint64_t n = rs.entries.size() + rs.buffered.size() + more_entries;
  rs.bytes += more_bytes;
  if (n <= opts.max_entries && rs.bytes <= opts.max_bytes) return false;
  ++budget_refusals;
  log->error(
      "store {}: resync refused: the store holds more than {} (store.{}); retrying with "
      "backoff",
      shown,
      n > opts.max_entries ? std::to_string(opts.max_entries) + " entries"
                           : std::to_string(opts.max_bytes) + " bytes",
      n > opts.max_entries ? "max-entries" : "max-bytes");
  backoff_ms = kBackoffMaxMs;
  fail("resync over budget");
  return true;
}

bool Store::Impl::scan_reply(redisReply* r, std::string_view* cursor) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) return false;
  if (r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY)
    return false;
  for (size_t i = 0; i < r->element[1]->elements; ++i)
    if (r->element[1]->element[i]->type != REDIS_REPLY_STRING) return false;
  *cursor = reply_text(r->element[0]);
  return !cursor->empty();
}

void Store::Impl::on_scan(redisReply* r) {
  if (state != State::kSyncing) return;
  std::string_view cursor;
  if (!scan_reply(r, &cursor)) return fail("unexpected reply to SCAN");
  const redisReply* keys = r->element[1];
  std::vector<std::string> batch;
  uint64_t bytes = 0;
  batch.reserve(keys->elements);
  for (size_t i = 0; i < keys->elements; ++i) {
    batch.emplace_back(reply_text(keys->element[i]));
    bytes += batch.back().size();
  }
  if (over_budget(batch.size(), bytes)) return;  // counts the keys before their values
  if (!batch.empty()) {
    if (!send(cmd, Op::kMget, {"MGET"}, std::move(batch))) return fail("cannot send MGET");
    ++rs.mgets;
  }
  if (cursor == "0") {
    rs.scan_done = true;
    return finish_resync_if_complete();
  }
  if (!send(cmd, Op::kScan,
            {"SCAN", std::string(cursor), "MATCH", scan_pattern, "COUNT", kScanCount}))
    fail("cannot send SCAN");
}

void Store::Impl::on_mget(Pending& p, redisReply* r) {
  if (state != State::kSyncing) return;
  if (r->type != REDIS_REPLY_ARRAY || r->elements != p.keys.size())
    return fail("unexpected reply to MGET");
  --rs.mgets;
  const int64_t now = now_s();
  uint64_t bytes = 0;
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* v = r->element[i];
    if (v->type == REDIS_REPLY_NIL) continue;  // deleted since the SCAN
    const std::string_view value = reply_text(v);
    bytes += value.size();
    RuntimeEntry e;
    std::string why;
    if (v->type != REDIS_REPLY_STRING) {
      skip_malformed("entry", p.keys[i], "", "not a string value");
      continue;
    }
    if (!store_format::parse_entry(opts.key_prefix, p.keys[i], value, &e, &why)) {
      skip_malformed("entry", p.keys[i], value, why);
      continue;
    }
    if (e.expires_s != 0 && e.expires_s <= now) continue;  // expired, Redis not yet aware
    rs.entries.push_back(std::move(e));
  }
  if (over_budget(0, bytes)) return;
  finish_resync_if_complete();
}

void Store::Impl::finish_resync_if_complete() {
  if (state != State::kSyncing || !rs.scan_done || rs.mgets != 0) return;
  // SCAN may return a key twice: keep one entry per (list, prefix).
  auto key = [](const RuntimeEntry& e) {
    return std::tie(e.list, e.prefix.addr.v6, e.prefix.addr.bits, e.prefix.len);
  };
  std::stable_sort(rs.entries.begin(), rs.entries.end(),
                   [&](const RuntimeEntry& a, const RuntimeEntry& b) { return key(a) < key(b); });
  rs.entries.erase(
      std::unique(rs.entries.begin(), rs.entries.end(),
                  [&](const RuntimeEntry& a, const RuntimeEntry& b) { return key(a) == key(b); }),
      rs.entries.end());
  std::vector<RuntimeEntry> entries = std::move(rs.entries);
  std::vector<Change> buffered = std::move(rs.buffered);
  const uint64_t ms = uv_now(loop) - rs.started_ms;
  Resync empty;
  std::swap(rs, empty);
  state = State::kUp;
  up = true;
  down_since_s = 0;
  backoff_ms = kBackoffFirstMs;
  ++resyncs;
  log->info(
      "store {}: connected; resync: {} entries in {} ms, then {} change(s) announced "
      "meanwhile",
      shown, entries.size(), ms, buffered.size());
  if (cb.on_resync) safe("on_resync", [&] { cb.on_resync(std::move(entries)); });
  for (const Change& ch : buffered) {
    if (state != State::kUp) return;
    ++changes_received;
    if (cb.on_change) safe("on_change", [&] { cb.on_change(ch); });
  }
  if (state == State::kUp && cb.on_state) safe("on_state", [&] { cb.on_state(true); });
}

void Store::Impl::handle_sub(redisReply* r) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING)
    return;
  const std::string_view kind = reply_text(r->element[0]);
  if (kind == "subscribe") {
    sub.ready = true;
    return resync_if_ready();
  }
  if (kind != "message" || r->element[2]->type != REDIS_REPLY_STRING) return;
  const std::string_view msg = reply_text(r->element[2]);
  uint64_t from = 0;
  Change ch;
  std::string why;
  if (!store_format::parse_change_message(msg, &from, &ch, &why))
    return skip_malformed("message on", channel, msg, why);
  if (from == origin) return;  // our own write, applied when it was made
  if (state == State::kSyncing) {
    if (over_budget(1, msg.size())) return;
    rs.buffered.push_back(std::move(ch));
    return;
  }
  if (state != State::kUp) return;
  ++changes_received;
  if (cb.on_change) safe("on_change", [&] { cb.on_change(ch); });
}
}  // namespace spoad::agents::ip_checker
