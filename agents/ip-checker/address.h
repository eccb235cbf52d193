// IP addresses and prefixes for the ip-checker agent: parsing from text and from SPOP bytes,
// and formatting. No I/O, no allocation except in the to_string() functions.
//
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 2.5.5.2) is the IPv4 address a.b.c.d:
// parse_address() and the address_from_*() functions return it as IPv4, as HAProxy does when
// it compares an address with an IPv4 pattern.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace spoad::agents::ip_checker {

using U128 = unsigned __int128;

// ::ffff:0:0/96 shifted right by 32: the top 96 bits of every IPv4-mapped IPv6 address.
inline constexpr U128 kMappedTop96 = 0xffff;

// One address. `bits` holds the address in host order: the low 32 bits for IPv4, all 128 for
// IPv6.
struct Address {
  bool v6 = false;
  U128 bits = 0;

  uint32_t v4() const { return static_cast<uint32_t>(bits); }
  // True for an IPv6 address in ::ffff:0:0/96.
  bool is_v4_mapped() const { return v6 && (bits >> 32) == kMappedTop96; }
  bool operator==(const Address&) const = default;

  static Address V4(uint32_t a) { return {false, a}; }
  static Address V6(U128 a) { return {true, a}; }
};

// A CIDR block: `addr` with its host bits cleared, and the prefix length in bits (0-32 for
// IPv4, 0-128 for IPv6). Prefixes keep the family they were written in: ::ffff:1.2.3.0/120
// stays IPv6 (the Matcher treats it as 1.2.3.0/24).
struct Prefix {
  Address addr;
  uint8_t len = 0;
  bool operator==(const Prefix&) const = default;
};

// Parses "192.0.2.1", "2001:db8::1" or "::ffff:192.0.2.1" (returned as IPv4). Dotted quads
// must have four decimal parts 0-255 without leading zeros. No surrounding spaces, brackets,
// ports or zone ids. Returns false when `s` is not an address.
bool parse_address(std::string_view s, Address* out);

// Parses an address ("192.0.2.1" means /32, "2001:db8::1" means /128) or a CIDR
// ("192.0.2.0/24", "2001:db8::/32"). Host bits set beyond the prefix length are cleared
// ("10.0.0.1/8" is 10.0.0.0/8) and *masked is set to true (false otherwise). On failure
// returns false and sets *why to a static explanation.
bool parse_prefix(std::string_view s, Prefix* out, bool* masked, const char** why);

// The address in 4 network-order bytes (SPOP IPV4).
Address address_from_v4_bytes(const void* p);
// The address in 16 network-order bytes (SPOP IPV6); IPv4-mapped addresses come back as IPv4.
Address address_from_v6_bytes(const void* p);

// The bit mask of the host part of a `len`-bit prefix in a `bits`-bit address (bits = 32 or
// 128): all ones for len 0, zero for len >= bits.
inline U128 host_mask(unsigned len, unsigned bits) {
  if (len >= bits) return 0;
  const U128 all = bits == 32 ? U128{0xffffffffu} : ~U128{0};
  return all >> len;
}

// "192.0.2.1", "2001:db8::1".
std::string to_string(const Address& a);
// "192.0.2.0/24", "2001:db8::/32".
std::string to_string(const Prefix& p);

}  // namespace spoad::agents::ip_checker
