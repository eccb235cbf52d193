#include "metrics/arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "metrics/exposition.h"
#include "util/escape.h"

namespace spoad::metrics {

namespace {

constexpr uint64_t kMagic = 0x5445'4d44'414f'5053;  // "SPOADMET", little-endian
constexpr uint32_t kLayout = 1;

struct FamilyDesc {
  uint8_t type;
  uint8_t unit;
  uint8_t name_len;
  uint8_t merge;  // Merge, for gauges
  uint16_t help_len;
  char name[Arena::kMaxName];
  char help[Arena::kMaxHelp];
};

struct SeriesDesc {
  Value value;  // first: 8-byte aligned
  uint64_t bound_us;
  uint16_t family;
  uint8_t role;
  uint8_t labels_len;
  char labels[Arena::kMaxLabels];
};

static_assert(Arena::kMaxName < 256 && Arena::kMaxLabels < 256 && Arena::kMaxHelp < 65536);
static_assert(Arena::kMaxFamilies <= 65536);

bool name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool name_char(char c) {
  return name_start(c) || (c >= '0' && c <= '9');
}

// A Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*, at most kMaxName bytes.
bool valid_metric_name(std::string_view s) {
  if (s.empty() || s.size() > Arena::kMaxName) return false;
  if (!name_start(s[0]) && s[0] != ':') return false;
  for (char c : s)
    if (!name_char(c) && c != ':') return false;
  return true;
}

// A label name: [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved by Prometheus).
bool valid_label_name(std::string_view s) {
  if (s.empty() || !name_start(s[0])) return false;
  if (s.size() >= 2 && s[0] == '_' && s[1] == '_') return false;
  for (char c : s)
    if (!name_char(c)) return false;
  return true;
}

// Rendered labels as stored: name="value" pairs separated by ',', values escaped (\\ \" \n
// only), no control byte (0x00-0x1F, 0x7F: the writer stores U+FFFD for them), valid UTF-8.
// Checks what a reader finds in memory another process writes, so that a broken writer cannot
// break the exposition.
bool valid_rendered_labels(std::string_view s) {
  if (!util::is_utf8(s)) return false;
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    while (i < s.size() && name_char(s[i]))
      ++i;
    if (i == start || !name_start(s[start])) return false;
    if (i + 1 >= s.size() || s[i] != '=' || s[i + 1] != '"') return false;
    i += 2;
    for (;;) {
      if (i >= s.size()) return false;
      const auto c = static_cast<uint8_t>(s[i]);
      if (c < 0x20 || c == 0x7f) return false;
      if (s[i] == '"') break;
      if (s[i] == '\\') {
        if (i + 1 >= s.size()) return false;
        const char e = s[i + 1];
        if (e != '\\' && e != '"' && e != 'n') return false;
        i += 2;
      } else {
        ++i;
      }
    }
    ++i;  // closing quote
    if (i == s.size()) break;
    if (s[i] != ',' || i + 1 == s.size()) return false;
    ++i;
  }
  return true;
}

// `s` made valid UTF-8 and cut to at most `max` bytes at a character boundary.
std::string utf8_prefix(std::string_view s, size_t max) {
  std::string out = util::to_utf8(s.substr(0, max + 4));
  if (out.size() > max) {
    size_t n = max;
    while (n > 0 && (static_cast<uint8_t>(out[n]) & 0xC0) == 0x80)
      --n;
    out.resize(n);
  }
  return out;
}

Value g_discard;

}  // namespace

Value* discard_value() {
  return &g_discard;
}

struct Arena::Region {
  uint64_t magic;
  uint32_t layout;
  uint32_t size;  // bytes()
  std::atomic<uint32_t> families;
  std::atomic<uint32_t> series;
  Value overflows;
  FamilyDesc family[kMaxFamilies];
  SeriesDesc series_desc[kMaxSeries];
};

// The writer's lookup tables (not in the shared region): family name → index, series key →
// index. Rebuilt from the region when a writer attaches to an arena that already holds series.
struct Arena::Index {
  std::mutex mu;  // registrations may come from any thread of the writer process
  std::unordered_map<std::string, uint32_t> families;
  std::unordered_map<std::string, uint32_t> series;
};

namespace {

std::string series_key(uint32_t family, Role role, uint64_t bound_us, std::string_view labels) {
  std::string k;
  k.reserve(16 + labels.size());
  k.append(reinterpret_cast<const char*>(&family), sizeof family);
  k += static_cast<char>(role);
  k.append(reinterpret_cast<const char*>(&bound_us), sizeof bound_us);
  k.append(labels);
  return k;
}

}  // namespace

