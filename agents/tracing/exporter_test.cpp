// Tests of the tracing agent's span exporter against a real HTTP server on 127.0.0.1 (and real
// files): batching, the OTLP/JSON request, gzip, bounded memory with the receiver down,
// retries, stop, the file exporter, and the options from the environment and YAML.
#include "agents/tracing/exporter.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <uv.h>
#include <yaml-cpp/yaml.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "config/options.h"
#include "metrics/arena.h"
#include "tests/unit/test_http_server.h"
#include "util/log.h"
#include "version.h"

namespace spoad::agents::tracing {
namespace {

using nlohmann::json;
using spoad::testing::run_until;
using spoad::testing::TestHttpServer;
using spoad::testing::TestLoop;
using Request = TestHttpServer::Request;
using Response = TestHttpServer::Response;

std::string span(int i) {
  char id[17];
  std::snprintf(id, sizeof(id), "%016x", i + 1);
  return std::string(R"({"traceId":"5b8efff798038103d269b633813fc60c","spanId":")") + id +
         R"(","name":"span-)" + std::to_string(i) +
         R"(","kind":2,"startTimeUnixNano":"1700000000000000000",)"
         R"("endTimeUnixNano":"1700000000001000000"})";
}

// The spans of an export request body.
json spans_of(const std::string& body) {
  const json j = json::parse(body);
  return j.at("resourceSpans").at(0).at("scopeSpans").at(0).at("spans");
}

std::vector<std::string> names_of(const std::string& body) {
  std::vector<std::string> out;
  for (const json& s : spans_of(body))
    out.push_back(s.at("name").get<std::string>());
  return out;
}

std::vector<std::string> names(int from, int to) {  // span-from .. span-(to-1)
  std::vector<std::string> out;
  for (int i = from; i < to; ++i)
    out.push_back("span-" + std::to_string(i));
  return out;
}

// attributes [{key, value:{stringValue|intValue}}] -> key -> value.
std::map<std::string, std::string> attrs_of(const json& attrs) {
  std::map<std::string, std::string> out;
  for (const json& a : attrs) {
    const json& v = a.at("value");
    out[a.at("key").get<std::string>()] = v.contains("stringValue")
                                              ? v["stringValue"].get<std::string>()
                                              : "int:" + v.at("intValue").get<std::string>();
  }
  return out;
}

std::string gunzip(const std::string& in) {
  z_stream z{};
  EXPECT_EQ(inflateInit2(&z, 15 + 16), Z_OK);
  std::string out;
  char buf[65536];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof(buf);
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - z.avail_out);
  }
  EXPECT_EQ(rc, Z_STREAM_END);
  inflateEnd(&z);
  return out;
}

ExporterOptions http_options(const TestHttpServer& server) {
  ExporterOptions o;
  o.endpoint = server.url();
  o.flush_interval_ms = 50;
  o.retry_initial_ms = 20;
  o.retry_max_ms = 200;
  o.timeout_ms = 2000;
  return o;
}

std::unique_ptr<SpanExporter> make(uv_loop_t* loop, ExporterOptions o) {
  return std::make_unique<SpanExporter>(loop, std::move(o), util::make_logger("tracing-test"));
}

// Stops the exporter and runs the loop until its `done` ran.
void stop(uv_loop_t* loop, SpanExporter& e) {
  bool done = false;
  e.stop([&] { done = true; });
  ASSERT_TRUE(run_until(loop, [&] { return done; }));
}

uint64_t ms_since(std::chrono::steady_clock::time_point t0,
                  std::chrono::steady_clock::time_point t) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(t - t0).count());
}

TEST(SpanExporter, BatchesBySize) {
  TestHttpServer server;
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_batch = 3;
  o.flush_interval_ms = 3'600'000;  // only full batches leave, until stop()
  auto e = make(loop.get(), o);
  for (int i = 0; i < 7; ++i)
    ASSERT_TRUE(e->enqueue(span(i)));
  EXPECT_EQ(server.request_count(), 0u);  // nothing leaves inside enqueue()
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 6; }));
  auto s = e->stats();
  EXPECT_EQ(s.export_requests, 2u);
  EXPECT_EQ(s.queued, 1u);  // the 7th waits for the interval
  stop(loop.get(), *e);     // or for stop()
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(names_of(reqs[0].body), names(0, 3));
  EXPECT_EQ(names_of(reqs[1].body), names(3, 6));
  EXPECT_EQ(names_of(reqs[2].body), names(6, 7));
  s = e->stats();
  EXPECT_EQ(s.enqueued, 7u);
  EXPECT_EQ(s.exported, 7u);
  EXPECT_EQ(s.export_requests, 3u);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_EQ(s.dropped, 0u);
  EXPECT_EQ(s.retries, 0u);
  EXPECT_LE(s.export_latency_avg_ms, s.export_latency_max_ms);
}

