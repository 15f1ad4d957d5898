// Structured logging to stderr, text or JSON lines. Secrets are redacted on the way out:
// callers may pass DSNs, the logger masks passwords.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgshift {

enum class LogLevel { kDebug, kInfo, kWarn, kError };
enum class LogFormat { kText, kJson };

void SetLogFormat(LogFormat format);
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

using LogFields = std::vector<std::pair<std::string, std::string>>;
void Log(LogLevel level, std::string_view message, const LogFields& fields = {});
inline void LogInfo(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kInfo, m, f); }
inline void LogWarn(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kWarn, m, f); }
inline void LogError(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kError, m, f); }
inline void LogDebug(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kDebug, m, f); }

}  // namespace pgshift
