// Helpers shared by the ip-checker's unit tests (gtest): addresses and prefixes from text, and
// a temporary directory for list files (tests/support/temp_dir.h).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "agents/ip-checker/address.h"
#include "tests/support/temp_dir.h"

namespace spoad::agents::ip_checker::test {

inline Address A(const std::string& s) {
  Address a;
  EXPECT_TRUE(parse_address(s, &a)) << s;
  return a;
}

inline Prefix P(const std::string& s) {
  Prefix p;
  bool masked = false;
  const char* why = "";
  EXPECT_TRUE(parse_prefix(s, &p, &masked, &why)) << s << ": " << why;
  return p;
}

using spoad::testing::TempDir;

}  // namespace spoad::agents::ip_checker::test