// A batch that is not full leaves flush_interval_ms after its oldest span was queued: never
// before (a lower bound the timer guarantees), and not later than that however many spans
// keep joining it (a timer restarted by each new span would never fire here).
TEST(SpanExporter, FlushInterval) {
  TestHttpServer server;
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_batch = 1000;
  o.flush_interval_ms = 150;
  auto e = make(loop.get(), o);
  const auto t0 = std::chrono::steady_clock::now();  // not after the loop's time
  uv_update_time(loop.get());
  e->enqueue(span(0));
  uint64_t last = uv_now(loop.get());
  int n = 1;
  ASSERT_TRUE(run_until(loop.get(), [&] {
    if (e->stats().export_requests > 0) return true;
    if (uv_now(loop.get()) >= last + 50) {  // a new span every 50 ms of loop time
      last = uv_now(loop.get());
      e->enqueue(span(n++));
    }
    return false;
  }));
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() == 1; }));
  EXPECT_GE(ms_since(t0, server.requests()[0].at), 145u);
  const auto got = names_of(server.requests()[0].body);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got, names(0, static_cast<int>(got.size())));
  // The next span starts a new interval.
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == uint64_t(n); }));
  const auto t1 = std::chrono::steady_clock::now();
  uv_update_time(loop.get());
  e->enqueue(span(n));
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() >= 2; }));
  EXPECT_GE(ms_since(t1, server.requests().back().at), 145u);
  stop(loop.get(), *e);
}

TEST(SpanExporter, RequestIsOtlpJson) {
  TestHttpServer server;
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.service_name = "edge \"proxy\"";
  o.resource_attributes = {{"deployment.environment", "test"},
                           {"odd", "quote\" backslash\\ newline\n tab\t é"}};
  o.headers = {{"X-Scope-OrgID", "tenant-1"}, {"Authorization", "Bearer abc"}};
  o.max_batch = 4;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 4; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 4; }));
  ASSERT_EQ(server.request_count(), 1u);
  const Request r = server.requests()[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/v1/traces");
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("content-encoding"), "");
  EXPECT_EQ(r.header("x-scope-orgid"), "tenant-1");
  EXPECT_EQ(r.header("authorization"), "Bearer abc");
  EXPECT_EQ(r.header("expect"), "");
  EXPECT_EQ(r.header("user-agent"), std::string("spoad/") + SPOAD_VERSION);

  const json j = json::parse(r.body);  // throws if not JSON
  ASSERT_EQ(j.at("resourceSpans").size(), 1u);
  const json& rs = j["resourceSpans"][0];
  const auto attrs = attrs_of(rs.at("resource").at("attributes"));
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  EXPECT_EQ(attrs.at("service.name"), "edge \"proxy\"");
  EXPECT_EQ(attrs.at("host.name"), host);
  EXPECT_EQ(attrs.at("process.pid"), "int:" + std::to_string(getpid()));
  EXPECT_EQ(attrs.at("deployment.environment"), "test");
  EXPECT_EQ(attrs.at("odd"), "quote\" backslash\\ newline\n tab\t é");
  EXPECT_EQ(attrs.size(), 5u);
  EXPECT_EQ(rs["resource"]["attributes"][0]["key"], "service.name");  // first
  ASSERT_EQ(rs.at("scopeSpans").size(), 1u);
  EXPECT_EQ(rs["scopeSpans"][0].at("scope").at("name"), "spoad.tracing");
  EXPECT_EQ(rs["scopeSpans"][0]["scope"].at("version"), SPOAD_VERSION);
  const json spans = spans_of(r.body);
  ASSERT_EQ(spans.size(), 4u);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(spans[i], json::parse(span(i))) << i;  // as given, in order
  stop(loop.get(), *e);
}

TEST(SpanExporter, ResourceAttributesReplaceHostAndPid) {
  TestHttpServer server;
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.resource_attributes = {{"host.name", "lb-1"}, {"process.pid", "x"}, {"service.name", "no"}};
  auto e = make(loop.get(), o);
  e->enqueue(span(0));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 1; }));
  const auto attrs = attrs_of(
      json::parse(server.requests()[0].body)["resourceSpans"][0]["resource"]["attributes"]);
  EXPECT_EQ(attrs.at("host.name"), "lb-1");
  EXPECT_EQ(attrs.at("process.pid"), "x");
  EXPECT_EQ(attrs.at("service.name"), "haproxy");  // service_name wins
  EXPECT_EQ(attrs.size(), 3u);
  stop(loop.get(), *e);
}

