#include "agents/ip-checker/runtime_entries.h"

#include <algorithm>
#include <stdexcept>
#include <tuple>

namespace spoad::agents::ip_checker {

namespace {

constexpr size_t kMaxGroups = 65534;  // Matcher::build's limit on lists
constexpr char kMagic[4] = {'I', 'P', 'R', 'T'};
constexpr uint8_t kVersion = 1;
constexpr uint8_t kFlagV6 = 1;
constexpr uint8_t kFlagAllow = 2;
// u16 list, u8 flags, u8 len, 4-byte address, u8 score, i64 expires, u16 comment length.
constexpr size_t kMinEntryBytes = 2 + 1 + 1 + 4 + 1 + 8 + 2;

// An address and prefix length in the 128-bit form the Matcher compares (IPv4 as
// ::ffff:a.b.c.d).
U128 wide(const Address& a) {
  return a.v6 ? a.bits : (kMappedTop96 << 32) | a.v4();
}
unsigned wide_len(bool v6, uint8_t len) {
  return v6 ? len : len + 96u;
}

void put_u8(std::string& out, uint8_t v) {
  out.push_back(static_cast<char>(v));
}
void put_be(std::string& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Reads big-endian fields from a byte string; every read checks the length first.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  uint64_t be(size_t bytes, const char* what) {
    need(bytes, what);
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; ++i)
      v = (v << 8) | static_cast<uint8_t>(b_[pos_ + i]);
    pos_ += bytes;
    return v;
  }
  std::string_view bytes(size_t n, const char* what) {
    need(n, what);
    const std::string_view s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  size_t left() const { return b_.size() - pos_; }

 private:
  void need(size_t n, const char* what) {
    if (left() < n) throw std::runtime_error(std::string("pool state: truncated ") + what);
  }
  std::string_view b_;
  size_t pos_ = 0;
};

}  // namespace

bool RuntimeEntries::Key::operator<(const Key& o) const {
  return std::tie(list, v6, bits, len) < std::tie(o.list, o.v6, o.bits, o.len);
}

const char* RuntimeEntries::status_name(Status s) {
  switch (s) {
    case Status::kApplied:
      return "applied";
    case Status::kNotFound:
      return "no such entry";
    case Status::kUnknownList:
      return "unknown list";
    case Status::kWrongKind:
      return "wrong kind of list";
    case Status::kInvalid:
      return "invalid entry";
    case Status::kExpired:
      return "already expired";
    case Status::kFull:
      return "too many entries";
  }
  return "?";
}

RuntimeEntries::RuntimeEntries(std::vector<ListInfo> lists, size_t max_entries)
    : lists_(std::move(lists)), max_entries_(max_entries), counts_(lists_.size(), 0) {
  for (size_t i = 0; i < lists_.size(); ++i)
    index_.emplace(lists_[i].name, static_cast<int32_t>(i));
}

int32_t RuntimeEntries::list_index(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? -1 : it->second;
}

size_t RuntimeEntries::size(int32_t list) const {
  if (list < 0 || static_cast<size_t>(list) >= counts_.size()) return 0;
  return counts_[static_cast<size_t>(list)];
}

RuntimeEntries::Status RuntimeEntries::validate(const Change& c, int64_t now_s, int32_t* list,
                                                Key* key) const {
  const RuntimeEntry& e = c.entry;
  *list = list_index(e.list);
  if (*list < 0) return Status::kUnknownList;
  if (c.kind == Change::Kind::kClear) return Status::kApplied;
  const unsigned bits = e.prefix.addr.v6 ? 128 : 32;
  if (e.prefix.len > bits) return Status::kInvalid;
  key->list = static_cast<uint32_t>(*list);
  key->v6 = e.prefix.addr.v6;
  key->bits = e.prefix.addr.bits & ~host_mask(e.prefix.len, bits);
  if (!key->v6) key->bits &= 0xffffffffu;
  key->len = e.prefix.len;
  if (c.kind == Change::Kind::kDel) return map_.count(*key) ? Status::kApplied : Status::kNotFound;
  const ListInfo& info = lists_[static_cast<size_t>(*list)];
  if (e.allow != info.allow) return Status::kWrongKind;
  if ((!e.allow && e.score > 100) || e.comment.size() > kMaxComment) return Status::kInvalid;
  if (e.expires_s != 0 && e.expires_s <= now_s) return Status::kExpired;
  const auto it = map_.find(*key);
  const uint8_t score = e.allow ? 0 : e.score;
  if (it == map_.end() && map_.size() >= max_entries_) return Status::kFull;
  const bool same_group = it != map_.end() && it->second.score == score;
  if (!same_group && !groups_.count(group_of(key->list, score)) && groups_.size() >= kMaxGroups)
    return Status::kFull;
  return Status::kApplied;
}

RuntimeEntries::Status RuntimeEntries::check(const Change& c, int64_t now_s) const {
  int32_t list = -1;
  Key key;
  return validate(c, now_s, &list, &key);
}

void RuntimeEntries::erase(std::map<Key, Value>::iterator it) {
  const Key& k = it->first;
  if (it->second.expires_s != 0) expiry_.erase({it->second.expires_s, &k});
  const auto g = groups_.find(group_of(k.list, it->second.score));
  if (g != groups_.end() && --g->second == 0) groups_.erase(g);
  --counts_[k.list];
  map_.erase(it);
}

RuntimeEntries::Status RuntimeEntries::apply(const Change& c, int64_t now_s, size_t* removed) {
  if (removed) *removed = 0;
  int32_t list = -1;
  Key key;
  const Status st = validate(c, now_s, &list, &key);
  if (st == Status::kExpired) {  // as Redis does for a SET with a past EXPIREAT
    const auto it = map_.find(key);
    if (it != map_.end()) {
      erase(it);
      if (removed) *removed = 1;
    }
  }
  if (st != Status::kApplied) return st;
  switch (c.kind) {
    case Change::Kind::kAdd: {
      const auto it = map_.find(key);
      if (it != map_.end()) erase(it);
      Value v;
      v.expires_s = c.entry.expires_s;
      v.score = c.entry.allow ? 0 : c.entry.score;
      if (!c.entry.comment.empty())
        v.comment = std::make_unique<const std::string>(c.entry.comment);
      ++groups_[group_of(key.list, v.score)];
      ++counts_[key.list];
      const auto ins = map_.emplace(key, std::move(v)).first;
      if (ins->second.expires_s != 0) expiry_.insert({ins->second.expires_s, &ins->first});
      break;
    }
    case Change::Kind::kDel:
      erase(map_.find(key));
      if (removed) *removed = 1;
      break;
    case Change::Kind::kClear: {
      Key lo;
      lo.list = static_cast<uint32_t>(list);
      size_t n = 0;
      for (auto it = map_.lower_bound(lo); it != map_.end() && it->first.list == lo.list; ++n)
        erase(it++);
      if (removed) *removed = n;
      break;
    }
  }
  return Status::kApplied;
}

RuntimeEntries::Replaced RuntimeEntries::replace_all(std::vector<RuntimeEntry> entries,
                                                     int64_t now_s) {
  map_.clear();
  expiry_.clear();
  groups_.clear();
  std::fill(counts_.begin(), counts_.end(), 0);
  Replaced r;
  for (RuntimeEntry& e : entries) {
    Change c;
    c.entry = std::move(e);
    switch (apply(c, now_s)) {
      case Status::kApplied:
        break;
      case Status::kExpired:
        ++r.expired;
        break;
      case Status::kUnknownList:
      case Status::kWrongKind:
        ++r.unknown;
        break;
      case Status::kFull:
        ++r.over_budget;
        break;
      default:
        ++r.invalid;
        break;
    }
  }
  r.kept = map_.size();
  return r;
}

size_t RuntimeEntries::expire(int64_t now_s) {
  size_t n = 0;
  while (!expiry_.empty() && expiry_.begin()->first <= now_s) {
    erase(map_.find(*expiry_.begin()->second));
    ++n;
  }
  return n;
}

RuntimeEntry RuntimeEntries::to_entry(const Key& k, const Value& v) const {
  RuntimeEntry e;
  const ListInfo& info = lists_[k.list];
  e.list = info.name;
  e.prefix.addr = k.v6 ? Address::V6(k.bits) : Address::V4(static_cast<uint32_t>(k.bits));
  e.prefix.len = k.len;
  e.allow = info.allow;
  e.score = v.score;
  e.expires_s = v.expires_s;
  if (v.comment) e.comment = *v.comment;
  return e;
}

std::vector<RuntimeEntry> RuntimeEntries::entries(int32_t list, size_t max) const {
  std::vector<RuntimeEntry> out;
  if (list < 0 || static_cast<size_t>(list) >= lists_.size()) return out;
  Key lo;
  lo.list = static_cast<uint32_t>(list);
  for (auto it = map_.lower_bound(lo);
       it != map_.end() && it->first.list == lo.list && out.size() < max; ++it)
    out.push_back(to_entry(it->first, it->second));
  return out;
}

std::vector<RuntimeEntry> RuntimeEntries::all() const {
  std::vector<RuntimeEntry> out;
  out.reserve(map_.size());
  for (const auto& [k, v] : map_)
    out.push_back(to_entry(k, v));
  return out;
}

std::optional<RuntimeEntry> RuntimeEntries::deciding_entry(int32_t list, const Address& a) const {
  if (list < 0 || static_cast<size_t>(list) >= lists_.size()) return std::nullopt;
  const U128 x = wide(a);
  Key lo;
  lo.list = static_cast<uint32_t>(list);
  const std::pair<const Key, Value>* best = nullptr;
  unsigned best_len = 0;
  for (auto it = map_.lower_bound(lo); it != map_.end() && it->first.list == lo.list; ++it) {
    const Key& k = it->first;
    const unsigned len = wide_len(k.v6, k.len);
    const U128 start = k.v6 ? k.bits : (kMappedTop96 << 32) | k.bits;
    if (((start ^ x) & ~host_mask(len, 128)) != 0) continue;
    if (best && (it->second.score < best->second.score ||
                 (it->second.score == best->second.score && len <= best_len)))
      continue;
    best = &*it;
    best_len = len;
  }
  if (!best) return std::nullopt;
  return to_entry(best->first, best->second);
}

std::shared_ptr<const Overlay> RuntimeEntries::build_overlay() const {
  auto ov = std::make_shared<Overlay>();
  ov->entries = map_.size();
  if (map_.empty()) return ov;
  // groups_ is ordered by (list, score): one Matcher list each.
  std::vector<ListInfo> infos;
  std::vector<PrefixSet> sets;
  std::unordered_map<uint32_t, size_t> slot;
  infos.reserve(groups_.size());
  sets.resize(groups_.size());
  for (const auto& [g, n] : groups_) {
    const uint32_t list = g / 128;
    ListInfo info = lists_[list];
    info.score = static_cast<uint8_t>(g % 128);
    slot.emplace(g, infos.size());
    sets[infos.size()].v4.reserve(n);
    infos.push_back(std::move(info));
    ov->list_of.push_back(static_cast<int32_t>(list));
  }
  for (const auto& [k, v] : map_) {
    PrefixSet& s = sets[slot.at(group_of(k.list, v.score))];
    if (k.v6)
      s.v6.push_back({k.bits, k.len});
    else
      s.v4.push_back({static_cast<uint32_t>(k.bits), k.len});
  }
  std::vector<Matcher::Input> inputs;
  inputs.reserve(infos.size());
  for (size_t i = 0; i < infos.size(); ++i)
    inputs.push_back({&infos[i], &sets[i]});
  ov->matcher = Matcher::build(inputs);
  return ov;
}

std::string RuntimeEntries::encode(size_t max_bytes, bool* dropped_comments) const {
  if (dropped_comments) *dropped_comments = false;
  for (int pass = 0; pass < 2; ++pass) {
    const bool comments = pass == 0;
    std::string out(kMagic, sizeof(kMagic));
    put_u8(out, kVersion);
    put_be(out, lists_.size(), 4);
    for (const ListInfo& l : lists_) {
      const size_t n = std::min<size_t>(l.name.size(), 255);
      put_u8(out, static_cast<uint8_t>(n));
      out.append(l.name, 0, n);
    }
    put_be(out, map_.size(), 4);
    bool fits = true;
    for (const auto& [k, v] : map_) {
      put_be(out, k.list, 2);
      put_u8(out,
             static_cast<uint8_t>((k.v6 ? kFlagV6 : 0) | (lists_[k.list].allow ? kFlagAllow : 0)));
      put_u8(out, k.len);
      if (k.v6) {
        put_be(out, static_cast<uint64_t>(k.bits >> 64), 8);
        put_be(out, static_cast<uint64_t>(k.bits), 8);
      } else {
        put_be(out, static_cast<uint32_t>(k.bits), 4);
      }
      put_u8(out, v.score);
      put_be(out, static_cast<uint64_t>(v.expires_s), 8);
      const size_t c = comments && v.comment ? v.comment->size() : 0;
      put_be(out, c, 2);
      if (c) out.append(*v.comment);
      if (comments && out.size() > max_bytes) {
        fits = false;
        break;
      }
    }
    if (fits) return out;
    if (dropped_comments) *dropped_comments = true;
  }
  return {};  // not reached: the second pass always returns
}

std::vector<RuntimeEntry> RuntimeEntries::decode(std::string_view bytes) {
  Reader r(bytes);
  if (r.bytes(sizeof(kMagic), "header") != std::string_view(kMagic, sizeof(kMagic)))
    throw std::runtime_error("pool state: not ip-checker runtime entries (bad magic)");
  const uint64_t version = r.be(1, "header");
  if (version != kVersion)
    throw std::runtime_error("pool state: unsupported version " + std::to_string(version));
  const uint64_t nlists = r.be(4, "list count");
  if (nlists > r.left()) throw std::runtime_error("pool state: list count too large");
  std::vector<std::string> names;
  names.reserve(nlists);
  for (uint64_t i = 0; i < nlists; ++i)
    names.emplace_back(r.bytes(r.be(1, "list name"), "list name"));
  const uint64_t n = r.be(4, "entry count");
  if (n > r.left() / kMinEntryBytes) throw std::runtime_error("pool state: entry count too large");
  std::vector<RuntimeEntry> out;
  out.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    RuntimeEntry e;
    const uint64_t list = r.be(2, "entry");
    if (list >= names.size()) throw std::runtime_error("pool state: list index out of range");
    e.list = names[list];
    const uint64_t flags = r.be(1, "entry");
    if (flags & ~uint64_t{kFlagV6 | kFlagAllow})
      throw std::runtime_error("pool state: unknown entry flags");
    const bool v6 = flags & kFlagV6;
    e.allow = flags & kFlagAllow;
    const uint64_t len = r.be(1, "entry");
    if (len > (v6 ? 128u : 32u)) throw std::runtime_error("pool state: prefix length out of range");
    if (v6) {
      const U128 hi = r.be(8, "address");
      e.prefix.addr = Address::V6((hi << 64) | r.be(8, "address"));
    } else {
      e.prefix.addr = Address::V4(static_cast<uint32_t>(r.be(4, "address")));
    }
    e.prefix.len = static_cast<uint8_t>(len);
    if (e.prefix.addr.bits & host_mask(static_cast<unsigned>(len), v6 ? 128 : 32))
      throw std::runtime_error("pool state: host bits set in a prefix");
    const uint64_t score = r.be(1, "score");
    if (score > 100) throw std::runtime_error("pool state: score above 100");
    e.score = static_cast<uint8_t>(score);
    e.expires_s = static_cast<int64_t>(r.be(8, "expiry"));
    if (e.expires_s < 0) throw std::runtime_error("pool state: negative expiry");
    const uint64_t clen = r.be(2, "comment");
    if (clen > kMaxComment) throw std::runtime_error("pool state: comment too long");
    e.comment = std::string(r.bytes(clen, "comment"));
    out.push_back(std::move(e));
  }
  if (r.left() != 0) throw std::runtime_error("pool state: trailing bytes");
  return out;
}

}  // namespace spoad::agents::ip_checker
