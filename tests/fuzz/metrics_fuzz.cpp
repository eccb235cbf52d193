// Fuzz target: lib/metrics, the arena and its exposition, on any bytes. The first input byte
// chooses what the rest is:
//   - even: label values, help text and an Accept header, registered in a private arena and
//     rendered in both formats;
//   - odd: the contents of a shared arena's region as another process could have left them
//     (after its magic, layout and size), read by a reader that maps it read-only.
// Properties: nothing crashes or reads out of bounds; every rendered text is valid UTF-8 in
// which each line is a comment ("# HELP", "# TYPE", "# EOF") or one well-formed sample:
// name, optional {labels} with only \\ \" \n escapes, a space and a value; stored labels
// stay within Arena::kMaxLabels.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "metrics/arena.h"
#include "metrics/exposition.h"
#include "metrics/totals.h"
#include "util/escape.h"

using namespace spoad::metrics;

namespace {

bool name_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
         (!first && c >= '0' && c <= '9');
}

// One sample line: name{labels} value (labels optional).
bool valid_sample_line(std::string_view l) {
  size_t i = 0;
  while (i < l.size() && name_char(l[i], i == 0))
    ++i;
  if (i == 0) return false;
  if (i < l.size() && l[i] == '{') {
    ++i;
    while (true) {
      const size_t start = i;
      while (i < l.size() && name_char(l[i], i == start) && l[i] != ':')
        ++i;
      if (i == start || i + 1 >= l.size() || l[i] != '=' || l[i + 1] != '"') return false;
      i += 2;
      while (i < l.size() && l[i] != '"') {
        if (l[i] == '\\') {
          if (i + 1 >= l.size() || (l[i + 1] != '\\' && l[i + 1] != '"' && l[i + 1] != 'n'))
            return false;
          ++i;
        }
        ++i;
      }
      if (i >= l.size()) return false;
      ++i;  // closing quote
      if (i < l.size() && l[i] == ',') {
        ++i;
        continue;
      }
      if (i < l.size() && l[i] == '}') {
        ++i;
        break;
      }
      return false;
    }
  }
  if (i >= l.size() || l[i] != ' ') return false;
  return i + 1 < l.size();
}

void check_exposition(const std::string& text, Format f) {
  FUZZ_CHECK(spoad::util::is_utf8(text));
  FUZZ_CHECK(text.empty() || text.back() == '\n');
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = text.find('\n', pos);
    const std::string_view line(text.data() + pos, end - pos);
    for (char c : line)
      FUZZ_CHECK(static_cast<uint8_t>(c) >= 0x20 && c != 0x7f);
    if (line.starts_with("#"))
      FUZZ_CHECK(line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF");
    else
      FUZZ_CHECK(valid_sample_line(line));
    pos = end + 1;
  }
  if (f == Format::kOpenMetrics) FUZZ_CHECK(text.ends_with("# EOF\n"));
}

std::vector<Sample> collect(const Arena& a) {
  std::vector<Sample> out;
  a.visit([&](const SeriesView& s) {
    FUZZ_CHECK(s.labels.size() <= Arena::kMaxLabels);
    FUZZ_CHECK(s.family.size() <= Arena::kMaxName);
    FUZZ_CHECK(s.help.size() <= Arena::kMaxHelp);
    out.push_back(to_sample(s));
  });
  return out;
}

void render_all(const Arena& a) {
  std::vector<Sample> samples = collect(a);
  Totals t;
  t.add_final(a);
  t.append(samples);
  for (Format f : {Format::kText004, Format::kOpenMetrics})
    check_exposition(render(samples, f), f);
}

// Pieces of the input separated by 0x00 bytes.
std::vector<std::string_view> split(std::string_view in) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos <= in.size() && out.size() < 64) {
    size_t end = in.find('\0', pos);
    if (end == std::string_view::npos) end = in.size();
    out.push_back(in.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

void labels_case(std::string_view in) {
  static auto arena = Arena::private_memory();  // reused: registrations pile up, then overflow
  static size_t runs = 0;
  if (++runs % 64 == 0) arena = Arena::private_memory();
  const std::vector<std::string_view> parts = split(in);
  auto part = [&](size_t i) { return i < parts.size() ? parts[i] : std::string_view(); };
  (void)negotiate(part(0));
  Counter c = arena->counter("spoad_fuzz_total", part(1), {{"agent", part(2)}, {"type", part(3)}},
                             {{"v", part(4)}});
  ++c;
  Gauge g = arena->gauge("spoad_fuzz", part(1), {{"agent", part(2)}}, {{"v", part(5)}});
  g -= 2;
  Histogram h = arena->histogram("spoad_fuzz_seconds", part(1), {{"agent", part(5)}});
  h.observe_us(in.size());
  // A family name and a label name from the input: refused unless valid.
  Counter odd = arena->counter(part(6), part(1), {{part(7), part(2)}});
  ++odd;
  const std::string rendered = render_labels({{"a", part(2)}, {"b", part(3)}}, in.size() % 300);
  FUZZ_CHECK(rendered.size() <= in.size() % 300);
  FUZZ_CHECK(spoad::util::is_utf8(rendered));
  render_all(*arena);
}

void region_case(std::string_view in) {
  // One shared arena, written through a mapping of our own, read through a read-only attach.
  // The input lands in three places: the counts after the header (magic, layout and size are
  // kept valid), the family descriptors, and the series (the second half of the input).
  static uint8_t* region = nullptr;
  static size_t series_at = 0;
  static std::unique_ptr<Arena> reader;
  static std::vector<std::pair<size_t, size_t>> dirty;  // offset, length
  constexpr size_t kHeader = 16, kFamilies = 32;
  if (!reader) {
    std::string err;
    auto a = Arena::create_shared(&err);
    FUZZ_CHECK(a != nullptr);
    void* p = mmap(nullptr, Arena::bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, a->fd(), 0);
    FUZZ_CHECK(p != MAP_FAILED);
    region = static_cast<uint8_t*>(p);
    // Where the series start: the value of the first one, found by its contents.
    constexpr uint64_t kMark = 0x1122334455667788;
    a->gauge("spoad_mark", "", {}) = kMark;
    for (size_t off = kFamilies; off + 8 <= Arena::bytes() && !series_at; off += 8)
      if (std::memcmp(region + off, &kMark, 8) == 0) series_at = off;
    FUZZ_CHECK(series_at != 0);
    reader = Arena::attach(dup(a->fd()), false, &err);
    FUZZ_CHECK(reader != nullptr);
    std::memset(region + kHeader, 0, Arena::bytes() - kHeader);
  }
  for (auto [off, len] : dirty)
    std::memset(region + off, 0, len);
  dirty.clear();
  auto put = [&](size_t off, std::string_view bytes) {
    const size_t n = std::min(bytes.size(), Arena::bytes() - off);
    std::memcpy(region + off, bytes.data(), n);
    dirty.emplace_back(off, n);
  };
  const std::string_view counts = in.substr(0, kFamilies - kHeader);
  const std::string_view rest = in.substr(counts.size());
  put(kHeader, counts);
  put(kFamilies, rest.substr(0, rest.size() / 2));
  put(series_at, rest.substr(rest.size() / 2));
  render_all(*reader);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1)
    region_case(in);
  else
    labels_case(in);
  return 0;
}
