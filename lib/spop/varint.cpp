#include "spop/varint.h"

namespace spoad::spop {

size_t varint_size(uint64_t v) {
  if (v < 240) return 1;
  size_t n = 2;
  v = (v - 240) >> 4;
  while (v >= 128) {
    v = (v - 128) >> 7;
    ++n;
  }
  return n;
}

size_t encode_varint(uint64_t v, uint8_t* out) {
  if (v < 240) {
    out[0] = static_cast<uint8_t>(v);
    return 1;
  }
  size_t n = 0;
  out[n++] = static_cast<uint8_t>(v) | 0xF0;
  v = (v - 240) >> 4;
  while (v >= 128) {
    out[n++] = static_cast<uint8_t>(v) | 0x80;
    v = (v - 128) >> 7;
  }
  out[n++] = static_cast<uint8_t>(v);
  return n;
}

int decode_varint(Bytes in, uint64_t* v) {
  if (in.empty()) return 0;
  uint64_t r = in[0];
  if (r < 240) {
    *v = r;
    return 1;
  }
  unsigned shift = 4;
  size_t i = 1;
  for (;;) {
    if (i >= kMaxVarintLength) return -1;
    if (i >= in.size()) return 0;
    const uint64_t b = in[i++];
    // Each continuation byte adds its whole value, high bit included, shifted.
    const uint64_t add = b << shift;
    if ((add >> shift) != b || r + add < r) return -1;
    r += add;
    shift += 7;
    if (b < 128) break;
  }
  *v = r;
  return static_cast<int>(i);
}

}  // namespace spoad::spop
