// Small byte-string helpers shared by the codec, the runtime, the agents and spoa-bench.
// Header-only, no state, no allocation unless a std::string is returned; nothing throws but
// std::bad_alloc. Every function takes bytes: any value of char is allowed in its input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace spoad::util {

// The ASCII blanks: space and horizontal tab (the optional whitespace, OWS, of RFC 9110 5.6.3).
inline constexpr std::string_view kBlanks = " \t";
// Blanks plus CR, LF, VT and FF (what a line of a list file or a YAML scalar may carry).
inline constexpr std::string_view kWhitespace = " \t\r\n\v\f";

// `s` without the leading and trailing bytes found in `set` (default: space and tab). The
// result views `s`.
inline std::string_view trim(std::string_view s, std::string_view set = kBlanks) {
  const size_t b = s.find_first_not_of(set);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(set) - b + 1);
}

// True when `a` and `b` are equal ignoring ASCII case (bytes >= 0x80 compare exactly), as
// HTTP field names compare (RFC 9110 5.1).
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    unsigned char x = static_cast<unsigned char>(a[i]), y = static_cast<unsigned char>(b[i]);
    if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

// True for a name as the configuration accepts it (an agent's name, an ip-checker list's): 1-64
// bytes among A-Z a-z 0-9 _ - . (so that it fits in a store key, a metrics label and a CLI word
// unquoted).
inline bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

// The value 0-15 of one hex digit, or -1. Uppercase digits are accepted only when `upper`.
inline int hex_digit(char c, bool upper = true) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (upper && c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// `n` bytes at `p` as 2n lowercase hex digits.
inline std::string hex_encode(const void* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const auto* b = static_cast<const unsigned char*>(p);
  std::string out(n * 2, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[b[i] >> 4];
    out[2 * i + 1] = kDigits[b[i] & 15];
  }
  return out;
}
inline std::string hex_encode(std::string_view bytes) {
  return hex_encode(bytes.data(), bytes.size());
}

// Decodes exactly `n` bytes from 2n hex digits into `out`. Returns false, leaving `out`
// partly written, when `hex` is not 2n digits long or holds a non-digit (uppercase digits
// are refused unless `upper`).
inline bool hex_decode(std::string_view hex, uint8_t* out, size_t n, bool upper = true) {
  if (hex.size() != 2 * n) return false;
  for (size_t i = 0; i < n; ++i) {
    const int a = hex_digit(hex[2 * i], upper), b = hex_digit(hex[2 * i + 1], upper);
    if (a < 0 || b < 0) return false;
    out[i] = static_cast<uint8_t>(a << 4 | b);
  }
  return true;
}

// Decodes an even number of hex digits into `*out` (replaced). Returns false on an odd
// length or a non-digit, leaving `*out` unspecified.
inline bool hex_decode(std::string_view hex, std::string* out, bool upper = true) {
  if (hex.size() % 2) return false;
  out->assign(hex.size() / 2, '\0');
  return hex_decode(hex, reinterpret_cast<uint8_t*>(out->data()), out->size(), upper);
}

// Decodes %XX escapes (two hex digits, either case) into `*out` (replaced); every other byte,
// '+' included, is copied as it is. Returns false on a '%' not followed by two hex digits,
// leaving `*out` unspecified. Used for the userinfo of a URL (RFC 3986 2.1) and W3C baggage
// values (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS).
inline bool percent_decode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      *out += in[i];
      continue;
    }
    uint8_t byte = 0;
    if (!hex_decode(in.substr(i + 1, 2), &byte, 1)) return false;
    *out += static_cast<char>(byte);
    i += 2;
  }
  return true;
}

}  // namespace spoad::util
