// Tests of the ip-checker agent with its shared store: refused changes while the store is
// disconnected, and two agents (two spoad instances) sharing their runtime entries through a
// real redis-server.
#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <string>

#include "agents/ip-checker/ip_checker_test_support.h"
#include "agents/ip-checker/store_test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using namespace test;
using spoad::testing::run_until;

// With a store that is not connected, a change is refused with the store's error and not
// applied; lookups go on with the entries in memory.
TEST_F(IpCheckerLoop, StoreDisconnectedRefusesChanges) {
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  const std::string url = "redis://:s3cret@127.0.0.1:" + std::to_string(free_port()) + "/0";
  auto opts = parse_yaml(std::string(kRuntime) + "watch: false\nstore: {url: \"" + url + "\"}\n");
  agent::Context ctx;
  ctx.name = "iprep";
  ctx.loop = &loop_;
  ctx.log = util::make_logger("iprep");
  ctx.metrics = scope;
  int pool_calls = 0;
  ctx.pool_state_changed = [&] { ++pool_calls; };
  IpCheckerAgent a(ctx, static_cast<const IpCheckerOptions&>(*opts));
  a.start();
  const std::string err = cli(a, "add ip deny drop 10.0.0.1");
  EXPECT_EQ(err.rfind("ERR ", 0), 0u) << err;
  EXPECT_EQ(err.find("s3cret"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(a.runtime_entries().size(), 0u);
  // A del of an entry this worker does not hold still goes to the store (refused here).
  EXPECT_EQ(cli(a, "del ip drop 10.0.0.1"), err);
  EXPECT_EQ(cli(a, "clear ip drop"), err);
  EXPECT_EQ(pool_calls, 0);
  EXPECT_EQ(brief(send_ipv4(a, "10.0.0.1")), "0/-/-");
  EXPECT_EQ(series(*arena, "spoad_ip_checker_store_writes_refused_total", ""), 3u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_store_connected", ""), 0u);
  const std::string show = cli(a, "show store");
  EXPECT_EQ(show.rfind("store redis://***@127.0.0.1:", 0), 0u) << show;
  EXPECT_NE(show.find(" key-prefix \"spoad:\": disconnected"), std::string::npos) << show;
  EXPECT_NE(show.find("writes_refused=3"), std::string::npos) << show;
  nlohmann::json st;
  a.stats(st);
  EXPECT_EQ(st["store"]["connected"], false);
  EXPECT_EQ(st["store"]["writes_refused"], 3);
  EXPECT_EQ(st["store"]["url"].get<std::string>().find("s3cret"), std::string::npos);
  EXPECT_EQ(st["store"]["status"].get<std::string>().rfind("disconnected", 0), 0u);
  stop(a);
}

// ---- runtime entries through a real redis-server ------------------------------------------

// Two agents standing for two spoad instances share their runtime entries through the store;
// the pool is told of store changes at most once a second; a resync replaces the whole set.
TEST_F(IpCheckerLoop, StoreCarriesChangesBetweenAgents) {
  if (redis_server_path().empty()) GTEST_SKIP() << "redis-server is not installed: test skipped";
  RedisServer redis;
  ASSERT_TRUE(redis.start());
  const std::string yaml =
      std::string(kRuntime) +
      "watch: false\nstore: {url: \"redis://127.0.0.1:" + std::to_string(redis.port()) + "/0\"}\n";
  auto opts = parse_yaml(yaml);
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  agent::Context ctx;
  ctx.name = "iprep";
  ctx.loop = &loop_;
  ctx.log = util::make_logger("iprep");
  IpCheckerAgent a(ctx, static_cast<const IpCheckerOptions&>(*opts));
  ctx.metrics = metrics::Scope(arena, "iprep", "ip-checker");
  // From before b exists: b's first notice (after its first resync) falls in this window too.
  const auto t0 = std::chrono::steady_clock::now();
  int b_told = 0;
  ctx.pool_state_changed = [&] { ++b_told; };
  IpCheckerAgent b(ctx, static_cast<const IpCheckerOptions&>(*opts));
  a.start();
  b.start();
  auto connected = [&](IpCheckerAgent& x) {
    return cli(x, "show store").find("\": connected\n") != std::string::npos;
  };
  ASSERT_TRUE(run_until(
      &loop_, [&] { return connected(a) && connected(b); }, 20000));
  EXPECT_EQ(series(*arena, "spoad_ip_checker_store_connected", ""), 1u);

  EXPECT_EQ(cli(a, "add ip deny runtime 10.0.0.0/24 ttl 1h comment from A"),
            "added 10.0.0.0/24 to runtime (deny, score 80, ttl 3600s)\n");
  ASSERT_TRUE(run_until(&loop_, [&] { return b.check(Address::V4(0x0a000001)).score == 80; }));
  EXPECT_NE(cli(b, "show ip 10.0.0.1").find("source=runtime entry=10.0.0.0/24 "),
            std::string::npos);
  EXPECT_NE(cli(b, "show ip 10.0.0.1").find("comment=\"from A\""), std::string::npos);
  for (int i = 1; i <= 30; ++i)
    cli(a, "add ip deny drop 10.1.0." + std::to_string(i));
  ASSERT_TRUE(run_until(&loop_, [&] { return b.runtime_entries().size() == 31; }));
  EXPECT_EQ(b.check(Address::V4(0x0a01001e)).score, 100);  // 10.1.0.30: the overlay was rebuilt
  const double elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The pool is told of store changes at most once a second.
  EXPECT_GE(b_told, 1);
  EXPECT_LE(b_told, 1 + static_cast<int>(elapsed_s));
  EXPECT_EQ(series(*arena, "spoad_ip_checker_runtime_changes_total", ",op=\"add\""), 31u);

  EXPECT_EQ(cli(b, "del ip drop 10.1.0.1"), "deleted 10.1.0.1/32 from drop\n");
  ASSERT_TRUE(run_until(&loop_, [&] { return a.runtime_entries().size() == 30; }));
  EXPECT_EQ(cli(a, "clear ip drop"), "cleared the runtime entries of drop\n");
  ASSERT_TRUE(run_until(&loop_, [&] { return b.runtime_entries().size() == 1; }));
  EXPECT_EQ(b.check(Address::V4(0x0a01001e)).score, 0);

  // Redis goes away: lookups go on with what each agent holds, changes are refused.
  redis.kill9();
  ASSERT_TRUE(run_until(
      &loop_, [&] { return !connected(a) && !connected(b); }, 20000));
  EXPECT_NE(cli(a, "add ip deny drop 10.2.0.1").find("disconnected"), std::string::npos);
  EXPECT_EQ(b.check(Address::V4(0x0a000001)).score, 80);
  EXPECT_NE(cli(b, "show store").find(": disconnected since 20"), std::string::npos);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_store_connected", ""), 0u);
  EXPECT_GT(series(*arena, "spoad_ip_checker_store_disconnected_since_seconds", ""), 0u);
  // It comes back empty (no persistence): the resync replaces the whole set.
  ASSERT_TRUE(redis.start());
  ASSERT_TRUE(run_until(
      &loop_, [&] { return connected(a) && connected(b); }, 20000));
  ASSERT_TRUE(run_until(&loop_, [&] { return b.runtime_entries().size() == 0; }));
  EXPECT_EQ(b.check(Address::V4(0x0a000001)).score, 0);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_store_disconnected_since_seconds", ""), 0u);
  stop(a);
  stop(b);
}

// A draining worker (its agent stopped, the worker still running for other agents) keeps its
// store: it still receives the changes of other instances, and a pool-wide `del ip` still
// succeeds on it. Its store no longer keeps the loop alive, so that the worker's loop can end.
TEST_F(IpCheckerLoop, StoppedAgentKeepsItsStoreUntilDestroyed) {
  if (redis_server_path().empty()) GTEST_SKIP() << "redis-server is not installed: test skipped";
  RedisServer redis;
  ASSERT_TRUE(redis.start());
  auto opts =
      parse_yaml(std::string(kRuntime) + "watch: false\nstore: {url: \"" + redis.url() + "\"}\n");
  agent::Context ctx;
  ctx.name = "iprep";
  ctx.loop = &loop_;
  ctx.log = util::make_logger("iprep");
  {
    IpCheckerAgent a(ctx, static_cast<const IpCheckerOptions&>(*opts));
    IpCheckerAgent draining(ctx, static_cast<const IpCheckerOptions&>(*opts));
    a.start();
    draining.start();
    auto connected = [&](IpCheckerAgent& x) {
      return cli(x, "show store").find("\": connected\n") != std::string::npos;
    };
    ASSERT_TRUE(run_until(&loop_, [&] { return connected(a) && connected(draining); }));
    stop(draining);
    EXPECT_TRUE(connected(draining));

    EXPECT_EQ(cli(a, "add ip deny drop 10.0.0.1"),
              "added 10.0.0.1/32 to drop (deny, score 100, no expiry)\n");
    ASSERT_TRUE(run_until(&loop_, [&] { return draining.runtime_entries().size() == 1; }));
    EXPECT_EQ(draining.check(Address::V4(0x0a000001)).score, 100);
    // The pool-wide `del ip` reaches the draining worker too, and succeeds there.
    EXPECT_EQ(cli(draining, "del ip drop 10.0.0.1"), "deleted 10.0.0.1/32 from drop\n");
    EXPECT_EQ(draining.check(Address::V4(0x0a000001)).score, 0);
    ASSERT_TRUE(run_until(&loop_, [&] { return a.runtime_entries().size() == 0; }));

    // Once `a` is stopped too, nothing keeps the loop alive though both stores are connected.
    stop(a);
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_FALSE(uv_loop_alive(&loop_));
    EXPECT_TRUE(connected(a) && connected(draining));
  }
  uv_run(&loop_, UV_RUN_NOWAIT);  // the closes of the destroyed stores
}

}  // namespace
}  // namespace spoad::agents::ip_checker
