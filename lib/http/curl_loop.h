// libcurl's multi interface driven by a libuv loop: HTTP transfers that never block the loop.
// curl tells us which sockets to watch (one uv_poll_t each) and when to call it back (one
// uv_timer_t); completed transfers are reported to the caller's callback on the loop.
//
// Everything runs on the loop's thread: construct, add, cancel and close there.
#pragma once

#include <curl/curl.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "util/uv_handle.h"

namespace spoad::http {

class CurlLoop {
 public:
  // Called once per transfer. `result` is curl's code (CURLE_OK when an HTTP response was
  // received, whatever its status; CURLE_ABORTED_BY_CALLBACK when cancelled). `http_status`
  // is the response status (0 when no response arrived).
  using Done = std::function<void(CURLcode result, long http_status)>;

  // Calls curl_global_init(CURL_GLOBAL_DEFAULT) once per process. Throws std::runtime_error if
  // curl cannot make a multi handle. `loop` must outlive this object.
  explicit CurlLoop(uv_loop_t* loop);
  // Safe after close() (even before close's callback ran). Without close(), it frees the curl
  // state and closes the handles itself; pending `done` callbacks are then not called (their
  // transfers are removed from curl, so their owners may free the easy handles).
  ~CurlLoop();
  CurlLoop(const CurlLoop&) = delete;
  CurlLoop& operator=(const CurlLoop&) = delete;

  // Starts a transfer the caller configured (URL, body, headers, timeouts). `done` runs on the
  // loop when it finishes, never inside add() itself (a failure to start is reported on the
  // next loop iteration). The caller keeps ownership of `easy` and of whatever its options
  // point to until `done` ran; it may free `easy` in `done` or later. `done` may call add(),
  // cancel_all() or close(), but must not destroy this object (use close()). Once close() was
  // called, add() is refused: `done` then runs at once with CURLE_ABORTED_BY_CALLBACK.
  void add(CURL* easy, Done done);

  // Transfers added and not yet reported to their `done`.
  size_t active() const { return transfers_.size() + deferred_.size(); }

  // Stops every transfer; each pending `done` runs before cancel_all() returns, with
  // CURLE_ABORTED_BY_CALLBACK and status 0. Connections stay cached for later transfers.
  void cancel_all();

  // cancel_all(), then frees curl's state (closing its cached connections) and closes every
  // libuv handle; `done` runs on the loop once libuv has closed them all. Afterwards the
  // object may be destroyed (also before `done`, which then still runs). Call once.
  void close(std::function<void()> done);

  uv_loop_t* loop() const { return loop_; }

 private:
  struct Watched {
    curl_socket_t fd = CURL_SOCKET_BAD;  // polls: the socket curl asked us to watch
  };
  using Handles = util::UvHandles<CurlLoop, Watched>;
  using Handle = Handles::Box;  // a uv_poll_t or uv_timer_t
  struct Transfer {
    uint64_t seq;  // order of add(), for cancel_all()
    Done done;
  };
  struct Deferred {
    CURL* easy;
    Done done;
    CURLcode result;
  };

  static int on_curl_socket(CURL* easy, curl_socket_t s, int what, void* userp, void* socketp);
  static int on_curl_timer(CURLM* multi, long timeout_ms, void* userp);
  static void on_poll(uv_poll_t* h, int status, int events);
  static void on_timer(uv_timer_t* t);
  static void on_defer_timer(uv_timer_t* t);

  void socket_action(curl_socket_t s, int flags);
  void check_done();
  void run_deferred();

  uv_loop_t* loop_;
  CURLM* multi_ = nullptr;
  Handles handles_{this};          // every handle not yet freed (closing ones too)
  Handle* timer_ = nullptr;        // curl's timeout
  Handle* defer_timer_ = nullptr;  // reports transfers that could not start
  std::unordered_map<CURL*, Transfer> transfers_;
  uint64_t next_seq_ = 0;
  std::vector<Deferred> deferred_;
  bool closed_ = false;
};

}  // namespace spoad::http
