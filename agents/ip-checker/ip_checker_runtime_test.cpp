// Tests of the ip-checker agent's runtime entries: the CLI commands, the combined verdict, the
// budget, metrics and stats, expiry (by the wall clock, by the timer, on the request path) and
// the pool state.
#include <gtest/gtest.h>
#include <uv.h>

#include <string>

#include "agents/ip-checker/ip_checker_test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using namespace test;
using spoad::testing::run_until;

TEST(IpCheckerRuntime, AddShowDeleteClear) {
  auto a = make_agent(kRuntime);
  int64_t now = kT0;
  a->set_wall_clock([&] { return now; });
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "0/-/-");
  EXPECT_EQ(cli(*a, "add ip deny runtime 10.0.0.0/24 ttl 10m comment \"port scan\""),
            "added 10.0.0.0/24 to runtime (deny, score 80, ttl 600s)\n");
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "80/B/runtime");
  EXPECT_EQ(brief(send_ipv6(*a, "::ffff:10.0.0.9")), "80/B/runtime");
  EXPECT_EQ(cli(*a, "show ip 10.0.0.1"),
            "10.0.0.1 ip_score=80 blocked=true list=runtime source=runtime entry=10.0.0.0/24 "
            "expires=2030-03-17T17:56:40Z left=600s comment=\"port scan\"\n");
  now += 1500;
  EXPECT_NE(cli(*a, "show ip 10.0.0.1").find(" left=598s "), std::string::npos);
  // Host bits are cleared; the same key is replaced; a score of its own.
  EXPECT_EQ(cli(*a, "add ip deny runtime 10.0.0.77/24 score 30"),
            "added 10.0.0.0/24 to runtime (deny, score 30, no expiry)\n");
  EXPECT_EQ(a->runtime_entries().size(), 1u);
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "30/-/runtime");
  EXPECT_EQ(cli(*a, "add ip deny drop 2001:db8::/32"),
            "added 2001:db8::/32 to drop (deny, score 100, no expiry)\n");
  EXPECT_EQ(brief(send_str(*a, "2001:db8::5")), "100/B/drop");
  EXPECT_EQ(cli(*a, "add ip allow partners 10.0.0.5 ttl 1h"),
            "added 10.0.0.5/32 to partners (allow, ttl 3600s)\n");
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.5")), "0/-/partners");
  EXPECT_EQ(cli(*a, "show ip entries runtime"),
            "# runtime: 1 runtime entry (deny list, default score 80)\n"
            "10.0.0.0/24 score=30 expires=never\n");
  EXPECT_EQ(cli(*a, "show ip entries partners"),
            "# partners: 1 runtime entry (allow list)\n"
            "10.0.0.5/32 expires=2030-03-17T18:46:42Z left=3600s\n");
  EXPECT_EQ(cli(*a, "show ip entries low"),
            "# low: 0 runtime entries (deny list, default score 20)\n");
  // show lists counts them.
  const std::string lists = a->show_lists();
  EXPECT_NE(lists.find("runtime"), std::string::npos) << lists;
  // del, with or without the kind.
  EXPECT_EQ(cli(*a, "del ip deny runtime 10.0.0.0/24"), "deleted 10.0.0.0/24 from runtime\n");
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "0/-/-");
  EXPECT_EQ(cli(*a, "del ip partners 10.0.0.5"), "deleted 10.0.0.5/32 from partners\n");
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.5")), "0/-/-");
  // clear removes the runtime entries only.
  cli(*a, "add ip deny drop 10.1.0.0/16");
  EXPECT_EQ(cli(*a, "clear ip drop"), "cleared the runtime entries of drop\n");
  EXPECT_EQ(brief(send_ipv4(*a, "10.1.0.1")), "0/-/-");
  EXPECT_EQ(brief(send_ipv4(*a, "203.0.113.1")), "100/B/drop");
  EXPECT_EQ(cli(*a, "clear ip drop"), "cleared the runtime entries of drop\n");
  EXPECT_EQ(a->runtime_entries().size(), 0u);
}

