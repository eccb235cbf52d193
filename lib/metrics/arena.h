// The metrics of one process, in memory another process can read at any time.
//
// Each worker keeps its counters in an arena: a fixed-size region created by the master as a
// memfd (memfd_create(2)) and mapped by both. The worker is the only writer; the master reads
// it when Prometheus scrapes, with no message and no wait, and one last time after the worker
// exited, whatever the cause (a soft-stop, a respawn, a kill -9): it then adds the worker's
// counters to its per-agent totals (metrics/totals.h), so that no counter goes backwards.
//
// Nothing here is on the request path but the increments: a relaxed load and store of an
// aligned 64-bit word the process alone writes (no lock, no read-modify-write instruction).
//
// Layout of the region (all of it ours; master and worker run the same binary):
//   Header    magic, layout version, number of families and series published
//   Family[]  kMaxFamilies descriptors: name, help, type
//   Series[]  kMaxSeries: family index, role (value, bucket, sum, count), bucket bound in
//             microseconds, labels, and the 64-bit value
// A writer fills a descriptor, then publishes it by storing the new count with release order;
// a reader loads the count with acquire order and reads only what was published.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace spoad::metrics {

// Prometheus metric types (exposition format 0.0.4, "TYPE" line).
enum class Type : uint8_t { kCounter = 1, kGauge = 2, kHistogram = 3 };

// What a series holds. A histogram family has one kBucket series per bound (that bucket's own
// count, not cumulative: exposition sums them), one kSum and one kCount.
enum class Role : uint8_t { kValue = 0, kBucket = 1, kSum = 2, kCount = 3 };

// How a stored integer is shown: as is, or microseconds shown as seconds (Prometheus base
// unit). Applies to a histogram's bounds and sum, and to kValue series of such a family.
enum class Unit : uint8_t { kNone = 0, kMicroseconds = 1 };

// How the master combines the series of the same family and labels from several workers of a
// pool: added up (a pool's connections, NOTIFYs), or the largest (a value every worker holds
// alike, such as the entries of a list each worker loads: adding would count it N times).
// Counters and histograms are always added.
enum class Merge : uint8_t { kSum = 0, kMax = 1 };

