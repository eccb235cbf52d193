#include "metrics/exposition.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <unordered_map>

#include "util/escape.h"

namespace spoad::metrics {

namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

// One escaped unit of a label value (at most 3 bytes of output per input character).
void append_escaped_char(std::string& out, std::string_view u) {
  if (u.size() == 1) {
    const auto c = static_cast<uint8_t>(u[0]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      out += kReplacement;
    } else {
      out += static_cast<char>(c);
    }
    return;
  }
  out.append(u);
}

// Length of the UTF-8 character at s[i] of a valid UTF-8 string.
size_t char_len(std::string_view s, size_t i) {
  const auto c = static_cast<uint8_t>(s[i]);
  size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  return n <= s.size() - i ? n : s.size() - i;
}

bool valid_family_name(std::string_view s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// An exact decimal of `us` microseconds in seconds: 1500 → "0.0015", 2000000 → "2" (or "2.0"
// when `point`).
std::string us_to_seconds(uint64_t us, bool point) {
  std::string s = std::to_string(us / 1000000);
  uint64_t frac = us % 1000000;
  if (frac == 0) return point ? s + ".0" : s;
  char digits[7];
  for (int i = 5; i >= 0; --i) {
    digits[i] = static_cast<char>('0' + frac % 10);
    frac /= 10;
  }
  int n = 6;
  while (n > 0 && digits[n - 1] == '0')
    --n;
  s += '.';
  s.append(digits, static_cast<size_t>(n));
  return s;
}

std::string format_double(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 9.2e18) return std::to_string(static_cast<int64_t>(v));
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// A sample's value as shown: microseconds become seconds, exactly when the value is a whole
// number of microseconds.
std::string format_value(double v, Unit unit) {
  if (unit != Unit::kMicroseconds) return format_double(v);
  if (v >= 0 && v == std::floor(v) && v < 9.2e18)
    return us_to_seconds(static_cast<uint64_t>(v), false);
  return format_double(v / 1e6);
}

void append_help(std::string& out, std::string_view help, Format f) {
  const std::string h = util::to_utf8(help);
  for (char c : h) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && f == Format::kOpenMetrics) {
      out += "\\\"";
    } else if ((static_cast<uint8_t>(c) < 0x20 && c != '\n') || c == 0x7f) {
      out += kReplacement;  // no raw control byte on a line of the exposition
    } else {
      out += c;
    }
  }
}

