#include "config/config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "agent/registry.h"
#include "spop/types.h"
#include "util/text.h"

namespace spoad::config {

namespace {

std::string known_types() {
  std::string s;
  for (const auto* t : agent::agent_types()) {
    if (!s.empty()) s += ", ";
    s += t->name;
  }
  return s;
}

RuntimeSettings read_runtime(Options& o) {
  RuntimeSettings r;
  r.max_frame_size = static_cast<uint32_t>(
      o.size("max-frame-size", r.max_frame_size, spop::kMinFrameSize, 16u << 20));
  r.max_inflight = static_cast<uint32_t>(o.integer("max-inflight", r.max_inflight, 1, 100000));
  r.max_fragmented_size =
      o.size("max-fragmented-size", r.max_fragmented_size, 1024, uint64_t{1} << 30);
  r.max_reassembly_bytes =
      o.size("max-reassembly-bytes", std::max(r.max_reassembly_bytes, r.max_fragmented_size), 1024,
             uint64_t{1} << 40);
  if (r.max_reassembly_bytes < r.max_fragmented_size)
    o.fail("max-reassembly-bytes",
           "smaller than max-fragmented-size (" + std::to_string(r.max_fragmented_size) +
               " bytes): no fragmented NOTIFY of that size could ever be reassembled");
  r.pipelining = o.boolean("pipelining", r.pipelining);
  r.fragmentation = o.boolean("fragmentation", r.fragmentation);
  r.async = o.boolean("async", r.async);
  Options t = o.map("timeout");
  r.hello_timeout_ms = t.duration_ms("hello", r.hello_timeout_ms, 1, 3'600'000);
  r.idle_timeout_ms = t.duration_ms("idle", r.idle_timeout_ms, 1, 86'400'000);
  r.fragment_timeout_ms = t.duration_ms("fragment", r.fragment_timeout_ms, 1, 3'600'000);
  t.check_unknown();
  r.max_connections =
      static_cast<uint32_t>(o.integer("max-connections", r.max_connections, 1, 1'000'000));
  r.backlog = static_cast<int>(o.integer("backlog", r.backlog, 1, 65535));
  return r;
}

}  // namespace

std::string ListenAddress::str() const {
  if (kind == Kind::kUnix) return "unix:" + path;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

bool parse_listen(std::string_view s, ListenAddress* out, std::string* err) {
  ListenAddress a;
  if (s.starts_with("unix:")) {
    a.kind = ListenAddress::Kind::kUnix;
    a.path = std::string(s.substr(5));
    if (a.path.empty() || a.path.size() > 107) {
      *err = "unix socket path must have 1 to 107 characters";
      return false;
    }
    *out = a;
    return true;
  }
  std::string_view host, port;
  if (s.starts_with("[")) {
    const size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      *err = "expected [IPv6]:port";
      return false;
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    in6_addr tmp;
    if (inet_pton(AF_INET6, std::string(host).c_str(), &tmp) != 1) {
      *err = "\"" + std::string(host) + "\" is not an IPv6 address";
      return false;
    }
  } else {
    const size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) {
      *err = "expected host:port, [IPv6]:port or unix:/path";
      return false;
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      *err = "IPv6 addresses must be written [addr]:port";
      return false;
    }
    if (host == "*" || host.empty()) host = "0.0.0.0";
  }
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || ptr != port.data() + port.size() || p == 0 || p > 65535) {
    *err = "port must be 1-65535";
    return false;
  }
  a.kind = ListenAddress::Kind::kTcp;
  a.host = std::string(host);
  a.port = static_cast<uint16_t>(p);
  *out = a;
  return true;
}

bool parse_metrics_listen(std::string_view s, ListenAddress* out, std::string* err) {
  if (s.starts_with("unix:")) {
    *err = "expected host:port or [IPv6]:port (the endpoint is TCP only)";
    return false;
  }
  return parse_listen(s, out, err);
}

