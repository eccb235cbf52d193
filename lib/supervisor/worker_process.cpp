#include "supervisor/worker_process.h"

#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include <csignal>
#include <ctime>
#include <memory>
#include <unordered_set>

#include "cli/worker_cli.h"
#include "config/config.h"
#include "runtime/worker.h"
#include "supervisor/channel.h"
#include "util/log.h"
#include "version.h"

namespace spoad::supervisor {

namespace {

class WorkerProcess {
 public:
  explicit WorkerProcess(uv_loop_t* loop) : loop_(loop), log_(util::make_logger("spoad")) {}

  int run(int fd) {
    // Belt and braces beside the channel: the kernel signals us if the master dies.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    master_pid_ = ::getppid();
    if (master_pid_ == 1) return 1;  // the master died before we got here
    ch_ = Channel::open(
        loop_, fd, [this](const nlohmann::json& m, int sock) { on_message(m, sock); },
        [this] { master_gone(); });
    if (!ch_) return 1;
    const int sigs[5] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP};
    for (int i = 0; i < 5; ++i) {
      uv_signal_init(loop_, &sig_[i]);
      sig_[i].data = this;
      uv_signal_start(&sig_[i], on_signal, sigs[i]);
    }
    uv_run(loop_, UV_RUN_DEFAULT);
    worker_.reset();
    uv_run(loop_, UV_RUN_DEFAULT);
    return status_;
  }

 private:
  void on_message(const nlohmann::json& m, int sock) {
    const std::string type = m.value("type", "");
    if (type == "adopt") {
      adopt(m, sock);
      return;
    }
    if (sock >= 0) ::close(sock);
    if (type == "init" && !worker_) {
      init(m);
    } else if (type == "handoff-ack") {
      if (unacked_ > 0 && --unacked_ == 0 && closed_) close_channel();
    } else if (type == "hand-over" && worker_) {
      std::unordered_set<std::string> engines;
      for (const auto& e : m.value("engines", nlohmann::json::array()))
        if (e.is_string()) engines.insert(e.get<std::string>());
      worker_->hand_over(engines);
    } else if (type == "soft-stop") {
      const std::string mode = m.value("mode", "disconnect");
      stop(true, m.value("grace_ms", cfg_.grace_ms),
           mode == "handoff" ? runtime::DrainMode::kHandOff
           : mode == "wait"  ? runtime::DrainMode::kWait
                             : runtime::DrainMode::kDisconnect);
    } else if (type == "cli" && cli_) {
      const std::string out = cli_->execute(cli::split_commands(m.value("line", ""))[0]);
      ch_->send({{"type", "cli"}, {"id", m.value("id", uint64_t{0})}, {"output", out}});
    }
  }

  void init(const nlohmann::json& m) {
    try {
      const std::string level = m.value("log_level", "");
      cfg_ = config::parse_config(m.value("config", ""), m.value("file", ""));
      util::set_log_level(level.empty() ? cfg_.log_level : level);
      const size_t agent = m.value("agent", size_t{0});
      if (agent >= cfg_.agents.size())
        throw std::runtime_error("no agent #" + std::to_string(agent));
      const int listen_fd = m.value("listen_fd", -1);
      worker_ = std::make_unique<runtime::Worker>(
          loop_, std::vector<config::AgentConfig>{cfg_.agents[agent]});
      cli::WorkerIdentity id;
      id.pid = ::getpid();
      id.relative_pid = m.value("relative_pid", 0);
      id.generation = m.value("generation", 0);
      id.version = SPOAD_VERSION;
      id.start_time_s = static_cast<uint64_t>(std::time(nullptr));
      worker_->start({listen_fd});
      for (const auto& s : worker_->servers()) {
        const std::string name = s->config().name;
        s->set_engine_callback([this](const std::string& id) {
          if (ch_) ch_->send({{"type", "engine"}, {"id", id}});
        });
        s->set_hand_off([this, name](const nlohmann::json& state, uv_stream_t* handle,
                                     std::function<void(bool)> done) {
          if (!ch_) {
            done(false);
            return;
          }
          ++unacked_;
          ch_->send_handle({{"type", "handoff"}, {"agent", name}, {"state", state}}, handle,
                           std::move(done));
        });
      }
      cli_ = std::make_unique<cli::WorkerCli>(*worker_, id);
      ch_->send({{"type", "ready"}, {"pid", id.pid}, {"version", id.version}});
    } catch (const std::exception& e) {
      log_->critical("cannot start: {}", e.what());
      ch_->send({{"type", "error"}, {"message", e.what()}});
      status_ = 1;
      stop(false);
    }
  }

