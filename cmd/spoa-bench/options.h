// spoa-bench command line: the options, the target address and the NOTIFY arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spop/types.h"

namespace spoad::bench {

// Where the agent listens: "host:port", "[v6]:port" or "unix:/path".
struct Address {
  enum class Kind { kTcp, kUnix };
  Kind kind = Kind::kTcp;
  std::string host;  // as given, without brackets; kTcp only
  uint16_t port = 0;
  std::string path;  // kUnix only

  std::string str() const;
};

// Parses an address. Returns false and sets *err when malformed.
bool parse_address(const std::string& s, Address* out, std::string* err);

// One NOTIFY argument, from "--arg name=type:value". Owns its bytes; make_value() returns a
// spop::Value that views them (valid while the ArgSpec lives and is not moved).
struct ArgSpec {
  std::string name;  // may be empty (an unnamed argument, as HAProxy's `args src`)
  spop::DataType type = spop::DataType::kNull;
  bool b = false;
  uint64_t u64 = 0;   // integers, two's complement for the signed types
  std::string bytes;  // str, bin, and the 4 or 16 network-order bytes of ipv4/ipv6

  spop::Value make_value() const;
};

// Parses "name=type:value". Types: null, bool, int32, uint32, int64, uint64, ipv4, ipv6, str,
// bin (hex digits, or @FILE for a file's content). For null the ":value" part may be omitted.
// Returns false and sets *err when malformed.
bool parse_arg(const std::string& s, ArgSpec* out, std::string* err);

struct Options {
  Address address;
  int connections = 4;     // TCP or unix connections
  int depth = 16;          // NOTIFYs in flight per connection
  int threads = 1;         // event loops (threads); connections are shared out
  double duration_s = 10;  // measured window, seconds; 0 = no limit (--requests)
  double warmup_s = 1;     // seconds before the measured window
  uint64_t requests = 0;   // stop after this many measured ACKs; 0 = no limit
  double timeout_s = 5;    // seconds: connect + HELLO, and each NOTIFY's ACK
  uint32_t max_frame_size = spop::kDefaultFrameSize;  // bytes, announced in HAPROXY-HELLO
  bool pipelining = true;                             // announce "pipelining"
  bool async = false;                                 // also announce "async"
  std::string message = "check-client-ip";
  std::vector<ArgSpec> args;  // in the order given
  bool random_ip = false;     // vary every ipv4 argument per NOTIFY
  uint64_t seed = 1;          // of the --random-ip generator
  bool json = false;
  bool verbose = false;  // report every error on stderr, not only the first ones
};

// Parses the command line. Returns -1 to go on, or the exit status to return at once: 0 after
// --help or --version, 2 for a usage error (already reported on stderr).
int parse_options(int argc, char** argv, Options* out);

}  // namespace spoad::bench
