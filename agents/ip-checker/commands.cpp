#include "agents/ip-checker/commands.h"

#include <algorithm>
#include <ctime>

#include "agents/ip-checker/ip_checker.h"
#include "util/escape.h"

namespace spoad::agents::ip_checker {

namespace {

constexpr std::string_view kAddDenyUsage =
    "usage: add ip deny <list> <addr|cidr> [score N] [ttl DUR] [comment TEXT...]";
constexpr std::string_view kAddAllowUsage =
    "usage: add ip allow <list> <addr|cidr> [ttl DUR] [comment TEXT...]";
constexpr std::string_view kDelUsage = "usage: del ip [deny|allow] <list> <addr|cidr>";
constexpr size_t kShownWord = 64;  // bytes of a typed word quoted in an error

[[noreturn]] void fail(std::string_view msg) {
  throw agent::CommandError(std::string(msg) + "\n");
}

std::string shown_word(std::string_view w) {
  return "\"" + util::printable(w, kShownWord) + "\"";
}

Prefix prefix_arg(std::string_view w) {
  Prefix p;
  bool masked = false;
  const char* why = "";
  if (!parse_prefix(w, &p, &masked, &why))
    fail("not an address or CIDR: " + shown_word(w) + " (" + why + ")");
  return p;
}

std::string plural(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

// ---- parsing and formatting ---------------------------------------------------------------

bool parse_ttl(std::string_view s, int64_t* seconds) {
  const char u = s.empty() ? '\0' : s.back();
  const int64_t unit = u == 'm' ? 60 : u == 'h' ? 3600 : u == 'd' ? 86400 : 1;
  if (u == 's' || unit != 1) s.remove_suffix(1);
  if (s.empty() || s.size() > 11) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');  // at most 11 digits: no overflow
  }
  if (v < 1 || v > kMaxTtl / unit) return false;
  *seconds = v * unit;
  return true;
}

AddArgs parse_add_args(const std::vector<std::string>& args, bool allow) {
  const std::string_view usage = allow ? kAddAllowUsage : kAddDenyUsage;
  if (args.size() < 2) fail(usage);
  AddArgs a;
  a.list = args[0];
  a.prefix = prefix_arg(args[1]);
  bool have_ttl = false;
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& w = args[i];
    if (w == "comment") {
      std::string text;
      for (size_t j = i + 1; j < args.size(); ++j)
        text += (j > i + 1 ? " " : "") + args[j];
      if (text.size() >= 2 && text.front() == '"' && text.back() == '"')
        text = text.substr(1, text.size() - 2);
      if (text.empty()) fail("comment: missing text");
      if (text.size() > kMaxComment)
        fail("comment: longer than " + std::to_string(kMaxComment) + " bytes");
      a.comment = std::move(text);
      break;
    }
    if (w != "score" && w != "ttl")
      fail("unexpected " + shown_word(w) + ": expected " +
           (allow ? "ttl or comment" : "score, ttl or comment"));
    if (w == "score" && allow) fail("score: allow entries have no score");
    if (i + 1 >= args.size()) fail(w + ": missing value");
    const std::string& v = args[++i];
    if (w == "score") {
      if (a.score) fail("score given twice");
      const bool digits =
          !v.empty() && v.size() <= 3 &&
          std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits || std::stoi(v) > 100) fail("score: must be 0-100, got " + shown_word(v));
      a.score = static_cast<uint8_t>(std::stoi(v));
    } else {
      if (have_ttl) fail("ttl given twice");
      if (!parse_ttl(v, &a.ttl_s))
        fail("ttl: must be 1s to 365d (90, 90s, 10m, 1h, 1d), got " + shown_word(v));
      have_ttl = true;
    }
  }
  return a;
}

DelArgs parse_del_args(const std::vector<std::string>& args) {
  DelArgs d;
  size_t i = 0;
  if (args.size() == 3) {
    if (args[0] != "deny" && args[0] != "allow") fail(kDelUsage);
    d.allow = args[0] == "allow";
    i = 1;
  } else if (args.size() != 2) {
    fail(kDelUsage);
  }
  d.list = args[i];
  d.prefix = prefix_arg(args[i + 1]);
  return d;
}

