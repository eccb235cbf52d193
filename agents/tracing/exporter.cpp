#include "agents/tracing/exporter.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include "agents/tracing/file_sink.h"
#include "agents/tracing/http_sink.h"
#include "agents/tracing/otlp_request.h"
#include "util/clock.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::agents::tracing {

namespace {

constexpr size_t kMaxHttpInFlight = 2;  // export requests at once (retry waits included)

}  // namespace

// One HTTP export, kept across its retries.
struct SpanExporter::Batch {
  std::unique_ptr<HttpSink::Request> req;
  size_t spans = 0;
  size_t bytes = 0;  // of the spans, counted in held_ until the batch ends
  uint64_t attempts = 0;
  uint64_t backoff_ms = 0;   // the next retry delay, before jitter
  bool waiting = false;      // waiting for a retry (else in flight)
  uint64_t retry_at_ms = 0;  // uv_now() of the retry
  uint64_t started_ns = 0;   // the current request's start (uv_hrtime)
};

SpanExporter::SpanExporter(uv_loop_t* loop, ExporterOptions opts,
                           std::shared_ptr<spdlog::logger> log, const metrics::Scope& metrics)
    : loop_(loop),
      opts_(std::move(opts)),
      log_(log ? std::move(log) : util::make_logger("tracing")),
      token_(std::make_shared<int>(0)),
      metrics_(metrics),
      rng_(static_cast<uint32_t>(uv_hrtime() ^ static_cast<uint64_t>(getpid()))) {
  opts_.max_batch = std::max<size_t>(opts_.max_batch, 1);
  opts_.max_queue = std::max<size_t>(opts_.max_queue, 1);
  opts_.max_queue_bytes = std::max<size_t>(opts_.max_queue_bytes, 1);
  endpoint_shown_ = util::printable(opts_.endpoint);
  opts_.retry_initial_ms = std::max<uint64_t>(opts_.retry_initial_ms, 1);
  opts_.retry_max_ms = std::max(opts_.retry_max_ms, opts_.retry_initial_ms);

  series_.register_in(metrics_);
  // The request around the spans.
  OtlpEnvelope envelope = otlp_envelope(opts_);
  body_prefix_ = std::move(envelope.prefix);
  body_suffix_ = std::move(envelope.suffix);

  if (!loop_ || opts_.kind == ExporterOptions::Kind::kNone) return;
  flush_timer_ = make_timer(&SpanExporter::pump);
  if (opts_.kind == ExporterOptions::Kind::kOtlpHttp) {
    http_ = std::make_unique<HttpSink>(loop_, opts_);
    retry_timer_ = make_timer(&SpanExporter::on_retry_timer);
  } else {
    file_ = std::make_unique<FileSink>(loop_, opts_.file);
  }
}

SpanExporter::~SpanExporter() {
  closing_ = true;  // callbacks from now on only free memory
  stop_done_ = nullptr;
  timers_.close_all();  // timers_' destructor makes their close callbacks forget this object
  if (http_) http_->close([] {});  // cancels the requests in flight (their callbacks see closing_)
  batches_.clear();
  http_.reset();
  file_.reset();  // a write in progress finishes without calling back
}

SpanExporter::Timer* SpanExporter::make_timer(void (SpanExporter::*fn)()) {
  Timer* t = timers_.make();
  t->extra = fn;
  uv_timer_init(loop_, &t->u.timer);  // cannot fail
  return t;
}

void SpanExporter::close_timer(Timer*& t) {
  if (!t) return;
  timers_.close(t);
  t = nullptr;
}

void SpanExporter::on_timer(uv_timer_t* h) {
  Timer* t = Timer::from(h);
  if (t->live()) (t->owner()->*(t->extra))();
}

void SpanExporter::on_timer_closed(Timer*) {
  finish_stop_if_closed();
}

bool SpanExporter::enqueue(std::string span_json) {
  if (!loop_ || closing_) {
    ++series_.dropped_stopping;
    return false;
  }
  if (opts_.kind == ExporterOptions::Kind::kNone) {
    ++stats_.enqueued;
    return true;
  }
  if (held_.spans >= opts_.max_queue) {
    ++series_.dropped_queue_full;
    drop("max-queue", span_json.size());
    return false;
  }
  if (span_json.size() > opts_.max_queue_bytes - std::min(held_.bytes, opts_.max_queue_bytes)) {
    ++series_.dropped_queue_bytes;
    drop("max-queue-bytes", span_json.size());
    return false;
  }
  held_.bytes += span_json.size();
  ++held_.spans;
  held_changed();
  queue_.push_back(Queued{std::move(span_json), uv_now(loop_)});
  ++stats_.enqueued;
  // The flush timer is set when the first span arrives and when a batch is full.
  if (queue_.size() == 1 || queue_.size() == opts_.max_batch) schedule();
  return true;
}

