// The messages of the master <-> worker channel (supervisor/channel.h): one struct per message
// type, and their wire codec. Every text field is a byte string: configuration text, CLI words
// and answers, engine-ids and error messages travel unchanged, whatever their bytes (invalid
// UTF-8, NUL, control bytes). Nothing here throws on any input, except std::bad_alloc.
//
// Frame layout (all of it ours; both ends are the same spoad binary):
//   u32 length   big-endian, bytes after these 4, 2..kMaxMessage
//   u8  flags    bit 0: a socket travels with this frame (SCM_RIGHTS); set for exactly the
//                types that carry one (Adopt, Handoff, Listener); other bits are 0
//   u8  type     the alternative's index in Message + 1 (Init = 1 ... PoolState = 19). A reload
//                may run a newer binary beside an older master, and a takeover an older
//                predecessor: only append new types, never change an existing one.
//   fields       in declaration order: integers as LEB128 varints (signed ones zigzag-encoded
//                first), bools as one byte 0 or 1, byte strings as a varint length and the raw
//                bytes, lists as a varint count and the items
// Decoding checks every length against the bytes left before it allocates, rejects trailing
// bytes, unknown types and flags, and never recurses, so garbage costs at most one frame.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace spoad::supervisor::msg {

// The largest frame (bytes after the length) either end sends or accepts: above it the
// sender refuses to send and the receiver closes the channel.
inline constexpr size_t kMaxMessage = 64u << 20;

// How an old worker lets go of its connections (runtime::DrainMode).
enum class StopMode : uint8_t { kDisconnect = 0, kHandOff = 1, kWait = 2 };

// The state of an established SPOP connection handed from an old worker to a new one: a flat
// list of named scalars, the runtime's state object (runtime/connection.cpp) field by field.
struct StateField {
  std::string key;
  std::variant<bool, uint64_t, int64_t, std::string> value;
  bool operator==(const StateField&) const = default;
};
using ConnState = std::vector<StateField>;

// ---- master -> worker ---------------------------------------------------------------------
struct Init {          // the first message: what to serve
  std::string config;  // the configuration file's bytes, as the master validated them
  std::string file;    // its path, for error messages
  uint64_t agent = 0;  // index in the file's agents list
  int64_t relative_pid = 0;
  int64_t generation = 0;
  int64_t listen_fd = -1;  // the inherited listening socket of a unix agent, or -1
  std::string log_level;   // -l, or "" for the file's
  bool operator==(const Init&) const = default;
};
struct CliRequest {  // run one command: the words exactly as the master CLI parsed them
  uint64_t id = 0;
  std::vector<std::string> words;
  bool operator==(const CliRequest&) const = default;
};
struct SoftStop {  // as SIGUSR1, bounded by grace_ms (milliseconds)
  uint64_t grace_ms = 0;
  StopMode mode = StopMode::kDisconnect;
  bool operator==(const SoftStop&) const = default;
};
struct Succession {  // a successor serves without a takeover: close new engines at HELLO
  std::vector<std::string> engines;  // the engine-ids still served
  bool operator==(const Succession&) const = default;
};
struct Adopt {  // + a socket: serve this established connection
  std::string agent;
  ConnState state;
  bool operator==(const Adopt&) const = default;
};
struct HandoffAck {  // the master read a Handoff (the worker may exit)
  bool operator==(const HandoffAck&) const = default;
};

// ---- worker -> master ---------------------------------------------------------------------
struct Ready {  // the agent listens: the worker serves
  int64_t pid = 0;
  std::string version;
  bool operator==(const Ready&) const = default;
};
struct Error {  // the worker could not start; it exits
  std::string message;
  bool operator==(const Error&) const = default;
};
struct CliReply {  // the answer to CliRequest `id`
  uint64_t id = 0;
  std::string output;
  bool operator==(const CliReply&) const = default;
};
struct Handoff {  // + a socket: an idle connection for the new generation
  std::string agent;
  ConnState state;
  bool operator==(const Handoff&) const = default;
};
struct Engine {  // an engine-id (one HAProxy process) this worker saw first
  std::string id;
  bool operator==(const Engine&) const = default;
};

// ---- master -> worker, appended ---------------------------------------------------------
struct Listen {  // sent before Init: the inherited listening sockets (fd numbers) to poll
  std::vector<int64_t> fds;
  bool operator==(const Listen&) const = default;
};

