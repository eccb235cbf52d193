// Tests of the span exporter's retries, stop, metrics and destruction against a real HTTP
// server on 127.0.0.1, and of the exporter without a loop or with type none.
#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <memory>
#include <string>

#include "metrics/arena.h"

#include "agents/tracing/exporter_test_support.h"

namespace spoad::agents::tracing {
namespace {

using namespace exporter_test;

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

// stop() with nothing to send closes the timers at once; the exporter is destroyed before
// libuv runs their close callbacks, which then must not touch it (nor call `done`).
TEST(SpanExporter, DestroyedWhileItsTimersClose) {
  TestLoop loop;
  ExporterOptions o;
  o.endpoint = "http://127.0.0.1:9/v1/traces";
  auto e = make(loop.get(), o);
  bool done = false;
  e->stop([&] { done = true; });
  EXPECT_FALSE(done);  // from the close callbacks, not inside stop()
  e.reset();
  EXPECT_TRUE(loop.drain());
  EXPECT_FALSE(done);
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

}  // namespace
}  // namespace spoad::agents::tracing
