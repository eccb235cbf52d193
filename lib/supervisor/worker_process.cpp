#include "supervisor/worker_process.h"

#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include <csignal>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <unordered_set>

#include "cli/worker_cli.h"
#include "config/config.h"
#include "runtime/worker.h"
#include "supervisor/channel.h"
#include "supervisor/metrics_view.h"
#include "util/clock.h"
#include "util/escape.h"
#include "util/log.h"
#include "util/rate_limit.h"
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
        loop_, fd, [this](msg::Message&& m, int sock) { on_message(std::move(m), sock); },
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
  void on_message(msg::Message&& m, int sock) {
    if (auto* a = std::get_if<msg::Adopt>(&m)) {
      adopt(*a, sock);
      return;
    }
    if (sock >= 0) ::close(sock);
    if (auto* l = std::get_if<msg::Listen>(&m)) {
      if (!worker_)
        for (int64_t fd : l->fds)
          if (fd >= 0 && fd <= INT32_MAX) listen_fds_.push_back(static_cast<int>(fd));
    } else if (auto* mt = std::get_if<msg::Metrics>(&m)) {
      if (!worker_ && !arena_ && mt->fd >= 0 && mt->fd <= INT32_MAX) {
        std::string err;
        arena_ = metrics::Arena::attach(static_cast<int>(mt->fd), true, &err);
        if (!arena_)
          log_->warn(
              "cannot map the metrics arena (fd {}): {}; the master will not see this "
              "worker's counters",
              mt->fd, err);
      }
    } else if (auto* ps = std::get_if<msg::PoolState>(&m)) {
      // Before Init: the pool's state, restored before we serve; and proof that the master
      // reads CliResult and PoolState. Later ones are not for us (the master sends none).
      if (!worker_) {
        master_reads_results_ = true;
        pool_states_[ps->agent] = std::move(ps->state);
      }
    } else if (auto* init_msg = std::get_if<msg::Init>(&m)) {
      if (!worker_) init(*init_msg);
    } else if (std::holds_alternative<msg::HandoffAck>(m)) {
      if (unacked_ > 0 && --unacked_ == 0 && closed_) close_channel();
    } else if (auto* h = std::get_if<msg::Succession>(&m)) {
      if (worker_)
        worker_->begin_succession(
            std::unordered_set<std::string>(h->engines.begin(), h->engines.end()));
    } else if (auto* st = std::get_if<msg::SoftStop>(&m)) {
      stop(true, st->grace_ms,
           st->mode == msg::StopMode::kHandOff ? runtime::DrainMode::kHandOff
           : st->mode == msg::StopMode::kWait  ? runtime::DrainMode::kWait
                                               : runtime::DrainMode::kDisconnect);
    } else if (auto* c = std::get_if<msg::CliRequest>(&m)) {
      if (!ch_) return;
      // The words exactly as the master parsed them: nothing is split or joined again.
      cli::WorkerCli::Result r{false, "This worker does not serve.\n"};
      if (cli_) {
        try {
          r = cli_->run(c->words);
        } catch (const std::exception& e) {  // a command's failure is an answer, not a crash
          log_->error("CLI command failed: {}", util::printable(e.what()));
          r = {false, "Internal error: " + util::printable(e.what()) + "\n"};
        }
      }
      const size_t size = r.text.size();
      if (!cli_answer(c->id, r.ok, std::move(r.text)))
        cli_answer(c->id, false,
                   "The answer is too large (" + std::to_string(size) +
                       " bytes) for the master channel.\n");
    } else {
      log_->warn("unexpected {} message from the master: ignored", msg::name(m));
    }
  }

  // Sends the answer to CliRequest `id`: a CliResult, or a CliReply to an older master.
  bool cli_answer(uint64_t id, bool ok, std::string text) {
    if (master_reads_results_) return ch_->send(msg::CliResult{id, ok, std::move(text)});
    return ch_->send(msg::CliReply{id, std::move(text)});
  }

  // The agent of `s` changed its pool state: the master keeps the latest (it is sent before
  // the answer of the command that changed it). A state the channel cannot carry is counted
  // and logged, not sent: the master keeps the previous one.
  void send_pool_state(runtime::Server& s) {
    if (!ch_ || !master_reads_results_) return;
    const std::string& name = s.config().name;
    std::string state;
    try {  // called from the agent's timers and CLI commands: nothing may escape into libuv
      state = s.agent().pool_state();
    } catch (const std::exception& e) {
      log_->error("cannot encode the pool state of {}: {}; the master keeps the previous one", name,
                  util::printable(e.what(), 1024));
      return;
    }
    // Frame header, two lengths: well within 32 bytes.
    if (state.size() + name.size() + 32 > msg::kMaxMessage) {
      ++pool_state_too_big_;
      if (pool_state_log_.allow(uv_now(loop_))) {
        const uint64_t held = pool_state_log_.take_suppressed();
        log_->error(
            "the pool state of {} ({} bytes) is larger than the master channel carries ({} "
            "bytes): not sent; new workers will start with the previous one{}",
            name, state.size(), msg::kMaxMessage,
            held ? " (" + std::to_string(held) + " similar lines not logged)" : std::string());
      }
      return;
    }
    ch_->send(msg::PoolState{name, std::move(state)});
  }

  void init(const msg::Init& m) {
    size_t agent = 0;
    try {
      cfg_ = config::parse_config(m.config, m.file);
      util::set_log_level(m.log_level.empty() ? cfg_.log_level : m.log_level);
      if (m.agent >= cfg_.agents.size())
        throw std::runtime_error("no agent #" + std::to_string(m.agent));
      agent = m.agent;
    } catch (const std::exception& e) {
      fail_init(e.what());
      return;
    }
    const config::AgentConfig& ac = cfg_.agents[agent];
    // No arena from the master (an older master, or it could not create one): count in
    // private memory, which nobody reads.
    if (!arena_) arena_ = metrics::Arena::private_memory();
    start_heartbeat();
    try {
      worker_ =
          std::make_unique<runtime::Worker>(loop_, std::vector<config::AgentConfig>{ac}, arena_);
      pool_state_too_big_ = metrics::Scope(arena_, ac.name, ac.type)
                                .counter("spoad_pool_state_too_big_total",
                                         "Pool states not sent to the master: larger than its "
                                         "channel carries (64 MiB).");
      worker_->set_pool_states(std::move(pool_states_));
      pool_states_.clear();
      worker_->set_pool_state_callback([this](runtime::Server& s) { send_pool_state(s); });
      cli::WorkerIdentity id;
      id.pid = ::getpid();
      id.relative_pid = static_cast<int>(m.relative_pid);
      id.generation = static_cast<int>(m.generation);
      id.version = SPOAD_VERSION;
      id.start_time_s = static_cast<uint64_t>(std::time(nullptr));
      // The sockets the master listens on for us (Listen); an older master sends only a unix
      // agent's socket in Init, and TCP workers then bind themselves.
      std::vector<int> fds = listen_fds_;
      if (fds.empty() && m.listen_fd >= 0) fds.push_back(static_cast<int>(m.listen_fd));
      worker_->start({fds});
      for (const auto& s : worker_->servers()) {
        const std::string name = s->config().name;
        s->set_engine_callback([this](const std::string& engine) {
          if (ch_) ch_->send(msg::Engine{engine});
        });
        s->set_hand_off([this, name](const nlohmann::json& state, uv_stream_t* handle,
                                     std::function<void(bool)> done) {
          if (!ch_) {
            done(false);
            return;
          }
          ++unacked_;
          ch_->send_handle(msg::Handoff{name, msg::state_from_json(state)}, handle,
                           std::move(done));
        });
      }
      cli_ = std::make_unique<cli::WorkerCli>(*worker_, id);
      ch_->send(msg::Ready{id.pid, id.version});
    } catch (const std::exception& e) {
      // As `spoad -c` words it (cmd/spoad/main.cpp): the file, the agent's line, its name.
      fail_init(
          config::ConfigError(cfg_.file, ac.line, "agents", ac.name + ": " + e.what()).what());
    }
  }

  // The master calls a worker whose heartbeat is older than kStalledMs stalled (metrics_view.h).
  void start_heartbeat() {
    heartbeat_ = arena_->gauge(kHeartbeatFamily,
                               "CLOCK_MONOTONIC milliseconds of the worker's last loop turn "
                               "(internal: the master exports spoad_worker_stalled instead).",
                               {});
    heartbeat_ = util::monotonic_ms();
    uv_timer_init(loop_, &heartbeat_timer_);
    heartbeat_timer_.data = this;
    heartbeat_armed_ = true;
    uv_timer_start(
        &heartbeat_timer_,
        [](uv_timer_t* t) {
          static_cast<WorkerProcess*>(t->data)->heartbeat_ = util::monotonic_ms();
        },
        kHeartbeatMs, kHeartbeatMs);
  }

  void fail_init(const std::string& why) {
    log_->critical("cannot start: {}", util::printable(why, 4096));
    if (ch_) ch_->send(msg::Error{why});
    status_ = 1;
    stop(false);
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
  void adopt(const msg::Adopt& m, int sock) {
    if (sock < 0) return;
    if (worker_)
      for (const auto& s : worker_->servers())
        if (s->config().name == m.agent) {
          s->adopt(sock, msg::state_to_json(m.state));
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
    if (heartbeat_armed_) {
      heartbeat_armed_ = false;
      uv_close(reinterpret_cast<uv_handle_t*>(&heartbeat_timer_), nullptr);
    }
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
  std::vector<int> listen_fds_;  // inherited listening sockets (Listen)
  // Pool states received before Init (agent name -> state); the master sent one (it reads
  // CliResult and PoolState).
  std::map<std::string, std::string> pool_states_;
  bool master_reads_results_ = false;
  metrics::Counter pool_state_too_big_;
  util::RateLimiter pool_state_log_{5};
  // This process's metrics (Metrics message; private memory without one), and its heartbeat.
  std::shared_ptr<metrics::Arena> arena_;
  metrics::Gauge heartbeat_;
  uv_timer_t heartbeat_timer_;
  bool heartbeat_armed_ = false;
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
