#include "report.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace spoad::bench {

namespace {

// Nanoseconds to microseconds, rounded to 0.1 µs.
double us(uint64_t ns) {
  return std::round(static_cast<double>(ns) / 100.0) / 10.0;
}
double us(double ns) {
  return std::round(ns / 100.0) / 10.0;
}

double frames_per_s(const RunResult& r) {
  return r.elapsed_s > 0 ? static_cast<double>(r.stats.acks) / r.elapsed_s : 0;
}

// The error counters by name, in a stable order.
std::vector<std::pair<const char*, uint64_t>> error_list(const Errors& e) {
  return {
      {"connect_failed", e.connect_failed},     {"hello_timeout", e.hello_timeout},
      {"hello_rejected", e.hello_rejected},     {"agent_disconnect", e.agent_disconnect},
      {"unexpected_close", e.unexpected_close}, {"unknown_ack", e.unknown_ack},
      {"duplicate_ack", e.duplicate_ack},       {"timeout", e.timeout},
      {"protocol_error", e.protocol_error},     {"frame_too_big", e.frame_too_big},
  };
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

}  // namespace

nlohmann::json to_json(const Options& o, const RunResult& r) {
  const Stats& s = r.stats;
  nlohmann::json j;
  j["address"] = o.address.str();
  j["connections"] = o.connections;
  j["depth"] = o.depth;
  j["threads"] = o.threads;
  j["message"] = o.message;
  j["arguments"] = o.args.size();
  j["duration_s"] = o.duration_s;
  j["warmup_s"] = o.warmup_s;
  j["requests"] = o.requests ? nlohmann::json(o.requests) : nlohmann::json(nullptr);
  j["timeout_s"] = o.timeout_s;
  j["elapsed_s"] = r.elapsed_s;
  j["sent"] = s.sent;
  j["acks"] = s.acks;
  j["frames_per_s"] = std::round(frames_per_s(r) * 10) / 10;
  nlohmann::json lat;
  const Histogram& h = s.latency_ns;
  if (h.count() > 0) {
    lat["min"] = us(h.min());
    lat["p50"] = us(h.percentile(50));
    lat["p90"] = us(h.percentile(90));
    lat["p99"] = us(h.percentile(99));
    lat["p999"] = us(h.percentile(99.9));
    lat["max"] = us(h.max());
    lat["mean"] = us(h.mean());
  } else {
    for (const char* k : {"min", "p50", "p90", "p99", "p999", "max", "mean"})
      lat[k] = nullptr;
  }
  j["latency_us"] = lat;
  j["warmup"] = {{"sent", s.warmup_sent}, {"acks", s.warmup_acks}};
  nlohmann::json errors = nlohmann::json::object();
  for (const auto& [name, n] : error_list(s.errors))
    errors[name] = n;
  errors["total"] = s.errors.total();
  j["errors"] = errors;
  nlohmann::json statuses = nlohmann::json::object();
  for (const auto& [code, n] : s.disconnect_status)
    statuses[std::to_string(code)] = n;
  j["agent_disconnect_status"] = statuses;
  j["late_acks"] = s.late_acks;
  j["skipped_frames"] = s.skipped_frames;
  j["connections_ready"] = s.connections_ready;
  j["connections_without_pipelining"] = s.no_pipelining;
  j["bytes_out"] = s.bytes_out;
  j["bytes_in"] = s.bytes_in;
  j["interrupted"] = r.interrupted;
  return j;
}

std::string to_text(const Options& o, const RunResult& r) {
  const Stats& s = r.stats;
  std::string t;
  t += "spoa-bench: " + o.address.str() + ", " + std::to_string(o.connections) +
       " connection(s) x depth " + std::to_string(o.depth) + ", " + std::to_string(o.threads) +
       " thread(s), message \"" + o.message + "\" with " + std::to_string(o.args.size()) +
       " argument(s)\n";
  const std::string window =
      r.elapsed_s >= 1 ? fmt("%.3f s", r.elapsed_s) : fmt("%.3f ms", r.elapsed_s * 1e3);
  t += "measured:  " + window + " after a " + fmt("%.1f s", o.warmup_s) + " warm-up" +
       (r.interrupted ? " (interrupted)" : "") + "\n";
  t += "ACKs:      " + std::to_string(s.acks) + " of " + std::to_string(s.sent) + " NOTIFYs, " +
       fmt("%.1f frames/s", frames_per_s(r)) + "\n";
  const Histogram& h = s.latency_ns;
  if (h.count() > 0) {
    t += "latency:   min " + fmt("%.1f", us(h.min())) + "  p50 " +
         fmt("%.1f", us(h.percentile(50))) + "  p90 " + fmt("%.1f", us(h.percentile(90))) +
         "  p99 " + fmt("%.1f", us(h.percentile(99))) + "  p99.9 " +
         fmt("%.1f", us(h.percentile(99.9))) + "  max " + fmt("%.1f", us(h.max())) + "  mean " +
         fmt("%.1f", us(h.mean())) + "  (µs)\n";
  } else {
    t += "latency:   no measured ACK\n";
  }
  if (s.errors.total() == 0) {
    t += "errors:    none\n";
  } else {
    t += "errors:    " + std::to_string(s.errors.total()) + ":";
    for (const auto& [name, n] : error_list(s.errors))
      if (n > 0) t += std::string(" ") + name + "=" + std::to_string(n);
    t += "\n";
    if (!s.disconnect_status.empty()) {
      t += "AGENT-DISCONNECT status:";
      for (const auto& [code, n] : s.disconnect_status)
        t += " " + std::to_string(code) + " (x" + std::to_string(n) + ")";
      t += "\n";
    }
  }
  if (s.late_acks) t += "late ACKs: " + std::to_string(s.late_acks) + " (after their timeout)\n";
  if (s.skipped_frames)
    t += "skipped:   " + std::to_string(s.skipped_frames) + " frame(s) of unknown type\n";
  if (s.no_pipelining)
    t += "note:      " + std::to_string(s.no_pipelining) +
         " connection(s) without pipelining (depth 1)\n";
  return t;
}

}  // namespace spoad::bench
