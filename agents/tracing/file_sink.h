// The tracing exporter's file sink: appends one batch (one JSON line) at a time to a file. The
// open, write and close run on libuv's thread pool (uv_queue_work), so a slow disk never
// stalls the loop; opening the path for each batch also follows log rotation.
#pragma once

#include <uv.h>

#include <functional>
#include <string>

namespace spoad::agents::tracing {

class FileSink {
 public:
  // `error`: 0, or the errno of the step that failed; `step`: "open", "write" or "close".
  using Done = std::function<void(int error, const char* step)>;

  // `loop` must outlive the sink; `path` is opened with O_APPEND | O_CREAT, mode 0644.
  FileSink(uv_loop_t* loop, std::string path) : loop_(loop), path_(std::move(path)) {}
  // Safe during a write: it finishes on the pool, and its `done` is not called.
  ~FileSink();
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  // True while a write runs (until just before its `done` is called).
  bool busy() const { return job_ != nullptr; }

  // Appends `data` to the file (write() until all of it is written, EINTR retried); `done`
  // runs on the loop afterwards, never inside append(), and may destroy the sink. Only when
  // not busy(). Returns 0, or the libuv error (negative) when the work cannot be queued:
  // `done` is then not called.
  int append(std::string data, Done done);

  const std::string& path() const { return path_; }

 private:
  struct Job;

  uv_loop_t* loop_;
  std::string path_;
  Job* job_ = nullptr;  // the write in progress
};

}  // namespace spoad::agents::tracing