TEST(IpCheckerRuntime, ShowIpSaysWhereTheAnswerCameFrom) {
  TempDir dir;
  const std::string path = dir.write("low.txt", "198.51.100.0/24\n");
  auto a =
      make_agent(std::string(kRuntime) + "  - {name: file-list, score: 60, file: " + path + "}\n");
  EXPECT_EQ(cli(*a, "show ip 203.0.113.1"),
            "203.0.113.1 ip_score=100 blocked=true list=drop source=config\n");
  EXPECT_EQ(cli(*a, "show ip 198.51.100.1"),
            "198.51.100.1 ip_score=60 blocked=true list=file-list "
            "source=file path=\"" +
                path + "\"\n");
  EXPECT_EQ(cli(*a, "show ip 8.8.8.8"), "8.8.8.8 ip_score=0 blocked=false\n");
  EXPECT_EQ(cli(*a, "show ip nope"), "not an IP address: \"nope\"\n");
}

TEST(IpCheckerRuntime, CombinedVerdict) {
  auto a = make_agent(kRuntime);
  // A runtime deny entry below a list's score does not lower it; above, it raises it.
  cli(*a, "add ip deny low 203.0.113.7 score 90");
  EXPECT_EQ(brief(send_ipv4(*a, "203.0.113.7")), "100/B/drop");
  cli(*a, "add ip deny low 198.51.100.7 score 90");
  EXPECT_EQ(brief(send_ipv4(*a, "198.51.100.7")), "90/B/low");
  // A tie goes to the runtime entry.
  cli(*a, "add ip deny runtime 203.0.113.8 score 100");
  EXPECT_EQ(brief(send_ipv4(*a, "203.0.113.8")), "100/B/runtime");
  // A runtime allow entry wins over every deny; a configured allow wins over runtime denies.
  cli(*a, "add ip allow partners 203.0.113.9");
  EXPECT_EQ(brief(send_ipv4(*a, "203.0.113.9")), "0/-/partners");
  cli(*a, "add ip deny drop 192.0.2.9");
  EXPECT_EQ(brief(send_ipv4(*a, "192.0.2.9")), "0/-/office");
  EXPECT_EQ(cli(*a, "show ip 192.0.2.9"),
            "192.0.2.9 ip_score=0 blocked=false list=office source=config\n");
}

