// Unit tests of the SPOP connection's state machine (runtime/connection.h) over a real
// socketpair(AF_UNIX, SOCK_STREAM) and a real libuv loop. The connection's owner is a fake
// runtime::ConnectionHost (counts what it is told, hands off to a dup of the socket); the test
// plays HAProxy on the other end with the codec of lib/spop: HELLO -> AGENT-HELLO, NOTIFY ->
// ACK with the agent's actions, backpressure at max-inflight, the three drain modes
// (SPOE.txt 3.2.7 for the DISCONNECTs), protocol errors (SPOE.txt 3.4 status codes), EOF.
//
// "Turns" below run the loop without blocking: one turn reads whatever the kernel holds for a
// stream that reads, so bytes still in the kernel after a few turns were left there on purpose.
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/connection.h"
#include "runtime/connection_host.h"
#include "spop/frames.h"
#include "spop/reader.h"
#include "spop/writer.h"
#include "tests/support/test_loop.h"

namespace spoad::runtime {
namespace {

using spoad::testing::run_until;
using spoad::testing::TestLoop;

// Our max-frame-size (bytes): small, so that the read buffer (this + 4) holds only a few
// NOTIFYs and backpressure leaves the others in the kernel.
constexpr uint32_t kFrameSize = 1024;
constexpr uint32_t kMaxInflight = 4;

// Answers each message with set-var txn.seen = its argument "n". With `hold`, defers every
// reply until the test completes it.
class FakeAgent final : public agent::Agent {
 public:
  void on_message(const spop::Message& m, agent::Reply& r) override {
    ++messages;
    max_held = std::max(max_held, held.size() + (hold ? 1 : 0));
    uint64_t n = 0;
    if (auto kv = spop::find_arg(m, "n")) n = kv->value.u64;
    r.set_var(spop::Scope::kTransaction, "seen", spop::Value::Uint64(n));
    if (hold) held.push_back(r.defer());
  }
  // Completes the oldest held reply (which may dispatch the next NOTIFY at once).
  void complete_one() {
    agent::Deferred d = std::move(held.front());
    held.pop_front();
    d.complete();
  }

  bool hold = false;
  size_t messages = 0;
  size_t max_held = 0;  // replies held at once, at most
  std::deque<agent::Deferred> held;
};

// The owner: settings, counters, the agent; records engines, hand-offs and closes.
class FakeHost final : public ConnectionHost {
 public:
  struct HandOff {
    nlohmann::json state;
    int fd = -1;  // the new owner's copy of the socket, as SCM_RIGHTS would give it
    std::function<void(bool)> done;
  };

  explicit FakeHost(uv_loop_t* loop)
      : loop_(loop),
        logger_(std::make_shared<spdlog::logger>("connection-test",
                                                 std::make_shared<spdlog::sinks::null_sink_mt>())) {
    settings.unix_socket = true;
    settings.runtime.max_frame_size = kFrameSize;
    settings.runtime.max_inflight = kMaxInflight;
  }
  ~FakeHost() {
    for (const HandOff& h : handed)
      if (h.fd >= 0) ::close(h.fd);
  }

  uv_loop_t* loop() const override { return loop_; }
  const ConnectionSettings& connection_settings() const override { return settings; }
  Stats& mutable_stats() override { return stats; }
  agent::Agent& agent() override { return fake_agent; }
  spop::ReassemblyBudget& reassembly_budget() override { return budget_; }
  spdlog::logger& log() override { return *logger_; }
  bool log_limiter_allow() override { return true; }
  bool limits_log_allow() override { return true; }
  bool on_engine(const std::string& engine_id) override {
    engines.push_back(engine_id);
    return true;
  }
  void hand_off(const nlohmann::json& state, uv_stream_t* handle,
                std::function<void(bool)> done) override {
    uv_os_fd_t fd = -1;
    EXPECT_EQ(uv_fileno(reinterpret_cast<uv_handle_t*>(handle), &fd), 0);
    handed.push_back({state, ::dup(fd), std::move(done)});
  }
  void on_connection_closed(Connection*) override { ++closed; }

  ConnectionSettings settings;
  // A private arena, kept for the handles of `stats` (a Stats does not keep its arena alive).
  metrics::Scope scope;
  Stats stats{scope};
  FakeAgent fake_agent;
  std::vector<std::string> engines;
  std::vector<HandOff> handed;
  size_t closed = 0;

