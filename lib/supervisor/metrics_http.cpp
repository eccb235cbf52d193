#include "supervisor/metrics_http.h"

#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string_view>

#include "util/escape.h"
#include "util/log.h"

namespace spoad::supervisor {

namespace {

constexpr int kBacklog = 64;
constexpr uint64_t kRetryMs = 1000;

std::shared_ptr<spdlog::logger> mlog() {
  return util::make_logger("spoad");
}

constexpr std::string_view kIndex =
    "<html><head><title>spoad</title></head><body><h1>spoad</h1>"
    "<p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

using metrics::make_sample;

}  // namespace

struct MetricsHttp::Server {
  MetricsHttp* owner = nullptr;
  MHD_Daemon* daemon = nullptr;
  uv_poll_t poll;
  uv_timer_t timer;
  int closed = 0;  // handles closed, of 2
};

struct MetricsHttp::Conn {
  uint64_t last_ms = 0;     // loop time of the connection's last request event
  bool in_request = false;  // a request line arrived, its answer is not sent yet
  bool answered = false;    // our handler answered the current request
  bool counted = false;     // its end is counted already (timeout, refusal)
};

struct MhdCallbacks {
  static MetricsHttp::Conn* conn_of(MHD_Connection* c) {
    const MHD_ConnectionInfo* i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? static_cast<MetricsHttp::Conn*>(i->socket_context) : nullptr;
  }

  static MHD_Result respond(MHD_Connection* c, unsigned status, std::string_view body,
                            std::string_view content_type, const char* allow = nullptr) {
    MHD_Response* r = MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                                      MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, std::string(content_type).c_str());
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    const MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
  }

