// spoa-bench: SPOP load generator. Speaks SPOP to a SPOE agent as HAProxy does (HELLO,
// pipelined NOTIFYs, DISCONNECT) and measures ACKs per second and latencies.
//
//   spoa-bench -a 127.0.0.1:12345 [-c 4] [-d 16] [-t 10] [--json] ...   (--help for all)
//
// Exit status: 0 no error, 1 at least one error counted, 2 usage error.
// SIGINT/SIGTERM: stop, say DISCONNECT, print the figures so far; a second one: close at once.
#include <netdb.h>
#include <sys/socket.h>
#include <uv.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "notify.h"
#include "options.h"
#include "report.h"
#include "runner.h"

namespace {

using namespace spoad::bench;

std::atomic<int> g_signals{0};

void on_signal(int) {
  g_signals.fetch_add(1, std::memory_order_relaxed);
}

void install_signals() {
  std::signal(SIGPIPE, SIG_IGN);  // a write to a closed socket fails with EPIPE instead
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// A random UUID (version 4) string, as HAProxy's engine-id.
std::string random_uuid() {
  std::random_device rd;
  std::mt19937_64 gen((uint64_t{rd()} << 32) ^ rd());
  uint8_t b[16];
  for (int i = 0; i < 16; i += 8) {
    const uint64_t v = gen();
    std::memcpy(b + i, &v, 8);
  }
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  char s[37];
  std::snprintf(s, sizeof(s),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return s;
}

// Resolves a TCP address (numeric or a name) once, before the run.
bool resolve(const Address& a, sockaddr_storage* out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(a.port);
  const int rc = getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    std::fprintf(stderr, "spoa-bench: cannot resolve \"%s\": %s\n", a.host.c_str(),
                 gai_strerror(rc));
    return false;
  }
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return true;
}

uint64_t seconds_to_ns(double s) {
  return static_cast<uint64_t>(s * 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  if (const int rc = parse_options(argc, argv, &opts); rc >= 0) return rc;

  {
    // The NOTIFY must fit the max-frame-size we announce (the agent may only lower it).
    NotifyEncoder probe(opts, opts.seed);
    std::vector<uint8_t> frame;
    probe.encode(frame, 1, 1, UINT32_MAX);
    if (frame.size() - 4 > opts.max_frame_size) {
      std::fprintf(stderr, "spoa-bench: the NOTIFY is %zu bytes, more than --max-frame-size %u\n",
                   frame.size() - 4, opts.max_frame_size);
      return 2;
    }
  }

  RunPlan plan;
  plan.opts = &opts;
  if (opts.address.kind == Address::Kind::kTcp && !resolve(opts.address, &plan.addr)) return 2;
  install_signals();

  std::atomic<uint64_t> budget{opts.requests};
  std::atomic<int> reported{0};
  plan.budget = opts.requests > 0 ? &budget : nullptr;
  plan.signals = &g_signals;
  plan.reported = &reported;
  plan.timeout_ns = seconds_to_ns(opts.timeout_s);
  plan.start_ns = uv_hrtime();
  plan.warmup_end_ns = plan.start_ns + seconds_to_ns(opts.warmup_s);
  plan.run_end_ns = opts.duration_s > 0 ? plan.warmup_end_ns + seconds_to_ns(opts.duration_s) : 0;

  // Connections are shared out between the runners as evenly as possible. The engine-id is
  // one per runner, as HAProxy 2.6 has one per thread.
  std::vector<std::unique_ptr<Runner>> runners;
  int first = 0;
  for (int i = 0; i < opts.threads; ++i) {
    const int count = opts.connections / opts.threads + (i < opts.connections % opts.threads);
    runners.push_back(std::make_unique<Runner>(plan, first, count, random_uuid()));
    first += count;
  }
  std::vector<std::thread> threads;
  for (size_t i = 1; i < runners.size(); ++i)
    threads.emplace_back([r = runners[i].get()] { r->run(); });
  runners[0]->run();
  for (auto& t : threads)
    t.join();

  RunResult result;
  uint64_t window_end = 0;
  for (const auto& r : runners) {
    result.stats.merge(r->stats());
    window_end = std::max(window_end, r->window_end_ns());
    result.interrupted = result.interrupted || r->interrupted();
  }
  if (window_end > plan.warmup_end_ns)
    result.elapsed_s = static_cast<double>(window_end - plan.warmup_end_ns) / 1e9;

  if (opts.json)
    std::printf("%s\n", to_json(opts, result).dump().c_str());
  else
    std::fputs(to_text(opts, result).c_str(), stdout);
  return result.stats.errors.total() > 0 ? 1 : 0;
}
