// Tests of the ip-checker's shared store: Store against a real redis-server started on a free
// port in a temporary directory (skipped, visibly, when redis-server is not installed).
// Every wait runs the loop until the event itself happened (run_until); its deadline only
// guards against a hang.
#include "agents/ip-checker/store.h"

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <signal.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "agents/ip-checker/store_test_support.h"
#include "tests/support/test_loop.h"
#include "util/log.h"

namespace spoad::agents::ip_checker {
namespace {

using namespace test;
using spoad::testing::kGuardMs;
using spoad::testing::run_until;
using spoad::testing::TestLoop;
namespace fmt_ = store_format;

// What a Store's callbacks reported, in order.
struct Seen {
  std::vector<Change> changes;
  std::vector<std::vector<RuntimeEntry>> resyncs;
  std::vector<bool> states;
  std::vector<char> order;  // 'r' resync, 'c' change, 's' state

  Store::Callbacks callbacks() {
    Store::Callbacks cb;
    cb.on_change = [this](const Change& c) {
      changes.push_back(c);
      order.push_back('c');
    };
    cb.on_resync = [this](std::vector<RuntimeEntry> v) {
      std::sort(v.begin(), v.end(), less);
      resyncs.push_back(std::move(v));
      order.push_back('r');
    };
    cb.on_state = [this](bool up) {
      states.push_back(up);
      order.push_back('s');
    };
    return cb;
  }
  static bool less(const RuntimeEntry& a, const RuntimeEntry& b) {
    return fmt_::entry_key("", a) < fmt_::entry_key("", b);
  }
};

std::vector<RuntimeEntry> sorted(std::vector<RuntimeEntry> v) {
  std::sort(v.begin(), v.end(), Seen::less);
  return v;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (redis_server_path().empty())
      GTEST_SKIP() << "redis-server is not installed (apt-get install redis-server, or set "
                      "SPOAD_REDIS_SERVER): the Store tests against Redis are skipped";
  }
  void TearDown() override {
    // Stores stop before the loop drains (TestLoop's destructor checks every handle closed).
    for (auto& s : stores_) {
      if (stopped_.count(s.get())) continue;
      bool done = false;
      s->stop([&] { done = true; });
      EXPECT_TRUE(run_until(loop_.get(), [&] { return done; }));
    }
    stores_.clear();
  }

  Store& make(const std::string& url, Seen* seen, StoreOptions opts = {}) {
    opts.url = url;
    stores_.push_back(std::make_unique<Store>(loop_.get(), opts, util::make_logger("store-test"),
                                              seen->callbacks()));
    stores_.back()->start();
    return *stores_.back();
  }
  bool wait(const std::function<bool()>& pred) { return run_until(loop_.get(), pred); }

  // Owned here, so that they outlive the Stores whose callbacks fill them.
  Seen& seen() { return seen_.emplace_back(); }
  // Owned here, so that the Stores stop before their server goes.
  RedisServer& redis(bool appendonly = false, const std::string& password = "") {
    redis_.push_back(std::make_unique<RedisServer>(appendonly, password));
    return *redis_.back();
  }

  TestLoop loop_;
  std::deque<Seen> seen_;
  std::vector<std::unique_ptr<RedisServer>> redis_;
  std::vector<std::unique_ptr<Store>> stores_;
  std::set<const Store*> stopped_;  // stopped by the test itself
};

TEST_F(StoreTest, WriteReachesOtherStoresNotItself) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& sa = seen();
  Seen& sb = seen();
  Seen& sc = seen();
  Store& a = make(redis.url(), &sa);
  Store& b = make(redis.url(), &sb);
  StoreOptions other;
  other.key_prefix = "other:";
  Store& c = make(redis.url(), &sc, other);
  ASSERT_TRUE(wait([&] { return a.connected() && b.connected() && c.connected(); }));
  EXPECT_EQ(sa.order, std::vector<char>({'r', 's'}));
  EXPECT_EQ(sa.states, std::vector<bool>{true});
  EXPECT_EQ(a.disconnected_since_s(), 0);