std::string format_utc(int64_t s) {
  const time_t t = static_cast<time_t>(s);
  struct tm tm;
  if (!gmtime_r(&t, &tm)) return "?";
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string format_expiry(int64_t expires_s, int64_t now_ms) {
  if (expires_s == 0) return "expires=never";
  const int64_t left_ms = std::max<int64_t>(0, expires_s * 1000 - now_ms);
  return "expires=" + format_utc(expires_s) + " left=" + std::to_string(left_ms / 1000) + "s";
}

std::string format_entry(const RuntimeEntry& e, int64_t now_ms) {
  std::string out = to_string(e.prefix);
  if (!e.allow) out += " score=" + std::to_string(e.score);
  out += " " + format_expiry(e.expires_s, now_ms);
  if (!e.comment.empty()) out += " comment=\"" + util::printable(e.comment, kMaxComment) + "\"";
  return out;
}

std::string redact_url(std::string_view url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string_view::npos) return std::string(url);
  const size_t host = scheme + 3;
  const size_t end = url.find('/', host);
  const size_t at = url.substr(0, end).rfind('@');
  if (at == std::string_view::npos || at < host) return std::string(url);
  return std::string(url.substr(0, host)) + "***" + std::string(url.substr(at));
}

std::string store_status(bool connected, int64_t since_s) {
  if (connected) return "connected";
  if (since_s <= 0) return "disconnected";
  return "disconnected since " + format_utc(since_s);
}

// ---- the agent's commands -----------------------------------------------------------------

int32_t IpCheckerAgent::find_list(const std::string& name, std::optional<bool> allow) const {
  const int32_t i = runtime_.list_index(name);
  if (i < 0) {
    std::string known;
    const auto& lists = runtime_.lists();
    for (size_t k = 0; k < lists.size() && k < 8; ++k)
      known += (k ? ", " : "") + lists[k].name;
    if (lists.size() > 8) known += ", ...";
    fail("unknown list " + shown_word(name) + (known.empty() ? "" : " (lists: " + known + ")"));
  }
  const ListInfo& info = runtime_.lists()[static_cast<size_t>(i)];
  if (allow && *allow != info.allow)
    fail("list " + info.name + " is " + (info.allow ? "an allow" : "a deny") + " list, not " +
         (*allow ? "an allow" : "a deny") + " list");
  return i;
}

std::string IpCheckerAgent::cmd_add(const std::vector<std::string>& args, bool allow) {
  const AddArgs a = parse_add_args(args, allow);
  const ListInfo& info = runtime_.lists()[static_cast<size_t>(find_list(a.list, allow))];
  Change c;
  c.kind = Change::Kind::kAdd;
  c.entry.list = info.name;
  c.entry.prefix = a.prefix;
  c.entry.allow = allow;
  c.entry.score = allow ? 0 : a.score.value_or(info.score);
  // The first whole second at least ttl from now: never shorter than asked.
  c.entry.expires_s = a.ttl_s ? (clock_ms() + a.ttl_s * 1000 + 999) / 1000 : 0;
  c.entry.comment = a.comment;
  commit(c);
  // The same answer whether the entry replaced another or not: with a store, the workers of a
  // pool-wide command may see another worker's write first.
  std::string out = "added " + to_string(a.prefix) + " to " + info.name + " (";
  out += allow ? "allow" : "deny, score " + std::to_string(c.entry.score);
  out += a.ttl_s ? ", ttl " + std::to_string(a.ttl_s) + "s" : ", no expiry";
  return out + ")\n";
}

