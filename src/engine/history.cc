#include "engine/history.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "common/log.h"
#include "common/strings.h"

namespace pgshift::engine {

namespace {

nlohmann::json Base(int64_t ts, const char* kind) { return {{"ts", ts}, {"kind", kind}}; }

// Sum of one figure over every database, or null when any database lacks a fresh value.
nlohmann::json SumOrNull(const StatsSnapshot& s, Measured DatabaseStats::*field, bool integral) {
  std::optional<double> sum = s.Total(field);
  if (!sum) return nullptr;
  if (integral) return static_cast<int64_t>(*sum);
  return *sum;
}

}  // namespace

nlohmann::json HistoryPhase(int64_t ts, const std::string& phase) {
  nlohmann::json j = Base(ts, "phase");
  j["phase"] = phase;
  return j;
}

nlohmann::json HistorySample(int64_t ts, const StatsSnapshot& s) {
  nlohmann::json j = Base(ts, "sample");
  j["phase"] = s.phase;
  j["lag_bytes"] = SumOrNull(s, &DatabaseStats::lag_bytes, true);
  // Lag in seconds is the worst database's, not a sum.
  nlohmann::json secs = nullptr;
  if (!s.databases.empty()) {
    double worst = 0;
    bool known = true;
    for (const auto& [name, db] : s.databases) {
      auto v = s.Fresh(db.lag_seconds);
      if (!v) {
        known = false;
        break;
      }
      worst = std::max(worst, *v);
    }
    if (known) secs = worst;
  }
  j["lag_seconds"] = secs;
  for (const auto& [key, field] : {std::pair{"tables_total", &DatabaseStats::tables_total},
                                   std::pair{"tables_synced", &DatabaseStats::tables_synced}}) {
    nlohmann::json v = SumOrNull(s, field, true);
    j[key] = v.is_null() ? nlohmann::json(0) : v;
  }
  j["bytes_copied"] = SumOrNull(s, &DatabaseStats::bytes_copied, true);
  j["bytes_total"] = SumOrNull(s, &DatabaseStats::bytes_total, true);
  j["rows_copied"] = SumOrNull(s, &DatabaseStats::rows_copied, true);
  j["ranges_total"] = SumOrNull(s, &DatabaseStats::ranges_total, true);
  j["ranges_done"] = SumOrNull(s, &DatabaseStats::ranges_done, true);
  auto drain = s.Fresh(s.lag_drain_bytes_per_s);
  auto ready_in = s.Fresh(s.ready_in_s);
  if (drain) j["drain_bytes_per_s"] = *drain;
  if (ready_in) j["ready_in_s"] = *ready_in;
  if (s.lag_stalled) j["lag_stalled"] = true;
  return j;
}

nlohmann::json HistoryVerify(int64_t ts, const VerifyProgress& p) {
  nlohmann::json j = Base(ts, "verify");
  j["mode"] = p.mode;
  j["tables_done"] = p.done;
  j["tables_total"] = p.total;
  j["mismatches"] = p.mismatches;
  j["changing"] = p.changing;
  if (!p.summary.empty()) j["summary"] = p.summary;
  if (!p.action.empty()) j["action"] = p.action;
  return j;
}

nlohmann::json HistoryCutover(int64_t ts, const CutoverAttempt& a) {
  nlohmann::json j = Base(ts, "cutover");
  j["direction"] = a.direction;
  j["succeeded"] = a.succeeded;
  j["pause_ms"] = a.pause_ms;
  nlohmann::json steps = nlohmann::json::object();
  for (const auto& [name, ms] : a.steps_ms) steps[name] = ms;
  j["steps_ms"] = steps;
  j["error"] = RedactSecrets(a.error);
  if (!a.failed_step.empty()) j["failed_step"] = a.failed_step;
  return j;
}

nlohmann::json HistoryError(int64_t ts, const std::string& message) {
  nlohmann::json j = Base(ts, "error");
  j["message"] = RedactSecrets(message);
  return j;
}

Status HistoryWriter::Append(const nlohmann::json& record) {
  if (path_.empty()) return Status::Ok();
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::Unavailable("opening " + path_ + ": " + std::strerror(errno));
  ssize_t n = ::write(fd, line.data(), line.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(line.size())) {
    return Status::Unavailable("appending to " + path_ + ": " +
                               (n < 0 ? std::strerror(err) : "short write"));
  }
  return Status::Ok();
}

void HistoryWriter::AppendOrLog(const nlohmann::json& record) {
  Status s = Append(record);
  if (!s.ok() && !warned_) {
    warned_ = true;
    LogWarn("history file: " + s.message() + " (further failures are not logged)");
  }
}

std::optional<int64_t> ParseUtcMillis(const std::string& text) {
  struct tm tm_utc = {};
  const char* rest = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm_utc);
  if (rest == nullptr) return std::nullopt;
  int64_t ms = 0;
  if (*rest == '.') {
    int digits = 0;
    for (++rest; *rest >= '0' && *rest <= '9'; ++rest) {
      if (digits < 3) {
        ms = ms * 10 + (*rest - '0');
        ++digits;
      }
    }
    while (digits++ < 3) ms *= 10;
  }
  if (*rest != 'Z' || rest[1] != '\0') return std::nullopt;
  return static_cast<int64_t>(timegm(&tm_utc)) * 1000 + ms;
}

}  // namespace pgshift::engine