TEST(SpanExporter, Gzip) {
  TestHttpServer server;
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.gzip = true;
  o.max_batch = 50;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 50; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 50; }));
  ASSERT_EQ(server.request_count(), 1u);
  const Request r = server.requests()[0];
  EXPECT_EQ(r.header("content-encoding"), "gzip");
  EXPECT_EQ(r.header("content-type"), "application/json");
  ASSERT_GE(r.body.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(r.body[0]), 0x1f);  // gzip magic
  EXPECT_EQ(static_cast<unsigned char>(r.body[1]), 0x8b);
  const std::string plain = gunzip(r.body);
  EXPECT_LT(r.body.size(), plain.size() / 4);
  EXPECT_EQ(names_of(plain), names(0, 50));
  stop(loop.get(), *e);
}

TEST(SpanExporter, QueueBoundedWhileReceiverDown) {
  TestHttpServer server;
  server.down();
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_queue = 10;
  o.max_batch = 4;
  o.flush_interval_ms = 20;
  auto e = make(loop.get(), o);
  int accepted = 0;
  for (int i = 0; i < 25; ++i) {
    const bool ok = e->enqueue(span(i));
    EXPECT_EQ(ok, i < 10) << i;
    accepted += ok;
  }
  EXPECT_EQ(accepted, 10);
  auto s = e->stats();
  EXPECT_EQ(s.dropped, 15u);
  EXPECT_EQ(s.enqueued, 10u);
  EXPECT_EQ(s.queued, 10u);
  // Exports fail and are retried; memory stays at 10 spans, new ones are still refused.
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().retries >= 4; }));
  EXPECT_FALSE(e->enqueue(span(99)));
  s = e->stats();
  EXPECT_EQ(s.queued, 10u);
  EXPECT_EQ(s.dropped, 16u);
  EXPECT_EQ(s.exported, 0u);
  EXPECT_EQ(s.failed_exports, 0u);
  EXPECT_EQ(s.failed_spans, 0u);
  EXPECT_EQ(server.request_count(), 0u);
  // The receiver comes back: the 10 spans arrive without anything else being done.
  server.up();
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 10; }));
  std::vector<std::string> got;
  for (const Request& r : server.requests())
    for (const std::string& n : names_of(r.body))
      got.push_back(n);
  std::sort(got.begin(), got.end());
  auto want = names(0, 10);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(server.request_count(), 3u);  // 4 + 4 + 2
  EXPECT_EQ(e->stats().queued, 0u);
  EXPECT_TRUE(e->enqueue(span(10)));  // room again
  stop(loop.get(), *e);
  EXPECT_EQ(e->stats().exported, 11u);
}

// The byte budget: spans are held while the receiver is down until max_queue_bytes; the next
// one is refused and counted in dropped_bytes; memory is given back once they are exported.
TEST(SpanExporter, QueueBytesBudgetWhileReceiverDown) {
  TestHttpServer server;
  server.down();
  TestLoop loop;
  ExporterOptions o = http_options(server);
  const std::string big = R"({"name":")" + std::string(1000, 'x') + R"("})";
  o.max_queue_bytes = 3 * big.size() + span(0).size();
  o.max_batch = 2;
  auto e = make(loop.get(), o);
  EXPECT_TRUE(e->enqueue(big));
  EXPECT_TRUE(e->enqueue(big));
  EXPECT_TRUE(e->enqueue(big));
  EXPECT_FALSE(e->enqueue(big));     // a 4th would pass the budget
  EXPECT_TRUE(e->enqueue(span(0)));  // a small one fits exactly
  auto s = e->stats();
  EXPECT_EQ(s.dropped, 1u);
  EXPECT_EQ(s.dropped_bytes, 1u);
  EXPECT_EQ(s.queued, 4u);
  EXPECT_EQ(s.queued_bytes, 3 * big.size() + span(0).size());
  // A span larger than the whole budget never fits.
  EXPECT_FALSE(e->enqueue(std::string(o.max_queue_bytes + 1, 'x')));
  // Batches in flight and waiting for their retry still count.
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().retries >= 2; }));
  EXPECT_FALSE(e->enqueue(big));
  s = e->stats();
  EXPECT_EQ(s.dropped_bytes, 3u);
  EXPECT_EQ(s.queued_bytes, 3 * big.size() + span(0).size());
  server.up();
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 4; }));
  s = e->stats();
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_TRUE(e->enqueue(big));  // room again
  stop(loop.get(), *e);
  EXPECT_EQ(e->stats().exported, 5u);
}

TEST(SpanExporter, RetriesOn503) {
  TestHttpServer server;
  int calls = 0;
  server.set_handler([&](const Request&) {
    Response r;
    r.status = ++calls <= 2 ? 503 : 200;
    return r;
  });
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_batch = 5;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 5; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 5; }));
  const auto s = e->stats();
  EXPECT_EQ(s.export_requests, 3u);
  EXPECT_EQ(s.retries, 2u);
  EXPECT_EQ(s.failed_exports, 0u);
  EXPECT_EQ(s.failed_spans, 0u);
  EXPECT_EQ(s.queued, 0u);
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].body, reqs[2].body);  // the same batch, nothing lost
  EXPECT_EQ(names_of(reqs[2].body), names(0, 5));
  // Backoff: about 20 ms, then about 40 ms (+/-20%).
  EXPECT_GE(ms_since(reqs[0].at, reqs[1].at), 15u);
  EXPECT_GE(ms_since(reqs[1].at, reqs[2].at), 31u);
  stop(loop.get(), *e);
}