 private:
  uv_loop_t* loop_;
  spop::ReassemblyBudget budget_{1u << 20};
  std::shared_ptr<spdlog::logger> logger_;
};

// A frame the connection sent, decoded.
struct Got {
  spop::FrameType type = spop::FrameType::kUnset;
  uint64_t sid = 0, fid = 0;
  uint32_t status = 0;           // AGENT-DISCONNECT
  uint64_t seen = ~uint64_t{0};  // ACK: the value of set-var "seen"
  uint64_t max_frame_size = 0;   // AGENT-HELLO
  std::string capabilities;      // AGENT-HELLO
};

// HAProxy's end of the socketpair (non-blocking).
class Peer {
 public:
  Peer(uv_loop_t* loop, int fd) : loop_(loop), fd_(fd) {}
  ~Peer() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Writes all of `b` at once (small: the socket buffer holds it), without running the loop.
  void send(const std::vector<uint8_t>& b) {
    const ssize_t n = ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL);
    ASSERT_EQ(n, static_cast<ssize_t>(b.size())) << strerror(errno);
  }

  // Reads and decodes what has arrived, without running the loop.
  void pump() {
    uint8_t tmp[65536];
    for (;;) {
      const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), MSG_DONTWAIT);
      if (n > 0) {
        buf_.insert(buf_.end(), tmp, tmp + n);
        continue;
      }
      if (n == 0 || errno != EAGAIN) eof = true;
      break;
    }
    while (buf_.size() >= 4) {
      const uint32_t len = spop::read_frame_length(buf_.data());
      if (buf_.size() < 4 + size_t{len}) break;
      spop::Frame f;
      EXPECT_TRUE(spop::decode_frame(spop::Bytes(buf_.data() + 4, len), &f).ok());
      frames.push_back(decode(f));
      buf_.erase(buf_.begin(), buf_.begin() + 4 + len);
    }
  }
  // Runs the loop until `n` frames arrived in all (true), or the peer sees EOF first.
  bool wait_frames(size_t n) {
    return run_until(loop_,
                     [&] {
                       pump();
                       return frames.size() >= n || eof;
                     }) &&
           frames.size() >= n;
  }
  bool wait_eof() {
    return run_until(loop_, [&] {
      pump();
      return eof;
    });
  }
  size_t count(spop::FrameType t) const {
    size_t n = 0;
    for (const Got& g : frames)
      n += g.type == t;
    return n;
  }

  std::vector<Got> frames;
  bool eof = false;

 private:
  static Got decode(const spop::Frame& f) {
    Got g;
    g.type = f.type;
    g.sid = f.stream_id;
    g.fid = f.frame_id;
    if (f.type == spop::FrameType::kAgentDisconnect) {
      spop::Disconnect d;
      EXPECT_TRUE(spop::parse_disconnect(f, &d).ok());
      g.status = d.status_code;
    } else if (f.type == spop::FrameType::kAgentHello) {
      spop::AgentHello h;
      EXPECT_TRUE(spop::parse_agent_hello(f, 16380, &h).ok());
      g.max_frame_size = h.max_frame_size;
      g.capabilities = std::string(h.capabilities);
    } else if (f.type == spop::FrameType::kAck) {
      uint32_t count = 0;
      EXPECT_TRUE(spop::validate_actions(f.payload, &count).ok());
      for (const spop::Action& a : spop::actions(f.payload))
        if (a.name == "seen") g.seen = a.value.u64;
    }
    return g;
  }

  uv_loop_t* loop_;
  int fd_;
  std::vector<uint8_t> buf_;
};

std::vector<uint8_t> haproxy_hello(std::string_view caps = "pipelining,fragmentation") {
  std::vector<uint8_t> b;
  spop::write_haproxy_hello(b, 16380, caps, "engine-1", false);
  return b;
}

// A NOTIFY of one message "m" with "n" = `n` and a BINARY "pad" of `pad` bytes.
std::vector<uint8_t> notify(uint64_t sid, uint64_t fid, uint64_t n, size_t pad = 0,
                            uint32_t flags = spop::kFlagFin) {
  std::vector<uint8_t> b;
  const std::string padding(pad, 'x');
  spop::FrameWriter w(b, spop::FrameType::kNotify, flags, sid, fid);
  const spop::KV args[] = {{"n", spop::Value::Uint64(n)}, {"pad", spop::Value::Binary(padding)}};
  w.message("m", args);
  EXPECT_TRUE(w.finish(kFrameSize));
  return b;
}

