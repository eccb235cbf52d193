// Unit tests of the tracing agent: W3C trace context, span ids, OTLP/JSON encoding, and the
// span tree built from a request's events when every variable travels through HAProxy (here
// a map standing in for HAProxy's variables, fed back exactly as the SPOE file does).
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
#include "spop/writer.h"
#include "tests/unit/test_http_server.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::agents::tracing {
namespace {

TEST(TraceParent, ParsesValidHeaders) {
  auto tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  ASSERT_TRUE(tp);
  EXPECT_EQ(to_hex(tp->trace_id.data(), 16), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(to_hex64(tp->parent_id), "00f067aa0ba902b7");
  EXPECT_TRUE(tp->sampled());
  tp = parse_traceparent(" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00 ");
  ASSERT_TRUE(tp);
  EXPECT_FALSE(tp->sampled());
  // A later version may carry more fields: read as 00.
  EXPECT_TRUE(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
}

TEST(TraceParent, RejectsInvalidHeaders) {
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // extra with 00
           "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
       })
    EXPECT_FALSE(parse_traceparent(bad)) << bad;
}

TEST(TraceParent, FormatRoundTrip) {
  TraceId t{};
  t[15] = 1;
  EXPECT_EQ(format_traceparent(t, 0xabc, 1),
            "00-00000000000000000000000000000001-0000000000000abc-01");
}

TEST(Context, EncodeDecode) {
  IdGenerator ids;
  RequestContext c;
  c.trace_id = ids.trace_id();
  c.seed = ids.u64();
  c.remote_parent = 0x1234;
  c.flags = 1;
  const std::string s = c.encode();
  EXPECT_EQ(s.size(), 66u);
  auto d = RequestContext::decode(s);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->trace_id, c.trace_id);
  EXPECT_EQ(d->seed, c.seed);
  EXPECT_EQ(d->remote_parent, 0x1234u);
  EXPECT_TRUE(d->sampled());
  EXPECT_FALSE(RequestContext::decode(s.substr(1)));
  EXPECT_FALSE(RequestContext::decode(std::string(66, 'z')));
}

TEST(SpanIds, DistinctNonZeroAndDeterministic) {
  for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{0xdeadbeef}, ~uint64_t{0}}) {
    std::set<uint64_t> seen;
    for (int k = 1; k <= 9; ++k) {
      const uint64_t id = span_id(seed, static_cast<SpanKindId>(k));
      EXPECT_NE(id, 0u);
      EXPECT_EQ(id, span_id(seed, static_cast<SpanKindId>(k)));
      seen.insert(id);
    }
    EXPECT_EQ(seen.size(), 9u);
  }
}

TEST(Sampling, RatioIsRespected) {
  IdGenerator ids;
  int yes = 0;
  for (int i = 0; i < 100000; ++i)
    yes += ids.sample(0.1);
  EXPECT_NEAR(yes / 100000.0, 0.1, 0.01);
  EXPECT_TRUE(ids.sample(1.0));
  EXPECT_FALSE(ids.sample(0.0));
}

// Ill-formed UTF-8 of every kind (overlong C0 80, a surrogate ED A0 80, U+110000 F4 90 80 80,
// an F5 lead, a truncated sequence, a lone continuation byte) in every string of a span: the
// encoding is valid UTF-8 that a strict parser reads, each bad byte shown as U+FFFD.
TEST(Json, SpanEncodingIsAlwaysValidUtf8) {
  const std::vector<std::string> bad = {"evil\xc0\x80",
                                        "sur\xed\xa0\x80",
                                        "big\xf4\x90\x80\x80",
                                        "f5\xf5\x80\x80\x80",
                                        "cut\xe2\x82",
                                        "lone\x80",
                                        "ctl\x01\x7f\n\"\\",
                                        std::string("nul\0x", 5),
                                        "ok caf\xc3\xa9 \xf0\x9f\x98\x80"};
  for (const std::string& b : bad) {
    Span s;
    s.name = b;
    s.trace_state = b;
    s.error = true;
    s.status_message = b;
    s.add(b, b);
    const std::string out = encode_span(s);
    EXPECT_TRUE(util::is_utf8(out)) << util::printable(b);
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(out)) << util::printable(b);
    EXPECT_TRUE(util::is_utf8(j["attributes"][0]["value"]["stringValue"].get<std::string>()));
  }
  Span s;
  s.add("server.address", "evil\xc0\x80");
  const auto j = nlohmann::json::parse(encode_span(s));
  EXPECT_EQ(j["attributes"][0]["value"]["stringValue"], "evil\xEF\xBF\xBD\xEF\xBF\xBD");
  Span ok;
  ok.add("k", "caf\xc3\xa9 \xf0\x9f\x98\x80");  // well-formed: copied as is
  EXPECT_EQ(nlohmann::json::parse(encode_span(ok))["attributes"][0]["value"]["stringValue"],
            "caf\xc3\xa9 \xf0\x9f\x98\x80");
}

