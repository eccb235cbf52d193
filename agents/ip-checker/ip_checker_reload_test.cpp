// Tests of the ip-checker agent's list files: reload() without a loop, the file watcher and
// reloads on the thread pool of a real libuv loop, stop and destruction during a reload.
#include <gtest/gtest.h>
#include <uv.h>

#include <string>

#include "agents/ip-checker/ip_checker_test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using namespace test;
using spoad::testing::run_until;

// ---- reloads ------------------------------------------------------------------------------

TEST(IpChecker, ReloadWithoutLoopKeepsTheOldListOnError) {
  TempDir dir;
  const std::string path = dir.write("drop.txt", "203.0.113.0/24\n");
  auto a = make_agent("deny:\n  - {name: drop, score: 100, file: " + path + "}\n");
  EXPECT_EQ(brief(send_ipv4(*a, "198.51.100.1")), "0/-/-");
  dir.write("drop.txt", "203.0.113.0/24\n198.51.100.0/24\n");
  a->reload();
  EXPECT_EQ(brief(send_ipv4(*a, "198.51.100.1")), "100/B/drop");
  dir.write("drop.txt", "192.0.2.0/24\nthis is not an address\n");
  a->reload();
  EXPECT_EQ(brief(send_ipv4(*a, "198.51.100.1")), "100/B/drop");  // the old list stays
  EXPECT_EQ(brief(send_ipv4(*a, "192.0.2.1")), "0/-/-");
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["reloads_ok"], 1);
  EXPECT_EQ(st["reloads_failed"], 1);
  EXPECT_EQ(st["lists"][0]["status"], "failed");
  EXPECT_EQ(st["lists"][0]["entries"], 2);
  EXPECT_NE(st["lists"][0]["error"].get<std::string>().find(path + ":2: malformed entry"),
            std::string::npos);
  EXPECT_NE(a->show_lists().find("failed: " + path + ":2:"), std::string::npos);
}

TEST_F(IpCheckerLoop, WatcherReloadsChangedFiles) {
  TempDir dir;
  dir.write("drop.txt", "203.0.113.0/24\n");
  auto a = make_agent("watch-delay: 50ms\ndeny:\n  - {name: drop, score: 100, file: " +
                          dir.file("drop.txt") + "}\n",
                      &loop_);
  a->start();
  auto score = [&](const char* ip) {
    Address x;
    parse_address(ip, &x);
    return static_cast<int>(a->check(x).score);
  };
  EXPECT_EQ(score("198.51.100.1"), 0);

  // Replaced by rename, as editors do.
  dir.replace("drop.txt", "203.0.113.0/24\n198.51.100.0/24\n");
  EXPECT_TRUE(run_until(&loop_, [&] { return score("198.51.100.1") == 100; }));
  EXPECT_EQ(a->reloads_completed(), 1u);

  // A broken rewrite in place: the old list stays.
  const uint64_t before = a->reloads_completed();
  dir.write("drop.txt", "203.0.113.0/24\n198.51.100.0/24\n192.0.2.0/24\n10.0.0.0/40\n");
  EXPECT_TRUE(run_until(&loop_, [&] { return a->reloads_completed() > before; }));
  EXPECT_EQ(score("198.51.100.1"), 100);
  EXPECT_EQ(score("192.0.2.1"), 0);
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["reloads_failed"], 1);
  EXPECT_EQ(st["lists"][0]["status"], "failed");

  // Fixed in place: picked up.
  dir.write("drop.txt", "192.0.2.0/24\n");
  EXPECT_TRUE(run_until(&loop_, [&] { return score("192.0.2.1") == 100; }));
  EXPECT_EQ(score("198.51.100.1"), 0);
  st = nlohmann::json();
  a->stats(st);
  EXPECT_EQ(st["reloads_ok"], 2);
  EXPECT_EQ(st["lists"][0]["status"], "ok");
  EXPECT_FALSE(st["last_reload"].is_null());

  // Deleted, then recreated.
  std::filesystem::remove(dir.file("drop.txt"));
  const uint64_t n = a->reloads_completed();
  EXPECT_TRUE(run_until(&loop_, [&] { return a->reloads_completed() > n; }));
  EXPECT_EQ(score("192.0.2.1"), 100);  // kept
  dir.replace("drop.txt", "198.51.100.0/24\n");
  EXPECT_TRUE(run_until(&loop_, [&] { return score("198.51.100.1") == 100; }));
  EXPECT_EQ(score("192.0.2.1"), 0);

  // Other files in the directory do not trigger reloads.
  const uint64_t m = a->reloads_completed();
  dir.write("unrelated.txt", "x\n");
  run_until(
      &loop_, [] { return false; }, 300);
  EXPECT_EQ(a->reloads_completed(), m);
  stop(*a);
}

