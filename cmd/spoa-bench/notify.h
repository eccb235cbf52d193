// Encoding of the NOTIFY frames spoa-bench sends: one message (--message) with the --arg
// arguments, through the lib/spop codec. With --random-ip, every ipv4 argument gets a new
// pseudo-random address per NOTIFY.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "options.h"
#include "spop/types.h"

namespace spoad::bench {

// xorshift64* seeded through splitmix64: cheap, deterministic, not cryptographic.
class Prng {
 public:
  explicit Prng(uint64_t seed);
  uint64_t next();

 private:
  uint64_t s_;
};

class NotifyEncoder {
 public:
  // `opts` must outlive the encoder. `seed` selects the --random-ip sequence.
  NotifyEncoder(const Options& opts, uint64_t seed);
  NotifyEncoder(const NotifyEncoder&) = delete;
  NotifyEncoder& operator=(const NotifyEncoder&) = delete;

  // Appends one NOTIFY frame (FIN set) to `out`. Returns false, appending nothing, if the
  // frame would be longer than `max_frame_size` bytes.
  bool encode(std::vector<uint8_t>& out, uint64_t stream_id, uint64_t frame_id,
              uint32_t max_frame_size);

 private:
  const Options& opts_;
  std::vector<spop::KV> kvs_;
  std::vector<size_t> ipv4_args_;                   // indices in kvs_ of the ipv4 arguments
  std::vector<std::array<uint8_t, 4>> ipv4_bytes_;  // their per-NOTIFY values (--random-ip)
  Prng prng_;
};

}  // namespace spoad::bench
