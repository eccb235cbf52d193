// The tracing exporter's OTLP/HTTP sink: one POST of an ExportTraceServiceRequest per batch,
// with JSON bodies (optionally gzip, level 1: compression runs on the loop), over
// lib/http/curl_loop on the worker's libuv loop. It sends and judges requests; queueing,
// retries and their timing belong to the exporter (exporter.h).
#pragma once

#include <curl/curl.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "agents/tracing/exporter_options.h"
#include "http/curl_loop.h"

namespace spoad::agents::tracing {

class HttpSink {
 public:
  // One export request, kept across its retries: the body as sent and its curl handle.
  struct Request {
    std::string body;  // after gzip when the sink compresses
    CURL* easy = nullptr;
    std::string response;  // the start of the response body (512 bytes at most), for the log
    char errbuf[CURL_ERROR_SIZE] = {};
    Request() = default;
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    ~Request() {
      if (easy) curl_easy_cleanup(easy);
    }
  };

  // What a completed request means for its batch.
  enum class Outcome { kSuccess, kHttpError, kNetworkError, kTimeout };
  struct Verdict {
    Outcome outcome = Outcome::kSuccess;  // kSuccess: a 2xx response
    // Failures only:
    bool retry = false;           // a transport error a retry may fix, or 429, 502, 503, 504
    long key = 0;                 // the HTTP status, or minus curl's code: one per distinct error
    uint64_t retry_after_ms = 0;  // a retried response's Retry-After, cut to 300 s; 0 if none
    std::string what;             // "HTTP <status>: <response excerpt>" or curl's error, printable
  };

  // Builds the request headers: Content-Type: application/json, Content-Encoding: gzip when
  // opts.gzip, no "Expect: 100-continue", then opts.headers (which replace ours of the same
  // name), and the User-Agent spoad/<version>. `loop` must outlive the sink. Throws
  // std::runtime_error if curl cannot be set up or out of memory.
  HttpSink(uv_loop_t* loop, const ExporterOptions& opts);
  // Without close(), requests in flight are dropped and their callbacks never run.
  ~HttpSink();
  HttpSink(const HttpSink&) = delete;
  HttpSink& operator=(const HttpSink&) = delete;

  // A POST of `body` (the JSON request) to opts.endpoint, gzip-compressed when opts.gzip, with
  // the per-request timeout opts.timeout_ms. nullptr, with `*error` set ("cannot compress a
  // batch", "curl_easy_init failed"), when it cannot be made (short of memory).
  std::unique_ptr<Request> prepare(std::string body, std::string* error) const;

  // Starts (or restarts, for a retry) `r`, which must stay alive until `done` ran; `done`
  // runs on the loop, never inside send() (http::CurlLoop::Done: curl's code and the status).
  void send(Request* r, http::CurlLoop::Done done);

  // Judges a completed request of `r` from what `done` received (OTLP/HTTP "Failures" and
  // "Retryable response codes"). Reads Retry-After (seconds or an HTTP date) from `r`'s handle.
  static Verdict judge(const Request& r, CURLcode result, long status);

  // Cancels every request (their `done` runs before close() returns, with
  // CURLE_ABORTED_BY_CALLBACK), closes the connections and libuv handles, and calls `done` on
  // the loop once they are closed. Call once.
  void close(std::function<void()> done);

 private:
  std::string endpoint_;
  bool gzip_;
  uint64_t timeout_ms_;
  std::unique_ptr<http::CurlLoop> curl_;
  curl_slist* headers_ = nullptr;  // the request headers, shared by all requests
  std::string user_agent_;
};

}  // namespace spoad::agents::tracing