std::string IpCheckerAgent::cmd_del(const std::vector<std::string>& args) {
  const DelArgs d = parse_del_args(args);
  const ListInfo& info = runtime_.lists()[static_cast<size_t>(find_list(d.list, d.allow))];
  Change c;
  c.kind = Change::Kind::kDel;
  c.entry.list = info.name;
  c.entry.prefix = d.prefix;
  c.entry.allow = info.allow;
  if (runtime_.check(c, 0) == RuntimeEntries::Status::kNotFound) {
    // With a store, another worker of a pool-wide command or another instance may have
    // deleted it first: delete it in the store anyway (a no-op there if it is gone).
    if (!store_) fail("no runtime entry " + to_string(d.prefix) + " in list " + info.name);
    commit_to_store(c);
  } else {
    commit(c);
  }
  return "deleted " + to_string(d.prefix) + " from " + info.name + "\n";
}

std::string IpCheckerAgent::cmd_clear(const std::vector<std::string>& args) {
  if (args.size() != 1) fail("usage: clear ip <list>");
  const ListInfo& info = runtime_.lists()[static_cast<size_t>(find_list(args[0], std::nullopt))];
  Change c;
  c.kind = Change::Kind::kClear;
  c.entry.list = info.name;
  c.entry.allow = info.allow;
  size_t removed = 0;
  commit(c, &removed);
  ctx_.log->info("clear ip {}: {} removed", info.name,
                 plural(removed, "runtime entry", "runtime entries"));
  // Without the count, which may differ between the workers of a pool-wide command.
  return "cleared the runtime entries of " + info.name + "\n";
}

std::string IpCheckerAgent::cmd_show_entries(const std::vector<std::string>& args) const {
  if (args.size() != 1) fail("usage: show ip entries <list>");
  const int32_t li = find_list(args[0], std::nullopt);
  const ListInfo& info = runtime_.lists()[static_cast<size_t>(li)];
  const size_t n = runtime_.size(li);
  std::string out =
      "# " + info.name + ": " + plural(n, "runtime entry", "runtime entries") +
      (info.allow ? " (allow list)"
                  : " (deny list, default score " + std::to_string(info.score) + ")") +
      "\n";
  const int64_t now = clock_ms();
  for (const RuntimeEntry& e : runtime_.entries(li, kMaxShownEntries))
    out += format_entry(e, now) + "\n";
  if (n > kMaxShownEntries)
    out +=
        "# the first " + std::to_string(kMaxShownEntries) + " of " + std::to_string(n) + " shown\n";
  return out;
}

std::string IpCheckerAgent::cmd_show_store() const {
  if (opts_.store.url.empty())
    return "no store: runtime entries live in this spoad's workers and master only (lost on a "
           "restart without takeover)\n";
  const bool up = store_ && store_->connected();
  const int64_t since = store_ ? store_->disconnected_since_s() : 0;
  std::string out = "store " + util::printable(redact_url(opts_.store.url), 1024) +
                    " key-prefix \"" + util::printable(opts_.store.key_prefix, 256) +
                    "\": " + store_status(up, since) + "\n";
  out += "resyncs=" + std::to_string(store_ ? store_->resyncs() : 0) +
         " reconnects=" + std::to_string(store_ ? store_->reconnects() : 0) +
         " write_failures=" + std::to_string(store_ ? store_->write_failures() : 0) +
         " changes_received=" + std::to_string(store_ ? store_->changes_received() : 0) +
         " changes_ignored=" + std::to_string(store_ignored_) +
         " malformed=" + std::to_string(store_ ? store_->malformed() : 0) +
         " budget_refusals=" + std::to_string(store_ ? store_->budget_refusals() : 0) +
         " writes_refused=" + std::to_string(store_refused_writes_.get()) +
         " runtime_entries=" + std::to_string(runtime_.size()) + "\n";
  return out;
}

