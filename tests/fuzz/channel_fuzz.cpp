// Fuzz target: the master <-> worker channel's message codec (lib/supervisor/messages.h). The
// input is a byte stream as a channel reads it: frames one after the other. Properties:
//   - decode never throws, never reads past its input, and consumes a whole frame (or nothing
//     when more bytes are needed, or when the length prefix is over kMaxMessage);
//   - a frame that decodes re-encodes into a frame that decodes to the same message (every
//     byte string kept as it is), with the socket flag of its type;
//   - the hand-off state survives the trip through the runtime's JSON object and back.
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "supervisor/messages.h"

using namespace spoad::supervisor;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  while (true) {
    const msg::Decoded d = msg::decode(in);
    if (d.status == msg::Decoded::Status::kNeedMore || d.status == msg::Decoded::Status::kTooBig) {
      FUZZ_CHECK(d.used == 0);
      break;
    }
    FUZZ_CHECK(d.used >= 6 || (d.status == msg::Decoded::Status::kBadFrame && d.used >= 4));
    FUZZ_CHECK(d.used <= in.size());
    if (d.status == msg::Decoded::Status::kMessage) {
      FUZZ_CHECK(d.with_fd == msg::carries_fd(d.message));
      std::string again;
      FUZZ_CHECK(msg::encode(d.message, again));
      const msg::Decoded d2 = msg::decode(again);
      FUZZ_CHECK(d2.status == msg::Decoded::Status::kMessage);
      FUZZ_CHECK(d2.used == again.size());
      FUZZ_CHECK(d2.message == d.message);
      const msg::ConnState* st = nullptr;
      if (const auto* a = std::get_if<msg::Adopt>(&d.message)) st = &a->state;
      if (const auto* h = std::get_if<msg::Handoff>(&d.message)) st = &h->state;
      if (st) {
        // Through JSON and back: one field per distinct key (the last one wins), same values.
        const msg::ConnState back = msg::state_from_json(msg::state_to_json(*st));
        FUZZ_CHECK(back.size() <= st->size());
        for (const msg::StateField& f : back) {
          const msg::StateField* last = nullptr;
          for (const msg::StateField& g : *st)
            if (g.key == f.key) last = &g;
          FUZZ_CHECK(last != nullptr);
          FUZZ_CHECK(f.value == last->value);
        }
      }
    } else {
      FUZZ_CHECK(d.error != nullptr && *d.error != '\0');
    }
    in.remove_prefix(d.used);
  }
  return 0;
}
