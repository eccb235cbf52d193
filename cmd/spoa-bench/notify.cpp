#include "notify.h"

#include "spop/writer.h"

namespace spoad::bench {

Prng::Prng(uint64_t seed) {
  // splitmix64, so that close seeds give unrelated sequences; xorshift needs a non-zero state.
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  s_ = (z ^ (z >> 31)) | 1;
}

uint64_t Prng::next() {
  s_ ^= s_ >> 12;
  s_ ^= s_ << 25;
  s_ ^= s_ >> 27;
  return s_ * 0x2545f4914f6cdd1dULL;
}

NotifyEncoder::NotifyEncoder(const Options& opts, uint64_t seed) : opts_(opts), prng_(seed) {
  for (const ArgSpec& a : opts.args) {
    if (opts.random_ip && a.type == spop::DataType::kIpv4) ipv4_args_.push_back(kvs_.size());
    kvs_.push_back({a.name, a.make_value()});
  }
  ipv4_bytes_.resize(ipv4_args_.size());
  for (size_t i = 0; i < ipv4_args_.size(); ++i)
    kvs_[ipv4_args_[i]].value = spop::Value::Ipv4(ipv4_bytes_[i].data());
}

bool NotifyEncoder::encode(std::vector<uint8_t>& out, uint64_t stream_id, uint64_t frame_id,
                           uint32_t max_frame_size) {
  for (auto& ip : ipv4_bytes_) {
    const uint32_t r = static_cast<uint32_t>(prng_.next() >> 32);
    ip = {static_cast<uint8_t>(r >> 24), static_cast<uint8_t>(r >> 16),
          static_cast<uint8_t>(r >> 8), static_cast<uint8_t>(r)};
  }
  spop::FrameWriter w(out, spop::FrameType::kNotify, spop::kFlagFin, stream_id, frame_id);
  w.message(opts_.message, kvs_);
  return w.finish(max_frame_size);
}

}  // namespace spoad::bench
