// The master CLI object: its listener, its clients' slots, its budgets' counters and logs, and
// the master-level `show info` and `show stat` (a client is served by master_session.h).
#include "cli/master_cli.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "cli/master_session.h"
#include "util/escape.h"
#include "util/log.h"

namespace spoad::cli {

namespace {

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
