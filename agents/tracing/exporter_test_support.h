// Test support for the span exporter's unit tests: spans to queue, readers of the OTLP/JSON
// requests a TestHttpServer received, and an exporter made and stopped on a TestLoop.
#pragma once

#include <gtest/gtest.h>
#include <uv.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agents/tracing/exporter.h"
#include "tests/support/test_http_server.h"
#include "tests/support/test_loop.h"
#include "util/log.h"

namespace spoad::agents::tracing::exporter_test {

using nlohmann::json;
using spoad::testing::run_until;
using spoad::testing::TestHttpServer;
using spoad::testing::TestLoop;
using Request = TestHttpServer::Request;
using Response = TestHttpServer::Response;

inline std::string span(int i) {
  char id[17];
  std::snprintf(id, sizeof(id), "%016x", i + 1);
  return std::string(R"({"traceId":"5b8efff798038103d269b633813fc60c","spanId":")") + id +
         R"(","name":"span-)" + std::to_string(i) +
         R"(","kind":2,"startTimeUnixNano":"1700000000000000000",)"
         R"("endTimeUnixNano":"1700000000001000000"})";
}

// The spans of an export request body.
inline json spans_of(const std::string& body) {
  const json j = json::parse(body);
  return j.at("resourceSpans").at(0).at("scopeSpans").at(0).at("spans");
}

inline std::vector<std::string> names_of(const std::string& body) {
  std::vector<std::string> out;
  for (const json& s : spans_of(body))
    out.push_back(s.at("name").get<std::string>());
  return out;
}

inline std::vector<std::string> names(int from, int to) {  // span-from .. span-(to-1)
  std::vector<std::string> out;
  for (int i = from; i < to; ++i)
    out.push_back("span-" + std::to_string(i));
  return out;
}

// attributes [{key, value:{stringValue|intValue}}] -> key -> value.
inline std::map<std::string, std::string> attrs_of(const json& attrs) {
  std::map<std::string, std::string> out;
  for (const json& a : attrs) {
    const json& v = a.at("value");
    out[a.at("key").get<std::string>()] = v.contains("stringValue")
                                              ? v["stringValue"].get<std::string>()
                                              : "int:" + v.at("intValue").get<std::string>();
  }
  return out;
}

inline std::string gunzip(const std::string& in) {
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

inline ExporterOptions http_options(const TestHttpServer& server) {
  ExporterOptions o;
  o.endpoint = server.url();
  o.flush_interval_ms = 50;
  o.retry_initial_ms = 20;
  o.retry_max_ms = 200;
  o.timeout_ms = 2000;
  return o;
}

inline std::unique_ptr<SpanExporter> make(uv_loop_t* loop, ExporterOptions o) {
  return std::make_unique<SpanExporter>(loop, std::move(o), util::make_logger("tracing-test"));
}

// Stops the exporter and runs the loop until its `done` ran.
inline void stop(uv_loop_t* loop, SpanExporter& e) {
  bool done = false;
  e.stop([&] { done = true; });
  ASSERT_TRUE(run_until(loop, [&] { return done; }));
}

inline uint64_t ms_since(std::chrono::steady_clock::time_point t0,
                         std::chrono::steady_clock::time_point t) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(t - t0).count());
}

}  // namespace spoad::agents::tracing::exporter_test
