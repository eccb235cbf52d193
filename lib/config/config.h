// The spoad configuration file (YAML). Shape:
//
//   global:                     # optional
//     log-level: info           # trace|debug|info|warn|error|critical|off
//     grace: 10s                # soft-stop bound
//     pidfile: /run/spoad.pid   # the master's pid
//     handover: 3s              # under HAProxy's program section, see supervisor/master.h
//     takeover-timeout: 2s      # wait for a running spoad's sockets, see supervisor/takeover.h
//   metrics:                    # the master's Prometheus endpoint (supervisor/metrics_http.h)
//     listen: 127.0.0.1:9100    # host:port or [v6]:port; no endpoint when absent
//     max-connections: 16       # scrapers served at once; the others wait in the backlog
//     timeout: 10s              # a connection silent that long is closed (whole seconds)
//     max-connection-memory: 32k  # bytes per connection: request line and headers
//   cli:
//     socket: /run/spoad/master.sock
//     mode: "0600"
//     max-line: 64k             # longer lines close the client
//     max-queued: 1m            # bytes of commands waiting per client
//   agents:
//     - name: iprep
//       type: ip-checker
//       listen: 127.0.0.1:12345   # or [::1]:12345, or unix:/path
//       workers: 2
//       ...runtime keys (max-frame-size, ...) and the agent's own options
//
// Errors are thrown as ConfigError naming the file, line and key.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "options/options.h"

namespace spoad::agent {
class AgentOptions;
struct AgentType;
}  // namespace spoad::agent

namespace spoad::config {

struct ListenAddress {
  enum class Kind { kTcp, kUnix };
  Kind kind = Kind::kTcp;
  std::string host;  // IPv4 or IPv6 literal, or a name; "" when kind is kUnix
  uint16_t port = 0;
  std::string path;  // kUnix

  // "127.0.0.1:12345", "[::1]:12345" or "unix:/run/spoad/iprep.sock".
  std::string str() const;
  bool operator==(const ListenAddress&) const = default;
};

// Parses "host:port", "[v6]:port", "*:port" (all IPv4 addresses), ":::port" is not accepted
// (use "[::]:port"), or "unix:/path". Returns false and sets *err when malformed.
bool parse_listen(std::string_view s, ListenAddress* out, std::string* err);

// Per-agent protocol and connection settings, read from the agent's mapping.
struct RuntimeSettings {
  uint32_t max_frame_size = 16380;          // bytes; we announce min(this, HAProxy's)
  uint32_t max_inflight = 64;               // NOTIFYs in flight per connection
  uint64_t max_fragmented_size = 4u << 20;  // bytes of one reassembled NOTIFY
  // Bytes of reassembly buffers held at once by all the connections of this agent in one
  // worker; default max(16 MiB, max_fragmented_size). Beyond it the connection whose fragment
  // does not fit gets AGENT-DISCONNECT status 13 (resource allocation error).
  uint64_t max_reassembly_bytes = 16u << 20;
  bool pipelining = true;                 // announce "pipelining"
  bool fragmentation = true;              // announce "fragmentation"
  bool async = false;                     // announce "async"
  uint64_t hello_timeout_ms = 5'000;      // wait for HAPROXY-HELLO
  uint64_t idle_timeout_ms = 300'000;     // close a connection idle this long
  uint64_t fragment_timeout_ms = 10'000;  // first fragment -> whole NOTIFY, at most
  uint32_t max_connections = 10'000;      // per worker; beyond, accept waits (counted)
  int backlog = 1024;
};

struct AgentConfig {
  std::string name;
  std::string type;
  ListenAddress listen;
  int workers = 1;
  RuntimeSettings runtime;
  const agent::AgentType* agent_type = nullptr;
  std::shared_ptr<const agent::AgentOptions> options;
  int line = 0;  // where the agent is defined
};

struct CliConfig {
  std::string socket;    // "" = no master CLI
  uint32_t mode = 0600;  // permission bits of the socket
  // Per client budgets of the master CLI (cli/master_cli.h), bytes.
  uint64_t max_line = 64u << 10;   // cli.max-line: one line, 1k-1m
  uint64_t max_queued = 1u << 20;  // cli.max-queued: commands waiting, 4k-64m
};

// The master's `/metrics` endpoint (the `metrics:` section; `--metrics ADDR` overrides listen).
struct MetricsConfig {
  bool enabled = false;                        // metrics.listen is set
  ListenAddress listen;                        // TCP only
  uint32_t max_connections = 16;               // 1-1024 connections served at once
  uint64_t timeout_ms = 10'000;                // 1 s - 1 h, whole seconds
  uint64_t max_connection_memory = 32u << 10;  // bytes, 4k-1m
  bool operator==(const MetricsConfig&) const = default;
};

// Parses a metrics.listen / --metrics value: "host:port" or "[v6]:port" (parse_listen, TCP
// only). Returns false and sets *err when malformed.
bool parse_metrics_listen(std::string_view s, ListenAddress* out, std::string* err);

struct Config {
  std::string file;
  std::string log_level = "info";
  uint64_t grace_ms = 10'000;
  uint64_t handover_ms = 3'000;  // under HAProxy: accept until the successor serves, at most
  // At start: how long to wait for a running spoad (same cli.socket) to give its listening
  // sockets before binding new ones beside it (milliseconds, 0-60 s; 0: no takeover).
  uint64_t takeover_timeout_ms = 2'000;
  std::string pidfile;  // "" = none
  CliConfig cli;
  MetricsConfig metrics;
  std::vector<AgentConfig> agents;
};

// The largest configuration file read_text accepts (bytes).
inline constexpr uint64_t kMaxFileBytes = 16u << 20;

// The bytes of `path`. Throws ConfigError ("PATH: cannot open: ..." or "PATH: larger than ...").
std::string read_text(const std::string& path);

// Reads and validates `path`, including each agent's own options.
// Throws ConfigError ("FILE:LINE: KEY: MESSAGE").
Config load_config(const std::string& path);

// Same, from text; `file_name` is used in error messages.
Config parse_config(const std::string& yaml_text, const std::string& file_name);

}  // namespace spoad::config
