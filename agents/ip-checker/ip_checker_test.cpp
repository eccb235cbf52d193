// Tests of the ip-checker agent through its registered AgentType: options from YAML, messages
// encoded and decoded with the real codec, replies decoded as HAProxy would, its metrics and
// its configuration errors.
#include <gtest/gtest.h>

#include <string>

#include "agents/ip-checker/ip_checker_test_support.h"

namespace spoad::agents::ip_checker {
namespace {

using namespace test;
using spoad::testing::run_until;

TEST(IpChecker, IsRegistered) {
  const agent::AgentType* t = agent::find_agent_type("ip-checker");
  ASSERT_NE(t, nullptr);
  EXPECT_FALSE(t->description.empty());
}

TEST(IpChecker, Ipv4Argument) {
  auto a = make_agent(kBasic);
  EXPECT_EQ(brief(send_ipv4(*a, "203.0.113.9")), "100/B/drop");
  EXPECT_EQ(brief(send_ipv4(*a, "203.0.113.200")), "100/B/drop");  // max score, not longest
  EXPECT_EQ(brief(send_ipv4(*a, "198.51.100.7")), "30/-/suspicious");
  EXPECT_EQ(brief(send_ipv4(*a, "192.0.2.5")), "0/-/office");
  EXPECT_EQ(brief(send_ipv4(*a, "192.0.2.66")), "0/-/office");  // allow wins
  const Vars none = send_ipv4(*a, "8.8.8.8");
  EXPECT_EQ(brief(none), "0/-/-");
  EXPECT_EQ(none.count, 2u);  // no `list` when nothing matched
}

TEST(IpChecker, Ipv6Argument) {
  auto a = make_agent(kBasic);
  EXPECT_EQ(brief(send_ipv6(*a, "2001:db8:bad::1")), "100/B/drop");
  EXPECT_EQ(brief(send_ipv6(*a, "2001:db8:1::1")), "0/-/office");
  EXPECT_EQ(brief(send_ipv6(*a, "2001:db8:2::1")), "0/-/-");
  // IPv4 clients on an IPv6 listener: HAProxy sends ::ffff:a.b.c.d.
  EXPECT_EQ(brief(send_ipv6(*a, "::ffff:203.0.113.9")), "100/B/drop");
  EXPECT_EQ(brief(send_ipv6(*a, "::ffff:198.51.100.7")), "30/-/suspicious");
}

TEST(IpChecker, StringArgument) {
  auto a = make_agent(kBasic);
  EXPECT_EQ(brief(send_str(*a, "203.0.113.9")), "100/B/drop");
  EXPECT_EQ(brief(send_str(*a, " 203.0.113.9 ")), "100/B/drop");
  EXPECT_EQ(brief(send_str(*a, "::ffff:203.0.113.9")), "100/B/drop");
  EXPECT_EQ(brief(send_str(*a, "2001:db8:bad::1")), "100/B/drop");
  EXPECT_EQ(brief(send_str(*a, "192.0.2.1")), "0/-/office");
}

TEST(IpChecker, ArgumentByNameElseFirst) {
  auto a = make_agent(kBasic);
  const uint8_t drop[4] = {203, 0, 113, 9}, sus[4] = {198, 51, 100, 7};
  // `ip` is used wherever it is.
  EXPECT_EQ(brief(send(*a, "check-client-ip",
                       {{"other", spop::Value::Ipv4(sus)}, {"ip", spop::Value::Ipv4(drop)}})),
            "100/B/drop");
  // Without `ip`, the first argument.
  EXPECT_EQ(brief(send(*a, "check-client-ip",
                       {{"", spop::Value::Ipv4(sus)}, {"x", spop::Value::Ipv4(drop)}})),
            "30/-/suspicious");
  // Another argument name, by option.
  auto b = make_agent(std::string(kBasic) + "argument: src\n");
  EXPECT_EQ(brief(send(*b, "check-client-ip",
                       {{"ip", spop::Value::Ipv4(sus)}, {"src", spop::Value::Ipv4(drop)}})),
            "100/B/drop");
}

TEST(IpChecker, BadArgumentsSetNothing) {
  auto a = make_agent(kBasic);
  EXPECT_EQ(brief(send(*a, "check-client-ip", {})), "none");
  EXPECT_EQ(brief(send_str(*a, "not-an-ip")), "none");
  EXPECT_EQ(brief(send_str(*a, "")), "none");
  EXPECT_EQ(brief(send_str(*a, "203.0.113.9:443")), "none");
  EXPECT_EQ(brief(send(*a, "check-client-ip", {{"ip", spop::Value::Int64(7)}})), "none");
  EXPECT_EQ(brief(send(*a, "check-client-ip", {{"ip", spop::Value::Null()}})), "none");
  EXPECT_EQ(brief(send(*a, "check-client-ip", {{"ip", spop::Value::Binary("\xcb\0\x71\x09")}})),
            "none");
  // A named `ip` that does not parse does not fall back to another argument.
  const uint8_t drop[4] = {203, 0, 113, 9};
  EXPECT_EQ(brief(send(*a, "check-client-ip",
                       {{"", spop::Value::Ipv4(drop)}, {"ip", spop::Value::String("junk")}})),
            "none");
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["bad_argument"], 8);
  EXPECT_EQ(st["checks"], 0);
}

TEST(IpChecker, OtherMessagesAreIgnored) {
  auto a = make_agent(kBasic);
  const uint8_t drop[4] = {203, 0, 113, 9};
  EXPECT_EQ(brief(send(*a, "log-request", {{"ip", spop::Value::Ipv4(drop)}})), "none");
  auto b = make_agent(std::string(kBasic) + "message: my-check\n");
  EXPECT_EQ(brief(send(*b, "check-client-ip", {{"ip", spop::Value::Ipv4(drop)}})), "none");
  EXPECT_EQ(brief(send(*b, "my-check", {{"ip", spop::Value::Ipv4(drop)}})), "100/B/drop");
  nlohmann::json st;
  b->stats(st);
  EXPECT_EQ(st["ignored_messages"], 1);
  EXPECT_EQ(st["checks"], 1);
}

TEST(IpChecker, AllowWinsOverEverything) {
  auto a = make_agent(R"(
allow:
  - {name: partners, entries: [10.1.2.3]}
deny:
  - {name: everything, score: 100, entries: ["0.0.0.0/0", "::/0"]}
  - {name: partner-net, score: 100, entries: [10.1.2.0/24]}
)");
  EXPECT_EQ(brief(send_ipv4(*a, "10.1.2.3")), "0/-/partners");
  EXPECT_EQ(brief(send_ipv4(*a, "10.1.2.4")), "100/B/partner-net");
  EXPECT_EQ(brief(send_ipv4(*a, "1.1.1.1")), "100/B/everything");
  EXPECT_EQ(brief(send_ipv6(*a, "2001:db8::1")), "100/B/everything");
}

TEST(IpChecker, BlockThreshold) {
  auto a = make_agent(std::string(kBasic) + "block-threshold: 30\n");
  EXPECT_EQ(brief(send_ipv4(*a, "198.51.100.7")), "30/B/suspicious");
  auto b = make_agent(std::string(kBasic) + "block-threshold: 100\n");
  EXPECT_EQ(brief(send_ipv4(*b, "203.0.113.9")), "100/B/drop");
  // 0: everything that is not allowed is blocked (allow-list mode).
  auto c = make_agent(std::string(kBasic) + "block-threshold: 0\n");
  EXPECT_EQ(brief(send_ipv4(*c, "8.8.8.8")), "0/B/-");
  EXPECT_EQ(brief(send_ipv4(*c, "192.0.2.1")), "0/-/office");
}

TEST(IpChecker, CountersAndShowLists) {
  auto a = make_agent(kBasic);
  send_ipv4(*a, "203.0.113.9");   // blocked
  send_ipv4(*a, "198.51.100.7");  // scored
  send_ipv4(*a, "192.0.2.1");     // allowed
  send_ipv4(*a, "8.8.8.8");       // no match
  send_ipv4(*a, "8.8.4.4");       // no match
  send_str(*a, "bogus");          // bad argument
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["checks"], 5);
  EXPECT_EQ(st["blocked"], 1);
  EXPECT_EQ(st["scored"], 1);
  EXPECT_EQ(st["allowed"], 1);
  EXPECT_EQ(st["no_match"], 2);
  EXPECT_EQ(st["bad_argument"], 1);
  EXPECT_EQ(st["reloads_ok"], 0);
  EXPECT_EQ(st["reloads_failed"], 0);
  ASSERT_EQ(st["lists"].size(), 3u);
  EXPECT_EQ(st["lists"][0]["name"], "office");
  EXPECT_EQ(st["lists"][0]["kind"], "allow");
  EXPECT_EQ(st["lists"][0]["entries"], 2);
  EXPECT_EQ(st["lists"][1]["name"], "drop");
  EXPECT_EQ(st["lists"][1]["score"], 100);
  EXPECT_EQ(st["lists"][1]["entries"], 3);
  EXPECT_EQ(st["lists"][1]["source"], "inline");
  EXPECT_EQ(st["lists"][2]["status"], "ok");

