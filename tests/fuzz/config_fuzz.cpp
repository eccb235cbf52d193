// Fuzz target: the configuration loader (lib/config, parse_config, with every agent's own
// options), on arbitrary bytes. The only outcomes allowed are a Config or a ConfigError naming
// the file; any other exception, a crash or a sanitizer report is a bug (`spoad -c` and start
// would then disagree, or a reload would take the master down).
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "config/config.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const spoad::config::Config c = spoad::config::parse_config(text, "fuzz.yaml");
    FUZZ_CHECK(!c.agents.empty());
    for (const auto& a : c.agents) {
      FUZZ_CHECK(a.agent_type != nullptr && a.options != nullptr);
      FUZZ_CHECK(a.workers >= 1);
      (void)a.listen.str();
    }
  } catch (const spoad::config::ConfigError& e) {
    FUZZ_CHECK(e.file() == "fuzz.yaml");
    FUZZ_CHECK(std::string(e.what()).starts_with("fuzz.yaml"));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parse_config threw something else than ConfigError: %s\n", e.what());
    FUZZ_CHECK(false && "exception other than ConfigError");
  }
  return 0;
}