// ---- takeover: a new spoad (successor) <-> the one it replaces (predecessor) -----------------
// On the predecessor's takeover socket (supervisor/takeover.h), in this order:
//   successor -> predecessor  Takeover
//   predecessor -> successor  PoolState per agent with a pool state, Listener (+ socket) per
//                             listening socket, then Listeners
//   successor -> predecessor  Serving, once its workers serve and it has published
//   predecessor -> successor  Adopt (+ socket) per connection its workers hand off
//   successor -> predecessor  HandoffAck per Adopt read
struct Takeover {  // give me your listening sockets
  int64_t pid = 0;
  std::string version;
  bool operator==(const Takeover&) const = default;
};
struct Listener {       // + a listening socket
  std::string address;  // config::ListenAddress::str()
  uint64_t slot = 0;    // worker slot index it serves (0 for a unix socket)
  uint64_t inode = 0;   // a unix socket's file inode, else 0
  bool operator==(const Listener&) const = default;
};
struct Listeners {  // the end of the list: `count` Listener messages were sent
  int64_t pid = 0;
  uint64_t count = 0;
  bool operator==(const Listeners&) const = default;
};
struct Serving {  // the successor serves: hand the connections over and leave
  int64_t pid = 0;
  bool operator==(const Serving&) const = default;
};

// ---- master -> worker, appended ---------------------------------------------------------
// Sent before Init (after Listen): the worker's metrics arena (metrics/arena.h), a memfd the
// master created and the worker inherited at spawn, as that fd's number in the worker. The
// worker maps it writable; the master keeps a read-only mapping and reads it at each scrape
// and once more after the worker exited. A worker that never gets it (a master older than
// this message) counts in a private arena nobody reads; an older worker skips it (unknown
// type) and does the same.
struct Metrics {
  int64_t fd = -1;
  bool operator==(const Metrics&) const = default;
};

// ---- worker -> master, appended -----------------------------------------------------------
// The answer to CliRequest `id`, replacing CliReply: `ok` is false when the command failed
// (agent::CommandError, an unknown command, an internal error); `text` is the answer either
// way. A worker sends it only to a master that sent it a PoolState before Init (a master that
// reads both new types); to an older master it sends CliReply. The master takes a CliReply as
// ok = true.
struct CliResult {
  uint64_t id = 0;
  bool ok = true;
  std::string text;
  bool operator==(const CliResult&) const = default;
};

// ---- both directions, appended ------------------------------------------------------------
// The pool state of agent `agent` (agent/agent.h, Agent::pool_state): any bytes, "" for none.
//   worker -> master  at once when the agent calls Context::pool_state_changed (before the
//                     CliResult of the command that changed it: the channel is ordered); the
//                     master keeps the latest per agent name
//   master -> worker  exactly one, before Init (after Listen and Metrics): the state the master
//                     keeps for the worker's agent, "" if none. It also tells the worker that
//                     its master reads CliResult and PoolState
//   takeover          predecessor -> successor, one per agent with a non-empty state, before
//                     Listeners
struct PoolState {
  std::string agent;
  std::string state;
  bool operator==(const PoolState&) const = default;
};

using Message = std::variant<Init, CliRequest, SoftStop, Succession, Adopt, HandoffAck, Ready,
                             Error, CliReply, Handoff, Engine, Listen, Takeover, Listener,
                             Listeners, Serving, Metrics, CliResult, PoolState>;

// The message's name, for logs ("init", "cli-request", ...).
const char* name(const Message& m);

// True for the types that travel with a socket (Adopt, Handoff, Listener).
bool carries_fd(const Message& m);

// Appends `m` as one frame to `out`. Returns false, leaving `out` unchanged, when the frame
// would exceed kMaxMessage.
bool encode(const Message& m, std::string& out);

struct Decoded {
  enum class Status {
    kMessage,   // `message` holds a frame's message; `used` bytes consumed
    kNeedMore,  // no whole frame yet
    kBadFrame,  // a whole frame that is not a valid message: skip `used` bytes; `with_fd` says
                // whether a socket came with it (the caller closes it); `error` says why
    kTooBig,    // the length exceeds kMaxMessage: the stream cannot be trusted any more
  };
  Status status = Status::kNeedMore;
  size_t used = 0;  // bytes of `in` this frame took (length prefix included)
  bool with_fd = false;
  Message message;
  const char* error = "";
};

// Reads the frame at the start of `in` (any bytes). Never reads past `in`.
Decoded decode(std::string_view in);

// The runtime's hand-off state object <-> ConnState. Members of `state` that are not scalars
// (arrays, objects, floats, null) are dropped; strings stay bytes in both directions.
ConnState state_from_json(const nlohmann::json& state);
nlohmann::json state_to_json(const ConnState& state);

}  // namespace spoad::supervisor::msg
