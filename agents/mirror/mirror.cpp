#include "agents/mirror/mirror.h"

#include <algorithm>
#include <memory>
#include <string_view>

#include "http/curl_loop.h"
#include "spop/reader.h"
#include "util/escape.h"

namespace spoad::agents::mirror {

namespace {

// Bounds of spoad_mirror_replay_seconds, in microseconds: 250 us to 30 s (replay-timeout's
// default is 5 s).
constexpr uint64_t kReplayBoundsUs[] = {250,     500,     1000,     2500,    5000,   10000,
                                        25000,   50000,   100000,   250000,  500000, 1000000,
                                        2500000, 5000000, 10000000, 30000000};

size_t discard(char*, size_t size, size_t n, void*) {
  return size * n;
}

// Where a failed replay is counted.
enum class Failure { kConnect, kTimeout, kTls, kOther };

Failure classify(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return Failure::kConnect;
    case CURLE_OPERATION_TIMEDOUT:
      return Failure::kTimeout;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
      return Failure::kTls;
    default:
      return Failure::kOther;
  }
}

const char* failure_name(Failure f) {
  switch (f) {
    case Failure::kConnect:
      return "connect";
    case Failure::kTimeout:
      return "timeout";
    case Failure::kTls:
      return "TLS";
    case Failure::kOther:
      break;
  }
  return "other";
}

// http://host[:port][/prefix] or https://..., checked by libcurl's URL parser (host, port,
// bytes: what CURLOPT_URL would refuse at each replay). In front of it, what curl would let
// pass: another scheme or one in capitals, "http:///h" (curl reads "h" as the host), a query
// or fragment (even an empty one), and a NUL (curl reads a C string).
bool valid_base_url(const std::string& u) {
  const size_t host = u.starts_with("http://") ? 7 : u.starts_with("https://") ? 8 : 0;
  if (host == 0 || host == u.size() || u[host] == '/') return false;
  if (u.find_first_of(std::string_view("?#\0", 3)) != std::string::npos) return false;
  const std::unique_ptr<CURLU, void (*)(CURLU*)> h(curl_url(), &curl_url_cleanup);
  return h && curl_url_set(h.get(), CURLUPART_URL, u.c_str(), 0) == CURLUE_OK;
}

std::unique_ptr<agent::AgentOptions> parse(config::Options& o) {
  auto opts = std::make_unique<MirrorOptions>();
  opts->message = o.str("message", "mirror");
  if (opts->message.empty()) o.fail("message", "must not be empty");

  std::vector<config::Options> targets = o.map_list("targets");
  if (targets.empty()) o.fail("targets", "at least one target is required (- url: http://...)");
  for (config::Options& t : targets) {
    Target x;
    const std::optional<std::string> url = t.str("url");
    if (!url) t.fail("", "url is required");
    x.url = *url;
    if (!valid_base_url(x.url))
      t.fail("url", "expected http://host[:port][/prefix] or https://..., without query, got \"" +
                        x.url + "\"");
    while (x.url.back() == '/')
      x.url.pop_back();
    x.sampling = t.number("sampling", 100, 0, 100);
    t.check_unknown();
    opts->targets.push_back(std::move(x));
  }

  const std::string host = o.str("host", "keep");
  if (host != "keep" && host != "target") o.fail("host", "expected keep or target");
  opts->headers.keep_host = host == "keep";
  for (const std::string& h : o.str_list("add-headers")) {
    const size_t colon = h.find(':');
    std::string name = h.substr(0, colon);
    std::vector<Header> check;
    if (colon == std::string::npos || !decode_hdrs_text(h, &check).empty() || check.size() != 1)
      o.fail("add-headers", "expected \"Name: value\", got \"" + h + "\"");
    opts->headers.add.emplace_back(std::string(check[0].name), std::string(check[0].value));
  }
  for (const std::string& h : o.str_list("remove-headers")) {
    std::vector<Header> check;
    if (!decode_hdrs_text(h + ":", &check).empty() || check.size() != 1)
      o.fail("remove-headers", "expected a header name, got \"" + h + "\"");
    opts->headers.remove.push_back(h);
  }

  opts->connect_timeout_ms = o.duration_ms("connect-timeout", 1000, 1, 60'000);
  opts->timeout_ms = o.duration_ms("replay-timeout", 5000, 1, 600'000);
  opts->max_replays = static_cast<uint32_t>(o.integer("max-replays", 256, 1, 100'000));
  opts->max_body = o.size("max-body", 1 << 20, 0, uint64_t{1} << 30);
  const std::string ver = o.str("http-version", "1.1");
  if (ver == "1.0")
    opts->http_version = CURL_HTTP_VERSION_1_0;
  else if (ver == "1.1")
    opts->http_version = CURL_HTTP_VERSION_1_1;
  else if (ver == "2")
    opts->http_version = CURL_HTTP_VERSION_2TLS;  // h2 over TLS (ALPN), HTTP/1.1 for http://
  else if (ver == "2-prior-knowledge")
    opts->http_version = CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
  else
    o.fail("http-version", "expected 1.0, 1.1, 2 or 2-prior-knowledge, got \"" + ver + "\"");
  opts->tls_verify = o.boolean("tls-verify", true);
  opts->ca_file = o.str("ca-file", "");
  return opts;
}

std::unique_ptr<agent::Agent> create(const agent::Context& ctx, const agent::AgentOptions& o) {
  return std::make_unique<MirrorAgent>(ctx, static_cast<const MirrorOptions&>(o));
}

}  // namespace

SPOAD_REGISTER_AGENT(mirror, "mirror",
                     "traffic shadowing: replays requests to other URLs, spoa-mirror compatible",
                     parse, create);

// One message to one target, from start to curl's completion.
struct MirrorAgent::Replay {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  std::shared_ptr<const std::string> body;  // shared by the targets of one message
  std::string url;
  std::string method;
  size_t target = 0;
  uint64_t start_ns = 0;
  char errbuf[CURL_ERROR_SIZE] = "";
};

MirrorAgent::MirrorAgent(const agent::Context& ctx, const MirrorOptions& opts)
    : ctx_(ctx), opts_(opts) {
  const metrics::Scope& m = ctx_.metrics;
  constexpr std::string_view kReplays =
      "Replays ended (one message to one target), by outcome: the response's status class, or "
      "why none came (connect, timeout, tls, other)";
  auto replays = [&](std::string_view outcome) {
    return m.counter("spoad_mirror_replays_total", kReplays, {{"outcome", outcome}});
  };
  outcome_class_[2] = replays("2xx");
  outcome_class_[3] = replays("3xx");
  outcome_class_[4] = replays("4xx");
  outcome_class_[5] = replays("5xx");
  stats_.failed_connect = replays("connect");
  stats_.failed_timeout = replays("timeout");
  stats_.failed_tls = replays("tls");
  outcome_other_ = replays("other");
  constexpr std::string_view kDropped =
      "Replays not started, by reason (bad-message counts messages, the others one per target)";
  auto dropped = [&](std::string_view reason) {
    return m.counter("spoad_mirror_dropped_total", kDropped, {{"reason", reason}});
  };
  stats_.dropped_sampling = dropped("sampling");
  stats_.dropped_stopping = dropped("stopping");
  stats_.dropped_body_too_big = dropped("body-too-big");
  stats_.dropped_body_incomplete = dropped("body-incomplete");
  stats_.dropped_limit = dropped("limit");
  stats_.bad_messages = dropped("bad-message");
  stats_.in_flight = m.gauge("spoad_mirror_in_flight", "Replays in flight (max-replays bounds it)");
  latency_ = m.histogram("spoad_mirror_replay_seconds",
                         "Duration of ended replays, start to response or failure (not "
                         "cancelled ones)",
                         {}, kReplayBoundsUs);
}

void MirrorAgent::count_response(int cls) {
  ++stats_.responses[cls];
  if (cls >= 2)
    ++outcome_class_[cls];
  else
    ++outcome_other_;
}

void MirrorAgent::count_other_failure() {
  ++stats_.failed_other;
  ++outcome_other_;
}

MirrorAgent::~MirrorAgent() {
  // Without a completed stop(): curl_'s destructor removes the transfers from curl without
  // calling back, so the replays are freed here.
  curl_.reset();
  for (Replay* r : replays_) {
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    delete r;
  }
  for (CURL* e : idle_easy_)
    curl_easy_cleanup(e);
}

void MirrorAgent::start() {
  if (ctx_.loop && !curl_) curl_ = std::make_unique<http::CurlLoop>(ctx_.loop);
}

void MirrorAgent::bad(const char* what) {
  ++stats_.bad_messages;
  if (ctx_.log && ctx_.loop && bad_log_.allow(uv_now(ctx_.loop))) {
    const uint64_t more = bad_log_.take_suppressed();
    ctx_.log->warn("message \"{}\" not replayed: {}{}", util::printable(opts_.message), what,
                   more ? fmt::format(" ({} more since)", more) : std::string());
  }
}

void MirrorAgent::on_message(const spop::Message& msg, agent::Reply&) {
  if (msg.name != opts_.message) return;
  ++stats_.messages;

  std::optional<spop::Value> method_v, path_v, hdrs_v, body_v;
  for (const spop::KV& kv : spop::args(msg)) {
    if (kv.name == "arg_method" && !method_v)
      method_v = kv.value;
    else if (kv.name == "arg_path" && !path_v)
      path_v = kv.value;
    else if (kv.name == "arg_hdrs" && !hdrs_v)
      hdrs_v = kv.value;
    else if (kv.name == "arg_body" && !body_v)
      body_v = kv.value;
  }
  if (!method_v || !method_v->is_text() || method_v->text().empty())
    return bad("no arg_method (STRING)");
  if (!path_v || !path_v->is_text() || path_v->text().empty()) return bad("no arg_path (STRING)");
  const std::string_view method = method_v->text();
  for (char c : method)
    if (c < 'A' || c > 'Z') return bad("arg_method is not an HTTP method");
  if (method == "CONNECT") return bad("CONNECT is not replayed");
  std::string path;
  if (!request_target(path_v->text(), &path)) return bad("arg_path is not a request target");

  std::vector<Header> headers;
  if (hdrs_v && hdrs_v->type != spop::DataType::kNull) {
    std::string err;
    if (hdrs_v->type == spop::DataType::kBinary)
      err = decode_hdrs_bin(hdrs_v->bytes, &headers);
    else if (hdrs_v->type == spop::DataType::kString)
      err = decode_hdrs_text(hdrs_v->bytes, &headers);
    else
      err = "not BINARY or STRING";
    if (!err.empty()) {
      const std::string what = "arg_hdrs: " + err;
      return bad(what.c_str());
    }
  }
  std::string_view body;
  if (body_v && body_v->is_text()) body = body_v->bytes;

  const ReplayHeaders hdrs = build_headers(method, headers, body.size(), opts_.headers);

  std::shared_ptr<const std::string> shared_body;
  for (size_t t = 0; t < opts_.targets.size(); ++t) {
    const double sampling = opts_.targets[t].sampling;
    if (sampling < 100 && std::uniform_real_distribution<double>(0, 100)(rng_) >= sampling) {
      ++stats_.dropped_sampling;
      continue;
    }
    if (stopping_ || !curl_) {
      ++stats_.dropped_stopping;
      continue;
    }
    if (body.size() > opts_.max_body) {
      ++stats_.dropped_body_too_big;
      continue;
    }
    if (hdrs.has_body && hdrs.content_length >= 0 &&
        static_cast<unsigned long long>(hdrs.content_length) != body.size()) {
      ++stats_.dropped_body_incomplete;
      continue;
    }
    if (replays_.size() >= opts_.max_replays) {
      ++stats_.dropped_limit;
      continue;
    }
    if (!shared_body) shared_body = std::make_shared<const std::string>(body);
    replay(t, path, hdrs, shared_body, method);
  }
}

void MirrorAgent::replay(size_t target, const std::string& path, const ReplayHeaders& hdrs,
                         const std::shared_ptr<const std::string>& body, std::string_view method) {
  auto* r = new Replay;
  r->target = target;
  r->body = body;
  r->method = method;
  if (!idle_easy_.empty()) {
    r->easy = idle_easy_.back();
    idle_easy_.pop_back();
  } else {
    r->easy = curl_easy_init();
  }
  if (!r->easy) {
    count_other_failure();
    delete r;
    return;
  }
  for (const std::string& line : hdrs.lines) {
    curl_slist* l = curl_slist_append(r->headers, line.c_str());
    if (!l) {
      count_other_failure();
      curl_slist_free_all(r->headers);
      idle_easy_.push_back(r->easy);
      delete r;
      return;
    }
    r->headers = l;
  }

  CURL* e = r->easy;
  const Target& t = opts_.targets[target];
  if (path == "*") {
    r->url = t.url + "/";
    curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, "*");
  } else {
    r->url = t.url + path;
  }
  curl_easy_setopt(e, CURLOPT_URL, r->url.c_str());
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, opts_.http_version);
  if (method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else {
    if (hdrs.has_body) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body->data());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r->body->size()));
    } else {
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method.c_str());
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.connect_timeout_ms));
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.timeout_ms));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &discard);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, opts_.tls_verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, opts_.tls_verify ? 2L : 0L);
  if (!opts_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, opts_.ca_file.c_str());

  r->start_ns = uv_hrtime();
  replays_.insert(r);
  ++stats_.replays_started;
  stats_.in_flight = replays_.size();
  stats_.in_flight_max = std::max<uint64_t>(stats_.in_flight_max, replays_.size());
  curl_->add(e, [this, r](CURLcode result, long status) { finish(r, result, status); });
}

