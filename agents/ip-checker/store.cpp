// The ip-checker's shared store in Redis (store.h): hiredis 0.14's async API on the worker's
// libuv loop.
//
// Lifetimes. Each hiredis context's `data` points to its Conn while we own the context; before
// we free a context (or when hiredis frees it after a failed connect or a lost connection) that
// pointer is cleared, so a callback of a dying context does nothing. Every command callback
// owns its Pending (hiredis calls it exactly once: with the reply, or with NULL when the
// context is freed). Our timers and the DNS request are heap objects that outlive the Store
// when their close or cancel is still on its way. The libuv adapter closes and frees its poll
// handle itself. Every callback from hiredis or libuv catches all exceptions.
#include "agents/ip-checker/store.h"

#include <arpa/inet.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <deque>
#include <random>
#include <stdexcept>
#include <tuple>

#include "util/escape.h"
#include "util/log.h"
#include "util/rate_limit.h"

namespace spoad::agents::ip_checker {

namespace {

constexpr uint64_t kConnectTimeoutMs = 2000;  // DNS + TCP + AUTH + SELECT + SUBSCRIBE
constexpr uint64_t kBackoffFirstMs = 100;
constexpr uint64_t kBackoffMaxMs = 5000;
constexpr uint64_t kPingEveryMs = 1000;
constexpr uint64_t kPingTimeoutMs = 5000;
constexpr const char* kScanCount = "1000";   // keys asked per SCAN (and so per MGET)
constexpr size_t kMaxPendingWrites = 10000;  // writes sent or queued, not yet confirmed
// Longest value or message: "<origin> add <list> <prefix> d 100 <expires> <hex>".
constexpr size_t kMaxText = 17 + 4 + 65 + 44 + 2 + 4 + 20 + 1 + 2 * kMaxComment;

int64_t now_s() {
  return static_cast<int64_t>(::time(nullptr));
}

std::string iso_time(int64_t s) {
  const time_t t = static_cast<time_t>(s);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

const char kHexDigits[] = "0123456789abcdef";

std::string to_hex(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) {
    out += kHexDigits[c >> 4];
    out += kHexDigits[c & 15];
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // uppercase is not what the writer produces
}

bool from_hex(std::string_view h, std::string* out) {
  if (h.size() % 2) return false;
  out->clear();
  out->reserve(h.size() / 2);
  for (size_t i = 0; i < h.size(); i += 2) {
    const int a = hex_value(h[i]), b = hex_value(h[i + 1]);
    if (a < 0 || b < 0) return false;
    *out += static_cast<char>(a << 4 | b);
  }
  return true;
}

// A decimal number without sign or leading zeros, at most `max`.
bool parse_dec(std::string_view s, uint64_t max, uint64_t* out) {
  if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
  uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return false;
  *out = v;
  return true;
}

// The fields of `s` separated by single spaces (empty fields kept, so that a double space
// fails the checks of the field).
std::vector<std::string_view> split(std::string_view s, size_t max_fields) {
  std::vector<std::string_view> f;
  size_t start = 0;
  while (f.size() < max_fields) {
    const size_t sp = s.find(' ', start);
    if (sp == std::string_view::npos) {
      f.push_back(s.substr(start));
      return f;
    }
    f.push_back(s.substr(start, sp - start));
    start = sp + 1;
  }
  f.push_back(s.substr(start));  // one more: the caller sees too many fields
  return f;
}

bool parse_canonical_prefix(std::string_view s, Prefix* p) {
  bool masked = false;
  const char* why = nullptr;
  if (s.size() > 64 || !parse_prefix(s, p, &masked, &why) || masked) return false;
  return to_string(*p) == s;
}

// "<a|d> <score> <expires_s>[ <hex>]" from fields f[0..].
bool parse_value_fields(const std::vector<std::string_view>& f, size_t at, RuntimeEntry* e,
                        std::string* why) {
  if (f.size() < at + 3 || f.size() > at + 4) return *why = "wrong number of fields", false;
  if (f[at] != "a" && f[at] != "d") return *why = "kind is not a or d", false;
  e->allow = f[at] == "a";
  uint64_t score = 0, expires = 0;
  if (!parse_dec(f[at + 1], 100, &score)) return *why = "bad score", false;
  if (!parse_dec(f[at + 2], INT64_MAX, &expires)) return *why = "bad expiry", false;
  e->score = static_cast<uint8_t>(score);
  e->expires_s = static_cast<int64_t>(expires);
  e->comment.clear();
  if (f.size() == at + 4) {
    if (f[at + 3].empty() || f[at + 3].size() > 2 * kMaxComment ||
        !from_hex(f[at + 3], &e->comment))
      return *why = "bad comment", false;
  }
  return true;
}

void append_value(std::string& out, const RuntimeEntry& e) {
  out += e.allow ? 'a' : 'd';
  out += ' ';
  out += std::to_string(e.score);
  out += ' ';
  out += std::to_string(e.expires_s);
  if (!e.comment.empty()) {
    out += ' ';
    out += to_hex(e.comment);
  }
}

// A Store's view of the URL.
struct Url {
  std::string host;  // a name, an IPv4 address, or an IPv6 address (no brackets)
  bool v6 = false;
  int port = 6379;
  int64_t db = 0;
  std::string user, password;  // decoded; password "" = no AUTH
};

bool percent_decode(std::string_view s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      *out += s[i];
      continue;
    }
    auto hv = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (i + 2 >= s.size()) return false;
    const int a = hv(s[i + 1]), b = hv(s[i + 2]);
    if (a < 0 || b < 0) return false;
    *out += static_cast<char>(a << 4 | b);
    i += 2;
  }
  return true;
}

bool parse_url(std::string_view url, Url* u, std::string* why) {
  auto starts = [&](std::string_view p) {
    if (url.size() < p.size()) return false;
    for (size_t i = 0; i < p.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(url[i])) != p[i]) return false;
    return true;
  };
  if (starts("rediss://")) {
    *why =
        "rediss:// (TLS) is not supported: Debian 12's hiredis 0.14 has no TLS; reach Redis "
        "through a local TLS tunnel (stunnel, spiped) with a redis:// URL";
    return false;
  }
  if (!starts("redis://")) return *why = "expected redis://[:password@]host[:port][/db]", false;
  std::string_view rest = url.substr(8);
  if (rest.find_first_of("?#") != std::string_view::npos)
    return *why = "query strings and fragments are not supported", false;
  for (unsigned char c : rest)
    if (c <= 0x20 || c >= 0x7f) return *why = "spaces and control bytes are not allowed", false;
  const size_t slash = rest.find('/');
  std::string_view auth = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
  if (const size_t at = auth.rfind('@'); at != std::string_view::npos) {
    std::string_view info = auth.substr(0, at);
    auth = auth.substr(at + 1);
    const size_t colon = info.find(':');
    if (colon == std::string_view::npos)
      return *why = "write the password as redis://:PASSWORD@host (or USER:PASSWORD@)", false;
    if (!percent_decode(info.substr(0, colon), &u->user) ||
        !percent_decode(info.substr(colon + 1), &u->password))
      return *why = "bad %-escape in the user or password", false;
    if (u->password.empty()) return *why = "empty password", false;
  }
  std::string_view port;
  if (!auth.empty() && auth[0] == '[') {
    const size_t close = auth.find(']');
    if (close == std::string_view::npos) return *why = "missing ']' after an IPv6 address", false;
    u->host = std::string(auth.substr(1, close - 1));
    u->v6 = true;
    in6_addr a6;
    if (inet_pton(AF_INET6, u->host.c_str(), &a6) != 1) return *why = "bad IPv6 address", false;
    std::string_view after = auth.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return *why = "expected ':' and a port after ']'", false;
      port = after.substr(1);
      if (port.empty()) return *why = "empty port", false;
    }
  } else {
    const size_t colon = auth.find(':');
    u->host = std::string(auth.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = auth.substr(colon + 1);
      if (port.empty()) return *why = "empty port", false;
    }
    for (char c : u->host)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_')
        return *why = "bad host name", false;
  }
  if (u->host.empty()) return *why = "missing host", false;
  if (!port.empty()) {
    uint64_t p = 0;
    if (!parse_dec(port, 65535, &p) || p == 0) return *why = "port must be 1-65535", false;
    u->port = static_cast<int>(p);
  }
  if (!path.empty()) {
    uint64_t db = 0;
    if (!parse_dec(path, INT32_MAX, &db))
      return *why = "database must be a number 0-2147483647, as in redis://host:6379/0", false;
    u->db = static_cast<int64_t>(db);
  }
  return true;
}

