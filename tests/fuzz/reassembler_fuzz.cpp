// Fuzz target: the reassembler of fragmented NOTIFYs (lib/spop/reassembler; SPOE.txt 3.2.2,
// HAProxy 2.6's NOTIFY + UNSET fragments). Two reassemblers (two connections) share one
// ReassemblyBudget; each is checked step by step against a reference model written from
// reassembler.h: the same step, the same error status, the same reassembled payload. A budget
// refusal (kResourceError) is accepted only where the budget could not cover the bytes. After
// every step: an error leaves the reassembler reset with its buffer freed, the buffer holds at
// most max_size bytes, and the budget's use is the sum of the buffers' sizes, within its limit.
//
// Input: bytes 0-1, max_size (1 + value % 2048 bytes); bytes 2-3, the budget (value % 4096
// bytes); then frames of
//   <kind> <flags> <ids> <length> <length bytes of payload>
// kind % 4: 0 NOTIFY, 1 UNSET, 2 ACK (a type the reassembler must refuse), 3 reset();
// kind bit 2: which reassembler; flags: bit 0 FIN, bit 1 ABORT (ABORT implies FIN, as
// decode_frame() enforces); ids: stream-id = bits 0-1, frame-id = bits 2-3.
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_check.h"
#include "spop/reassembler.h"

using namespace spoad::spop;

namespace {

struct Model {
  size_t max;
  bool active = false;
  uint64_t sid = 0, fid = 0;
  std::string buf;

  void reset() {
    active = false;
    sid = fid = 0;
    buf.clear();
  }

  // The expected status without budget limits; *step and *payload as feed() documents them.
  // *need: the bytes the reassembly must hold after this frame (0 when no buffer is needed).
  Status feed(const Frame& f, Reassembler::Step* step, std::string* payload, size_t* need) {
    const std::string p(reinterpret_cast<const char*>(f.payload.data()), f.payload.size());
    *need = 0;
    if (f.type == FrameType::kNotify) {
      if (active) return Status::kInterlaced;
      if (f.fin()) {
        *step = f.abort() ? Reassembler::Step::kAborted : Reassembler::Step::kComplete;
        *payload = p;
        return Status::kNormal;
      }
      if (p.size() > max) return Status::kTooBig;
      *need = p.size();
      *step = Reassembler::Step::kPending;
      return Status::kNormal;
    }
    if (f.type != FrameType::kUnset) return Status::kInvalid;
    if (!active) {
      if (f.abort()) {
        *step = Reassembler::Step::kAborted;
        return Status::kNormal;
      }
      return Status::kFrameIdNotFound;
    }
    if (f.stream_id != sid || f.frame_id != fid) return Status::kInterlaced;
    if (f.abort()) {
      *step = Reassembler::Step::kAborted;
      return Status::kNormal;
    }
    if (buf.size() + p.size() > max) return Status::kTooBig;
    *need = buf.size() + p.size();
    *step = f.fin() ? Reassembler::Step::kComplete : Reassembler::Step::kPending;
    if (f.fin()) *payload = buf + p;
    return Status::kNormal;
  }

  // Applies a frame that feed() accepted.
  void commit(const Frame& f) {
    const std::string p(reinterpret_cast<const char*>(f.payload.data()), f.payload.size());
    if (f.type == FrameType::kNotify) {
      if (f.fin()) return;
      active = true;
      sid = f.stream_id;
      fid = f.frame_id;
      buf = p;
      return;
    }
    if (!active) return;
    if (f.abort()) {
      reset();
      return;
    }
    buf += p;
    if (f.fin()) {
      active = false;
      buf.clear();
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const size_t max = 1 + ((size_t{data[0]} << 8 | data[1]) % 2048);
  ReassemblyBudget budget((size_t{data[2]} << 8 | data[3]) % 4096);
  Reassembler rs[2] = {Reassembler(max, &budget), Reassembler(max, &budget)};
  Model ms[2] = {Model{max}, Model{max}};
  size_t pos = 4;
  while (pos + 4 <= size) {
    const uint8_t kind = data[pos] % 4, fl = data[pos + 1], ids = data[pos + 2];
    const int which = (data[pos] >> 2) & 1;
    size_t len = data[pos + 3];
    pos += 4;
    if (len > size - pos) len = size - pos;
    Reassembler& r = rs[which];
    Model& m = ms[which];
    if (kind == 3) {
      r.reset();
      m.reset();
      pos += len;
      FUZZ_CHECK(!r.active() && r.allocated() == 0);
      continue;
    }
    Frame f;
    f.type = kind == 0 ? FrameType::kNotify : kind == 1 ? FrameType::kUnset : FrameType::kAck;
    f.raw_type = static_cast<uint8_t>(f.type);
    f.flags = (fl & 1 ? kFlagFin : 0) | (fl & 2 ? kFlagAbort | kFlagFin : 0);
    f.stream_id = ids & 3;
    f.frame_id = (ids >> 2) & 3;
    f.payload = Bytes(data + pos, len);
    pos += len;

    Reassembler::Step step{}, want_step{};
    Bytes payload;
    std::string want_payload;
    size_t need = 0;
    const Status want = m.feed(f, &want_step, &want_payload, &need);
    // The most this reassembler's buffer can grow to: what the other one does not hold.
    const size_t available = budget.limit() - (budget.used() - r.allocated());
    const Result got = r.feed(f, &step, &payload);
    if (got.status == Status::kResourceError) {
      FUZZ_CHECK(want == Status::kNormal && need > 0);
      FUZZ_CHECK(need > available);  // refused only when the exact need did not fit
    } else {
      FUZZ_CHECK(got.status == want);
    }
    if (got.ok()) {
      FUZZ_CHECK(step == want_step);
      if (step == Reassembler::Step::kComplete)
        FUZZ_CHECK(payload.size() == want_payload.size() &&
                   (payload.empty() ||
                    std::memcmp(payload.data(), want_payload.data(), payload.size()) == 0));
      m.commit(f);
    } else {
      FUZZ_CHECK(!r.active() && r.allocated() == 0);
      m.reset();
    }
    FUZZ_CHECK(r.active() == m.active);
    if (r.active()) {
      FUZZ_CHECK(r.stream_id() == m.sid && r.frame_id() == m.fid);
      FUZZ_CHECK(r.buffered() == m.buf.size());
    }
    FUZZ_CHECK(r.buffered() <= r.allocated() || r.allocated() == 0);
    FUZZ_CHECK(r.allocated() <= max);
    FUZZ_CHECK(budget.used() == rs[0].allocated() + rs[1].allocated());
    FUZZ_CHECK(budget.used() <= budget.limit());
  }
  for (Reassembler& r : rs)
    r.reset();
  FUZZ_CHECK(budget.used() == 0);
  return 0;
}
