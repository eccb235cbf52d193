// Unit tests of the configuration loader (lib/config): shapes, defaults, and errors that name
// the file, line and key.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "config/config.h"
#include "options/options.h"

namespace spoad::config {
namespace {

// Expects parse_config(text) to fail with an error at `line` mentioning `key` and `what`.
void expect_error(const std::string& text, int line, const std::string& key,
                  const std::string& what) {
  try {
    parse_config(text, "t.yaml");
    FAIL() << "no error for:\n" << text;
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.file(), "t.yaml");
    EXPECT_EQ(e.line(), line) << e.what();
    EXPECT_EQ(e.key(), key) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("t.yaml:" + std::to_string(line) + ": ", 0), 0u)
        << e.what();
  }
}

TEST(Config, MinimalAndDefaults) {
  Config c = parse_config(R"(
cli:
  socket: /run/spoad/master.sock
agents:
  - name: iprep
    type: echo
    listen: 127.0.0.1:12345
    workers: 2
)",
                          "t.yaml");
  EXPECT_EQ(c.cli.socket, "/run/spoad/master.sock");
  EXPECT_EQ(c.cli.mode, 0600u);
  EXPECT_EQ(c.grace_ms, 10000u);
  ASSERT_EQ(c.agents.size(), 1u);
  const AgentConfig& a = c.agents[0];
  EXPECT_EQ(a.name, "iprep");
  EXPECT_EQ(a.type, "echo");
  EXPECT_EQ(a.workers, 2);
  EXPECT_EQ(a.line, 5);  // the "- name:" line
  EXPECT_EQ(a.listen.kind, ListenAddress::Kind::kTcp);
  EXPECT_EQ(a.listen.host, "127.0.0.1");
  EXPECT_EQ(a.listen.port, 12345);
  EXPECT_EQ(a.runtime.max_frame_size, 16380u);
  EXPECT_TRUE(a.runtime.pipelining);
  EXPECT_TRUE(a.runtime.fragmentation);
  EXPECT_FALSE(a.runtime.async);
  ASSERT_NE(a.agent_type, nullptr);
  EXPECT_NE(a.options, nullptr);
}

TEST(Config, RuntimeKeys) {
  Config c = parse_config(R"(
global:
  log-level: debug
  grace: 3s
cli:
  mode: "0660"
agents:
  - name: a
    type: echo
    listen: unix:/tmp/a.sock
    max-frame-size: 4k
    max-inflight: 8
    max-fragmented-size: 2m
    async: true
    timeout:
      hello: 500ms
      idle: 2m
)",
                          "t.yaml");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.grace_ms, 3000u);
  EXPECT_EQ(c.cli.mode, 0660u);
  const RuntimeSettings& r = c.agents[0].runtime;
  EXPECT_EQ(c.agents[0].listen.kind, ListenAddress::Kind::kUnix);
  EXPECT_EQ(c.agents[0].listen.path, "/tmp/a.sock");
  EXPECT_EQ(r.max_frame_size, 4096u);
  EXPECT_EQ(r.max_inflight, 8u);
  EXPECT_EQ(r.max_fragmented_size, 2u << 20);
  EXPECT_TRUE(r.async);
  EXPECT_EQ(r.hello_timeout_ms, 500u);
  EXPECT_EQ(r.idle_timeout_ms, 120000u);
}

TEST(Config, ErrorsNameFileLineAndKey) {
  expect_error("agents:\n  - name: a\n    type: nope\n    listen: 127.0.0.1:1\n", 3,
               "agents[0].type", "unknown agent type \"nope\"");
  expect_error("agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1\n", 4,
               "agents[0].listen", "expected host:port");
  expect_error("agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:99999\n", 4,
               "agents[0].listen", "port must be 1-65535");
  expect_error("agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n    workerz: 2\n", 5,
               "agents[0].workerz", "unknown key");
  expect_error("agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n    workers: 0\n", 5,
               "agents[0].workers", "between 1 and 64");
  expect_error(
      "agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n    max-frame-size: 100\n", 5,
      "agents[0].max-frame-size", "between 256");
  expect_error(
      "agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n    timeout:\n      hello: "
      "soon\n",
      6, "agents[0].timeout.hello", "expected a duration");
  expect_error(
      "agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n"
      "  - name: a\n    type: echo\n    listen: 127.0.0.1:2\n",
      5, "agents[1].name", "duplicate agent name");
  expect_error(
      "agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n"
      "  - name: b\n    type: echo\n    listen: 127.0.0.1:1\n",
      7, "agents[1].listen", "used by another agent");
  expect_error("agents:\n  - type: echo\n    listen: 127.0.0.1:1\n", 2, "agents[0]",
               "missing key \"name\"");
  // Names the master CLI would read as a process ("@12", "@master"), not as a pool.
  for (const char* reserved : {"12", "0", "master"})
    expect_error(std::string("agents:\n  - name: ") + reserved +
                     "\n    type: echo\n    listen: 127.0.0.1:1\n",
                 2, "agents[0].name", "is reserved");
  expect_error("cli:\n  mode: rw\nagents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n",
               2, "cli.mode", "octal");
  expect_error("agents: []\n", 1, "agents", "empty");
  expect_error("cli:\n  socket: /x\n", 1, "", "no \"agents\"");
  expect_error("agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n    scope: bad\n", 5,
               "agents[0].scope", "expected proc, sess, txn, req or res");
  expect_error("bogus: 1\nagents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n", 1,
               "bogus", "unknown key");
}