std::string shown_url(const Url& u) {
  return "redis://" + (u.v6 ? "[" + u.host + "]" : u.host) + ":" + std::to_string(u.port) + "/" +
         std::to_string(u.db);
}

// `s` with glob characters escaped for SCAN MATCH.
std::string glob_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// hiredis 0.14's libuv adapter ignores a poll error, and libuv reports a socket error (a
// refused connect, a reset) as status UV_EBADF with the watcher stopped: a refused connect
// would wait for the connect timeout. These hooks wrap the adapter's and, on such an error,
// let hiredis read the socket, which reports the error and frees the context.
void on_poll(uv_poll_t* h, int status, int events) {
  auto* p = static_cast<redisLibuvEvents*>(h->data);
  if (status < 0) {
    if (p->context) redisAsyncHandleRead(p->context);
    return;
  }
  redisLibuvPoll(h, status, events);
}
void rearm(void* d) {
  auto* p = static_cast<redisLibuvEvents*>(d);
  if (p->events) uv_poll_start(&p->handle, p->events, &on_poll);
}
void add_read(void* d) {
  redisLibuvAddRead(d), rearm(d);
}
void del_read(void* d) {
  redisLibuvDelRead(d), rearm(d);
}
void add_write(void* d) {
  redisLibuvAddWrite(d), rearm(d);
}
void del_write(void* d) {
  redisLibuvDelWrite(d), rearm(d);
}

