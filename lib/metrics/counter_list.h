// Counters declared once. A set of counters is an X-macro list, one X(...) line per counter;
// the struct's fields, their registration in a metrics::Scope and their names in `show stat`
// and `show stat json` are all generated from that list, so that a counter is written once
// (plus its increments). Two shapes of list:
//
//   Exported counters: X(field, handle, family, help, key)
//     handle  Counter or Gauge (metrics/arena.h)
//     family  the Prometheus family name, help its HELP text (registered without extra labels)
//     key     its name in `show stat` / `show stat json` ("" when it is not shown there)
//   The list's order is the registration order, hence the order of the families in /metrics.
//
//     #define MY_COUNTERS(X) X(conns, Counter, "my_connections_total", "Accepted.", "conns")
//     struct MyStats {
//       MY_COUNTERS(SPOAD_METRIC_FIELD)  // metrics::Counter conns;
//       explicit MyStats(const metrics::Scope& m) { MY_COUNTERS(SPOAD_METRIC_REGISTER) }
//     };
//   SPOAD_METRIC_ID, _KEY and _GET make an enum of the counters, the table of their keys and
//   a switch reading one, for an output whose order is not the list's (see runtime/stats.h).
//
//   JSON fields: X(field, type), the JSON key being the field's name, or X(field, type, key)
//   when it is not; type is uint64_t or a handle (a member of a labelled family, registered
//   by its owner). SPOAD_JSON_FIELD(_AS) declares the field, SPOAD_JSON_PUT(_AS) writes it,
//   from an object named `s` into a nlohmann::json named `out`.
//
// Labelled families (one series per label value) are registered by their owner, from one
// constant for the family name and help.
#pragma once

#include <cstdint>

#include "metrics/arena.h"

namespace spoad::metrics {

// The value of a field of a counter list, whatever its type.
inline uint64_t value_of(const Counter& c) {
  return c.get();
}
inline uint64_t value_of(const Gauge& g) {
  return g.get();
}
inline uint64_t value_of(uint64_t v) {
  return v;
}

// The handle of type H (Counter or Gauge) of `family`, registered in `m` with no extra label.
template <class H>
H register_handle(const Scope& m, std::string_view family, std::string_view help);
template <>
inline Counter register_handle<Counter>(const Scope& m, std::string_view family,
                                        std::string_view help) {
  return m.counter(family, help);
}
template <>
inline Gauge register_handle<Gauge>(const Scope& m, std::string_view family,
                                    std::string_view help) {
  return m.gauge(family, help);
}

}  // namespace spoad::metrics

// X(field, handle, family, help, key) -> `metrics::handle field;`
#define SPOAD_METRIC_FIELD(field, handle, family, help, key) ::spoad::metrics::handle field;
// X(field, handle, family, help, key) -> `field = <handle registered in m>;` (needs a Scope m)
#define SPOAD_METRIC_REGISTER(field, handle, family, help, key) \
  field = ::spoad::metrics::register_handle<::spoad::metrics::handle>(m, family, help);
// X(field, handle, family, help, key) -> `field,` (an enumerator naming the counter)
#define SPOAD_METRIC_ID(field, handle, family, help, key) field,
// X(field, handle, family, help, key) -> `key,`
#define SPOAD_METRIC_KEY(field, handle, family, help, key) key,
// X(field, handle, family, help, key) -> `case Id::field: return field.get();`
#define SPOAD_METRIC_GET(field, handle, family, help, key) \
  case Id::field:                                          \
    return field.get();
// X(field, type) -> `type field{};`
#define SPOAD_JSON_FIELD(field, type) type field{};
// X(field, type) -> `out["field"] = s.field;` (needs a json `out` and a struct `s`)
#define SPOAD_JSON_PUT(field, type) out[#field] = ::spoad::metrics::value_of(s.field);
// X(field, type, key) -> `type field{};`
#define SPOAD_JSON_FIELD_AS(field, type, key) type field{};
// X(field, type, key) -> `out[key] = s.field;` (needs a json `out` and an object `s`)
#define SPOAD_JSON_PUT_AS(field, type, key) out[key] = ::spoad::metrics::value_of(s.field);
