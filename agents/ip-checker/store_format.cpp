// The text forms of the ip-checker's shared store (store.h, store_format): entry keys and
// values, and the change messages of its pub/sub channel. Pure functions: no I/O, no state.
#include <charconv>
#include <vector>

#include "agents/ip-checker/store_impl.h"
#include "util/text.h"

namespace spoad::agents::ip_checker {

namespace {

using store_detail::parse_dec;

// Longest value or message: "<origin> add <list> <prefix> d 100 <expires> <hex>".
constexpr size_t kMaxText = 17 + 4 + 65 + 44 + 2 + 4 + 20 + 1 + 2 * kMaxComment;

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
        !util::hex_decode(f[at + 3], &e->comment, /*upper=*/false))
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
    out += util::hex_encode(e.comment);
  }
}

}  // namespace

bool store_detail::parse_dec(std::string_view s, uint64_t max, uint64_t* out) {
  if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
  uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return false;
  *out = v;
  return true;
}

namespace store_format {

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
  uint8_t be[8];  // big-endian: 16 hex digits, most significant first
  for (int i = 7; i >= 0; --i, origin >>= 8)
    be[i] = static_cast<uint8_t>(origin & 0xff);
  std::string m = util::hex_encode(be, sizeof(be));
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
  uint8_t be[8];
  if (!util::hex_decode(f[0], be, sizeof(be), /*upper=*/false)) return *why = "bad origin", false;
  uint64_t o = 0;
  for (uint8_t b : be)
    o = o << 8 | b;
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

}  // namespace spoad::agents::ip_checker
