// agents/echo: what an ACK carries back for each argument, and the ACKs held back by
// `delay_ms` on a real libuv loop: released by their timer, waited for by a soft-stop, let go
// by a hard-stop (the agent destroyed while it holds them).
#include "agents/echo/echo.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "spop/reader.h"
#include "tests/support/spop_message.h"
#include "tests/support/test_loop.h"
#include "util/log.h"

namespace spoad::agents::echo {
namespace {

using spoad::testing::run_until;
using spoad::testing::TestLoop;

class Echo {
 public:
  explicit Echo(uv_loop_t* loop, EchoOptions opts = {}) {
    agent::Context ctx;
    ctx.name = "echo";
    ctx.loop = loop;
    ctx.log = util::make_logger("echo");
    agent_ = std::make_unique<EchoAgent>(ctx, opts);
  }
  // Hands one message to the agent as the runtime does: one reference held during dispatch,
  // released after on_message.
  void send(agent::Reply& reply, const std::vector<spop::KV>& args) {
    const spoad::testing::EncodedMessage m("check", args);
    ASSERT_TRUE(m.ok());
    reply.reset(&owner, 1, ++frame_id_);
    agent_->on_message(m.get(), reply);
    reply.release();
  }
  EchoAgent& agent() { return *agent_; }
  void destroy() { agent_.reset(); }
  spoad::testing::CountingOwner owner;

 private:
  std::unique_ptr<EchoAgent> agent_;
  uint64_t frame_id_ = 0;
};

spop::KV Int(std::string_view name, int64_t v) {
  return {name, spop::Value::Int64(v)};
}

TEST(EchoAgent, SendsBackEachArgumentWithItsTypeLengthAndDigest) {
  TestLoop loop;
  EchoOptions opts;
  opts.echo_max_size = 3;
  Echo e(loop.get(), opts);
  agent::Reply reply;
  e.send(reply, {{"s", spop::Value::String("abc")},
                 {"big", spop::Value::Binary("abcd")},
                 {"", spop::Value::Int32(-7)}});
  EXPECT_EQ(e.owner.completed, 1);
  const auto acts = spoad::testing::decode_actions(reply);
  ASSERT_TRUE(acts.ok);
  std::map<std::string, spop::Value> vars;
  for (const spop::Action& a : acts.list) {
    EXPECT_EQ(a.type, spop::ActionType::kSetVar);
    EXPECT_EQ(a.scope, spop::Scope::kTransaction);
    vars[std::string(a.name)] = a.value;
  }
  EXPECT_EQ(vars.at("msg").text(), "check");
  EXPECT_EQ(vars.at("nargs").as_int64(), 3);
  EXPECT_EQ(vars.at("s").text(), "abc");
  EXPECT_EQ(vars.at("s_type").text(), "str");
  EXPECT_EQ(vars.at("s_len").as_int64(), 3);
  EXPECT_EQ(vars.at("s_sha256").text(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // Longer than echo-max-size: its length and digest, not its value.
  EXPECT_EQ(vars.count("big"), 0u);
  EXPECT_EQ(vars.at("big_type").text(), "bin");
  EXPECT_EQ(vars.at("big_len").as_int64(), 4);
  // Unnamed: arg<index>; not text: no length or digest.
  EXPECT_EQ(vars.at("arg2").as_int64(), -7);
  EXPECT_EQ(vars.at("arg2_type").text(), "int32");
  EXPECT_EQ(vars.count("arg2_len"), 0u);
}

TEST(EchoAgent, DelayHoldsTheAckUntilItsTimerAndSoftStopWaitsForIt) {
  TestLoop loop;
  Echo e(loop.get());
  agent::Reply first, second;
  e.send(first, {Int("delay_ms", 20)});
  e.send(second, {Int("delay_ms", 40)});
  EXPECT_EQ(e.owner.completed, 0);  // both held
  bool stopped = false;
  e.agent().stop([&] { stopped = true; });
  EXPECT_FALSE(stopped);  // ACKs still held
  ASSERT_TRUE(run_until(loop.get(), [&] { return e.owner.completed == 1; }));
  EXPECT_FALSE(stopped);
  ASSERT_TRUE(run_until(loop.get(), [&] { return stopped; }));
  EXPECT_EQ(e.owner.completed, 2);
  nlohmann::json stats;
  e.agent().stats(stats);
  EXPECT_EQ(stats["deferred"], 2);
  EXPECT_EQ(stats["holding"], 0);
}

TEST(EchoAgent, SoftStopWithNothingHeldIsDoneAtOnce) {
  TestLoop loop;
  Echo e(loop.get());
  bool stopped = false;
  e.agent().stop([&] { stopped = true; });
  EXPECT_TRUE(stopped);
}

TEST(EchoAgent, HardStopLetsHeldAcksGoAndClosesTheirTimers) {
  TestLoop loop;  // its destructor fails the test if a timer was left open
  Echo e(loop.get());
  agent::Reply a, b;
  e.send(a, {Int("delay_ms", 60'000)});
  e.send(b, {Int("delay_ms", 60'000)});
  EXPECT_EQ(e.owner.completed, 0);
  e.destroy();
  EXPECT_EQ(e.owner.completed, 2);
}

}  // namespace
}  // namespace spoad::agents::echo
