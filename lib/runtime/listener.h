// Binding listening sockets for agent servers: the master's (supervisor/listeners.h), or a
// worker's own when started by an older master.
#pragma once

#include <cstdint>
#include <string>

#include "config/config.h"

namespace spoad::runtime {

// Creates a TCP socket bound to `addr` with SO_REUSEADDR and SO_REUSEPORT (so the sockets the
// master binds for the slots of a pool, and a new spoad that could not take them over, share
// the address), non-blocking and
// close-on-exec, and listening with `backlog`. IPv6 sockets are IPv6-only. Host names are
// resolved (first address). Returns the fd; throws std::runtime_error naming the address and
// the system error.
int listen_tcp(const config::ListenAddress& addr, int backlog);

// Creates a Unix stream socket at `path`, listening with `backlog`. The socket is bound under a
// temporary name, given `mode` (permission bits; -1 keeps the umask's), and renamed over
// `path`: a previous spoad that still serves there is taken over without a moment where the
// path is missing, and keeps its (now nameless) socket until it exits. A path that exists and
// is not a socket is an error. Returns the fd and the inode of the new file in *inode.
// Throws std::runtime_error.
int listen_unix(const std::string& path, int backlog, uint64_t* inode, int mode = -1);

// Removes `path` if it is still the socket file with `inode` (one we created).
void unlink_if_owned(const std::string& path, uint64_t inode);

}  // namespace spoad::runtime
