// The tracing agent's SPOE messages (config/spoe-tracing.cfg): which event a message reports,
// and its arguments by name. Arguments are bytes from HAProxy: views into the message, never
// trusted (a missing or mistyped argument reads as absent).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agents/tracing/span_tree.h"
#include "agents/tracing/trace_context.h"
#include "spop/types.h"

namespace spoad::agents::tracing {

// The event a message reports, by its name ("trace-client-session"...); kUnknown for others.
enum class Stage {
  kClientSession,
  kFrontendTcpRequest,
  kFrontendHttpRequest,
  kBackendTcpRequest,
  kBackendHttpRequest,
  kServerSession,
  kTcpResponse,
  kHttpResponse,
  kUnknown,
};
static_assert(static_cast<size_t>(Stage::kUnknown) == 8, "TracingAgent::kEvents");
Stage stage_of(std::string_view name);

// The arguments of one message, by name (see config/spoe-tracing.cfg).
struct Event {
  int64_t now = -1;
  std::optional<RequestContext> ctx;
  bool has_traceparent = false;  // the message carries the header (possibly absent: NULL)
  std::string_view traceparent, tracestate, ts;
  int64_t t_cs = -1, t0 = -1, t_fth = -1, t_fhr = -1, t_bht = -1, t_bhr = -1, t_ss = -1, t_tr = -1;
  std::string_view method, path, query, host, version, frontend, backend, server, unique_id;
  std::string client;
  int64_t client_port = -1;
  int64_t status = -1;

  // Reads the arguments of `msg`; unknown names are ignored. `msg` must outlive the Event.
  explicit Event(const spop::Message& msg);

  Presence presence() const {
    return {t_cs >= 0, t_fth >= 0, t_fhr >= 0, t_bht >= 0, t_bhr >= 0, t_ss >= 0, t_tr >= 0};
  }
};

}  // namespace spoad::agents::tracing