void append_series(std::string& out, std::string_view name, std::string_view suffix,
                   std::string_view labels, std::string_view le, const std::string& value) {
  out.append(name);
  out.append(suffix);
  if (!labels.empty() || !le.empty()) {
    out += '{';
    out.append(labels);
    if (!le.empty()) {
      if (!labels.empty()) out += ',';
      out += "le=\"";
      out.append(le);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

struct HistogramSeries {
  std::map<uint64_t, double> buckets;  // bound (us) → count of that bucket alone
  double sum = 0, count = 0;
};

struct FamilyOut {
  std::string name, help;
  Type type;
  Unit unit;
  std::vector<std::string> order;  // label sets, first-seen order
  std::unordered_map<std::string, double> values;
  std::unordered_map<std::string, HistogramSeries> histograms;
};

}  // namespace

std::string render_labels(Labels pairs, size_t max_bytes) {
  std::string out;
  for (const auto& [name, value] : pairs) {
    // name="" and the separator must fit, or this pair and the next ones are dropped.
    const size_t sep = out.empty() ? 0 : 1;
    if (out.size() + sep + name.size() + 3 > max_bytes) break;
    if (sep) out += ',';
    out.append(name);
    out += "=\"";
    const std::string v = util::to_utf8(value);
    std::string unit;
    bool cut = false;
    for (size_t i = 0; i < v.size();) {
      const size_t n = char_len(v, i);
      unit.clear();
      append_escaped_char(unit, std::string_view(v).substr(i, n));
      if (out.size() + unit.size() + 1 > max_bytes) {
        cut = true;
        break;
      }
      out += unit;
      i += n;
    }
    out += '"';
    if (cut) break;
  }
  return out;
}

Format negotiate(std::string_view accept) {
  // Media ranges separated by ','; parameters by ';' (RFC 9110 12.5.1). OpenMetrics when
  // application/openmetrics-text is listed with a q other than 0.
  size_t pos = 0;
  while (pos <= accept.size()) {
    size_t end = accept.find(',', pos);
    if (end == std::string_view::npos) end = accept.size();
    std::string range;
    for (char c : accept.substr(pos, end - pos))
      if (c != ' ' && c != '\t') range += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    const size_t semi = range.find(';');
    if (range.substr(0, semi) == "application/openmetrics-text") {
      bool zero = false;
      for (size_t p = semi; p != std::string::npos;) {
        const size_t next = range.find(';', p + 1);
        const std::string param =
            range.substr(p + 1, next == std::string::npos ? next : next - p - 1);
        if (param.rfind("q=", 0) == 0) {
          const std::string q = param.substr(2);
          zero = q.find_first_not_of("0.") == std::string::npos;
        }
        p = next;
      }
      if (!zero) return Format::kOpenMetrics;
    }
    pos = end + 1;
  }
  return Format::kText004;
}

std::string_view content_type(Format f) {
  return f == Format::kOpenMetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                   : "text/plain; version=0.0.4; charset=utf-8";
}

Sample make_sample(std::string_view family, std::string_view help, Type type, double value,
                   std::string labels) {
  Sample s;
  s.family = std::string(family);
  s.help = std::string(help);
  s.type = type;
  s.labels = std::move(labels);
  s.value = value;
  return s;
}

Sample to_sample(const SeriesView& s) {
  Sample out;
  out.family = std::string(s.family);
  out.help = std::string(s.help);
  out.type = s.type;
  out.role = s.role;
  out.unit = s.unit;
  out.bound_us = s.bound_us;
  out.labels = std::string(s.labels);
  out.merge = s.merge;
  // A gauge is signed: one decremented below zero shows as negative, not as 2^64 - 1.
  out.value = s.type == Type::kGauge ? static_cast<double>(static_cast<int64_t>(s.value))
                                     : static_cast<double>(s.value);
  return out;
}

std::string render(const std::vector<Sample>& samples, Format f) {
  std::vector<FamilyOut> families;
  std::unordered_map<std::string, size_t> by_name;
  for (const Sample& s : samples) {
    if (!valid_family_name(s.family)) continue;
    if ((s.type == Type::kHistogram) == (s.role == Role::kValue)) continue;
    auto [it, fresh] = by_name.emplace(s.family, families.size());
    if (fresh) families.push_back(FamilyOut{s.family, s.help, s.type, s.unit, {}, {}, {}});
    FamilyOut& fam = families[it->second];
    if (fam.type != s.type) continue;  // a clash: the first type seen wins
    if (s.type == Type::kHistogram) {
      auto [h, hfresh] = fam.histograms.try_emplace(s.labels);
      if (hfresh) fam.order.push_back(s.labels);
      switch (s.role) {
        case Role::kBucket:
          h->second.buckets[s.bound_us] += s.value;
          break;
        case Role::kSum:
          h->second.sum += s.value;
          break;
        case Role::kCount:
          h->second.count += s.value;
          break;
        case Role::kValue:
          break;
      }
    } else {
      auto [v, vfresh] = fam.values.try_emplace(s.labels, s.value);
      if (vfresh)
        fam.order.push_back(s.labels);
      else if (s.type == Type::kGauge && s.merge == Merge::kMax)
        v->second = std::max(v->second, s.value);
      else
        v->second += s.value;
    }
  }

  const bool om = f == Format::kOpenMetrics;
  // OpenMetrics names a counter family without its _total, which its samples carry. When that
  // name is another family's (spoad_connections_total next to the gauge spoad_connections),
  // the counter is shown as an `unknown` family of its full name: still valid OpenMetrics.
  std::unordered_map<std::string_view, bool> om_names;  // family names taken
  if (om)
    for (const FamilyOut& fam : families)
      if (fam.type != Type::kCounter) om_names.emplace(fam.name, true);
  std::string out;
  for (const FamilyOut& fam : families) {
    std::string_view family = fam.name;
    std::string_view suffix;
    std::string_view type = fam.type == Type::kCounter ? "counter"
                            : fam.type == Type::kGauge ? "gauge"
                                                       : "histogram";
    if (om && fam.type == Type::kCounter) {
      std::string_view base = family;
      if (base.size() > 6 && base.ends_with("_total")) base.remove_suffix(6);
      if (om_names.emplace(base, true).second) {
        family = base;
        suffix = "_total";
      } else {
        type = "unknown";
      }
    }
    out += "# HELP ";
    out.append(family);
    out += ' ';
    append_help(out, fam.help, f);
    out += "\n# TYPE ";
    out.append(family);
    out += ' ';
    out.append(type);
    out += '\n';
    for (const std::string& labels : fam.order) {
      if (fam.type != Type::kHistogram) {
        append_series(out, family, suffix, labels, {},
                      format_value(fam.values.at(labels), fam.unit));
        continue;
      }
      const HistogramSeries& h = fam.histograms.at(labels);
      double cumulative = 0;
      for (const auto& [bound, n] : h.buckets) {
        cumulative += n;
        if (bound == UINT64_MAX) continue;
        append_series(out, family, "_bucket", labels, us_to_seconds(bound, om),
                      format_double(cumulative));
      }
      // +Inf and _count from the buckets, so that they agree even when a reader saw the
      // writer between a bucket's increment and the count's.
      const double count = h.buckets.empty() ? h.count : cumulative;
      append_series(out, family, "_bucket", labels, "+Inf", format_double(count));
      append_series(out, family, "_sum", labels, {}, format_value(h.sum, Unit::kMicroseconds));
      append_series(out, family, "_count", labels, {}, format_double(count));
    }
  }
  if (om) out += "# EOF\n";
  return out;
}

}  // namespace spoad::metrics
