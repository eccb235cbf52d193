// Unit tests of the tracing agent: the span tree built from a request's events when every
// variable travels through HAProxy (here a map standing in for HAProxy's variables, fed back
// exactly as the SPOE file does), its metrics and its limits.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <spdlog/sinks/ostream_sink.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "agent/registry.h"
#include "agents/tracing/span.h"
#include "agents/tracing/trace_context.h"
#include "agents/tracing/tracing.h"
#include "metrics/arena.h"
#include "spop/frames.h"
#include "tests/support/spop_message.h"
#include "tests/support/test_http_server.h"
#include "tests/support/test_loop.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::agents::tracing {
namespace {

// ---- the agent, driven as HAProxy drives it -----------------------------------------------

// HAProxy's side of the exchange: variables set by ACKs, sent back in later messages.
class FakeHaproxy {
 public:
  explicit FakeHaproxy(agent::Agent& a) : agent_(a) {}
  std::map<std::string, spop::Value> vars;  // name -> value (txn scope)
  std::map<std::string, std::string> strings;

  // Sends message `name` with `now` and, for each var name in `var_args`, its value if set
  // (NULL otherwise, as var() of an unset variable); `extra` are other arguments.
  void send(const std::string& name, int64_t now, const std::vector<std::string>& var_args,
            const std::vector<spop::KV>& extra = {}) {
    std::vector<spop::KV> args = {{"now", spop::Value::Int64(now)}};
    for (const std::string& v : var_args) {
      auto it = vars.find(v);
      args.push_back({v, it == vars.end() ? spop::Value::Null() : it->second});
    }
    for (const auto& kv : extra)
      args.push_back(kv);
    const spoad::testing::EncodedMessage m(name, args);
    ASSERT_TRUE(m.ok());
    agent::Reply reply;
    reply.reset(&owner_, 1, 1);
    agent_.on_message(m.get(), reply);
    const spoad::testing::DecodedActions acts = spoad::testing::decode_actions(reply);
    ASSERT_TRUE(acts.ok);
    for (const spop::Action& act : acts.list) {
      const std::string k(act.name);
      if (act.value.type == spop::DataType::kString) {
        strings[k] = std::string(act.value.bytes);  // keep the bytes alive
        vars[k] = spop::Value::String(strings[k]);
      } else {
        vars[k] = act.value;
      }
    }
  }

