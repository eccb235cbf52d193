// Unit tests of the successor's end of a takeover (supervisor/takeover.h): take_over() against
// a fake predecessor in a thread: nobody there, a silent one, garbage, and two sockets passed.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "supervisor/messages.h"
#include "supervisor/takeover.h"

namespace spoad::supervisor {
namespace {

std::string temp_path(const char* name) {
  return std::string(::testing::TempDir()) + "spoad-takeover-" + std::to_string(::getpid()) + "-" +
         name;
}

int listen_at(const std::string& path) {
  ::unlink(path.c_str());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  EXPECT_EQ(::listen(fd, 4), 0);
  return fd;
}

int tcp_listener() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  EXPECT_EQ(::listen(fd, 4), 0);
  return fd;
}

void send_frame(int conn, const msg::Message& m, int fd = -1) {
  std::string data;
  ASSERT_TRUE(msg::encode(m, data));
  iovec iov{data.data(), data.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ASSERT_EQ(::sendmsg(conn, &mh, 0), static_cast<ssize_t>(data.size()));
}

// A fake predecessor: accepts one connection on `path`, reads the request, runs `answer`, then
// waits for the successor to close.
struct Fake {
  std::string path;
  int lfd;
  std::thread t;
  Fake(const std::string& p, std::function<void(int)> answer) : path(p), lfd(listen_at(p)) {
    t = std::thread([this, answer] {
      const int c = ::accept(lfd, nullptr, nullptr);
      if (c < 0) return;
      char buf[4096];
      (void)::read(c, buf, sizeof(buf));
      answer(c);
      while (::read(c, buf, sizeof(buf)) > 0) {
      }
      ::close(c);
    });
  }
  ~Fake() {
    t.join();
    ::close(lfd);
    ::unlink(path.c_str());
  }
};

TEST(Takeover, NobodyThereMeansBind) {
  const Predecessor p = take_over(temp_path("none"), 1000);
  EXPECT_EQ(p.outcome, Predecessor::Outcome::kNone);
  EXPECT_EQ(p.fd, -1);
  EXPECT_TRUE(p.sockets.empty());
}

TEST(Takeover, SilentPredecessorTimesOut) {
  const std::string path = temp_path("silent");
  const int lfd = listen_at(path);  // never accepts: the kernel completes the connect
  const Predecessor p = take_over(path, 100);
  EXPECT_EQ(p.outcome, Predecessor::Outcome::kFailed);
  EXPECT_NE(p.why.find("did not answer within 100 ms"), std::string::npos) << p.why;
  EXPECT_EQ(p.fd, -1);
  ::close(lfd);
  ::unlink(path.c_str());
}

TEST(Takeover, GarbageIsAFailure) {
  Fake f(temp_path("garbage"), [](int c) {
    const char junk[] = "\x00\x00\x00\x03\x00\xee\x01garbage";
    ASSERT_GT(::write(c, junk, sizeof(junk)), 0);
  });
  const Predecessor p = take_over(f.path, 60'000);
  EXPECT_EQ(p.outcome, Predecessor::Outcome::kFailed);
  EXPECT_NE(p.why.find("garbage"), std::string::npos) << p.why;
}

TEST(Takeover, WrongCountIsAFailureAndClosesTheSockets) {
  const int l = tcp_listener();
  Fake f(temp_path("count"), [l](int c) {
    send_frame(c, msg::Listener{"127.0.0.1:1", 0, 0}, l);
    send_frame(c, msg::Listeners{77, 2});
  });
  const Predecessor p = take_over(f.path, 60'000);
  EXPECT_EQ(p.outcome, Predecessor::Outcome::kFailed);
  EXPECT_TRUE(p.sockets.empty());
  ::close(l);
}

TEST(Takeover, PoolStatesArriveBeforeTheSockets) {
  const int a = tcp_listener();
  const std::string big(3u << 20, '\xab');  // larger than one read
  Fake f(temp_path("states"), [a, &big](int c) {
    send_frame(c, msg::PoolState{"iprep", std::string("v1\0\xff", 4)});
    send_frame(c, msg::PoolState{"big", big});
    send_frame(c, msg::Listener{"127.0.0.1:9000", 0, 0}, a);
    send_frame(c, msg::Listeners{4321, 1});
  });
  Predecessor p = take_over(f.path, 60'000);
  ASSERT_EQ(p.outcome, Predecessor::Outcome::kTaken) << p.why;
  ASSERT_EQ(p.pool_states.size(), 2u);
  EXPECT_EQ(p.pool_states[0].first, "iprep");
  EXPECT_EQ(p.pool_states[0].second, std::string("v1\0\xff", 4));
  EXPECT_EQ(p.pool_states[1].first, "big");
  EXPECT_TRUE(p.pool_states[1].second == big);
  ASSERT_EQ(p.sockets.size(), 1u);
  ::close(p.sockets[0].fd);
  ::close(p.fd);
  ::close(a);
}

TEST(Takeover, SocketsArriveWithTheirAddresses) {
  const int a = tcp_listener();
  const int b = tcp_listener();
  Fake f(temp_path("ok"), [a, b](int c) {
    send_frame(c, msg::Listener{"127.0.0.1:9000", 0, 0}, a);
    send_frame(c, msg::Listener{"unix:/x\xff", 0, 1234}, b);
    send_frame(c, msg::Listeners{4321, 2});
  });
  Predecessor p = take_over(f.path, 60'000);
  ASSERT_EQ(p.outcome, Predecessor::Outcome::kTaken) << p.why;
  EXPECT_EQ(p.pid, 4321);
  ASSERT_EQ(p.sockets.size(), 2u);
  EXPECT_EQ(p.sockets[0].address, "127.0.0.1:9000");
  EXPECT_EQ(p.sockets[1].address, "unix:/x\xff");
  EXPECT_EQ(p.sockets[1].inode, 1234u);
  // The same sockets: same local address as the ones sent.
  for (auto [mine, got] : {std::pair{a, p.sockets[0].fd}, std::pair{b, p.sockets[1].fd}}) {
    sockaddr_in x{}, y{};
    socklen_t lx = sizeof(x), ly = sizeof(y);
    ASSERT_EQ(::getsockname(mine, reinterpret_cast<sockaddr*>(&x), &lx), 0);
    ASSERT_EQ(::getsockname(got, reinterpret_cast<sockaddr*>(&y), &ly), 0);
    EXPECT_EQ(x.sin_port, y.sin_port);
    ::close(got);
  }
  ASSERT_GE(p.fd, 0);
  ::close(p.fd);
  ::close(a);
  ::close(b);
}

}  // namespace
}  // namespace spoad::supervisor
