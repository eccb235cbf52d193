// Unit tests of the master <-> worker channel: the message codec (supervisor/messages.h) alone,
// then the Channel on a real socketpair, sockets passed with SCM_RIGHTS included.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <random>
#include <set>
#include <string>
#include <vector>

#include "cli/command.h"
#include "supervisor/channel.h"
#include "supervisor/messages.h"

namespace spoad::supervisor {
namespace {

using msg::Decoded;

// Every byte value, 0x00 to 0xff, in order.
std::string all_bytes() {
  std::string s;
  for (int i = 0; i < 256; ++i)
    s.push_back(static_cast<char>(i));
  return s;
}

msg::ConnState sample_state(const std::string& b) {
  return {{"max_frame_size", uint64_t{16380}},
          {"pipelining", true},
          {"async", false},
          {"delta", int64_t{-42}},
          {"peer", b},
          {b, std::string()},
          {"big", ~uint64_t{0}},
          {"min", INT64_MIN}};
}

// One message of each type, every byte string holding all 256 byte values.
std::vector<msg::Message> samples() {
  const std::string b = all_bytes();
  return {
      msg::Init{b, b, 3, 7, 2, -1, b},
      msg::Init{b, b, ~uint64_t{0}, INT64_MIN, INT64_MAX, 4, ""},
      msg::CliRequest{99, {b, "show", "ip", "\xff", std::string(1, '\0'), "\x1b[31m", "\\\r"}},
      msg::CliRequest{0, {}},
      msg::SoftStop{10'000, msg::StopMode::kDisconnect},
      msg::SoftStop{0, msg::StopMode::kHandOff},
      msg::SoftStop{~uint64_t{0}, msg::StopMode::kWait},
      msg::Succession{{b, "", "\xff", std::string(36, 'e')}},
      msg::Adopt{b, sample_state(b)},
      msg::HandoffAck{},
      msg::Ready{12345, b},
      msg::Error{b},
      msg::CliReply{~uint64_t{0}, b + "\n" + b},
      msg::Handoff{b, sample_state(b)},
      msg::Handoff{"iprep", {}},
      msg::Engine{b},
      msg::Engine{"\xff"},
      msg::Listen{{4, 5, 6}},
      msg::Listen{{}},
      msg::Listen{{-1, INT64_MIN, INT64_MAX}},
      msg::Takeover{4242, b},
      msg::Takeover{INT64_MIN, ""},
      msg::Listener{b, 7, 123456789},
      msg::Listener{"127.0.0.1:9000", ~uint64_t{0}, 0},
      msg::Listeners{4242, 3},
      msg::Listeners{0, ~uint64_t{0}},
      msg::Serving{99},
      msg::Serving{INT64_MAX},
      msg::Metrics{5},
      msg::Metrics{INT64_MIN},
      msg::CliResult{7, false, b + "\n"},
      msg::CliResult{~uint64_t{0}, true, ""},
      msg::PoolState{"iprep", b + b},
      msg::PoolState{b, ""},
  };
}

std::string encoded(const msg::Message& m) {
  std::string out;
  EXPECT_TRUE(msg::encode(m, out)) << msg::name(m);
  return out;
}

TEST(Messages, EveryTypeRoundTripsWithEveryByteValue) {
  std::vector<msg::Message> all = samples();
  std::set<size_t> types;
  for (const msg::Message& m : all) {
    types.insert(m.index());
    const std::string wire = encoded(m);
    const Decoded d = msg::decode(wire);
    ASSERT_EQ(d.status, Decoded::Status::kMessage) << msg::name(m) << ": " << d.error;
    EXPECT_EQ(d.used, wire.size());
    EXPECT_EQ(d.with_fd, msg::carries_fd(m));
    EXPECT_TRUE(d.message == m) << msg::name(m);
  }
  EXPECT_EQ(types.size(), std::variant_size_v<msg::Message>) << "a message type is not tested";
}

TEST(Messages, FramesFollowEachOther) {
  std::string wire;
  for (const msg::Message& m : samples())
    ASSERT_TRUE(msg::encode(m, wire));
  size_t n = 0;
  std::string_view in = wire;
  for (const msg::Message& m : samples()) {
    const Decoded d = msg::decode(in);
    ASSERT_EQ(d.status, Decoded::Status::kMessage);
    EXPECT_TRUE(d.message == m);
    in.remove_prefix(d.used);
    ++n;
  }
  EXPECT_TRUE(in.empty());
  EXPECT_EQ(n, samples().size());
}

TEST(Messages, TruncatedFramesNeedMore) {
  for (const msg::Message& m : samples()) {
    const std::string wire = encoded(m);
    for (size_t len = 0; len < wire.size(); ++len) {
      const Decoded d = msg::decode(std::string_view(wire).substr(0, len));
      ASSERT_EQ(d.status, Decoded::Status::kNeedMore) << msg::name(m) << " cut at " << len;
      EXPECT_EQ(d.used, 0u);
    }
  }
}

// A frame with the length prefix fixed to `body`'s size.
std::string frame(std::string_view body) {
  std::string f(4, '\0');
  const size_t n = body.size();
  for (int i = 0; i < 4; ++i)
    f[static_cast<size_t>(i)] = static_cast<char>((n >> (24 - 8 * i)) & 0xff);
  return f + std::string(body);
}

TEST(Messages, MalformedFramesAreRejectedWholeAndSkipped) {
  const std::string ok = encoded(msg::Engine{"e"});
  const std::string body = ok.substr(4);
  struct Case {
    const char* what;
    std::string frame;
    bool with_fd;
  };
  const std::vector<Case> cases = {
      {"empty body", frame(""), false},
      {"flags only", frame("\x00"), false},
      {"type 0", frame(std::string("\x00\x00", 2)), false},
      {"type 20 (the first unknown)", frame(std::string("\x00\x14", 2)), false},
      {"cli-result with a bad bool", frame(std::string("\x00\x12\x01\x02\x00", 5)), false},
      {"pool-state without its state",
       frame(std::string("\x00\x13\x01"
                         "a",
                         4)),
       false},
      {"type 255", frame(std::string("\x00\xff", 2)), false},
      {"unknown flag", frame(std::string("\x02") + body.substr(1)), false},
      {"fd flag on engine", frame(std::string("\x01") + body.substr(1)), true},
      {"no fd flag on handoff",
       frame(std::string("\x00") + encoded(msg::Handoff{"a", {}}).substr(5)), false},
      {"trailing byte", frame(body + "x"), false},
      {"string longer than the frame", frame(std::string("\x00\x0b\x7f", 3) + "abc"), false},
      {"huge string length", frame(std::string("\x00\x0b\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11)),
       false},
      {"varint over 64 bits",
       frame(std::string("\x00\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 12)), false},
      {"varint never ends", frame(std::string("\x00\x09\xff\xff\xff", 5)), false},
      {"huge list count", frame(std::string("\x00\x04\xff\xff\xff\xff\x0f", 7)), false},
      {"bad bool",
       frame(std::string("\x01\x0a\x01"
                         "a"
                         "\x01\x01"
                         "k"
                         "\x00\x02",
                         9)),
       true},
      {"bad state kind",
       frame(std::string("\x01\x0a\x01"
                         "a"
                         "\x01\x01"
                         "k"
                         "\x09\x00",
                         9)),
       true},
      {"bad stop mode", frame(std::string("\x00\x03\x00\x03", 4)), false},
      {"missing field", frame(std::string("\x00\x07\x05", 3)), false},
      {"no fd flag on listener",
       frame(std::string("\x00") + encoded(msg::Listener{"a", 0, 0}).substr(5)), false},
      {"listen count beyond the frame", frame(std::string("\x00\x0c\x05\x02", 4)), false},
      {"listener without its inode",
       frame(std::string("\x01\x0e\x01"
                         "a"
                         "\x00",
                         5)),
       true},
  };
  for (const Case& c : cases) {
    const Decoded d = msg::decode(c.frame + ok);
    EXPECT_EQ(d.status, Decoded::Status::kBadFrame) << c.what;
    EXPECT_EQ(d.used, c.frame.size()) << c.what;
    EXPECT_STRNE(d.error, "") << c.what;
    // A socket that came with a rejected frame is reported, so that the channel closes it.
    EXPECT_EQ(d.with_fd, c.with_fd) << c.what;
    // The next frame still decodes.
    const Decoded next = msg::decode(std::string_view(c.frame + ok).substr(d.used));
    EXPECT_EQ(next.status, Decoded::Status::kMessage) << c.what;
  }
}

TEST(Messages, LengthsAreBounded) {
  EXPECT_EQ(msg::decode(std::string("\xff\xff\xff\xff", 4)).status, Decoded::Status::kTooBig);
  const size_t over = msg::kMaxMessage + 1;
  std::string hdr(4, '\0');
  for (int i = 0; i < 4; ++i)
    hdr[static_cast<size_t>(i)] = static_cast<char>((over >> (24 - 8 * i)) & 0xff);
  EXPECT_EQ(msg::decode(hdr).status, Decoded::Status::kTooBig);
  // A message longer than the maximum is refused, and what was there stays.
  std::string out = "kept";
  EXPECT_FALSE(msg::encode(msg::CliReply{1, std::string(msg::kMaxMessage, 'x')}, out));
  EXPECT_EQ(out, "kept");
  // Just under it is fine.
  out.clear();
  EXPECT_TRUE(msg::encode(msg::Error{std::string(msg::kMaxMessage - 16, 'x')}, out));
  EXPECT_EQ(msg::decode(out).status, Decoded::Status::kMessage);
}

TEST(Messages, GarbageNeverCrashesAndWhatDecodesRoundTrips) {
  std::mt19937 rng(8);
  const std::vector<msg::Message> all = samples();
  size_t decoded = 0, bad = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string in;
    if (iter % 2) {
      // A valid frame with random bytes changed (the length prefix kept).
      in = encoded(all[rng() % all.size()]);
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < flips && in.size() > 4; ++i)
        in[4 + rng() % (in.size() - 4)] = static_cast<char>(rng());
    } else {
      std::string body(rng() % 64, '\0');
      for (char& c : body)
        c = static_cast<char>(rng() % 16);  // small values: plausible flags, types, lengths
      in = frame(body);
    }
    const Decoded d = msg::decode(in);
    ASSERT_LE(d.used, in.size());
    if (d.status == Decoded::Status::kMessage) {
      ++decoded;
      std::string again;
      ASSERT_TRUE(msg::encode(d.message, again));
      const Decoded d2 = msg::decode(again);
      ASSERT_EQ(d2.status, Decoded::Status::kMessage);
      EXPECT_TRUE(d2.message == d.message);
    } else {
      ++bad;
      EXPECT_EQ(d.status, Decoded::Status::kBadFrame);
    }
  }
  EXPECT_GT(decoded, 0u);
  EXPECT_GT(bad, 0u);
}

TEST(Messages, StateJsonKeepsScalarsAndBytes) {
  nlohmann::json j = {{"max_frame_size", 16380},
                      {"pipelining", true},
                      {"neg", -5},
                      {"peer", std::string("\xff\xfe\x00x", 4)},
                      {"list", {1, 2}},
                      {"obj", {{"a", 1}}},
                      {"f", 1.5},
                      {"n", nullptr}};
  const msg::ConnState st = msg::state_from_json(j);
  EXPECT_EQ(st.size(), 4u);
  std::string wire;
  ASSERT_TRUE(msg::encode(msg::Handoff{"a", st}, wire));
  const Decoded d = msg::decode(wire);
  ASSERT_EQ(d.status, Decoded::Status::kMessage);
  const nlohmann::json back = msg::state_to_json(std::get<msg::Handoff>(d.message).state);
  EXPECT_EQ(back.value("max_frame_size", 0u), 16380u);
  EXPECT_EQ(back.value("pipelining", false), true);
  EXPECT_EQ(back.value("neg", 0), -5);
  EXPECT_EQ(back.value("peer", std::string()), std::string("\xff\xfe\x00x", 4));
  EXPECT_FALSE(back.contains("list") || back.contains("obj") || back.contains("f") ||
               back.contains("n"));
  EXPECT_TRUE(msg::state_from_json(nlohmann::json::array()).empty());
}

// The master CLI's words reach the worker as parsed: a backslash before '\r' (bytes 5c 0d)
// makes '\r' part of a word, and the word keeps it on the way.
TEST(Messages, CliWordsTravelExactly) {
  for (const std::string& line :
       {std::string("@1 show ip \\\r"), std::string("@1 show ip \xff"),
        std::string("@1 show ip a\\;b\\ c\\\\"), std::string(63, 'a') + "\xc3\xa9",
        std::string("@1 show ip \x1b[2J\x00z", 13)}) {
    const std::vector<cli::Words> cmds = cli::split_commands(line);
    ASSERT_FALSE(cmds.empty());
    std::string wire;
    ASSERT_TRUE(msg::encode(msg::CliRequest{5, cmds[0]}, wire));
    const Decoded d = msg::decode(wire);
    ASSERT_EQ(d.status, Decoded::Status::kMessage);
    EXPECT_EQ(std::get<msg::CliRequest>(d.message).words, cmds[0]);
  }
  const auto w = cli::split_commands("@1 show ip \\\r")[0];
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[3], "\r");
}

// ---- the Channel on a socketpair ----------------------------------------------------------

struct Pair {
  uv_loop_t loop;
  Channel* a = nullptr;
  Channel* b = nullptr;
  std::vector<std::pair<msg::Message, int>> got;  // what b received
  bool b_closed = false;

  Pair() {
    uv_loop_init(&loop);
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    a = Channel::open(
        &loop, fds[0],
        [](msg::Message&&, int fd) {
          if (fd >= 0) ::close(fd);
        },
        [] {});
    b = Channel::open(
        &loop, fds[1], [this](msg::Message&& m, int fd) { got.emplace_back(std::move(m), fd); },
        [this] {
          b_closed = true;
          b = nullptr;
        });
  }
  ~Pair() {
    if (a) a->close();
    if (b) b->close();
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    for (auto& [m, fd] : got)
      if (fd >= 0) ::close(fd);
  }
  // Runs the loop until `n` messages arrived or b closed.
  void run_until(size_t n) {
    for (int i = 0; i < 2000 && got.size() < n && !b_closed; ++i)
      uv_run(&loop, UV_RUN_NOWAIT);
  }
};

TEST(ChannelTest, MessagesWithEveryByteArriveInOrder) {
  Pair p;
  std::vector<msg::Message> sent;
  for (const msg::Message& m : samples())
    if (!msg::carries_fd(m)) {
      ASSERT_TRUE(p.a->send(m));
      sent.push_back(m);
    }
  p.run_until(sent.size());
  ASSERT_EQ(p.got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_TRUE(p.got[i].first == sent[i]) << msg::name(sent[i]);
    EXPECT_EQ(p.got[i].second, -1);
  }
  // A message that needs a socket cannot go without one.
  EXPECT_FALSE(p.a->send(msg::Handoff{"a", {}}));
}

TEST(ChannelTest, SocketsTravelWithTheirMessage) {
  Pair p;
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ASSERT_TRUE(p.a->send(msg::Engine{"before"}));
  p.a->send_fd(msg::Adopt{"agent\xff", sample_state(all_bytes())}, sv[0]);
  ASSERT_TRUE(p.a->send(msg::Engine{"after"}));
  p.run_until(3);
  ASSERT_EQ(p.got.size(), 3u);
  EXPECT_EQ(p.got[0].second, -1);
  EXPECT_EQ(p.got[2].second, -1);
  const int fd = p.got[1].second;
  ASSERT_GE(fd, 0);
  EXPECT_EQ(std::get<msg::Adopt>(p.got[1].first).agent, "agent\xff");
  // The received socket is the other end of sv[1]'s pair.
  ASSERT_EQ(::write(sv[1], "ping", 4), 4);
  char buf[8] = {};
  EXPECT_EQ(::read(fd, buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  ::close(sv[1]);
}

TEST(ChannelTest, GarbageFrameIsSkippedAndTooLongFrameCloses) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  std::vector<msg::Message> got;
  bool closed = false;
  Channel* c = Channel::open(
      &loop, fds[1], [&](msg::Message&& m, int) { got.push_back(std::move(m)); },
      [&] { closed = true; });
  ASSERT_NE(c, nullptr);
  std::string wire = frame(std::string("\x00\xee garbage", 10));
  ASSERT_TRUE(msg::encode(msg::Engine{"\xff"}, wire));
  wire += std::string("\xff\xff\xff\xff", 4);  // longer than kMaxMessage
  ASSERT_EQ(::write(fds[0], wire.data(), wire.size()), static_cast<ssize_t>(wire.size()));
  for (int i = 0; i < 2000 && !closed; ++i)
    uv_run(&loop, UV_RUN_NOWAIT);
  EXPECT_TRUE(closed);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0] == msg::Message(msg::Engine{"\xff"}));
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&loop), 0);
  ::close(fds[0]);
}

}  // namespace
}  // namespace spoad::supervisor
