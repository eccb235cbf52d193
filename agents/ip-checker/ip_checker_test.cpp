// Tests of the ip-checker agent through its registered AgentType: options from YAML, messages
// encoded and decoded with the real codec, replies decoded as HAProxy would, and list files
// reloaded by reload() and by the file watcher on a real libuv loop.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
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
#include "cli/command.h"
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
      EXPECT_EQ(c.run({"203.0.113.9"}),
                "203.0.113.9 ip_score=100 blocked=true list=drop source=config\n");
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

// ---- runtime entries: the CLI --------------------------------------------------------------

// Runs one CLI line as the worker's CLI does (the first command whose words match); an
// agent::CommandError comes back as "ERR " + its text.
std::string cli(IpCheckerAgent& a, const std::string& line) {
  const cli::Words w = cli::split_commands(line)[0];
  for (const agent::CliCommand& c : a.cli_commands()) {
    const cli::Words name = cli::split_commands(c.name)[0];
    if (w.size() < name.size() || !std::equal(name.begin(), name.end(), w.begin())) continue;
    try {
      return c.run(cli::Words(w.begin() + static_cast<long>(name.size()), w.end()));
    } catch (const agent::CommandError& e) {
      return std::string("ERR ") + e.what();
    }
  }
  return "no such command";
}

// Lists for runtime entries: `runtime` (deny, 80) has neither file nor entries.
const char* kRuntime = R"(
allow:
  - name: office
    entries: [192.0.2.0/24]
  - name: partners
deny:
  - name: drop
    score: 100
    entries: [203.0.113.0/24]
  - name: runtime
    score: 80
  - name: low
    score: 20
    entries: [198.51.100.0/24]
)";

constexpr int64_t kT0 = 1'900'000'000'000;  // a fake wall clock, ms (2030-03-17T17:46:40Z)

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

// A port nothing listens on (bound once by us, then closed).
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  ::close(fd);
  return ntohs(sa.sin_port);
}

// With a store that is not connected, a change is refused with the store's error and not
// applied; lookups go on with the entries in memory.
TEST_F(IpCheckerLoop, StoreDisconnectedRefusesChanges) {
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "iprep", "ip-checker");
  const std::string url = "redis://:s3cret@127.0.0.1:" + std::to_string(closed_port()) + "/0";
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

// A redis-server on 127.0.0.1, in a temp dir, without persistence; killed by the destructor.
class Redis {
 public:
  static std::string path() {
    for (const char* d : {"/usr/bin", "/usr/local/bin", "/usr/sbin"}) {
      const std::string f = std::string(d) + "/redis-server";
      if (::access(f.c_str(), X_OK) == 0) return f;
    }
    return "";
  }
  ~Redis() { kill9(); }
  int port() const { return port_; }
  // Starts it (on a free port the first time, the same port after) and waits until it
  // accepts a connection and answers PING.
  bool start() {
    if (port_ == 0) port_ = closed_port();
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string port = std::to_string(port_);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl(path().c_str(), "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
              "--save", "", "--appendonly", "no", "--dir", dir_.path().c_str(), nullptr);
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (ping()) return true;
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return pid_ = -1, false;
      ::poll(nullptr, 0, 20);  // between two polls of the condition
    }
    return false;
  }
  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  bool ping() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(static_cast<uint16_t>(port_));
    char buf[16] = {};
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 &&
                    ::write(fd, "PING\r\n", 6) == 6 && ::read(fd, buf, 7) > 0 &&
                    std::string(buf).rfind("+PONG", 0) == 0;
    ::close(fd);
    return ok;
  }
  TempDir dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// Two agents standing for two spoad instances share their runtime entries through the store;
// the pool is told of store changes at most once a second; a resync replaces the whole set.
TEST_F(IpCheckerLoop, StoreCarriesChangesBetweenAgents) {
  if (Redis::path().empty()) GTEST_SKIP() << "redis-server is not installed: test skipped";
  Redis redis;
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

}  // namespace
}  // namespace spoad::agents::ip_checker