  const int64_t exp = now_s() + 3600;
  const RuntimeEntry e1 =
      entry("deny", "192.0.2.0/24", false, 70, exp, std::string("a\0\xff\"", 4));
  std::string err;
  ASSERT_TRUE(a.write(add(e1), &err)) << err;
  ASSERT_TRUE(wait([&] { return sb.changes.size() == 1; }));
  EXPECT_EQ(sb.changes[0], add(e1));
  EXPECT_EQ(redis.get("spoad:entry:deny:192.0.2.0/24"),
            "d 70 " + std::to_string(exp) + " 6100ff22");
  // The key expires when the entry does, to the second.
  EXPECT_EQ(redis.integer({"EXPIRETIME", "spoad:entry:deny:192.0.2.0/24"}), exp);

  // B's write reaches A. A's own announcement came first on the channel, so had it been
  // passed back to A, A would have it before this one.
  const RuntimeEntry e2 = entry("allow", "2001:db8::/32", true);
  ASSERT_TRUE(b.write(add(e2), &err)) << err;
  ASSERT_TRUE(wait([&] { return sa.changes.size() == 1; }));
  EXPECT_EQ(sa.changes[0], add(e2));
  EXPECT_EQ(redis.integer({"TTL", "spoad:entry:allow:2001:db8::/32"}), -1);  // no expiry

  ASSERT_TRUE(a.write(del("deny", "192.0.2.0/24"), &err)) << err;
  ASSERT_TRUE(wait([&] { return sb.changes.size() == 2; }));
  EXPECT_EQ(sb.changes[1], del("deny", "192.0.2.0/24"));
  EXPECT_EQ(redis.integer({"EXISTS", "spoad:entry:deny:192.0.2.0/24"}), 0);
  EXPECT_EQ(b.changes_received(), 2u);
  EXPECT_EQ(a.changes_received(), 1u);
  EXPECT_TRUE(sc.changes.empty());  // another prefix, another channel
  EXPECT_EQ(a.write_failures() + b.write_failures(), 0u);
}

TEST_F(StoreTest, ClearRemovesOneListAndLaterWritesWait) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& sa = seen();
  Seen& sb = seen();
  Store& a = make(redis.url(), &sa);
  Store& b = make(redis.url(), &sb);
  ASSERT_TRUE(wait([&] { return a.connected() && b.connected(); }));
  std::string err;
  for (int i = 0; i < 2500; ++i)  // more than one SCAN batch
    ASSERT_TRUE(a.write(
        add(entry("deny", "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256))),
        &err))
        << err;
  ASSERT_TRUE(a.write(add(entry("deny2", "192.0.2.0/24")), &err)) << err;
  ASSERT_TRUE(a.write(clear("deny"), &err)) << err;
  // Written right after the clear: must not be deleted by it.
  const RuntimeEntry after = entry("deny", "198.51.100.0/24", false, 9);
  ASSERT_TRUE(a.write(add(after), &err)) << err;
  ASSERT_TRUE(wait([&] { return sb.changes.size() == 2503; }));
  EXPECT_EQ(sb.changes[2501], clear("deny"));
  EXPECT_EQ(sb.changes[2502], add(after));
  EXPECT_EQ(redis.keys("spoad:entry:*"),
            std::vector<std::string>(
                {"spoad:entry:deny2:192.0.2.0/24", "spoad:entry:deny:198.51.100.0/24"}));
  EXPECT_EQ(a.write_failures(), 0u);
}

TEST_F(StoreTest, ResyncReturnsStoredEntriesWithoutExpiredOnes) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  const RuntimeEntry forever = entry("deny", "192.0.2.0/24", false, 70);
  const RuntimeEntry later = entry("allow", "2001:db8::/32", true, 0, now_s() + 3600, "hi");
  const RuntimeEntry expired = entry("deny", "198.51.100.7/32", false, 50, now_s() - 10);
  for (const auto& e : {forever, later, expired})  // no Redis TTL: only our check drops it
    redis.cmd({"SET", fmt_::entry_key("spoad:", e), fmt_::entry_value(e)});
  redis.cmd({"SET", "other:entry:deny:203.0.113.0/24", "d 1 0"});
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  ASSERT_EQ(s.resyncs.size(), 1u);
  EXPECT_EQ(s.resyncs[0], sorted({forever, later}));
  EXPECT_EQ(st.resyncs(), 1u);
  EXPECT_EQ(st.malformed(), 0u);
}

