#include "agents/tracing/span_tree.h"

namespace spoad::agents::tracing {

const char* span_name(SpanKindId s) {
  switch (s) {
    case SpanKindId::kHaproxySession:
      return "HAProxy session";
    case SpanKindId::kClientSession:
      return "Client session";
    case SpanKindId::kFrontendTcpRequest:
      return "Frontend TCP request";
    case SpanKindId::kFrontendHttpRequest:
      return "Frontend HTTP request";
    case SpanKindId::kBackendTcpRequest:
      return "Backend TCP request";
    case SpanKindId::kBackendHttpRequest:
      return "Backend HTTP request";
    case SpanKindId::kServerSession:
      return "Server session";
    case SpanKindId::kTcpResponse:
      return "TCP response";
    case SpanKindId::kHttpResponse:
      return "HTTP response";
  }
  return "?";
}

Kind span_kind(SpanKindId s) {
  switch (s) {
    case SpanKindId::kHaproxySession:
    case SpanKindId::kClientSession:
    case SpanKindId::kFrontendTcpRequest:
    case SpanKindId::kFrontendHttpRequest:
      return Kind::kServer;
    case SpanKindId::kBackendTcpRequest:
    case SpanKindId::kBackendHttpRequest:
    case SpanKindId::kServerSession:
      return Kind::kClient;
    default:
      return Kind::kInternal;
  }
}

std::pair<std::optional<SpanKindId>, bool> parent_of(SpanKindId s, const Presence& p) {
  const SpanKindId session = p.cs ? SpanKindId::kClientSession : SpanKindId::kHaproxySession;
  switch (s) {
    case SpanKindId::kHaproxySession:
      return {std::nullopt, false};
    case SpanKindId::kClientSession:
      return {SpanKindId::kHaproxySession, false};
    case SpanKindId::kFrontendTcpRequest:
      return {session, false};
    case SpanKindId::kFrontendHttpRequest:
      if (p.fth) return {SpanKindId::kFrontendTcpRequest, true};
      return {session, false};
    case SpanKindId::kBackendTcpRequest:
      if (p.fhr) return {SpanKindId::kFrontendHttpRequest, true};
      return {session, false};
    case SpanKindId::kBackendHttpRequest:
      if (p.bht) return {SpanKindId::kBackendTcpRequest, true};
      if (p.fhr) return {SpanKindId::kFrontendHttpRequest, true};
      return {session, false};
    case SpanKindId::kServerSession:
      return {SpanKindId::kHaproxySession, false};
    case SpanKindId::kTcpResponse:
      if (p.ss) return {SpanKindId::kServerSession, false};
      return {SpanKindId::kHaproxySession, false};
    case SpanKindId::kHttpResponse:
      if (p.tr) return {SpanKindId::kTcpResponse, true};
      if (p.ss) return {SpanKindId::kServerSession, false};
      return {SpanKindId::kHaproxySession, false};
  }
  return {std::nullopt, false};
}

}  // namespace spoad::agents::tracing