std::string IpCheckerAgent::show_lists() const {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"# name", "kind", "score", "entries", "runtime", "source", "loaded", "status"});
  for (size_t i = 0; i < lists_.size(); ++i) {
    const ListState& st = lists_[i];
    rows.push_back({st.cfg.info.name, st.cfg.info.allow ? "allow" : "deny",
                    st.cfg.info.allow ? "-" : std::to_string(st.cfg.info.score),
                    std::to_string(st.data ? st.data->prefixes.size() : 0),
                    std::to_string(runtime_.size(static_cast<int32_t>(i))),
                    !st.cfg.file.empty()    ? util::printable(st.cfg.file, 4096)
                    : st.cfg.inline_entries ? "inline"
                                            : "runtime",
                    format_utc(st.loaded_at_ms / 1000),
                    st.error.empty() ? "ok" : "failed: " + st.error});
    if (st.loaded_at_ms == 0) rows.back()[6] = "-";
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c)
      width[c] = std::max(width[c], r[c].size());
  std::string out;
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size(); ++c) {
      out += r[c];
      if (c + 1 < r.size()) out.append(width[c] - r[c].size() + 2, ' ');
    }
    out += '\n';
  }
  return out;
}

std::string IpCheckerAgent::show_ip(const std::string& address) {
  Address a;
  std::string_view s = address;
  constexpr std::string_view kSpace = " \t\r\n\v\f";
  s.remove_prefix(std::min(s.size(), s.find_first_not_of(kSpace)));
  s = s.substr(0, s.find_last_not_of(kSpace) + 1);
  if (!parse_address(s, &a)) return "not an IP address: " + shown_word(address) + "\n";
  if (rebuild_pending_) rebuild_overlay();  // store changes of this loop turn
  if (now_ms() >= expiry_due_ms_) expire_due();
  bool runtime = false;
  const Verdict v = check(a, &runtime);
  const bool blocked = !v.allowed && v.score >= opts_.block_threshold;
  std::string out = to_string(a) + " ip_score=" + std::to_string(v.score) +
                    " blocked=" + (blocked ? "true" : "false");
  if (v.list < 0) return out + "\n";
  out += " list=" + list_name(v.list);
  const ListConfig& cfg = lists_[static_cast<size_t>(v.list)].cfg;
  if (runtime) {
    out += " source=runtime";
    if (const auto e = runtime_.deciding_entry(v.list, a)) {
      out += " entry=" + to_string(e->prefix) + " " + format_expiry(e->expires_s, clock_ms());
      if (!e->comment.empty())
        out += " comment=\"" + util::printable(e->comment, kMaxComment) + "\"";
    }
  } else if (cfg.file.empty()) {
    out += " source=config";
  } else {
    out += " source=file path=\"" + util::printable(cfg.file, 4096) + "\"";
  }
  return out + "\n";
}

std::vector<agent::CliCommand> IpCheckerAgent::cli_commands() {
  std::vector<agent::CliCommand> cmds;
  using Args = std::vector<std::string>;
  cmds.push_back({"show lists", "", "the allow and deny lists, their size and status",
                  [this](const Args&) { return show_lists(); }});
  // Before "show ip": the first command whose words match runs.
  cmds.push_back({"show ip entries", "show ip entries <list>", "the runtime entries of a list",
                  [this](const Args& a) { return cmd_show_entries(a); }});
  cmds.push_back({"show ip", "show ip <address>",
                  "the variables the agent would set for it, and the entry that decided",
                  [this](const Args& args) {
                    if (args.size() != 1) return std::string("usage: show ip <address>\n");
                    return show_ip(args[0]);
                  }});
  cmds.push_back({"add ip deny",
                  "add ip deny <list> <addr|cidr> [score N] [ttl DUR] [comment TEXT...]",
                  "add a runtime deny entry", [this](const Args& a) { return cmd_add(a, false); }});
  cmds.push_back({"add ip allow", "add ip allow <list> <addr|cidr> [ttl DUR] [comment TEXT...]",
                  "add a runtime allow entry", [this](const Args& a) { return cmd_add(a, true); }});
  cmds.push_back({"del ip", "del ip [deny|allow] <list> <addr|cidr>", "delete a runtime entry",
                  [this](const Args& a) { return cmd_del(a); }});
  cmds.push_back({"clear ip", "clear ip <list>", "delete every runtime entry of a list",
                  [this](const Args& a) { return cmd_clear(a); }});
  cmds.push_back({"show store", "", "the shared store's connection and counters",
                  [this](const Args&) { return cmd_show_store(); }});
  return cmds;
}

}  // namespace spoad::agents::ip_checker