TEST_F(StoreTest, ChangesDuringResyncComeAfterIt) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  // Enough entries for a resync of many round trips.
  for (int i = 0; i < 20000; i += 1000) {
    std::vector<std::string> mset = {"MSET"};
    for (int j = i; j < i + 1000; ++j) {
      const RuntimeEntry e =
          entry("deny", "10." + std::to_string(j / 256 / 256) + "." +
                            std::to_string(j / 256 % 256) + "." + std::to_string(j % 256));
      mset.push_back(fmt_::entry_key("spoad:", e));
      mset.push_back(fmt_::entry_value(e));
    }
    redis.cmd(mset);
  }
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  int published = 0;
  // Announce a change at every turn of the loop until the Store is up, and a few after.
  ASSERT_TRUE(wait([&] {
    const RuntimeEntry e = entry("deny2", "192.0.2." + std::to_string(published % 256));
    redis.cmd({"PUBLISH", "spoad:changes", fmt_::change_message(7, add(e))});
    ++published;
    return st.connected() && s.changes.size() >= 3;
  }));
  ASSERT_EQ(s.resyncs.size(), 1u);
  EXPECT_EQ(s.resyncs[0].size(), 20000u);
  EXPECT_EQ(s.order[0], 'r');  // every change after the resync
  EXPECT_EQ(std::count(s.order.begin(), s.order.end(), 'r'), 1);
}

TEST_F(StoreTest, GarbageIsSkippedAndCounted) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  const RuntimeEntry good = entry("deny", "192.0.2.0/24");
  redis.cmd({"SET", fmt_::entry_key("spoad:", good), fmt_::entry_value(good)});
  redis.cmd({"SET", "spoad:entry:deny:198.51.100.0/24", std::string("garbage\xff\0", 9)});
  redis.cmd({"SET", "spoad:entry:deny:not-an-address", "d 1 0"});
  redis.cmd({"HSET", "spoad:entry:deny:203.0.113.0/24", "f", "v"});  // not a string: MGET nil
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  EXPECT_EQ(s.resyncs.at(0), std::vector<RuntimeEntry>{good});
  EXPECT_EQ(st.malformed(), 2u);

  std::mt19937 rng(1);
  std::string noise(300, '\0');
  for (char& c : noise)
    c = static_cast<char>(rng());
  for (const std::string& m :
       {std::string("hello"), noise, std::string("0000000000000007 add deny 1.2.3.4/8 d 1 0"),
        std::string(5000, 'x')})
    redis.cmd({"PUBLISH", "spoad:changes", m});
  const Change valid = add(entry("deny", "1.0.0.0/8"));
  redis.cmd({"PUBLISH", "spoad:changes", fmt_::change_message(7, valid)});
  ASSERT_TRUE(wait([&] { return s.changes.size() == 1; }));
  EXPECT_EQ(s.changes[0], valid);
  EXPECT_EQ(st.malformed(), 6u);
  EXPECT_TRUE(st.connected());
}