TEST(IpCheckerRuntime, CommandErrors) {
  auto a = make_agent(kRuntime);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"add ip deny",
       "usage: add ip deny <list> <addr|cidr> [score N] [ttl DUR] [comment TEXT...]"},
      {"add ip allow office", "usage: add ip allow <list> <addr|cidr> [ttl DUR] [comment TEXT...]"},
      {"add ip deny nope 10.0.0.1",
       "unknown list \"nope\" (lists: office, partners, drop, runtime, low)"},
      {"add ip deny office 10.0.0.1", "list office is an allow list, not a deny list"},
      {"add ip allow drop 10.0.0.1", "list drop is a deny list, not an allow list"},
      {"add ip deny drop 10.0.0.300",
       "not an address or CIDR: \"10.0.0.300\" (not an IPv4 or IPv6 address)"},
      {"add ip deny drop 10.0.0.0/33",
       "not an address or CIDR: \"10.0.0.0/33\" (the prefix length must be 0-32)"},
      {"add ip deny drop 10.0.0.1 score 101", "score: must be 0-100, got \"101\""},
      {"add ip deny drop 10.0.0.1 score -1", "score: must be 0-100, got \"-1\""},
      {"add ip deny drop 10.0.0.1 score", "score: missing value"},
      {"add ip deny drop 10.0.0.1 score 5 score 6", "score given twice"},
      {"add ip allow office 10.0.0.1 score 5", "score: allow entries have no score"},
      {"add ip deny drop 10.0.0.1 ttl 0",
       "ttl: must be 1s to 365d (90, 90s, 10m, 1h, 1d), got \"0\""},
      {"add ip deny drop 10.0.0.1 ttl 366d",
       "ttl: must be 1s to 365d (90, 90s, 10m, 1h, 1d), got \"366d\""},
      {"add ip deny drop 10.0.0.1 ttl 1.5h",
       "ttl: must be 1s to 365d (90, 90s, 10m, 1h, 1d), got \"1.5h\""},
      {"add ip deny drop 10.0.0.1 ttl 10x",
       "ttl: must be 1s to 365d (90, 90s, 10m, 1h, 1d), got \"10x\""},
      {"add ip deny drop 10.0.0.1 ttl 99999999999999d",
       "ttl: must be 1s to 365d (90, 90s, 10m, 1h, 1d), got \"99999999999999d\""},
      {"add ip deny drop 10.0.0.1 ttl 1m ttl 2m", "ttl given twice"},
      {"add ip deny drop 10.0.0.1 for 1m", "unexpected \"for\": expected score, ttl or comment"},
      {"add ip deny drop 10.0.0.1 comment", "comment: missing text"},
      {"add ip deny drop 10.0.0.1 comment " + std::string(257, 'x'),
       "comment: longer than 256 bytes"},
      {"del ip drop", "usage: del ip [deny|allow] <list> <addr|cidr>"},
      {"del ip block drop 10.0.0.1", "usage: del ip [deny|allow] <list> <addr|cidr>"},
      {"del ip allow drop 10.0.0.1", "list drop is a deny list, not an allow list"},
      {"del ip drop 10.0.0.1", "no runtime entry 10.0.0.1/32 in list drop"},
      {"del ip drop 203.0.113.0/24", "no runtime entry 203.0.113.0/24 in list drop"},
      {"clear ip", "usage: clear ip <list>"},
      {"clear ip \x1b[2J",
       "unknown list \"\\x1b[2J\" (lists: office, partners, drop, runtime, low)"},
      {"show ip entries", "usage: show ip entries <list>"},
  };
  for (const auto& [line, want] : cases)
    EXPECT_EQ(cli(*a, line), "ERR " + want + "\n") << line;
  EXPECT_EQ(a->runtime_entries().size(), 0u);
  // Comments: any bytes, surrounding quotes stripped, at most 256 bytes, shown escaped.
  EXPECT_EQ(cli(*a, "add ip deny drop 10.0.0.1 ttl 90 comment \"" + std::string(256, 'y') + "\""),
            "added 10.0.0.1/32 to drop (deny, score 100, ttl 90s)\n");
  EXPECT_EQ(a->runtime_entries().entries(2)[0].comment, std::string(256, 'y'));
  cli(*a, std::string("add ip deny drop 10.0.0.2 comment a\xff\x1b b\\;c"));
  EXPECT_EQ(a->runtime_entries().entries(2)[1].comment, "a\xff\x1b b;c");
  EXPECT_NE(cli(*a, "show ip entries drop").find("comment=\"a\\xff\\x1b b;c\""), std::string::npos);
}

TEST(IpCheckerRuntime, BudgetRefusesAndCounts) {
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  auto a = make_agent(std::string(kRuntime) + "max-runtime-entries: 2\n", nullptr, &scope);
  EXPECT_EQ(cli(*a, "add ip deny drop 10.0.0.1").rfind("added", 0), 0u);
  EXPECT_EQ(cli(*a, "add ip deny drop 10.0.0.2").rfind("added", 0), 0u);
  EXPECT_EQ(cli(*a, "add ip deny drop 10.0.0.3"),
            "ERR too many runtime entries (max-runtime-entries: 2)\n");
  EXPECT_EQ(cli(*a, "add ip deny drop 10.0.0.2 score 1").rfind("added", 0), 0u);  // replaces
  EXPECT_EQ(series(*arena, "spoad_ip_checker_runtime_refused_total", ""), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_runtime_entries", ""), 2u);
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["runtime_refused"], 1);
  EXPECT_EQ(st["max_runtime_entries"], 2);
}

