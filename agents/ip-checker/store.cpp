// The ip-checker's shared store in Redis (store.h, store_impl.h): the Store and its state, the
// timers (connect timeout, backoff, PING), failure and reconnection with backoff, stop and
// detach. The connections themselves are in store_connection.cpp.
//
// Lifetimes. The timers are util::UvHandles boxes: a close callback that runs after the Store
// is gone only frees its box. stop()'s `done` runs once both timers are closed.
#include <algorithm>
#include <random>
#include <stdexcept>

#include "agents/ip-checker/store_impl.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::agents::ip_checker {

using namespace store_detail;

Store::Impl::Impl(uv_loop_t* l, StoreOptions o, std::shared_ptr<spdlog::logger> lg, Callbacks c)
    : loop(l), opts(std::move(o)), log(std::move(lg)), cb(std::move(c)) {
  std::string why;
  if (!parse_url(opts.url, &url, &why)) throw std::invalid_argument("store url: " + why);
  if (!log) log = util::make_logger("ip-checker");
  shown = shown_url(url);
  channel = opts.key_prefix + "changes";
  entry_head = opts.key_prefix + "entry:";
  scan_pattern = glob_escape(entry_head) + "*";
  std::random_device rd;
  origin = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  down_since_s = now_s();
  phase_timer = new_timer();
  ping_timer = new_timer();
}

Store::Impl::~Impl() {
  stopping = true;
  teardown_session();
  // `timers`' destructor closes the timers still open; their close callbacks only free them.
}

Store::Impl::TimerBox* Store::Impl::new_timer() {
  TimerBox* t = timers.make();
  uv_timer_init(loop, &t->u.timer);  // cannot fail
  return t;
}

void Store::Impl::log_state(spdlog::level::level_enum lvl, const std::string& msg) {
  if (!state_log.allow(uv_now(loop))) return;
  const uint64_t n = state_log.take_suppressed();
  if (n)
    log->log(lvl, "store {}: {} ({} similar lines suppressed)", shown, msg, n);
  else
    log->log(lvl, "store {}: {}", shown, msg);
}

void Store::Impl::skip_malformed(const char* what, std::string_view where, std::string_view bytes,
                                 const std::string& why) {
  ++malformed;
  if (!bad_log.allow(uv_now(loop))) return;
  const uint64_t n = bad_log.take_suppressed();
  log->warn("store {}: skipped a malformed {} {}: {} ({}){}", shown, what,
            util::printable(where, 128), why, util::printable(bytes, 128),
            n ? " (" + std::to_string(n) + " similar lines suppressed)" : "");
}

void Store::Impl::on_phase_timer(uv_timer_t* h) {
  TimerBox* t = TimerBox::from(h);
  if (!t->live()) return;
  Impl* self = t->owner();
  try {
    if (self->state == State::kBackoff) {
      ++self->reconnects;
      self->attempt();
    } else if (self->state == State::kConnecting) {
      self->fail("no connection within " + std::to_string(kConnectTimeoutMs / 1000) + " s");
    } else if (!self->deferred_failure.empty()) {
      self->fail(std::move(self->deferred_failure));
    }
  } catch (...) {
  }
}

void Store::Impl::on_ping_timer(uv_timer_t* h) {
  TimerBox* t = TimerBox::from(h);
  if (!t->live()) return;
  Impl* self = t->owner();
  try {
    if (self->state != State::kSyncing && self->state != State::kUp) return;
    const uint64_t now = uv_now(self->loop);
    if (self->ping_out) {
      if (now - self->ping_sent_ms >= kPingTimeoutMs)
        self->fail("no answer to PING in " + std::to_string(kPingTimeoutMs / 1000) + " s");
      return;
    }
    if (!self->send(self->cmd, Op::kPing, {"PING"})) return self->fail("cannot send PING");
    self->ping_out = true;
    self->ping_sent_ms = now;
  } catch (...) {
  }
}

void Store::Impl::on_timer_closed(TimerBox* t) {
  if (phase_timer == t) phase_timer = nullptr;
  if (ping_timer == t) ping_timer = nullptr;
  if (!timers.empty()) return;
  if (auto done = std::move(stop_done)) {
    try {
      done();
    } catch (...) {
    }
  }
}

void Store::Impl::fail(std::string why) {
  if (state == State::kIdle || state == State::kStopped || state == State::kBackoff) return;
  const bool was_up = up;
  teardown_session();
  up = false;
  if (was_up) down_since_s = now_s();
  state = State::kBackoff;
  uv_timer_start(&phase_timer->u.timer, &on_phase_timer, backoff_ms, 0);
  // While Redis stays away, the same reason is logged once a minute (debug otherwise).
  const std::string line = (was_up ? "disconnected: " : "not connected: ") + why + "; retry in " +
                           std::to_string(backoff_ms) + " ms (lookups go on with the entries held)";
  const uint64_t now = uv_now(loop);
  if (was_up || why != last_why || now - last_why_ms >= 60'000) {
    last_why = why;
    last_why_ms = now;
    log_state(spdlog::level::warn, line);
  } else {
    log->debug("store {}: {}", shown, line);
  }
  backoff_ms = std::min(backoff_ms * 2, kBackoffMaxMs);
  if (was_up && cb.on_state) safe("on_state", [&] { cb.on_state(false); });
}

void Store::Impl::fail_later(std::string why) {
  if (state != State::kSyncing && state != State::kUp) return;
  if (deferred_failure.empty()) deferred_failure = std::move(why);
  uv_timer_start(&phase_timer->u.timer, &on_phase_timer, 0, 0);
}

void Store::Impl::stop(std::function<void()> done) {
  if (state == State::kStopped) return;
  stopping = true;
  teardown_session();
  state = State::kStopped;
  up = false;
  if (down_since_s == 0) down_since_s = now_s();
  stop_done = std::move(done);
  timers.close_all();
}

void Store::Impl::detach() {
  if (detached) return;
  detached = true;
  for (TimerBox* t : {phase_timer, ping_timer})
    if (t) uv_unref(&t->u.handle);
  for (Conn* c : {&cmd, &sub})
    if (c->ac) unref_conn(c->ac);
}

Store::Store(uv_loop_t* loop, StoreOptions opts, std::shared_ptr<spdlog::logger> log, Callbacks cb)
    : impl_(std::make_unique<Impl>(loop, std::move(opts), std::move(log), std::move(cb))) {}

Store::~Store() = default;

void Store::start() {
  impl_->start();
}
void Store::stop(std::function<void()> done) {
  impl_->stop(std::move(done));
}
void Store::detach() {
  impl_->detach();
}
bool Store::connected() const {
  return impl_->up;
}
int64_t Store::disconnected_since_s() const {
  return impl_->up ? 0 : impl_->down_since_s;
}
bool Store::write(const Change& c, std::string* err) {
  return impl_->write(c, err);
}
uint64_t Store::write_failures() const {
  return impl_->write_failures;
}
uint64_t Store::changes_received() const {
  return impl_->changes_received;
}
uint64_t Store::resyncs() const {
  return impl_->resyncs;
}
uint64_t Store::reconnects() const {
  return impl_->reconnects;
}
uint64_t Store::malformed() const {
  return impl_->malformed;
}
uint64_t Store::budget_refusals() const {
  return impl_->budget_refusals;
}

}  // namespace spoad::agents::ip_checker