TEST_F(StoreTest, KilledThenRestarted) {
  RedisServer& redis = this->redis(/*appendonly=*/true);
  ASSERT_TRUE(redis.start());
  Seen& sa = seen();
  Store& a = make(redis.url(), &sa);
  ASSERT_TRUE(wait([&] { return a.connected(); }));
  const RuntimeEntry e1 = entry("deny", "192.0.2.0/24", false, 70, now_s() + 3600);
  std::string err;
  ASSERT_TRUE(a.write(add(e1), &err)) << err;
  ASSERT_TRUE(wait([&] { return redis.get(fmt_::entry_key("spoad:", e1)) != "(none)"; }));

  const int64_t before_kill = now_s();
  redis.kill9();
  ASSERT_TRUE(wait([&] { return !sa.states.empty() && !sa.states.back(); }));
  EXPECT_FALSE(a.connected());
  EXPECT_GE(a.disconnected_since_s(), before_kill);
  err.clear();
  EXPECT_FALSE(a.write(add(entry("deny", "198.51.100.0/24")), &err));
  EXPECT_NE(err.find("store " + redis.url() + " disconnected since "), std::string::npos) << err;
  EXPECT_EQ(err.back(), 'Z') << err;
  // Retries while it is away.
  ASSERT_TRUE(wait([&] { return a.reconnects() >= 2; }));
  EXPECT_FALSE(a.connected());

  ASSERT_TRUE(redis.start());  // same port, same data
  ASSERT_TRUE(wait([&] { return a.connected(); }));
  EXPECT_EQ(a.resyncs(), 2u);
  ASSERT_EQ(sa.resyncs.size(), 2u);
  EXPECT_EQ(sa.resyncs[1], std::vector<RuntimeEntry>{e1});
  EXPECT_EQ(sa.states, std::vector<bool>({true, false, true}));
  // Subscribed again: a change from another Store arrives.
  Seen& sb = seen();
  Store& b = make(redis.url(), &sb);
  ASSERT_TRUE(wait([&] { return b.connected(); }));
  ASSERT_TRUE(b.write(del("deny", "192.0.2.0/24"), &err)) << err;
  ASSERT_TRUE(wait([&] { return sa.changes.size() == 1; }));
  EXPECT_EQ(sa.changes[0], del("deny", "192.0.2.0/24"));
}

// A server that stops answering (SIGSTOP) while its connections stay open: the unanswered
// PING counts as a lost connection; once it answers again, the Store reconnects.
TEST_F(StoreTest, FrozenServerCountsAsDown) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  redis.signal(SIGSTOP);
  ASSERT_TRUE(wait([&] { return !st.connected(); }));
  EXPECT_EQ(s.states, std::vector<bool>({true, false}));
  std::string err;
  EXPECT_FALSE(st.write(add(entry("deny", "192.0.2.0/24")), &err));
  EXPECT_NE(err.find("disconnected since"), std::string::npos) << err;
  redis.signal(SIGCONT);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  EXPECT_EQ(st.resyncs(), 2u);
}

TEST_F(StoreTest, ResyncOverBudgetIsRefused) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  for (int i = 0; i < 10; ++i) {
    const RuntimeEntry e = entry("deny", "192.0.2." + std::to_string(i));
    redis.cmd({"SET", fmt_::entry_key("spoad:", e), fmt_::entry_value(e)});
  }
  Seen& s = seen();
  StoreOptions small;
  small.max_entries = 5;
  Store& st = make(redis.url(), &s, small);
  ASSERT_TRUE(wait([&] { return st.budget_refusals() >= 1; }));
  EXPECT_FALSE(st.connected());
  EXPECT_EQ(st.resyncs(), 0u);
  EXPECT_TRUE(s.resyncs.empty());
}

TEST_F(StoreTest, PasswordAndDatabase) {
  RedisServer& redis = this->redis(false, "s3cret@");
  ASSERT_TRUE(redis.start());
  Seen& s = seen();
  Seen& bad = seen();
  Store& st = make(redis.url(":s3cret%40@", 3), &s);
  Store& wrong = make(redis.url(":nope@", 3), &bad);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  std::string err;
  const RuntimeEntry e = entry("deny", "192.0.2.0/24");
  ASSERT_TRUE(st.write(add(e), &err)) << err;
  redis.select(3);
  ASSERT_TRUE(wait([&] { return redis.get(fmt_::entry_key("spoad:", e)) != "(none)"; }));
  // A wrong password: refused, retried, never connected.
  ASSERT_TRUE(wait([&] { return wrong.reconnects() >= 2; }));
  EXPECT_FALSE(wrong.connected());
  EXPECT_EQ(wrong.resyncs(), 0u);
  EXPECT_FALSE(wrong.write(add(e), &err));
}