  static MHD_Result on_request(void* cls, MHD_Connection* c, const char* url, const char* method,
                               const char*, const char*, size_t*, void** req_cls) {
    auto* self = static_cast<MetricsHttp*>(cls);
    const std::string_view m = method ? method : "";
    const std::string_view u = url ? url : "";
    const bool get = m == "GET" || m == "HEAD";
    // A GET is answered at the second call, once MHD knows that no body follows: an answer
    // queued at the first call makes MHD close the connection after it (no keep-alive).
    static char marker;
    if (get && *req_cls != &marker) {
      *req_cls = &marker;
      return MHD_YES;
    }
    if (MetricsHttp::Conn* conn = conn_of(c)) conn->answered = true;
    if (!get) {
      ++self->stats_.bad_method;
      return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method not allowed: use GET.\n",
                     "text/plain; charset=utf-8", "GET, HEAD");
    }
    if (u == "/metrics") {
      const char* accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
      const metrics::Format f = metrics::negotiate(accept ? accept : "");
      std::string body;
      try {
        body = self->render_(f);
      } catch (const std::exception& e) {
        mlog()->error("metrics endpoint: cannot render the exposition: {}",
                      util::printable(e.what()));
        return respond(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal error.\n",
                       "text/plain; charset=utf-8");
      }
      ++self->stats_.ok;
      return respond(c, MHD_HTTP_OK, body, metrics::content_type(f));
    }
    if (u == "/") {
      ++self->stats_.ok;
      return respond(c, MHD_HTTP_OK, kIndex, "text/html; charset=utf-8");
    }
    ++self->stats_.not_found;
    return respond(c, MHD_HTTP_NOT_FOUND, "Not found: see /metrics.\n",
                   "text/plain; charset=utf-8");
  }

  static void* on_uri(void* cls, const char*, MHD_Connection* c) {
    auto* self = static_cast<MetricsHttp*>(cls);
    if (MetricsHttp::Conn* conn = conn_of(c)) {
      conn->in_request = true;
      conn->answered = false;
      conn->last_ms = uv_now(self->loop_);
    }
    return nullptr;
  }

  static void on_completed(void* cls, MHD_Connection* c, void**, MHD_RequestTerminationCode code) {
    auto* self = static_cast<MetricsHttp*>(cls);
    MetricsHttp::Conn* conn = conn_of(c);
    if (!conn) return;
    if (code == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED && !conn->counted) {
      conn->counted = true;
      self->budget_hit(self->stats_.timeouts, "a connection silent for " +
                                                  std::to_string(self->cfg_.timeout_ms / 1000) +
                                                  " s (metrics.timeout) was closed");
    } else if (code != MHD_REQUEST_TERMINATED_COMPLETED_OK && !conn->answered && !conn->counted &&
               code != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN) {
      conn->counted = true;
      self->budget_hit(self->stats_.refused,
                       "a request was refused before it was complete (larger than "
                       "metrics.max-connection-memory, " +
                           std::to_string(self->cfg_.max_connection_memory) +
                           " bytes, or malformed)");
    }
    conn->in_request = false;
    conn->answered = false;
    conn->last_ms = uv_now(self->loop_);
  }

  static void on_connection(void* cls, MHD_Connection*, void** socket_context,
                            MHD_ConnectionNotificationCode code) {
    auto* self = static_cast<MetricsHttp*>(cls);
    MetricsHttp::Stats& st = self->stats_;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      auto* conn = new MetricsHttp::Conn;
      conn->last_ms = uv_now(self->loop_);
      *socket_context = conn;
      ++st.connections;
      ++st.connections_total;
      if (st.connections >= self->cfg_.max_connections)
        self->budget_hit(st.at_limit, std::to_string(st.connections) +
                                          " connections open (metrics.max-connections): the "
                                          "next scrapers wait in the backlog");
      return;
    }
    auto* conn = static_cast<MetricsHttp::Conn*>(*socket_context);
    *socket_context = nullptr;
    if (st.connections > 0) --st.connections;
    ++st.closed_total;
    if (!conn) return;
    if (!conn->counted && !self->stopping_) {
      // MHD says neither why a connection closed nor whether it timed out when no request was
      // under way: one silent for the whole timeout was closed by it.
      const uint64_t silent = uv_now(self->loop_) - conn->last_ms;
      if (silent + kTimerSlackMs >= self->cfg_.timeout_ms)
        self->budget_hit(st.timeouts, "a connection silent for " +
                                          std::to_string(self->cfg_.timeout_ms / 1000) +
                                          " s (metrics.timeout) was closed");
      else if (conn->in_request && !conn->answered)
        self->budget_hit(st.refused,
                         "a request was refused before it was complete (larger than "
                         "metrics.max-connection-memory, " +
                             std::to_string(self->cfg_.max_connection_memory) +
                             " bytes, or malformed)");
    }
    delete conn;
  }

  static void on_log(void* cls, const char* fmt, va_list ap) {
    auto* self = static_cast<MetricsHttp*>(cls);
    char buf[512];
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    std::string_view text(buf);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
      text.remove_suffix(1);
    if (!self->log_limiter_.allow(uv_now(self->loop_))) return;
    mlog()->warn("metrics endpoint: libmicrohttpd: {}", util::printable(text, 400));
  }

  static constexpr uint64_t kTimerSlackMs = 100;
};

MetricsHttp::MetricsHttp(uv_loop_t* loop, Render render)
    : loop_(loop), render_(std::move(render)) {}

MetricsHttp::~MetricsHttp() {
  close();
}

std::string MetricsHttp::address() const {
  return cfg_.enabled && (server_ || retrying_) ? cfg_.listen.str() : std::string();
}

