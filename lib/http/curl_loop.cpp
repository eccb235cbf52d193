#include "http/curl_loop.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>

namespace spoad::http {

namespace {

std::once_flag g_curl_init;

// Shared by the handles close() closes: the last one to be freed calls `done`.
struct CloseState {
  size_t left = 0;
  std::function<void()> done;
};

}  // namespace

CurlLoop::CurlLoop(uv_loop_t* loop) : loop_(loop) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  multi_ = curl_multi_init();
  if (!multi_) throw std::runtime_error("curl_multi_init failed");
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &CurlLoop::on_curl_socket);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &CurlLoop::on_curl_timer);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  timer_ = handles_.make();
  uv_timer_init(loop_, &timer_->u.timer);
  defer_timer_ = handles_.make();
  uv_timer_init(loop_, &defer_timer_->u.timer);
}

CurlLoop::~CurlLoop() {
  if (!closed_) {
    closed_ = true;
    for (auto& [easy, t] : transfers_)
      curl_multi_remove_handle(multi_, easy);
    transfers_.clear();
    deferred_.clear();
    handles_.close_all();
    curl_multi_cleanup(multi_);
    multi_ = nullptr;
  }
  // handles_ goes last: the boxes still closing forget this object.
}

void CurlLoop::add(CURL* easy, Done done) {
  if (closed_) {
    if (done) done(CURLE_ABORTED_BY_CALLBACK, 0);
    return;
  }
  CURLcode fail = CURLE_OK;
  if (!easy || transfers_.contains(easy)) {
    fail = CURLE_BAD_FUNCTION_ARGUMENT;
  } else {
    const CURLMcode mc = curl_multi_add_handle(multi_, easy);
    if (mc == CURLM_OUT_OF_MEMORY)
      fail = CURLE_OUT_OF_MEMORY;
    else if (mc != CURLM_OK)
      fail = CURLE_FAILED_INIT;
  }
  if (fail != CURLE_OK) {
    deferred_.push_back(Deferred{easy, std::move(done), fail});
    uv_timer_start(&defer_timer_->u.timer, &CurlLoop::on_defer_timer, 0, 0);
    return;
  }
  transfers_.emplace(easy, Transfer{next_seq_++, std::move(done)});
}

void CurlLoop::cancel_all() {
  std::vector<std::pair<uint64_t, Done>> pending;
  pending.reserve(transfers_.size());
  for (auto& [easy, t] : transfers_) {
    if (multi_) curl_multi_remove_handle(multi_, easy);
    pending.emplace_back(t.seq, std::move(t.done));
  }
  transfers_.clear();
  // In the order they were added.
  std::sort(pending.begin(), pending.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Deferred> deferred = std::move(deferred_);
  deferred_.clear();
  for (auto& d : deferred)
    if (d.done) d.done(CURLE_ABORTED_BY_CALLBACK, 0);
  for (auto& p : pending)
    if (p.second) p.second(CURLE_ABORTED_BY_CALLBACK, 0);
}

void CurlLoop::close(std::function<void()> done) {
  if (closed_) return;
  closed_ = true;  // from now on add() refuses, and curl's callbacks start nothing
  cancel_all();
  auto st = std::make_shared<CloseState>();
  st->done = std::move(done);
  // Stop watching curl's sockets before curl closes them. `done` runs once every handle is
  // freed, also the ones already closing; this object may be gone by then.
  const std::vector<Handle*> hs(handles_.boxes().begin(), handles_.boxes().end());
  st->left = hs.size();
  for (Handle* h : hs) {
    handles_.close(h, [st] {
      if (--st->left == 0 && st->done) {
        auto d = std::move(st->done);
        d();
      }
    });
  }
  timer_ = defer_timer_ = nullptr;
  curl_multi_cleanup(multi_);  // closes the cached connections
  multi_ = nullptr;
  if (st->left == 0 && st->done) {
    auto d = std::move(st->done);
    d();
  }
}

int CurlLoop::on_curl_socket(CURL*, curl_socket_t s, int what, void* userp, void* socketp) {
  auto* self = static_cast<CurlLoop*>(userp);
  auto* h = static_cast<Handle*>(socketp);
  if (what == CURL_POLL_REMOVE) {
    // curl is done with the socket and may close it right after: stop polling it now.
    if (h) {
      if (!self->closed_) curl_multi_assign(self->multi_, s, nullptr);
      self->handles_.close(h);
    }
    return 0;
  }
  if (self->closed_) return 0;
  if (!h) {
    h = self->handles_.make();
    h->extra.fd = s;
    if (uv_poll_init_socket(self->loop_, &h->u.poll, s) != 0) {
      self->handles_.discard(h);
      return -1;
    }
    curl_multi_assign(self->multi_, s, h);
  }
  if (h->closing()) return 0;
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  uv_poll_start(&h->u.poll, events, &CurlLoop::on_poll);
  return 0;
}

int CurlLoop::on_curl_timer(CURLM*, long timeout_ms, void* userp) {
  auto* self = static_cast<CurlLoop*>(userp);
  if (self->closed_ || !self->timer_) return 0;
  uv_timer_t* t = &self->timer_->u.timer;
  if (timeout_ms < 0)
    uv_timer_stop(t);
  else
    uv_timer_start(t, &CurlLoop::on_timer, static_cast<uint64_t>(timeout_ms), 0);
  return 0;
}

void CurlLoop::on_poll(uv_poll_t* p, int status, int events) {
  auto* h = Handle::from(p);
  if (!h->live()) return;
  int flags = 0;
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  h->owner()->socket_action(h->extra.fd, flags);
}

void CurlLoop::on_timer(uv_timer_t* t) {
  auto* h = Handle::from(t);
  if (!h->live()) return;
  h->owner()->socket_action(CURL_SOCKET_TIMEOUT, 0);
}

void CurlLoop::on_defer_timer(uv_timer_t* t) {
  auto* h = Handle::from(t);
  if (!h->live()) return;
  h->owner()->run_deferred();
}

void CurlLoop::socket_action(curl_socket_t s, int flags) {
  if (!multi_) return;
  int running = 0;
  curl_multi_socket_action(multi_, s, flags, &running);
  check_done();
}

void CurlLoop::check_done() {
  // A `done` may call add(), cancel_all() or close(): re-check multi_ at each step.
  while (multi_) {
    int left = 0;
    CURLMsg* m = curl_multi_info_read(multi_, &left);
    if (!m) break;
    if (m->msg != CURLMSG_DONE) continue;
    CURL* easy = m->easy_handle;
    auto it = transfers_.find(easy);
    if (it == transfers_.end()) continue;  // not ours (cannot happen): do not touch it
    const CURLcode result = m->data.result;
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(multi_, easy);
    Done done = std::move(it->second.done);
    transfers_.erase(it);
    if (done) done(result, status);
  }
}

void CurlLoop::run_deferred() {
  std::vector<Deferred> ds = std::move(deferred_);
  deferred_.clear();
  for (auto& d : ds)
    if (d.done) d.done(d.result, 0);
}

}  // namespace spoad::http
