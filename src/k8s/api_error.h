// Errors from the API server as pgshift Status values. The message always carries the HTTP
// status and the Kubernetes Status reason in one fixed form,
//   "<what>: HTTP 409 Conflict: <the server's message>"
// which ApiErrorOf() reads back, also after WithContext() added prefixes. Codes:
//   404 -> kNotFound; 409 AlreadyExists -> kAlreadyExists; 409 Conflict (optimistic
//   concurrency, apply conflicts) -> kAborted; 400/422 -> kInvalidArgument; 401/403/410 ->
//   kFailedPrecondition; 408/429/5xx and transport failures -> kUnavailable (retry).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace pgshift::k8s {

struct ApiError {
  int http_status = 0;
  std::string reason;   // metav1.Status reason: "NotFound", "Conflict", "Expired", ...
  std::string message;  // the server's message
};

// The Status for a non-2xx answer; `body` is usually a metav1.Status object.
Status StatusFromResponse(std::string_view what, long http_status, std::string_view body);

std::optional<ApiError> ApiErrorOf(const Status& status);

inline bool HasHttpStatus(const Status& s, int code) {
  auto e = ApiErrorOf(s);
  return e && e->http_status == code;
}
inline bool IsNotFound(const Status& s) { return HasHttpStatus(s, 404); }
inline bool IsAlreadyExists(const Status& s) { return s.code() == StatusCode::kAlreadyExists; }
// An optimistic-concurrency or apply conflict (HTTP 409 reason Conflict).
inline bool IsConflict(const Status& s) {
  auto e = ApiErrorOf(s);
  return e && e->http_status == 409 && e->reason != "AlreadyExists";
}
// The resource version is too old (HTTP 410 Gone / reason Expired).
inline bool IsGone(const Status& s) { return HasHttpStatus(s, 410); }

}  // namespace pgshift::k8s
