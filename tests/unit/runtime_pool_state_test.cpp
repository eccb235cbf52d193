// Unit tests of a worker's side of pool-wide commands and pool state (agent/agent.h): the
// worker CLI's results (agent::CommandError and unknown commands fail, the answer is kept),
// runtime::Worker restoring each agent's pool state after its constructor and before start()
// (a state that does not decode is logged and counted, the agent serves anyway), and
// Context::pool_state_changed reaching the worker's callback while the command runs. A small
// agent type registered here stands for ip-checker.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "agent/registry.h"
#include "cli/worker_cli.h"
#include "config/config.h"
#include "metrics/arena.h"
#include "runtime/worker.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_loop.h"

namespace spoad::runtime {
namespace {

using spoad::testing::run_until;
using spoad::testing::TestLoop;

class StateAgent : public agent::Agent {
 public:
  explicit StateAgent(const agent::Context& ctx) : ctx_(ctx) {}
  void on_message(const spop::Message&, agent::Reply&) override {}
  void start() override {
    started = true;
    state_at_start = state;
  }
  std::string pool_state() const override { return state; }
  void restore_pool_state(std::string_view bytes) override {
    ++restores;
    if (bytes == "bad") throw std::runtime_error("version 9 is unknown");
    state = std::string(bytes);
  }
  std::vector<agent::CliCommand> cli_commands() override {
    return {
        {"set state", "set state <bytes>", "sets the pool state",
         [this](const std::vector<std::string>& a) {
           state = a.empty() ? std::string() : a[0];
           if (ctx_.pool_state_changed) ctx_.pool_state_changed();
           return std::string("set\n");
         }},
        {"fail", "", "always fails",
         [](const std::vector<std::string>&) -> std::string {
           throw agent::CommandError("No such list: \"x\".\n");
         }},
        {"crash", "", "throws something else",
         [](const std::vector<std::string>&) -> std::string { throw std::logic_error("a bug"); }},
    };
  }

  agent::Context ctx_;
  std::string state;
  std::string state_at_start;
  bool started = false;
  int restores = 0;
};

struct StateOptions : agent::AgentOptions {};

std::unique_ptr<agent::AgentOptions> parse(config::Options&) {
  return std::make_unique<StateOptions>();
}
std::unique_ptr<agent::Agent> create(const agent::Context& ctx, const agent::AgentOptions&) {
  return std::make_unique<StateAgent>(ctx);
}

SPOAD_REGISTER_AGENT(pool_state_test, "pool-state-test",
                     "unit tests only: an agent with a pool state", parse, create);

using States = std::map<std::string, std::string>;  // agent name -> pool state

// A worker serving one pool-state-test agent "pool" on a Unix socket, its counters in `arena`.
struct Fixture {
  explicit Fixture(States states) {
    cfg = config::parse_config(
        "agents:\n  - name: pool\n    type: pool-state-test\n    listen: unix:" +
            dir.file("a.sock") + "\n",
        "t.yaml");
    worker = std::make_unique<Worker>(loop.get(), cfg.agents, arena);
    worker->set_pool_states(std::move(states));
    worker->set_pool_state_callback([this](Server& s) {
      events.push_back("changed " + s.config().name + " " + s.agent().pool_state());
    });
    worker->start();
  }
  ~Fixture() {
    bool done = false;
    worker->hard_stop([&done] { done = true; });
    EXPECT_TRUE(run_until(loop.get(), [&] { return done; }));
    EXPECT_TRUE(loop.drain());
    worker.reset();
  }
  StateAgent& agent() { return dynamic_cast<StateAgent&>(worker->servers()[0]->agent()); }
  uint64_t counter(std::string_view family) {
    uint64_t v = 0;
    arena->visit([&](const metrics::SeriesView& s) {
      if (s.family == family) v += s.value;
    });
    return v;
  }

  TestLoop loop;
  spoad::testing::TempDir dir;
  config::Config cfg;
  std::shared_ptr<metrics::Arena> arena{metrics::Arena::private_memory()};
  std::unique_ptr<Worker> worker;
  std::vector<std::string> events;
};

TEST(PoolState, RestoredAfterTheConstructorAndBeforeStart) {
  Fixture fx(States{{"pool", std::string("entries\0\xff", 9)}, {"other", "not ours"}});
  EXPECT_EQ(fx.agent().restores, 1);
  EXPECT_TRUE(fx.agent().started);
  EXPECT_EQ(fx.agent().state_at_start, std::string("entries\0\xff", 9));
  EXPECT_EQ(fx.counter("spoad_pool_state_restore_failures_total"), 0u);
}

TEST(PoolState, NoStateNoRestore) {
  Fixture none(States{});
  EXPECT_EQ(none.agent().restores, 0);
  Fixture empty(States{{"pool", ""}});  // what a master sends when the pool has no state yet
  EXPECT_EQ(empty.agent().restores, 0);
  EXPECT_TRUE(empty.agent().started);
}

TEST(PoolState, ARestoreThatThrowsIsCountedAndTheAgentServes) {
  Fixture fx(States{{"pool", "bad"}});
  EXPECT_EQ(fx.agent().restores, 1);
  EXPECT_TRUE(fx.agent().started);
  EXPECT_EQ(fx.agent().state_at_start, "");
  EXPECT_EQ(fx.counter("spoad_pool_state_restore_failures_total"), 1u);
  EXPECT_TRUE(std::filesystem::exists(fx.dir.file("a.sock")));  // it listens
}

TEST(PoolState, ChangeReachesTheWorkerBeforeTheAnswer) {
  Fixture fx(States{});
  cli::WorkerCli wc(*fx.worker, cli::WorkerIdentity{1, 1, 1, "test", 0});
  const cli::WorkerCli::Result r = wc.run({"set", "state", "v2"});
  fx.events.push_back("answer " + r.text);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(fx.events, (std::vector<std::string>{"changed pool v2", "answer set\n"}));
}

TEST(PoolState, CommandResults) {
  Fixture fx(States{});
  cli::WorkerCli wc(*fx.worker, cli::WorkerIdentity{1, 1, 1, "test", 0});
  cli::WorkerCli::Result r = wc.run({"fail"});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.text, "No such list: \"x\".\n");  // what() as is
  r = wc.run({"no", "such", "command"});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.text.rfind("Unknown command", 0), 0u) << r.text;
  r = wc.run({"show", "version"});
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.text, "test\n");
  EXPECT_EQ(wc.execute({"fail"}), "No such list: \"x\".\n");
  // Other exceptions are the caller's (worker_process answers "Internal error").
  EXPECT_THROW(wc.run({"crash"}), std::logic_error);
}

}  // namespace
}  // namespace spoad::runtime
