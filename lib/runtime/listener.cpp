#include "runtime/listener.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "util/escape.h"

namespace spoad::runtime {

namespace {

// `addr` may hold bytes from the configuration file (a unix path): shown escaped.
[[noreturn]] void fail(const std::string& what, const std::string& addr, int err) {
  throw std::runtime_error(what + " " + util::printable(addr, 4096) + ": " + std::strerror(err));
}

}  // namespace

int listen_tcp(const config::ListenAddress& addr, int backlog) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(addr.port);
  const int gai = ::getaddrinfo(addr.host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0)
    throw std::runtime_error("cannot resolve " + util::printable(addr.str(), 4096) + ": " +
                             ::gai_strerror(gai));
  const int family = res->ai_family;
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  const socklen_t sslen = res->ai_addrlen;
  ::freeaddrinfo(res);

  const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("cannot create a socket for", addr.str(), errno);
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    const int e = errno;
    ::close(fd);
    fail("cannot set SO_REUSEPORT on", addr.str(), e);
  }
  if (family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), sslen) != 0 || ::listen(fd, backlog) != 0) {
    const int e = errno;
    ::close(fd);
    fail("cannot listen on", addr.str(), e);
  }
  return fd;
}

int listen_unix(const std::string& path, int backlog, uint64_t* inode, int mode) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode))
    throw std::runtime_error("cannot listen on unix:" + util::printable(path, 4096) +
                             ": the file exists and is not a socket");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  if (tmp.size() >= sizeof(sockaddr_un::sun_path))
    throw std::runtime_error("unix socket path too long: " + util::printable(path, 4096));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("cannot create a socket for", "unix:" + path, errno);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, tmp.c_str(), sizeof(sa.sun_path) - 1);
  ::unlink(tmp.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      (mode >= 0 && ::chmod(tmp.c_str(), static_cast<mode_t>(mode)) != 0) ||
      ::listen(fd, backlog) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("cannot listen on", "unix:" + path, e);
  }
  *inode = ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
  return fd;
}

void unlink_if_owned(const std::string& path, uint64_t inode) {
  struct stat st {};
  if (inode != 0 && ::lstat(path.c_str(), &st) == 0 && st.st_ino == inode) ::unlink(path.c_str());
}

}  // namespace spoad::runtime
