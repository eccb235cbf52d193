// Unit tests of the reassembly budget (lib/spop/reassembler.h): the bytes of all the
// reassembly buffers of one agent server are charged to one ReassemblyBudget, a fragment that
// would go beyond it fails with status 13 (SPOE.txt 3.5, "resource allocation error"), and
// every way a reassembly ends gives its bytes back. Also the configuration keys
// max-reassembly-bytes and timeout.fragment (lib/config).
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "spop/reassembler.h"
#include "tests/support/spop_frame.h"

namespace spoad::spop {
namespace {

using Buf = std::vector<uint8_t>;

constexpr auto* frag = &spoad::testing::frame_of;

// Feeds `f` and returns the status.
Status feed(Reassembler& r, const Frame& f, Reassembler::Step* st = nullptr) {
  Reassembler::Step s{};
  Bytes out;
  const Result res = r.feed(f, &s, &out);
  if (st) *st = s;
  return res.status;
}

TEST(ReassemblyBudget, TakeGiveBackAndPeak) {
  ReassemblyBudget b(100);
  EXPECT_TRUE(b.take(60));
  EXPECT_FALSE(b.take(41));  // refused whole: nothing taken
  EXPECT_EQ(b.used(), 60u);
  EXPECT_TRUE(b.take(40));
  EXPECT_EQ(b.used(), 100u);
  EXPECT_FALSE(b.take(1));
  b.give_back(70);
  EXPECT_EQ(b.used(), 30u);
  EXPECT_EQ(b.peak(), 100u);
  EXPECT_EQ(b.limit(), 100u);
}

TEST(ReassemblyBudget, BufferIsChargedAndFreedOnCompletionReset) {
  ReassemblyBudget b(1 << 20);
  Reassembler r(1 << 20, &b);
  const Buf a(1000, 1), c(500, 2);
  ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
  EXPECT_GE(b.used(), 1000u);
  EXPECT_EQ(b.used(), r.allocated());
  Reassembler::Step st;
  Bytes out;
  ASSERT_TRUE(r.feed(frag(FrameType::kUnset, kFlagFin, 1, 1, c), &st, &out).ok());
  ASSERT_EQ(st, Reassembler::Step::kComplete);
  ASSERT_EQ(out.size(), 1500u);
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1499], 2);
  EXPECT_EQ(b.used(), r.allocated());  // the payload is still readable here
  r.reset();                           // the caller is done with it
  EXPECT_EQ(b.used(), 0u);
  EXPECT_EQ(r.allocated(), 0u);
}

TEST(ReassemblyBudget, NextFeedFreesACompletedPayload) {
  ReassemblyBudget b(1 << 20);
  Reassembler r(1 << 20, &b);
  const Buf a(1000, 1);
  ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
  ASSERT_EQ(feed(r, frag(FrameType::kUnset, kFlagFin, 1, 1, a)), Status::kNormal);
  EXPECT_GT(b.used(), 0u);
  ASSERT_EQ(feed(r, frag(FrameType::kNotify, kFlagFin, 3, 1, a)), Status::kNormal);
  EXPECT_EQ(b.used(), 0u);  // unfragmented: no buffer, and the old one is gone
}

TEST(ReassemblyBudget, EveryEndGivesTheBytesBack) {
  const Buf a(2000, 1);
  ReassemblyBudget b(1 << 20);
  {  // abort
    Reassembler r(1 << 20, &b);
    ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
    Reassembler::Step st;
    ASSERT_EQ(feed(r, frag(FrameType::kUnset, kFlagFin | kFlagAbort, 1, 1, {}), &st),
              Status::kNormal);
    EXPECT_EQ(st, Reassembler::Step::kAborted);
    EXPECT_EQ(b.used(), 0u);
  }
  {  // interlaced NOTIFY
    Reassembler r(1 << 20, &b);
    ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
    EXPECT_EQ(feed(r, frag(FrameType::kNotify, kFlagFin, 2, 1, a)), Status::kInterlaced);
    EXPECT_EQ(b.used(), 0u);
  }
  {  // fragment for other ids
    Reassembler r(1 << 20, &b);
    ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
    EXPECT_EQ(feed(r, frag(FrameType::kUnset, 0, 1, 2, a)), Status::kInterlaced);
    EXPECT_EQ(b.used(), 0u);
  }
  {  // beyond max-fragmented-size
    Reassembler r(3000, &b);
    ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
    EXPECT_EQ(feed(r, frag(FrameType::kUnset, 0, 1, 1, a)), Status::kTooBig);
    EXPECT_EQ(b.used(), 0u);
  }
  {  // the connection goes away mid-reassembly
    Reassembler r(1 << 20, &b);
    ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
    EXPECT_GT(b.used(), 0u);
  }
  EXPECT_EQ(b.used(), 0u);
  {  // reset()
    Reassembler r(1 << 20, &b);
    ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
    r.reset();
    EXPECT_EQ(b.used(), 0u);
    EXPECT_FALSE(r.active());
  }
}

