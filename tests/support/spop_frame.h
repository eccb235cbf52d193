// Test support (tests only): a frame as spop::Reader hands it on (SPOE.txt 3.1, the frame
// header; 3.2.7, fragments), made by hand to feed spop::Reassembler.
#pragma once

#include <cstdint>
#include <span>

#include "spop/types.h"

namespace spoad::testing {

// The frame of `type` with `flags` (spop::kFlagFin, kFlagAbort), `stream_id`, `frame_id` and
// `payload`; its payload is a view into `payload`, which must outlive it.
inline spop::Frame frame_of(spop::FrameType type, uint32_t flags, uint64_t stream_id,
                            uint64_t frame_id, std::span<const uint8_t> payload) {
  spop::Frame f;
  f.type = type;
  f.raw_type = static_cast<uint8_t>(type);
  f.flags = flags;
  f.stream_id = stream_id;
  f.frame_id = frame_id;
  f.payload = payload;
  return f;
}

}  // namespace spoad::testing
