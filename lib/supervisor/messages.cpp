#include "supervisor/messages.h"

#include <iterator>
#include <type_traits>

namespace spoad::supervisor::msg {

namespace {

constexpr uint8_t kFlagFd = 1;
enum StateKind : uint8_t { kBool = 0, kUint = 1, kInt = 2, kBytes = 3 };

// ---- writing --------------------------------------------------------------------------------

struct Writer {
  std::string& out;
  void u8(uint8_t v) { out.push_back(static_cast<char>(v)); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      u8(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    u8(static_cast<uint8_t>(v));
  }
  void sint(int64_t v) {
    const uint64_t u = static_cast<uint64_t>(v);
    varint((u << 1) ^ (v < 0 ? ~uint64_t{0} : 0));
  }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void bytes(std::string_view s) {
    varint(s.size());
    out.append(s);
  }
  void list(const std::vector<std::string>& l) {
    varint(l.size());
    for (const auto& s : l)
      bytes(s);
  }
  void state(const ConnState& st) {
    varint(st.size());
    for (const StateField& f : st) {
      bytes(f.key);
      if (const bool* b = std::get_if<bool>(&f.value)) {
        u8(kBool);
        boolean(*b);
      } else if (const uint64_t* u = std::get_if<uint64_t>(&f.value)) {
        u8(kUint);
        varint(*u);
      } else if (const int64_t* i = std::get_if<int64_t>(&f.value)) {
        u8(kInt);
        sint(*i);
      } else {
        u8(kBytes);
        bytes(std::get<std::string>(f.value));
      }
    }
  }

  void fields(const Init& m) {
    bytes(m.config);
    bytes(m.file);
    varint(m.agent);
    sint(m.relative_pid);
    sint(m.generation);
    sint(m.listen_fd);
    bytes(m.log_level);
  }
  void fields(const CliRequest& m) {
    varint(m.id);
    list(m.words);
  }
  void fields(const SoftStop& m) {
    varint(m.grace_ms);
    u8(static_cast<uint8_t>(m.mode));
  }
  void fields(const Succession& m) { list(m.engines); }
  void fields(const Adopt& m) {
    bytes(m.agent);
    state(m.state);
  }
  void fields(const HandoffAck&) {}
  void fields(const Ready& m) {
    sint(m.pid);
    bytes(m.version);
  }
  void fields(const Error& m) { bytes(m.message); }
  void fields(const CliReply& m) {
    varint(m.id);
    bytes(m.output);
  }
  void fields(const Handoff& m) {
    bytes(m.agent);
    state(m.state);
  }
  void fields(const Engine& m) { bytes(m.id); }
  void fields(const Listen& m) {
    varint(m.fds.size());
    for (int64_t fd : m.fds)
      sint(fd);
  }
  void fields(const Takeover& m) {
    sint(m.pid);
    bytes(m.version);
  }
  void fields(const Listener& m) {
    bytes(m.address);
    varint(m.slot);
    varint(m.inode);
  }
  void fields(const Listeners& m) {
    sint(m.pid);
    varint(m.count);
  }
  void fields(const Serving& m) { sint(m.pid); }
  void fields(const Metrics& m) { sint(m.fd); }
  void fields(const CliResult& m) {
    varint(m.id);
    boolean(m.ok);
    bytes(m.text);
  }
  void fields(const PoolState& m) {
    bytes(m.agent);
    bytes(m.state);
  }
};

// ---- reading --------------------------------------------------------------------------------

// Reads fields from one frame's body; the first failure sets `ok` false and every later read
// returns an empty value, so a decoder reads all its fields and checks `ok` once.
struct Reader {
  std::string_view in;
  bool ok = true;

