// The master's HTTP endpoint for Prometheus (`metrics.listen`, `--metrics ADDR`):
//
//   GET /metrics   the exposition of the whole process tree (supervisor/metrics_view.h), in
//                  the text format 0.0.4, or OpenMetrics 1.0.0 when the scraper's Accept header
//                  asks for application/openmetrics-text (metrics::negotiate)
//   GET /          a short page that links /metrics
//   other paths    404; methods other than GET and HEAD: 405 (with Allow)
//
// The server is libmicrohttpd in "external polling" mode with epoll (MHD_USE_EPOLL, no
// thread): the master's libuv loop polls MHD's epoll fd (uv_poll) and wakes at the timeout MHD
// asks for (uv_timer from MHD_get_timeout), and calls MHD_run after each wake. A scrape thus
// runs on the master's loop, like a master CLI command, and reads the workers' arenas with no
// lock and no message.
//
// Budgets (the `metrics:` section), each counted (spoad_metrics_http_* in the exposition and
// the master's `show stat`) and logged at most 5 lines a second:
//   - max-connections (16): connections served at once. At the limit MHD stops accepting; the
//     next scrapers wait in the socket's backlog until a connection ends.
//   - timeout (10 s): a connection silent that long is closed.
//   - max-connection-memory (32 KiB): the memory of one connection (request line and headers);
//     a bigger request is refused by MHD with an error status and the connection closed.
//
// The socket is bound without SO_REUSEPORT: two spoad instances never share the port. A new
// instance that took over from a running one (supervisor/takeover.h) finds the address busy
// until its predecessor stops serving it, and retries every second meanwhile.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/exposition.h"
#include "util/rate_limit.h"

// The endpoint's counters, in the order of their samples: X(field, type, family, help,
// labels), labels rendered ("" for none). The help of spoad_metrics_http_requests_total is
// kMetricsHttpRequestsHelp (metrics_http.cpp).
#define SPOAD_METRICS_HTTP_STATS(X)                                                              \
  /* open now, accepted */                                                                       \
  X(connections, kGauge, "spoad_metrics_http_connections",                                       \
    "Connections open to the metrics endpoint.", "")                                             \
  X(connections_total, kCounter, "spoad_metrics_http_connections_total",                         \
    "Connections accepted by the metrics endpoint.", "")                                         \
  /* answers: 200 (/metrics and /), 404, 405 */                                                  \
  X(ok, kCounter, "spoad_metrics_http_requests_total", kMetricsHttpRequestsHelp, "code=\"200\"") \
  X(not_found, kCounter, "spoad_metrics_http_requests_total", kMetricsHttpRequestsHelp,          \
    "code=\"404\"")                                                                              \
  X(bad_method, kCounter, "spoad_metrics_http_requests_total", kMetricsHttpRequestsHelp,         \
    "code=\"405\"")                                                                              \
  X(at_limit, kCounter, "spoad_metrics_http_limit_reached_total",                                \
    "Times the metrics endpoint reached metrics.max-connections.", "")                           \
  X(timeouts, kCounter, "spoad_metrics_http_timeouts_total",                                     \
    "Connections closed after metrics.timeout of silence.", "")                                  \
  /* requests MHD refused before our handler (too big, bad) */                                   \
  X(refused, kCounter, "spoad_metrics_http_refused_total",                                       \
    "Requests refused before they were complete (larger than "                                   \
    "metrics.max-connection-memory, or malformed).",                                             \
    "")                                                                                          \
  /* binds that failed (start, reload, retries) */                                               \
  X(bind_failures, kCounter, "spoad_metrics_http_bind_failures_total",                           \
    "Attempts to bind the metrics endpoint's address that failed.", "")
#define SPOAD_METRICS_HTTP_FIELD(field, type, family, help, labels) uint64_t field = 0;

namespace spoad::supervisor {

class MetricsHttp {
 public:
  // Counters since the master started (the exposition shows them, see append_samples), each
  // but closed_total declared once in SPOAD_METRICS_HTTP_STATS.
  struct Stats {
    SPOAD_METRICS_HTTP_STATS(SPOAD_METRICS_HTTP_FIELD)
    uint64_t closed_total = 0;  // connections closed (not exported)
  };

  // `render`: the exposition in the asked format (called once per GET /metrics).
  using Render = std::function<std::string(metrics::Format)>;

  MetricsHttp(uv_loop_t* loop, Render render);
  ~MetricsHttp();
  MetricsHttp(const MetricsHttp&) = delete;
  MetricsHttp& operator=(const MetricsHttp&) = delete;

  // Binds `cfg.listen` (if `cfg.enabled` and the address differs from the one served now) for
  // the next commit(); scrapers see no change yet. Throws std::runtime_error naming the address
  // and the system error ("metrics.listen 127.0.0.1:9100: cannot bind: Address already in
  // use"). With `busy_ok`, an address in use is no error: commit() then retries every second.
  void prepare(const config::MetricsConfig& cfg, bool busy_ok = false);
  // Serves what prepare() set up: a changed address or budget restarts the server (open
  // scrapes are cut), `enabled` false closes it. Never throws; a server that cannot start is
  // logged and counted.
  void commit();
  // Forgets what prepare() set up (the reload failed): the endpoint served now stays.
  void abort();
  // Closes the server, its connections and its socket (the master stops, or a successor
  // serves). Idempotent; prepare() opens it again.
  void close();

  // "127.0.0.1:9100" while serving (or retrying), "" when off.
  std::string address() const;
  const Stats& stats() const { return stats_; }

  // Appends the endpoint's own samples (spoad_metrics_http_*) to `out`.
  void append_samples(std::vector<metrics::Sample>& out) const;

 private:
  struct Server;  // one MHD daemon and its libuv handles
  struct Conn;    // per connection

  int bind_socket(const config::ListenAddress& a, int* err) const;
  void start_server();
  void stop_server();
  // MHD_run, then the timer for the next run (MHD_get_timeout).
  void run(Server* s);
  void budget_hit(uint64_t& counter, const std::string& why);
  static void on_retry(uv_timer_t* t);

  friend struct MhdCallbacks;  // libmicrohttpd's callbacks (metrics_http.cpp)

  uv_loop_t* loop_;
  Render render_;
  Stats stats_;
  util::RateLimiter log_limiter_{5};

  config::MetricsConfig cfg_;  // served now (or retried)
  int fd_ = -1;                // our copy of the listening socket
  Server* server_ = nullptr;
  bool stopping_ = false;  // MHD_stop_daemon runs: its close callbacks count nothing
  bool retrying_ = false;  // the address was busy: retry every second
  uv_timer_t* retry_timer_ = nullptr;

  bool prepared_ = false;
  config::MetricsConfig next_cfg_;
  int next_fd_ = -1;
  bool next_busy_ = false;
};

}  // namespace spoad::supervisor
