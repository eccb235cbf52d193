#include "supervisor/listeners.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/listener.h"

namespace spoad::supervisor {

namespace {

bool is_listening_stream(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) != 0 || v != 1) return false;
  len = sizeof(v);
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) == 0 && v == SOCK_STREAM;
}

}  // namespace

Listeners::~Listeners() {
  for (const Socket& s : sockets_)
    ::close(s.fd);
}

const Listeners::Socket* Listeners::find(const std::string& address, uint64_t slot) const {
  for (const Socket& s : sockets_)
    if (s.address == address && s.slot == slot) return &s;
  return nullptr;
}

bool Listeners::adopt(const config::Config& cfg, const std::string& address, uint64_t slot, int fd,
                      uint64_t inode) {
  const config::AgentConfig* agent = nullptr;
  for (const auto& a : cfg.agents)
    if (a.listen.str() == address) agent = &a;
  const bool is_unix = agent && agent->listen.kind == config::ListenAddress::Kind::kUnix;
  if (!agent || find(address, slot) || (is_unix && slot != 0) || !is_listening_stream(fd)) {
    ::close(fd);
    return false;
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  sockets_.push_back({address, slot, fd, is_unix ? inode : 0, false});
  return true;
}

size_t Listeners::bind_missing(const config::Config& cfg) {
  size_t bound = 0;
  for (const auto& a : cfg.agents) {
    const std::string address = a.listen.str();
    if (a.listen.kind == config::ListenAddress::Kind::kUnix) {
      if (find(address, 0)) continue;
      Socket s{address, 0, -1, 0, true};
      s.fd = runtime::listen_unix(a.listen.path, a.runtime.backlog, &s.inode);
      sockets_.push_back(s);
      ++bound;
      continue;
    }
    for (int i = 0; i < a.workers; ++i) {
      if (find(address, static_cast<uint64_t>(i))) continue;
      sockets_.push_back({address, static_cast<uint64_t>(i),
                          runtime::listen_tcp(a.listen, a.runtime.backlog), 0, false});
      ++bound;
    }
  }
  return bound;
}

std::vector<int> Listeners::fds_for(const config::AgentConfig& a, int index) const {
  std::vector<int> fds;
  const std::string address = a.listen.str();
  const bool is_unix = a.listen.kind == config::ListenAddress::Kind::kUnix;
  const uint64_t n = a.workers > 0 ? static_cast<uint64_t>(a.workers) : 1;
  // Socket `index` first: the worker's own; then the ones a smaller pool left over.
  if (const Socket* own = find(address, is_unix ? 0 : static_cast<uint64_t>(index)))
    fds.push_back(own->fd);
  if (is_unix) return fds;
  for (const Socket& s : sockets_)
    if (s.address == address && s.slot >= n && s.slot % n == static_cast<uint64_t>(index))
      fds.push_back(s.fd);
  return fds;
}

void Listeners::release_unused(const std::set<std::string>& in_use) {
  for (auto it = sockets_.begin(); it != sockets_.end();) {
    if (in_use.contains(it->address)) {
      ++it;
      continue;
    }
    ::close(it->fd);
    if (it->owns_file)
      runtime::unlink_if_owned(it->address.substr(5), it->inode);  // "unix:" + path
    it = sockets_.erase(it);
  }
}

void Listeners::claim_files() {
  for (Socket& s : sockets_)
    s.owns_file = s.inode != 0;
}

void Listeners::disown_files() {
  for (Socket& s : sockets_)
    s.owns_file = false;
}

void Listeners::close_all() {
  for (const Socket& s : sockets_) {
    ::close(s.fd);
    if (s.owns_file) runtime::unlink_if_owned(s.address.substr(5), s.inode);
  }
  sockets_.clear();
}

}  // namespace spoad::supervisor