TEST_F(StoreTest, HostNameIsResolved) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& s = seen();
  Store& st = make("redis://localhost:" + std::to_string(redis.port()), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  EXPECT_EQ(s.resyncs.size(), 1u);
}

TEST_F(StoreTest, SilentServerTimesOut) {
  // Accepts TCP connections (the kernel does) but never answers.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  Seen& s = seen();
  Store& st = make("redis://127.0.0.1:" + std::to_string(ntohs(a.sin_port)), &s);
  ASSERT_TRUE(wait([&] { return st.reconnects() >= 1; }));
  EXPECT_FALSE(st.connected());
  EXPECT_TRUE(s.states.empty());
  ::close(fd);
}

// No Redis at all (a closed port): writes refused from the start, retries with backoff.
TEST(Store, NoServer) {
  TestLoop loop;
  Seen s;
  StoreOptions o;
  o.url = "redis://127.0.0.1:" + std::to_string(free_port()) + "/0";
  Store st(loop.get(), o, util::make_logger("store-test"), s.callbacks());
  std::string err;
  EXPECT_FALSE(st.write(add(entry("deny", "192.0.2.0/24")), &err));
  EXPECT_EQ(err.find("store " + o.url + " disconnected since "), 0u) << err;
  EXPECT_GT(st.disconnected_since_s(), 0);
  st.start();
  ASSERT_TRUE(run_until(loop.get(), [&] { return st.reconnects() >= 3; }));
  EXPECT_FALSE(st.connected());
  EXPECT_TRUE(s.order.empty());  // never up, so no on_state either
  bool done = false;
  st.stop([&] { done = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return done; }));
  EXPECT_THROW(Store(loop.get(), StoreOptions{"rediss://h"}, nullptr, {}), std::invalid_argument);
}

TEST_F(StoreTest, StopAndDestroyWithWorkInFlight) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& s1 = seen();
  Seen& s2 = seen();
  Seen& s3 = seen();
  {
    // Destroyed while connecting: no callback afterwards, every handle closed (TestLoop).
    StoreOptions o;
    o.url = redis.url();
    Store st(loop_.get(), o, util::make_logger("store-test"), s1.callbacks());
    st.start();
  }
  {
    // Destroyed while resolving its host name.
    StoreOptions o;
    o.url = "redis://localhost:" + std::to_string(redis.port());
    Store st(loop_.get(), o, util::make_logger("store-test"), s1.callbacks());
    st.start();
  }
  Store& a = make(redis.url(), &s2);
  ASSERT_TRUE(wait([&] { return a.connected(); }));
  std::string err;
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(a.write(add(entry("deny", "10.0.0." + std::to_string(i))), &err)) << err;
  ASSERT_TRUE(a.write(clear("deny"), &err)) << err;
  ASSERT_TRUE(a.write(add(entry("deny", "10.0.1.0/24")), &err)) << err;
  // Stopped before any of them was answered: each counts as a failure.
  bool done = false;
  a.stop([&] { done = true; });
  stopped_.insert(&a);
  EXPECT_FALSE(done);  // from the loop, not inside stop()
  ASSERT_TRUE(wait([&] { return done; }));
  EXPECT_EQ(a.write_failures(), 102u);
  EXPECT_FALSE(a.connected());
  EXPECT_FALSE(a.write(add(entry("deny", "10.0.2.0/24")), &err));
  {
    // Destroyed with writes in flight, without stop().
    StoreOptions o;
    o.url = redis.url();
    auto st =
        std::make_unique<Store>(loop_.get(), o, util::make_logger("store-test"), s3.callbacks());
    st->start();
    ASSERT_TRUE(wait([&] { return st->connected(); }));
    ASSERT_TRUE(st->write(add(entry("deny", "10.0.3.0/24")), &err)) << err;
    st.reset();
  }
  EXPECT_TRUE(s1.order.empty());
}

}  // namespace
}  // namespace spoad::agents::ip_checker
