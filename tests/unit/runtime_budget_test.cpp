// Unit tests of the runtime's budgets (lib/runtime) on a real libuv loop and a real Unix
// socket, with the echo agent: the reassembly budget shared by the connections of a server
// (the connection that does not fit gets AGENT-DISCONNECT status 13, SPOE.txt 3.5, the others
// go on), max-connections (the next connection waits, counted, and is served once one closes),
// and the counters as `show stat` and `show stat json` show them.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cli/worker_cli.h"
#include "config/config.h"
#include "runtime/worker.h"
#include "spop/frames.h"
#include "spop/writer.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_loop.h"

namespace spoad::runtime {
namespace {

using spoad::testing::run_until;
using spoad::testing::TempDir;
using spoad::testing::TestLoop;

// A raw SPOP client on a non-blocking Unix socket; reads run the loop until a frame is whole.
class Client {
 public:
  Client(uv_loop_t* loop, const std::string& path) : loop_(loop) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0) << strerror(errno);
  }
  ~Client() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  void send(const std::vector<uint8_t>& b) {
    size_t off = 0;
    ASSERT_TRUE(run_until(loop_, [&] {
      const ssize_t n = ::send(fd_, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      if (n > 0) off += static_cast<size_t>(n);
      return off == b.size() || (n < 0 && errno != EAGAIN);
    }));
  }
  void hello() {
    std::vector<uint8_t> b;
    spop::write_haproxy_hello(b, 16380, "pipelining,fragmentation", "unit-test", false);
    send(b);
  }
  void fragment(bool first, bool fin, uint64_t sid, std::string_view bytes) {
    std::vector<uint8_t> b;
    spop::FrameWriter w(b, first ? spop::FrameType::kNotify : spop::FrameType::kUnset,
                        fin ? spop::kFlagFin : 0, sid, 1);
    w.raw(bytes);
    ASSERT_TRUE(w.finish(16380));
    send(b);
  }

  // The next frame (type, status-code for a DISCONNECT), or nullopt if the agent closed.
  struct Got {
    spop::FrameType type;
    uint32_t status = 0;
    uint64_t sid = 0;
  };
  std::optional<Got> recv() {
    std::optional<Got> got;
    bool closed = false;
    run_until(loop_, [&] {
      uint8_t tmp[65536];
      const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), MSG_DONTWAIT);
      if (n > 0) buf_.insert(buf_.end(), tmp, tmp + n);
      if (n == 0 || (n < 0 && errno != EAGAIN)) closed = true;
      if (buf_.size() >= 4) {
        const uint32_t len = spop::read_frame_length(buf_.data());
        if (buf_.size() >= 4 + size_t{len}) {
          spop::Frame f;
          EXPECT_TRUE(spop::decode_frame(spop::Bytes(buf_.data() + 4, len), &f).ok());
          Got g{f.type, 0, f.stream_id};
          if (f.type == spop::FrameType::kAgentDisconnect) {
            spop::Disconnect d;
            EXPECT_TRUE(spop::parse_disconnect(f, &d).ok());
            g.status = d.status_code;
          }
          got = g;
          buf_.erase(buf_.begin(), buf_.begin() + 4 + len);
          return true;
        }
      }
      return closed;
    });
    return got;
  }
  bool readable() {
    uint8_t b;
    return ::recv(fd_, &b, 1, MSG_DONTWAIT | MSG_PEEK) >= 0;
  }

 private:
  uv_loop_t* loop_;
  int fd_ = -1;
  std::vector<uint8_t> buf_;
};

// A worker serving one echo agent on a Unix socket, with `extra` runtime keys.
struct Fixture {
  explicit Fixture(const std::string& extra) {
    sock = dir.path() + "/echo.sock";
    cfg = config::parse_config(
        "agents:\n  - name: e\n    type: echo\n    listen: unix:" + sock + "\n" + extra, "t.yaml");
    worker = std::make_unique<Worker>(loop.get(), cfg.agents);
    worker->start();
  }
  ~Fixture() {
    bool done = false;
    worker->hard_stop([&done] { done = true; });
    EXPECT_TRUE(run_until(loop.get(), [&] { return done; }));
    EXPECT_TRUE(loop.drain());  // the handles' close callbacks, before the worker goes
    worker.reset();
  }
  const Stats& stats() { return worker->servers()[0]->stats(); }
  const spop::ReassemblyBudget& budget() { return worker->servers()[0]->reassembly_budget(); }

  TestLoop loop;
  TempDir dir;
  std::string sock;
  config::Config cfg;
  std::unique_ptr<Worker> worker;
};

// One message "m" with a BINARY argument "d" of `n` bytes: the LIST-OF-MESSAGES of a NOTIFY.
std::string notify_payload(size_t n) {
  std::vector<uint8_t> b;
  spop::Writer w(b);
  const std::string blob(n, 'x');
  const spop::KV kv{"d", spop::Value::Binary(blob)};
  w.message("m", std::span<const spop::KV>(&kv, 1));
  return std::string(b.begin(), b.end());
}

