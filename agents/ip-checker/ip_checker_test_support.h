// Helpers shared by the ip-checker agent's unit tests (ip_checker*_test.cpp): the agent made
// through its registered AgentType from YAML, messages encoded and replies decoded with the
// real codec, CLI lines run as the worker's CLI runs them, metrics read back from the arena,
// and a fixture with a real libuv loop.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <uv.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/registry.h"
#include "agents/ip-checker/ip_checker.h"
#include "agents/ip-checker/test_support.h"
#include "cli/command.h"
#include "metrics/arena.h"
#include "options/options.h"
#include "spop/frames.h"
#include "tests/support/spop_message.h"
#include "tests/support/test_loop.h"
#include "util/log.h"

namespace spoad::agents::ip_checker::test {

inline std::unique_ptr<agent::AgentOptions> parse_yaml(const std::string& yaml) {
  const agent::AgentType* t = agent::find_agent_type("ip-checker");
  if (!t) throw std::runtime_error("ip-checker is not registered");
  config::Options o(YAML::Load(yaml), std::make_shared<const std::string>("test.yaml"),
                    "agents[0]");
  auto opts = t->parse(o);
  o.check_unknown();
  return opts;
}

inline std::unique_ptr<IpCheckerAgent> make_agent(const std::string& yaml,
                                                  uv_loop_t* loop = nullptr,
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

// Encodes one message, decodes it as the runtime does, runs on_message, decodes the reply.
inline Vars send(IpCheckerAgent& agent, const std::string& name,
                 const std::vector<spop::KV>& args) {
  const spoad::testing::EncodedMessage msg(name, args);
  EXPECT_TRUE(msg.ok());
  spoad::testing::CountingOwner owner;
  agent::Reply reply;
  reply.reset(&owner, 7, 1);
  agent.on_message(msg.get(), reply);
  reply.release();
  EXPECT_EQ(owner.completed, 1);  // the ACK leaves at once
  Vars v;
  const spoad::testing::DecodedActions acts = spoad::testing::decode_actions(reply);
  EXPECT_TRUE(acts.ok);
  v.count = acts.count;
  for (const spop::Action& a : acts.list) {
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

inline Vars send_ipv4(IpCheckerAgent& agent, const std::string& text,
                      const std::string& arg = "ip") {
  Address a;
  EXPECT_TRUE(parse_address(text, &a)) << text;
  const uint32_t x = a.v4();
  const uint8_t b[4] = {static_cast<uint8_t>(x >> 24), static_cast<uint8_t>(x >> 16),
                        static_cast<uint8_t>(x >> 8), static_cast<uint8_t>(x)};
  return send(agent, "check-client-ip", {{arg, spop::Value::Ipv4(b)}});
}

inline Vars send_ipv6(IpCheckerAgent& agent, const std::string& text) {
  uint8_t b[16];
  EXPECT_EQ(inet_pton(AF_INET6, text.c_str(), b), 1) << text;
  return send(agent, "check-client-ip", {{"ip", spop::Value::Ipv6(b)}});
}

inline Vars send_str(IpCheckerAgent& agent, const std::string& text) {
  return send(agent, "check-client-ip", {{"ip", spop::Value::String(text)}});
}

// "score/blocked/list" for compact assertions; list "-" when not set; "none" for no actions.
inline std::string brief(const Vars& v) {
  if (v.count == 0) return "none";
  EXPECT_TRUE(v.ip_score && v.blocked);
  return std::to_string(v.ip_score.value_or(-1)) + "/" + (v.blocked.value_or(false) ? "B" : "-") +
         "/" + v.list.value_or("-");
}

// block-threshold is left at its default, 50.
inline const char* const kBasic = R"(
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

// The value of the series `family`{agent="iprep",type="ip-checker",`label`} of `arena`, or
// nullopt when it was not registered.
inline std::optional<uint64_t> series(const metrics::Arena& arena, std::string_view family,
                                      const std::string& label) {
  const std::string labels = R"(agent="iprep",type="ip-checker")" + label;
  std::optional<uint64_t> v;
  arena.visit([&](const metrics::SeriesView& s) {
    if (s.family == family && s.labels == labels) v = s.value;
  });
  return v;
}

// Runs one CLI line as the worker's CLI does (the first command whose words match); an
// agent::CommandError comes back as "ERR " + its text.
inline std::string cli(IpCheckerAgent& a, const std::string& line) {
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
inline const char* const kRuntime = R"(
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

inline constexpr int64_t kT0 = 1'900'000'000'000;  // a fake wall clock, ms (2030-03-17T17:46:40Z)

// A real libuv loop; everything an agent opened must be closed by stop().
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
    EXPECT_TRUE(spoad::testing::run_until(&loop_, [&] { return stopped; }));
  }
  uv_loop_t loop_;
};

}  // namespace spoad::agents::ip_checker::test