  const std::string text = a->show_lists();
  EXPECT_NE(text.find("# name"), std::string::npos) << text;
  EXPECT_NE(text.find("office"), std::string::npos);
  EXPECT_NE(text.find("suspicious"), std::string::npos);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4);
  bool found = false;
  for (auto& c : a->cli_commands()) {
    if (c.name == "show lists") {
      EXPECT_EQ(c.run({}), text);
      found = true;
    }
    if (c.name == "show ip") {
      EXPECT_EQ(c.run({"203.0.113.9"}),
                "203.0.113.9 ip_score=100 blocked=true list=drop source=config\n");
      EXPECT_EQ(c.run({"8.8.8.8"}), "8.8.8.8 ip_score=0 blocked=false\n");
    }
  }
  EXPECT_TRUE(found);
}

// ---- metrics -----------------------------------------------------------------------------
TEST(IpChecker, MetricsCountDecisionsMatchesAndEntries) {
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  auto a = make_agent(kBasic, nullptr, &scope);
  // Every series exists from the start, the entries already set.
  EXPECT_EQ(series(*arena, "spoad_ip_checker_decisions_total", R"(,decision="denied")"), 0u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="drop")"), 0u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="office")"), 2u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="drop")"), 3u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="suspicious")"), 2u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_reloads_total", ""), 0u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_reload_failures_total", ""), 0u);

  send_ipv4(*a, "203.0.113.9");   // blocked (drop, 100)
  send_ipv4(*a, "203.0.113.10");  // blocked (drop, 100)
  send_ipv4(*a, "198.51.100.7");  // denied: scored 30, below the threshold (suspicious)
  send_ipv4(*a, "192.0.2.1");     // allowed (office)
  send_ipv4(*a, "8.8.8.8");       // unknown: no list
  send_str(*a, "bogus");          // bad argument: no decision
  send(*a, "check-client-ip", {});
  auto decisions = [&](const char* d) {
    return series(*arena, "spoad_ip_checker_decisions_total",
                  std::string(",decision=\"") + d + "\"");
  };
  EXPECT_EQ(decisions("blocked"), 2u);
  EXPECT_EQ(decisions("denied"), 1u);
  EXPECT_EQ(decisions("allowed"), 1u);
  EXPECT_EQ(decisions("unknown"), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="drop")"), 2u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="suspicious")"), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="office")"), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_bad_arguments_total", ""), 2u);
  // `show stat json` reads the same handles.
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["blocked"], 2);
  EXPECT_EQ(st["scored"], 1);
  EXPECT_EQ(st["allowed"], 1);
  EXPECT_EQ(st["no_match"], 1);
  EXPECT_EQ(st["bad_argument"], 2);
  EXPECT_EQ(st["checks"], 5);
}

