// The tree of a request's spans, as tracing.h draws it: each span's name, its OpenTelemetry
// kind, and its parent given the spans the configured events started.
#pragma once

#include <optional>
#include <utility>

#include "agents/tracing/span.h"
#include "agents/tracing/trace_context.h"

namespace spoad::agents::tracing {

// Which spans of the request exist (were started), as the start-time variables tell.
struct Presence {
  bool cs = false, fth = false, fhr = false, bht = false, bhr = false, ss = false, tr = false;
};

// The span's name ("HAProxy session", "Frontend HTTP request"...).
const char* span_name(SpanKindId s);
// SERVER for the session and the frontend's spans, CLIENT for the backend's, INTERNAL for the
// response's.
Kind span_kind(SpanKindId s);
// The parent of span `s` (none for the root) and whether it "follows from" it (then it is
// also a link). The tree adapts to the events configured: a span whose predecessor was not
// traced hangs from the closest ancestor that was (the lean configuration only has the root,
// the Frontend HTTP request and the HTTP response).
std::pair<std::optional<SpanKindId>, bool> parent_of(SpanKindId s, const Presence& p);

}  // namespace spoad::agents::tracing