TEST(Attributes, ValuesAreCutOnACharacterBoundary) {
  EXPECT_EQ(cut_utf8("abcdef", 4), "abcd");
  EXPECT_EQ(cut_utf8("abc", 4), "abc");
  EXPECT_EQ(cut_utf8("ab\xc3\xa9", 3), "ab");  // é would be split: left out
  EXPECT_EQ(cut_utf8("ab\xc3\xa9", 4), "ab\xc3\xa9");
  EXPECT_EQ(cut_utf8("a\xf0\x9f\x98\x80z", 2), "a");  // 4-byte character
  EXPECT_EQ(cut_utf8("a\xf0\x9f\x98\x80z", 4), "a");
  EXPECT_EQ(cut_utf8("a\xf0\x9f\x98\x80z", 5), "a\xf0\x9f\x98\x80");
  EXPECT_EQ(cut_utf8("a\xc0\x80\x80\x80", 3), "a\xc0\x80");  // ill-formed: bytes, cut anywhere
  EXPECT_EQ(cut_utf8("\x80\x80\x80\x80\x80", 2), "\x80\x80");

  Span s;
  s.value_limit = 4;
  s.add("url.path", "/abcdef");
  s.add("short", "/ab");
  s.add("int", int64_t{7});
  EXPECT_EQ(s.truncated_attrs, 1u);
  EXPECT_EQ(s.attrs[0].str, "/abc");
  EXPECT_EQ(s.attrs[1].str, "/ab");
  for (size_t i = s.nattrs; i < Span::kMaxAttributes + 2; ++i)
    s.add("more", "x");
  EXPECT_EQ(s.dropped_attrs, 2u);
  EXPECT_EQ(nlohmann::json::parse(encode_span(s))["droppedAttributesCount"], 2);
}

