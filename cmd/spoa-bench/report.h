// The figures of a finished run, as text for people or as one JSON object.
#pragma once

#include <nlohmann/json.hpp>

#include "options.h"
#include "stats.h"

namespace spoad::bench {

struct RunResult {
  Stats stats;               // merged over the runners
  double elapsed_s = 0;      // measured window: end of the warm-up to the end of the run
  bool interrupted = false;  // stopped by SIGINT/SIGTERM
};

nlohmann::json to_json(const Options& opts, const RunResult& r);
std::string to_text(const Options& opts, const RunResult& r);

}  // namespace spoad::bench