TEST(IpCheckerRuntime, MetricsAndStats) {
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  auto a = make_agent(kRuntime, nullptr, &scope);
  int64_t now = kT0;
  a->set_wall_clock([&] { return now; });
  auto op = [&](const char* o) {
    return series(*arena, "spoad_ip_checker_runtime_changes_total",
                  std::string(",op=\"") + o + "\"");
  };
  EXPECT_EQ(op("add"), 0u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_runtime_entries", ""), 0u);
  // No store: no store series.
  EXPECT_EQ(series(*arena, "spoad_ip_checker_store_connected", ""), std::nullopt);
  cli(*a, "add ip deny drop 10.0.0.1 ttl 5");
  cli(*a, "add ip deny drop 10.0.0.2 ttl 5");
  cli(*a, "add ip deny runtime 10.0.0.3");
  cli(*a, "add ip deny runtime 10.0.0.4");
  cli(*a, "del ip runtime 10.0.0.3");
  cli(*a, "clear ip runtime");
  send_ipv4(*a, "10.0.0.1");
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="drop")"), 1u);
  now += 5000;
  a->expire_now();
  EXPECT_EQ(op("add"), 4u);
  EXPECT_EQ(op("del"), 1u);
  EXPECT_EQ(op("clear"), 1u);
  EXPECT_EQ(op("expire"), 2u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_runtime_entries", ""), 0u);
  cli(*a, "add ip allow partners 10.0.0.9");
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["runtime_entries"], 1);
  EXPECT_EQ(st["runtime_changes"]["add"], 5);
  EXPECT_EQ(st["runtime_changes"]["expire"], 2);
  EXPECT_EQ(st["lists"][1]["name"], "partners");
  EXPECT_EQ(st["lists"][1]["runtime_entries"], 1);
  EXPECT_EQ(st["lists"][1]["source"], "runtime");
  EXPECT_EQ(st["lists"][0]["source"], "inline");
  EXPECT_TRUE(st["store"].is_null());
  EXPECT_TRUE(st["next_expiry"].is_null());
  EXPECT_EQ(st["last_change"], "2030-03-17T17:46:45Z");
  EXPECT_EQ(cli(*a, "show store"),
            "no store: runtime entries live in this spoad's workers and master only (lost on a "
            "restart without takeover)\n");
}

// Expiry is exact to the second of the wall clock: in force before, gone at it.
TEST(IpCheckerRuntime, ExpiryIsExactToTheSecond) {
  auto a = make_agent(kRuntime);
  int64_t now = kT0 + 300;  // 0.3 s into a second
  a->set_wall_clock([&] { return now; });
  cli(*a, "add ip deny drop 10.0.0.1 ttl 10");
  // The first whole second at least 10 s away: kT0 + 11 s.
  EXPECT_EQ(a->runtime_entries().next_expiry_s(), kT0 / 1000 + 11);
  now = kT0 + 10'999;
  a->expire_now();
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "100/B/drop");
  EXPECT_NE(cli(*a, "show ip 10.0.0.1").find("left=0s"), std::string::npos);
  now = kT0 + 11'000;
  a->expire_now();
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "0/-/-");
  EXPECT_EQ(a->runtime_entries().size(), 0u);
}

// ---- runtime entries: the pool state ------------------------------------------------------

