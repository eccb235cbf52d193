// Latency histogram: log-linear buckets (as HdrHistogram), exact below 256 and within 0.4%
// above, for any uint64 value. Fixed memory (about 58 KiB), O(1) record, mergeable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace spoad::bench {

class Histogram {
 public:
  Histogram();

  // Records one value (spoa-bench records nanoseconds).
  void record(uint64_t v);
  void merge(const Histogram& other);

  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ ? min_ : 0; }  // exact
  uint64_t max() const { return max_; }               // exact
  double mean() const { return count_ ? static_cast<double>(sum_) / count_ : 0; }

  // The value below or at which `pct` percent (0-100) of the values are: the middle of the
  // bucket holding that rank, clamped to [min, max]. 0 when empty.
  uint64_t percentile(double pct) const;

 private:
  static constexpr int kSubBits = 8;  // 256 exact values, then 128 per octave
  static constexpr uint64_t kExact = uint64_t{1} << kSubBits;
  static constexpr uint64_t kHalf = kExact / 2;
  static size_t index(uint64_t v);
  static uint64_t lower_bound(size_t i);
  static uint64_t width(size_t i);

  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
};

}  // namespace spoad::bench
