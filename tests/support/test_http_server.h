// Test support (tests only): a small real HTTP/1.1 server on 127.0.0.1.
//
// The server runs on its own thread with POSIX sockets and poll(): keep-alive connections,
// Content-Length request bodies, "Expect: 100-continue". It records every request and answers
// what the test's handler returns (or holds the request unanswered). down() closes the
// listening socket and every connection, so that connecting is refused; up() listens again on
// the same port.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace spoad::testing {

class TestHttpServer {
 public:
  struct Request {
    std::string method, target;
    std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
    std::string body;
    std::chrono::steady_clock::time_point at;  // when the whole request had arrived
    // The value of header `name` (lower case), or "".
    std::string header(const std::string& name) const {
      for (const auto& [k, v] : headers)
        if (k == name) return v;
      return {};
    }
  };
  struct Response {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    bool hold = false;  // never answer (the connection stays open until down() or the end)
  };
  using Handler = std::function<Response(const Request&)>;

  TestHttpServer() {
    if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe2");
    listen_fd_ = open_listener(0);
    thread_ = std::thread([this] { run(); });
  }

  ~TestHttpServer() {
    command(Cmd::kQuit);
    thread_.join();
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  uint16_t port() const { return port_; }
  std::string url(const std::string& path = "/v1/traces") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  // The handler runs on the server thread, under the server's lock.
  void set_handler(Handler h) {
    std::lock_guard<std::mutex> l(mu_);
    handler_ = std::move(h);
  }

  void down() { command(Cmd::kDown); }
  void up() { command(Cmd::kUp); }

  std::vector<Request> requests() const {
    std::lock_guard<std::mutex> l(mu_);
    return requests_;
  }
  size_t request_count() const {
    std::lock_guard<std::mutex> l(mu_);
    return requests_.size();
  }
  // Connections accepted so far.
  size_t accepted() const {
    std::lock_guard<std::mutex> l(mu_);
    return accepted_;
  }

 private:
  enum class Cmd { kNone, kDown, kUp, kQuit };
  struct Conn {
    int fd = -1;
    std::string in;
    bool continued = false;  // "100 Continue" sent for the current request
    bool held = false;       // a request is held unanswered: read nothing more
  };

  int open_listener(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw std::runtime_error("socket");
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 256) != 0) {
      ::close(fd);
      throw std::runtime_error(std::string("bind/listen: ") + std::strerror(errno));
    }
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    return fd;
  }

  // Hands `c` to the server thread and waits until it was carried out.
  void command(Cmd c) {
    std::unique_lock<std::mutex> l(mu_);
    cmd_ = c;
    const char b = 1;
    (void)!::write(wake_[1], &b, 1);
    cv_.wait(l, [this] { return cmd_ == Cmd::kNone; });
  }

  void close_all_conns() {
    for (Conn& c : conns_)
      ::close(c.fd);
    conns_.clear();
  }

  void run() {
    for (;;) {
      std::vector<pollfd> fds;
      fds.push_back({wake_[0], POLLIN, 0});
      if (listen_fd_ >= 0) fds.push_back({listen_fd_, POLLIN, 0});
      const size_t first_conn = fds.size();
      for (const Conn& c : conns_)
        fds.push_back({c.fd, static_cast<short>(c.held ? 0 : POLLIN), 0});
      ::poll(fds.data(), fds.size(), 1000);

      if (fds[0].revents) {
        char buf[64];
        while (::read(wake_[0], buf, sizeof(buf)) > 0) {
        }
        std::unique_lock<std::mutex> l(mu_);
        const Cmd cmd = cmd_;
        if (cmd == Cmd::kDown || cmd == Cmd::kQuit) {
          if (listen_fd_ >= 0) ::close(listen_fd_);
          listen_fd_ = -1;
          close_all_conns();
        } else if (cmd == Cmd::kUp && listen_fd_ < 0) {
          listen_fd_ = open_listener(port_);
        }
        cmd_ = Cmd::kNone;
        cv_.notify_all();
        if (cmd == Cmd::kQuit) return;
        continue;  // the fd set changed
      }
      if (listen_fd_ >= 0 && fds[1].revents) {
        for (;;) {
          const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
          if (fd < 0) break;
          conns_.push_back(Conn{fd});
          std::lock_guard<std::mutex> l(mu_);
          ++accepted_;
        }
      }
      std::vector<int> dead;
      for (size_t i = first_conn; i < fds.size(); ++i) {
        if (!fds[i].revents) continue;
        Conn* c = find(fds[i].fd);
        if (!c || !serve(*c)) dead.push_back(fds[i].fd);
      }
      for (int fd : dead) {
        for (size_t i = 0; i < conns_.size(); ++i) {
          if (conns_[i].fd == fd) {
            ::close(fd);
            conns_.erase(conns_.begin() + static_cast<long>(i));
            break;
          }
        }
      }
    }
  }

  Conn* find(int fd) {
    for (Conn& c : conns_)
      if (c.fd == fd) return &c;
    return nullptr;
  }

  static void write_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        return;
      }
      off += static_cast<size_t>(n);
    }
  }

  static const char* reason(int status) {
    switch (status) {
      case 200:
        return "OK";
      case 400:
        return "Bad Request";
      case 429:
        return "Too Many Requests";
      case 500:
        return "Internal Server Error";
      case 503:
        return "Service Unavailable";
      default:
        return "Status";
    }
  }

  // Reads what is there and answers every whole request. False: close the connection.
  bool serve(Conn& c) {
    char buf[65536];
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    c.in.append(buf, static_cast<size_t>(n));
    while (!c.held) {
      const size_t end = c.in.find("\r\n\r\n");
      if (end == std::string::npos) return true;
      Request r;
      size_t pos = c.in.find("\r\n");
      const std::string line = c.in.substr(0, pos);
      const size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
      if (sp1 == std::string::npos || sp2 == sp1) return false;
      r.method = line.substr(0, sp1);
      r.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
      size_t content_length = 0;
      bool expect = false;
      while (pos < end) {
        const size_t next = c.in.find("\r\n", pos + 2);
        const std::string h = c.in.substr(pos + 2, next - pos - 2);
        pos = next;
        const size_t colon = h.find(':');
        if (colon == std::string::npos) continue;
        std::string k = h.substr(0, colon);
        for (char& ch : k)
          ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::string v = h.substr(colon + 1);
        while (!v.empty() && v.front() == ' ')
          v.erase(0, 1);
        if (k == "content-length") content_length = std::stoul(v);
        if (k == "expect") expect = true;
        r.headers.emplace_back(std::move(k), std::move(v));
      }
      if (c.in.size() < end + 4 + content_length) {
        if (expect && !c.continued) {
          write_all(c.fd, "HTTP/1.1 100 Continue\r\n\r\n");
          c.continued = true;
        }
        return true;
      }
      r.body = c.in.substr(end + 4, content_length);
      c.in.erase(0, end + 4 + content_length);
      c.continued = false;
      r.at = std::chrono::steady_clock::now();
      Response resp;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (handler_) resp = handler_(r);
        requests_.push_back(std::move(r));
      }
      if (resp.hold) {
        c.held = true;
        return true;
      }
      std::string out = "HTTP/1.1 " + std::to_string(resp.status) + " " + reason(resp.status) +
                        "\r\nContent-Length: " + std::to_string(resp.body.size()) + "\r\n";
      for (const auto& [k, v] : resp.headers)
        out += k + ": " + v + "\r\n";
      out += "\r\n" + resp.body;
      write_all(c.fd, out);
    }
    return true;
  }

  int wake_[2] = {-1, -1};
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::vector<Conn> conns_;  // server thread only
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Cmd cmd_ = Cmd::kNone;
  Handler handler_;
  std::vector<Request> requests_;
  size_t accepted_ = 0;
};

}  // namespace spoad::testing