TEST(IpCheckerRuntime, PoolStateIsSentBeforeTheAnswerAndRestores) {
  auto opts = parse_yaml(kRuntime);
  agent::Context ctx;
  ctx.name = "iprep";
  ctx.log = util::make_logger("iprep");
  std::vector<std::string> sent;
  IpCheckerAgent* self = nullptr;
  ctx.pool_state_changed = [&] { sent.push_back(self->pool_state()); };
  IpCheckerAgent a(ctx, static_cast<const IpCheckerOptions&>(*opts));
  self = &a;
  int64_t now = kT0;
  a.set_wall_clock([&] { return now; });
  cli(a, "add ip deny runtime 10.0.0.0/24 ttl 1h comment \"x\"");
  ASSERT_EQ(sent.size(), 1u);  // during the command, with the entry in it
  EXPECT_EQ(RuntimeEntries::decode(sent[0]).size(), 1u);
  cli(a, "add ip allow partners 2001:db8::/48");
  cli(a, "add ip deny drop 10.9.0.0/16 ttl 10");
  EXPECT_EQ(sent.size(), 3u);
  EXPECT_EQ(cli(a, "add ip deny nope 10.0.0.1").rfind("ERR", 0), 0u);
  EXPECT_EQ(cli(a, "del ip drop 10.8.0.0/16").rfind("ERR", 0), 0u);
  EXPECT_EQ(sent.size(), 3u);  // refused commands change nothing
  EXPECT_EQ(a.pool_state(), sent.back());

  // A new worker of the pool (same config) starts with them, the expired ones left out.
  auto b = make_agent(kRuntime);
  int64_t now_b = kT0 + 10'000;
  b->set_wall_clock([&] { return now_b; });
  b->restore_pool_state(sent.back());
  EXPECT_EQ(b->runtime_entries().size(), 2u);
  EXPECT_EQ(brief(send_ipv4(*b, "10.0.0.1")), "80/B/runtime");
  EXPECT_EQ(brief(send_ipv6(*b, "2001:db8::1")), "0/-/partners");
  EXPECT_EQ(brief(send_ipv4(*b, "10.9.0.1")), "0/-/-");
  std::vector<RuntimeEntry> want = a.runtime_entries().all();
  std::erase_if(want, [](const RuntimeEntry& e) { return e.list == "drop"; });  // expired
  EXPECT_EQ(b->runtime_entries().all(), want);
  EXPECT_EQ(b->runtime_entries().entries(3)[0].comment, "x");

  // A generation with another configuration keeps the entries of the lists it still has.
  auto c = make_agent("deny:\n  - {name: runtime, score: 50}\n");
  c->restore_pool_state(sent.back());
  EXPECT_EQ(c->runtime_entries().size(), 1u);
  EXPECT_EQ(brief(send_ipv4(*c, "10.0.0.1")), "80/B/runtime");  // the entry's own score

  // Bytes that do not decode: an error, and the agent as it was.
  EXPECT_THROW(c->restore_pool_state("garbage"), std::runtime_error);
  EXPECT_THROW(c->restore_pool_state(""), std::runtime_error);
  EXPECT_EQ(c->runtime_entries().size(), 1u);
}

// ---- runtime entries on a loop: expiry timer, request path, store ---------------------------

TEST_F(IpCheckerLoop, ExpiryTimerRemovesEntriesAtTheirSecond) {
  auto a = make_agent(std::string(kRuntime) + "watch: false\n", &loop_);
  const int64_t e = kT0 / 1000 + 100;  // an entry expires at second e
  int64_t now = e * 1000 - 5;
  a->set_wall_clock([&] { return now; });
  RuntimeEntries src(std::vector<ListInfo>{{"drop", false, 100}}, 10);
  Change c;
  c.entry = {"drop", {Address::V4(0x0a000001), 32}, false, 100, e, ""};
  src.apply(c, 0);
  a->restore_pool_state(src.encode());
  a->start();  // arms the timer: 5 ms
  Address x = Address::V4(0x0a000001);
  EXPECT_EQ(a->check(x).score, 100);
  now = e * 1000;  // the timer reads the wall clock when it fires
  EXPECT_TRUE(run_until(&loop_, [&] { return a->runtime_entries().size() == 0; }));
  EXPECT_EQ(a->check(x).score, 0);
  stop(*a);
}

TEST_F(IpCheckerLoop, ARequestNeverSeesAnExpiredEntry) {
  auto a = make_agent(std::string(kRuntime) + "watch: false\n", &loop_);
  const int64_t e = kT0 / 1000 + 100;
  int64_t now = e * 1000 - 1;
  a->set_wall_clock([&] { return now; });
  RuntimeEntries src(std::vector<ListInfo>{{"drop", false, 100}}, 10);
  Change c;
  c.entry = {"drop", {Address::V4(0x0a000001), 32}, false, 100, e, ""};
  src.apply(c, 0);
  uv_update_time(&loop_);
  const uint64_t t0 = uv_now(&loop_);
  a->restore_pool_state(src.encode());
  a->start();  // the expiry is due in 1 ms of loop time
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "100/B/drop");
  now = e * 1000 + 60'000;
  // The loop's clock moves on, but the loop does not run: the timer cannot fire, the request
  // must expire the entry itself.
  while (uv_now(&loop_) < t0 + 2)
    uv_update_time(&loop_);
  EXPECT_EQ(brief(send_ipv4(*a, "10.0.0.1")), "0/-/-");
  EXPECT_EQ(a->runtime_entries().size(), 0u);
  stop(*a);
}

}  // namespace
}  // namespace spoad::agents::ip_checker