class ConnectionTest : public ::testing::Test {
 protected:
  // As spoad (cmd/spoad/main.cpp): a write to a closed peer fails with EPIPE, not a signal.
  static void SetUpTestSuite() { std::signal(SIGPIPE, SIG_IGN); }

  // Serves one end of a new socketpair with a Connection of `host`; the test holds the other.
  Connection* start() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    conn_fd_ = sv[0];
    auto* c = new Connection(host);
    EXPECT_EQ(c->adopt(sv[0]), 0);
    peer = std::make_unique<Peer>(loop.get(), sv[1]);
    return c;
  }
  // start(), then HELLO -> AGENT-HELLO.
  Connection* start_ready() {
    Connection* c = start();
    peer->send(haproxy_hello());
    EXPECT_TRUE(peer->wait_frames(1));
    EXPECT_EQ(peer->frames.at(0).type, spop::FrameType::kAgentHello);
    return c;
  }
  void turns(int n = 8) {
    for (int i = 0; i < n; ++i)
      uv_run(loop.get(), UV_RUN_NOWAIT);
  }
  // Bytes waiting in the kernel for the connection's socket: what it has not read.
  int unread(int fd) const {
    int n = -1;
    EXPECT_EQ(::ioctl(fd, FIONREAD, &n), 0);
    return n;
  }
  int conn_fd() const { return conn_fd_; }

  void TearDown() override {
    // Whatever is still open closes on the peer's EOF; held replies are then cancelled.
    const size_t opened = opened_;
    if (peer) peer->close();
    EXPECT_TRUE(run_until(loop.get(), [&] { return host.closed >= opened; }));
    host.fake_agent.held.clear();
  }
  // The number of connections the test expects to close in all (2 after an adopted hand-off).
  void expect_connections(size_t n) { opened_ = n; }

  TestLoop loop;
  FakeHost host{loop.get()};
  std::unique_ptr<Peer> peer;

 private:
  int conn_fd_ = -1;
  size_t opened_ = 1;
};

TEST_F(ConnectionTest, HelloIsAnsweredWithTheNegotiatedFrameSizeAndCapabilities) {
  start();
  peer->send(haproxy_hello("pipelining,fragmentation,async"));
  ASSERT_TRUE(peer->wait_frames(1));
  const Got& g = peer->frames[0];
  EXPECT_EQ(g.type, spop::FrameType::kAgentHello);
  EXPECT_EQ(g.max_frame_size, kFrameSize);  // min(ours, HAProxy's 16380)
  spop::Capabilities ours;
  ours.pipelining = true;
  ours.fragmentation = true;
  EXPECT_EQ(g.capabilities, spop::format_capabilities(ours));  // async: off in our settings
  EXPECT_EQ(host.engines, std::vector<std::string>{"engine-1"});
  EXPECT_EQ(host.stats.hellos.get(), 1u);
  EXPECT_EQ(host.stats.conns_idle.get(), 1u);
}

TEST_F(ConnectionTest, NotifiesAreAckedWithTheAgentsActions) {
  start_ready();
  std::vector<uint8_t> b;
  for (uint64_t i = 1; i <= 3; ++i) {
    const auto one = notify(i, 10 + i, 100 + i);
    b.insert(b.end(), one.begin(), one.end());
  }
  peer->send(b);  // three NOTIFYs in one read
  ASSERT_TRUE(peer->wait_frames(4));
  for (uint64_t i = 1; i <= 3; ++i) {
    const Got& g = peer->frames[i];
    EXPECT_EQ(g.type, spop::FrameType::kAck);
    EXPECT_EQ(g.sid, i);
    EXPECT_EQ(g.fid, 10 + i);
    EXPECT_EQ(g.seen, 100 + i);
  }
  EXPECT_EQ(host.fake_agent.messages, 3u);
  EXPECT_EQ(host.stats.notify_total.get(), 3u);
  EXPECT_EQ(host.stats.ack_total.get(), 3u);
  EXPECT_EQ(host.stats.inflight.get(), 0u);
  EXPECT_EQ(host.stats.frames_in.get(), 4u);
}

