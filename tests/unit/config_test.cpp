// Unit tests of the configuration loader (lib/config).
#include <gtest/gtest.h>

#include "config/options.h"

namespace spoad::config {
namespace {

TEST(Duration, Units) {
  uint64_t ms = 0;
  ASSERT_TRUE(parse_duration_ms("5s", &ms));
  EXPECT_EQ(ms, 5000u);
}

}  // namespace
}  // namespace spoad::config
