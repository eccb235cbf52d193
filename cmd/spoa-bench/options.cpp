#include "options.h"

#include <arpa/inet.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

#include "util/text.h"
#include "version.h"

namespace spoad::bench {

namespace {

template <typename T>
bool parse_number(std::string_view s, T* out) {
  if (s.empty()) return false;
  if (s.front() == '+') s.remove_prefix(1);
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, *out);
  return ec == std::errc() && p == end;
}

bool parse_binary(const std::string& v, std::string* out, std::string* err) {
  if (!v.empty() && v.front() == '@') {
    std::ifstream f(v.substr(1), std::ios::binary);
    if (!f) {
      *err = "cannot read \"" + v.substr(1) + "\"";
      return false;
    }
    out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return true;
  }
  std::string hex;
  for (char c : v)
    if (c != ' ' && c != ':') hex += c;
  if (hex.starts_with("0x") || hex.starts_with("0X")) hex.erase(0, 2);
  if (hex.size() % 2 != 0) {
    *err = "odd number of hex digits";
    return false;
  }
  if (!util::hex_decode(hex, out)) {
    *err = "not hex digits (use @FILE for a file's content)";
    return false;
  }
  return true;
}

}  // namespace

std::string Address::str() const {
  if (kind == Kind::kUnix) return "unix:" + path;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

bool parse_address(const std::string& s, Address* out, std::string* err) {
  Address a;
  if (s.starts_with("unix:")) {
    a.kind = Address::Kind::kUnix;
    a.path = s.substr(5);
    if (a.path.empty()) {
      *err = "empty unix socket path";
      return false;
    }
    *out = a;
    return true;
  }
  std::string port;
  if (s.starts_with("[")) {
    const size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      *err = "expected [IPv6]:port";
      return false;
    }
    a.host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    const size_t colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      *err = "expected host:port, [IPv6]:port or unix:/path";
      return false;
    }
    a.host = s.substr(0, colon);
    if (a.host.find(':') != std::string::npos) {
      *err = "an IPv6 address must be written [addr]:port";
      return false;
    }
    port = s.substr(colon + 1);
  }
  unsigned p = 0;
  if (!parse_number(std::string_view(port), &p) || p == 0 || p > 65535) {
    *err = "bad port \"" + port + "\"";
    return false;
  }
  a.port = static_cast<uint16_t>(p);
  *out = a;
  return true;
}

spop::Value ArgSpec::make_value() const {
  using spop::DataType;
  using spop::Value;
  const auto* raw = reinterpret_cast<const uint8_t*>(bytes.data());
  switch (type) {
    case DataType::kNull:
      return Value::Null();
    case DataType::kBool:
      return Value::Bool(b);
    case DataType::kInt32:
      return Value::Int32(static_cast<int32_t>(static_cast<int64_t>(u64)));
    case DataType::kUint32:
      return Value::Uint32(static_cast<uint32_t>(u64));
    case DataType::kInt64:
      return Value::Int64(static_cast<int64_t>(u64));
    case DataType::kUint64:
      return Value::Uint64(u64);
    case DataType::kIpv4:
      return Value::Ipv4(raw);
    case DataType::kIpv6:
      return Value::Ipv6(raw);
    case DataType::kString:
      return Value::String(bytes);
    case DataType::kBinary:
      return Value::Binary(bytes);
  }
  return Value::Null();
}

bool parse_arg(const std::string& s, ArgSpec* out, std::string* err) {
  using spop::DataType;
  const size_t eq = s.find('=');
  if (eq == std::string::npos) {
    *err = "expected name=type:value";
    return false;
  }
  ArgSpec a;
  a.name = s.substr(0, eq);
  const std::string rest = s.substr(eq + 1);
  const size_t colon = rest.find(':');
  const std::string type = rest.substr(0, colon);
  const bool has_value = colon != std::string::npos;
  const std::string v = has_value ? rest.substr(colon + 1) : std::string();
  if (type == "null") {
    a.type = DataType::kNull;
    *out = a;
    return true;
  }
  if (!has_value) {
    *err = "expected name=type:value";
    return false;
  }
  if (type == "bool") {
    a.type = DataType::kBool;
    if (v == "true" || v == "1") {
      a.b = true;
    } else if (v != "false" && v != "0") {
      *err = "bool value must be true, false, 1 or 0";
      return false;
    }
  } else if (type == "int32" || type == "int64") {
    int64_t x = 0;
    const bool is32 = type == "int32";
    a.type = is32 ? DataType::kInt32 : DataType::kInt64;
    if (!parse_number(std::string_view(v), &x) ||
        (is32 &&
         (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()))) {
      *err = "\"" + v + "\" is not a valid " + type;
      return false;
    }
    a.u64 = static_cast<uint64_t>(x);
  } else if (type == "uint32" || type == "uint64") {
    uint64_t x = 0;
    const bool is32 = type == "uint32";
    a.type = is32 ? DataType::kUint32 : DataType::kUint64;
    if (!parse_number(std::string_view(v), &x) ||
        (is32 && x > std::numeric_limits<uint32_t>::max())) {
      *err = "\"" + v + "\" is not a valid " + type;
      return false;
    }
    a.u64 = x;
  } else if (type == "ipv4" || type == "ipv6") {
    const bool v4 = type == "ipv4";
    a.type = v4 ? DataType::kIpv4 : DataType::kIpv6;
    a.bytes.resize(v4 ? 4 : 16);
    if (inet_pton(v4 ? AF_INET : AF_INET6, v.c_str(), a.bytes.data()) != 1) {
      *err = "\"" + v + "\" is not an " + (v4 ? "IPv4" : "IPv6") + " address";
      return false;
    }
  } else if (type == "str") {
    a.type = DataType::kString;
    a.bytes = v;
  } else if (type == "bin") {
    a.type = DataType::kBinary;
    if (!parse_binary(v, &a.bytes, err)) return false;
  } else {
    *err = "unknown type \"" + type +
           "\" (null, bool, int32, uint32, int64, uint64, ipv4, ipv6, str, bin)";
    return false;
  }
  *out = a;
  return true;
}

