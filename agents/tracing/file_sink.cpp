#include "agents/tracing/file_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace spoad::agents::tracing {

// One append, run on libuv's thread pool: open, write, close. Freed by its completion, which
// may run after the sink is gone.
struct FileSink::Job {
  uv_work_t req{};
  FileSink* sink = nullptr;  // nulled when the sink is destroyed first
  std::string path;
  std::string data;
  Done done;
  int error = 0;  // errno of the failed step
  const char* step = "";
};

FileSink::~FileSink() {
  if (job_) job_->sink = nullptr;
}

int FileSink::append(std::string data, Done done) {
  auto* job = new Job;
  job->req.data = job;
  job->sink = this;
  job->path = path_;
  job->data = std::move(data);
  job->done = std::move(done);
  job_ = job;
  const int rc = uv_queue_work(
      loop_, &job->req,
      [](uv_work_t* req) {
        auto* j = static_cast<Job*>(req->data);
        const int fd = ::open(j->path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
          j->error = errno;
          j->step = "open";
          return;
        }
        size_t off = 0;
        while (off < j->data.size()) {
          const ssize_t w = ::write(fd, j->data.data() + off, j->data.size() - off);
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) {
            j->error = w < 0 ? errno : EIO;
            j->step = "write";
            break;
          }
          off += static_cast<size_t>(w);
        }
        if (::close(fd) != 0 && j->error == 0) {
          j->error = errno;
          j->step = "close";
        }
      },
      [](uv_work_t* req, int) {
        auto* j = static_cast<Job*>(req->data);
        if (j->sink) {
          j->sink->job_ = nullptr;
          j->done(j->error, j->step);  // may destroy the sink
        }
        delete j;
      });
  if (rc != 0) {
    job_ = nullptr;
    delete job;
  }
  return rc;
}

}  // namespace spoad::agents::tracing