TEST(TraceState, KeptWhenWithinTheLimits) {
  std::string out;
  EXPECT_EQ(limit_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 512, &out),
            TraceStateVerdict::kKept);
  EXPECT_EQ(out, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
  // OWS and empty members are not part of the list.
  EXPECT_EQ(limit_tracestate(" a=1 ,\t, b@v=x y ,", 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, "a=1,b@v=x y");
  EXPECT_EQ(limit_tracestate("", 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, "");
  std::string list;
  for (int i = 0; i < 32; ++i)
    list += (i ? "," : "") + std::string("k") + std::to_string(i) + "=v";
  EXPECT_EQ(limit_tracestate(list, 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, list);
}

TEST(TraceState, MalformedOrMoreThan32MembersIsDropped) {
  std::string out = "old";
  std::string list;
  for (int i = 0; i < 33; ++i)
    list += (i ? "," : "") + std::string("k") + std::to_string(i) + "=v";
  EXPECT_EQ(limit_tracestate(list, 100000, &out), TraceStateVerdict::kDropped);
  EXPECT_EQ(out, "");
  for (const char* bad : {"novalue", "=v", "Key=v", "k=a,b=", "k=v=w", "k=v\x01", "k=caf\xc3\xa9",
                          "k=v\n", "k!=v", "_k=v"})
    EXPECT_EQ(limit_tracestate(bad, 512, &out), TraceStateVerdict::kDropped) << bad;
  EXPECT_EQ(limit_tracestate(std::string(300, 'k') + "=v", 100000, &out),
            TraceStateVerdict::kDropped);  // a key has at most 256 characters
  EXPECT_EQ(limit_tracestate("k=" + std::string(257, 'v'), 100000, &out),
            TraceStateVerdict::kDropped);  // a value at most 256
  EXPECT_EQ(limit_tracestate(std::string(1 << 20, ','), 512, &out), TraceStateVerdict::kKept);
  EXPECT_EQ(out, "");
}

TEST(TraceState, TruncatedToMaxBytesWholeMembersLongOnesFirst) {
  std::string out;
  const std::string long1 = "long1=" + std::string(200, 'a');  // > 128 bytes
  const std::string long2 = "long2=" + std::string(150, 'b');
  std::string list = "a=1," + long1 + ",b=2," + long2 + ",c=3";
  // 4+207+4+157+3 = 375 bytes with the commas: over 300, the long members go, from the end.
  EXPECT_EQ(limit_tracestate(list, 300, &out), TraceStateVerdict::kTruncated);
  EXPECT_EQ(out, "a=1," + long1 + ",b=2,c=3");
  EXPECT_EQ(limit_tracestate(list, 100, &out), TraceStateVerdict::kTruncated);
  EXPECT_EQ(out, "a=1,b=2,c=3");
  EXPECT_EQ(limit_tracestate(list, 8, &out), TraceStateVerdict::kTruncated);  // from the end
  EXPECT_EQ(out, "a=1,b=2");
  EXPECT_EQ(limit_tracestate(list, 2, &out), TraceStateVerdict::kDropped);  // nothing fits
  EXPECT_EQ(out, "");
  EXPECT_EQ(limit_tracestate("a=1", 0, &out), TraceStateVerdict::kDropped);
}

TEST(Json, SpanEncodingFollowsOtlp) {
  Span s;
  s.name = "Frontend HTTP request";
  s.trace_id[0] = 0xab;
  s.span_id = 0x1122334455667788;
  s.parent_id = 0x99;
  s.link_span_id = 0x99;
  s.kind = Kind::kServer;
  s.start_us = 1700000000000001;
  s.end_us = 1700000000000002;
  s.error = true;
  s.status_message = "HTTP 5xx";
  s.trace_state = "k=v";
  s.add("http.request.method", "GET");
  s.add("http.response.status_code", int64_t{503});
  s.add("empty", "");  // skipped
  const auto j = nlohmann::json::parse(encode_span(s));
  EXPECT_EQ(j["traceId"], "ab000000000000000000000000000000");
  EXPECT_EQ(j["spanId"], "1122334455667788");
  EXPECT_EQ(j["parentSpanId"], "0000000000000099");
  EXPECT_EQ(j["traceState"], "k=v");
  EXPECT_EQ(j["kind"], 2);
  EXPECT_EQ(j["startTimeUnixNano"], "1700000000000001000");  // 64-bit integers as strings
  EXPECT_EQ(j["endTimeUnixNano"], "1700000000000002000");
  ASSERT_EQ(j["attributes"].size(), 2u);
  EXPECT_EQ(j["attributes"][0]["value"]["stringValue"], "GET");
  EXPECT_EQ(j["attributes"][1]["value"]["intValue"], "503");
  EXPECT_EQ(j["links"][0]["spanId"], "0000000000000099");
  EXPECT_EQ(j["status"]["code"], 2);
}

// ---- the agent, driven as HAProxy drives it -----------------------------------------------

struct Owner : agent::Reply::Owner {
  void on_reply_complete(agent::Reply&) override {}
};

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
    std::vector<uint8_t> buf;
    spop::Writer w(buf);
    w.message(name, args);
    spop::Reader r(spop::Bytes(buf.data(), buf.size()));
    spop::Message m;
    ASSERT_TRUE(r.message(&m));
    agent::Reply reply;
    reply.reset(&owner_, 1, 1);
    agent_.on_message(m, reply);
    const auto& a = reply.actions();
    uint32_t n = 0;
    ASSERT_TRUE(spop::validate_actions(spop::Bytes(a.data(), a.size()), &n).ok());
    for (const spop::Action& act : spop::actions(spop::Bytes(a.data(), a.size()))) {
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
  Owner owner_;
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
    for (const auto& at : s["HAProxy session"]["attributes"])
      if (at["key"] == "url.path") EXPECT_EQ(at["value"]["stringValue"], big_path.substr(0, 100));
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
