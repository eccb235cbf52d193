// Unit tests of the mirror agent on a real libuv loop, replaying to a real HTTP server
// (tests/support/test_http_server.h): what the target receives, bounds, failures, options.
#include "agents/mirror/mirror.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <yaml-cpp/yaml.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "agent/registry.h"
#include "metrics/arena.h"
#include "spop/varint.h"
#include "spop/writer.h"
#include "tests/support/spop_message.h"
#include "tests/support/test_http_server.h"
#include "tests/support/test_loop.h"
#include "util/log.h"

namespace spoad::agents::mirror {
namespace {

using spoad::testing::run_for;
using spoad::testing::run_until;
using spoad::testing::TestHttpServer;
using spoad::testing::TestLoop;

std::string hdrs_bin(const std::vector<std::pair<std::string, std::string>>& hs) {
  std::vector<uint8_t> buf;
  spop::Writer w(buf);
  for (const auto& [k, v] : hs) {
    w.string(k);
    w.string(v);
  }
  w.string("");
  w.string("");
  return std::string(buf.begin(), buf.end());
}

std::unique_ptr<MirrorOptions> parse(const std::string& yaml) {
  const agent::AgentType* t = agent::find_agent_type("mirror");
  EXPECT_NE(t, nullptr);
  YAML::Node n = YAML::Load(yaml);
  config::Options o(n, std::make_shared<const std::string>("m.yaml"), "agents[0]");
  auto opts = t->parse(o);
  o.check_unknown();
  return std::unique_ptr<MirrorOptions>(static_cast<MirrorOptions*>(opts.release()));
}

class Mirror {
 public:
  Mirror(uv_loop_t* loop, const std::string& yaml,
         std::shared_ptr<spdlog::logger> log = util::make_logger("mirror"),
         std::optional<metrics::Scope> scope = std::nullopt)
      : opts_(parse(yaml)) {
    agent::Context ctx;
    ctx.name = "mirror";
    ctx.loop = loop;
    ctx.log = std::move(log);
    if (scope) ctx.metrics = *scope;
    agent_ = std::make_unique<MirrorAgent>(ctx, *opts_);
    agent_->start();
  }
  // Sends one `mirror` message; returns the size of the ACK's actions (always 0 expected).
  size_t send(const std::vector<spop::KV>& args, const std::string& name = "mirror") {
    const spoad::testing::EncodedMessage m(name, args);
    EXPECT_TRUE(m.ok());
    agent::Reply reply;
    reply.reset(&owner_, 1, 1);
    agent_->on_message(m.get(), reply);
    return reply.actions().size();
  }
  MirrorAgent& agent() { return *agent_; }
  const MirrorAgent::Stats& stats() { return agent_->counters(); }
  // Soft-stops the agent and runs the loop until it is done.
  bool stop(uv_loop_t* loop, uint64_t ms = 5000) {
    bool done = false;
    agent_->stop([&done] { done = true; });
    return run_until(
        loop, [&] { return done; }, ms);
  }

