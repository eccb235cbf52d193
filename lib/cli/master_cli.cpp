#include "cli/master_cli.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "util/escape.h"
#include "util/log.h"

namespace spoad::cli {

namespace {

// One queued command: its words and what it counts against Limits::max_queued (bytes).
struct Pending {
  Words words;
  size_t cost = 0;
};

// The sample lines of a text exposition (format 0.0.4): every line but comments and blanks.
std::string sample_lines(std::string_view text) {
  std::string out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    const std::string_view line = text.substr(start, nl - start);
    if (!line.empty() && line[0] != '#') {
      out.append(line);
      out += '\n';
    }
    start = nl + 1;
  }
  return out;
}

// One sample line `name{a="x",b="y\"z"} value` as {"name", "labels", "value"}; null when the
// line is not one (never, for what metrics::render writes).
nlohmann::json sample_json(std::string_view line) {
  size_t i = line.find_first_of("{ ");
  if (i == std::string_view::npos || i == 0) return nullptr;
  nlohmann::json o = nlohmann::json::object();
  o["name"] = std::string(line.substr(0, i));
  nlohmann::json labels = nlohmann::json::object();
  if (line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      const size_t eq = line.find('=', i);
      if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"')
        return nullptr;
      const std::string name(line.substr(i, eq - i));
      std::string value;
      size_t j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < line.size()) {
          ++j;
          value += line[j] == 'n' ? '\n' : line[j];
        } else {
          value += line[j];
        }
      }
      if (j >= line.size()) return nullptr;
      labels[name] = util::to_utf8(value);
      i = j + 1;
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return nullptr;
    ++i;  // '}'
  }
  if (i >= line.size() || line[i] != ' ') return nullptr;
  const std::string v(line.substr(i + 1));
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  o["labels"] = std::move(labels);
  if (end == v.c_str() || *end != '\0' || !std::isfinite(d))
    o["value"] = v;  // +Inf, NaN: as written
  else if (d >= 0 && d < 9007199254740992.0 && d == std::floor(d))
    o["value"] = static_cast<uint64_t>(d);
  else
    o["value"] = d;
  return o;
}

}  // namespace

class MasterCli::Session {
 public:
  Session(MasterCli& cli) : cli_(cli) {
    uv_pipe_init(cli_.loop_, &pipe_, 0);
    pipe_.data = this;
    uv_timer_init(cli_.loop_, &timer_);
    timer_.data = this;
  }

