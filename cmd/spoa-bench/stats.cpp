#include "stats.h"

namespace spoad::bench {

void Errors::merge(const Errors& o) {
  connect_failed += o.connect_failed;
  hello_timeout += o.hello_timeout;
  hello_rejected += o.hello_rejected;
  agent_disconnect += o.agent_disconnect;
  unexpected_close += o.unexpected_close;
  unknown_ack += o.unknown_ack;
  duplicate_ack += o.duplicate_ack;
  timeout += o.timeout;
  protocol_error += o.protocol_error;
  frame_too_big += o.frame_too_big;
}

void Stats::merge(const Stats& o) {
  errors.merge(o.errors);
  for (const auto& [code, n] : o.disconnect_status)
    disconnect_status[code] += n;
  sent += o.sent;
  acks += o.acks;
  latency_ns.merge(o.latency_ns);
  warmup_sent += o.warmup_sent;
  warmup_acks += o.warmup_acks;
  late_acks += o.late_acks;
  skipped_frames += o.skipped_frames;
  connections_ready += o.connections_ready;
  no_pipelining += o.no_pipelining;
  bytes_out += o.bytes_out;
  bytes_in += o.bytes_in;
}

}  // namespace spoad::bench
