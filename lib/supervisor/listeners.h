// The master's listening sockets: every agent address is bound by the master (or taken from a
// predecessor, supervisor/takeover.h) and inherited by the workers, which never bind.
//
//   TCP agent, `workers: N`   N sockets with SO_REUSEPORT on the address, socket i for worker
//                             slot i; the kernel spreads new connections over them.
//   unix agent                one socket, shared by all its workers.
//
// A socket is closed only when no worker may still poll it: a worker that stops (reload,
// crash) closes its copy, and the master's copy keeps the connections waiting in its accept
// queue for the next worker of that slot. A reload that lowers N keeps the sockets with index
// >= N and gives each to worker (index mod N), so none is left unpolled. Sockets whose address
// left the configuration are closed once no worker of any generation runs that address
// (release_unused()).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"

namespace spoad::supervisor {

class Listeners {
 public:
  struct Socket {
    std::string address;  // config::ListenAddress::str()
    uint64_t slot = 0;    // worker slot index (0 for a unix socket)
    int fd = -1;
    uint64_t inode = 0;      // a unix socket's file inode (for unlink_if_owned), else 0
    bool owns_file = false;  // a unix socket file we may unlink (we bound it, or claimed it)
  };

  Listeners() = default;
  ~Listeners();
  Listeners(const Listeners&) = delete;
  Listeners& operator=(const Listeners&) = delete;

  // Takes `fd` (a listening socket received from a predecessor; owned from now on) as socket
  // `slot` of `address`. Returns false, and closes `fd`, when `cfg` has no agent on `address`,
  // when that socket is held already, or when `fd` is not a listening stream socket.
  bool adopt(const config::Config& cfg, const std::string& address, uint64_t slot, int fd,
             uint64_t inode);

  // Binds what `cfg` needs and is missing (runtime::listen_tcp / listen_unix with each agent's
  // backlog). Returns the number of sockets bound. Throws std::runtime_error naming the
  // address and the system error; the sockets bound before the failure stay.
  size_t bind_missing(const config::Config& cfg);

  // The fds a worker in slot `index` of agent `a` (a.workers slots) polls: socket `index`
  // and every socket j >= a.workers with j mod a.workers == index; for a unix agent, its one
  // socket. Empty if none is held.
  std::vector<int> fds_for(const config::AgentConfig& a, int index) const;

  // Closes (and, for unix sockets, unlinks if still ours) the sockets whose address is not in
  // `in_use`.
  void release_unused(const std::set<std::string>& in_use);

  // The unix socket files of sockets taken from a predecessor become ours to unlink (we serve
  // on them now), or stop being ours (a successor serves on them now).
  void claim_files();
  void disown_files();

  // Closes every socket, and unlinks the unix socket files we own.
  void close_all();

  const std::vector<Socket>& sockets() const { return sockets_; }

 private:
  const Socket* find(const std::string& address, uint64_t slot) const;
  std::vector<Socket> sockets_;
};

}  // namespace spoad::supervisor
