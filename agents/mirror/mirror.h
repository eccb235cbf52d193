// mirror: traffic shadowing. Replays the requests HAProxy sees to one or more targets, with
// spoa-mirror's SPOE message (haproxytech/spoa-mirror), unchanged:
//
//   spoe-message mirror
//       args arg_method=method arg_path=url arg_ver=req.ver arg_hdrs=req.hdrs_bin arg_body=req.body
//       event on-frontend-http-request
//
// The ACK goes out at once with no action (fire and forget); the replay then runs on the
// worker's libuv loop through libcurl's multi interface (lib/http), which keeps connections to
// the targets alive and reuses them. A slow or dead target costs memory up to the in-flight
// bound (max-replays x max-body per worker), never time on the request path.
//
// Arguments (by name; spoa-mirror's names):
//   arg_method  STRING  required
//   arg_path    STRING  required; origin-form or absolute-form (scheme and authority dropped)
//   arg_ver     STRING  ignored (the replay uses http-version)
//   arg_hdrs    BINARY  req.hdrs_bin format, or STRING in req.hdrs format; absent: no headers
//   arg_body    BINARY or STRING; absent or NULL: no body
// A message without method or path, or with undecodable headers, is logged (rate-limited) and
// counted as bad_messages; nothing is sent.
#pragma once

#include <curl/curl.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "agent/agent.h"
#include "agent/registry.h"
#include "agents/mirror/request.h"
#include "metrics/arena.h"
#include "util/rate_limit.h"

namespace spoad::http {
class CurlLoop;
}

namespace spoad::agents::mirror {

struct Target {
  std::string url;        // base URL: scheme://authority[/prefix], no trailing '/'
  double sampling = 100;  // percent of the messages replayed to this target, 0..100
};

struct MirrorOptions : agent::AgentOptions {
  std::string message = "mirror";  // the SPOE message name
  std::vector<Target> targets;     // at least one
  HeaderRules headers;             // host: keep|target, add-headers, remove-headers
  uint64_t connect_timeout_ms = 1000;
  uint64_t timeout_ms = 5000;   // replay-timeout: the whole replay
  uint32_t max_replays = 256;   // in flight per worker, all targets together
  uint64_t max_body = 1 << 20;  // bytes; larger bodies are not replayed
  long http_version = CURL_HTTP_VERSION_1_1;
  bool tls_verify = true;
  std::string ca_file;  // empty: the system's CA store
};

class MirrorAgent : public agent::Agent {
 public:
  // Counters, per worker (`show stat json`). A replay is one message to one target. The
  // metrics:: handles are also Prometheus series of the worker's arena (README.md, "Metrics"),
  // registered in the constructor: they read like integers.
  struct Stats {
    uint64_t messages = 0;                     // messages named `message`
    metrics::Counter bad_messages;             // nothing replayed (bad or missing arguments)
    uint64_t replays_started = 0;              // handed to curl
    uint64_t sent = 0;                         // replays that got an HTTP response (any status)
    metrics::Counter failed_connect;           // could not resolve or connect
    metrics::Counter failed_timeout;           // connect-timeout or replay-timeout
    metrics::Counter failed_tls;               // TLS handshake or certificate
    uint64_t failed_other = 0;                 // sent, but no valid response (reset, garbage, ...)
    metrics::Counter dropped_limit;            // max-replays in flight already
    metrics::Counter dropped_sampling;         // left out by the target's sampling
    metrics::Counter dropped_body_too_big;     // body above max-body
    metrics::Counter dropped_body_incomplete;  // fewer body bytes than Content-Length announced
    metrics::Counter dropped_stopping;         // arrived during a soft-stop
    uint64_t responses[6] = {};                // by status class: [1] 1xx .. [5] 5xx, [0] other
    metrics::Gauge in_flight;                  // now
    uint64_t in_flight_max = 0;                // highest since start
    uint64_t latency_sum_us = 0;               // replays that got a response: start to completion
    uint64_t latency_max_us = 0;
  };

  MirrorAgent(const agent::Context& ctx, const MirrorOptions& opts);
  ~MirrorAgent() override;

  // Fire and forget: never touches `reply` (the ACK has no action).
  void on_message(const spop::Message& msg, agent::Reply& reply) override;
  void start() override;
  // Called after the worker's last connection closed. Takes no new replay; `done` runs once
  // the replays in flight completed (each bounded by replay-timeout) and curl's connections
  // are closed.
  void stop(std::function<void()> done) override;
  void stats(nlohmann::json& out) const override;

  const Stats& counters() const { return stats_; }

 private:
  struct Replay;

  void replay(size_t target, const std::string& path, const ReplayHeaders& hdrs,
              const std::shared_ptr<const std::string>& body, std::string_view method);
  void finish(Replay* r, CURLcode result, long status);
  void bad(const char* what);
  // Counts a response of status class `cls` (0 other, 1 1xx .. 5 5xx) or a failure "other".
  void count_response(int cls);
  void count_other_failure();
  void maybe_stopped();

  agent::Context ctx_;
  const MirrorOptions& opts_;
  std::unique_ptr<http::CurlLoop> curl_;
  std::unordered_set<Replay*> replays_;  // in flight
  std::vector<CURL*> idle_easy_;         // reset handles for the next replays
  std::mt19937_64 rng_{std::random_device{}()};
  util::RateLimiter bad_log_{5};
  util::RateLimiter fail_log_{1};
  Stats stats_;
  // Series without a field of their own in Stats: spoad_mirror_replays_total{outcome="2xx"..
  // "5xx"} (index = status class), {outcome="other"} (1xx, a status outside 100-599, and
  // failed_other), and the replay latency (spoad_mirror_replay_seconds).
  metrics::Counter outcome_class_[6];  // [2] .. [5]
  metrics::Counter outcome_other_;
  metrics::Histogram latency_;
  bool stopping_ = false;
  std::function<void()> stop_done_;
};

}  // namespace spoad::agents::mirror