TEST_F(ConnectionTest, BackpressureStopsReadingAtMaxInflightAndDropsNothing) {
  start_ready();
  host.fake_agent.hold = true;
  constexpr uint64_t kCount = 20;
  std::vector<uint8_t> b;
  for (uint64_t i = 1; i <= kCount; ++i) {
    const auto one = notify(i, i, 1000 + i, 200);  // ~230 bytes: 4 fill the read buffer
    b.insert(b.end(), one.begin(), one.end());
  }
  peer->send(b);
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.fake_agent.messages == kMaxInflight; }));
  turns();
  // The window is full: no fifth NOTIFY reached the agent, and the connection left the rest of
  // the bytes in the kernel (it stopped reading) rather than buffering them.
  EXPECT_EQ(host.fake_agent.messages, kMaxInflight);
  EXPECT_EQ(host.stats.inflight.get(), kMaxInflight);
  EXPECT_GT(unread(conn_fd()), 0);
  peer->pump();
  EXPECT_EQ(peer->count(spop::FrameType::kAck), 0u);

  // One reply completes: its ACK leaves and exactly one more NOTIFY comes in.
  host.fake_agent.complete_one();
  ASSERT_TRUE(peer->wait_frames(2));
  turns();
  EXPECT_EQ(host.fake_agent.messages, kMaxInflight + 1);
  EXPECT_EQ(host.stats.inflight.get(), kMaxInflight);

  // Completing the rest one by one serves every NOTIFY, never more than the window at once.
  ASSERT_TRUE(run_until(loop.get(), [&] {
    if (!host.fake_agent.held.empty()) host.fake_agent.complete_one();
    peer->pump();
    return peer->count(spop::FrameType::kAck) == kCount;
  }));
  EXPECT_EQ(host.fake_agent.messages, kCount);
  EXPECT_EQ(host.fake_agent.max_held, kMaxInflight);
  std::set<uint64_t> fids;
  for (const Got& g : peer->frames)
    if (g.type == spop::FrameType::kAck) {
      EXPECT_EQ(g.seen, 1000 + g.fid);
      fids.insert(g.fid);
    }
  EXPECT_EQ(fids.size(), kCount);
  EXPECT_EQ(unread(conn_fd()), 0);
  EXPECT_EQ(host.stats.inflight.get(), 0u);
  EXPECT_EQ(peer->count(spop::FrameType::kAgentDisconnect), 0u);
}

TEST_F(ConnectionTest, DrainDisconnectAnswersInflightThenSendsDisconnectZero) {
  Connection* c = start_ready();
  host.fake_agent.hold = true;
  auto b = notify(1, 1, 11);
  const auto second = notify(2, 2, 22);
  b.insert(b.end(), second.begin(), second.end());
  peer->send(b);
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.fake_agent.messages == 2; }));
  c->drain(DrainMode::kDisconnect);
  turns();
  peer->pump();
  EXPECT_EQ(peer->frames.size(), 1u);  // no DISCONNECT while NOTIFYs are in flight
  host.fake_agent.complete_one();
  host.fake_agent.complete_one();
  ASSERT_TRUE(peer->wait_eof());  // DISCONNECT, then FIN
  ASSERT_EQ(peer->frames.size(), 4u);
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAck);
  EXPECT_EQ(peer->frames[2].type, spop::FrameType::kAck);
  EXPECT_EQ(peer->frames[3].type, spop::FrameType::kAgentDisconnect);
  EXPECT_EQ(peer->frames[3].status, 0u);
  EXPECT_EQ(host.stats.disconnects_sent[0].get(), 1u);
  EXPECT_TRUE(host.handed.empty());
}

TEST_F(ConnectionTest, DrainDisconnectFirstReadsANotifyWaitingInTheSocket) {
  Connection* c = start_ready();
  // The NOTIFY is in the kernel, not read yet, when the drain starts: a DISCONNECT now would
  // cross it. It is read and answered first.
  peer->send(notify(5, 7, 55));
  c->drain(DrainMode::kDisconnect);
  ASSERT_TRUE(peer->wait_eof());
  ASSERT_EQ(peer->frames.size(), 3u);
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAck);
  EXPECT_EQ(peer->frames[1].seen, 55u);
  EXPECT_EQ(peer->frames[2].type, spop::FrameType::kAgentDisconnect);
  EXPECT_EQ(peer->frames[2].status, 0u);
}

TEST_F(ConnectionTest, DrainBeforeHelloDisconnectsRightAfterTheAgentHello) {
  Connection* c = start();
  c->drain(DrainMode::kDisconnect);
  peer->send(haproxy_hello());
  ASSERT_TRUE(peer->wait_eof());
  ASSERT_EQ(peer->frames.size(), 2u);
  EXPECT_EQ(peer->frames[0].type, spop::FrameType::kAgentHello);
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAgentDisconnect);
  EXPECT_EQ(peer->frames[1].status, 0u);
}