int MetricsHttp::bind_socket(const config::ListenAddress& a, int* err) const {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(a.port);
  const int gai = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0)
    throw std::runtime_error("metrics endpoint " + util::printable(a.str()) +
                             ": cannot resolve: " + ::gai_strerror(gai));
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    ::freeaddrinfo(res);
    return -1;
  }
  const int one = 1;
  // SO_REUSEADDR (a restart finds the port in TIME_WAIT); never SO_REUSEPORT.
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (res->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  const bool ok = ::bind(fd, res->ai_addr, res->ai_addrlen) == 0 && ::listen(fd, kBacklog) == 0;
  *err = errno;
  ::freeaddrinfo(res);
  if (!ok) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void MetricsHttp::prepare(const config::MetricsConfig& cfg, bool busy_ok) {
  abort();
  next_cfg_ = cfg;
  prepared_ = true;
  if (!cfg.enabled) return;
  // The same address as now: the socket stays (a new bind would find it busy).
  if (cfg_.enabled && cfg.listen == cfg_.listen && (fd_ >= 0 || retrying_)) return;
  int err = 0;
  next_fd_ = bind_socket(cfg.listen, &err);
  if (next_fd_ >= 0) return;
  ++stats_.bind_failures;
  if (busy_ok && err == EADDRINUSE) {
    next_busy_ = true;
    return;
  }
  prepared_ = false;
  throw std::runtime_error("metrics endpoint " + util::printable(cfg.listen.str()) +
                           ": cannot listen: " + std::strerror(err));
}

void MetricsHttp::abort() {
  if (next_fd_ >= 0) ::close(next_fd_);
  next_fd_ = -1;
  next_busy_ = false;
  prepared_ = false;
}

void MetricsHttp::commit() {
  if (!prepared_) return;
  prepared_ = false;
  const bool same_socket = next_fd_ < 0 && !next_busy_ && next_cfg_.enabled && cfg_.enabled &&
                           next_cfg_.listen == cfg_.listen;
  if (same_socket && next_cfg_ == cfg_) return;  // nothing changed
  stop_server();
  if (!same_socket) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    retrying_ = false;
    if (cfg_.enabled) mlog()->info("metrics endpoint on {} closed", cfg_.listen.str());
  }
  cfg_ = next_cfg_;
  if (!same_socket) {
    fd_ = next_fd_;
    next_fd_ = -1;
    if (next_busy_) {
      next_busy_ = false;
      retrying_ = true;
      mlog()->info(
          "metrics endpoint: {} is in use (the spoad we took over from serves it until it "
          "stops): retrying every second",
          cfg_.listen.str());
      if (!retry_timer_) {
        retry_timer_ = new uv_timer_t;
        uv_timer_init(loop_, retry_timer_);
        retry_timer_->data = this;
      }
      uv_timer_start(retry_timer_, on_retry, kRetryMs, kRetryMs);
      return;
    }
  }
  if (fd_ >= 0) start_server();
}

void MetricsHttp::on_retry(uv_timer_t* t) {
  auto* self = static_cast<MetricsHttp*>(t->data);
  if (!self->retrying_ || !self->cfg_.enabled) {
    uv_timer_stop(t);
    return;
  }
  int err = 0;
  const int fd = self->bind_socket(self->cfg_.listen, &err);
  if (fd < 0) {
    ++self->stats_.bind_failures;
    if (err != EADDRINUSE && self->log_limiter_.allow(uv_now(self->loop_)))
      mlog()->warn("metrics endpoint {}: cannot listen: {}", self->cfg_.listen.str(),
                   std::strerror(err));
    return;
  }
  uv_timer_stop(t);
  self->retrying_ = false;
  self->fd_ = fd;
  self->start_server();
}