TEST(SpanExporter, RetryAfterOn429) {
  TestHttpServer server;
  int calls = 0;
  server.set_handler([&](const Request&) {
    Response r;
    if (++calls == 1) {
      r.status = 429;
      r.headers = {{"Retry-After", "1"}};
    }
    return r;
  });
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.retry_initial_ms = 10;  // Retry-After must win over this
  o.max_batch = 2;
  auto e = make(loop.get(), o);
  e->enqueue(span(0));
  e->enqueue(span(1));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 2; }));
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_GE(ms_since(reqs[0].at, reqs[1].at), 950u);
  EXPECT_EQ(reqs[0].body, reqs[1].body);
  EXPECT_EQ(e->stats().retries, 1u);
  stop(loop.get(), *e);
}

TEST(SpanExporter, BadRequestDropsTheBatch) {
  TestHttpServer server;
  int status = 400;
  server.set_handler([&](const Request&) {
    Response r;
    r.status = status;
    r.body = R"({"code":3,"message":"bad span"})";
    return r;
  });
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_batch = 3;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 3; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().failed_exports == 1; }));
  // Dropped at once: the batch left memory, so no retry can come.
  auto s = e->stats();
  EXPECT_EQ(server.request_count(), 1u);
  EXPECT_EQ(s.failed_spans, 3u);
  EXPECT_EQ(s.exported, 0u);
  EXPECT_EQ(s.retries, 0u);
  EXPECT_EQ(s.queued, 0u);
  // A 500 is not retried either; later batches still go.
  server.set_handler([](const Request&) { return Response{500, {}, "", false}; });
  for (int i = 3; i < 6; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().failed_exports == 2; }));
  server.set_handler([](const Request&) { return Response{}; });
  for (int i = 6; i < 9; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 3; }));
  s = e->stats();
  EXPECT_EQ(s.failed_spans, 6u);
  EXPECT_EQ(s.retries, 0u);
  EXPECT_EQ(server.request_count(), 3u);
  EXPECT_EQ(s.enqueued, s.exported + s.failed_spans + s.queued);
  stop(loop.get(), *e);
}

TEST(SpanExporter, StopFlushesTheQueue) {
  TestHttpServer server;
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.flush_interval_ms = 60'000;  // only stop() makes them leave
  o.max_batch = 4;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 7; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 4; }));  // the full one
  EXPECT_EQ(e->stats().queued, 3u);  // the rest waits for the interval
  EXPECT_EQ(e->stats().export_requests, 1u);
  bool done = false;
  e->stop([&] { done = true; });
  EXPECT_FALSE(done);
  ASSERT_TRUE(run_until(loop.get(), [&] { return done; }));
  ASSERT_EQ(server.request_count(), 2u);
  EXPECT_EQ(names_of(server.requests()[1].body), names(4, 7));
  const auto s = e->stats();
  EXPECT_EQ(s.exported, 7u);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_FALSE(e->enqueue(span(8)));  // after stop
  EXPECT_EQ(e->stats().dropped, 1u);
}

TEST(SpanExporter, StopGivesUpAfterTheTimeout) {
  TestHttpServer server;
  server.down();
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.timeout_ms = 300;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 5; ++i)
    e->enqueue(span(i));
  // A first attempt failed and was retried.
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().retries >= 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  uv_update_time(loop.get());  // the stop deadline counts from a loop time not before t0
  bool done = false;
  e->stop([&] { done = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return done; }));
  EXPECT_GE(ms_since(t0, std::chrono::steady_clock::now()), 290u);  // it tried until the end
  const auto s = e->stats();
  EXPECT_EQ(s.failed_spans, 5u);
  EXPECT_EQ(s.queued, 0u);
  EXPECT_EQ(s.exported, 0u);
}