Config parse_config(const std::string& text, const std::string& file_name) {
  auto file = std::make_shared<const std::string>(file_name);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(file_name, e.mark.line + 1, "", "YAML syntax error: " + e.msg);
  }
  if (!root || root.IsNull()) throw ConfigError(file_name, 0, "", "the file is empty");
  if (!root.IsMap()) throw ConfigError(file_name, 1, "", "expected a mapping at the top level");

  Options top(root, file, "");
  Config cfg;
  cfg.file = file_name;

  Options global = top.map("global");
  cfg.log_level = global.str("log-level", cfg.log_level);
  static const std::set<std::string> levels = {"trace", "debug",    "info", "warn",
                                               "error", "critical", "off"};
  if (!levels.contains(cfg.log_level))
    global.fail("log-level", "expected trace, debug, info, warn, error, critical or off");
  cfg.grace_ms = global.duration_ms("grace", cfg.grace_ms, 0, 3'600'000);
  cfg.pidfile = global.str("pidfile", "");
  cfg.handover_ms = global.duration_ms("handover", cfg.handover_ms, 0, 3'600'000);
  cfg.takeover_timeout_ms =
      global.duration_ms("takeover-timeout", cfg.takeover_timeout_ms, 0, 60'000);
  global.check_unknown();

  Options cli = top.map("cli");
  cfg.cli.socket = cli.str("socket", "");
  const std::string mode = cli.str("mode", "0600");
  unsigned m = 0;
  auto [p, ec] = std::from_chars(mode.data(), mode.data() + mode.size(), m, 8);
  if (ec != std::errc() || p != mode.data() + mode.size() || m > 0777)
    cli.fail("mode", "expected octal permission bits such as \"0600\", got \"" + mode + "\"");
  cfg.cli.mode = m;
  cfg.cli.max_line = cli.size("max-line", cfg.cli.max_line, 1u << 10, 1u << 20);
  cfg.cli.max_queued = cli.size("max-queued", cfg.cli.max_queued, 4u << 10, 64u << 20);
  cli.check_unknown();

  Options metrics = top.map("metrics");
  if (auto listen = metrics.str("listen")) {
    std::string err;
    if (!parse_metrics_listen(*listen, &cfg.metrics.listen, &err)) metrics.fail("listen", err);
    cfg.metrics.enabled = true;
  }
  cfg.metrics.max_connections = static_cast<uint32_t>(
      metrics.integer("max-connections", cfg.metrics.max_connections, 1, 1024));
  cfg.metrics.timeout_ms = metrics.duration_ms("timeout", cfg.metrics.timeout_ms, 1000, 3'600'000);
  if (cfg.metrics.timeout_ms % 1000 != 0)
    metrics.fail("timeout", "must be whole seconds (the HTTP server counts in seconds)");
  cfg.metrics.max_connection_memory =
      metrics.size("max-connection-memory", cfg.metrics.max_connection_memory, 4u << 10, 1u << 20);
  metrics.check_unknown();

  if (!top.has("agents")) top.fail("", "no \"agents\" list: nothing to serve");
  std::vector<Options> agents = top.map_list("agents");
  if (agents.empty()) top.fail("agents", "the list is empty: nothing to serve");
  top.check_unknown();

  std::set<std::string> names;
  std::set<std::string> addresses;
  for (Options& a : agents) {
    AgentConfig ac;
    ac.line = a.line();
    auto name = a.str("name");
    if (!name) a.fail("", "missing key \"name\"");
    if (!util::valid_name(*name)) a.fail("name", "use 1-64 characters among A-Z a-z 0-9 _ - .");
    // The master CLI routes "@<agent name>": a name must not read as "@<relative pid>" or
    // "@master" (cli/command.h).
    if (*name == "master" || name->find_first_not_of("0123456789") == std::string::npos)
      a.fail("name", "\"" + *name + "\" is reserved: the master CLI reads @" + *name +
                         " as a process; use a name that is not all digits nor \"master\"");
    if (!names.insert(*name).second) a.fail("name", "duplicate agent name \"" + *name + "\"");
    ac.name = *name;

    auto type = a.str("type");
    if (!type) a.fail("", "missing key \"type\"");
    ac.type = *type;
    ac.agent_type = agent::find_agent_type(*type);
    if (!ac.agent_type)
      a.fail("type", "unknown agent type \"" + *type + "\" (known: " + known_types() + ")");

    auto listen = a.str("listen");
    if (!listen) a.fail("", "missing key \"listen\"");
    std::string err;
    if (!parse_listen(*listen, &ac.listen, &err)) a.fail("listen", err);
    if (!addresses.insert(ac.listen.str()).second)
      a.fail("listen", "address " + ac.listen.str() + " is used by another agent");
    if (cfg.metrics.enabled && ac.listen == cfg.metrics.listen)
      a.fail("listen", "address " + ac.listen.str() + " is metrics.listen's");

    ac.workers = static_cast<int>(a.integer("workers", 1, 1, 64));
    ac.runtime = read_runtime(a);
    ac.options = ac.agent_type->parse(a);
    a.check_unknown();
    cfg.agents.push_back(std::move(ac));
  }
  return cfg;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path, 0, "", std::string("cannot open: ") + std::strerror(errno));
  // The master hands the text to each worker (supervisor/messages.h): keep it well within a
  // channel message, so that a file `spoad -c` accepts always starts.
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxFileBytes)
      throw ConfigError(
          path, 0, "",
          "larger than " + std::to_string(kMaxFileBytes) + " bytes (lists belong in files)");
  }
  return text;
}

Config load_config(const std::string& path) {
  return parse_config(read_text(path), path);
}

}  // namespace spoad::config
