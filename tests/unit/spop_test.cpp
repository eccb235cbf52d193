// Unit tests of the SPOP codec (lib/spop), against SPOE.txt section 3 and the facts recorded in
// shared/reference/haproxy-facts.md.
#include <gtest/gtest.h>

#include <vector>

#include "spop/varint.h"

namespace spoad::spop {
namespace {

TEST(Varint, KnownVector16380) {
  uint8_t b[10];
  ASSERT_EQ(encode_varint(16380, b), 3u);
  EXPECT_EQ(b[0], 0xFC);
  EXPECT_EQ(b[1], 0xF0);
  EXPECT_EQ(b[2], 0x06);
}

}  // namespace
}  // namespace spoad::spop