int parse_options(int argc, char** argv, Options* out) {
  Options o;
  std::string address;
  std::vector<std::string> args;
  bool no_args = false, no_pipelining = false;

  CLI::App app{
      "spoa-bench: SPOP load generator. Opens connections to a SPOE agent, says HELLO as "
      "HAProxy does, then keeps NOTIFYs in flight and measures the ACKs."};
  app.set_version_flag("--version", std::string("spoa-bench ") + SPOAD_VERSION);
  app.add_option("-a,--address", address, "agent address: host:port, [v6]:port or unix:/path")
      ->required();
  app.add_option("-c,--connections", o.connections, "connections to open")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("-d,--depth", o.depth, "NOTIFYs in flight per connection")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  auto* duration =
      app.add_option("-t,--duration", o.duration_s,
                     "measured time, seconds, after the warm-up (0: until --requests or SIGINT)")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 1e7));
  app.add_option("--warmup", o.warmup_s, "warm-up, seconds, excluded from the figures")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--requests", o.requests,
                 "stop after this many measured ACKs (then -t, if not given, is no limit)")
      ->check(CLI::Range(uint64_t{1}, std::numeric_limits<uint64_t>::max()));
  app.add_option("--timeout", o.timeout_s,
                 "seconds allowed for connect + HELLO, and for each NOTIFY's ACK")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 1e6));
  app.add_option("--max-frame-size", o.max_frame_size,
                 "max-frame-size announced in HAPROXY-HELLO, bytes")
      ->capture_default_str()
      ->check(CLI::Range(spop::kMinFrameSize, uint32_t{16u << 20}));
  app.add_flag("--no-pipelining", no_pipelining,
               "do not announce \"pipelining\" (one NOTIFY in flight per connection)");
  app.add_flag("--async", o.async, "also announce \"async\", as HAProxy 2.6 does by default");
  app.add_option("-m,--message", o.message, "message name")->capture_default_str();
  app.add_option("--arg", args,
                 "message argument name=type:value, repeatable; types: null, bool, int32, uint32, "
                 "int64, uint64, ipv4, ipv6, str, bin (hex, or @FILE). Default: ip=ipv4:192.0.2.1")
      ->take_all();
  app.add_flag("--no-args", no_args, "send the message without arguments");
  app.add_flag("--random-ip", o.random_ip, "a new pseudo-random value per NOTIFY for ipv4 args");
  app.add_option("--seed", o.seed, "seed of --random-ip")->capture_default_str();
  app.add_option("--threads", o.threads, "event loops (threads) sharing the connections")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_flag("--json", o.json, "print one JSON object instead of text");
  app.add_flag("-v,--verbose", o.verbose, "report every error on stderr (default: the first 20)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  auto usage = [](const std::string& msg) {
    std::fprintf(stderr, "spoa-bench: %s\nRun with --help for more information.\n", msg.c_str());
    return 2;
  };
  std::string err;
  if (!parse_address(address, &o.address, &err)) return usage("--address: " + err);
  if (no_args && !args.empty()) return usage("--no-args and --arg exclude each other");
  if (args.size() > 255) return usage("--arg: at most 255 arguments");
  if (!no_args && args.empty()) args.push_back("ip=ipv4:192.0.2.1");
  for (const std::string& s : args) {
    ArgSpec a;
    if (!parse_arg(s, &a, &err)) return usage("--arg \"" + s + "\": " + err);
    o.args.push_back(std::move(a));
  }
  o.pipelining = !no_pipelining;
  if (o.requests > 0 && duration->count() == 0) o.duration_s = 0;
  if (o.threads > o.connections) o.threads = o.connections;
  *out = std::move(o);
  return -1;
}

}  // namespace spoad::bench