  static void on_signal(uv_signal_t* s, int signum) {
    auto* w = static_cast<WorkerProcess*>(s->data);
    switch (signum) {
      case SIGUSR1:
        w->stop(true);
        break;
      case SIGUSR2:
      case SIGHUP:
        if (w->worker_) w->worker_->reload_agents();
        break;
      default:
        w->stop(false);
        break;
    }
  }

  void master_gone() {
    ch_ = nullptr;
    log_->warn("the master process is gone: stopping");
    stop(false);
  }

  // Soft (finish in flight, bounded by the grace period) or hard stop, then leave the loop.
  void stop(bool soft) { stop(soft, cfg_.grace_ms, runtime::DrainMode::kDisconnect); }
  void stop(bool soft, uint64_t grace_ms, runtime::DrainMode mode) {
    if (!worker_) {
      close_all();
      return;
    }
    auto done = [this] { close_all(); };
    if (soft)
      worker_->soft_stop(grace_ms, done, mode);
    else
      worker_->hard_stop(done);
  }

  // A connection from a worker of the previous generation, at a safe point.
  void adopt(const nlohmann::json& m, int sock) {
    if (sock < 0) return;
    if (worker_)
      for (const auto& s : worker_->servers())
        if (s->config().name == m.value("agent", "")) {
          s->adopt(sock, m.value("state", nlohmann::json::object()));
          return;
        }
    ::close(sock);
  }

  void close_all() {
    if (closed_) return;
    closed_ = true;
    for (auto& s : sig_)
      if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&s)))
        uv_close(reinterpret_cast<uv_handle_t*>(&s), nullptr);
    // Keep the channel until the master has read every connection handed off: libuv takes a
    // hang-up seen while a read stopped at a passed socket for the end of the stream, and
    // would drop the messages behind it.
    if (unacked_ > 0) {
      uv_timer_init(loop_, &ack_timer_);
      ack_timer_.data = this;
      uv_timer_start(
          &ack_timer_,
          [](uv_timer_t* t) {
            auto* w = static_cast<WorkerProcess*>(t->data);
            w->log_->warn("{} hand-off(s) not acknowledged by the master", w->unacked_);
            w->unacked_ = 0;
            w->close_channel();
          },
          kAckTimeoutMs, 0);
      ack_timer_armed_ = true;
      return;
    }
    close_channel();
  }

  void close_channel() {
    if (ack_timer_armed_) {
      ack_timer_armed_ = false;
      uv_close(reinterpret_cast<uv_handle_t*>(&ack_timer_), nullptr);
    }
    if (ch_) {
      ch_->close();
      ch_ = nullptr;
    }
  }

  uv_loop_t* loop_;
  std::shared_ptr<spdlog::logger> log_;
  Channel* ch_ = nullptr;
  config::Config cfg_;
  std::unique_ptr<runtime::Worker> worker_;
  std::unique_ptr<cli::WorkerCli> cli_;
  uv_signal_t sig_[5];
  int master_pid_ = 0;
  int status_ = 0;
  bool closed_ = false;
  static constexpr uint64_t kAckTimeoutMs = 2000;
  int unacked_ = 0;  // connections handed off that the master has not acknowledged yet
  uv_timer_t ack_timer_;
  bool ack_timer_armed_ = false;
};

}  // namespace

int run_worker(int fd) {
  WorkerProcess w(uv_default_loop());
  const int status = w.run(fd);
  uv_loop_close(uv_default_loop());
  return status;
}

}  // namespace spoad::supervisor