  bool fail() {
    ok = false;
    in = {};
    return false;
  }
  uint8_t u8() {
    if (in.empty()) return fail(), 0;
    const auto v = static_cast<uint8_t>(in[0]);
    in.remove_prefix(1);
    return v;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in.empty()) return fail(), 0;
      const auto b = static_cast<uint8_t>(in[0]);
      in.remove_prefix(1);
      if (shift == 63 && b > 1) return fail(), 0;  // more than 64 bits
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return v;
    }
    return fail(), 0;
  }
  int64_t sint() {
    const uint64_t u = varint();
    return static_cast<int64_t>((u >> 1) ^ (~(u & 1) + 1));
  }
  bool boolean() {
    const uint8_t b = u8();
    if (b > 1) fail();
    return b == 1;
  }
  std::string bytes() {
    const uint64_t n = varint();
    if (n > in.size()) return fail(), std::string();
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
  std::vector<std::string> list() {
    std::vector<std::string> l;
    const uint64_t n = varint();
    if (n > in.size()) return fail(), l;  // every item takes one byte at least
    for (uint64_t i = 0; i < n && ok; ++i)
      l.push_back(bytes());
    return l;
  }
  ConnState state() {
    ConnState st;
    const uint64_t n = varint();
    if (n > in.size() / 3) return fail(), st;  // key length, kind, value: 3 bytes at least
    for (uint64_t i = 0; i < n && ok; ++i) {
      StateField f;
      f.key = bytes();
      switch (u8()) {
        case kBool:
          f.value = boolean();
          break;
        case kUint:
          f.value = varint();
          break;
        case kInt:
          f.value = sint();
          break;
        case kBytes:
          f.value = bytes();
          break;
        default:
          fail();
      }
      st.push_back(std::move(f));
    }
    return st;
  }

  void fields(Init& m) {
    m.config = bytes();
    m.file = bytes();
    m.agent = varint();
    m.relative_pid = sint();
    m.generation = sint();
    m.listen_fd = sint();
    m.log_level = bytes();
  }
  void fields(CliRequest& m) {
    m.id = varint();
    m.words = list();
  }
  void fields(SoftStop& m) {
    m.grace_ms = varint();
    const uint8_t mode = u8();
    if (mode > static_cast<uint8_t>(StopMode::kWait)) fail();
    m.mode = static_cast<StopMode>(mode);
  }
  void fields(Succession& m) { m.engines = list(); }
  void fields(Adopt& m) {
    m.agent = bytes();
    m.state = state();
  }
  void fields(HandoffAck&) {}
  void fields(Ready& m) {
    m.pid = sint();
    m.version = bytes();
  }
  void fields(Error& m) { m.message = bytes(); }
  void fields(CliReply& m) {
    m.id = varint();
    m.output = bytes();
  }
  void fields(Handoff& m) {
    m.agent = bytes();
    m.state = state();
  }
  void fields(Engine& m) { m.id = bytes(); }
  void fields(Listen& m) {
    const uint64_t n = varint();
    if (n > in.size()) return void(fail());  // every item takes one byte at least
    for (uint64_t i = 0; i < n && ok; ++i)
      m.fds.push_back(sint());
  }
  void fields(Takeover& m) {
    m.pid = sint();
    m.version = bytes();
  }
  void fields(Listener& m) {
    m.address = bytes();
    m.slot = varint();
    m.inode = varint();
  }
  void fields(Listeners& m) {
    m.pid = sint();
    m.count = varint();
  }
  void fields(Serving& m) { m.pid = sint(); }
  void fields(Metrics& m) { m.fd = sint(); }
  void fields(CliResult& m) {
    m.id = varint();
    m.ok = boolean();
    m.text = bytes();
  }
  void fields(PoolState& m) {
    m.agent = bytes();
    m.state = bytes();
  }
};

// The wire type of each alternative: its index in Message + 1.
uint8_t type_of(const Message& m) {
  return static_cast<uint8_t>(m.index() + 1);
}

template <size_t I = 0>
bool read_as(uint8_t type, Reader& r, Message& out) {
  if constexpr (I < std::variant_size_v<Message>) {
    if (type != I + 1) return read_as<I + 1>(type, r, out);
    std::variant_alternative_t<I, Message> m;
    r.fields(m);
    if (!r.ok || !r.in.empty()) return false;
    out = std::move(m);
    return true;
  } else {
    return false;
  }
}

}  // namespace

const char* name(const Message& m) {
  static const char* const names[] = {
      "init",      "cli-request", "soft-stop", "succession", "adopt",     "handoff-ack", "ready",
      "error",     "cli-reply",   "handoff",   "engine",     "listen",    "takeover",    "listener",
      "listeners", "serving",     "metrics",   "cli-result", "pool-state"};
  static_assert(std::size(names) == std::variant_size_v<Message>);
  return names[m.index()];
}

bool carries_fd(const Message& m) {
  return std::holds_alternative<Adopt>(m) || std::holds_alternative<Handoff>(m) ||
         std::holds_alternative<Listener>(m);
}

bool encode(const Message& m, std::string& out) {
  const size_t start = out.size();
  Writer w{out};
  out.append(4, '\0');
  w.u8(carries_fd(m) ? kFlagFd : 0);
  w.u8(type_of(m));
  std::visit([&w](const auto& x) { w.fields(x); }, m);
  const size_t n = out.size() - start - 4;
  if (n > kMaxMessage) {
    out.resize(start);
    return false;
  }
  for (int i = 0; i < 4; ++i)
    out[start + static_cast<size_t>(i)] = static_cast<char>((n >> (24 - 8 * i)) & 0xff);
  return true;
}

Decoded decode(std::string_view in) {
  Decoded d;
  if (in.size() < 4) return d;
  uint64_t n = 0;
  for (int i = 0; i < 4; ++i)
    n = (n << 8) | static_cast<uint8_t>(in[static_cast<size_t>(i)]);
  if (n > kMaxMessage) {
    d.status = Decoded::Status::kTooBig;
    d.error = "frame longer than the maximum";
    return d;
  }
  if (in.size() - 4 < n) return d;
  d.used = 4 + n;
  d.status = Decoded::Status::kBadFrame;
  if (n < 2) {
    d.error = "frame shorter than its header";
    return d;
  }
  const auto flags = static_cast<uint8_t>(in[4]);
  const auto type = static_cast<uint8_t>(in[5]);
  d.with_fd = flags & kFlagFd;
  if (flags & ~kFlagFd) {
    d.error = "unknown flags";
    return d;
  }
  Reader r{in.substr(6, n - 2)};
  if (!read_as(type, r, d.message)) {
    d.error = type == 0 || type > std::variant_size_v<Message> ? "unknown message type"
                                                               : "malformed message";
    return d;
  }
  if (carries_fd(d.message) != d.with_fd) {
    d.error = "socket flag does not match the message type";
    return d;
  }
  d.status = Decoded::Status::kMessage;
  return d;
}

ConnState state_from_json(const nlohmann::json& state) {
  ConnState st;
  if (!state.is_object()) return st;
  for (const auto& [k, v] : state.items()) {
    StateField f{k, false};
    if (v.is_boolean())
      f.value = v.get<bool>();
    else if (v.is_number_unsigned())
      f.value = v.get<uint64_t>();
    else if (v.is_number_integer())
      f.value = v.get<int64_t>();
    else if (v.is_string())
      f.value = v.get<std::string>();
    else
      continue;
    st.push_back(std::move(f));
  }
  return st;
}

nlohmann::json state_to_json(const ConnState& st) {
  nlohmann::json out = nlohmann::json::object();
  for (const StateField& f : st)
    std::visit([&](const auto& v) { out[f.key] = v; }, f.value);
  return out;
}

}  // namespace spoad::supervisor::msg