TEST_F(ConnectionTest, DrainHandOffAnswersInflightThenHandsTheSocketOver) {
  expect_connections(2);
  Connection* c = start_ready();
  host.fake_agent.hold = true;
  peer->send(notify(1, 1, 11));
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.fake_agent.messages == 1; }));
  c->drain(DrainMode::kHandOff);
  // HAProxy's next NOTIFY waits in the kernel for the new owner: the connection reads no more.
  peer->send(notify(2, 2, 22));
  turns();
  EXPECT_TRUE(host.handed.empty());  // not while a NOTIFY is in flight
  ASSERT_EQ(host.fake_agent.messages, 1u);
  ASSERT_GT(unread(conn_fd()), 0);
  host.fake_agent.complete_one();
  ASSERT_TRUE(run_until(loop.get(), [&] { return !host.handed.empty(); }));
  ASSERT_EQ(host.handed.size(), 1u);
  const nlohmann::json st = host.handed[0].state;
  EXPECT_EQ(st.value("max_frame_size", 0u), kFrameSize);
  EXPECT_TRUE(st.value("pipelining", false));
  EXPECT_TRUE(st.value("fragmentation", false));
  EXPECT_FALSE(st.value("async", true));
  EXPECT_EQ(st.value("peer", std::string()), "unix");
  EXPECT_EQ(st.value("buffered", std::string("?")), "");

  turns();
  EXPECT_EQ(host.fake_agent.messages, 1u);
  EXPECT_GT(unread(host.handed[0].fd), 0);
  host.handed[0].done(true);
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.closed == 1; }));
  EXPECT_EQ(host.stats.handed_off.get(), 1u);
  peer->pump();
  ASSERT_EQ(peer->frames.size(), 2u);  // AGENT-HELLO, ACK: no DISCONNECT, no EOF
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAck);
  EXPECT_FALSE(peer->eof);

  // The new owner serves it with the state it was given: no HELLO again.
  host.fake_agent.hold = false;
  auto* next = new Connection(host);
  const int fd = std::exchange(host.handed[0].fd, -1);
  ASSERT_EQ(next->adopt_established(fd, st), 0);
  ASSERT_TRUE(peer->wait_frames(3));
  EXPECT_EQ(peer->frames[2].type, spop::FrameType::kAck);
  EXPECT_EQ(peer->frames[2].seen, 22u);
  EXPECT_EQ(peer->count(spop::FrameType::kAgentDisconnect), 0u);
}

TEST_F(ConnectionTest, HandOffCarriesBytesReadButNotProcessed) {
  expect_connections(2);
  Connection* c = start_ready();
  const auto frame = notify(3, 4, 33);
  const size_t half = frame.size() / 2;
  peer->send(std::vector<uint8_t>(frame.begin(), frame.begin() + half));
  ASSERT_TRUE(run_until(loop.get(), [&] { return unread(conn_fd()) == 0; }));
  c->drain(DrainMode::kHandOff);
  ASSERT_TRUE(run_until(loop.get(), [&] { return !host.handed.empty(); }));
  const nlohmann::json st = host.handed[0].state;
  EXPECT_EQ(st.value("buffered", std::string()).size(), 2 * half);  // hex
  host.handed[0].done(true);
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.closed == 1; }));

  auto* next = new Connection(host);
  ASSERT_EQ(next->adopt_established(std::exchange(host.handed[0].fd, -1), st), 0);
  peer->send(std::vector<uint8_t>(frame.begin() + half, frame.end()));
  ASSERT_TRUE(peer->wait_frames(2));
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAck);
  EXPECT_EQ(peer->frames[1].sid, 3u);
  EXPECT_EQ(peer->frames[1].seen, 33u);
}

TEST_F(ConnectionTest, FailedHandOffFallsBackToDisconnect) {
  Connection* c = start_ready();
  c->drain(DrainMode::kHandOff);
  ASSERT_TRUE(run_until(loop.get(), [&] { return !host.handed.empty(); }));
  host.handed[0].done(false);
  ASSERT_TRUE(peer->wait_eof());
  ASSERT_EQ(peer->frames.size(), 2u);
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAgentDisconnect);
  EXPECT_EQ(peer->frames[1].status, 0u);
  EXPECT_EQ(host.stats.handed_off.get(), 0u);
}