void MetricsHttp::start_server() {
  const int copy = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);  // MHD closes its copy when it stops
  if (copy < 0) {
    mlog()->error("metrics endpoint {}: cannot start: {}", cfg_.listen.str(), std::strerror(errno));
    return;
  }
  MHD_Daemon* d = MHD_start_daemon(
      MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, nullptr, nullptr, &MhdCallbacks::on_request, this,
      MHD_OPTION_EXTERNAL_LOGGER, &MhdCallbacks::on_log, this, MHD_OPTION_LISTEN_SOCKET, copy,
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(cfg_.max_connections),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(cfg_.max_connection_memory),
      MHD_OPTION_CONNECTION_TIMEOUT, static_cast<unsigned>(cfg_.timeout_ms / 1000),
      MHD_OPTION_NOTIFY_CONNECTION, &MhdCallbacks::on_connection, this, MHD_OPTION_NOTIFY_COMPLETED,
      &MhdCallbacks::on_completed, this, MHD_OPTION_URI_LOG_CALLBACK, &MhdCallbacks::on_uri, this,
      MHD_OPTION_END);
  const MHD_DaemonInfo* info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD) : nullptr;
  if (!info) {
    if (d) MHD_stop_daemon(d);
    if (::fcntl(copy, F_GETFD) >= 0) ::close(copy);
    mlog()->error("metrics endpoint {}: libmicrohttpd did not start", cfg_.listen.str());
    return;
  }
  auto* s = new Server;
  s->owner = this;
  s->daemon = d;
  uv_poll_init(loop_, &s->poll, info->epoll_fd);
  uv_timer_init(loop_, &s->timer);
  s->poll.data = s;
  s->timer.data = s;
  uv_poll_start(&s->poll, UV_READABLE, [](uv_poll_t* h, int, int) {
    static_cast<Server*>(h->data)->owner->run(static_cast<Server*>(h->data));
  });
  server_ = s;
  run(s);
  mlog()->info("metrics endpoint on http://{}/metrics", cfg_.listen.str());
}

void MetricsHttp::run(Server* s) {
  const uint64_t closed = stats_.closed_total;
  MHD_run(s->daemon);
  // MHD takes its listening socket out of its epoll set at max-connections and puts it back
  // only at the start of its next run: after a run that closed connections, run again at
  // once (a 0 ms timer), or the scrapers waiting in the backlog would wait for another event.
  MHD_UNSIGNED_LONG_LONG ms = 0;
  const bool again = stats_.closed_total != closed;
  if (!again && MHD_get_timeout(s->daemon, &ms) != MHD_YES) {
    uv_timer_stop(&s->timer);
    return;
  }
  uv_timer_start(
      &s->timer,
      [](uv_timer_t* t) {
        static_cast<Server*>(t->data)->owner->run(static_cast<Server*>(t->data));
      },
      again ? 0 : ms, 0);
}

void MetricsHttp::stop_server() {
  Server* s = server_;
  if (!s) return;
  server_ = nullptr;
  stopping_ = true;
  uv_poll_stop(&s->poll);
  uv_timer_stop(&s->timer);
  MHD_stop_daemon(s->daemon);  // closes its connections (callbacks run now) and its socket copy
  stopping_ = false;
  s->daemon = nullptr;
  auto closed = [](uv_handle_t* h) {
    auto* srv = static_cast<Server*>(h->data);
    if (++srv->closed == 2) delete srv;
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&s->poll), closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&s->timer), closed);
}

void MetricsHttp::close() {
  abort();
  stop_server();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  retrying_ = false;
  if (retry_timer_) {
    uv_close(reinterpret_cast<uv_handle_t*>(retry_timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    retry_timer_ = nullptr;
  }
  cfg_ = config::MetricsConfig{};
}

void MetricsHttp::budget_hit(uint64_t& counter, const std::string& why) {
  ++counter;
  if (!log_limiter_.allow(uv_now(loop_))) return;
  const uint64_t held = log_limiter_.take_suppressed();
  mlog()->warn("metrics endpoint: {}{}", why,
               held ? " (" + std::to_string(held) + " similar lines not logged)" : std::string());
}

void MetricsHttp::append_samples(std::vector<metrics::Sample>& out) const {
  constexpr std::string_view kMetricsHttpRequestsHelp =
      "Requests answered by the metrics endpoint, by status code.";
#define SPOAD_METRICS_HTTP_SAMPLE(field, type, family, help, labels) \
  out.push_back(                                                     \
      make_sample(family, help, metrics::Type::type, static_cast<double>(stats_.field), labels));
  SPOAD_METRICS_HTTP_STATS(SPOAD_METRICS_HTTP_SAMPLE)
#undef SPOAD_METRICS_HTTP_SAMPLE
}

}  // namespace spoad::supervisor