TEST_F(IpCheckerLoop, ReloadRunsOnTheThreadPool) {
  TempDir dir;
  dir.write("a.txt", "203.0.113.0/24\n");
  dir.write("b.txt", "198.51.100.0/24\n");
  auto a = make_agent("watch: false\nallow:\n  - {name: ok, file: " + dir.file("a.txt") +
                          "}\ndeny:\n  - {name: bad, score: 60, file: " + dir.file("b.txt") + "}\n",
                      &loop_);
  a->start();
  dir.write("b.txt", "198.51.100.0/24\n192.0.2.0/24\n");
  a->reload();
  EXPECT_TRUE(a->reload_running());
  a->reload();  // queued behind the first one
  EXPECT_TRUE(
      run_until(&loop_, [&] { return a->reloads_completed() == 2 && !a->reload_running(); }));
  Address x;
  parse_address("192.0.2.1", &x);
  EXPECT_EQ(a->check(x).score, 60);
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["reloads_ok"], 4);  // two lists, twice
  // No watcher was started (watch: false): a file change does nothing.
  dir.write("b.txt", "10.0.0.0/8\n");
  run_until(
      &loop_, [] { return false; }, 300);
  EXPECT_EQ(a->reloads_completed(), 2u);
  stop(*a);
}

TEST_F(IpCheckerLoop, StopWaitsForARunningReload) {
  TempDir dir;
  dir.write("drop.txt", "203.0.113.0/24\n");
  auto a = make_agent("deny:\n  - {name: drop, score: 100, file: " + dir.file("drop.txt") + "}\n",
                      &loop_);
  a->start();
  a->reload();
  ASSERT_TRUE(a->reload_running());
  bool stopped = false;
  a->stop([&] { stopped = true; });
  EXPECT_FALSE(stopped);
  EXPECT_TRUE(run_until(&loop_, [&] { return stopped; }));
  EXPECT_FALSE(a->reload_running());
  a->reload();  // ignored once stopping
  EXPECT_FALSE(a->reload_running());
}

TEST_F(IpCheckerLoop, DestroyWithoutStopClosesHandles) {
  TempDir dir;
  dir.write("drop.txt", "203.0.113.0/24\n");
  auto a = make_agent("deny:\n  - {name: drop, score: 100, file: " + dir.file("drop.txt") + "}\n",
                      &loop_);
  a->start();
  a->reload();
  a.reset();  // the job and the close callbacks complete without the agent
  uv_run(&loop_, UV_RUN_DEFAULT);
}

// stop() closes the watchers and timers; the agent is destroyed before libuv runs their close
// callbacks, which then must not touch it (nor call `done`).
TEST_F(IpCheckerLoop, DestroyedWhileItsHandlesClose) {
  TempDir dir;
  dir.write("drop.txt", "203.0.113.0/24\n");
  auto a = make_agent("deny:\n  - {name: drop, score: 100, file: " + dir.file("drop.txt") + "}\n",
                      &loop_);
  a->start();
  bool stopped = false;
  a->stop([&] { stopped = true; });
  EXPECT_FALSE(stopped);  // from the close callbacks, not inside stop()
  a.reset();
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_FALSE(stopped);
}

}  // namespace
}  // namespace spoad::agents::ip_checker