void SpanExporter::drop(const char* why, size_t bytes) {
  if (!drop_limiter_.allow(uv_now(loop_))) return;
  drop_limiter_.take_suppressed();  // the total below says it all
  log_->warn(
      "span queue full ({} spans, {} bytes held; max-queue {}, max-queue-bytes {}): dropping "
      "a span of {} bytes for {} ({} dropped so far)",
      held_.spans, held_.bytes, opts_.max_queue, opts_.max_queue_bytes, bytes, why,
      stats().dropped);
}

void SpanExporter::release(const Held& h) {
  held_.spans -= h.spans;
  held_.bytes -= h.bytes;
  held_changed();
}

void SpanExporter::held_changed() {
  series_.queue_spans = held_.spans;
  series_.queue_bytes = held_.bytes;
}

bool SpanExporter::slot_free() const {
  if (opts_.kind == ExporterOptions::Kind::kFile) return !file_busy();
  return batches_.size() < kMaxHttpInFlight;
}

void SpanExporter::schedule() {
  if (!flush_timer_ || closing_) return;
  if (queue_.empty() || !slot_free()) {
    uv_timer_stop(&flush_timer_->u.timer);
    return;
  }
  uint64_t delay = 0;
  if (!stopping_ && queue_.size() < opts_.max_batch) {
    const uint64_t now = uv_now(loop_);
    const uint64_t due = queue_.front().t_ms + opts_.flush_interval_ms;
    delay = due > now ? due - now : 0;
  }
  uv_timer_start(&flush_timer_->u.timer, &SpanExporter::on_timer, delay, 0);
}

void SpanExporter::pump() {
  if (closing_) return;
  const uint64_t now = uv_now(loop_);
  while (!queue_.empty() && slot_free()) {
    const bool full = queue_.size() >= opts_.max_batch;
    const bool due = now >= queue_.front().t_ms + opts_.flush_interval_ms;
    if (!full && !due && !stopping_) break;
    send_batch(std::min(queue_.size(), opts_.max_batch));
  }
  schedule();
  close_when_drained();
}

std::string SpanExporter::build_body(size_t n, Held* taken) {
  taken->spans = n;
  taken->bytes = 0;
  for (size_t i = 0; i < n; ++i)
    taken->bytes += queue_[i].json.size();
  std::string body;
  body.reserve(body_prefix_.size() + body_suffix_.size() + n + taken->bytes + 1);
  body += body_prefix_;
  for (size_t i = 0; i < n; ++i) {
    if (i) body += ',';
    body += queue_.front().json;
    queue_.pop_front();
  }
  body += body_suffix_;
  return body;
}

void SpanExporter::send_batch(size_t n) {
  Held h;
  std::string body = build_body(n, &h);
  if (opts_.kind == ExporterOptions::Kind::kFile) {
    start_file(std::move(body), h);
    return;
  }
  std::string error;
  std::unique_ptr<HttpSink::Request> req = http_->prepare(std::move(body), &error);
  if (!req) {
    ++stats_.failed_exports;
    series_.dropped_export_failed += n;
    release(h);
    warn(error + ": " + std::to_string(n) + " spans dropped");
    return;
  }
  auto b = std::make_unique<Batch>();
  b->req = std::move(req);
  b->spans = n;
  b->bytes = h.bytes;
  b->backoff_ms = opts_.retry_initial_ms;
  Batch* raw = b.get();
  batches_.push_back(std::move(b));
  start_http(raw);
}

void SpanExporter::start_http(Batch* b) {
  ++b->attempts;
  if (b->attempts > 1) ++stats_.retries;
  ++stats_.export_requests;
  b->waiting = false;
  b->started_ns = uv_hrtime();
  std::weak_ptr<int> alive = token_;
  http_->send(b->req.get(), [this, b, alive](CURLcode rc, long status) {
    if (!alive.expired()) on_http_done(b, rc, status);
  });
}

