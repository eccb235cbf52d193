#include "options/options.h"

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <utility>

namespace spoad::config {

namespace {

std::string format_error(const std::string& file, int line, const std::string& key,
                         const std::string& msg) {
  std::string s = file;
  if (line > 0) s += ":" + std::to_string(line);
  s += ": ";
  if (!key.empty()) s += key + ": ";
  s += msg;
  return s;
}

bool parse_u64(std::string_view s, uint64_t* v) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

bool is_var_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

}  // namespace

ConfigError::ConfigError(const std::string& file, int line, const std::string& key,
                         const std::string& msg)
    : std::runtime_error(format_error(file, line, key, msg)),
      file_(file),
      line_(line),
      key_(key),
      msg_(msg) {}

std::string expand_env(std::string_view in) {
  std::string out;
  size_t i = 0;
  while (i < in.size()) {
    if (in[i] != '$' || i + 1 >= in.size() || in[i + 1] != '{') {
      out += in[i++];
      continue;
    }
    const size_t close = in.find('}', i + 2);
    if (close == std::string_view::npos) throw std::invalid_argument("unclosed \"${\"");
    std::string_view body = in.substr(i + 2, close - i - 2);
    size_t n = 0;
    while (n < body.size() && is_var_char(body[n]))
      ++n;
    const std::string name(body.substr(0, n));
    if (name.empty() || (n < body.size() && body[n] != '-'))
      throw std::invalid_argument("malformed variable \"${" + std::string(body) + "}\"");
    const char* val = std::getenv(name.c_str());
    if (val)
      out += val;
    else if (n < body.size())
      out += body.substr(n + 1);
    i = close + 1;
  }
  return out;
}

namespace {

// "<digits><unit>" -> the digits times the multiplier of the unit (one of `units`) into *out;
// false if there are no digits, the unit is not listed or the product overflows 64 bits.
bool parse_scaled(std::string_view s,
                  std::initializer_list<std::pair<std::string_view, uint64_t>> units,
                  uint64_t* out) {
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9')
    ++n;
  uint64_t v = 0;
  if (!parse_u64(s.substr(0, n), &v)) return false;
  const std::string_view unit = s.substr(n);
  for (const auto& [name, mult] : units) {
    if (unit != name) continue;
    if (v > std::numeric_limits<uint64_t>::max() / mult) return false;
    *out = v * mult;
    return true;
  }
  return false;
}

}  // namespace

bool parse_duration_ms(std::string_view s, uint64_t* ms) {
  return parse_scaled(
      s, {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}}, ms);
}

bool parse_size(std::string_view s, uint64_t* bytes) {
  if (!s.empty() && (s.back() == 'b' || s.back() == 'B')) s.remove_suffix(1);  // "16kb", "512B"
  constexpr uint64_t k = 1ull << 10, m = 1ull << 20, g = 1ull << 30;
  return parse_scaled(s, {{"", 1}, {"k", k}, {"K", k}, {"m", m}, {"M", m}, {"g", g}, {"G", g}},
                      bytes);
}

Options::Options(YAML::Node node, std::shared_ptr<const std::string> file, std::string path)
    : node_(node), file_(std::move(file)), path_(std::move(path)) {
  if (node_ && !node_.IsNull() && !node_.IsMap()) fail({}, "expected a mapping");
}

std::string Options::key_path(std::string_view key) const {
  if (key.empty()) return path_;
  if (path_.empty()) return std::string(key);
  return path_ + "." + std::string(key);
}

int Options::line(std::string_view key) const {
  if (!key.empty() && node_ && node_.IsMap()) {
    for (const auto& it : node_) {
      if (it.first.Scalar() == key) return it.first.Mark().line + 1;
    }
  }
  if (node_ && node_.Mark().line >= 0) return node_.Mark().line + 1;
  return 0;
}

void Options::fail(std::string_view key, const std::string& msg) const {
  throw ConfigError(*file_, line(key), key_path(key), msg);
}

bool Options::has(std::string_view key) const {
  if (!node_ || !node_.IsMap()) return false;
  for (const auto& it : node_)
    if (it.first.Scalar() == key) return true;
  return false;
}

