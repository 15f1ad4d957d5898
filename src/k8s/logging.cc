#include "k8s/logging.h"

#include <iostream>
#include <mutex>
#include <regex>

namespace pgshift::k8s {
namespace {

std::mutex& SinkMutex() {
  static std::mutex mu;
  return mu;
}

LogSink& Sink() {
  static LogSink sink;
  return sink;
}

std::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

}  // namespace

void SetLogSink(LogSink sink) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  Sink() = std::move(sink);
}

void Log(LogLevel level, std::string_view message) {
  std::string line = Redact(message);
  std::lock_guard<std::mutex> lock(SinkMutex());
  if (Sink()) {
    Sink()(level, line);
  } else if (level >= LogLevel::kWarning) {
    std::cerr << "k8s " << LevelName(level) << ": " << line << '\n';
  }
}

std::string Redact(std::string_view text) {
  static const std::regex kPem(R"(-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)");
  static const std::regex kAuthorization(R"((Authorization:\s*)[^\r\n]*)", std::regex::icase);
  static const std::regex kBearer(R"((Bearer\s+)[A-Za-z0-9._~+/=-]+)", std::regex::icase);
  // JSON Web Tokens (service-account tokens): three base64url parts, the first "eyJ".
  static const std::regex kJwt(R"(eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+)");
  std::string s(text);
  s = std::regex_replace(s, kPem, "[REDACTED PRIVATE KEY]");
  s = std::regex_replace(s, kAuthorization, "$1[REDACTED]");
  s = std::regex_replace(s, kBearer, "$1[REDACTED]");
  s = std::regex_replace(s, kJwt, "[REDACTED TOKEN]");
  return s;
}

}  // namespace pgshift::k8s