void SpanExporter::on_http_done(Batch* b, int result, long status) {
  if (closing_) {  // cancelled: stop() gave up, or the exporter is going away
    ++series_.req_cancelled;
    series_.dropped_stop_timeout += b->spans;
    finish_batch(b);
    return;
  }
  const uint64_t ms = (uv_hrtime() - b->started_ns) / 1'000'000;
  const HttpSink::Verdict v = HttpSink::judge(*b->req, static_cast<CURLcode>(result), status);
  if (v.outcome == HttpSink::Outcome::kSuccess) {
    note_request(series_.req_success, b->started_ns);
    series_.exported += b->spans;
    note_latency(ms);
    if (failing_) {
      failing_ = false;
      log_->info("export to {} works again", endpoint_shown_);
    }
    finish_batch(b);
  } else {
    note_request(v.outcome == HttpSink::Outcome::kHttpError ? series_.req_http_error
                 : v.outcome == HttpSink::Outcome::kTimeout ? series_.req_timeout
                                                            : series_.req_network_error,
                 b->started_ns);
    failing_ = true;
    if (v.retry) {
      uint64_t delay = b->backoff_ms;
      // Jitter: 80% to 120% of the backoff, so that workers do not retry in step.
      delay = delay * 8 / 10 + std::uniform_int_distribution<uint64_t>(0, delay * 4 / 10)(rng_);
      b->backoff_ms = std::min(b->backoff_ms * 2, opts_.retry_max_ms);
      if (v.retry_after_ms) delay = v.retry_after_ms;
      warn("export to " + endpoint_shown_ + " failed: " + v.what + "; retrying " +
           std::to_string(b->spans) + " spans in " + std::to_string(delay) + " ms");
      retry_later(b, delay);
    } else {
      ++stats_.failed_exports;
      series_.dropped_export_failed += b->spans;
      if (logged_statuses_.insert(v.key).second) {
        log_->error(
            "export to {} failed: {}; {} spans dropped (not retried; logged once per "
            "status)",
            endpoint_shown_, v.what, b->spans);
      } else {
        log_->debug("export to {} failed: {}; {} spans dropped", endpoint_shown_, v.what, b->spans);
      }
      finish_batch(b);
    }
  }
  schedule();
  close_when_drained();
}

void SpanExporter::retry_later(Batch* b, uint64_t delay_ms) {
  b->waiting = true;
  b->retry_at_ms = uv_now(loop_) + delay_ms;
  on_retry_timer();  // arms the timer for the earliest retry
}

void SpanExporter::on_retry_timer() {
  if (closing_ || !retry_timer_) return;
  const uint64_t now = uv_now(loop_);
  std::vector<Batch*> due;
  uint64_t next = UINT64_MAX;
  for (auto& b : batches_) {
    if (!b->waiting) continue;
    if (b->retry_at_ms <= now)
      due.push_back(b.get());
    else
      next = std::min(next, b->retry_at_ms);
  }
  if (next != UINT64_MAX)
    uv_timer_start(&retry_timer_->u.timer, &SpanExporter::on_timer, next - now, 0);
  else
    uv_timer_stop(&retry_timer_->u.timer);
  for (Batch* b : due)
    start_http(b);
}

void SpanExporter::start_file(std::string body, const Held& h) {
  const uint64_t started_ns = uv_hrtime();
  ++stats_.export_requests;
  body += '\n';
  const int rc = file_->append(std::move(body), [this, h, started_ns](int error, const char* step) {
    on_file_done(h, started_ns, error, step);
  });
  if (rc != 0) {
    // Cannot queue work (cannot happen on a live loop): report it like a failed write.
    note_request(series_.req_file_error, started_ns);
    ++stats_.failed_exports;
    series_.dropped_export_failed += h.spans;
    release(h);
    warn("cannot write to " + util::printable(opts_.file) + ": " + uv_strerror(rc));
  }
}

void SpanExporter::on_file_done(const Held& h, uint64_t started_ns, int error, const char* step) {
  release(h);
  if (error == 0) {
    note_request(series_.req_success, started_ns);
    series_.exported += h.spans;
    note_latency((uv_hrtime() - started_ns) / 1'000'000);
  } else {
    note_request(series_.req_file_error, started_ns);
    ++stats_.failed_exports;
    series_.dropped_export_failed += h.spans;
    warn(std::string("cannot ") + step + " " + util::printable(file_->path()) + ": " +
         std::strerror(error) + "; " + std::to_string(h.spans) + " spans dropped");
  }
  if (closing_) {
    finish_stop_if_closed();
    return;
  }
  schedule();
  close_when_drained();
}