// New mappings are zero-filled, and all zeros is a valid empty region (counts, atomics and
// values at 0): only the header is written, so that untouched pages stay unbacked and an arena
// costs the memory of the series it holds, not its 1 MiB.
Arena::Region* Arena::fresh_region(void* p) {
  auto* r = static_cast<Region*>(p);
  r->magic = kMagic;
  r->layout = kLayout;
  r->size = static_cast<uint32_t>(bytes());
  return r;
}

size_t Arena::bytes() {
  const size_t page = 4096;
  return (sizeof(Region) + page - 1) / page * page;
}

std::unique_ptr<Arena> Arena::private_memory() {
  void* p = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  std::unique_ptr<Arena> a(new Arena());
  a->region_ = fresh_region(p);
  a->writable_ = true;
  a->owned_memory_ = true;
  a->index_ = std::make_unique<Index>();
  return a;
}

std::unique_ptr<Arena> Arena::create_shared(std::string* err) {
  auto fail = [&](const char* what, int fd) -> std::unique_ptr<Arena> {
    if (err) *err = std::string("metrics arena: ") + what + ": " + std::strerror(errno);
    if (fd >= 0) close(fd);
    return nullptr;
  };
  const int fd = memfd_create("spoad-metrics", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return fail("memfd_create", -1);
  if (ftruncate(fd, static_cast<off_t>(bytes())) != 0) return fail("ftruncate", fd);
  // The size is fixed for good: a process that could shrink it would make its readers fault.
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return fail("fcntl(F_ADD_SEALS)", fd);
  void* p = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail("mmap", fd);
  std::unique_ptr<Arena> a(new Arena());
  a->region_ = fresh_region(p);
  a->fd_ = fd;
  a->writable_ = true;
  a->index_ = std::make_unique<Index>();
  return a;
}

std::unique_ptr<Arena> Arena::attach(int fd, bool writable, std::string* err) {
  auto fail = [&](const std::string& what) -> std::unique_ptr<Arena> {
    if (err) *err = "metrics arena: " + what;
    if (fd >= 0) close(fd);
    return nullptr;
  };
  if (fd < 0) return fail("no file descriptor");
  struct stat st {};
  if (fstat(fd, &st) != 0) return fail(std::string("fstat: ") + std::strerror(errno));
  if (static_cast<uint64_t>(st.st_size) != bytes())
    return fail("size " + std::to_string(st.st_size) + " bytes, expected " +
                std::to_string(bytes()));
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void* p = mmap(nullptr, bytes(), prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail(std::string("mmap: ") + std::strerror(errno));
  auto* r = static_cast<Region*>(p);
  if (r->magic != kMagic || r->layout != kLayout || r->size != bytes()) {
    munmap(p, bytes());
    return fail("not a metrics arena of this version (magic, layout or size)");
  }
  std::unique_ptr<Arena> a(new Arena());
  a->region_ = r;
  a->fd_ = fd;
  a->writable_ = writable;
  if (writable) {
    a->index_ = std::make_unique<Index>();
    const uint32_t nf =
        std::min<uint32_t>(r->families.load(std::memory_order_acquire), kMaxFamilies);
    for (uint32_t i = 0; i < nf; ++i) {
      const FamilyDesc& f = r->family[i];
      a->index_->families.emplace(std::string(f.name, std::min<size_t>(f.name_len, kMaxName)), i);
    }
    const uint32_t ns = std::min<uint32_t>(r->series.load(std::memory_order_acquire), kMaxSeries);
    for (uint32_t i = 0; i < ns; ++i) {
      const SeriesDesc& s = r->series_desc[i];
      a->index_->series.emplace(
          series_key(s.family, static_cast<Role>(s.role), s.bound_us,
                     std::string_view(s.labels, std::min<size_t>(s.labels_len, kMaxLabels))),
          i);
    }
  }
  return a;
}

Arena::~Arena() {
  if (region_) munmap(region_, bytes());
  if (fd_ >= 0) close(fd_);
}

uint64_t Arena::overflows() const {
  return region_->overflows.get();
}

namespace {

// The labels of a registration, rendered and cut to kMaxLabels; false if a label name is not
// valid, reserved, or given twice.
bool render_checked(Labels base, Labels extra, std::string* out) {
  std::vector<std::string_view> names;
  for (const auto& l : {base, extra})
    for (const auto& [k, v] : l) {
      (void)v;
      if (!valid_label_name(k) || k == "le" || k == "quantile") return false;
      if (std::find(names.begin(), names.end(), k) != names.end()) return false;
      names.push_back(k);
    }
  std::string s = render_labels(base, Arena::kMaxLabels);
  if (extra.size() > 0 && s.size() < Arena::kMaxLabels) {
    const size_t room = Arena::kMaxLabels - s.size() - (s.empty() ? 0 : 1);
    std::string e = render_labels(extra, room);
    if (!e.empty()) {
      if (!s.empty()) s += ',';
      s += e;
    }
  }
  *out = std::move(s);
  return true;
}

// Finds or adds the family; returns its index or -1 on a bad name, a type clash or a full
// table. Caller holds the index's lock.
int find_family(FamilyDesc* fams, std::atomic<uint32_t>& count,
                std::unordered_map<std::string, uint32_t>& idx, std::string_view name,
                std::string_view help, Type type, Unit unit, Merge merge) {
  if (!valid_metric_name(name)) return -1;
  if (auto it = idx.find(std::string(name)); it != idx.end())
    return fams[it->second].type == static_cast<uint8_t>(type) ? static_cast<int>(it->second) : -1;
  const uint32_t n = count.load(std::memory_order_relaxed);
  if (n >= Arena::kMaxFamilies) return -1;
  FamilyDesc& f = fams[n];
  f.type = static_cast<uint8_t>(type);
  f.unit = static_cast<uint8_t>(unit);
  f.merge = static_cast<uint8_t>(merge);
  f.name_len = static_cast<uint8_t>(name.size());
  std::memcpy(f.name, name.data(), name.size());
  const std::string h = utf8_prefix(help, Arena::kMaxHelp);
  f.help_len = static_cast<uint16_t>(h.size());
  std::memcpy(f.help, h.data(), h.size());
  count.store(n + 1, std::memory_order_release);
  idx.emplace(std::string(name), n);
  return static_cast<int>(n);
}

}  // namespace

Value* Arena::add_series(std::string_view family, std::string_view help, Type type, Unit unit,
                         Labels base, Labels extra, std::span<const uint64_t> bounds_us,
                         Value** out, size_t n_out, Merge merge) {
  // One registration: kValue (counter, gauge): one series; histogram: n_out series, the
  // buckets of `bounds_us` then +Inf, sum and count.
  if (!writable_ || !index_) return nullptr;
  std::lock_guard lock(index_->mu);
  auto refuse = [&]() -> Value* {
    region_->overflows.add(1);
    return nullptr;
  };
  std::string labels;
  if (!render_checked(base, extra, &labels)) return refuse();
  const int fam = find_family(region_->family, region_->families, index_->families, family, help,
                              type, unit, merge);
  if (fam < 0) return refuse();
  // Keys of every series of this registration; how many are new.
  std::vector<std::string> keys;
  std::vector<std::pair<Role, uint64_t>> roles;
  if (type == Type::kHistogram) {
    for (uint64_t b : bounds_us)
      roles.emplace_back(Role::kBucket, b);
    roles.emplace_back(Role::kBucket, UINT64_MAX);
    roles.emplace_back(Role::kSum, 0);
    roles.emplace_back(Role::kCount, 0);
  } else {
    roles.emplace_back(Role::kValue, 0);
  }
  if (roles.size() > n_out) return refuse();
  size_t fresh = 0;
  for (const auto& [role, bound] : roles) {
    keys.push_back(series_key(static_cast<uint32_t>(fam), role, bound, labels));
    if (!index_->series.count(keys.back())) ++fresh;
  }
  const uint32_t n = region_->series.load(std::memory_order_relaxed);
  if (n + fresh > kMaxSeries) return refuse();
  uint32_t next = n;
  for (size_t i = 0; i < roles.size(); ++i) {
    if (auto it = index_->series.find(keys[i]); it != index_->series.end()) {
      out[i] = &region_->series_desc[it->second].value;
      continue;
    }
    SeriesDesc& s = region_->series_desc[next];
    s.family = static_cast<uint16_t>(fam);
    s.role = static_cast<uint8_t>(roles[i].first);
    s.bound_us = roles[i].second;
    s.labels_len = static_cast<uint8_t>(labels.size());
    std::memcpy(s.labels, labels.data(), labels.size());
    s.value.set(0);
    index_->series.emplace(keys[i], next);
    out[i] = &s.value;
    ++next;
  }
  region_->series.store(next, std::memory_order_release);
  return out[0];
}

Counter Arena::counter(std::string_view family, std::string_view help, Labels base, Labels extra,
                       Unit unit) {
  Value* v = nullptr;
  add_series(family, help, Type::kCounter, unit, base, extra, {}, &v, 1);
  return v ? Counter(v) : Counter();
}

Gauge Arena::gauge(std::string_view family, std::string_view help, Labels base, Labels extra,
                   Unit unit, Merge merge) {
  Value* v = nullptr;
  add_series(family, help, Type::kGauge, unit, base, extra, {}, &v, 1, merge);
  return v ? Gauge(v) : Gauge();
}

Histogram Arena::histogram(std::string_view family, std::string_view help, Labels base,
                           Labels extra, std::span<const uint64_t> bounds_us) {
  // Ascending bounds only, at most kMaxBuckets: the first that is not is where they stop.
  size_t n = 0;
  while (n < bounds_us.size() && n < Histogram::kMaxBuckets &&
         (n == 0 || bounds_us[n] > bounds_us[n - 1]) && bounds_us[n] != UINT64_MAX)
    ++n;
  bounds_us = bounds_us.first(n);
  Value* v[Histogram::kMaxBuckets + 3] = {};
  Histogram h;
  if (!add_series(family, help, Type::kHistogram, Unit::kMicroseconds, base, extra, bounds_us, v,
                  n + 3))
    return h;
  h.bounds_ = bounds_us.data();
  h.n_ = n;
  for (size_t i = 0; i <= n; ++i)
    h.buckets_[i] = v[i];
  h.sum_ = v[n + 1];
  h.count_ = v[n + 2];
  return h;
}

void Histogram::observe_us(uint64_t us) {
  if (!count_) return;
  size_t i = 0;
  while (i < n_ && us > bounds_[i])
    ++i;
  buckets_[i]->add(1);
  sum_->add(us);
  count_->add(1);
}

void Arena::visit(const std::function<void(const SeriesView&)>& fn) const {
  const Region* r = region_;
  const uint32_t nf = std::min<uint32_t>(r->families.load(std::memory_order_acquire), kMaxFamilies);
  const uint32_t ns = std::min<uint32_t>(r->series.load(std::memory_order_acquire), kMaxSeries);
  // Descriptors are copied out before they are checked: the memory may be another process's.
  char name[kMaxName], help[kMaxHelp], labels[kMaxLabels];
  for (uint32_t i = 0; i < ns; ++i) {
    const SeriesDesc& s = r->series_desc[i];
    const uint16_t fi = s.family;
    const uint8_t role = s.role;
    const uint64_t bound = s.bound_us;
    const size_t ll = std::min<size_t>(s.labels_len, kMaxLabels);
    if (fi >= nf || role > static_cast<uint8_t>(Role::kCount)) continue;
    std::memcpy(labels, s.labels, ll);
    const FamilyDesc& f = r->family[fi];
    const uint8_t type = f.type, unit = f.unit, merge = f.merge;
    const size_t nl = std::min<size_t>(f.name_len, kMaxName);
    const size_t hl = std::min<size_t>(f.help_len, kMaxHelp);
    std::memcpy(name, f.name, nl);
    std::memcpy(help, f.help, hl);
    SeriesView v{};
    v.family = std::string_view(name, nl);
    v.help = std::string_view(help, hl);
    v.labels = std::string_view(labels, ll);
    if (type < 1 || type > 3 || unit > 1 || merge > 1 || !valid_metric_name(v.family) ||
        !util::is_utf8(v.help) || !valid_rendered_labels(v.labels))
      continue;
    v.type = static_cast<Type>(type);
    v.role = static_cast<Role>(role);
    if ((v.type == Type::kHistogram) == (v.role == Role::kValue)) continue;
    v.unit = static_cast<Unit>(unit);
    v.merge = static_cast<Merge>(merge);
    v.bound_us = v.role == Role::kBucket ? bound : 0;
    v.value = s.value.get();
    fn(v);
  }
}

Scope::Scope() : arena_(Arena::private_memory()) {}

Counter Scope::counter(std::string_view family, std::string_view help, Labels extra,
                       Unit unit) const {
  if (!arena_) return Counter();
  return arena_->counter(family, help, {{"agent", name_}, {"type", type_}}, extra, unit);
}

Gauge Scope::gauge(std::string_view family, std::string_view help, Labels extra, Unit unit,
                   Merge merge) const {
  if (!arena_) return Gauge();
  return arena_->gauge(family, help, {{"agent", name_}, {"type", type_}}, extra, unit, merge);
}

Histogram Scope::histogram(std::string_view family, std::string_view help, Labels extra,
                           std::span<const uint64_t> bounds_us) const {
  if (!arena_) return Histogram();
  return arena_->histogram(family, help, {{"agent", name_}, {"type", type_}}, extra, bounds_us);
}

}  // namespace spoad::metrics
