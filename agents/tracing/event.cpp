#include "agents/tracing/event.h"

#include <arpa/inet.h>

#include "spop/reader.h"

namespace spoad::agents::tracing {

namespace {

// Splits "/path?query" (capture.req.uri) into its parts.
void split_uri(std::string_view uri, std::string_view* path, std::string_view* query) {
  const size_t q = uri.find('?');
  *path = uri.substr(0, q);
  *query = q == std::string_view::npos ? std::string_view() : uri.substr(q + 1);
}

}  // namespace

Stage stage_of(std::string_view name) {
  if (name == "trace-client-session") return Stage::kClientSession;
  if (name == "trace-frontend-tcp-request") return Stage::kFrontendTcpRequest;
  if (name == "trace-frontend-http-request") return Stage::kFrontendHttpRequest;
  if (name == "trace-backend-tcp-request") return Stage::kBackendTcpRequest;
  if (name == "trace-backend-http-request") return Stage::kBackendHttpRequest;
  if (name == "trace-server-session") return Stage::kServerSession;
  if (name == "trace-tcp-response") return Stage::kTcpResponse;
  if (name == "trace-http-response") return Stage::kHttpResponse;
  return Stage::kUnknown;
}

Event::Event(const spop::Message& msg) {
  for (const spop::KV& kv : spop::args(msg)) {
    const std::string_view n = kv.name;
    const spop::Value& v = kv.value;
    auto num = [&v](int64_t* out) {
      if (v.is_integer()) *out = v.as_int64();
    };
    if (n == "now")
      num(&now);
    else if (n == "ctx")
      ctx = RequestContext::decode(v.text());
    else if (n == "traceparent") {
      has_traceparent = true;
      traceparent = v.text();
    } else if (n == "tracestate")
      tracestate = v.text();
    else if (n == "ts")
      ts = v.text();
    else if (n == "t_cs")
      num(&t_cs);
    else if (n == "t0")
      num(&t0);
    else if (n == "t_fth")
      num(&t_fth);
    else if (n == "t_fhr")
      num(&t_fhr);
    else if (n == "t_bht")
      num(&t_bht);
    else if (n == "t_bhr")
      num(&t_bhr);
    else if (n == "t_ss")
      num(&t_ss);
    else if (n == "t_tr")
      num(&t_tr);
    else if (n == "method")
      method = v.text();
    else if (n == "path")
      path = v.text();
    else if (n == "query")
      query = v.text();
    else if (n == "uri")
      split_uri(v.text(), &path, &query);
    else if (n == "host")
      host = v.text();
    else if (n == "version") {
      version = v.text();
      if (version.starts_with("HTTP/")) version.remove_prefix(5);  // capture.req.ver
    } else if (n == "frontend")
      frontend = v.text();
    else if (n == "backend")
      backend = v.text();
    else if (n == "server")
      server = v.text();
    else if (n == "unique_id")
      unique_id = v.text();
    else if (n == "client_port")
      num(&client_port);
    else if (n == "status")
      num(&status);
    else if (n == "client") {
      char buf[INET6_ADDRSTRLEN] = "";
      if (v.type == spop::DataType::kIpv4 && v.bytes.size() == 4)
        inet_ntop(AF_INET, v.bytes.data(), buf, sizeof(buf));
      else if (v.type == spop::DataType::kIpv6 && v.bytes.size() == 16)
        inet_ntop(AF_INET6, v.bytes.data(), buf, sizeof(buf));
      client = v.type == spop::DataType::kString ? std::string(v.bytes) : std::string(buf);
    }
  }
}

}  // namespace spoad::agents::tracing