// The exporter's Prometheus series: requests by outcome and their latency, spans exported and
// dropped by reason, the queue gauges; and Stats, read from the same handles.
TEST(SpanExporter, MetricsFollowRequestsDropsAndTheQueue) {
  TestHttpServer server;
  int status = 400;
  server.set_handler([&](const Request&) {
    Response r;
    r.status = status;
    return r;
  });
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_batch = 2;
  o.max_queue = 4;
  std::shared_ptr<metrics::Arena> arena = metrics::Arena::private_memory();
  auto e = std::make_unique<SpanExporter>(loop.get(), o, util::make_logger("tracing-test"),
                                          metrics::Scope(arena, "otel", "tracing"));
  auto value = [&](std::string_view family, const std::string& label,
                   metrics::Role role = metrics::Role::kValue) {
    const std::string labels = R"(agent="otel",type="tracing")" + label;
    std::optional<uint64_t> v;
    arena->visit([&](const metrics::SeriesView& s) {
      if (s.family == family && s.labels == labels && s.role == role) v = s.value;
    });
    return v;
  };
  auto requests = [&](const char* outcome) {
    return value("spoad_tracing_export_requests_total",
                 std::string(",outcome=\"") + outcome + "\"");
  };
  auto dropped = [&](const char* reason) {
    return value("spoad_tracing_spans_dropped_total", std::string(",reason=\"") + reason + "\"");
  };
  EXPECT_EQ(requests("success"), 0u);  // registered at creation
  EXPECT_EQ(dropped("queue-full"), 0u);

  // A rejected batch: http-error, its spans dropped as export-failed.
  e->enqueue(span(0));
  e->enqueue(span(1));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().failed_exports == 1; }));
  EXPECT_EQ(requests("http-error"), 1u);
  EXPECT_EQ(dropped("export-failed"), 2u);
  // An accepted one.
  status = 200;
  e->enqueue(span(2));
  e->enqueue(span(3));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 2; }));
  EXPECT_EQ(requests("success"), 1u);
  EXPECT_EQ(value("spoad_tracing_spans_exported_total", ""), 2u);
  EXPECT_EQ(value("spoad_tracing_export_seconds", "", metrics::Role::kCount), 2u);
  EXPECT_EQ(value("spoad_tracing_queue_spans", ""), 0u);

  // The receiver is down: spans are held (gauges), the fifth is refused (queue-full), the
  // attempts fail (network-error) until it is back.
  server.down();
  for (int i = 4; i < 9; ++i)
    e->enqueue(span(i));
  EXPECT_EQ(value("spoad_tracing_queue_spans", ""), 4u);
  EXPECT_EQ(value("spoad_tracing_queue_bytes", ""), 4 * span(4).size());
  EXPECT_EQ(dropped("queue-full"), 1u);
  ASSERT_TRUE(run_until(loop.get(), [&] { return requests("network-error") >= 1u; }));
  server.up();
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 6; }));
  EXPECT_EQ(value("spoad_tracing_spans_exported_total", ""), 6u);
  EXPECT_EQ(value("spoad_tracing_queue_spans", ""), 0u);
  EXPECT_EQ(value("spoad_tracing_queue_bytes", ""), 0u);
  EXPECT_EQ(requests("success"), 3u);
  stop(loop.get(), *e);
  EXPECT_FALSE(e->enqueue(span(9)));
  EXPECT_EQ(dropped("stopping"), 1u);

  const auto s = e->stats();
  EXPECT_EQ(s.dropped, 2u);  // queue-full + stopping
  EXPECT_EQ(s.dropped_bytes, 0u);
  EXPECT_EQ(s.failed_spans, 2u);
  EXPECT_EQ(s.exported, 6u);
  // Every completed request was timed: the failed ones too.
  EXPECT_EQ(value("spoad_tracing_export_seconds", "", metrics::Role::kCount), s.export_requests);
  EXPECT_EQ(arena->overflows(), 0u);
}

TEST(SpanExporter, StopWithNothingQueued) {
  TestLoop loop;
  ExporterOptions o;
  o.endpoint = "http://127.0.0.1:9/v1/traces";
  auto e = make(loop.get(), o);
  stop(loop.get(), *e);
  EXPECT_EQ(e->stats().export_requests, 0u);
}

TEST(SpanExporter, DestroyedWithRequestsInFlight) {
  TestHttpServer server;
  server.set_handler([](const Request&) {
    Response r;
    r.hold = true;
    return r;
  });
  TestLoop loop;
  ExporterOptions o = http_options(server);
  o.max_batch = 2;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 9; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() == 2; }));
  EXPECT_EQ(e->stats().queued, 9u);  // 2 in flight, the rest waiting for a slot
  e.reset();
  EXPECT_TRUE(loop.drain());
}

TEST(SpanExporter, DestroyedDuringStop) {
  TestHttpServer server;
  server.set_handler([](const Request&) {
    Response r;
    r.hold = true;
    return r;
  });
  TestLoop loop;
  auto e = make(loop.get(), http_options(server));
  e->enqueue(span(0));
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() == 1; }));
  bool done = false;
  e->stop([&] { done = true; });
  e.reset();  // a hard-stop after the soft-stop began
  EXPECT_TRUE(loop.drain());
  EXPECT_FALSE(done);
}

class TempDir {
 public:
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/exporter-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    out.push_back(line);
  return out;
}