TEST(RuntimeBudget, ReassemblyBudgetClosesOnlyTheConnectionThatDoesNotFit) {
  Fixture fx("    max-fragmented-size: 64k\n    max-reassembly-bytes: 64k\n");
  Client a(fx.loop.get(), fx.sock), b(fx.loop.get(), fx.sock);
  a.hello();
  ASSERT_EQ(a.recv()->type, spop::FrameType::kAgentHello);
  b.hello();
  ASSERT_EQ(b.recv()->type, spop::FrameType::kAgentHello);

  // `a` sends 48000 of its 60000 bytes: its buffer takes 64000 of the 65536 bytes.
  const std::string p = notify_payload(60000);
  a.fragment(true, false, 1, std::string_view(p).substr(0, 16000));
  a.fragment(false, false, 1, std::string_view(p).substr(16000, 16000));
  a.fragment(false, false, 1, std::string_view(p).substr(32000, 16000));
  ASSERT_TRUE(run_until(fx.loop.get(), [&] { return fx.budget().used() >= 48000; }));

  // `b` starts one too: it does not fit, and only `b` goes.
  b.fragment(true, false, 3, std::string_view(p).substr(0, 16000));
  auto g = b.recv();
  ASSERT_TRUE(g);
  EXPECT_EQ(g->type, spop::FrameType::kAgentDisconnect);
  EXPECT_EQ(g->status, static_cast<uint32_t>(spop::Status::kResourceError));
  EXPECT_FALSE(b.recv()) << "not closed after the DISCONNECT";
  EXPECT_EQ(fx.stats().reassembly_refused, 1u);
  EXPECT_EQ(fx.stats().disconnects_sent[13], 1u);
  EXPECT_LE(fx.budget().peak(), 65536u);

  // `a` completes its NOTIFY and gets its ACK; every byte is given back.
  a.fragment(false, true, 1, std::string_view(p).substr(48000));
  g = a.recv();
  ASSERT_TRUE(g);
  EXPECT_EQ(g->type, spop::FrameType::kAck);
  EXPECT_EQ(g->sid, 1u);
  EXPECT_EQ(fx.budget().used(), 0u);
  EXPECT_EQ(fx.stats().fragmented_total, 1u);

  // The counters, in both forms of `show stat`.
  cli::WorkerCli wc(*fx.worker, cli::WorkerIdentity{1, 1, 1, "test", 0});
  const std::string text = wc.execute({"show", "stat"});
  const size_t nl = text.find('\n');
  ASSERT_NE(nl, std::string::npos) << text;
  std::vector<std::string> keys, values;
  auto split = [](std::string_view s, std::vector<std::string>* out) {
    size_t start = 0;
    for (size_t i = 0; i <= s.size(); ++i)
      if (i == s.size() || s[i] == ',') {
        out->emplace_back(s.substr(start, i - start));
        start = i + 1;
      }
  };
  split(std::string_view(text).substr(2, nl - 2), &keys);
  split(std::string_view(text).substr(nl + 1, text.size() - nl - 2), &values);
  ASSERT_EQ(keys.size(), values.size()) << text;
  std::map<std::string, std::string> row;
  for (size_t i = 0; i < keys.size(); ++i)
    row[keys[i]] = values[i];
  EXPECT_EQ(row["reassembly_refused"], "1") << text;
  EXPECT_EQ(row["reassembly_bytes"], "0") << text;
  EXPECT_EQ(row["reassembly_limit"], "65536") << text;
  EXPECT_EQ(row["accept_errors"], "0") << text;
  EXPECT_EQ(row["max_conn_reached"], "0") << text;
  EXPECT_EQ(row["fragment_timeouts"], "0") << text;
  const nlohmann::json j = nlohmann::json::parse(wc.execute({"show", "stat", "json"}));
  EXPECT_EQ(j["e"]["reassembly_refused"], 1);
  EXPECT_EQ(j["e"]["reassembly_bytes"], 0);
  EXPECT_GE(j["e"]["reassembly_bytes_max"].get<uint64_t>(), 48000u);
  EXPECT_EQ(j["e"]["disconnect_resource"], 1);
}

TEST(RuntimeBudget, MaxConnectionsMakesTheNextOneWait) {
  Fixture fx("    max-connections: 2\n");
  Client a(fx.loop.get(), fx.sock), b(fx.loop.get(), fx.sock);
  a.hello();
  ASSERT_EQ(a.recv()->type, spop::FrameType::kAgentHello);
  b.hello();
  ASSERT_EQ(b.recv()->type, spop::FrameType::kAgentHello);
  Client c(fx.loop.get(), fx.sock);  // waits in the backlog
  c.hello();
  ASSERT_TRUE(run_until(fx.loop.get(), [&] { return fx.stats().max_conn_reached == 1; }));
  EXPECT_EQ(fx.stats().conns_current, 2u);
  EXPECT_FALSE(c.readable());
  a.close();
  auto g = c.recv();
  ASSERT_TRUE(g);
  EXPECT_EQ(g->type, spop::FrameType::kAgentHello);
  EXPECT_EQ(fx.stats().conns_total, 3u);
}

}  // namespace
}  // namespace spoad::runtime