TEST(Config, YamlSyntaxErrorNamesTheLine) {
  try {
    parse_config("agents:\n  - name: a\n    type: [echo\n", "bad.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.file(), "bad.yaml");
    EXPECT_GT(e.line(), 0);
    EXPECT_NE(std::string(e.what()).find("YAML syntax error"), std::string::npos);
  }
}

TEST(Config, LoadConfigReportsUnreadableFile) {
  try {
    load_config("/nonexistent/spoad.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/spoad.yaml: cannot open"),
              std::string::npos);
  }
}

TEST(Config, EnvironmentVariables) {
  ::setenv("SPOAD_TEST_PORT", "4242", 1);
  ::unsetenv("SPOAD_TEST_UNSET");
  Config c = parse_config(R"(
agents:
  - name: a
    type: echo
    listen: "127.0.0.1:${SPOAD_TEST_PORT}"
  - name: b
    type: echo
    listen: "${SPOAD_TEST_UNSET-[::1]:4343}"
)",
                          "t.yaml");
  EXPECT_EQ(c.agents[0].listen.port, 4242);
  EXPECT_EQ(c.agents[1].listen.host, "::1");
  EXPECT_EQ(c.agents[1].listen.port, 4343);
  EXPECT_EQ(expand_env("a${SPOAD_TEST_PORT}b"), "a4242b");
  EXPECT_EQ(expand_env("${SPOAD_TEST_UNSET-x-y}"), "x-y");
  EXPECT_EQ(expand_env("$HOME and $ alone"), "$HOME and $ alone");
  EXPECT_THROW(expand_env("${OPEN"), std::invalid_argument);
  EXPECT_THROW(expand_env("${BAD NAME}"), std::invalid_argument);
}

TEST(Listen, Forms) {
  ListenAddress a;
  std::string err;
  ASSERT_TRUE(parse_listen("0.0.0.0:80", &a, &err));
  EXPECT_EQ(a.str(), "0.0.0.0:80");
  ASSERT_TRUE(parse_listen("*:81", &a, &err));
  EXPECT_EQ(a.host, "0.0.0.0");
  ASSERT_TRUE(parse_listen("[::]:82", &a, &err));
  EXPECT_EQ(a.host, "::");
  EXPECT_EQ(a.str(), "[::]:82");
  ASSERT_TRUE(parse_listen("localhost:83", &a, &err));
  ASSERT_TRUE(parse_listen("unix:/run/x.sock", &a, &err));
  EXPECT_EQ(a.str(), "unix:/run/x.sock");
  EXPECT_FALSE(parse_listen("::1:80", &a, &err));
  EXPECT_FALSE(parse_listen("[nothex]:80", &a, &err));
  EXPECT_FALSE(parse_listen("unix:", &a, &err));
  EXPECT_FALSE(parse_listen("host:0", &a, &err));
  EXPECT_FALSE(parse_listen("host:abc", &a, &err));
}

TEST(Units, DurationsAndSizes) {
  uint64_t v = 0;
  ASSERT_TRUE(parse_duration_ms("250", &v));
  EXPECT_EQ(v, 250u);
  ASSERT_TRUE(parse_duration_ms("250ms", &v));
  EXPECT_EQ(v, 250u);
  ASSERT_TRUE(parse_duration_ms("5s", &v));
  EXPECT_EQ(v, 5000u);
  ASSERT_TRUE(parse_duration_ms("2m", &v));
  EXPECT_EQ(v, 120000u);
  ASSERT_TRUE(parse_duration_ms("1h", &v));
  EXPECT_EQ(v, 3600000u);
  ASSERT_TRUE(parse_duration_ms("1d", &v));
  EXPECT_EQ(v, 86400000u);
  EXPECT_FALSE(parse_duration_ms("", &v));
  EXPECT_FALSE(parse_duration_ms("s", &v));
  EXPECT_FALSE(parse_duration_ms("5 s", &v));
  EXPECT_FALSE(parse_duration_ms("-1s", &v));
  ASSERT_TRUE(parse_size("16k", &v));
  EXPECT_EQ(v, 16384u);
  ASSERT_TRUE(parse_size("4M", &v));
  EXPECT_EQ(v, 4u << 20);
  ASSERT_TRUE(parse_size("1gb", &v));
  EXPECT_EQ(v, 1u << 30);
  ASSERT_TRUE(parse_size("512", &v));
  EXPECT_EQ(v, 512u);
  EXPECT_FALSE(parse_size("12q", &v));
}

}  // namespace
}  // namespace spoad::config