void MirrorAgent::finish(Replay* r, CURLcode result, long status) {
  replays_.erase(r);
  stats_.in_flight = replays_.size();
  const uint64_t us = (uv_hrtime() - r->start_ns) / 1000;
  if (result != CURLE_ABORTED_BY_CALLBACK) latency_.observe_us(us);
  if (result == CURLE_OK) {
    ++stats_.sent;
    count_response(status >= 100 && status < 600 ? static_cast<int>(status / 100) : 0);
    stats_.latency_sum_us += us;
    if (us > stats_.latency_max_us) stats_.latency_max_us = us;
  } else if (result != CURLE_ABORTED_BY_CALLBACK) {
    const Failure f = classify(result);
    switch (f) {
      case Failure::kConnect:
        ++stats_.failed_connect;
        break;
      case Failure::kTimeout:
        ++stats_.failed_timeout;
        break;
      case Failure::kTls:
        ++stats_.failed_tls;
        break;
      case Failure::kOther:
        count_other_failure();
        break;
    }
    if (ctx_.log && fail_log_.allow(uv_now(ctx_.loop))) {
      const uint64_t more = fail_log_.take_suppressed();
      // The URL holds the request's path (outside bytes), and curl's message may quote it.
      ctx_.log->warn("replay {} {} failed ({}): {}{}", util::printable(r->method),
                     util::printable(r->url), failure_name(f),
                     util::printable(r->errbuf[0] ? r->errbuf : curl_easy_strerror(result)),
                     more ? fmt::format(" ({} more failures since)", more) : std::string());
    }
  } else {
    count_other_failure();  // cancelled: only at a hard-stop
  }
  curl_slist_free_all(r->headers);
  curl_easy_reset(r->easy);
  idle_easy_.push_back(r->easy);
  delete r;
  finish_stop_if_idle();
}

void MirrorAgent::stop(std::function<void()> done) {
  stopping_ = true;
  stop_done_ = std::move(done);
  finish_stop_if_idle();
}

void MirrorAgent::finish_stop_if_idle() {
  if (!stopping_ || !stop_done_ || !replays_.empty()) return;
  std::function<void()> done = std::move(stop_done_);
  stop_done_ = nullptr;
  if (!curl_) {
    done();
    return;
  }
  curl_->close(std::move(done));
}

void MirrorAgent::stats(nlohmann::json& out) const {
  const Stats& s = stats_;
  SPOAD_MIRROR_STATS(SPOAD_JSON_PUT)
  out["responses_other"] = s.responses[0];
  for (int c = 1; c <= 5; ++c)
    out["responses_" + std::to_string(c) + "xx"] = s.responses[c];
  out["latency_avg_us"] = s.sent ? s.latency_sum_us / s.sent : 0;
}

}  // namespace spoad::agents::mirror