bool SpanExporter::file_busy() const {
  return file_ && file_->busy();
}

void SpanExporter::finish_batch(Batch* b) {
  release(Held{b->spans, b->bytes});
  auto it = std::find_if(batches_.begin(), batches_.end(),
                         [b](const std::unique_ptr<Batch>& p) { return p.get() == b; });
  if (it != batches_.end()) batches_.erase(it);
}

void SpanExporter::note_request(metrics::Counter& outcome, uint64_t started_ns) {
  ++outcome;
  series_.latency.observe_us((uv_hrtime() - started_ns) / 1000);
}

void SpanExporter::note_latency(uint64_t ms) {
  latency_sum_ms_ += ms;
  ++latency_n_;
  stats_.export_latency_max_ms = std::max(stats_.export_latency_max_ms, ms);
}

void SpanExporter::warn(const std::string& msg) {
  if (!log_limiter_.allow(loop_ ? uv_now(loop_) : util::monotonic_ms())) return;
  const uint64_t n = log_limiter_.take_suppressed();
  if (n)
    log_->warn("{} ({} similar messages suppressed)", msg, n);
  else
    log_->warn("{}", msg);
}

void SpanExporter::stop(std::function<void()> done) {
  if (stopping_) return;
  stopping_ = true;
  stop_done_ = std::move(done);
  if (!loop_ || opts_.kind == ExporterOptions::Kind::kNone) {
    closing_ = finished_ = true;
    auto d = std::move(stop_done_);
    if (d) d();
    return;
  }
  stop_timer_ = make_timer(&SpanExporter::on_stop_deadline);
  uv_timer_start(&stop_timer_->u.timer, &SpanExporter::on_timer, opts_.timeout_ms, 0);
  // Batches waiting for a retry go now; queued spans leave without waiting for the interval.
  for (auto& b : batches_)
    if (b->waiting) b->retry_at_ms = uv_now(loop_);
  if (retry_timer_) uv_timer_start(&retry_timer_->u.timer, &SpanExporter::on_timer, 0, 0);
  pump();
}

void SpanExporter::close_when_drained() {
  if (!stopping_ || closing_) return;
  if (!queue_.empty() || !batches_.empty() || file_busy()) return;
  close_all();
}

void SpanExporter::on_stop_deadline() {
  if (closing_) return;
  const uint64_t left = held_.spans;
  // Spans not yet sent, and batches waiting for a retry; close_all() cancels the requests in
  // flight, and on_http_done() counts theirs.
  series_.dropped_stop_timeout += queue_.size();
  Held q{queue_.size(), 0};
  for (const Queued& e : queue_)
    q.bytes += e.json.size();
  release(q);
  queue_.clear();
  std::vector<Batch*> waiting;
  for (auto& b : batches_)
    if (b->waiting) waiting.push_back(b.get());
  for (Batch* b : waiting) {
    series_.dropped_stop_timeout += b->spans;
    finish_batch(b);
  }
  log_->warn("stop: {} spans not exported after {} ms; giving up", left, opts_.timeout_ms);
  close_all();
}

void SpanExporter::close_all() {
  if (closing_) return;
  closing_ = true;
  close_timer(flush_timer_);
  close_timer(retry_timer_);
  close_timer(stop_timer_);
  if (http_) {
    std::weak_ptr<int> alive = token_;
    http_->close([this, alive] {
      if (alive.expired()) return;
      http_closed_ = true;
      finish_stop_if_closed();
    });
  }
  finish_stop_if_closed();
}

void SpanExporter::finish_stop_if_closed() {
  if (!closing_ || finished_ || !stopping_) return;
  if (!timers_.empty() || (http_ && !http_closed_) || file_busy()) return;
  finished_ = true;
  auto d = std::move(stop_done_);
  stop_done_ = nullptr;
  if (d) d();
}

SpanExporter::Stats SpanExporter::stats() const {
  Stats s = stats_;
  s.exported = series_.exported.get();
  s.dropped_bytes = series_.dropped_queue_bytes.get();
  s.dropped = series_.dropped_queue_full.get() + s.dropped_bytes + series_.dropped_stopping.get();
  s.failed_spans = series_.dropped_export_failed.get() + series_.dropped_stop_timeout.get();
  s.queued = held_.spans;
  s.queued_bytes = held_.bytes;
  s.export_latency_avg_ms = latency_n_ ? latency_sum_ms_ / latency_n_ : 0;
  return s;
}

}  // namespace spoad::agents::tracing
