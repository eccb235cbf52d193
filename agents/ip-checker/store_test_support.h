// Helpers shared by the ip-checker's store tests (store_format_test.cpp, store_test.cpp,
// ip_checker_store_test.cpp): runtime entries and changes from text, and a real redis-server
// on 127.0.0.1 and a free port, in a temporary directory.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "agents/ip-checker/entry.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_loop.h"

namespace spoad::agents::ip_checker::test {

inline RuntimeEntry entry(const std::string& list, const std::string& prefix, bool allow = false,
                          uint8_t score = 50, int64_t expires_s = 0, std::string comment = "") {
  RuntimeEntry e;
  e.list = list;
  bool masked = false;
  const char* why = nullptr;
  EXPECT_TRUE(parse_prefix(prefix, &e.prefix, &masked, &why)) << prefix;
  e.allow = allow;
  e.score = allow ? 0 : score;
  e.expires_s = expires_s;
  e.comment = std::move(comment);
  return e;
}

inline Change add(RuntimeEntry e) {
  return Change{Change::Kind::kAdd, std::move(e)};
}
inline Change del(const std::string& list, const std::string& prefix) {
  return Change{Change::Kind::kDel, entry(list, prefix, false, 0)};
}
inline Change clear(const std::string& list) {
  Change c{Change::Kind::kClear, {}};
  c.entry.list = list;
  return c;
}

inline int64_t now_s() {
  return static_cast<int64_t>(::time(nullptr));
}

inline std::string redis_server_path() {
  if (const char* p = std::getenv("SPOAD_REDIS_SERVER"); p && *p) return p;
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string f = (dir.empty() ? "." : dir) + "/redis-server";
    if (::access(f.c_str(), X_OK) == 0) return f;
  }
  return "";
}

inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

using Reply = std::unique_ptr<redisReply, void (*)(void*)>;

// One redis-server process on 127.0.0.1 and a free port, with its data in a temp dir.
class RedisServer {
 public:
  explicit RedisServer(bool appendonly = false, std::string password = "")
      : appendonly_(appendonly), password_(std::move(password)) {
    port_ = free_port();
  }
  ~RedisServer() {
    kill9();
    if (ctx_) redisFree(ctx_);
  }

  int port() const { return port_; }
  std::string url(const std::string& auth = "", int db = 0) const {
    return "redis://" + auth + "127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(db);
  }

  // Starts it and waits until it answers PING. False (with the reason added as a failure)
  // if it exits or does not answer within the guard. The first start takes another free port
  // when the server exits at once (another process took the port meanwhile).
  bool start() {
    for (int attempt = 1;; ++attempt) {
      std::string why;
      if (spawn_and_wait(&why)) return started_ = true;
      if (started_ || pid_ > 0 || attempt == 5) {
        ADD_FAILURE() << why << "; port " << port_ << "; its log:\n" << log_text();
        return false;
      }
      port_ = free_port();
    }
  }

  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  void kill9() {
    if (ctx_) redisFree(ctx_), ctx_ = nullptr;
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // A command on the test's own synchronous connection (database `db`).
  Reply cmd(const std::vector<std::string>& args) {
    if (!ctx_ && !connect_client()) return Reply(nullptr, freeReplyObject);
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args)
      argv.push_back(a.data()), lens.push_back(a.size());
    void* r = redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data());
    if (!r) redisFree(ctx_), ctx_ = nullptr;
    return Reply(static_cast<redisReply*>(r), freeReplyObject);
  }
  std::string get(const std::string& key) {
    Reply r = cmd({"GET", key});
    return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "(none)";
  }
  long long integer(const std::vector<std::string>& args) {
    Reply r = cmd(args);
    return r && r->type == REDIS_REPLY_INTEGER ? r->integer : -999;
  }
  std::vector<std::string> keys(const std::string& pattern) {
    Reply r = cmd({"KEYS", pattern});
    std::vector<std::string> out;
    if (r && r->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < r->elements; ++i)
        out.emplace_back(r->element[i]->str, r->element[i]->len);
    std::sort(out.begin(), out.end());
    return out;
  }
  void select(int db) { cmd({"SELECT", std::to_string(db)}); }

 private:
  bool connect_client() {
    if (ctx_) redisFree(ctx_);
    timeval tv{1, 0};
    ctx_ = redisConnectWithTimeout("127.0.0.1", port_, tv);
    if (!ctx_ || ctx_->err) {
      if (ctx_) redisFree(ctx_);
      ctx_ = nullptr;
      return false;
    }
    if (!password_.empty()) {
      auto* r = static_cast<redisReply*>(redisCommand(ctx_, "AUTH %s", password_.c_str()));
      if (r) freeReplyObject(r);
    }
    return true;
  }
  bool spawn_and_wait(std::string* why) {
    std::vector<std::string> args = {redis_server_path(), "--port", std::to_string(port_)};
    args.insert(args.end(), {"--bind", "127.0.0.1", "--save", "", "--daemonize", "no"});
    args.insert(args.end(), {"--dir", dir_.path(), "--logfile", dir_.file("redis.log")});
    args.insert(args.end(), {"--appendonly", appendonly_ ? "yes" : "no"});
    args.insert(args.end(), {"--appendfsync", "always"});
    if (!password_.empty()) args.insert(args.end(), {"--requirepass", password_});
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(spoad::testing::kGuardMs);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        *why = "redis-server exited";
        return false;
      }
      if (connect_client()) {
        Reply r = cmd({"PING"});
        if (r && r->type == REDIS_REPLY_STATUS && std::string(r->str) == "PONG") return true;
      }
      ::poll(nullptr, 0, 20);  // between two polls of the condition
    }
    *why = "redis-server did not answer PING";
    return false;
  }
  std::string log_text() const {
    std::ifstream f(dir_.file("redis.log"));
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  bool appendonly_;
  std::string password_;
  spoad::testing::TempDir dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  bool started_ = false;  // answered once (a restart keeps the port)
  redisContext* ctx_ = nullptr;
};

}  // namespace spoad::agents::ip_checker::test