TEST(IpChecker, MetricsCountReloadsAndFollowEntries) {
  TempDir dir;
  const std::string path = dir.write("drop.txt", "203.0.113.0/24\n");
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  auto a = make_agent("deny:\n  - {name: drop, score: 100, file: " + path + "}\n", nullptr, &scope);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="drop")"), 1u);
  dir.write("drop.txt", "203.0.113.0/24\n198.51.100.0/24\n2001:db8::/32\n");
  a->reload();
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="drop")"), 3u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_reloads_total", ""), 1u);
  dir.write("drop.txt", "192.0.2.0/24\nnot an address\n");
  a->reload();
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_reload_failures_total", ""), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_reloads_total", ""), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="drop")"), 3u);  // kept
}

// A worker's arena has a fixed size: lists past the 64th share list="(other)", a value no
// list name can take.
TEST(IpChecker, MetricsListSeriesAreBounded) {
  std::string yaml = "deny:\n";
  for (int i = 0; i < 70; ++i)
    yaml += "  - {name: l" + std::to_string(i) + ", score: 10, entries: [10.0." +
            std::to_string(i) + ".0/24" + (i == 69 ? ", 10.1.0.0/16" : "") + "]}\n";
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  auto a = make_agent(yaml, nullptr, &scope);
  send_ipv4(*a, "10.0.0.1");   // l0
  send_ipv4(*a, "10.0.63.1");  // l63, the last with its own series
  send_ipv4(*a, "10.0.64.1");  // l64
  send_ipv4(*a, "10.0.69.1");  // l69
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="l0")"), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="l63")"), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", R"(,list="l64")"), std::nullopt);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_matches_total", ",list=\"(other)\""), 2u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", R"(,list="l63")"), 1u);
  EXPECT_EQ(series(*arena, "spoad_ip_checker_list_entries", ",list=\"(other)\""), 7u);
  size_t matches = 0;
  arena->visit([&](const metrics::SeriesView& s) {
    if (s.family == "spoad_ip_checker_matches_total") ++matches;
  });
  EXPECT_EQ(matches, 65u);
  EXPECT_EQ(arena->overflows(), 0u);
}

