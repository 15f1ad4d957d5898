// The migration's history file: `<state folder>/history.jsonl`, one JSON object per line,
// appended and flushed as the engine works, read by `pgshift report`. Records (every one has
// "ts", unix milliseconds, and "kind"):
//
//   phase    {"phase": "InitialCopy"}                           on every phase change
//   sample   {"phase", "lag_bytes", "lag_seconds", "tables_total", "tables_synced",
//             "bytes_copied", "bytes_total", "rows_copied", "ranges_total", "ranges_done"}
//                                                           sums over databases; a figure
//             that is unknown for any database is null; at most about one per second,
//             plus one when the initial copy and one when the catch-up finished
//   verify   {"mode", "tables_done", "tables_total", "mismatches", "changing"}
//                                                               during and after verification;
//             mode "convergence" (before cutover) or "switch-point" (the exact comparison of
//             the snapshot pair after cutover); the last record of a run adds "summary" (what
//             was compared, how, the result) and, at the switch point, "action" (what pgshift
//             did about a difference)
//   cutover  {"direction", "succeeded", "pause_ms", "steps_ms": {...}, "error"}
//   error    {"message"}                                        secrets redacted
//
// Writing the history never fails a migration: a line that cannot be written is logged once
// and dropped.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/status.h"
#include "engine/state.h"
#include "engine/stats.h"

namespace pgshift::engine {

inline constexpr const char* kHistoryFile = "history.jsonl";

// Record builders; `ts` is unix milliseconds.
nlohmann::json HistoryPhase(int64_t ts, const std::string& phase);
// Sums over the snapshot's databases. Null for a figure that is not fresh for every database;
// tables_total and tables_synced are 0 when no database is known.
nlohmann::json HistorySample(int64_t ts, const StatsSnapshot& s);
struct VerifyProgress {
  std::string mode = "convergence";  // | "switch-point"
  int64_t done = 0, total = 0, mismatches = 0, changing = 0;
  std::string summary;  // set on the last record of a run
  std::string action;   // switch point: "none" | "rollback" | "stop"
};
nlohmann::json HistoryVerify(int64_t ts, const VerifyProgress& p);
nlohmann::json HistoryCutover(int64_t ts, const CutoverAttempt& a);
nlohmann::json HistoryError(int64_t ts, const std::string& message);

// Appends records to one file. Each line is written with a single write() on a file opened
// with O_APPEND, so processes that share a state folder (upgrade, then cutover) interleave
// whole lines. Not thread-safe: the orchestrator's thread owns it.
class HistoryWriter {
 public:
  // An empty `path` makes a writer that drops everything.
  explicit HistoryWriter(std::string path) : path_(std::move(path)) {}
  Status Append(const nlohmann::json& record);
  // Append, logging the first failure only.
  void AppendOrLog(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool warned_ = false;
};

// "2026-11-21T22:37:49.123Z" (FormatUtc's form) -> unix milliseconds.
std::optional<int64_t> ParseUtcMillis(const std::string& text);

}  // namespace pgshift::engine
