// lib/metrics/exposition: Prometheus text 0.0.4 and OpenMetrics 1.0.0 from samples.
#include "metrics/exposition.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "util/escape.h"

using namespace spoad::metrics;

namespace {

Sample value(std::string family, Type type, std::string labels, double v,
             std::string help = "Help.") {
  Sample s;
  s.family = std::move(family);
  s.help = std::move(help);
  s.type = type;
  s.labels = std::move(labels);
  s.value = v;
  return s;
}

void add_histogram(std::vector<Sample>& out, const std::string& family, const std::string& labels,
                   std::vector<std::pair<uint64_t, double>> buckets, double sum_us, double count) {
  for (auto [bound, n] : buckets) {
    Sample s = value(family, Type::kHistogram, labels, n, "Latency.");
    s.role = Role::kBucket;
    s.unit = Unit::kMicroseconds;
    s.bound_us = bound;
    out.push_back(s);
  }
  Sample sum = value(family, Type::kHistogram, labels, sum_us, "Latency.");
  sum.role = Role::kSum;
  sum.unit = Unit::kMicroseconds;
  out.push_back(sum);
  Sample cnt = sum;
  cnt.role = Role::kCount;
  cnt.value = count;
  out.push_back(cnt);
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1))
    ++n;
  return n;
}

}  // namespace

TEST(MetricsExposition, TextFormatWithHelpAndTypeOncePerFamily) {
  std::vector<Sample> s;
  s.push_back(value("spoad_notify_total", Type::kCounter, R"(agent="a",type="t")", 3));
  s.push_back(value("spoad_connections", Type::kGauge, R"(agent="a",type="t")", 2));
  s.push_back(value("spoad_notify_total", Type::kCounter, R"(agent="b",type="t")", 1));
  s.push_back(value("spoad_notify_total", Type::kCounter, R"(agent="a",type="t")", 4));
  s.push_back(value("spoad_up", Type::kGauge, "", 1));
  s.push_back(value("spoad_connections", Type::kGauge, R"(agent="a",type="t")", -1));
  EXPECT_EQ(render(s, Format::kText004),
            "# HELP spoad_notify_total Help.\n"
            "# TYPE spoad_notify_total counter\n"
            "spoad_notify_total{agent=\"a\",type=\"t\"} 7\n"
            "spoad_notify_total{agent=\"b\",type=\"t\"} 1\n"
            "# HELP spoad_connections Help.\n"
            "# TYPE spoad_connections gauge\n"
            "spoad_connections{agent=\"a\",type=\"t\"} 1\n"
            "# HELP spoad_up Help.\n"
            "# TYPE spoad_up gauge\n"
            "spoad_up 1\n");
}

