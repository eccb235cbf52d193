#include "agents/tracing/span_tree.h"

namespace spoad::agents::tracing {

using S = SpanKindId;

const char* span_name(S s) {
  switch (s) {
    case S::kHaproxySession:
      return "HAProxy session";
    case S::kClientSession:
      return "Client session";
    case S::kFrontendTcpRequest:
      return "Frontend TCP request";
    case S::kFrontendHttpRequest:
      return "Frontend HTTP request";
    case S::kBackendTcpRequest:
      return "Backend TCP request";
    case S::kBackendHttpRequest:
      return "Backend HTTP request";
    case S::kServerSession:
      return "Server session";
    case S::kTcpResponse:
      return "TCP response";
    case S::kHttpResponse:
      return "HTTP response";
  }
  return "?";
}

Kind span_kind(S s) {
  switch (s) {
    case S::kHaproxySession:
    case S::kClientSession:
    case S::kFrontendTcpRequest:
    case S::kFrontendHttpRequest:
      return Kind::kServer;
    case S::kBackendTcpRequest:
    case S::kBackendHttpRequest:
    case S::kServerSession:
      return Kind::kClient;
    default:
      return Kind::kInternal;
  }
}

std::pair<std::optional<S>, bool> parent_of(S s, const Presence& p) {
  const S session = p.cs ? S::kClientSession : S::kHaproxySession;
  switch (s) {
    case S::kHaproxySession:
      return {std::nullopt, false};
    case S::kClientSession:
      return {S::kHaproxySession, false};
    case S::kFrontendTcpRequest:
      return {session, false};
    case S::kFrontendHttpRequest:
      if (p.fth) return {S::kFrontendTcpRequest, true};
      return {session, false};
    case S::kBackendTcpRequest:
      if (p.fhr) return {S::kFrontendHttpRequest, true};
      return {session, false};
    case S::kBackendHttpRequest:
      if (p.bht) return {S::kBackendTcpRequest, true};
      if (p.fhr) return {S::kFrontendHttpRequest, true};
      return {session, false};
    case S::kServerSession:
      return {S::kHaproxySession, false};
    case S::kTcpResponse:
      if (p.ss) return {S::kServerSession, false};
      return {S::kHaproxySession, false};
    case S::kHttpResponse:
      if (p.tr) return {S::kTcpResponse, true};
      if (p.ss) return {S::kServerSession, false};
      return {S::kHaproxySession, false};
  }
  return {std::nullopt, false};
}

}  // namespace spoad::agents::tracing
