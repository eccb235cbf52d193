// A master CLI client: its socket, the framing of its input into commands, its queue and its
// budgets (master_session.h).
#include "cli/master_session.h"

#include <string>
#include <utility>

namespace spoad::cli {

MasterCli::Session::Session(MasterCli& cli) : cli_(cli) {
  uv_pipe_init(cli_.loop_, &pipe_, 0);
  pipe_.data = this;
  uv_timer_init(cli_.loop_, &timer_);
  timer_.data = this;
}

int MasterCli::Session::accept(uv_stream_t* listener) {
  const int rc = uv_accept(listener, stream());
  if (rc != 0) return rc;
  uv_read_start(stream(), on_alloc, on_read);
  touch();
  return 0;
}

void MasterCli::Session::close() {
  if (closed_) return;
  closed_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), on_close);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
}

void MasterCli::Session::touch() {
  uv_timer_start(&timer_, on_idle, kIdleTimeoutMs, 0);
}

void MasterCli::Session::on_idle(uv_timer_t* t) {
  auto* s = static_cast<Session*>(t->data);
  ++s->cli_.stats_.idle_timeouts;
  s->close();
}

void MasterCli::Session::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* s = static_cast<Session*>(h->data);
  *buf = uv_buf_init(s->rbuf_, sizeof(s->rbuf_));
}

void MasterCli::Session::on_read(uv_stream_t* st, ssize_t n, const uv_buf_t*) {
  auto* s = static_cast<Session*>(st->data);
  if (n < 0) {
    // EOF: answer what was asked, then close (socat half-closes after sending).
    s->eof_ = true;
    uv_read_stop(st);
    if (!s->in_.empty()) s->take_line(s->in_);  // a last line without '\n'
    s->in_.clear();
    s->run();
    return;
  }
  s->touch();
  s->in_.append(s->rbuf_, static_cast<size_t>(n));
  s->take_lines();
}

void MasterCli::Session::take_lines() {
  const Limits& lim = cli_.limits_;
  size_t start = 0, nl;
  while (!closed_ && !stop_reading_ && (nl = in_.find('\n', start)) != std::string::npos) {
    if (nl - start > lim.max_line) return too_long();
    take_line(std::string_view(in_).substr(start, nl - start));
    start = nl + 1;
    run();
    if (queued_bytes_ > lim.max_queued)
      return refuse("Too many pending commands (more than " + std::to_string(lim.max_queued) +
                        " bytes queued).\n",
                    cli_.stats_.queue_full,
                    "more than " + std::to_string(lim.max_queued) + " bytes of commands queued");
  }
  if (closed_ || stop_reading_) return;
  in_.erase(0, start);
  if (in_.size() > lim.max_line) too_long();
}

void MasterCli::Session::too_long() {
  const size_t max = cli_.limits_.max_line;
  refuse("Command line too long (more than " + std::to_string(max) + " bytes).\n",
         cli_.stats_.line_too_long, "a line longer than " + std::to_string(max) + " bytes");
}

void MasterCli::Session::refuse(std::string text, uint64_t& counter, const std::string& why) {
  cli_.budget_hit(counter, why);
  if (!closed_) uv_read_stop(stream());
  stop_reading_ = true;
  in_.clear();
  in_.shrink_to_fit();
  queue_.clear();
  queued_bytes_ = 0;
  last_words_ = std::move(text);
  run();
}

void MasterCli::Session::take_line(std::string_view line) {
  // Like HAProxy, a blank line still gets an answer in prompt mode: the prompt, once.
  // Empty commands (";;", a trailing ';') are ignored.
  if (line.find_first_not_of(" \t\r") == std::string::npos) {
    if (prompt_) push({});
    return;
  }
  for (Words& w : split_commands(line))
    if (!w.empty()) push(std::move(w));
}

void MasterCli::Session::push(Words w) {
  size_t cost = kQueuedOverhead;
  for (const std::string& x : w)
    cost += x.size();
  queued_bytes_ += cost;
  queue_.push_back({std::move(w), cost});
}

std::string MasterCli::Session::prompt_text() {
  std::string p = !target_agent_.empty() ? target_agent_
                  : target_              ? std::to_string(target_)
                                         : std::string("master");
  if (!target_ && cli_.backend_.last_reload_failed()) p += "[ReloadFailed]";
  return p + "> ";
}

void MasterCli::Session::answer(const std::string& text) {
  std::string out = text;
  if (!prompt_ || !text.empty()) out += "\n";
  if (prompt_) out += prompt_text();
  write(out);
}

void MasterCli::Session::run() {
  // A command may complete at once (a worker that is gone) and call run() again: the loop
  // below goes on instead, so that the stack does not grow with the queue.
  if (running_) return;
  running_ = true;
  while (!closed_ && !busy_ && !finishing_ && !queue_.empty()) {
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    queued_bytes_ -= p.cost;
    execute(std::move(p.words));
  }
  running_ = false;
  if (closed_ || busy_) return;
  if (!last_words_.empty()) {
    write(std::exchange(last_words_, std::string()));
    finish();
    return;
  }
  if (queue_.empty() && (eof_ || finishing_)) finish();
}

void MasterCli::Session::write(const std::string& s) {
  if (closed_ || s.empty()) return;
  auto* req = new WriteReq;
  req->data = s;
  req->req.data = this;
  uv_buf_t b = uv_buf_init(req->data.data(), req->data.size());
  pending_ += s.size();
  if (uv_write(&req->req, stream(), &b, 1, on_write) != 0) {
    pending_ -= s.size();
    delete req;
    close();
    return;
  }
  ++refs_;
  if (pending_ > kMaxPendingOutput) {  // the client does not read
    cli_.budget_hit(cli_.stats_.slow_readers,
                    "more than " + std::to_string(kMaxPendingOutput) + " bytes of answers unread");
    close();
  }
}

void MasterCli::Session::on_write(uv_write_t* r, int) {
  auto* req = reinterpret_cast<WriteReq*>(r);
  auto* s = static_cast<Session*>(r->data);
  s->pending_ -= req->data.size();
  delete req;
  if (s->finishing_ && s->pending_ == 0) s->close();
  s->unref();
}

void MasterCli::Session::unref() {
  if (--refs_ == 0 && handles_closed_ == 2) delete this;
}

void MasterCli::Session::finish() {
  finishing_ = true;
  if (!stop_reading_ && !closed_) uv_read_stop(stream());
  stop_reading_ = true;
  in_.clear();
  queue_.clear();
  queued_bytes_ = 0;
  if (pending_ == 0) close();
}

void MasterCli::Session::on_close(uv_handle_t* h) {
  auto* s = static_cast<Session*>(h->data);
  if (++s->handles_closed_ < 2) return;
  s->cli_.session_closed(s);
  if (s->refs_ == 0) delete s;
}

}  // namespace spoad::cli