 private:
  agent::Agent& agent_;
  spoad::testing::CountingOwner owner_;
};

std::unique_ptr<agent::Agent> make_agent(const std::string& yaml, std::vector<std::string>* out,
                                         const metrics::Scope* scope = nullptr) {
  const agent::AgentType* t = agent::find_agent_type("tracing");
  EXPECT_NE(t, nullptr);
  YAML::Node n = YAML::Load(yaml);
  config::Options o(n, std::make_shared<const std::string>("t.yaml"), "agents[0]");
  auto opts = t->parse(o);
  agent::Context ctx;
  ctx.name = "tracing";
  ctx.log = util::make_logger("tracing");
  if (scope) ctx.metrics = *scope;
  auto a = t->create(ctx, *opts);
  static_cast<TracingAgent*>(a.get())->set_span_sink(
      [out](std::string s) { out->push_back(std::move(s)); });
  return a;
}

const std::vector<std::string> kAll = {"ctx",   "ts",    "t_cs",  "t0",   "t_fth",
                                       "t_fhr", "t_bht", "t_bhr", "t_ss", "t_tr"};

std::map<std::string, nlohmann::json> by_name(const std::vector<std::string>& spans) {
  std::map<std::string, nlohmann::json> m;
  for (const auto& s : spans) {
    auto j = nlohmann::json::parse(s);
    m[j["name"]] = j;
  }
  return m;
}

TEST(TracingAgent, FullTreeFromStatelessEvents) {
  std::vector<std::string> spans;
  auto a = make_agent("sampling: 1\nexporter:\n  type: none\n", &spans);
  FakeHaproxy h(*a);
  const uint8_t ip[4] = {192, 0, 2, 7};
  h.send("trace-client-session", 1000, {});
  h.send("trace-frontend-tcp-request", 1010, {"t_cs"}, {{"traceparent", spop::Value::Null()}});
  ASSERT_TRUE(h.vars.count("ctx"));
  EXPECT_TRUE(h.vars["sampled"].b);
  h.send("trace-frontend-http-request", 1020, kAll,
         {{"client", spop::Value::Ipv4(ip)}, {"client_port", spop::Value::Int64(4242)}});
  h.send("trace-backend-tcp-request", 1030, kAll,
         {{"method", spop::Value::String("GET")},
          {"path", spop::Value::String("/a")},
          {"query", spop::Value::String("x=1")},
          {"host", spop::Value::String("example.org")},
          {"version", spop::Value::String("1.1")}});
  h.send("trace-backend-http-request", 1040, kAll);
  ASSERT_TRUE(h.vars.count("traceparent"));
  h.send("trace-server-session", 1050, kAll, {{"server", spop::Value::String("s1")}});
  h.send("trace-tcp-response", 1060, {"ctx"});
  h.send("trace-http-response", 1070, kAll,
         {{"status", spop::Value::Int64(502)},
          {"uri", spop::Value::String("/a?x=1")},
          {"method", spop::Value::String("GET")},
          {"version", spop::Value::String("HTTP/1.1")}});
  ASSERT_EQ(spans.size(), 9u);
  auto s = by_name(spans);
  const std::string tid = s["HAProxy session"]["traceId"];
  auto id = [&](const char* n) { return s[n]["spanId"].get<std::string>(); };
  EXPECT_FALSE(s["HAProxy session"].contains("parentSpanId"));
  EXPECT_EQ(s["Client session"]["parentSpanId"], id("HAProxy session"));
  EXPECT_EQ(s["Frontend TCP request"]["parentSpanId"], id("Client session"));
  EXPECT_EQ(s["Frontend HTTP request"]["parentSpanId"], id("Frontend TCP request"));
  EXPECT_EQ(s["Frontend HTTP request"]["links"][0]["spanId"], id("Frontend TCP request"));
  EXPECT_EQ(s["Backend TCP request"]["parentSpanId"], id("Frontend HTTP request"));
  EXPECT_EQ(s["Backend HTTP request"]["parentSpanId"], id("Backend TCP request"));
  EXPECT_EQ(s["Server session"]["parentSpanId"], id("HAProxy session"));
  EXPECT_EQ(s["TCP response"]["parentSpanId"], id("Server session"));
  EXPECT_EQ(s["HTTP response"]["parentSpanId"], id("TCP response"));
  for (auto& [n, j] : s)
    EXPECT_EQ(j["traceId"], tid) << n;
  EXPECT_EQ(s["HAProxy session"]["startTimeUnixNano"], "1000000");
  EXPECT_EQ(s["HAProxy session"]["endTimeUnixNano"], "1070000");
  EXPECT_EQ(s["Frontend TCP request"]["startTimeUnixNano"], "1010000");
  EXPECT_EQ(s["Frontend TCP request"]["endTimeUnixNano"], "1020000");
  EXPECT_EQ(s["HAProxy session"]["status"]["code"], 2);  // 502
  EXPECT_FALSE(s["Frontend HTTP request"]["status"].contains("code"));
  EXPECT_EQ(std::string(h.strings["traceparent"]),
            "00-" + tid + "-" + id("Backend HTTP request") + "-01");
}

TEST(TracingAgent, ContinuesAnIncomingTraceparentAndHonoursUnsampled) {
  std::vector<std::string> spans;
  auto a = make_agent("sampling: 0\nexporter:\n  type: none\n", &spans);
  {
    FakeHaproxy h(*a);
    h.send("trace-frontend-http-request", 5, {},
           {{"traceparent",
             spop::Value::String("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
            {"tracestate", spop::Value::String("v=1")}});
    EXPECT_TRUE(h.vars["sampled"].b);  // the parent's flag wins over sampling: 0
    h.send("trace-http-response", 9, kAll, {{"status", spop::Value::Int64(200)}});
    auto s = by_name(spans);
    ASSERT_EQ(spans.size(), 3u);  // lean: root, Frontend HTTP request, HTTP response
    EXPECT_EQ(s["HAProxy session"]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    EXPECT_EQ(s["HAProxy session"]["parentSpanId"], "00f067aa0ba902b7");
    EXPECT_EQ(s["HAProxy session"]["traceState"], "v=1");
    EXPECT_EQ(s["Frontend HTTP request"]["parentSpanId"], s["HAProxy session"]["spanId"]);
    EXPECT_EQ(s["HTTP response"]["parentSpanId"], s["HAProxy session"]["spanId"]);
  }
  spans.clear();
  {
    FakeHaproxy h(*a);
    h.send("trace-frontend-http-request", 5, {},
           {{"traceparent",
             spop::Value::String("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")}});
    EXPECT_FALSE(h.vars["sampled"].b);
    EXPECT_TRUE(spans.empty());
  }
  {
    FakeHaproxy h(*a);  // no traceparent, sampling 0: not sampled
    h.send("trace-frontend-http-request", 5, {}, {{"traceparent", spop::Value::Null()}});
    EXPECT_FALSE(h.vars["sampled"].b);
    EXPECT_TRUE(spans.empty());
  }
}

TEST(TracingAgent, MessagesWithoutContextAreCountedNotFatal) {
  std::vector<std::string> spans;
  auto a = make_agent("exporter:\n  type: none\n", &spans);
  FakeHaproxy h(*a);
  h.send("trace-server-session", 5, {});  // no ctx: an earlier event is missing
  h.send("trace-nonsense", 5, {});
  EXPECT_TRUE(spans.empty());
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["bad_messages"], 2);
}

// spoad_tracing_spans_total counts the spans each message ended, in a series per message name
// registered the first time that message ends a span.
TEST(TracingAgent, MetricsCountSpansByEvent) {
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  const metrics::Scope scope(arena, "otel", "tracing");
  std::vector<std::string> spans;
  auto a = make_agent("sampling: 1\nexporter:\n  type: none\n", &spans, &scope);
  auto by_event = [&](const char* event) {
    std::optional<uint64_t> v;
    const std::string labels = std::string(R"(agent="otel",type="tracing",event=")") + event + "\"";
    arena->visit([&](const metrics::SeriesView& s) {
      if (s.family == "spoad_tracing_spans_total" && s.labels == labels) v = s.value;
    });
    return v;
  };
  for (int i = 0; i < 2; ++i) {
    FakeHaproxy h(*a);
    h.send("trace-frontend-http-request", 5, {}, {{"traceparent", spop::Value::Null()}});
    h.send("trace-backend-tcp-request", 7, kAll);  // ends Frontend HTTP request
    h.send("trace-http-response", 9, kAll, {{"status", spop::Value::Int64(200)}});
  }
  ASSERT_EQ(spans.size(), 8u);
  EXPECT_EQ(by_event("trace-frontend-http-request"), std::nullopt);  // ended no span
  EXPECT_EQ(by_event("trace-backend-tcp-request"), 2u);
  EXPECT_EQ(by_event("trace-http-response"), 6u);  // Backend TCP request, HTTP response, root
  FakeHaproxy h(*a);
  h.send("trace-nonsense", 5, {});  // refused: no series for unknown names
  EXPECT_EQ(by_event("trace-nonsense"), std::nullopt);
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["spans_ended"], 8);
}

// A request whose Host header is "evil\xc0\x80" (an overlong NUL), traced in the same export
// batch as a clean request, through the real exporter to a real HTTP server: the body is valid
// UTF-8 that a strict parser reads, and every span of both requests is in it.
TEST(TracingAgent, IllFormedUtf8InAHeaderKeepsTheBatchValid) {
  spoad::testing::TestHttpServer server;
  spoad::testing::TestLoop loop;
  const std::string yaml =
      "exporter:\n  endpoint: " + server.url() + "\n  flush-interval: 1h\n  max-batch: 1000\n";
  const agent::AgentType* t = agent::find_agent_type("tracing");
  config::Options o(YAML::Load(yaml), std::make_shared<const std::string>("t.yaml"), "agents[0]");
  auto opts = t->parse(o);
  agent::Context ctx;
  ctx.name = "tracing";
  ctx.loop = loop.get();
  ctx.log = util::make_logger("tracing");
  auto a = t->create(ctx, *opts);
  a->start();
  for (const char* host : {"evil\xc0\x80", "clean.example", "sur\xed\xa0\x80"}) {
    FakeHaproxy h(*a);
    h.send("trace-frontend-http-request", 10, {}, {{"traceparent", spop::Value::Null()}});
    h.send("trace-backend-tcp-request", 20, kAll, {{"host", spop::Value::String(host)}});
    h.send("trace-http-response", 30, kAll,
           {{"status", spop::Value::Int64(200)}, {"uri", spop::Value::String("/p")}});
  }
  bool done = false;
  a->stop([&] { done = true; });  // sends what is queued: one batch
  ASSERT_TRUE(spoad::testing::run_until(
      loop.get(), [&] { return done; }, 30000));
  ASSERT_EQ(server.request_count(), 1u);
  const std::string body = server.requests()[0].body;
  EXPECT_TRUE(util::is_utf8(body));
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(body));
  const auto& spans = j["resourceSpans"][0]["scopeSpans"][0]["spans"];
  // 4 per request: the root, Frontend HTTP request, Backend TCP request, HTTP response.
  EXPECT_EQ(spans.size(), 12u);
  std::multiset<std::string> hosts;
  for (const auto& sp : spans)
    for (const auto& at : sp["attributes"])
      if (at["key"] == "server.address") hosts.insert(at["value"]["stringValue"]);
  EXPECT_EQ(hosts, (std::multiset<std::string>{"clean.example", "evil\xEF\xBF\xBD\xEF\xBF\xBD",
                                               "sur\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}));
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["spans_exported"], 12);
  EXPECT_EQ(st["spans_failed"], 0);
}

// The limits: a long attribute value is cut and counted; a tracestate over 512 bytes loses
// members and one with 33 members is dropped, both counted; what is stored in txn.<pfx>.ts is
// the limited value.
TEST(TracingAgent, AttributeAndTracestateLimitsAreCounted) {
  std::vector<std::string> spans;
  auto a = make_agent("attribute-value-limit: 100\nexporter:\n  type: none\n", &spans);
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const std::string big_path = "/" + std::string(1 << 20, 'p');
  std::string ts = "a=1";
  for (int i = 0; i < 20; ++i)
    ts += ",k" + std::to_string(i) + "=" + std::string(40, 'v');  // 20 x 44 bytes: > 512
  {
    FakeHaproxy h(*a);
    h.send("trace-frontend-http-request", 5, {},
           {{"traceparent", spop::Value::String(tp)}, {"tracestate", spop::Value::String(ts)}});
    ASSERT_TRUE(h.vars.count("ts"));
    const std::string kept = h.strings["ts"];
    EXPECT_LE(kept.size(), 512u);
    EXPECT_EQ(kept.substr(0, 4), "a=1,");
    h.send("trace-http-response", 9, kAll,
           {{"status", spop::Value::Int64(200)}, {"uri", spop::Value::String(big_path)}});
    auto s = by_name(spans);
    ASSERT_EQ(spans.size(), 3u);
    EXPECT_EQ(s["HAProxy session"]["traceState"], kept);
    int paths = 0;  // the value cut to the limit, 100 bytes
    for (const auto& at : s["HAProxy session"]["attributes"]) {
      if (at["key"] != "url.path") continue;
      ++paths;
      EXPECT_EQ(at["value"]["stringValue"], big_path.substr(0, 100));
    }
    EXPECT_EQ(paths, 1);
  }
  std::string many;
  for (int i = 0; i < 33; ++i)
    many += (i ? "," : "") + std::string("k") + std::to_string(i) + "=v";
  {
    FakeHaproxy h(*a);
    h.send("trace-frontend-http-request", 5, {},
           {{"traceparent", spop::Value::String(tp)}, {"tracestate", spop::Value::String(many)}});
    EXPECT_FALSE(h.vars.count("ts"));
    EXPECT_TRUE(h.vars["sampled"].b);  // the traceparent still counts
  }
  nlohmann::json st;
  a->stats(st);
  EXPECT_EQ(st["attributes_truncated"], 2);  // url.path of the root and Frontend HTTP request
  EXPECT_EQ(st["tracestate_truncated"], 1);
  EXPECT_EQ(st["tracestate_dropped"], 1);
}

// Message names come from the peer: what the agent logs of them cannot forge a line.
TEST(TracingAgent, PeerBytesAreLoggedEscaped) {
  std::ostringstream logged;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(logged);
  auto log = std::make_shared<spdlog::logger>("tracing-log-test", sink);
  const agent::AgentType* t = agent::find_agent_type("tracing");
  config::Options o(YAML::Load("exporter:\n  type: none\n"),
                    std::make_shared<const std::string>("t.yaml"), "agents[0]");
  auto opts = t->parse(o);
  agent::Context ctx;
  ctx.name = "tracing";
  ctx.log = log;
  auto a = t->create(ctx, *opts);
  FakeHaproxy h(*a);
  h.send("x\r\n[2026-01-01 00:00:00] [spoad] [error] forged\x1b[31m\xff", 5, {});
  log->flush();
  const std::string out = logged.str();
  EXPECT_NE(out.find("unknown message \"x\\x0d\\x0a[2026-01-01 00:00:00] [spoad] [error] "
                     "forged\\x1b[31m\\xff\": ignored"),
            std::string::npos)
      << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);  // one line
  EXPECT_EQ(out.find('\x1b'), std::string::npos);
  EXPECT_EQ(out.find('\r'), std::string::npos);
}

}  // namespace
}  // namespace spoad::agents::tracing
