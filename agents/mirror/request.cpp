#include "agents/mirror/request.h"

#include <curl/curl.h>

#include <cstdint>
#include <memory>

#include "spop/varint.h"
#include "util/text.h"

namespace spoad::agents::mirror {

namespace {

using util::iequals;
using util::trim;

bool is_tchar(unsigned char c) {
  // RFC 9110 5.6.2: token = 1*tchar
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

bool value_ok(std::string_view v) {
  for (char c : v)
    if (c == '\r' || c == '\n' || c == '\0') return false;
  return true;
}

// Reads <varint length><bytes> at `*pos`; false if truncated or the varint is bad.
bool read_str(std::string_view in, size_t* pos, std::string_view* out) {
  uint64_t len = 0;
  const int n = spop::decode_varint(
      spop::Bytes(reinterpret_cast<const uint8_t*>(in.data()) + *pos, in.size() - *pos), &len);
  if (n <= 0) return false;
  *pos += static_cast<size_t>(n);
  if (len > in.size() - *pos) return false;
  *out = in.substr(*pos, static_cast<size_t>(len));
  *pos += static_cast<size_t>(len);
  return true;
}

bool contains_name(const std::vector<std::string_view>& names, std::string_view n) {
  for (std::string_view x : names)
    if (iequals(x, n)) return true;
  return false;
}

}  // namespace

std::string decode_hdrs_bin(std::string_view in, std::vector<Header>* out) {
  out->clear();
  size_t pos = 0;
  while (pos < in.size()) {
    Header h;
    if (!read_str(in, &pos, &h.name)) return "truncated or malformed header name length";
    if (!read_str(in, &pos, &h.value)) return "truncated or malformed header value";
    if (h.name.empty()) {
      if (!h.value.empty()) return "empty header name with a value";
      if (pos != in.size()) return "bytes after the end of the header list";
      return {};
    }
    if (!is_token(h.name)) return "invalid header name";
    if (!value_ok(h.value)) return "CR, LF or NUL in a header value";
    out->push_back(h);
  }
  return {};
}

std::string decode_hdrs_text(std::string_view in, std::vector<Header>* out) {
  out->clear();
  while (!in.empty()) {
    const size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;  // the end of the header block
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) return "header line without ':'";
    Header h{line.substr(0, colon), trim(line.substr(colon + 1))};
    if (!is_token(h.name)) return "invalid header name";
    if (!value_ok(h.value)) return "CR or NUL in a header value";
    out->push_back(h);
  }
  return {};
}

bool request_target(std::string_view url, std::string* out) {
  // curl_url() refuses these too, but origin-form and "*" do not go through it.
  for (char c : url)
    if (c == '\r' || c == '\n' || c == '\0' || c == ' ' || c == '\t') return false;
  // origin-form and asterisk-form (RFC 9112 3.2.1, 3.2.4) go as they are: curl_url() parses
  // only absolute URLs, and nothing in them needs reducing.
  if (url == "*" || (!url.empty() && url.front() == '/')) {
    *out = url;
    return true;
  }
  // absolute-form (RFC 9112 3.2.2): scheme "://" authority [path-abempty] ["?" query]. curl
  // takes "http:/h/x" (one slash) and reads "http:///x" as host "x" with path "/": require
  // "://" and a non-empty authority first (RFC 9110 4.2.1: an empty host is invalid).
  const size_t sep = url.find("://");
  if (sep == std::string_view::npos || sep == 0 || sep + 3 == url.size() ||
      std::string_view("/?#").find(url[sep + 3]) != std::string_view::npos)
    return false;
  // One parse: any scheme, the path as sent (no dot-segment removal, no re-encoding). curl
  // checks the scheme, the authority (port, host, IPv6 brackets) and refuses the other control
  // bytes and inputs over 8,000,000 bytes. The fragment is dropped: it is no part of a
  // request-target, and curl would not send it.
  const std::unique_ptr<CURLU, void (*)(CURLU*)> h(curl_url(), &curl_url_cleanup);
  if (!h) return false;
  const std::string z(url);  // curl wants a C string
  if (curl_url_set(h.get(), CURLUPART_URL, z.c_str(),
                   CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS) != CURLUE_OK)
    return false;
  char* path = nullptr;
  char* query = nullptr;
  const bool ok = curl_url_get(h.get(), CURLUPART_PATH, &path, 0) == CURLUE_OK;
  const bool has_query = curl_url_get(h.get(), CURLUPART_QUERY, &query, 0) == CURLUE_OK;
  if (ok) {
    *out = path;                                    // "/" when the URL has none
    if (has_query) out->append("?").append(query);  // "http://h/a?" keeps its empty query
  }
  curl_free(path);
  curl_free(query);
  return ok;
}

bool is_hop_by_hop(std::string_view n) {
  static constexpr std::string_view kNames[] = {"connection",
                                                "keep-alive",
                                                "proxy-connection",
                                                "te",
                                                "trailer",
                                                "transfer-encoding",
                                                "upgrade",
                                                "http2-settings",
                                                "proxy-authorization",
                                                "proxy-authenticate",
                                                "expect",
                                                "content-length"};
  for (std::string_view k : kNames)
    if (iequals(n, k)) return true;
  return false;
}

ReplayHeaders build_headers(std::string_view method, const std::vector<Header>& headers,
                            size_t body_size, const HeaderRules& rules) {
  ReplayHeaders r;
  // Headers the Connection header names are hop-by-hop too (RFC 9110 7.6.1).
  std::vector<std::string_view> connection_named;
  bool announced_body = false;
  for (const Header& h : headers) {
    if (iequals(h.name, "connection")) {
      std::string_view v = h.value;
      while (!v.empty()) {
        const size_t comma = v.find(',');
        const std::string_view tok = trim(v.substr(0, comma));
        if (!tok.empty()) connection_named.push_back(tok);
        v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
      }
    } else if (iequals(h.name, "content-length")) {
      announced_body = true;
      const std::string_view v = trim(h.value);
      long long n = 0;
      bool ok = !v.empty() && v.size() <= 18;  // 18 digits cannot overflow a long long
      for (char c : ok ? v : std::string_view()) {
        if (c < '0' || c > '9') {
          ok = false;
          break;
        }
        n = n * 10 + (c - '0');
      }
      r.content_length = ok ? n : -1;
    } else if (iequals(h.name, "transfer-encoding")) {
      announced_body = true;
    }
  }

  bool has_accept = false, has_content_type = false;
  for (const Header& h : headers) {
    if (is_hop_by_hop(h.name) || contains_name(connection_named, h.name)) continue;
    if (!rules.keep_host && iequals(h.name, "host")) continue;
    bool removed = false;
    for (const std::string& x : rules.remove)
      if (iequals(x, h.name)) removed = true;
    if (removed) continue;
    if (iequals(h.name, "accept")) has_accept = true;
    if (iequals(h.name, "content-type")) has_content_type = true;
    std::string line(h.name);
    if (h.value.empty()) {
      line += ';';
    } else {
      line += ": ";
      line += h.value;
    }
    r.lines.push_back(std::move(line));
  }
  for (const auto& [name, value] : rules.add) {
    if (iequals(name, "accept")) has_accept = true;
    if (iequals(name, "content-type")) has_content_type = true;
    r.lines.push_back(value.empty() ? name + ";" : name + ": " + value);
  }

  const bool always_body = method == "POST" || method == "PUT" || method == "PATCH";
  r.has_body = method != "HEAD" && (always_body || body_size > 0 || announced_body);
  if (!has_accept) r.lines.push_back("Accept:");
  if (r.has_body && !has_content_type) r.lines.push_back("Content-Type:");
  r.lines.push_back("Expect:");
  return r;
}

}  // namespace spoad::agents::mirror
