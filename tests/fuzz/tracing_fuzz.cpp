// Fuzz target: the tracing agent's handling of peer bytes (agents/tracing). Properties:
//   - encode_span: whatever bytes the name, attributes, tracestate and status hold, the
//     result is valid UTF-8 (util::is_utf8) and JSON that nlohmann's strict parser accepts;
//   - cut_utf8: a prefix of at most `max` bytes, never splitting a well-formed character
//     (a valid input gives a valid result), and at most 3 bytes shorter than `max`;
//   - limit_tracestate: at most max_bytes bytes and 32 members of printable ASCII, nothing
//     when dropped, and a second pass keeps the result as it is;
//   - the agent: every NOTIFY message decoded from the rest of the input is handled without
//     a crash, every span it emits is valid UTF-8 JSON, every ACK's actions are well-formed.
//
// Input: byte 0 is a limit L (0..255); then three pieces, each <1-byte length><bytes>; the rest
// is a sequence of SPOP messages (SPOE.txt 3.2.6: <name><nb-args><KV...>).
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "agent/registry.h"
#include "agents/tracing/span.h"
#include "agents/tracing/trace_context.h"
#include "agents/tracing/tracing.h"
#include "fuzz_check.h"
#include "options/options.h"
#include "spop/frames.h"
#include "spop/reader.h"
#include "util/escape.h"
#include "util/log.h"

using namespace spoad;
using namespace spoad::agents::tracing;

namespace {

struct Input {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (!n) return 0;
    --n;
    return *p++;
  }
  std::string piece() {
    size_t len = byte();
    if (len > n) len = n;
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
};

bool valid_json_utf8(const std::string& s) {
  return util::is_utf8(s) && nlohmann::json::accept(s);
}

struct Owner : agent::Reply::Owner {
  void on_reply_complete(agent::Reply&) override {}
};

std::vector<std::string>* g_spans = nullptr;

agent::Agent& the_agent() {
  static std::unique_ptr<agent::Agent> a = [] {
    spoad::util::set_log_level("off");
    const agent::AgentType* t = agent::find_agent_type("tracing");
    FUZZ_CHECK(t != nullptr);
    config::Options o(YAML::Load("attribute-value-limit: 64\nexporter:\n  type: none\n"),
                      std::make_shared<const std::string>("fuzz.yaml"), "agents[0]");
    auto opts = t->parse(o);
    agent::Context ctx;
    ctx.name = "tracing";
    ctx.log = spoad::util::make_logger("tracing");
    auto agent = t->create(ctx, *opts);
    static_cast<TracingAgent*>(agent.get())->set_span_sink([](std::string s) {
      if (g_spans) g_spans->push_back(std::move(s));
    });
    return agent;
  }();
  return *a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  const size_t limit = in.byte();
  const std::string a = in.piece(), b = in.piece(), c = in.piece();

  // encode_span
  Span s;
  s.name = a;
  s.trace_state = c;
  s.error = true;
  s.status_message = b;
  s.value_limit = limit + 1;
  s.add(a, b);
  s.add("k", c);
  s.add("n", static_cast<int64_t>(size));
  FUZZ_CHECK(valid_json_utf8(encode_span(s)));

  // cut_utf8
  const std::string_view cut = cut_utf8(b, limit);
  FUZZ_CHECK(cut.size() <= limit || cut.size() == b.size());
  FUZZ_CHECK(std::string_view(b).substr(0, cut.size()) == cut);
  if (b.size() > limit) FUZZ_CHECK(cut.size() + 3 >= limit);
  if (util::is_utf8(b)) FUZZ_CHECK(util::is_utf8(cut));

  // limit_tracestate
  const size_t max_bytes = limit * 4;
  std::string kept;
  const TraceStateVerdict v = limit_tracestate(c, max_bytes, &kept);
  FUZZ_CHECK(kept.size() <= max_bytes);
  if (v == TraceStateVerdict::kDropped) FUZZ_CHECK(kept.empty());
  size_t commas = 0;
  for (char ch : kept) {
    FUZZ_CHECK(ch >= 0x20 && ch <= 0x7e);
    commas += ch == ',';
  }
  FUZZ_CHECK(commas < kMaxTraceStateMembers);
  std::string again;
  FUZZ_CHECK(limit_tracestate(kept, max_bytes, &again) == TraceStateVerdict::kKept);
  FUZZ_CHECK(again == kept);

  // The agent, on the messages of the rest of the input.
  agent::Agent& agent = the_agent();
  std::vector<std::string> spans;
  g_spans = &spans;
  spop::Reader r(spop::Bytes(in.p, in.n));
  spop::Message m;
  Owner owner;
  for (int i = 0; i < 64 && r.message(&m); ++i) {
    agent::Reply reply;
    reply.reset(&owner, 1, 1);
    agent.on_message(m, reply);
    const auto& acts = reply.actions();
    uint32_t nacts = 0;
    FUZZ_CHECK(spop::validate_actions(spop::Bytes(acts.data(), acts.size()), &nacts).ok());
  }
  g_spans = nullptr;
  for (const std::string& sp : spans)
    FUZZ_CHECK(valid_json_utf8(sp));
  return 0;
}
