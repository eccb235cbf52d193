// Renders samples in the Prometheus text exposition format 0.0.4, or in OpenMetrics 1.0.0 when
// the scraper asks for it (its Accept header), from series of worker arenas (metrics/arena.h),
// the master's totals of exited workers (metrics/totals.h) and the master's own samples.
//
// Series with the same family and labels are summed (a pool's workers and its exited ones add
// up to one series per agent); a histogram's bucket series become cumulative `le` buckets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "metrics/arena.h"

namespace spoad::metrics {

enum class Format { kText004, kOpenMetrics };

// One sample owned by its holder (a SeriesView copied out of an arena, or made by the master).
struct Sample {
  std::string family;
  std::string help;
  Type type = Type::kGauge;
  Role role = Role::kValue;
  Unit unit = Unit::kNone;
  uint64_t bound_us = 0;      // kBucket only; UINT64_MAX for +Inf
  std::string labels;         // rendered and escaped, no braces: agent="ip",type="ip-checker"
  double value = 0;           // as stored (microseconds for Unit::kMicroseconds)
  Merge merge = Merge::kSum;  // gauges: how equal series combine
};

// A sample from a series of an arena.
Sample to_sample(const SeriesView& s);

// A sample made by the master (Role::kValue, Unit::kNone): `labels` rendered (render_labels).
Sample make_sample(std::string_view family, std::string_view help, Type type, double value,
                   std::string labels = {});

// Renders label pairs as stored in a Sample: name="value", values escaped (\\ \" \n) and
// made valid UTF-8 (ill-formed bytes and other control bytes become U+FFFD). Names are assumed
// valid. At most `max_bytes` bytes: the value that does not fit is cut at a character (never
// inside an escape), the pairs after it are dropped.
std::string render_labels(Labels pairs, size_t max_bytes = SIZE_MAX);

// The format a scraper asked for in its Accept header (OpenMetrics if it lists
// application/openmetrics-text, else text 0.0.4), and the Content-Type to answer with.
Format negotiate(std::string_view accept);
std::string_view content_type(Format f);

// The exposition of `samples`: families in first-seen order, HELP and TYPE once per family,
// equal (family, role, bound, labels) summed, microseconds shown as seconds, OpenMetrics
// ending with "# EOF". Never throws but std::bad_alloc.
std::string render(const std::vector<Sample>& samples, Format f);

}  // namespace spoad::metrics
