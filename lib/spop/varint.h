// SPOP variable-length integers, SPOE.txt 3.1 ("varint", the encoding of HAProxy's peers).
//
//   value < 240          1 byte
//   240 .. 2287          2 bytes
//   2288 .. 264431       3 bytes   (16380 encodes as FC F0 06)
//   ...                  at most 10 bytes for a uint64
#pragma once

#include <cstddef>
#include <cstdint>

#include "spop/types.h"

namespace spoad::spop {

inline constexpr size_t kMaxVarintLength = 10;

// Number of bytes (1..10) that encode_varint() writes for `v`.
size_t varint_size(uint64_t v);

// Writes `v` to `out`, which must have room for varint_size(v) bytes (10 always suffice).
// Returns the number of bytes written.
size_t encode_varint(uint64_t v, uint8_t* out);

// Reads one varint from the start of `in` into `*v`.
// Returns the number of bytes consumed (1..10), or 0 when `in` ends before the varint does
// (truncated input). Returns -1 when the varint is longer than 10 bytes or overflows 64 bits;
// the caller reports that as Status::kInvalid. Never reads past `in`.
int decode_varint(Bytes in, uint64_t* v);

}  // namespace spoad::spop