TEST(SpanExporter, FileOneJsonLinePerBatch) {
  TempDir dir;
  const std::string path = dir.file("spans.jsonl");
  {
    std::ofstream(path) << "existing line\n";  // appended to, not truncated
  }
  TestLoop loop;
  ExporterOptions o;
  o.kind = ExporterOptions::Kind::kFile;
  o.file = path;
  o.max_batch = 3;
  o.flush_interval_ms = 20;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 7; ++i)
    e->enqueue(span(i));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().exported == 7; }));
  // The file is opened for each batch: a rotated file is recreated.
  std::filesystem::rename(path, path + ".1");
  e->enqueue(span(7));
  stop(loop.get(), *e);
  const auto s = e->stats();
  EXPECT_EQ(s.exported, 8u);
  EXPECT_EQ(s.export_requests, 4u);
  const auto lines = read_lines(path + ".1");
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "existing line");
  EXPECT_EQ(names_of(lines[1]), names(0, 3));
  EXPECT_EQ(names_of(lines[2]), names(3, 6));
  EXPECT_EQ(names_of(lines[3]), names(6, 7));
  EXPECT_TRUE(json::parse(lines[1]).at("resourceSpans").at(0).contains("resource"));
  const auto rotated = read_lines(path);
  ASSERT_EQ(rotated.size(), 1u);
  EXPECT_EQ(names_of(rotated[0]), names(7, 8));
}

TEST(SpanExporter, FileWriteErrorDropsTheBatch) {
  TempDir dir;
  TestLoop loop;
  ExporterOptions o;
  o.kind = ExporterOptions::Kind::kFile;
  o.file = dir.file("no-such-dir/spans.jsonl");
  o.max_batch = 2;
  auto e = make(loop.get(), o);
  e->enqueue(span(0));
  e->enqueue(span(1));
  ASSERT_TRUE(run_until(loop.get(), [&] { return e->stats().failed_exports == 1; }));
  EXPECT_EQ(e->stats().failed_spans, 2u);
  EXPECT_EQ(e->stats().queued, 0u);
  stop(loop.get(), *e);
}

TEST(SpanExporter, KindNoneCountsAndDrops) {
  TestLoop loop;
  ExporterOptions o;
  o.kind = ExporterOptions::Kind::kNone;
  auto e = make(loop.get(), o);
  for (int i = 0; i < 100; ++i)
    EXPECT_TRUE(e->enqueue(span(i)));
  EXPECT_EQ(e->stats().enqueued, 100u);
  EXPECT_EQ(e->stats().queued, 0u);
  bool done = false;
  e->stop([&] { done = true; });
  EXPECT_TRUE(done);
}

TEST(SpanExporter, NoLoopForConfigCheck) {
  SpanExporter e(nullptr, ExporterOptions{}, util::make_logger("tracing-test"));
  EXPECT_FALSE(e.enqueue(span(0)));
  bool done = false;
  e.stop([&] { done = true; });
  EXPECT_TRUE(done);
}

// ---- options ----------------------------------------------------------------------------

