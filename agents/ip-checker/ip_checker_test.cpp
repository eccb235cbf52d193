// Tests of the ip-checker agent through its registered AgentType: options from YAML, messages
// encoded and decoded with the real codec, replies decoded as HAProxy would, and list files
// reloaded by reload() and by the file watcher on a real libuv loop.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <uv.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/registry.h"
#include "agents/ip-checker/ip_checker.h"
#include "config/options.h"
#include "metrics/arena.h"
#include "spop/frames.h"
#include "spop/reader.h"
#include "spop/writer.h"
#include "util/log.h"

namespace spoad::agents::ip_checker {
namespace {

class TempDir {
 public:
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ipc-agent-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // Writes in place (truncate and write), as `cat > file` does.
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(file(name), std::ios::binary) << content;
    return file(name);
  }
  // Writes a new file and renames it over `name`, as editors and sed -i do.
  std::string replace(const std::string& name, const std::string& content) const {
    const std::string tmp = file("." + name + ".tmp");
    std::ofstream(tmp, std::ios::binary) << content;
    std::filesystem::rename(tmp, file(name));
    return file(name);
  }

 private:
  std::string path_;
};

std::unique_ptr<agent::AgentOptions> parse_yaml(const std::string& yaml) {
  const agent::AgentType* t = agent::find_agent_type("ip-checker");
  if (!t) throw std::runtime_error("ip-checker is not registered");
  config::Options o(YAML::Load(yaml), std::make_shared<const std::string>("test.yaml"),
                    "agents[0]");
  auto opts = t->parse(o);
  o.check_unknown();
  return opts;
}

std::unique_ptr<IpCheckerAgent> make_agent(const std::string& yaml, uv_loop_t* loop = nullptr,
                                           const metrics::Scope* scope = nullptr) {
  auto opts = parse_yaml(yaml);
  agent::Context ctx;
  ctx.name = "iprep";
  ctx.loop = loop;
  ctx.log = util::make_logger("iprep");
  if (scope) ctx.metrics = *scope;
  std::unique_ptr<agent::Agent> a = agent::find_agent_type("ip-checker")->create(ctx, *opts);
  auto* p = dynamic_cast<IpCheckerAgent*>(a.get());
  if (!p) throw std::runtime_error("not an IpCheckerAgent");
  a.release();
  return std::unique_ptr<IpCheckerAgent>(p);
}

// What a reply set, decoded from its LIST-OF-ACTIONS.
struct Vars {
  size_t count = 0;
  std::optional<int64_t> ip_score;
  std::optional<bool> blocked;
  std::optional<std::string> list;
};

struct TestOwner : agent::Reply::Owner {
  int completed = 0;
  void on_reply_complete(agent::Reply&) override { ++completed; }
};

// Encodes one message, decodes it as the runtime does, runs on_message, decodes the reply.
Vars send(IpCheckerAgent& agent, const std::string& name, const std::vector<spop::KV>& args) {
  std::vector<uint8_t> buf;
  spop::Writer w(buf);
  w.message(name, args);
  spop::Reader r(spop::Bytes(buf.data(), buf.size()));
  spop::Message msg;
  EXPECT_TRUE(r.message(&msg));
  TestOwner owner;
  agent::Reply reply;
  reply.reset(&owner, 7, 1);
  agent.on_message(msg, reply);
  reply.release();
  EXPECT_EQ(owner.completed, 1);  // the ACK leaves at once
  Vars v;
  const spop::Bytes acts(reply.actions().data(), reply.actions().size());
  uint32_t count = 0;
  EXPECT_TRUE(spop::validate_actions(acts, &count).ok());
  v.count = count;
  for (const spop::Action& a : spop::actions(acts)) {
    EXPECT_EQ(a.type, spop::ActionType::kSetVar);
    if (a.name == "ip_score") {
      EXPECT_EQ(a.scope, spop::Scope::kSession);
      EXPECT_TRUE(a.value.is_integer());
      v.ip_score = a.value.as_int64();
    } else if (a.name == "blocked") {
      EXPECT_EQ(a.scope, spop::Scope::kTransaction);
      EXPECT_EQ(a.value.type, spop::DataType::kBool);
      v.blocked = a.value.b;
    } else if (a.name == "list") {
      EXPECT_EQ(a.scope, spop::Scope::kTransaction);
      EXPECT_EQ(a.value.type, spop::DataType::kString);
      v.list = std::string(a.value.bytes);
    } else {
      ADD_FAILURE() << "unexpected variable " << a.name;
    }
  }
  return v;
}

Vars send_ipv4(IpCheckerAgent& agent, const std::string& text, const std::string& arg = "ip") {
  Address a;
  EXPECT_TRUE(parse_address(text, &a)) << text;
  const uint32_t x = a.v4();
  const uint8_t b[4] = {static_cast<uint8_t>(x >> 24), static_cast<uint8_t>(x >> 16),
                        static_cast<uint8_t>(x >> 8), static_cast<uint8_t>(x)};
  return send(agent, "check-client-ip", {{arg, spop::Value::Ipv4(b)}});
}

Vars send_ipv6(IpCheckerAgent& agent, const std::string& text) {
  uint8_t b[16];
  EXPECT_EQ(inet_pton(AF_INET6, text.c_str(), b), 1) << text;
  return send(agent, "check-client-ip", {{"ip", spop::Value::Ipv6(b)}});
}

Vars send_str(IpCheckerAgent& agent, const std::string& text) {
  return send(agent, "check-client-ip", {{"ip", spop::Value::String(text)}});
}

// "score/blocked/list" for compact assertions; list "-" when not set; "none" for no actions.
std::string brief(const Vars& v) {
  if (v.count == 0) return "none";
  EXPECT_TRUE(v.ip_score && v.blocked);
  return std::to_string(v.ip_score.value_or(-1)) + "/" + (v.blocked.value_or(false) ? "B" : "-") +
         "/" + v.list.value_or("-");
}

// block-threshold is left at its default, 50.
const char* kBasic = R"(
allow:
  - name: office
    entries: [192.0.2.0/24, "2001:db8:1::/48"]
deny:
  - name: drop
    score: 100
    entries: [203.0.113.0/24, "2001:db8:bad::/48", 192.0.2.66]
  - name: suspicious
    score: 30
    entries:
      - 198.51.100.7
      - 203.0.113.128/25
)";

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
      EXPECT_EQ(c.run({"203.0.113.9"}), "203.0.113.9 ip_score=100 blocked=true list=drop\n");
      EXPECT_EQ(c.run({"8.8.8.8"}), "8.8.8.8 ip_score=0 blocked=false\n");
    }
  }
  EXPECT_TRUE(found);
}

