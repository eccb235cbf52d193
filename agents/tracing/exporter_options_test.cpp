// Tests of the span exporter's options: the OTEL_* environment and the YAML `exporter:` mapping.
#include "agents/tracing/exporter_options.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace spoad::agents::tracing {
namespace {

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
