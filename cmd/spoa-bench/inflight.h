// The NOTIFYs of one connection waiting for their ACK, by stream-id. An open-addressing hash
// table (linear probing, backward-shift deletion) sized for the depth: stream-ids are
// consecutive odd numbers, so they rarely collide. No allocation after construction unless
// more than half full.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace spoad::bench {

struct InflightEntry {
  uint64_t stream_id = 0;  // 0 = free slot (spoa-bench never sends stream-id 0)
  uint64_t sent_ns = 0;    // uv_hrtime() when the NOTIFY was encoded
  bool measured = false;   // sent inside the measured window
};

class InflightTable {
 public:
  explicit InflightTable(size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected)
      cap *= 2;
    slots_.resize(cap);
  }

  size_t size() const { return size_; }

  void insert(const InflightEntry& e) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    size_t i = home(e.stream_id);
    while (slots_[i].stream_id != 0)
      i = (i + 1) & mask();
    slots_[i] = e;
    ++size_;
  }

  InflightEntry* find(uint64_t stream_id) {
    if (stream_id == 0) return nullptr;
    for (size_t i = home(stream_id);; i = (i + 1) & mask()) {
      if (slots_[i].stream_id == stream_id) return &slots_[i];
      if (slots_[i].stream_id == 0) return nullptr;
    }
  }

  // Removes an entry returned by find() or visited by for_each().
  void erase(InflightEntry* e) {
    size_t i = static_cast<size_t>(e - slots_.data());
    for (size_t j = i;;) {
      j = (j + 1) & mask();
      if (slots_[j].stream_id == 0) break;
      const size_t k = home(slots_[j].stream_id);
      // Entry j stays if its home slot lies cyclically in (i, j].
      const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (stays) continue;
      slots_[i] = slots_[j];
      i = j;
    }
    slots_[i] = InflightEntry{};
    --size_;
  }

  // Calls f(const InflightEntry&) for every entry, in no particular order.
  template <typename F>
  void for_each(F&& f) const {
    for (const InflightEntry& e : slots_)
      if (e.stream_id != 0) f(e);
  }

  void clear() {
    for (InflightEntry& e : slots_)
      e = InflightEntry{};
    size_ = 0;
  }

 private:
  size_t mask() const { return slots_.size() - 1; }
  size_t home(uint64_t sid) const { return static_cast<size_t>(sid >> 1) & mask(); }

  void grow() {
    std::vector<InflightEntry> old;
    old.swap(slots_);
    slots_.resize(old.size() * 2);
    size_ = 0;
    for (const InflightEntry& e : old)
      if (e.stream_id != 0) insert(e);
  }

  std::vector<InflightEntry> slots_;
  size_t size_ = 0;
};

}  // namespace spoad::bench
