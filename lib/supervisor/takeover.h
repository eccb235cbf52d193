// Takeover between spoad instances: a new spoad (the successor) started while an old one (the
// predecessor) runs with the same cli.socket takes the predecessor's listening sockets over a
// Unix socket (SCM_RIGHTS) instead of binding new ones, then receives the predecessor's
// established connections, as HAProxy's `expose-fd listeners` / `-x` and Envoy's hot restart
// do. No listening socket is closed and no connection gets a DISCONNECT.
//
// Every master publishes a takeover socket at takeover_path(cli.socket), bound by rename at
// the moment it publishes its CLI socket (Master::publish), so a successor always connects to
// the instance that serves now. Only a process of the same uid is answered (SO_PEERCRED, both
// ways). The conversation (supervisor/messages.h, "takeover") runs on a Channel once the
// successor holds the sockets; this file has its two ends' setup.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace spoad::supervisor {

// cli_path + ".takeover".
std::string takeover_path(const std::string& cli_path);

// What a successor got from its predecessor at start.
struct Predecessor {
  enum class Outcome {
    kNone,    // nobody listens at the path (no file, connection refused): bind everything
    kTaken,   // `sockets` received; `fd` is the connection for the rest of the conversation
    kFailed,  // a predecessor is there but did not answer in time, or sent garbage: `why`
  };
  struct Socket {
    std::string address;  // config::ListenAddress::str()
    uint64_t slot = 0;
    uint64_t inode = 0;
    int fd = -1;  // owned by the caller
  };
  Outcome outcome = Outcome::kNone;
  std::string why;  // kNone, kFailed: for the log
  int64_t pid = 0;  // kTaken: the predecessor master's pid
  std::vector<Socket> sockets;
  // kTaken: the pool states (agent name, state bytes) the predecessor keeps (master.h)
  std::vector<std::pair<std::string, std::string>> pool_states;
  int fd = -1;  // kTaken: connected Unix stream socket, owned by the caller
};

// Blocking, before the successor's loop runs: connects to `path`, sends Takeover and reads
// PoolState and Listener messages (each Listener with its socket) up to the closing Listeners,
// at most `timeout_ms` milliseconds in all. Never throws except std::bad_alloc; on kNone and
// kFailed every fd it received is closed.
Predecessor take_over(const std::string& path, uint64_t timeout_ms);

// The predecessor's end: the takeover socket, accepting successors on `loop`.
class TakeoverSocket {
 public:
  // `on_peer(fd, pid)` gets each connection (owned from then on) from a process of our uid;
  // others are closed and logged.
  using PeerCb = std::function<void(int fd, int pid)>;

  // Binds `path` (runtime::listen_unix: by rename, mode 0600) and accepts. Throws
  // std::runtime_error naming the path and the system error.
  static TakeoverSocket* open(uv_loop_t* loop, const std::string& path, PeerCb on_peer);

  // Stops accepting, closes the socket, unlinks the file if it is still ours, and frees the
  // object once libuv is done with it. The caller must forget its pointer.
  void close();

 private:
  TakeoverSocket() = default;
  static void on_readable(uv_poll_t* p, int status, int events);

  uv_poll_t poll_;
  int fd_ = -1;
  std::string path_;
  uint64_t inode_ = 0;
  PeerCb on_peer_;
};

}  // namespace spoad::supervisor