YAML::Node Options::get(std::string_view key) {
  used_.emplace(key);
  if (!node_ || !node_.IsMap()) return YAML::Node();
  for (const auto& it : node_)
    if (it.first.Scalar() == key) return it.second;
  return YAML::Node();
}

std::string Options::scalar(std::string_view key, const YAML::Node& n) const {
  if (!n.IsScalar()) fail(key, "expected a single value");
  try {
    return expand_env(n.Scalar());
  } catch (const std::invalid_argument& e) {
    fail(key, e.what());
  }
}

std::optional<std::string> Options::str(std::string_view key) {
  YAML::Node n = get(key);
  if (!n || n.IsNull()) return std::nullopt;
  return scalar(key, n);
}

std::string Options::str(std::string_view key, std::string_view def) {
  auto v = str(key);
  return v ? *v : std::string(def);
}

int64_t Options::integer(std::string_view key, int64_t def, int64_t min, int64_t max) {
  auto s = str(key);
  if (!s) return def;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
  if (ec != std::errc() || p != s->data() + s->size())
    fail(key, "expected an integer, got \"" + *s + "\"");
  if (v < min || v > max)
    fail(key,
         "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + *s);
  return v;
}

bool Options::boolean(std::string_view key, bool def) {
  auto s = str(key);
  if (!s) return def;
  if (*s == "true" || *s == "yes" || *s == "on") return true;
  if (*s == "false" || *s == "no" || *s == "off") return false;
  fail(key, "expected true or false, got \"" + *s + "\"");
}

double Options::number(std::string_view key, double def, double min, double max) {
  auto s = str(key);
  if (!s) return def;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s->c_str(), &end);
  if (s->empty() || errno != 0 || end != s->c_str() + s->size())
    fail(key, "expected a number, got \"" + *s + "\"");
  if (v < min || v > max)
    fail(key,
         "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + *s);
  return v;
}

uint64_t Options::duration_ms(std::string_view key, uint64_t def, uint64_t min, uint64_t max) {
  auto s = str(key);
  if (!s) return def;
  uint64_t v = 0;
  if (!parse_duration_ms(*s, &v))
    fail(key, "expected a duration such as 500ms, 5s or 2m, got \"" + *s + "\"");
  if (v < min || v > max)
    fail(key, "must be between " + std::to_string(min) + "ms and " + std::to_string(max) +
                  "ms, got " + *s);
  return v;
}

uint64_t Options::size(std::string_view key, uint64_t def, uint64_t min, uint64_t max) {
  auto s = str(key);
  if (!s) return def;
  uint64_t v = 0;
  if (!parse_size(*s, &v)) fail(key, "expected a size such as 512, 16k or 4m, got \"" + *s + "\"");
  if (v < min || v > max)
    fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max) +
                  " bytes, got " + *s);
  return v;
}

std::vector<std::string> Options::str_list(std::string_view key) {
  YAML::Node n = get(key);
  std::vector<std::string> out;
  if (!n || n.IsNull()) return out;
  if (n.IsScalar()) {
    out.push_back(scalar(key, n));
    return out;
  }
  if (!n.IsSequence()) fail(key, "expected a value or a list of values");
  for (const auto& item : n)
    out.push_back(scalar(key, item));
  return out;
}

Options Options::map(std::string_view key) {
  YAML::Node n = get(key);
  if (n && !n.IsNull() && !n.IsMap()) fail(key, "expected a mapping");
  return Options(n, file_, key_path(key));
}

std::vector<Options> Options::map_list(std::string_view key) {
  YAML::Node n = get(key);
  std::vector<Options> out;
  if (!n || n.IsNull()) return out;
  if (!n.IsSequence()) fail(key, "expected a list");
  size_t i = 0;
  for (const auto& item : n) {
    const std::string p = key_path(key) + "[" + std::to_string(i++) + "]";
    if (!item.IsMap()) throw ConfigError(*file_, item.Mark().line + 1, p, "expected a mapping");
    out.emplace_back(item, file_, p);
  }
  return out;
}

void Options::check_unknown() const {
  if (!node_ || !node_.IsMap()) return;
  for (const auto& it : node_) {
    const std::string& k = it.first.Scalar();
    if (!used_.contains(k))
      throw ConfigError(*file_, it.first.Mark().line + 1, key_path(k), "unknown key");
  }
}

}  // namespace spoad::config