struct Env {
  std::map<std::string, std::string> vars;
  std::function<const char*(const char*)> fn() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

TEST(ExporterOptions, EnvEndpoint) {
  ExporterOptions o;
  Env env;
  env.vars["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://collector:4318";
  EXPECT_TRUE(apply_otel_env(o, env.fn()).empty());
  EXPECT_EQ(o.endpoint, "http://collector:4318/v1/traces");

  o = {};
  env.vars["OTEL_EXPORTER_OTLP_ENDPOINT"] = "https://collector:4318/otlp/";  // no double slash
  apply_otel_env(o, env.fn());
  EXPECT_EQ(o.endpoint, "https://collector:4318/otlp/v1/traces");

  o = {};
  env.vars["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://traces:9999/custom";  // as is
  apply_otel_env(o, env.fn());
  EXPECT_EQ(o.endpoint, "http://traces:9999/custom");

  o = {};
  Env empty;
  empty.vars["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "";  // empty = unset
  apply_otel_env(o, empty.fn());
  EXPECT_EQ(o.endpoint, "http://127.0.0.1:4318/v1/traces");

  o = {};
  Env bad;
  bad.vars["OTEL_EXPORTER_OTLP_ENDPOINT"] = "collector:4318";
  const auto problems = apply_otel_env(o, bad.fn());
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("OTEL_EXPORTER_OTLP_ENDPOINT"), std::string::npos);
  EXPECT_EQ(o.endpoint, "http://127.0.0.1:4318/v1/traces");
}

TEST(ExporterOptions, EnvServiceNameAndResource) {
  ExporterOptions o;
  Env env;
  env.vars["OTEL_RESOURCE_ATTRIBUTES"] =
      "service.name=from-attrs, deployment.environment=prod,team=a%2Cb%3Dc , note=caf%C3%A9 ok";
  apply_otel_env(o, env.fn());
  EXPECT_EQ(o.service_name, "from-attrs");
  EXPECT_EQ(o.resource_attributes,
            (std::vector<std::pair<std::string, std::string>>{
                {"deployment.environment", "prod"}, {"team", "a,b=c"}, {"note", "café ok"}}));

  o = {};
  env.vars["OTEL_SERVICE_NAME"] = "from-service-name";  // wins over service.name
  apply_otel_env(o, env.fn());
  EXPECT_EQ(o.service_name, "from-service-name");

  o = {};
  Env bad;
  bad.vars["OTEL_RESOURCE_ATTRIBUTES"] = "a=1,broken,b=%zz";
  EXPECT_EQ(apply_otel_env(o, bad.fn()).size(), 1u);
  EXPECT_TRUE(o.resource_attributes.empty());  // the whole variable is discarded
  EXPECT_EQ(o.service_name, "haproxy");
}

TEST(ExporterOptions, EnvHeadersCompressionTimeout) {
  ExporterOptions o;
  Env env;
  env.vars["OTEL_EXPORTER_OTLP_HEADERS"] = "Authorization=Basic%20eDp5,X-Tenant=generic";
  env.vars["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = "x-tenant=traces";
  env.vars["OTEL_EXPORTER_OTLP_COMPRESSION"] = "gzip";
  env.vars["OTEL_EXPORTER_OTLP_TIMEOUT"] = "2500";
  EXPECT_TRUE(apply_otel_env(o, env.fn()).empty());
  EXPECT_EQ(o.headers, (std::vector<std::pair<std::string, std::string>>{
                           {"Authorization", "Basic eDp5"}, {"X-Tenant", "traces"}}));
  EXPECT_TRUE(o.gzip);
  EXPECT_EQ(o.timeout_ms, 2500u);

  o = {};
  env.vars["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"] = "none";
  env.vars["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"] = "700";
  apply_otel_env(o, env.fn());
  EXPECT_FALSE(o.gzip);
  EXPECT_EQ(o.timeout_ms, 700u);

  o = {};
  Env bad;
  bad.vars["OTEL_EXPORTER_OTLP_HEADERS"] = "X-Evil=a%0D%0AInjected: 1";
  bad.vars["OTEL_EXPORTER_OTLP_TIMEOUT"] = "10s";
  bad.vars["OTEL_EXPORTER_OTLP_COMPRESSION"] = "zstd";
  bad.vars["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc";
  EXPECT_EQ(apply_otel_env(o, bad.fn()).size(), 4u);
  EXPECT_TRUE(o.headers.empty());
  EXPECT_EQ(o.timeout_ms, 10000u);
  EXPECT_FALSE(o.gzip);
}

TEST(ExporterOptions, EnvBatchProcessorAndDisable) {
  ExporterOptions o;
  Env env;
  env.vars["OTEL_BSP_SCHEDULE_DELAY"] = "250";
  env.vars["OTEL_BSP_MAX_QUEUE_SIZE"] = "100";
  env.vars["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = "10";
  apply_otel_env(o, env.fn());
  EXPECT_EQ(o.flush_interval_ms, 250u);
  EXPECT_EQ(o.max_queue, 100u);
  EXPECT_EQ(o.max_batch, 10u);
  EXPECT_EQ(o.kind, ExporterOptions::Kind::kOtlpHttp);
  env.vars["OTEL_TRACES_EXPORTER"] = "none";
  apply_otel_env(o, env.fn());
  EXPECT_EQ(o.kind, ExporterOptions::Kind::kNone);
  o = {};
  Env off;
  off.vars["OTEL_SDK_DISABLED"] = "TRUE";
  apply_otel_env(o, off.fn());
  EXPECT_EQ(o.kind, ExporterOptions::Kind::kNone);
}

ExporterOptions parse(const std::string& yaml, ExporterOptions start = {}) {
  config::Options o(YAML::Load(yaml), std::make_shared<const std::string>("test.yaml"),
                    "agents[0].exporter");
  parse_exporter_options(o, &start);
  return start;
}

std::string parse_error(const std::string& yaml) {
  try {
    parse(yaml);
  } catch (const config::ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ExporterOptions, Yaml) {
  const ExporterOptions d = parse("{}");
  EXPECT_EQ(d.kind, ExporterOptions::Kind::kOtlpHttp);
  EXPECT_EQ(d.endpoint, "http://127.0.0.1:4318/v1/traces");
  EXPECT_EQ(d.max_batch, 512u);
  EXPECT_EQ(d.flush_interval_ms, 1000u);
  EXPECT_EQ(d.max_queue, 8192u);
  EXPECT_EQ(d.max_queue_bytes, 8u << 20);
  EXPECT_EQ(d.timeout_ms, 10000u);
  EXPECT_EQ(d.service_name, "haproxy");

  const ExporterOptions o = parse(R"(
type: otlp-http
endpoint: https://otel.example.com/v1/traces
headers:
  - "Authorization: Bearer xyz"
  - "X-Scope-OrgID: t1"
gzip: true
max-batch: 100
flush-interval: 2s
max-queue: 1000
max-queue-bytes: 64k
timeout: 3s
retry-initial: 100ms
retry-max: 5s
service-name: edge
resource-attributes: [deployment.environment=prod, "team=a=b"]
)");
  EXPECT_EQ(o.endpoint, "https://otel.example.com/v1/traces");
  EXPECT_EQ(o.headers, (std::vector<std::pair<std::string, std::string>>{
                           {"Authorization", "Bearer xyz"}, {"X-Scope-OrgID", "t1"}}));
  EXPECT_TRUE(o.gzip);
  EXPECT_EQ(o.max_batch, 100u);
  EXPECT_EQ(o.flush_interval_ms, 2000u);
  EXPECT_EQ(o.max_queue, 1000u);
  EXPECT_EQ(o.max_queue_bytes, 65536u);
  EXPECT_EQ(o.timeout_ms, 3000u);
  EXPECT_EQ(o.retry_initial_ms, 100u);
  EXPECT_EQ(o.retry_max_ms, 5000u);
  EXPECT_EQ(o.service_name, "edge");
  EXPECT_EQ(o.resource_attributes, (std::vector<std::pair<std::string, std::string>>{
                                       {"deployment.environment", "prod"}, {"team", "a=b"}}));

  const ExporterOptions f = parse("type: file\nfile: /var/log/spans.jsonl\n");
  EXPECT_EQ(f.kind, ExporterOptions::Kind::kFile);
  EXPECT_EQ(f.file, "/var/log/spans.jsonl");
  EXPECT_EQ(parse("type: none").kind, ExporterOptions::Kind::kNone);
}

TEST(ExporterOptions, YamlOverridesEnvironment) {
  ExporterOptions o;
  Env env;
  env.vars["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://env:4318";
  env.vars["OTEL_SERVICE_NAME"] = "env-service";
  env.vars["OTEL_EXPORTER_OTLP_HEADERS"] = "A=env,B=env";
  env.vars["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1234";
  apply_otel_env(o, env.fn());
  o = parse("service-name: yaml-service\nheaders: 'b: yaml'\n", o);
  EXPECT_EQ(o.endpoint, "http://env:4318/v1/traces");  // absent from YAML: the environment's
  EXPECT_EQ(o.timeout_ms, 1234u);
  EXPECT_EQ(o.service_name, "yaml-service");
  EXPECT_EQ(o.headers,
            (std::vector<std::pair<std::string, std::string>>{{"A", "env"}, {"B", "yaml"}}));
}

TEST(ExporterOptions, YamlErrors) {
  EXPECT_EQ(parse_error("type: grpc"),
            "test.yaml:1: agents[0].exporter.type: expected otlp-http, file or none, got \"grpc\"");
  EXPECT_EQ(parse_error("endpoint: localhost:4318"),
            "test.yaml:1: agents[0].exporter.endpoint: expected an http:// or https:// URL, got "
            "\"localhost:4318\"");
  EXPECT_EQ(parse_error("gzip: true\nheaders: [novalue]"),
            "test.yaml:2: agents[0].exporter.headers: expected \"Name: value\", got \"novalue\"");
  EXPECT_EQ(parse_error("type: file"),
            "test.yaml:1: agents[0].exporter.type: type file needs a file path in \"file\"");
  EXPECT_EQ(parse_error("max-batch: 0"),
            "test.yaml:1: agents[0].exporter.max-batch: must be between 1 and 100000, got 0");
  EXPECT_EQ(parse_error("retry-initial: 5s\nretry-max: 1s"),
            "test.yaml:2: agents[0].exporter.retry-max: retry-max (1000ms) is below "
            "retry-initial (5000ms)");
  EXPECT_EQ(parse_error("resource-attributes: [service.name=x]"),
            "test.yaml:1: agents[0].exporter.resource-attributes: set service.name with "
            "service-name");
  EXPECT_EQ(parse_error("max-queue-bytes: 100"),
            "test.yaml:1: agents[0].exporter.max-queue-bytes: must be between 1024 and "
            "1073741824 bytes, got 100");
  EXPECT_EQ(parse_error("type: \"x\\u001b[31m\""),
            "test.yaml:1: agents[0].exporter.type: expected otlp-http, file or none, got "
            "\"x\\x1b[31m\"");
  EXPECT_EQ(parse_error("endpiont: http://x"),
            "test.yaml:1: agents[0].exporter.endpiont: unknown key");
}

}  // namespace
}  // namespace spoad::agents::tracing