bool attach(redisAsyncContext* ac, uv_loop_t* loop) {
  if (redisLibuvAttach(ac, loop) != REDIS_OK) {
    ac->ev = {};  // the adapter may have set its hooks without its data
    return false;
  }
  ac->ev.addRead = &add_read;
  ac->ev.delRead = &del_read;
  ac->ev.addWrite = &add_write;
  ac->ev.delWrite = &del_write;
  return true;
}

std::string_view reply_text(const redisReply* r) {
  if (r->str == nullptr) return {};
  return std::string_view(r->str, r->len);
}

}  // namespace

// ---- formats ----

namespace store_format {

bool valid_list_name(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
      return false;
  return true;
}

std::string entry_key(std::string_view key_prefix, const RuntimeEntry& e) {
  std::string k(key_prefix);
  k += "entry:";
  k += e.list;
  k += ':';
  k += to_string(e.prefix);
  return k;
}

std::string entry_value(const RuntimeEntry& e) {
  std::string v;
  append_value(v, e);
  return v;
}

bool parse_entry(std::string_view key_prefix, std::string_view key, std::string_view value,
                 RuntimeEntry* out, std::string* why) {
  const std::string head = std::string(key_prefix) + "entry:";
  if (key.substr(0, head.size()) != head) return *why = "key outside the prefix", false;
  std::string_view rest = key.substr(head.size());
  const size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return *why = "key without a list", false;
  RuntimeEntry e;
  if (!valid_list_name(rest.substr(0, colon))) return *why = "bad list name in the key", false;
  e.list = std::string(rest.substr(0, colon));
  if (!parse_canonical_prefix(rest.substr(colon + 1), &e.prefix))
    return *why = "bad prefix in the key", false;
  if (value.size() > kMaxText) return *why = "value too long", false;
  if (!parse_value_fields(split(value, 4), 0, &e, why)) return false;
  *out = std::move(e);
  return true;
}

std::string change_message(uint64_t origin, const Change& c) {
  std::string m(16, '0');
  for (int i = 15; i >= 0; --i, origin >>= 4)
    m[i] = kHexDigits[origin & 15];
  switch (c.kind) {
    case Change::Kind::kAdd:
      m += " add " + c.entry.list + " " + to_string(c.entry.prefix) + " ";
      append_value(m, c.entry);
      break;
    case Change::Kind::kDel:
      m += " del " + c.entry.list + " " + to_string(c.entry.prefix);
      break;
    case Change::Kind::kClear:
      m += " clear " + c.entry.list;
      break;
  }
  return m;
}

bool parse_change_message(std::string_view msg, uint64_t* origin, Change* out, std::string* why) {
  if (msg.size() > kMaxText) return *why = "message too long", false;
  const auto f = split(msg, 8);
  if (f.size() < 3) return *why = "too few fields", false;
  if (f[0].size() != 16) return *why = "bad origin", false;
  uint64_t o = 0;
  for (char c : f[0]) {
    const int v = hex_value(c);
    if (v < 0) return *why = "bad origin", false;
    o = o << 4 | static_cast<uint64_t>(v);
  }
  Change c;
  if (!valid_list_name(f[2])) return *why = "bad list name", false;
  c.entry.list = std::string(f[2]);
  if (f[1] == "clear") {
    if (f.size() != 3) return *why = "wrong number of fields", false;
    c.kind = Change::Kind::kClear;
  } else if (f[1] == "del" || f[1] == "add") {
    if (f.size() < 4 || !parse_canonical_prefix(f[3], &c.entry.prefix))
      return *why = "bad prefix", false;
    if (f[1] == "del") {
      if (f.size() != 4) return *why = "wrong number of fields", false;
      c.kind = Change::Kind::kDel;
    } else {
      c.kind = Change::Kind::kAdd;
      if (!parse_value_fields(f, 4, &c.entry, why)) return false;
    }
  } else {
    return *why = "unknown operation", false;
  }
  *origin = o;
  *out = std::move(c);
  return true;
}

}  // namespace store_format

