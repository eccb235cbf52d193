// Tests of the span exporter's file sink, with real files: one JSON line per batch, appended,
// following log rotation; a failed write drops its batch.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "agents/tracing/exporter_test_support.h"
#include "tests/support/temp_dir.h"

namespace spoad::agents::tracing {
namespace {

using namespace exporter_test;
using spoad::testing::TempDir;

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

}  // namespace
}  // namespace spoad::agents::tracing
