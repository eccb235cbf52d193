#include "agents/tracing/http_sink.h"

#include <zlib.h>

#include <algorithm>
#include <stdexcept>
#include <string_view>

#include "util/escape.h"
#include "util/text.h"
#include "version.h"

namespace spoad::agents::tracing {

namespace {

constexpr uint64_t kMaxRetryAfterMs = 300'000;  // a longer Retry-After is cut to this
constexpr size_t kResponseExcerpt = 512;        // bytes of an error response kept for the log
constexpr int kGzipLevel = 1;                   // fastest: compression runs on the loop

// Compresses `in` as one gzip member (RFC 1952).
bool gzip_compress(std::string_view in, std::string* out) {
  z_stream z{};
  if (deflateInit2(&z, kGzipLevel, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return false;
  out->resize(deflateBound(&z, static_cast<uLong>(in.size())) + 32);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out->data());
  z.avail_out = static_cast<uInt>(out->size());
  const int rc = deflate(&z, Z_FINISH);
  out->resize(z.total_out);
  deflateEnd(&z);
  return rc == Z_STREAM_END;
}

bool retryable_status(long status) {
  return status == 429 || status == 502 || status == 503 || status == 504;
}

// Transport errors worth a retry: all but those a retry cannot fix.
bool retryable_curl(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_FAILED_INIT:
    case CURLE_ABORTED_BY_CALLBACK:
      return false;
    default:
      return true;
  }
}

size_t on_curl_write(char* data, size_t size, size_t n, void* userp) {
  auto* s = static_cast<std::string*>(userp);
  const size_t len = size * n;
  if (s->size() < kResponseExcerpt) s->append(data, std::min(len, kResponseExcerpt - s->size()));
  return len;
}

}  // namespace

HttpSink::HttpSink(uv_loop_t* loop, const ExporterOptions& opts)
    : endpoint_(opts.endpoint),
      gzip_(opts.gzip),
      timeout_ms_(opts.timeout_ms),
      curl_(std::make_unique<http::CurlLoop>(loop)) {
  // Headers: ours, then the configured ones (same name: theirs). "Expect:" stops curl from
  // waiting for a 100-continue on large bodies.
  KvList hs{{"Content-Type", "application/json"}};
  if (opts.gzip) hs.emplace_back("Content-Encoding", "gzip");
  hs.emplace_back("Expect", "");
  for (const auto& [k, v] : opts.headers)
    set_kv(hs, k, v, true);
  for (const auto& [k, v] : hs) {
    // curl: "Name:" removes a header, "Name;" sends it empty.
    const std::string line =
        v.empty() ? k + (util::iequals(k, "Expect") ? ":" : ";") : k + ": " + v;
    curl_slist* l = curl_slist_append(headers_, line.c_str());
    if (!l) {
      curl_slist_free_all(headers_);
      throw std::runtime_error("out of memory");
    }
    headers_ = l;
  }
  user_agent_ = std::string("spoad/") + SPOAD_VERSION;
}

HttpSink::~HttpSink() {
  curl_.reset();
  curl_slist_free_all(headers_);
}

std::unique_ptr<HttpSink::Request> HttpSink::prepare(std::string body, std::string* error) const {
  auto r = std::make_unique<Request>();
  if (gzip_) {
    if (!gzip_compress(body, &r->body)) {
      // Cannot happen short of memory; the headers announce gzip, so the batch cannot go.
      *error = "cannot compress a batch";
      return nullptr;
    }
  } else {
    r->body = std::move(body);
  }
  CURL* e = curl_easy_init();
  if (!e) {
    *error = "curl_easy_init failed";
    return nullptr;
  }
  r->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, endpoint_.c_str());
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body.data());
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r->body.size()));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
  curl_easy_setopt(e, CURLOPT_USERAGENT, user_agent_.c_str());
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms_));
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_curl_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->response);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  return r;
}

void HttpSink::send(Request* r, http::CurlLoop::Done done) {
  r->response.clear();
  r->errbuf[0] = '\0';
  curl_->add(r->easy, std::move(done));
}

HttpSink::Verdict HttpSink::judge(const Request& r, CURLcode rc, long status) {
  Verdict v;
  if (rc == CURLE_OK && status >= 200 && status < 300) return v;
  v.outcome = rc == CURLE_OK                   ? Outcome::kHttpError
              : rc == CURLE_OPERATION_TIMEDOUT ? Outcome::kTimeout
                                               : Outcome::kNetworkError;
  if (rc != CURLE_OK) {
    v.what = curl_easy_strerror(rc);
    if (r.errbuf[0]) v.what += " (" + util::printable(r.errbuf) + ")";
  } else {
    v.what = "HTTP " + std::to_string(status);
    if (!r.response.empty()) v.what += ": " + util::printable(r.response, kResponseExcerpt);
  }
  v.retry = rc != CURLE_OK ? retryable_curl(rc) : retryable_status(status);
  v.key = rc != CURLE_OK ? -static_cast<long>(rc) : status;
  curl_off_t retry_after = 0;
  if (v.retry && rc == CURLE_OK &&
      curl_easy_getinfo(r.easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
      retry_after > 0) {
    v.retry_after_ms =
        std::min<uint64_t>(static_cast<uint64_t>(retry_after) * 1000, kMaxRetryAfterMs);
  }
  return v;
}

void HttpSink::close(std::function<void()> done) {
  curl_->close(std::move(done));
}

}  // namespace spoad::agents::tracing