// ---- configuration errors ---------------------------------------------------------------

std::string config_error(const std::string& yaml) {
  try {
    parse_yaml(yaml);
  } catch (const config::ConfigError& e) {
    return e.what();
  }
  return "no error";
}
TEST(IpChecker, ConfigErrorsNameFileLineAndKey) {
  EXPECT_EQ(config_error("deny:\n  - name: a\n    score: 101\n    entries: [1.2.3.4]\n"),
            "test.yaml:3: agents[0].deny[0].score: must be between 0 and 100, got 101");
  EXPECT_EQ(config_error("deny:\n  - name: a\n    entries: [1.2.3.4]\n"),
            "test.yaml:2: agents[0].deny[0]: missing key \"score\" (0-100)");
  EXPECT_EQ(config_error("allow:\n  - name: a\n    entries: [1.2.3.4]\n"
                         "deny:\n  - name: a\n    score: 1\n    entries: [1.2.3.5]\n"),
            "test.yaml:5: agents[0].deny[0].name: duplicate list name \"a\"");
  // Neither file nor entries: a list for runtime entries only.
  EXPECT_EQ(config_error("deny:\n  - name: a\n    score: 1\n"), "no error");
  EXPECT_EQ(config_error("max-runtime-entries: -1\n"),
            "test.yaml:1: agents[0].max-runtime-entries: must be between 0 and 2000000, got -1");
  EXPECT_EQ(config_error("max-runtime-entries: 2000001\n"),
            "test.yaml:1: agents[0].max-runtime-entries: must be between 0 and 2000000, got "
            "2000001");
  EXPECT_EQ(config_error("store: {url: \"redis://127.0.0.1:6379/0\", key-prefix: \"x:\"}\n"),
            "no error");
  EXPECT_EQ(config_error("store: {url: \"redis://127.0.0.1\", keyprefix: \"x:\"}\n"),
            "test.yaml:1: agents[0].store.keyprefix: unknown key");
  EXPECT_EQ(config_error("deny:\n  - name: a\n    score: 1\n    file: /x\n    entries: []\n"),
            "test.yaml:2: agents[0].deny[0]: use either \"file\" or \"entries\", not both");
  EXPECT_EQ(config_error("deny:\n  - name: a\n    score: 1\n    entries:\n      - 10.0.0.1\n"
                         "      - 10.0.0.300\n"),
            "test.yaml:4: agents[0].deny[0].entries: entry 2 \"10.0.0.300\": not an IPv4 or IPv6 "
            "address");
  EXPECT_EQ(config_error("deny:\n  - name: a\n    score: 1\n    scroe: 2\n    entries: []\n"),
            "test.yaml:4: agents[0].deny[0].scroe: unknown key");
  EXPECT_EQ(config_error("allow:\n  - name: a\n    score: 1\n    entries: []\n"),
            "test.yaml:3: agents[0].allow[0].score: unknown key");
  EXPECT_EQ(config_error("allow:\n  - name: \"a b\"\n    entries: []\n"),
            "test.yaml:2: agents[0].allow[0].name: use 1-64 characters among A-Z a-z 0-9 _ - .");
  EXPECT_EQ(config_error("block-threshold: 101\n"),
            "test.yaml:1: agents[0].block-threshold: must be between 0 and 100, got 101");
  EXPECT_EQ(config_error("watch: maybe\n"),
            "test.yaml:1: agents[0].watch: expected true or false, got \"maybe\"");
  EXPECT_EQ(config_error("deny: [1.2.3.4]\n"),
            "test.yaml:1: agents[0].deny[0]: expected a mapping");
  const std::string missing = config_error(
      "deny:\n  - name: a\n    score: 1\n    file: /nonexistent/ip-checker/list.txt\n");
  EXPECT_EQ(missing.rfind("test.yaml:4: agents[0].deny[0].file: cannot read "
                          "\"/nonexistent/ip-checker/list.txt\": ",
                          0),
            0u)
      << missing;
  EXPECT_EQ(config_error("message: check-client-ip\nargument: ip\nwatch: false\n"
                         "watch-delay: 1s\nallow: []\ndeny: []\n"),
            "no error");
}

TEST(IpChecker, RelativeFileIsRelativeToTheConfigFile) {
  TempDir dir;
  dir.write("drop.txt", "203.0.113.0/24\n");
  config::Options o(YAML::Load("deny:\n  - {name: d, score: 90, file: drop.txt}\n"),
                    std::make_shared<const std::string>(dir.file("spoad.yaml")), "agents[0]");
  auto opts = agent::find_agent_type("ip-checker")->parse(o);
  const auto& io = static_cast<const IpCheckerOptions&>(*opts);
  ASSERT_EQ(io.lists.size(), 1u);
  EXPECT_EQ(io.lists[0].file, dir.file("drop.txt"));
}

TEST(IpChecker, CreateFailsOnAMalformedFile) {
  TempDir dir;
  const std::string path = dir.write("drop.txt", "; DROP\n203.0.113.0/24 ; SBL1\n203.0.113.0/33\n");
  try {
    make_agent("deny:\n  - {name: drop, score: 100, file: " + path + "}\n");
    FAIL() << "create() accepted a malformed file";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "list \"drop\": " + path +
                                         ":3: malformed entry \"203.0.113.0/33\": the prefix "
                                         "length must be 0-32");
  }
}

}  // namespace
}  // namespace spoad::agents::ip_checker
