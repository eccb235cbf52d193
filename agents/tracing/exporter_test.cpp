// Tests of the tracing agent's span exporter against a real HTTP server on 127.0.0.1:
// batching, the OTLP/JSON request, gzip and bounded memory with the receiver down.
#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <string>

#include "version.h"

#include "agents/tracing/exporter_test_support.h"

namespace spoad::agents::tracing {
namespace {

using namespace exporter_test;

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

}  // namespace
}  // namespace spoad::agents::tracing
