#include "agents/ip-checker/address.h"

#include <arpa/inet.h>

#include <cstdio>
#include <cstring>

namespace spoad::agents::ip_checker {

namespace {

// Four decimal parts 0-255, no leading zeros (as inet_pton), nothing else.
bool parse_v4(std::string_view s, uint32_t* out) {
  uint32_t a = 0;
  size_t i = 0;
  for (int part = 0; part < 4; ++part) {
    if (part > 0) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
    const size_t start = i;
    unsigned v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i - start < 3) {
      v = v * 10 + static_cast<unsigned>(s[i] - '0');
      ++i;
    }
    const size_t n = i - start;
    if (n == 0 || v > 255 || (n > 1 && s[start] == '0')) return false;
    a = (a << 8) | v;
  }
  if (i != s.size()) return false;
  *out = a;
  return true;
}

U128 load_be128(const unsigned char* b) {
  U128 v = 0;
  for (int i = 0; i < 16; ++i)
    v = (v << 8) | b[i];
  return v;
}

bool parse_v6(std::string_view s, U128* out) {
  // The longest IPv6 text is 45 characters (::ffff:255.255.255.255 and the like).
  char buf[64];
  if (s.empty() || s.size() >= sizeof(buf)) return false;
  for (char c : s) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                    c == ':' || c == '.';
    if (!ok) return false;
  }
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  unsigned char b[16];
  if (inet_pton(AF_INET6, buf, b) != 1) return false;
  *out = load_be128(b);
  return true;
}

bool parse_len(std::string_view s, unsigned max, unsigned* out) {
  if (s.empty() || s.size() > 3) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > max) return false;
  *out = v;
  return true;
}

}  // namespace

bool parse_address(std::string_view s, Address* out) {
  uint32_t v4 = 0;
  if (parse_v4(s, &v4)) {
    *out = Address::V4(v4);
    return true;
  }
  U128 v6 = 0;
  if (!parse_v6(s, &v6)) return false;
  Address a = Address::V6(v6);
  if (a.is_v4_mapped()) a = Address::V4(a.v4());
  *out = a;
  return true;
}

bool parse_prefix(std::string_view s, Prefix* out, bool* masked, const char** why) {
  const size_t slash = s.find('/');
  const std::string_view addr = s.substr(0, slash);
  Prefix p;
  uint32_t v4 = 0;
  U128 v6 = 0;
  if (parse_v4(addr, &v4)) {
    p.addr = Address::V4(v4);
  } else if (parse_v6(addr, &v6)) {
    p.addr = Address::V6(v6);
  } else {
    *why = "not an IPv4 or IPv6 address";
    return false;
  }
  const unsigned bits = p.addr.v6 ? 128 : 32;
  unsigned len = bits;
  if (slash != std::string_view::npos && !parse_len(s.substr(slash + 1), bits, &len)) {
    *why = p.addr.v6 ? "the prefix length must be 0-128" : "the prefix length must be 0-32";
    return false;
  }
  p.len = static_cast<uint8_t>(len);
  const U128 host = host_mask(len, bits);
  *masked = (p.addr.bits & host) != 0;
  p.addr.bits &= ~host;
  *out = p;
  return true;
}

Address address_from_v4_bytes(const void* p) {
  const auto* b = static_cast<const unsigned char*>(p);
  return Address::V4((uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) |
                     uint32_t{b[3]});
}

Address address_from_v6_bytes(const void* p) {
  Address a = Address::V6(load_be128(static_cast<const unsigned char*>(p)));
  if (a.is_v4_mapped()) a = Address::V4(a.v4());
  return a;
}

std::string to_string(const Address& a) {
  char buf[INET6_ADDRSTRLEN];
  if (!a.v6) {
    const uint32_t v = a.v4();
    std::snprintf(buf, sizeof(buf), "%u.%u.%u.%u", v >> 24, (v >> 16) & 255, (v >> 8) & 255,
                  v & 255);
    return buf;
  }
  unsigned char b[16];
  U128 v = a.bits;
  for (int i = 15; i >= 0; --i) {
    b[i] = static_cast<unsigned char>(v & 255);
    v >>= 8;
  }
  inet_ntop(AF_INET6, b, buf, sizeof(buf));
  return buf;
}

std::string to_string(const Prefix& p) {
  return to_string(p.addr) + "/" + std::to_string(p.len);
}

}  // namespace spoad::agents::ip_checker