// Many connections each start a fragmented NOTIFY: the budget holds whatever their number;
// the ones that do not fit get status 13 and hold nothing; once the others finish, a new one
// fits again.
TEST(ReassemblyBudget, SharedByManyConnections) {
  const size_t limit = 64 * 1024;
  ReassemblyBudget b(limit);
  const Buf chunk(10000, 7);
  std::vector<std::unique_ptr<Reassembler>> conns;
  size_t accepted = 0, refused = 0;
  for (int i = 0; i < 50; ++i) {
    conns.push_back(std::make_unique<Reassembler>(4 << 20, &b));
    const Status s = feed(*conns.back(), frag(FrameType::kNotify, 0, 1, 1, chunk));
    if (s == Status::kNormal) {
      ++accepted;
    } else {
      EXPECT_EQ(s, Status::kResourceError);
      EXPECT_FALSE(conns.back()->active());
      EXPECT_EQ(conns.back()->allocated(), 0u);
      ++refused;
    }
    EXPECT_LE(b.used(), limit);
  }
  EXPECT_EQ(accepted, limit / chunk.size());
  EXPECT_EQ(refused, 50 - accepted);
  // The accepted ones grow: each fragment either fits or fails with 13, never more than the
  // limit is held.
  size_t grown_refused = 0;
  for (auto& r : conns) {
    if (!r->active()) continue;
    if (feed(*r, frag(FrameType::kUnset, 0, 1, 1, chunk)) == Status::kResourceError) {
      ++grown_refused;
      EXPECT_FALSE(r->active());
    }
    EXPECT_LE(b.used(), limit);
  }
  EXPECT_GT(grown_refused, 0u);
  conns.clear();
  EXPECT_EQ(b.used(), 0u);
  EXPECT_LE(b.peak(), limit);
  Reassembler r(4 << 20, &b);
  EXPECT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, chunk)), Status::kNormal);
}

// When doubling the buffer would not fit in the budget, the exact need still may.
TEST(ReassemblyBudget, GrowsToTheExactNeedWhenDoublingDoesNotFit) {
  ReassemblyBudget b(2500);
  Reassembler r(1 << 20, &b);
  const Buf a(1000, 1), c(1400, 2);
  ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
  Reassembler::Step st;
  ASSERT_EQ(feed(r, frag(FrameType::kUnset, kFlagFin, 1, 1, c), &st), Status::kNormal);
  EXPECT_EQ(st, Reassembler::Step::kComplete);
  EXPECT_EQ(r.allocated(), 2400u);
  EXPECT_EQ(b.used(), 2400u);
}

TEST(ReassemblyBudget, WithoutBudgetNothingIsCharged) {
  Reassembler r(1 << 20);
  const Buf a(1000, 1);
  ASSERT_EQ(feed(r, frag(FrameType::kNotify, 0, 1, 1, a)), Status::kNormal);
  EXPECT_GE(r.allocated(), 1000u);
}

}  // namespace
}  // namespace spoad::spop

namespace spoad::config {
namespace {

const char* kAgent = R"(
agents:
  - name: e
    type: echo
    listen: 127.0.0.1:12345
)";

TEST(ReassemblyConfig, Defaults) {
  const Config c = parse_config(kAgent, "t.yaml");
  ASSERT_EQ(c.agents.size(), 1u);
  EXPECT_EQ(c.agents[0].runtime.max_reassembly_bytes, uint64_t{16} << 20);
  EXPECT_EQ(c.agents[0].runtime.fragment_timeout_ms, 10'000u);
}

TEST(ReassemblyConfig, KeysAndDefaultFollowingMaxFragmentedSize) {
  Config c = parse_config(std::string(kAgent) + R"(    max-reassembly-bytes: 64m
    timeout:
      fragment: 2s
)",
                          "t.yaml");
  EXPECT_EQ(c.agents[0].runtime.max_reassembly_bytes, uint64_t{64} << 20);
  EXPECT_EQ(c.agents[0].runtime.fragment_timeout_ms, 2000u);
  // A larger max-fragmented-size raises the default budget with it.
  c = parse_config(std::string(kAgent) + "    max-fragmented-size: 32m\n", "t.yaml");
  EXPECT_EQ(c.agents[0].runtime.max_reassembly_bytes, uint64_t{32} << 20);
}

TEST(ReassemblyConfig, ErrorsNameFileLineAndKey) {
  try {
    parse_config(
        std::string(kAgent) + "    max-fragmented-size: 8m\n    max-reassembly-bytes: 4m\n",
        "t.yaml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.line(), 7) << e.what();
    EXPECT_EQ(e.key(), "agents[0].max-reassembly-bytes") << e.what();
    EXPECT_NE(std::string(e.what()).find("smaller than max-fragmented-size"), std::string::npos)
        << e.what();
  }
  try {
    parse_config(std::string(kAgent) + "    timeout:\n      fragment: soon\n", "t.yaml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.line(), 7) << e.what();
    EXPECT_EQ(e.key(), "agents[0].timeout.fragment") << e.what();
  }
}

}  // namespace
}  // namespace spoad::config