  int accept(uv_stream_t* listener) {
    const int rc = uv_accept(listener, stream());
    if (rc != 0) return rc;
    uv_read_start(stream(), on_alloc, on_read);
    touch();
    return 0;
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), on_close);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
  }

  // The worker answering a routed command may come back after the session closed: the
  // session stays allocated until then (busy_), so the callback can check `closed_`.
  bool closed() const { return closed_; }

 private:
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&pipe_); }

  void touch() { uv_timer_start(&timer_, on_idle, kIdleTimeoutMs, 0); }

  static void on_idle(uv_timer_t* t) {
    auto* s = static_cast<Session*>(t->data);
    ++s->cli_.stats_.idle_timeouts;
    s->close();
  }

  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* s = static_cast<Session*>(h->data);
    *buf = uv_buf_init(s->rbuf_, sizeof(s->rbuf_));
  }

  static void on_read(uv_stream_t* st, ssize_t n, const uv_buf_t*) {
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

  // Runs the whole lines received, as long as nothing waits; queues them behind a command in
  // flight, within the budgets.
  void take_lines() {
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

  void too_long() {
    const size_t max = cli_.limits_.max_line;
    refuse("Command line too long (more than " + std::to_string(max) + " bytes).\n",
           cli_.stats_.line_too_long, "a line longer than " + std::to_string(max) + " bytes");
  }

  // A budget is exceeded: read nothing more, drop what waits, answer the command in flight (if
  // any), then `text`, then close.
  void refuse(std::string text, uint64_t& counter, const std::string& why) {
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

  void take_line(std::string_view line) {
    // Like HAProxy, a blank line still gets an answer in prompt mode: the prompt, once.
    // Empty commands (";;", a trailing ';') are ignored.
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      if (prompt_) push({});
      return;
    }
    for (Words& w : split_commands(line))
      if (!w.empty()) push(std::move(w));
  }

  void push(Words w) {
    size_t cost = kQueuedOverhead;
    for (const std::string& x : w)
      cost += x.size();
    queued_bytes_ += cost;
    queue_.push_back({std::move(w), cost});
  }

  std::string prompt_text() {
    std::string p = !target_agent_.empty() ? target_agent_
                    : target_              ? std::to_string(target_)
                                           : std::string("master");
    if (!target_ && cli_.backend_.last_reload_failed()) p += "[ReloadFailed]";
    return p + "> ";
  }

  // Output of one command: its text, the empty line that ends every answer, the prompt.
  void answer(const std::string& text) {
    std::string out = text;
    if (!prompt_ || !text.empty()) out += "\n";
    if (prompt_) out += prompt_text();
    write(out);
  }

  void run() {
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

  void execute(Words w) {
    if (w.empty()) {  // a blank line in prompt mode, whatever the target: the prompt
      if (prompt_) write(prompt_text());
      return;
    }
    int target = target_;
    std::string agent = target_agent_;
    const Route r = parse_route(w[0]);
    if (r.kind != Route::Kind::kNone) {
      int pid = 0;
      agent.clear();
      if (r.kind == Route::Kind::kRelative) pid = cli_.backend_.worker_by_relative_pid(r.number);
      if (r.kind == Route::Kind::kPid && cli_.backend_.is_worker(r.number))
        pid = static_cast<int>(r.number);
      if (r.kind == Route::Kind::kAgent) {
        std::vector<PoolMember> members;
        if (!cli_.backend_.agent_workers(r.name, &members)) {
          write(no_agent(r.name));
          finish();
          return;
        }
        agent = r.name;
      } else if (r.kind == Route::Kind::kInvalid || (r.kind != Route::Kind::kMaster && pid == 0)) {
        write("Can't find the target PID matching the prefix '" + util::printable(w[0], 64) +
              "'\n");
        finish();
        return;
      }
      w.erase(w.begin());
      if (w.empty()) {  // "@N" or "@<agent>" alone: the target of the next commands
        target_ = pid;
        target_agent_ = agent;
        if (prompt_) write(prompt_text());
        return;
      }
      target = pid;
    }
    if (!agent.empty()) {
      pool_command(agent, w);
      return;
    }
    if (target != 0) {
      busy_ = true;
      ++refs_;
      // The words as parsed here reach the worker unchanged: nothing is joined or split again.
      cli_.backend_.worker_command(target, w, [this](WorkerAnswer a) {
        busy_ = false;
        if (!closed_) {
          const bool answered =
              a.status == WorkerAnswer::Status::kOk || a.status == WorkerAnswer::Status::kFailed;
          answer(answered ? a.text : std::string("Can't connect to the target CLI!\n"));
          run();
        }
        unref();
      });
      return;
    }
    master_command(w);
  }

  static std::string no_agent(const std::string& name) {
    return "Can't find the target agent matching the prefix '@" + util::printable(name, 64) + "'\n";
  }

  // `@<agent> CMD`: CMD to every live worker of the pool at once; one answer once all are in
  // (pool_answer). Each worker's answer is bounded by the master's CLI timeout.
  void pool_command(const std::string& agent, const Words& w) {
    struct Call {
      std::string agent;
      std::vector<PoolMember> members;
      std::vector<WorkerAnswer> answers;
      size_t left = 0;
    };
    auto call = std::make_shared<Call>();
    call->agent = agent;
    if (!cli_.backend_.agent_workers(agent, &call->members)) {
      // The sticky target's agent left the configuration (a reload) and its workers exited.
      answer(no_agent(agent));
      return;
    }
    call->answers.resize(call->members.size());
    call->left = call->members.size() + 1;  // + 1: ours, dropped once every command is sent
    busy_ = true;
    ++refs_;
    auto one_done = [this, call] {
      if (--call->left > 0) return;
      busy_ = false;
      if (!closed_) {
        answer(pool_answer(call->agent, call->members, call->answers));
        run();
      }
      unref();
    };
    for (size_t i = 0; i < call->members.size(); ++i)
      cli_.backend_.worker_command(call->members[i].pid, w, [call, i, one_done](WorkerAnswer a) {
        call->answers[i] = std::move(a);
        one_done();
      });
    ++cli_.stats_.pool_commands;
    one_done();
  }

  void master_command(const Words& w) {  // `w` is not empty
    if (w[0] == "quit") {
      finish();
      return;
    }
    if (w[0] == "prompt") {
      prompt_ = !prompt_;
      if (prompt_) write(prompt_text());
      return;
    }
    if (w[0] == "help") {
      answer(help_message(commands()));
      return;
    }
    if (w.size() == 2 && w[0] == "show" && w[1] == "proc") {
      answer(cli_.backend_.show_proc());
      return;
    }
    if (w.size() == 2 && w[0] == "show" && w[1] == "version") {
      answer(cli_.backend_.version() + "\n");
      return;
    }
    const bool json = w.size() == 3 && w[2] == "json";
    if ((w.size() == 2 || json) && w[0] == "show" && w[1] == "info") {
      const Fields f = cli_.info();
      answer(json ? info_json(f, 0) : info_text(f));
      return;
    }
    if ((w.size() == 2 || json) && w[0] == "show" && w[1] == "stat") {
      answer(json ? cli_.stat_json() : cli_.stat_text());
      return;
    }
    if (w.size() == 1 && w[0] == "reload") {
      // As HAProxy 2.7+: synchronous, the last command of the connection.
      busy_ = true;
      queue_.clear();
      queued_bytes_ = 0;
      ++refs_;
      cli_.backend_.reload([this](std::string out) {
        busy_ = false;
        if (!closed_) {
          write(out);
          finish();
        }
        unref();
      });
      return;
    }
    answer(unknown_command_message(commands(), w));
  }

  void write(const std::string& s) {
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
      cli_.budget_hit(cli_.stats_.slow_readers, "more than " + std::to_string(kMaxPendingOutput) +
                                                    " bytes of answers unread");
      close();
    }
  }

  static void on_write(uv_write_t* r, int) {
    auto* req = reinterpret_cast<WriteReq*>(r);
    auto* s = static_cast<Session*>(r->data);
    s->pending_ -= req->data.size();
    delete req;
    if (s->finishing_ && s->pending_ == 0) s->close();
    s->unref();
  }

  // Drops one reference; frees the session once its handles are closed and nothing refers
  // to it any more.
  void unref() {
    if (--refs_ == 0 && handles_closed_ == 2) delete this;
  }

  // Closes once the output is written.
  void finish() {
    finishing_ = true;
    if (!stop_reading_ && !closed_) uv_read_stop(stream());
    stop_reading_ = true;
    in_.clear();
    queue_.clear();
    queued_bytes_ = 0;
    if (pending_ == 0) close();
  }

  static void on_close(uv_handle_t* h) {
    auto* s = static_cast<Session*>(h->data);
    if (++s->handles_closed_ < 2) return;
    s->cli_.session_closed(s);
    if (s->refs_ == 0) delete s;
  }

  struct WriteReq {
    uv_write_t req;
    std::string data;
  };

  MasterCli& cli_;
  uv_pipe_t pipe_;
  uv_timer_t timer_;
  char rbuf_[4096];
  std::string in_;  // received, not yet split into commands: at most max_line + one read
  std::deque<Pending> queue_;
  size_t queued_bytes_ = 0;   // the costs of queue_
  std::string last_words_;    // a budget's error line, written once nothing is in flight
  int target_ = 0;            // 0: the master; else a worker pid
  std::string target_agent_;  // not empty: the pool of this agent is the target
  bool prompt_ = false;
  bool running_ = false;  // in run()
  bool busy_ = false;
  bool eof_ = false;
  bool finishing_ = false;
  bool stop_reading_ = false;
  bool closed_ = false;
  int handles_closed_ = 0;
  int refs_ = 0;  // writes and worker/reload callbacks still to come
  size_t pending_ = 0;
};

const std::vector<CommandInfo>& MasterCli::commands() {
  static const std::vector<CommandInfo> c = {
      {{"@<relative pid>"},
       usage_line("@<relative pid>", "send a command to the <relative pid> process")},
      {{"@!<pid>"}, usage_line("@!<pid>", "send a command to the <pid> process")},
      {{"@<agent name>"},
       usage_line("@<agent name>",
                  "send a command to every worker of that agent; one answer, with how many "
                  "applied it")},
      {{"@master"}, usage_line("@master", "send a command to the master process")},
      {{"reload"}, usage_line("reload", "reload spoad: new workers, then soft-stop the old ones")},
      {{"show", "proc"}, usage_line("show proc", "show processes status")},
      {{"show", "info"},
       usage_line("show info [json]",
                  "report information about the master (reloads, CLI budgets)")},
      {{"show", "stat"},
       usage_line("show stat [json]",
                  "report the master's counters and the metrics of every agent (live and exited "
                  "workers summed)")},
      {{"show", "version"}, usage_line("show version", "show version of the current process")},
  };
  return c;
}

MasterCli::MasterCli(uv_loop_t* loop, MasterBackend& backend, Limits limits)
    : loop_(loop), backend_(backend), limits_(limits) {}

void MasterCli::budget_hit(uint64_t& counter, const std::string& why) {
  ++counter;
  if (!log_limiter_.allow(uv_now(loop_))) return;
  const uint64_t held = log_limiter_.take_suppressed();
  util::make_logger("spoad")->warn(
      "master CLI: client closed: {}{}", why,
      held ? " (" + std::to_string(held) + " similar lines not logged)" : std::string());
}

Fields MasterCli::info() {
  Fields f = backend_.info();
  f.emplace_back("CliCurrClients", sessions_.size());
  f.emplace_back("CliCumClients", stats_.clients_total);
  f.emplace_back("CliMaxLine", limits_.max_line);
  f.emplace_back("CliMaxQueued", limits_.max_queued);
  f.emplace_back("CliLineTooLong", stats_.line_too_long);
  f.emplace_back("CliQueueFull", stats_.queue_full);
  f.emplace_back("CliSlowReaders", stats_.slow_readers);
  f.emplace_back("CliIdleTimeouts", stats_.idle_timeouts);
  f.emplace_back("CliPoolCommands", stats_.pool_commands);
  return f;
}

Fields MasterCli::stat_row() {
  return {
      {"process", "master"},
      {"pid", ::getpid()},
      {"cli_clients", sessions_.size()},
      {"cli_cum_clients", stats_.clients_total},
      {"cli_line_too_long", stats_.line_too_long},
      {"cli_queue_full", stats_.queue_full},
      {"cli_slow_readers", stats_.slow_readers},
      {"cli_idle_timeouts", stats_.idle_timeouts},
      {"cli_pool_commands", stats_.pool_commands},
  };
}

std::string MasterCli::stat_text() {
  return stat_csv({stat_row()}) + sample_lines(backend_.metrics_exposition());
}

std::string MasterCli::stat_json() {
  nlohmann::json o = nlohmann::json::object();
  for (const auto& [k, v] : stat_row())
    o[k] = v;
  nlohmann::json samples = nlohmann::json::array();
  const std::string lines = sample_lines(backend_.metrics_exposition());
  size_t start = 0;
  while (start < lines.size()) {
    const size_t nl = lines.find('\n', start);
    nlohmann::json s = sample_json(std::string_view(lines).substr(start, nl - start));
    if (!s.is_null()) samples.push_back(std::move(s));
    start = nl + 1;
  }
  return nlohmann::json{{"master", o}, {"metrics", samples}}.dump(
             2, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n";
}

MasterCli::~MasterCli() = default;

void MasterCli::listen(int fd) {
  uv_pipe_init(loop_, &listener_, 0);
  listener_.data = this;
  listener_open_ = true;
  int rc = uv_pipe_open(&listener_, fd);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 64, on_connection);
  if (rc != 0) throw std::runtime_error(std::string("master CLI: ") + uv_strerror(rc));
}

void MasterCli::on_connection(uv_stream_t* s, int status) {
  auto* cli = static_cast<MasterCli*>(s->data);
  if (status < 0) return;
  cli->accept_one();
}

void MasterCli::accept_one() {
  if (closing_ || !listener_open_) return;
  if (sessions_.size() >= kMaxClients) {
    waiting_ = true;  // libuv keeps the connection until we accept it
    return;
  }
  waiting_ = false;
  auto* s = new Session(*this);
  sessions_.insert(s);
  ++stats_.clients_total;
  if (s->accept(reinterpret_cast<uv_stream_t*>(&listener_)) != 0) s->close();
}

void MasterCli::session_closed(Session* s) {
  sessions_.erase(s);
  if (waiting_) accept_one();
  report_closed_when_done();
}

void MasterCli::close(std::function<void()> done) {
  closing_ = true;
  closed_cb_ = std::move(done);
  if (listener_open_) {
    listener_open_ = false;
    listener_closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), [](uv_handle_t* h) {
      auto* cli = static_cast<MasterCli*>(h->data);
      cli->listener_closing_ = false;
      cli->report_closed_when_done();
    });
  }
  std::vector<Session*> all(sessions_.begin(), sessions_.end());
  for (Session* s : all)
    s->close();
  report_closed_when_done();
}

void MasterCli::report_closed_when_done() {
  if (!closing_ || !sessions_.empty() || listener_closing_ || !closed_cb_) return;
  auto cb = std::move(closed_cb_);
  closed_cb_ = nullptr;
  cb();
}

}  // namespace spoad::cli
