// The `store:` options of the ip-checker (store.h: parse_store_options) and the redis:// URL
// a Store connects to.
#include <arpa/inet.h>

#include <cctype>

#include "agents/ip-checker/store_impl.h"
#include "util/text.h"

namespace spoad::agents::ip_checker {

namespace store_detail {

bool parse_url(std::string_view url, Url* u, std::string* why) {
  auto starts = [&](std::string_view p) { return util::iequals(url.substr(0, p.size()), p); };
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
    if (!util::percent_decode(info.substr(0, colon), &u->user) ||
        !util::percent_decode(info.substr(colon + 1), &u->password))
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

}  // namespace store_detail

StoreOptions parse_store_options(config::Options& o) {
  StoreOptions s;
  if (!o.has("store")) return s;
  config::Options m = o.map("store");
  const auto url = m.str("url");
  if (!url) m.fail("", "missing key \"url\" (redis://[:password@]host[:port][/db])");
  store_detail::Url u;
  std::string why;
  if (!store_detail::parse_url(*url, &u, &why)) m.fail("url", why);
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

}  // namespace spoad::agents::ip_checker