TEST(MetricsExposition, OpenMetricsNamesCounterFamiliesWithoutTotalAndEnds) {
  std::vector<Sample> s;
  s.push_back(value("spoad_notify_total", Type::kCounter, R"(agent="a")", 3, "Say \"hi\"\\\n."));
  s.push_back(value("spoad_odd", Type::kCounter, "", 2));
  s.push_back(value("spoad_up", Type::kGauge, "", 1));
  EXPECT_EQ(render(s, Format::kOpenMetrics),
            "# HELP spoad_notify Say \\\"hi\\\"\\\\\\n.\n"
            "# TYPE spoad_notify counter\n"
            "spoad_notify_total{agent=\"a\"} 3\n"
            "# HELP spoad_odd Help.\n"
            "# TYPE spoad_odd counter\n"
            "spoad_odd_total 2\n"
            "# HELP spoad_up Help.\n"
            "# TYPE spoad_up gauge\n"
            "spoad_up 1\n"
            "# EOF\n");
  // Text 0.0.4 escapes only \ and line feed in HELP, and keeps counter names as they are.
  const std::string text = render(s, Format::kText004);
  EXPECT_NE(text.find("# HELP spoad_notify_total Say \"hi\"\\\\\\n.\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nspoad_odd 2\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("# EOF"), std::string::npos);
  EXPECT_EQ(render({}, Format::kOpenMetrics), "# EOF\n");
  EXPECT_EQ(render({}, Format::kText004), "");
}

TEST(MetricsExposition, OpenMetricsCounterWhoseFamilyNameIsTakenIsUnknown) {
  // The gauge spoad_connections and the counter spoad_connections_total: in OpenMetrics the
  // counter's family would be spoad_connections too.
  std::vector<Sample> s;
  s.push_back(value("spoad_connections", Type::kGauge, "", 2));
  s.push_back(value("spoad_connections_total", Type::kCounter, "", 5));
  s.push_back(value("spoad_notify_total", Type::kCounter, "", 1));
  EXPECT_EQ(render(s, Format::kOpenMetrics),
            "# HELP spoad_connections Help.\n"
            "# TYPE spoad_connections gauge\n"
            "spoad_connections 2\n"
            "# HELP spoad_connections_total Help.\n"
            "# TYPE spoad_connections_total unknown\n"
            "spoad_connections_total 5\n"
            "# HELP spoad_notify Help.\n"
            "# TYPE spoad_notify counter\n"
            "spoad_notify_total 1\n"
            "# EOF\n");
  EXPECT_NE(render(s, Format::kText004).find("# TYPE spoad_connections_total counter\n"),
            std::string::npos);
}

TEST(MetricsExposition, HistogramBucketsAreCumulativeInSeconds) {
  std::vector<Sample> s;
  // Two workers of one agent, and a second agent; each bucket counts its own observations.
  add_histogram(s, "spoad_processing_seconds", R"(agent="a")",
                {{10, 1}, {2500, 2}, {1000000, 0}, {UINT64_MAX, 1}}, 2500010 + 2000, 4);
  add_histogram(s, "spoad_processing_seconds", R"(agent="b")", {{10, 5}, {UINT64_MAX, 0}}, 25, 5);
  add_histogram(s, "spoad_processing_seconds", R"(agent="a")",
                {{10, 0}, {2500, 1}, {1000000, 1}, {UINT64_MAX, 0}}, 1001000, 2);
  const std::string text = render(s, Format::kText004);
  EXPECT_EQ(text,
            "# HELP spoad_processing_seconds Latency.\n"
            "# TYPE spoad_processing_seconds histogram\n"
            "spoad_processing_seconds_bucket{agent=\"a\",le=\"0.00001\"} 1\n"
            "spoad_processing_seconds_bucket{agent=\"a\",le=\"0.0025\"} 4\n"
            "spoad_processing_seconds_bucket{agent=\"a\",le=\"1\"} 5\n"
            "spoad_processing_seconds_bucket{agent=\"a\",le=\"+Inf\"} 6\n"
            "spoad_processing_seconds_sum{agent=\"a\"} 3.50301\n"
            "spoad_processing_seconds_count{agent=\"a\"} 6\n"
            "spoad_processing_seconds_bucket{agent=\"b\",le=\"0.00001\"} 5\n"
            "spoad_processing_seconds_bucket{agent=\"b\",le=\"+Inf\"} 5\n"
            "spoad_processing_seconds_sum{agent=\"b\"} 0.000025\n"
            "spoad_processing_seconds_count{agent=\"b\"} 5\n");
  const std::string om = render(s, Format::kOpenMetrics);
  EXPECT_NE(om.find("spoad_processing_seconds_bucket{agent=\"a\",le=\"1.0\"} 5\n"),
            std::string::npos)
      << om;
  EXPECT_EQ(count_of(om, "# TYPE spoad_processing_seconds histogram\n"), 1u);
  EXPECT_TRUE(om.ends_with("# EOF\n"));
}

TEST(MetricsExposition, HistogramWithoutLabelsAndWithoutBuckets) {
  std::vector<Sample> s;
  add_histogram(s, "spoad_x_seconds", "", {{250000, 3}, {UINT64_MAX, 0}}, 300000, 3);
  add_histogram(s, "spoad_y_seconds", "", {}, 7, 2);
  EXPECT_EQ(render(s, Format::kText004),
            "# HELP spoad_x_seconds Latency.\n"
            "# TYPE spoad_x_seconds histogram\n"
            "spoad_x_seconds_bucket{le=\"0.25\"} 3\n"
            "spoad_x_seconds_bucket{le=\"+Inf\"} 3\n"
            "spoad_x_seconds_sum 0.3\n"
            "spoad_x_seconds_count 3\n"
            "# HELP spoad_y_seconds Latency.\n"
            "# TYPE spoad_y_seconds histogram\n"
            "spoad_y_seconds_bucket{le=\"+Inf\"} 2\n"
            "spoad_y_seconds_sum 0.000007\n"
            "spoad_y_seconds_count 2\n");
}

TEST(MetricsExposition, ValuesAndUnits) {
  std::vector<Sample> s;
  s.push_back(value("spoad_a", Type::kGauge, "", 0.5));
  Sample us = value("spoad_b_seconds", Type::kGauge, "", 1500);
  us.unit = Unit::kMicroseconds;
  s.push_back(us);
  s.push_back(value("spoad_c", Type::kGauge, "", 18446744073709551616.0));
  s.push_back(value("spoad_d", Type::kGauge, "", 1234567890123.0));
  const std::string text = render(s, Format::kText004);
  EXPECT_NE(text.find("\nspoad_a 0.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nspoad_b_seconds 0.0015\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nspoad_c 18446744073709551616\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nspoad_d 1234567890123\n"), std::string::npos) << text;
}

TEST(MetricsExposition, TypeClashesAndBadSamplesAreSkipped) {
  std::vector<Sample> s;
  s.push_back(value("spoad_x", Type::kCounter, "", 1));
  s.push_back(value("spoad_x", Type::kGauge, "", 100));
  s.push_back(value("bad name", Type::kGauge, "", 1));
  s.push_back(value("", Type::kGauge, "", 1));
  Sample wrong_role = value("spoad_y", Type::kGauge, "", 1);
  wrong_role.role = Role::kBucket;
  s.push_back(wrong_role);
  EXPECT_EQ(render(s, Format::kText004),
            "# HELP spoad_x Help.\n"
            "# TYPE spoad_x counter\n"
            "spoad_x 1\n");
}

TEST(MetricsExposition, LabelsEscapeHostileBytes) {
  EXPECT_EQ(render_labels({{"a", "x"}, {"b", ""}}), R"(a="x",b="")");
  EXPECT_EQ(render_labels({{"v", std::string_view("\xff\n\"\\\t\0\x7f", 7)}}),
            "v=\"\xEF\xBF\xBD\\n\\\"\\\\\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
  EXPECT_EQ(render_labels({{"v", "caf\xc3\xa9 \xe2\x82\xac"}}), "v=\"caf\xc3\xa9 \xe2\x82\xac\"");
  // Cut: the value that does not fit is shortened, the next pairs dropped.
  EXPECT_EQ(render_labels({{"a", "12345"}, {"b", "x"}}, 8), R"(a="1234")");
  EXPECT_EQ(render_labels({{"a", "\\\\\\"}}, 8), R"(a="\\\\")");
  EXPECT_EQ(render_labels({{"a", "\\\\\\"}}, 7), R"(a="\\")");
  EXPECT_EQ(render_labels({{"a", "1"}, {"bb", "2"}}, 10), R"(a="1")");
  EXPECT_EQ(render_labels({{"a", "\xe2\x82\xac"}}, 6), R"(a="")");
  // Rendered hostile labels in a sample give one well-formed line.
  std::vector<Sample> s;
  s.push_back(value("spoad_x_total", Type::kCounter,
                    render_labels({{"agent", std::string_view("a\"}\n# EOF\n\xff", 11)}}), 1));
  const std::string text = render(s, Format::kText004);
  EXPECT_EQ(count_of(text, "\n"), 3u) << text;
  EXPECT_TRUE(spoad::util::is_utf8(text));
  EXPECT_NE(text.find("spoad_x_total{agent=\"a\\\"}\\n# EOF\\n\xEF\xBF\xBD\"} 1\n"),
            std::string::npos)
      << text;
}

TEST(MetricsExposition, Negotiation) {
  EXPECT_EQ(negotiate(""), Format::kText004);
  EXPECT_EQ(negotiate("text/plain"), Format::kText004);
  EXPECT_EQ(negotiate("*/*"), Format::kText004);
  // What Prometheus 2.x sends.
  EXPECT_EQ(negotiate("application/openmetrics-text;version=1.0.0,application/"
                      "openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/"
                      "*;q=0.1"),
            Format::kOpenMetrics);
  EXPECT_EQ(negotiate("text/plain;version=0.0.4, Application/OpenMetrics-Text; version=1.0.0"),
            Format::kOpenMetrics);
  EXPECT_EQ(negotiate("application/openmetrics-text;q=0"), Format::kText004);
  EXPECT_EQ(negotiate("application/openmetrics-text; q=0.0, text/plain"), Format::kText004);
  EXPECT_EQ(negotiate("application/openmetrics-textual"), Format::kText004);
  EXPECT_EQ(negotiate(std::string_view("\0,,;;\xff", 6)), Format::kText004);
  EXPECT_EQ(content_type(Format::kText004), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(content_type(Format::kOpenMetrics),
            "application/openmetrics-text; version=1.0.0; charset=utf-8");
}

TEST(MetricsExposition, ToSampleCopiesASeries) {
  SeriesView v{"spoad_g", "G.", Type::kGauge, Role::kValue, Unit::kNone, 0, "a=\"1\"", UINT64_MAX};
  Sample s = to_sample(v);
  EXPECT_EQ(s.family, "spoad_g");
  EXPECT_EQ(s.labels, "a=\"1\"");
  EXPECT_EQ(s.value, -1);
  v.type = Type::kCounter;
  v.value = 5;
  EXPECT_EQ(to_sample(v).value, 5);
}

TEST(MetricsExposition, GaugesEveryWorkerHoldsAlikeShowTheLargestNotTheSum) {
  // Two workers of a pool, each with the entries of a list it loaded (Merge::kMax), and their
  // connections (added up).
  auto w1 = Arena::private_memory(), w2 = Arena::private_memory();
  for (auto* a : {w1.get(), w2.get()}) {
    Scope sc(std::shared_ptr<Arena>(a, [](Arena*) {}), "ip", "ip-checker");
    sc.gauge("spoad_ip_checker_list_entries", "Entries.", {{"list", "drop"}}, Unit::kNone,
             Merge::kMax) = a == w1.get() ? 3 : 2;  // w2 has not reloaded yet
    sc.gauge("spoad_connections", "Connections.") = 5;
  }
  std::vector<Sample> s;
  for (auto* a : {w1.get(), w2.get()})
    a->visit([&](const SeriesView& v) { s.push_back(to_sample(v)); });
  const std::string text = render(s, Format::kText004);
  EXPECT_NE(
      text.find(
          "spoad_ip_checker_list_entries{agent=\"ip\",type=\"ip-checker\",list=\"drop\"} 3\n"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("spoad_connections{agent=\"ip\",type=\"ip-checker\"} 10\n"),
            std::string::npos)
      << text;
}
