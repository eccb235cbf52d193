// Encoding of SPOP data and frames (SPOE.txt 3.1 to 3.4). Writers append to a caller-owned
// std::vector<uint8_t>, so a connection can queue several frames in one buffer and send them
// with a single write call.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "spop/types.h"

namespace spoad::spop {

// Appends encoded items to `out`. Never fails; size limits are checked by FrameWriter.
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : out_(out) {}

  void u8(uint8_t v) { out_.push_back(v); }
  void u32be(uint32_t v);
  void varint(uint64_t v);  // SPOE.txt 3.1
  void raw(std::string_view bytes);
  void raw(Bytes bytes);
  void string(std::string_view s);  // <varint length><bytes>, no type byte
  void typed(const Value& v);       // <type+flags><data>
  void kv(std::string_view name, const Value& v);
  // One message of a NOTIFY: <name><nb-args><KV...>. At most 255 arguments are written.
  void message(std::string_view name, std::span<const KV> args);
  // set-var: <01><03><scope><name><typed value>. SPOE.txt 3.4.
  void set_var(Scope scope, std::string_view name, const Value& v);
  // unset-var: <02><02><scope><name>. SPOE.txt 3.4.
  void unset_var(Scope scope, std::string_view name);

  size_t size() const { return out_.size(); }
  std::vector<uint8_t>& buffer() { return out_; }

 protected:
  std::vector<uint8_t>& out_;
};

// Appends one whole frame to `out`: the 4-byte FRAME-LENGTH, then type, flags, stream-id and
// frame-id (SPOE.txt 3.2.1), then whatever payload the caller writes through the Writer
// methods. finish() patches the length.
class FrameWriter : public Writer {
 public:
  FrameWriter(std::vector<uint8_t>& out, FrameType type, uint32_t flags, uint64_t stream_id,
              uint64_t frame_id);

  // Completes the frame. If its FRAME-LENGTH (type + metadata + payload, in bytes) exceeds
  // `max_frame_size`, the frame is removed from the buffer and false is returned: the caller
  // maps that to Status::kTooBig.
  bool finish(uint32_t max_frame_size);

  // FRAME-LENGTH so far, in bytes.
  size_t frame_length() const { return out_.size() - start_ - 4; }

 private:
  size_t start_;
};

}  // namespace spoad::spop
