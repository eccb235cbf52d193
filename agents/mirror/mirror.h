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
#include "metrics/counter_list.h"
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

// Counters, per worker (`show stat json`, each under its field's name; metrics/counter_list.h).
// A replay is one message to one target. The metrics:: handles are also Prometheus series
// of the worker's arena (README.md, "Metrics"), registered in the constructor: they read
// like integers. X(field, type):
#define SPOAD_MIRROR_STATS(X)                                                                    \
  X(messages, uint64_t)                     /* messages named `message` */                       \
  X(bad_messages, metrics::Counter)         /* nothing replayed (bad or missing arguments) */    \
  X(replays_started, uint64_t)              /* handed to curl */                                 \
  X(sent, uint64_t)                         /* replays that got an HTTP response (any status) */ \
  X(failed_connect, metrics::Counter)       /* could not resolve or connect */                   \
  X(failed_timeout, metrics::Counter)       /* connect-timeout or replay-timeout */              \
  X(failed_tls, metrics::Counter)           /* TLS handshake or certificate */                   \
  X(failed_other, uint64_t)                 /* sent, but no valid response (reset, ...) */       \
  X(dropped_limit, metrics::Counter)        /* max-replays in flight already */                  \
  X(dropped_sampling, metrics::Counter)     /* left out by the target's sampling */              \
  X(dropped_body_too_big, metrics::Counter) /* body above max-body */                            \
  X(dropped_body_incomplete, metrics::Counter) /* fewer body bytes than Content-Length */        \
  X(dropped_stopping, metrics::Counter)        /* arrived during a soft-stop */                  \
  X(in_flight, metrics::Gauge)                 /* now */                                         \
  X(in_flight_max, uint64_t)                   /* highest since start */                         \
  X(latency_max_us, uint64_t)                  /* replays that got a response: start to end */

class MirrorAgent : public agent::Agent {
 public:
  // The counters of SPOAD_MIRROR_STATS, and two shown otherwise.
  struct Stats {
    SPOAD_MIRROR_STATS(SPOAD_JSON_FIELD)
    uint64_t responses[6] = {};   // by status class: [1] 1xx .. [5] 5xx, [0] other
    uint64_t latency_sum_us = 0;  // replays that got a response: start to completion
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
  // Once stop() was called and no replay runs: closes curl, then calls stop()'s `done`.
  void finish_stop_if_idle();

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
