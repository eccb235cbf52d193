// lib/metrics/totals: the master's per-agent totals of exited workers; with the live arenas,
// counters never go backwards across respawns.
#include "metrics/totals.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace spoad::metrics;

namespace {

// What a scrape shows: live arenas plus totals, summed per (family, role, bound, labels).
std::map<std::string, double> scrape(const std::vector<const Arena*>& live, const Totals& t) {
  std::vector<Sample> samples;
  for (const Arena* a : live)
    a->visit([&](const SeriesView& s) { samples.push_back(to_sample(s)); });
  t.append(samples);
  std::map<std::string, double> out;
  for (const Sample& s : samples) {
    std::string key = s.family + "{" + s.labels + "}" + std::to_string(static_cast<int>(s.role)) +
                      ":" + std::to_string(s.bound_us);
    out[key] += s.value;
  }
  return out;
}

struct Worker {
  std::shared_ptr<Arena> arena{Arena::private_memory()};
  Scope scope{arena, "ip", "ip-checker"};
  Counter notify = scope.counter("spoad_notify_total", "NOTIFYs.");
  Gauge conns = scope.gauge("spoad_connections", "Connections.");
  Histogram proc = scope.histogram("spoad_processing_seconds", "Processing.");
};

}  // namespace

TEST(MetricsTotals, GaugesAreDroppedCountersAndHistogramsAdded) {
  Totals t;
  Worker w1, w2;
  w1.notify += 5;
  w1.conns = 3;
  w1.proc.observe_us(20);
  w2.notify += 2;
  w2.conns = 1;
  w2.proc.observe_us(2000000);
  t.add_final(*w1.arena);
  t.add_final(*w2.arena);
  EXPECT_EQ(t.size(), 1u + 16 + 1 + 2);  // notify, 16 buckets + Inf, sum, count
  std::vector<Sample> out;
  t.append(out);
  ASSERT_EQ(out.size(), t.size());
  EXPECT_EQ(out[0].family, "spoad_notify_total");
  EXPECT_EQ(out[0].labels, R"(agent="ip",type="ip-checker")");
  EXPECT_EQ(out[0].type, Type::kCounter);
  EXPECT_EQ(out[0].help, "NOTIFYs.");
  EXPECT_EQ(out[0].value, 7);
  for (const Sample& s : out)
    EXPECT_NE(s.family, "spoad_connections");
  const std::string text = render(out, Format::kText004);
  EXPECT_NE(text.find("spoad_notify_total{agent=\"ip\",type=\"ip-checker\"} 7\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("spoad_processing_seconds_bucket{agent=\"ip\",type=\"ip-checker\",le="
                      "\"0.000025\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("spoad_processing_seconds_bucket{agent=\"ip\",type=\"ip-checker\",le="
                      "\"+Inf\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("spoad_processing_seconds_sum{agent=\"ip\",type=\"ip-checker\"} 2.00002\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("spoad_connections"), std::string::npos) << text;
}

TEST(MetricsTotals, LivePlusTotalsNeverDecreaseAcrossRespawns) {
  Totals t;
  std::map<std::string, double> last;
  auto check = [&](const std::vector<const Arena*>& live) {
    const auto now = scrape(live, t);
    for (const auto& [key, v] : last) {
      if (key.find("spoad_connections") != std::string::npos) continue;  // a gauge
      ASSERT_TRUE(now.count(key)) << key;
      EXPECT_GE(now.at(key), v) << key;
    }
    last = now;
  };
  // Generation 1: two workers.
  auto a = std::make_unique<Worker>();
  auto b = std::make_unique<Worker>();
  for (int round = 0; round < 5; ++round) {
    a->notify += 3;
    b->notify += 1;
    a->proc.observe_us(100);
    check({a->arena.get(), b->arena.get()});
  }
  // b is reaped (kill -9, say): totals take its last values, its arena goes.
  t.add_final(*b->arena);
  b.reset();
  check({a->arena.get()});
  // Its replacement starts from zero.
  auto c = std::make_unique<Worker>();
  check({a->arena.get(), c->arena.get()});
  ++c->notify;
  // A reload: a exits, d replaces it.
  t.add_final(*a->arena);
  a.reset();
  auto d = std::make_unique<Worker>();
  check({c->arena.get(), d->arena.get()});
  d->notify += 10;
  check({c->arena.get(), d->arena.get()});
  const std::string key = "spoad_notify_total{agent=\"ip\",type=\"ip-checker\"}0:0";
  EXPECT_EQ(last.at(key), 15 + 5 + 1 + 10);
  const std::string count = "spoad_processing_seconds{agent=\"ip\",type=\"ip-checker\"}3:0";
  EXPECT_EQ(last.at(count), 5);
}
