#include "runtime/stats.h"

namespace spoad::runtime {

namespace {

// SPOE.txt 3.4, the status codes of a DISCONNECT frame: the label value of
// spoad_disconnects_sent_total{status} and spoad_protocol_errors_total{kind}, and the key of
// disconnects_sent in `show stat`.
struct StatusNames {
  std::string_view label;
  std::string_view stat_key;
};
constexpr StatusNames kStatusNames[15] = {
    {"normal", "disconnect_normal"},                    // 0
    {"io-error", "disconnect_io"},                      // 1  I/O error
    {"timeout", "disconnect_timeout"},                  // 2  a timeout occurred
    {"frame-too-big", "disconnect_too_big"},            // 3  frame is too big
    {"invalid-frame", "disconnect_invalid"},            // 4  invalid frame received
    {"no-version", "disconnect_no_version"},            // 5  version value not found
    {"no-frame-size", "disconnect_no_frame_size"},      // 6  max-frame-size not found
    {"no-capabilities", "disconnect_no_capabilities"},  // 7  capabilities not found
    {"bad-version", "disconnect_bad_version"},          // 8  unsupported version
    {"bad-frame-size", "disconnect_bad_frame_size"},    // 9  max-frame-size too big/small
    {"fragmentation-not-supported", "disconnect_frag_not_supported"},  // 10 no fragmentation
    {"interlaced-frames", "disconnect_interlaced"},           // 11 invalid interlaced frames
    {"frame-id-not-found", "disconnect_frame_id_not_found"},  // 12 frame-id not found
    {"resource-error", "disconnect_resource"},                // 13 resource allocation error
    {"other", "disconnect_other"},                            // any other code
};

// The families registered with labels, each name and help written once.
constexpr std::string_view kDisconnectsSent = "spoad_disconnects_sent_total";
constexpr std::string_view kDisconnectsSentHelp = "AGENT-DISCONNECT frames sent.";
constexpr std::string_view kProtocolErrors = "spoad_protocol_errors_total";
constexpr std::string_view kProtocolErrorsHelp =
    "Connections ended by a protocol error or a timeout (an AGENT-DISCONNECT other than "
    "normal).";
constexpr std::string_view kBudgetRefusals = "spoad_budget_refusals_total";
constexpr std::string_view kBudgetRefusalsHelp =
    "Refusals by a budget: reassembly, max-connections, accept-error, fragment-timeout, "
    "ack-too-big.";

#define SPOAD_RUNTIME_BUDGET_KEY(field, label) #field,
constexpr std::string_view kKeys[] = {SPOAD_RUNTIME_COUNTERS(SPOAD_METRIC_KEY)
                                          SPOAD_RUNTIME_BUDGETS(SPOAD_RUNTIME_BUDGET_KEY)};
#undef SPOAD_RUNTIME_BUDGET_KEY

}  // namespace

std::string_view Stats::status_name(size_t index) {
  return index < 15 ? kStatusNames[index].label : "other";
}

std::string_view Stats::disconnect_key(size_t index) {
  return kStatusNames[index < 15 ? index : 14].stat_key;
}

std::string_view Stats::key(Id id) {
  return kKeys[static_cast<size_t>(id)];
}

uint64_t Stats::get(Id id) const {
#define SPOAD_RUNTIME_BUDGET_GET(field, label) \
  case Id::field:                              \
    return field.get();
  switch (id) {
    SPOAD_RUNTIME_COUNTERS(SPOAD_METRIC_GET)
    SPOAD_RUNTIME_BUDGETS(SPOAD_RUNTIME_BUDGET_GET)
  }
#undef SPOAD_RUNTIME_BUDGET_GET
  return 0;
}

Stats::Stats(const metrics::Scope& m) : scope_(m) {
  SPOAD_RUNTIME_COUNTERS(SPOAD_METRIC_REGISTER)
  proc_time = m.histogram("spoad_processing_seconds",
                          "Time from a NOTIFY read whole to its ACK encoded for sending.");
  for (size_t i = 0; i < disconnects_sent.size(); ++i)
    disconnects_sent[i] =
        m.counter(kDisconnectsSent, kDisconnectsSentHelp, {{"status", status_name(i)}});
  for (size_t i = 1; i < protocol_errors.size(); ++i)  // never "normal"
    protocol_errors[i] =
        m.counter(kProtocolErrors, kProtocolErrorsHelp,
                  {{"kind", i == kFragmentTimeoutKind ? std::string_view("fragment-timeout")
                                                      : status_name(i)}});
#define SPOAD_RUNTIME_BUDGET_REGISTER(field, label) \
  field = m.counter(kBudgetRefusals, kBudgetRefusalsHelp, {{"budget", label}});
  SPOAD_RUNTIME_BUDGETS(SPOAD_RUNTIME_BUDGET_REGISTER)
#undef SPOAD_RUNTIME_BUDGET_REGISTER
}

uint64_t Stats::errors_total() const {
  uint64_t n = 0;
  for (const metrics::Counter& c : protocol_errors)
    n += c.get();
  return n;
}

}  // namespace spoad::runtime
