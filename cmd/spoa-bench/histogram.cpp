#include "histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace spoad::bench {

namespace {
// Octaves 2^8 .. 2^63, kHalf buckets each, after the kExact exact ones.
constexpr size_t kBuckets = 256 + (64 - 8) * 128;
}  // namespace

Histogram::Histogram() : counts_(kBuckets, 0) {}

size_t Histogram::index(uint64_t v) {
  if (v < kExact) return static_cast<size_t>(v);
  const int e = 63 - std::countl_zero(v);        // kSubBits .. 63
  const uint64_t top = v >> (e - kSubBits + 1);  // kHalf .. kExact-1
  return static_cast<size_t>(kExact + (e - kSubBits) * kHalf + (top - kHalf));
}

uint64_t Histogram::lower_bound(size_t i) {
  if (i < kExact) return i;
  const size_t j = i - kExact;
  const int e = kSubBits + static_cast<int>(j / kHalf);
  const uint64_t top = kHalf + j % kHalf;
  return top << (e - kSubBits + 1);
}

uint64_t Histogram::width(size_t i) {
  if (i < kExact) return 1;
  const int e = kSubBits + static_cast<int>((i - kExact) / kHalf);
  return uint64_t{1} << (e - kSubBits + 1);
}

void Histogram::record(uint64_t v) {
  ++counts_[index(v)];
  ++count_;
  sum_ += v;
  min_ = std::min(min_, v);
  max_ = std::max(max_, v);
}

void Histogram::merge(const Histogram& o) {
  for (size_t i = 0; i < counts_.size(); ++i)
    counts_[i] += o.counts_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
}

uint64_t Histogram::percentile(double pct) const {
  if (count_ == 0) return 0;
  pct = std::clamp(pct, 0.0, 100.0);
  uint64_t rank = static_cast<uint64_t>(std::ceil(pct / 100.0 * static_cast<double>(count_)));
  rank = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      const uint64_t mid = lower_bound(i) + width(i) / 2;
      return std::clamp(mid, min_, max_);
    }
  }
  return max_;
}

}  // namespace spoad::bench