// One 64-bit value with a single writer (the arena's owner) and any number of readers in any
// process. Never a read-modify-write: a writer is never preempted by another writer.
class Value {
 public:
  void add(uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void sub(uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  void set(uint64_t n) { v_.store(n, std::memory_order_relaxed); }
  uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);

// Where handles that were never registered (or were refused) write: one value per process,
// read by nobody.
Value* discard_value();

// A counter handle: only goes up. Reads like the plain integer it replaces.
class Counter {
 public:
  Counter() = default;  // writes to discard_value() until assigned a registered handle
  explicit Counter(Value* v) : v_(v) {}
  Counter& operator++() {
    v_->add(1);
    return *this;
  }
  void operator++(int) { v_->add(1); }
  Counter& operator+=(uint64_t n) {
    v_->add(n);
    return *this;
  }
  uint64_t get() const { return v_->get(); }
  operator uint64_t() const { return v_->get(); }

 private:
  Value* v_ = discard_value();
};

// A gauge handle: goes up and down, or is set.
class Gauge {
 public:
  Gauge() = default;
  explicit Gauge(Value* v) : v_(v) {}
  Gauge& operator++() {
    v_->add(1);
    return *this;
  }
  void operator++(int) { v_->add(1); }
  Gauge& operator--() {
    v_->sub(1);
    return *this;
  }
  void operator--(int) { v_->sub(1); }
  Gauge& operator+=(uint64_t n) {
    v_->add(n);
    return *this;
  }
  Gauge& operator-=(uint64_t n) {
    v_->sub(n);
    return *this;
  }
  Gauge& operator=(uint64_t n) {
    v_->set(n);
    return *this;
  }
  uint64_t get() const { return v_->get(); }
  operator uint64_t() const { return v_->get(); }

 private:
  Value* v_ = discard_value();
};

// A histogram of durations in microseconds, exported in seconds. At most kMaxBuckets bounds.
class Histogram {
 public:
  static constexpr size_t kMaxBuckets = 24;
  Histogram() = default;
  // Records one observation of `us` microseconds: one bucket, the sum and the count.
  void observe_us(uint64_t us);
  uint64_t count() const { return count_ ? count_->get() : 0; }
  uint64_t sum_us() const { return sum_ ? sum_->get() : 0; }

 private:
  friend class Arena;
  const uint64_t* bounds_ = nullptr;  // ascending, microseconds; +Inf is implicit
  size_t n_ = 0;
  Value* buckets_[kMaxBuckets + 1] = {};  // the last one is +Inf
  Value* sum_ = nullptr;
  Value* count_ = nullptr;
};

// The default bounds of a processing-time histogram: 10 us to 1 s (microseconds).
inline constexpr uint64_t kLatencyBoundsUs[] = {10,     25,     50,     100,    250,   500,
                                                1000,   2500,   5000,   10000,  25000, 50000,
                                                100000, 250000, 500000, 1000000};

// Label pairs as given by code: names are identifiers ([a-zA-Z_][a-zA-Z0-9_]*), values any
// bytes (escaped and made valid UTF-8 when stored: \\, \", \n; ill-formed UTF-8 and other
// control bytes become U+FFFD). A registration with an invalid label name (or "le",
// "quantile", a leading "__") is refused like a bad metric name.
using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// One series as a reader sees it.
struct SeriesView {
  std::string_view family;  // e.g. "spoad_notify_total"
  std::string_view help;
  Type type;
  Role role;
  Unit unit;
  uint64_t bound_us;        // kBucket only; UINT64_MAX for +Inf
  std::string_view labels;  // rendered and escaped: agent="ip",type="ip-checker" (no braces)
  uint64_t value;
  Merge merge = Merge::kSum;  // gauges only
};

class Arena {
 public:
  static constexpr size_t kMaxFamilies = 256;
  static constexpr size_t kMaxSeries = 4096;
  static constexpr size_t kMaxName = 96;   // bytes, family name
  static constexpr size_t kMaxHelp = 224;  // bytes, help text (longer is cut)
  // bytes, rendered labels; longer: the value that does not fit is cut (at a character, never
  // inside an escape) and the pairs after it are dropped
  static constexpr size_t kMaxLabels = 232;

  // An arena in this process's own memory (unit tests, `spoad -c`, a worker without a master).
  static std::unique_ptr<Arena> private_memory();
  // A new shared arena: a memfd of bytes() bytes, mapped read-write. Returns nullptr and sets
  // `err` if memfd_create/ftruncate/mmap fails. The fd is close-on-exec; fd() gives it.
  static std::unique_ptr<Arena> create_shared(std::string* err);
  // Maps the arena of `fd` (created by create_shared in another process); `fd` is owned from
  // now on. `writable`: the worker maps it to write, the master to read. Returns nullptr and
  // sets `err` when the fd is not such an arena (size, magic, layout version).
  static std::unique_ptr<Arena> attach(int fd, bool writable, std::string* err);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // The region's size in bytes (fixed: every arena is the same size).
  static size_t bytes();
  int fd() const { return fd_; }  // -1 for private memory

  // Registers a series of `family`, with `base` labels then `extra` ones, and returns its
  // handle. The same family and labels registered twice give the same value. A family's
  // help, type and unit are the first registration's. When the arena is full, or the name is
  // not a valid metric name, or a family changes type, the handle writes to a private value
  // nobody reads, and overflows() grows. Writer side only.
  Counter counter(std::string_view family, std::string_view help, Labels base, Labels extra = {},
                  Unit unit = Unit::kNone);
  Gauge gauge(std::string_view family, std::string_view help, Labels base, Labels extra = {},
              Unit unit = Unit::kNone, Merge merge = Merge::kSum);
  // `bounds_us`: ascending microseconds, at most Histogram::kMaxBuckets (more are dropped);
  // must outlive the arena (use a static array such as kLatencyBoundsUs).
  Histogram histogram(std::string_view family, std::string_view help, Labels base,
                      Labels extra = {}, std::span<const uint64_t> bounds_us = kLatencyBoundsUs);

  // Registrations refused (arena full, bad name, type clash).
  uint64_t overflows() const;

  // Calls `fn` for every published series, in registration order. Reader side; safe while
  // the writer runs, in this process or another.
  void visit(const std::function<void(const SeriesView&)>& fn) const;

 private:
  Arena() = default;
  struct Region;
  struct Index;  // the writer's lookup tables, in this process's memory
  // Finds or adds the series of one registration (one for a counter or a gauge; a histogram's
  // buckets, +Inf, sum and count), stores their values in out[0..n_out); nullptr if refused.
  Value* add_series(std::string_view family, std::string_view help, Type type, Unit unit,
                    Labels base, Labels extra, std::span<const uint64_t> bounds_us, Value** out,
                    size_t n_out, Merge merge = Merge::kSum);
  static Region* fresh_region(void* zeroed);  // writes the header of a new region
  Region* region_ = nullptr;
  std::unique_ptr<Index> index_;  // writable arenas only
  int fd_ = -1;
  bool writable_ = false;
  bool owned_memory_ = false;  // private_memory(): region_ is anonymous memory, no fd
};

// A metrics scope handed to an agent or a server: an arena and the labels every series of
// theirs carries (agent="<name>",type="<agent type>"). Copyable; the arena is shared by its
// copies and lives as long as the last of them.
class Scope {
 public:
  // A scope of its own private arena (unit tests, `spoad -c`): handles count, nobody scrapes.
  Scope();
  Scope(std::shared_ptr<Arena> arena, std::string agent_name, std::string agent_type)
      : arena_(std::move(arena)), name_(std::move(agent_name)), type_(std::move(agent_type)) {}
  Counter counter(std::string_view family, std::string_view help, Labels extra = {},
                  Unit unit = Unit::kNone) const;
  Gauge gauge(std::string_view family, std::string_view help, Labels extra = {},
              Unit unit = Unit::kNone, Merge merge = Merge::kSum) const;
  Histogram histogram(std::string_view family, std::string_view help, Labels extra = {},
                      std::span<const uint64_t> bounds_us = kLatencyBoundsUs) const;
  Arena* arena() const { return arena_.get(); }

 private:
  std::shared_ptr<Arena> arena_;
  std::string name_, type_;
};

}  // namespace spoad::metrics