TEST_F(ConnectionTest, DrainWaitKeepsServingUntilThePeerCloses) {
  Connection* c = start_ready();
  c->drain(DrainMode::kWait);
  for (uint64_t i = 1; i <= 3; ++i) {
    peer->send(notify(i, i, i));
    ASSERT_TRUE(peer->wait_frames(1 + i));
    EXPECT_EQ(peer->frames[i].type, spop::FrameType::kAck);
  }
  turns();
  peer->pump();
  EXPECT_FALSE(peer->eof);
  EXPECT_EQ(peer->frames.size(), 4u);
  peer->close();
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.closed == 1; }));
  EXPECT_EQ(host.stats.disconnects_sent[0].get(), 0u);
  EXPECT_TRUE(host.handed.empty());
}

// A protocol error: AGENT-DISCONNECT with its status (SPOE.txt 3.4), counted, then FIN.
struct ErrorCase {
  const char* name;
  spop::Status status;
};

class ConnectionErrorTest : public ConnectionTest,
                            public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(ConnectionErrorTest, ProtocolErrorSendsDisconnectWithItsStatus) {
  const std::string_view name = GetParam().name;
  if (name == "fragmentation-disabled") host.settings.runtime.fragmentation = false;
  if (name == "notify-before-hello") {
    start();
    peer->send(notify(1, 1, 1));
  } else {
    start_ready();
    if (name == "hello-twice") peer->send(haproxy_hello());
    if (name == "fragmentation-disabled") peer->send(notify(1, 1, 1, 0, /*flags=*/0));
    if (name == "frame-too-big") {
      std::vector<uint8_t> b = {0, 0, 0x10, 0};  // FRAME-LENGTH 4096 > 1024
      peer->send(b);
    }
  }
  ASSERT_TRUE(peer->wait_eof());
  ASSERT_FALSE(peer->frames.empty());
  const Got& last = peer->frames.back();
  EXPECT_EQ(last.type, spop::FrameType::kAgentDisconnect);
  const auto code = static_cast<uint32_t>(GetParam().status);
  EXPECT_EQ(last.status, code);
  EXPECT_EQ(host.stats.protocol_errors[Stats::status_index(GetParam().status)].get(), 1u);
  EXPECT_EQ(host.stats.disconnects_sent[Stats::status_index(GetParam().status)].get(), 1u);
  EXPECT_EQ(peer->count(spop::FrameType::kAck), 0u);
}

INSTANTIATE_TEST_SUITE_P(Errors, ConnectionErrorTest,
                         ::testing::Values(ErrorCase{"notify-before-hello", spop::Status::kInvalid},
                                           ErrorCase{"hello-twice", spop::Status::kInvalid},
                                           ErrorCase{"fragmentation-disabled",
                                                     spop::Status::kFragNotSupported},
                                           ErrorCase{"frame-too-big", spop::Status::kTooBig}),
                         [](const ::testing::TestParamInfo<ErrorCase>& i) {
                           std::string n = i.param.name;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST_F(ConnectionTest, HaproxyDisconnectIsAnsweredWithDisconnectZero) {
  start_ready();
  std::vector<uint8_t> b;
  spop::write_haproxy_disconnect(b, spop::Status::kNormal, "bye");
  peer->send(b);
  ASSERT_TRUE(peer->wait_eof());
  ASSERT_EQ(peer->frames.size(), 2u);
  EXPECT_EQ(peer->frames[1].type, spop::FrameType::kAgentDisconnect);
  EXPECT_EQ(peer->frames[1].status, 0u);
  EXPECT_EQ(host.stats.disconnects_received.get(), 1u);
  EXPECT_EQ(host.stats.errors_total(), 0u);
}

TEST_F(ConnectionTest, PeerEofClosesWithoutError) {
  start_ready();
  host.fake_agent.hold = true;
  peer->send(notify(1, 1, 1));
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.fake_agent.messages == 1; }));
  peer->close();  // EOF with a NOTIFY in flight: its reply is cancelled
  ASSERT_TRUE(run_until(loop.get(), [&] { return host.closed == 1; }));
  ASSERT_EQ(host.fake_agent.held.size(), 1u);
  EXPECT_TRUE(host.fake_agent.held.front().reply().cancelled());
  EXPECT_EQ(host.stats.errors_total(), 0u);
  uint64_t sent = 0;
  for (const auto& d : host.stats.disconnects_sent)
    sent += d.get();
  EXPECT_EQ(sent, 0u);
  EXPECT_EQ(host.stats.inflight.get(), 0u);
  EXPECT_EQ(host.stats.conns_idle.get(), 0u);
}

}  // namespace
}  // namespace spoad::runtime