 private:
  std::unique_ptr<MirrorOptions> opts_;
  spoad::testing::CountingOwner owner_;
  std::unique_ptr<MirrorAgent> agent_;
};

spop::KV S(std::string_view name, std::string_view v) {
  return {name, spop::Value::String(v)};
}
spop::KV B(std::string_view name, std::string_view v) {
  return {name, spop::Value::Binary(v)};
}

// The value of the series `family`{`labels`} of `arena` (a histogram's: `role`), or nullopt
// when it was not registered.
std::optional<uint64_t> series(const metrics::Arena& arena, std::string_view family,
                               std::string_view labels,
                               metrics::Role role = metrics::Role::kValue) {
  std::optional<uint64_t> v;
  arena.visit([&](const metrics::SeriesView& s) {
    if (s.family == family && s.labels == labels && s.role == role) v = s.value;
  });
  return v;
}

std::string target_yaml(const TestHttpServer& srv, const std::string& extra = "",
                        const std::string& prefix = "") {
  return "targets:\n  - url: http://127.0.0.1:" + std::to_string(srv.port()) + prefix + "\n" +
         extra;
}

TEST(MirrorAgent, ReplaysMethodTargetHeadersAndBodyByteForByte) {
  TestLoop loop;
  TestHttpServer srv;
  Mirror m(loop.get(), target_yaml(srv,
                                   "add-headers: [\"X-Mirrored-By: spoad\"]\n"
                                   "remove-headers: [x-secret]\n"));
  std::string body;
  for (int i = 0; i < 70000; ++i)
    body.push_back(static_cast<char>(i * 7 % 256));
  const std::string hdrs = hdrs_bin({{"host", "www.example"},
                                     {"content-length", std::to_string(body.size())},
                                     {"x-dup", "1"},
                                     {"x-dup", "2"},
                                     {"x-empty", ""},
                                     {"x-secret", "s"},
                                     {"connection", "keep-alive"},
                                     {"content-type", "application/octet-stream"}});
  EXPECT_EQ(m.send({S("arg_method", "PUT"), S("arg_path", "/up/load?x=1&y"), S("arg_ver", "1.1"),
                    B("arg_hdrs", hdrs), B("arg_body", body)}),
            0u);
  ASSERT_TRUE(run_until(loop.get(), [&] { return m.stats().sent == 1; }));
  const auto reqs = srv.requests();
  ASSERT_EQ(reqs.size(), 1u);
  const auto& r = reqs[0];
  EXPECT_EQ(r.method, "PUT");
  EXPECT_EQ(r.target, "/up/load?x=1&y");
  EXPECT_EQ(r.body, body);
  const std::vector<std::pair<std::string, std::string>> want = {
      {"host", "www.example"},
      {"x-dup", "1"},
      {"x-dup", "2"},
      {"x-empty", ""},
      {"content-type", "application/octet-stream"},
      {"x-mirrored-by", "spoad"},
      {"content-length", std::to_string(body.size())}};
  EXPECT_EQ(r.headers, want);
  EXPECT_EQ(m.stats().responses[2], 1u);
  EXPECT_TRUE(m.stop(loop.get()));
}

TEST(MirrorAgent, EveryMethodAndReqHdrsText) {
  TestLoop loop;
  TestHttpServer srv;
  srv.set_handler([](const TestHttpServer::Request& r) {
    TestHttpServer::Response resp;
    resp.status = r.method == "DELETE" ? 503 : 200;
    if (r.method != "HEAD") resp.body = "ok";
    return resp;
  });
  Mirror m(loop.get(), target_yaml(srv));
  const std::vector<std::string> methods = {"GET",   "HEAD",   "POST",   "PUT",
                                            "PATCH", "DELETE", "OPTIONS"};
  // One after the other, so that each replay finds the connection of the previous one idle.
  for (const std::string& method : methods) {
    const uint64_t before = m.stats().sent;
    m.send({S("arg_method", method), S("arg_path", "/m/" + method),
            S("arg_hdrs", "Host: h\r\nAccept: text/plain\r\n\r\n"), B("arg_body", "")});
    ASSERT_TRUE(run_until(loop.get(), [&] { return m.stats().sent == before + 1; })) << method;
  }
  auto reqs = srv.requests();
  std::set<std::string> seen;
  for (const auto& r : reqs) {
    seen.insert(r.method);
    EXPECT_EQ(r.target, "/m/" + r.method);
    EXPECT_EQ(r.header("accept"), "text/plain");
    // POST, PUT and PATCH always announce their (empty) body; the others have none.
    const bool body = r.method == "POST" || r.method == "PUT" || r.method == "PATCH";
    EXPECT_EQ(r.header("content-length"), body ? "0" : "") << r.method;
    EXPECT_EQ(r.header("content-type"), "") << r.method;
    EXPECT_EQ(r.header("expect"), "") << r.method;
  }
  EXPECT_EQ(seen, std::set<std::string>(methods.begin(), methods.end()));
  EXPECT_EQ(m.stats().responses[5], 1u);
  EXPECT_EQ(m.stats().responses[2], methods.size() - 1);
  // One connection, reused for every replay.
  EXPECT_EQ(srv.accepted(), 1u);
  EXPECT_TRUE(m.stop(loop.get()));
}

TEST(MirrorAgent, AbsoluteFormPrefixAndTargetHost) {
  TestLoop loop;
  TestHttpServer srv;
  Mirror m(loop.get(), target_yaml(srv, "host: target\n", "/shadow/"));
  m.send({S("arg_method", "GET"), S("arg_path", "https://www.example:8443/abs/path?q=1"),
          B("arg_hdrs", hdrs_bin({{"host", "www.example:8443"}}))});
  ASSERT_TRUE(run_until(loop.get(), [&] { return m.stats().sent == 1; }));
  const auto r = srv.requests().at(0);
  EXPECT_EQ(r.target, "/shadow/abs/path?q=1");
  EXPECT_EQ(r.header("host"), "127.0.0.1:" + std::to_string(srv.port()));
  EXPECT_TRUE(m.stop(loop.get()));
}

TEST(MirrorAgent, BadMessagesAreCountedAndNothingIsSent) {
  TestLoop loop;
  TestHttpServer srv;
  Mirror m(loop.get(), target_yaml(srv));
  EXPECT_EQ(m.send({S("arg_path", "/x")}), 0u);     // no method
  EXPECT_EQ(m.send({S("arg_method", "GET")}), 0u);  // no path
  m.send({S("arg_method", "GET"), S("arg_path", "/x"),
          B("arg_hdrs", std::string("\x05"
                                    "ab"))});             // truncated
  m.send({S("arg_method", "get"), S("arg_path", "/x")});  // not a method
  m.send({S("arg_method", "CONNECT"), S("arg_path", "example.com:443")});
  m.send({S("arg_method", "GET"), {"arg_path", spop::Value::Int32(5)}});
  m.send({S("arg_method", "GET"), S("arg_path", "/x")}, "other-message");  // not ours: ignored
  run_for(loop.get(), 100);
  EXPECT_EQ(m.stats().messages, 6u);
  EXPECT_EQ(m.stats().bad_messages, 6u);
  EXPECT_EQ(m.stats().replays_started, 0u);
  EXPECT_EQ(srv.request_count(), 0u);
  EXPECT_TRUE(m.stop(loop.get()));
}

TEST(MirrorAgent, BodyLimitsAndIncompleteBodies) {
  TestLoop loop;
  TestHttpServer srv;
  Mirror m(loop.get(), target_yaml(srv, "max-body: 1k\n"));
  m.send({S("arg_method", "POST"), S("arg_path", "/big"),
          B("arg_hdrs", hdrs_bin({{"content-length", "1025"}})),
          B("arg_body", std::string(1025, 'x'))});
  // HAProxy passed 10 bytes of a 100-byte body (no http-buffer-request, or a small buffer).
  m.send({S("arg_method", "POST"), S("arg_path", "/cut"),
          B("arg_hdrs", hdrs_bin({{"content-length", "100"}})),
          B("arg_body", std::string(10, 'x'))});
  m.send({S("arg_method", "POST"), S("arg_path", "/ok"),
          B("arg_hdrs", hdrs_bin({{"content-length", "1024"}})),
          B("arg_body", std::string(1024, 'x'))});
  ASSERT_TRUE(run_until(loop.get(), [&] { return m.stats().sent == 1; }));
  EXPECT_EQ(m.stats().dropped_body_too_big, 1u);
  EXPECT_EQ(m.stats().dropped_body_incomplete, 1u);
  EXPECT_EQ(srv.requests().at(0).target, "/ok");
  EXPECT_TRUE(m.stop(loop.get()));
}

TEST(MirrorAgent, TargetDownIsCountedAsConnectFailure) {
  TestLoop loop;
  TestHttpServer srv;
  srv.down();
  Mirror m(loop.get(), target_yaml(srv));
  for (int i = 0; i < 5; ++i)
    m.send({S("arg_method", "GET"), S("arg_path", "/down")});
  ASSERT_TRUE(run_until(loop.get(), [&] { return m.stats().failed_connect == 5; }));
  EXPECT_EQ(m.stats().sent, 0u);
  EXPECT_EQ(m.stats().in_flight, 0u);
  EXPECT_TRUE(m.stop(loop.get()));
}

// A failed replay is logged with its URL, which holds the request's path: outside bytes. The
// line shows them escaped (util::printable), so an ESC sequence or a forged line cannot pass.
TEST(MirrorAgent, FailureLogEscapesThePath) {
  TestLoop loop;
  TestHttpServer srv;
  srv.down();
  std::ostringstream out;
  auto log = std::make_shared<spdlog::logger>(
      "mirror-test", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
  log->set_pattern("%v");
  Mirror m(loop.get(), target_yaml(srv), log);
  m.send({S("arg_method", "GET"), S("arg_path", "/\x1b[31mred\x1b[0m\x7f\xc3\xa9\"q\"")});
  // curl refuses such a URL or cannot connect: either way the replay fails and is logged.
  ASSERT_TRUE(run_until(loop.get(),
                        [&] { return m.stats().failed_connect + m.stats().failed_other == 1; }));
  log->flush();
  const std::string text = out.str();
  ASSERT_NE(text.find("replay GET"), std::string::npos) << text;
  EXPECT_NE(text.find("/\\x1b[31mred\\x1b[0m\\x7f\\xc3\\xa9\\\"q\\\""), std::string::npos) << text;
  for (char c : text)
    EXPECT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7f)) << "byte " << int(static_cast<uint8_t>(c));
  EXPECT_TRUE(m.stop(loop.get()));
}

TEST(MirrorAgent, InFlightBoundAndTimeout) {
  TestLoop loop;
  TestHttpServer srv;
  srv.set_handler([](const TestHttpServer::Request&) {
    TestHttpServer::Response r;
    r.hold = true;  // never answers
    return r;
  });
  Mirror m(loop.get(), target_yaml(srv, "max-replays: 3\nreplay-timeout: 300ms\n"));
  for (int i = 0; i < 10; ++i)
    m.send({S("arg_method", "GET"), S("arg_path", "/slow")});
  EXPECT_EQ(m.stats().in_flight, 3u);
  EXPECT_EQ(m.stats().dropped_limit, 7u);
  ASSERT_TRUE(run_until(
      loop.get(), [&] { return m.stats().failed_timeout == 3; }, 3000));
  EXPECT_EQ(m.stats().in_flight_max, 3u);
  EXPECT_EQ(m.stats().in_flight, 0u);
  EXPECT_TRUE(m.stop(loop.get()));
}

// Holds the target's answer until open() (or the gate's end): the handler calls wait().
class Gate {
 public:
  ~Gate() { open(); }
  void wait() {
    std::unique_lock<std::mutex> l(mu_);
    entered_ = true;
    cv_.wait(l, [this] { return open_; });
  }
  bool entered() const {
    std::lock_guard<std::mutex> l(mu_);
    return entered_;
  }
  void open() {
    {
      std::lock_guard<std::mutex> l(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool open_ = false;
};

TEST(MirrorAgent, StopWaitsForReplaysInFlight) {
  TestLoop loop;
  TestHttpServer srv;
  Gate gate;  // declared after srv: opened before the server thread is joined
  srv.set_handler([&gate](const TestHttpServer::Request&) {
    gate.wait();
    return TestHttpServer::Response{};
  });
  Mirror m(loop.get(), target_yaml(srv));
  m.send({S("arg_method", "GET"), S("arg_path", "/late")});
  bool done = false;
  m.agent().stop([&done] { done = true; });
  EXPECT_FALSE(done);
  // The replay reaches the target, which holds its answer: stop() is still waiting.
  ASSERT_TRUE(run_until(
      loop.get(), [&] { return gate.entered() || done; }, 10000));
  EXPECT_TRUE(gate.entered());
  EXPECT_FALSE(done);
  gate.open();
  ASSERT_TRUE(run_until(
      loop.get(), [&] { return done; }, 10000));
  EXPECT_EQ(m.stats().sent, 1u);  // completed, not cancelled
}

TEST(MirrorAgent, SamplingPerTarget) {
  TestLoop loop;
  TestHttpServer a, b;
  Mirror m(loop.get(), "targets:\n  - url: http://127.0.0.1:" + std::to_string(a.port()) +
                           "\n    sampling: 0\n  - url: http://127.0.0.1:" +
                           std::to_string(b.port()) + "\n    sampling: 30\nmax-replays: 5000\n");
  const int n = 2000;
  for (int i = 0; i < n; ++i)
    m.send({S("arg_method", "GET"), S("arg_path", "/s")});
  const uint64_t started = m.stats().replays_started;
  EXPECT_EQ(m.stats().dropped_sampling + started, 2u * n);
  // 30% of 2000: 600, and 5 standard deviations (20.5 each) either side.
  EXPECT_GT(started, 500u);
  EXPECT_LT(started, 700u);
  ASSERT_TRUE(run_until(
      loop.get(), [&] { return m.stats().sent == started; }, 10000));
  EXPECT_EQ(a.request_count(), 0u);
  EXPECT_EQ(b.request_count(), started);
  EXPECT_TRUE(m.stop(loop.get()));
}

// Outcomes, drops, in-flight and latency reach the agent's Prometheus series (a private arena
// here; a worker's is read by the master), and `show stat json` still reads the same values.
TEST(MirrorAgent, MetricsCountOutcomesDropsAndLatency) {
  TestLoop loop;
  TestHttpServer srv;
  srv.set_handler([](const TestHttpServer::Request& r) {
    TestHttpServer::Response resp;
    resp.status = r.target == "/missing" ? 404 : r.target == "/broken" ? 503 : 200;
    return resp;
  });
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "shadow", "mirror");
  Mirror m(loop.get(), target_yaml(srv, "max-body: 8\n"), util::make_logger("mirror"), scope);
  // Registered at start, at 0: rate() has a series before the first replay.
  EXPECT_EQ(
      series(*arena, "spoad_mirror_replays_total", R"(agent="shadow",type="mirror",outcome="3xx")"),
      0u);
  for (const char* path : {"/a", "/b", "/missing", "/broken"})
    m.send({S("arg_method", "GET"), S("arg_path", path)});
  m.send({S("arg_method", "get"), S("arg_path", "/x")});  // bad message
  m.send({S("arg_method", "POST"), S("arg_path", "/big"),
          B("arg_hdrs", hdrs_bin({{"content-length", "9"}})), B("arg_body", "123456789")});
  EXPECT_EQ(series(*arena, "spoad_mirror_in_flight", R"(agent="shadow",type="mirror")"), 4u);
  ASSERT_TRUE(run_until(loop.get(), [&] { return m.stats().sent == 4; }));

  auto replays = [&](const char* outcome) {
    return series(*arena, "spoad_mirror_replays_total",
                  std::string(R"(agent="shadow",type="mirror",outcome=")") + outcome + "\"");
  };
  EXPECT_EQ(replays("2xx"), 2u);
  EXPECT_EQ(replays("4xx"), 1u);
  EXPECT_EQ(replays("5xx"), 1u);
  EXPECT_EQ(replays("3xx"), 0u);
  EXPECT_EQ(replays("connect"), 0u);
  EXPECT_EQ(replays("other"), 0u);
  auto dropped = [&](const char* reason) {
    return series(*arena, "spoad_mirror_dropped_total",
                  std::string(R"(agent="shadow",type="mirror",reason=")") + reason + "\"");
  };
  EXPECT_EQ(dropped("bad-message"), 1u);
  EXPECT_EQ(dropped("body-too-big"), 1u);
  EXPECT_EQ(dropped("limit"), 0u);
  EXPECT_EQ(series(*arena, "spoad_mirror_in_flight", R"(agent="shadow",type="mirror")"), 0u);
  EXPECT_EQ(series(*arena, "spoad_mirror_replay_seconds", R"(agent="shadow",type="mirror")",
                   metrics::Role::kCount),
            4u);

  nlohmann::json st;
  m.agent().stats(st);
  EXPECT_EQ(st["responses_2xx"], 2);
  EXPECT_EQ(st["responses_4xx"], 1);
  EXPECT_EQ(st["responses_5xx"], 1);
  EXPECT_EQ(st["bad_messages"], 1);
  EXPECT_EQ(st["dropped_body_too_big"], 1);
  EXPECT_EQ(st["in_flight"], 0);
  EXPECT_EQ(st["in_flight_max"], 4);
  EXPECT_TRUE(m.stop(loop.get()));

  // A target that is down: outcome "connect", in the same series of the same arena.
  TestHttpServer down;
  down.down();
  Mirror d(loop.get(), target_yaml(down), util::make_logger("mirror"), scope);
  d.send({S("arg_method", "GET"), S("arg_path", "/down")});
  ASSERT_TRUE(run_until(loop.get(), [&] { return d.stats().failed_connect == 1; }));
  EXPECT_EQ(replays("connect"), 1u);
  EXPECT_EQ(series(*arena, "spoad_mirror_replay_seconds", R"(agent="shadow",type="mirror")",
                   metrics::Role::kCount),
            5u);
  EXPECT_TRUE(d.stop(loop.get()));
}

TEST(MirrorOptions, ErrorsNameTheKey) {
  const agent::AgentType* t = agent::find_agent_type("mirror");
  ASSERT_NE(t, nullptr);
  auto err = [t](const std::string& yaml) -> std::string {
    YAML::Node n = YAML::Load(yaml);
    config::Options o(n, std::make_shared<const std::string>("m.yaml"), "agents[0]");
    try {
      t->parse(o);
      o.check_unknown();
    } catch (const config::ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err("host: keep\n").find("targets"), std::string::npos);
  EXPECT_NE(err("targets:\n  - url: ftp://x/\n").find("agents[0].targets[0].url"),
            std::string::npos);
  EXPECT_NE(err("targets:\n  - url: http://x/?q\n").find("url"), std::string::npos);
  EXPECT_NE(err("targets:\n  - url: http://x\n    sampling: 101\n").find("sampling"),
            std::string::npos);
  EXPECT_NE(err("targets:\n  - url: http://x\nhttp-version: 3\n").find("http-version"),
            std::string::npos);
  EXPECT_NE(err("targets:\n  - url: http://x\nhost: origin\n").find("host"), std::string::npos);
  EXPECT_NE(err("targets:\n  - url: http://x\nadd-headers: [\"bad header\"]\n").find("add-headers"),
            std::string::npos);
  EXPECT_NE(err("targets:\n  - url: http://x\n    weight: 1\n").find("weight"), std::string::npos);
  EXPECT_EQ(err("targets:\n  - url: https://x:8443/p/\nhttp-version: 2\nmax-body: 4m\n"), "");
  // Target URLs: http or https in small letters, a host, no query or fragment, and nothing
  // libcurl's URL parser refuses (it would refuse it at every replay).
  for (const char* url : {"http://[::1]:8080/p", "https://u:p@x.example/a/b/", "http://x:1",
                          "http://10.0.0.1/%41/../b"})
    EXPECT_EQ(err(std::string("targets:\n  - url: \"") + url + "\"\n"), "") << url;
  for (const char* url : {"HTTP://x", "https:x", "http:/x", "http:///x", "http://", "http://x#f",
                          "http://x/?", "http://x/a b", "http://x/\\x01", "http://x:99999/",
                          "http://x:port/", "http://[::1/", "ws://x/"})
    EXPECT_NE(err(std::string("targets:\n  - url: \"") + url + "\"\n").find("url"),
              std::string::npos)
        << url;
}

}  // namespace
}  // namespace spoad::agents::mirror