// ---- metrics -----------------------------------------------------------------------------

// The value of the series `family`{agent="iprep",type="ip-checker",`label`} of `arena`, or
// nullopt when it was not registered.
std::optional<uint64_t> series(const metrics::Arena& arena, std::string_view family,
                               const std::string& label) {
  const std::string labels = R"(agent="iprep",type="ip-checker")" + label;
  std::optional<uint64_t> v;
  arena.visit([&](const metrics::SeriesView& s) {
    if (s.family == family && s.labels == labels) v = s.value;
  });
  return v;
}

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
  EXPECT_EQ(config_error("deny:\n  - name: a\n    score: 1\n"),
            "test.yaml:2: agents[0].deny[0]: missing key \"file\" or \"entries\"");
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

// Runs `loop` until `done()` or `timeout_ms`; a 5 ms timer keeps it turning.
bool run_until(uv_loop_t* loop, const std::function<bool()>& done, int timeout_ms = 5000) {
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(
      &tick, [](uv_timer_t*) {}, 5, 5);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  bool ok = done();
  while (!ok && std::chrono::steady_clock::now() < deadline) {
    uv_run(loop, UV_RUN_ONCE);
    ok = done();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
  return ok;
}

class IpCheckerLoop : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    // Everything the agent opened must be closed by stop().
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "handles left open";
  }
  void stop(IpCheckerAgent& a) {
    bool stopped = false;
    a.stop([&] { stopped = true; });
    EXPECT_TRUE(run_until(&loop_, [&] { return stopped; }));
  }
  uv_loop_t loop_;
};

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

}  // namespace
}  // namespace spoad::agents::ip_checker
