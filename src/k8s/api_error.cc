#include "k8s/api_error.h"

#include <nlohmann/json.hpp>

#include <regex>

namespace pgshift::k8s {
namespace {

std::string DefaultReason(long code) {
  switch (code) {
    case 400: return "BadRequest";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 405: return "MethodNotAllowed";
    case 406: return "NotAcceptable";
    case 409: return "Conflict";
    case 410: return "Expired";
    case 415: return "UnsupportedMediaType";
    case 422: return "Invalid";
    case 429: return "TooManyRequests";
    case 500: return "InternalError";
    case 503: return "ServiceUnavailable";
    case 504: return "Timeout";
    default: return "Unknown";
  }
}

StatusCode CodeFor(long http, const std::string& reason) {
  switch (http) {
    case 400:
    case 422: return StatusCode::kInvalidArgument;
    case 401:
    case 403:
    case 410: return StatusCode::kFailedPrecondition;
    case 404: return StatusCode::kNotFound;
    case 409: return reason == "AlreadyExists" ? StatusCode::kAlreadyExists : StatusCode::kAborted;
    case 408:
    case 429: return StatusCode::kUnavailable;
    default: break;
  }
  if (http >= 500) return StatusCode::kUnavailable;
  return StatusCode::kInternal;
}

}  // namespace

Status StatusFromResponse(std::string_view what, long http_status, std::string_view body) {
  std::string reason;
  std::string message;
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.value("kind", "") == "Status") {
    reason = j.value("reason", "");
    message = j.value("message", "");
  }
  if (reason.empty()) reason = DefaultReason(http_status);
  if (message.empty()) {
    message = std::string(body.substr(0, 300));
    if (message.empty()) message = "(no message)";
  }
  std::string text = std::string(what) + ": HTTP " + std::to_string(http_status) + " " +
                     reason + ": " + message;
  return Status(CodeFor(http_status, reason), std::move(text));
}

std::optional<ApiError> ApiErrorOf(const Status& status) {
  if (status.ok()) return std::nullopt;
  static const std::regex kMarker(R"(HTTP (\d{3}) ([A-Za-z]+): )");
  std::smatch m;
  const std::string& msg = status.message();
  if (!std::regex_search(msg, m, kMarker)) return std::nullopt;
  ApiError e;
  e.http_status = std::stoi(m[1].str());
  e.reason = m[2].str();
  e.message = m.suffix().str();
  return e;
}

}  // namespace pgshift::k8s
