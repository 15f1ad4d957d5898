#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/strings.h"

namespace pgshift {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};
std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::mutex g_mu;

const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

}  // namespace

void SetLogFormat(LogFormat format) { g_format = format; }
void SetLogLevel(LogLevel level) { g_level = level; }
LogLevel GetLogLevel() { return g_level; }

void Log(LogLevel level, std::string_view message, const LogFields& fields) {
  if (level < g_level.load()) return;
  std::string line;
  if (g_format == LogFormat::kJson) {
    nlohmann::json j;
    j["ts"] = NowUtc();
    j["level"] = LevelName(level);
    j["msg"] = RedactSecrets(message);
    for (const auto& [k, v] : fields) j[k] = RedactSecrets(v);
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = NowUtc().substr(11, 12) + " " + LevelName(level) + " " + RedactSecrets(message);
    for (const auto& [k, v] : fields) line += " " + k + "=" + RedactSecrets(v);
  }
  std::lock_guard<std::mutex> lock(g_mu);
  fprintf(stderr, "%s\n", line.c_str());
  fflush(stderr);
}

}  // namespace pgshift