// ---- options ----

StoreOptions parse_store_options(config::Options& o) {
  StoreOptions s;
  if (!o.has("store")) return s;
  config::Options m = o.map("store");
  const auto url = m.str("url");
  if (!url) m.fail("", "missing key \"url\" (redis://[:password@]host[:port][/db])");
  Url u;
  std::string why;
  if (!parse_url(*url, &u, &why)) m.fail("url", why);
  s.url = *url;
  s.key_prefix = m.str("key-prefix", s.key_prefix);
  if (s.key_prefix.size() > 256) m.fail("key-prefix", "longer than 256 bytes");
  for (unsigned char c : s.key_prefix)
    if (c <= 0x20 || c == 0x7f) m.fail("key-prefix", "no spaces or control bytes allowed");
  s.max_entries = static_cast<uint64_t>(
      m.integer("max-entries", static_cast<int64_t>(s.max_entries), 1, 100'000'000));
  s.max_bytes = m.size("max-bytes", s.max_bytes, 1 << 20, uint64_t{16} << 30);
  m.check_unknown();
  return s;
}

// ---- the Store ----

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
  struct TimerBox {
    uv_timer_t h;
    Impl* impl;  // nullptr once the Store is gone
  };
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
  Url url;
  std::string shown;         // redis://host:port/db (no password)
  std::string channel;       // P changes
  std::string entry_head;    // P entry:
  std::string scan_pattern;  // glob-escaped P entry:*
  std::shared_ptr<spdlog::logger> log;
  Callbacks cb;
  uint64_t origin;

  Conn cmd{this, false};
  Conn sub{this, true};
  TimerBox* phase_timer = nullptr;  // connect timeout, retry, deferred failure
  TimerBox* ping_timer = nullptr;
  Resolve* resolve = nullptr;
  State state = State::kIdle;
  bool up = false;  // connected(): both connections and the last resync done
  int64_t down_since_s;
  uint64_t backoff_ms = kBackoffFirstMs;
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
  int closing = 0;        // our handles still closing after stop()
  std::function<void()> stop_done;

  uint64_t write_failures = 0, changes_received = 0, resyncs = 0, reconnects = 0, malformed = 0,
           budget_refusals = 0;
  util::RateLimiter state_log{2};
  std::string last_why;  // the last failure logged at warn, and when (uv_now)
  uint64_t last_why_ms = 0;
  util::RateLimiter bad_log{5};

  Impl(uv_loop_t* l, StoreOptions o, std::shared_ptr<spdlog::logger> lg, Callbacks c)
      : loop(l), opts(std::move(o)), log(std::move(lg)), cb(std::move(c)) {
    std::string why;
    if (!parse_url(opts.url, &url, &why)) throw std::invalid_argument("store url: " + why);
    if (!log) log = util::make_logger("ip-checker");
    shown = shown_url(url);
    channel = opts.key_prefix + "changes";
    entry_head = opts.key_prefix + "entry:";
    scan_pattern = glob_escape(entry_head) + "*";
    std::random_device rd;
    origin = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    down_since_s = now_s();
    phase_timer = new_timer();
    ping_timer = new_timer();
  }

  ~Impl() {
    stopping = true;
    teardown_session();
    for (TimerBox* t : {phase_timer, ping_timer}) {
      if (!t) continue;
      t->impl = nullptr;
      if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&t->h)))
        uv_close(reinterpret_cast<uv_handle_t*>(&t->h), &on_timer_closed);
    }
  }

  TimerBox* new_timer() {
    auto* t = new TimerBox{};
    t->impl = this;
    uv_timer_init(loop, &t->h);
    t->h.data = t;
    return t;
  }

  // -- logging --

  void log_state(spdlog::level::level_enum lvl, const std::string& msg) {
    if (!state_log.allow(uv_now(loop))) return;
    const uint64_t n = state_log.take_suppressed();
    if (n)
      log->log(lvl, "store {}: {} ({} similar lines suppressed)", shown, msg, n);
    else
      log->log(lvl, "store {}: {}", shown, msg);
  }

  void skip_malformed(const char* what, std::string_view where, std::string_view bytes,
                      const std::string& why) {
    ++malformed;
    if (!bad_log.allow(uv_now(loop))) return;
    const uint64_t n = bad_log.take_suppressed();
    log->warn("store {}: skipped a malformed {} {}: {} ({}){}", shown, what,
              util::printable(where, 128), why, util::printable(bytes, 128),
              n ? " (" + std::to_string(n) + " similar lines suppressed)" : "");
  }

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

  // -- connection --

  void start() {
    if (state != State::kIdle) return;
    attempt();
  }

  void attempt() {
    state = State::kConnecting;
    uv_timer_start(&phase_timer->h, &on_phase_timer, kConnectTimeoutMs, 0);
    in6_addr a6;
    in_addr a4;
    if (url.v6 || inet_pton(AF_INET, url.host.c_str(), &a4) == 1 ||
        inet_pton(AF_INET6, url.host.c_str(), &a6) == 1) {
      connect(url.host);
      return;
    }
    resolve = new Resolve{};
    resolve->impl = this;
    resolve->req.data = resolve;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    const int rc =
        uv_getaddrinfo(loop, &resolve->req, &on_resolved, url.host.c_str(), nullptr, &hints);
    if (rc != 0) {
      delete resolve;
      resolve = nullptr;
      fail(std::string("cannot resolve ") + url.host + ": " + uv_strerror(rc));
    }
  }

  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
    auto* r = static_cast<Resolve*>(req->data);
    Impl* self = r->impl;
    // The first IPv4 address, else the first IPv6 one (as hiredis itself prefers).
    std::string ip4, ip6;
    for (addrinfo* ai = status == 0 ? res : nullptr; ai; ai = ai->ai_next) {
      char buf[INET6_ADDRSTRLEN] = {};
      if (ai->ai_family == AF_INET && ip4.empty() &&
          inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, buf,
                    sizeof(buf)))
        ip4 = buf;
      else if (ai->ai_family == AF_INET6 && ip6.empty() &&
               inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, buf,
                         sizeof(buf)))
        ip6 = buf;
    }
    const std::string ip = ip4.empty() ? ip6 : ip4;
    uv_freeaddrinfo(res);
    delete r;
    if (!self) return;
    self->resolve = nullptr;
    try {
      if (status != 0)
        self->fail("cannot resolve " + self->url.host + ": " + uv_strerror(status));
      else if (ip.empty())
        self->fail("no address for " + self->url.host);
      else
        self->connect(ip);
    } catch (...) {
      self->log->error("store {}: connect failed with an exception", self->shown);
    }
  }

  void connect(const std::string& ip) {
    for (Conn* c : {&cmd, &sub}) {
      redisAsyncContext* ac = redisAsyncConnect(ip.c_str(), url.port);
      if (!ac) return fail("out of memory");
      if (ac->err) {
        std::string e = ac->errstr;
        redisAsyncFree(ac);
        return fail("connect: " + e);
      }
      redisEnableKeepAlive(&ac->c);
      if (!attach(ac, loop)) {
        redisAsyncFree(ac);
        return fail("cannot attach the connection to the loop");
      }
      ac->data = c;
      c->ac = ac;
      c->ready = false;
      redisAsyncSetConnectCallback(ac, &on_connect);
      redisAsyncSetDisconnectCallback(ac, &on_disconnect);
      bool ok = true;
      if (!url.password.empty()) {
        if (url.user.empty())
          ok = send(*c, Op::kAuth, {"AUTH", url.password});
        else
          ok = send(*c, Op::kAuth, {"AUTH", url.user, url.password});
      }
      if (c == &cmd) {
        if (ok && url.db != 0) ok = send(cmd, Op::kSelect, {"SELECT", std::to_string(url.db)});
        if (ok) ok = send(cmd, Op::kReady, {"PING"});
      } else if (ok) {
        const char* argv[] = {"SUBSCRIBE", channel.data()};
        const size_t lens[] = {9, channel.size()};
        ok = redisAsyncCommandArgv(sub.ac, &on_sub_reply, nullptr, 2, argv, lens) == REDIS_OK;
      }
      if (!ok) return fail("cannot send the first commands");
    }
  }

  // Sends one command; its reply goes to on_reply with a Pending of `op`.
  bool send(Conn& c, Op op, const std::vector<std::string>& args,
            std::vector<std::string> keys = {}) {
    if (!c.ac) return false;
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    argv.reserve(args.size() + keys.size());
    lens.reserve(args.size() + keys.size());
    for (const auto& a : args)
      argv.push_back(a.data()), lens.push_back(a.size());
    for (const auto& k : keys)
      argv.push_back(k.data()), lens.push_back(k.size());
    auto* p = new Pending{op, std::move(keys)};
    if (redisAsyncCommandArgv(c.ac, &on_reply, p, static_cast<int>(argv.size()), argv.data(),
                              lens.data()) != REDIS_OK) {
      delete p;
      return false;
    }
    return true;
  }

  // Sends one command whose reply nobody reads (inside MULTI).
  bool send_plain(const std::vector<std::string>& args) {
    if (!cmd.ac) return false;
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args)
      argv.push_back(a.data()), lens.push_back(a.size());
    return redisAsyncCommandArgv(cmd.ac, nullptr, nullptr, static_cast<int>(argv.size()),
                                 argv.data(), lens.data()) == REDIS_OK;
  }

  static void on_connect(const redisAsyncContext* ac, int status) {
    auto* c = static_cast<Conn*>(ac->data);
    if (!c || status == REDIS_OK) return;
    c->ac = nullptr;  // hiredis frees the context after this callback
    try {
      c->impl->fail(std::string("connect: ") + (ac->errstr ? ac->errstr : "failed"));
    } catch (...) {
    }
  }

  static void on_disconnect(const redisAsyncContext* ac, int) {
    auto* c = static_cast<Conn*>(ac->data);
    if (!c) return;
    c->ac = nullptr;  // hiredis frees the context after this callback
    try {
      c->impl->fail(std::string(c->sub ? "subscriber" : "command") +
                    " connection lost: " + (ac->err && ac->errstr ? ac->errstr : "closed"));
    } catch (...) {
    }
  }

  static void on_reply(redisAsyncContext* ac, void* r, void* privdata) {
    std::unique_ptr<Pending> p(static_cast<Pending*>(privdata));
    auto* c = static_cast<Conn*>(ac->data);
    if (!c || !r || !p) return;  // a context being freed: its loss is handled elsewhere
    Impl* self = c->impl;
    try {
      self->handle_reply(*c, *p, static_cast<redisReply*>(r));
    } catch (const std::exception& e) {
      self->log->error("store {}: reply handling failed: {}", self->shown, e.what());
      self->fail_later("reply handling failed");
    } catch (...) {
      self->fail_later("reply handling failed");
    }
  }

  static void on_sub_reply(redisAsyncContext* ac, void* r, void*) {
    auto* c = static_cast<Conn*>(ac->data);
    if (!c || !r) return;
    Impl* self = c->impl;
    try {
      self->handle_sub(static_cast<redisReply*>(r));
    } catch (const std::exception& e) {
      self->log->error("store {}: message handling failed: {}", self->shown, e.what());
    } catch (...) {
    }
  }

  static void on_phase_timer(uv_timer_t* h) {
    auto* t = static_cast<TimerBox*>(h->data);
    if (!t->impl) return;
    Impl* self = t->impl;
    try {
      if (self->state == State::kBackoff) {
        ++self->reconnects;
        self->attempt();
      } else if (self->state == State::kConnecting) {
        self->fail("no connection within " + std::to_string(kConnectTimeoutMs / 1000) + " s");
      } else if (!self->deferred_failure.empty()) {
        self->fail(std::move(self->deferred_failure));
      }
    } catch (...) {
    }
  }

  static void on_ping_timer(uv_timer_t* h) {
    auto* t = static_cast<TimerBox*>(h->data);
    if (!t->impl) return;
    Impl* self = t->impl;
    try {
      if (self->state != State::kSyncing && self->state != State::kUp) return;
      const uint64_t now = uv_now(self->loop);
      if (self->ping_out) {
        if (now - self->ping_sent_ms >= kPingTimeoutMs)
          self->fail("no answer to PING in " + std::to_string(kPingTimeoutMs / 1000) + " s");
        return;
      }
      if (!self->send(self->cmd, Op::kPing, {"PING"})) return self->fail("cannot send PING");
      self->ping_out = true;
      self->ping_sent_ms = now;
    } catch (...) {
    }
  }

  static void on_timer_closed(uv_handle_t* h) {
    auto* t = static_cast<TimerBox*>(h->data);
    Impl* self = t->impl;
    delete t;
    if (!self) return;
    if (self->phase_timer == t) self->phase_timer = nullptr;
    if (self->ping_timer == t) self->ping_timer = nullptr;
    if (--self->closing > 0) return;
    if (auto done = std::move(self->stop_done)) {
      try {
        done();
      } catch (...) {
      }
    }
  }

  // Frees both contexts and forgets the session's work. No user callback runs.
  void teardown_session() {
    if (resolve) {
      resolve->impl = nullptr;
      uv_cancel(reinterpret_cast<uv_req_t*>(&resolve->req));
      resolve = nullptr;
    }
    for (Conn* c : {&cmd, &sub}) {
      c->ready = false;
      if (redisAsyncContext* ac = c->ac) {
        c->ac = nullptr;
        ac->data = nullptr;
        redisAsyncFree(ac);  // runs its pending callbacks with NULL, which do nothing
      }
    }
    if (ping_timer) uv_timer_stop(&ping_timer->h);
    ping_out = false;
    Resync empty;
    std::swap(rs, empty);
    const size_t lost = in_flight + queued.size();
    if (lost) {
      write_failures += lost;
      log->warn("store {}: {} write(s) not confirmed by Redis before the connection closed{}",
                shown, lost,
                stopping ? "" : "; the resync after reconnecting shows what Redis holds");
    }
    in_flight = 0;
    queued.clear();
    clearing = false;
    deferred_failure.clear();
  }

  // The session failed: close it, retry after the backoff. Runs user callbacks (on_state) only
  // when called from a hiredis or libuv callback (write() uses fail_later).
  void fail(std::string why) {
    if (state == State::kIdle || state == State::kStopped || state == State::kBackoff) return;
    const bool was_up = up;
    teardown_session();
    up = false;
    if (was_up) down_since_s = now_s();
    state = State::kBackoff;
    uv_timer_start(&phase_timer->h, &on_phase_timer, backoff_ms, 0);
    // While Redis stays away, the same reason is logged once a minute (debug otherwise).
    const std::string line = (was_up ? "disconnected: " : "not connected: ") + why + "; retry in " +
                             std::to_string(backoff_ms) +
                             " ms (lookups go on with the entries held)";
    const uint64_t now = uv_now(loop);
    if (was_up || why != last_why || now - last_why_ms >= 60'000) {
      last_why = why;
      last_why_ms = now;
      log_state(spdlog::level::warn, line);
    } else {
      log->debug("store {}: {}", shown, line);
    }
    backoff_ms = std::min(backoff_ms * 2, kBackoffMaxMs);
    if (was_up && cb.on_state) safe("on_state", [&] { cb.on_state(false); });
  }

  void fail_later(std::string why) {
    if (state != State::kSyncing && state != State::kUp) return;
    if (deferred_failure.empty()) deferred_failure = std::move(why);
    uv_timer_start(&phase_timer->h, &on_phase_timer, 0, 0);
  }

  void maybe_resync() {
    if (state != State::kConnecting || !cmd.ready || !sub.ready) return;
    uv_timer_stop(&phase_timer->h);
    state = State::kSyncing;
    Resync fresh;
    std::swap(rs, fresh);
    rs.started_ms = uv_now(loop);
    uv_timer_start(&ping_timer->h, &on_ping_timer, kPingEveryMs, kPingEveryMs);
    if (!send(cmd, Op::kScan, {"SCAN", "0", "MATCH", scan_pattern, "COUNT", kScanCount}))
      fail("cannot send SCAN");
  }

  bool over_budget(uint64_t more_entries, uint64_t more_bytes) {
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

  void handle_reply(Conn& c, Pending& p, redisReply* r) {
    static const char* const kNames[] = {"AUTH", "SELECT", "PING", "PING",
                                         "SCAN", "MGET",   "EXEC", "SCAN"};
    const char* name = kNames[static_cast<int>(p.op)];
    if (r->type == REDIS_REPLY_ERROR && p.op != Op::kExec && p.op != Op::kClearScan)
      return fail(std::string(c.sub ? "subscriber " : "") + name + ": " +
                  util::printable(reply_text(r), 200));
    switch (p.op) {
      case Op::kAuth:
      case Op::kSelect:
        return;
      case Op::kReady:
        c.ready = true;
        return maybe_resync();
      case Op::kPing:
        ping_out = false;
        return;
      case Op::kScan:
        return on_scan(r);
      case Op::kMget:
        return on_mget(p, r);
      case Op::kExec:
        return on_exec(r);
      case Op::kClearScan:
        return on_clear_scan(r);
    }
  }

  // [cursor, [key...]], checked.
  static bool scan_reply(redisReply* r, std::string_view* cursor) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) return false;
    if (r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY)
      return false;
    for (size_t i = 0; i < r->element[1]->elements; ++i)
      if (r->element[1]->element[i]->type != REDIS_REPLY_STRING) return false;
    *cursor = reply_text(r->element[0]);
    return !cursor->empty();
  }

  void on_scan(redisReply* r) {
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
      return maybe_finish_resync();
    }
    if (!send(cmd, Op::kScan,
              {"SCAN", std::string(cursor), "MATCH", scan_pattern, "COUNT", kScanCount}))
      fail("cannot send SCAN");
  }

  void on_mget(Pending& p, redisReply* r) {
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
    maybe_finish_resync();
  }

  void maybe_finish_resync() {
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

  void handle_sub(redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
      return;
    const std::string_view kind = reply_text(r->element[0]);
    if (kind == "subscribe") {
      sub.ready = true;
      return maybe_resync();
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

  // -- writes --

  std::string down_text() const {
    return "store " + shown + " disconnected since " + iso_time(down_since_s);
  }

  bool write(const Change& c, std::string* err) {
    auto refuse = [&](std::string e) {
      if (err) *err = std::move(e);
      return false;
    };
    if (state != State::kUp || !up) return refuse(down_text());
    if (!store_format::valid_list_name(c.entry.list))
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

  bool issue(const Change& c) {
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

  void write_failed(const std::string& why) {
    ++write_failures;
    log_state(spdlog::level::warn, "write failed: " + why);
  }

  void on_exec(redisReply* r) {
    if (in_flight) --in_flight;
    if (r->type == REDIS_REPLY_ERROR) return write_failed(util::printable(reply_text(r), 200));
    if (r->type != REDIS_REPLY_ARRAY) return write_failed("transaction aborted");
    for (size_t i = 0; i < r->elements; ++i)
      if (r->element[i]->type == REDIS_REPLY_ERROR)
        return write_failed(util::printable(reply_text(r->element[i]), 200));
  }

  void on_clear_scan(redisReply* r) {
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
      ok = ok && send(cmd, Op::kClearScan,
                      {"SCAN", std::string(cursor), "MATCH",
                       glob_escape(entry_head + clear_change.entry.list + ":") + "*", "COUNT",
                       kScanCount});
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

  void stop(std::function<void()> done) {
    if (state == State::kStopped) return;
    stopping = true;
    teardown_session();
    state = State::kStopped;
    up = false;
    if (down_since_s == 0) down_since_s = now_s();
    stop_done = std::move(done);
    closing = 0;
    for (TimerBox* t : {phase_timer, ping_timer}) {
      ++closing;
      uv_close(reinterpret_cast<uv_handle_t*>(&t->h), &on_timer_closed);
    }
  }
};

Store::Store(uv_loop_t* loop, StoreOptions opts, std::shared_ptr<spdlog::logger> log, Callbacks cb)
    : impl_(std::make_unique<Impl>(loop, std::move(opts), std::move(log), std::move(cb))) {}

Store::~Store() = default;

void Store::start() {
  impl_->start();
}
void Store::stop(std::function<void()> done) {
  impl_->stop(std::move(done));
}
bool Store::connected() const {
  return impl_->up;
}
int64_t Store::disconnected_since_s() const {
  return impl_->up ? 0 : impl_->down_since_s;
}
bool Store::write(const Change& c, std::string* err) {
  return impl_->write(c, err);
}
uint64_t Store::write_failures() const {
  return impl_->write_failures;
}
uint64_t Store::changes_received() const {
  return impl_->changes_received;
}
uint64_t Store::resyncs() const {
  return impl_->resyncs;
}
uint64_t Store::reconnects() const {
  return impl_->reconnects;
}
uint64_t Store::malformed() const {
  return impl_->malformed;
}
uint64_t Store::budget_refusals() const {
  return impl_->budget_refusals;
}

}  // namespace spoad::agents::ip_checker
