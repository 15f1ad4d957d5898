// Live progress on a terminal: bars with rate and ETA for the initial copy (bytes, tables) and
// for verification, drawn in the bottom lines of the terminal while the engine's log lines
// scroll above them.
//
// Hand-rolled ANSI, on purpose: Debian bookworm packages no C++ progress-bar library
// (indicators, ftxui, progressbar are not there) and ncurses would take the whole screen,
// which a command-line tool whose log must stay readable in the scrollback should not do. The
// terminal part is four escape sequences (VT100 scroll region, cursor save/restore, goto,
// erase line), the same trick apt uses for its bottom progress line: the bars live below the
// scroll region, so any other output (logs, warnings, libpq notices) scrolls above them and
// can never tear them. Everything that decides what to draw is pure and unit-tested.
//
// When stderr is not a terminal nothing here runs: the engine's plain log lines are the
// progress, exactly as before (tests parse them).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "engine/stats.h"

namespace pgshift::cli {

// --progress: auto (bars on a terminal, plain lines otherwise), plain, bars, detail (bars
// plus the tables still copying). bars and detail fall back to plain lines when stderr is not
// a terminal.
enum class ProgressMode { kAuto, kPlain, kBars, kDetail };
Result<ProgressMode> ParseProgressMode(const std::string& text);

// What the bars show. Unknown figures are nullopt and drawn as such, never guessed.
struct ProgressFigures {
  std::string migration_id;
  std::string phase;
  std::optional<double> lag_bytes, lag_seconds;
  // Catch-up: the lag's fall per second and the seconds until it is under the cutover
  // threshold (engine::LagTrend); `lag_stalled` when it is measured and not falling.
  std::optional<double> drain_bytes_per_s, ready_in_s;
  bool lag_stalled = false;
  std::optional<double> bytes_copied, bytes_total;
  std::optional<double> tables_synced, tables_total;
  std::optional<double> rows_copied;
  std::optional<double> ranges_done, ranges_total;  // pgshift's own copy only
  int64_t verify_done = 0, verify_total = 0, verify_mismatches = 0;
  std::vector<std::string> detail;  // per-table lines (detail mode)
  bool verify_only = false;         // `pgshift verify`: no copy, no lag, total unknown
};

// From the engine's live board: sums over databases, unknown when any database's figure is.
ProgressFigures FiguresFromSnapshot(const engine::StatsSnapshot& s);
// From `Migration::StatusJson(true)` plus the history file's latest events (for bytes copied
// and verification, which only the running engine knows): `pgshift status --watch`.
// Samples older than engine::kStaleAfterMs at `now_unix_ms` are ignored.
ProgressFigures FiguresFromStatus(const nlohmann::json& status,
                                  const std::vector<nlohmann::json>& history_tail,
                                  int64_t now_unix_ms);
// The tables not yet ready, one line each, from StatusJson(true)'s live per-table states.
std::vector<std::string> DetailLines(const nlohmann::json& status, size_t max_lines);
// The last events of <state_dir>/history.jsonl (reads at most the last 64 kB).
std::vector<nlohmann::json> ReadHistoryTail(const std::string& path);

// Rate of a growing counter over a sliding window.
class RateMeter {
 public:
  explicit RateMeter(int64_t window_ms = 10000) : window_ms_(window_ms) {}
  void Add(int64_t now_ms, double value);
  // Units per second; nullopt until two readings at least a second apart.
  std::optional<double> PerSecond() const;

 private:
  int64_t window_ms_;
  std::deque<std::pair<int64_t, double>> points_;
};

struct ProgressRates {
  RateMeter bytes, tables, verify;
};

// FormatBytes: common/strings.h.
// "0:42", "1:02:03"; "-" when unknown.
std::string FormatEta(std::optional<double> seconds);
// A bar of `cells` cells filled to `fraction` (0..1): Unicode eighths, or ASCII '#'/'.'.
std::string RenderBar(double fraction, int cells, bool unicode);

// The progress block's lines for a terminal `columns` wide (each fits in columns - 1).
// Feeds `rates` with the figures at `now_ms`.
std::vector<std::string> RenderProgress(const ProgressFigures& f, ProgressRates* rates,
                                        int64_t now_ms, int columns, bool unicode);

// Draws RenderProgress in the bottom lines of the terminal on `fd` from a thread that polls
// `poll` about five times a second. Construct only for a terminal (UseBars).
// Thread-safety: `poll` runs on the drawing thread; `detail` too, at most once a second.
class ProgressDisplay {
 public:
  using Poll = std::function<ProgressFigures()>;
  using DetailPoll = std::function<std::vector<std::string>(size_t max_lines)>;
  // nullptr when the terminal is too small for the bars (plain lines only then).
  static std::unique_ptr<ProgressDisplay> Start(int fd, Poll poll, DetailPoll detail);
  ~ProgressDisplay();  // stops drawing and gives the whole terminal back

  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

 private:
  ProgressDisplay(int fd, Poll poll, DetailPoll detail, int rows, int height);
  void Loop();
  void Draw(const std::vector<std::string>& lines);
  void Reserve();

  int fd_;
  Poll poll_;
  DetailPoll detail_;
  int rows_, cols_ = 80, height_;
  bool unicode_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// True when `mode` asks for bars and `fd` is a terminal that can show them.
bool UseBars(ProgressMode mode, int fd);
// The width of the terminal on `fd`, or `fallback` when it is not one.
int TerminalColumns(int fd, int fallback);
// Whether the locale's character set is UTF-8 (block characters for the bars), else ASCII.
bool Utf8Locale();

}  // namespace pgshift::cli
