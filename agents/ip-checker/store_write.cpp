// The ip-checker's shared store (store_impl.h): writes. An add or a del is one MULTI/EXEC
// (SET + EXPIREAT or DEL, then PUBLISH); a clear is SCAN + DEL then PUBLISH, and the writes
// made meanwhile wait for it.
#include "agents/ip-checker/commands.h"
#include "agents/ip-checker/store_impl.h"
#include "util/escape.h"

namespace spoad::agents::ip_checker {

using namespace store_detail;

std::string Store::Impl::down_text() const {
  return "store " + shown + " disconnected since " + format_utc(down_since_s);
}

bool Store::Impl::write(const Change& c, std::string* err) {
  auto refuse = [&](std::string e) {
    if (err) *err = std::move(e);
    return false;
  };
  if (state != State::kUp || !up) return refuse(down_text());
  if (!valid_list_name(c.entry.list))
    return refuse("store: bad list name " + util::printable(c.entry.list, 80));
  if (c.kind == Change::Kind::kAdd &&
      (c.entry.comment.size() > kMaxComment || c.entry.score > 100 || c.entry.expires_s < 0))
    return refuse("store: entry out of range (comment, score or expiry)");
  if (in_flight + queued.size() >= kMaxPendingWrites)
    return refuse("store " + shown + ": " + std::to_string(kMaxPendingWrites) +
                  " writes are waiting for Redis; try again");
  if (clearing) {
    queued.push_back(c);
    return true;
  }
  if (!issue(c)) {
    fail_later("cannot send a write");
    return refuse("store " + shown + ": cannot send the write");
  }
  return true;
}

bool Store::Impl::issue(const Change& c) {
  const std::string msg = store_format::change_message(origin, c);
  if (c.kind == Change::Kind::kClear) {
    clearing = true;
    clear_change = c;
    ++in_flight;
    const std::string pat = glob_escape(entry_head + c.entry.list + ":") + "*";
    if (send(cmd, Op::kClearScan, {"SCAN", "0", "MATCH", pat, "COUNT", kScanCount})) return true;
    clearing = false;
    --in_flight;
    return false;
  }
  const std::string key = store_format::entry_key(opts.key_prefix, c.entry);
  bool ok = send_plain({"MULTI"});
  if (c.kind == Change::Kind::kAdd) {
    ok = ok && send_plain({"SET", key, store_format::entry_value(c.entry)});
    if (c.entry.expires_s != 0)
      ok = ok && send_plain({"EXPIREAT", key, std::to_string(c.entry.expires_s)});
  } else {
    ok = ok && send_plain({"DEL", key});
  }
  ok = ok && send_plain({"PUBLISH", channel, msg});
  ok = ok && send(cmd, Op::kExec, {"EXEC"});
  if (ok) ++in_flight;
  return ok;
}

void Store::Impl::write_failed(const std::string& why) {
  ++write_failures;
  log_state(spdlog::level::warn, "write failed: " + why);
}

void Store::Impl::on_exec(redisReply* r) {
  if (in_flight) --in_flight;
  if (r->type == REDIS_REPLY_ERROR) return write_failed(util::printable(reply_text(r), 200));
  if (r->type != REDIS_REPLY_ARRAY) return write_failed("transaction aborted");
  for (size_t i = 0; i < r->elements; ++i)
    if (r->element[i]->type == REDIS_REPLY_ERROR)
      return write_failed(util::printable(reply_text(r->element[i]), 200));
}

void Store::Impl::on_clear_scan(redisReply* r) {
  if (!clearing) return;
  std::string_view cursor;
  if (r->type == REDIS_REPLY_ERROR || !scan_reply(r, &cursor)) {
    clearing = false;
    --in_flight;
    write_failed("clear " + clear_change.entry.list + ": unexpected reply to SCAN");
    return fail_later("unexpected reply to SCAN");
  }
  const redisReply* keys = r->element[1];
  bool ok = true;
  if (keys->elements) {
    std::vector<std::string> del{"DEL"};
    for (size_t i = 0; i < keys->elements; ++i)
      del.emplace_back(reply_text(keys->element[i]));
    ok = send_plain(del);
  }
  if (cursor != "0") {
    ok = ok &&
         send(cmd, Op::kClearScan,
              {"SCAN", std::string(cursor), "MATCH",
               glob_escape(entry_head + clear_change.entry.list + ":") + "*", "COUNT", kScanCount});
    if (!ok) fail_later("cannot send a clear");
    return;
  }
  // Every key deleted: announce, then send the writes made meanwhile, in order.
  --in_flight;
  ok = ok && send_plain({"MULTI"}) &&
       send_plain({"PUBLISH", channel, store_format::change_message(origin, clear_change)}) &&
       send(cmd, Op::kExec, {"EXEC"});
  if (!ok) return fail_later("cannot send a clear");
  ++in_flight;
  clearing = false;
  while (!queued.empty() && !clearing) {
    Change next = std::move(queued.front());
    queued.pop_front();
    if (!issue(next)) return fail_later("cannot send a write");
  }
}
}  // namespace spoad::agents::ip_checker
