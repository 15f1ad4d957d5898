#include "cli/progress.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "common/clock.h"
#include "common/strings.h"

namespace pgshift::cli {

namespace {

// `v` with `digits` decimals.
std::string Fixed(double v, int digits) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string Pad(std::string s, size_t n) {
  if (s.size() < n) s.append(n - s.size(), ' ');
  return s;
}

// Display width of UTF-8 text (every code point one cell: we only print ASCII and blocks).
size_t Cells(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string Clip(const std::string& s, size_t cells) {
  if (Cells(s) <= cells) return s;
  std::string out;
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80) {
      if (n == cells) break;
      ++n;
    }
    out += s[i];
  }
  return out;
}

std::string Duration(double seconds) {
  int64_t s = std::llround(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
             static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
             static_cast<long long>(s % 60));
  }
  return buf;
}

// "  ready in ~40 s (-8.0 MB/s)", "  lag not falling (+1.0 MB/s)", or "".
std::string LagOutlook(const ProgressFigures& f) {
  if (f.ready_in_s) {
    if (*f.ready_in_s <= 0) return "  under the cutover threshold";
    std::string out = "  ready in ~" + FormatDurationShort(*f.ready_in_s);
    if (f.drain_bytes_per_s) out += " (-" + FormatBytes(*f.drain_bytes_per_s) + "/s)";
    return out;
  }
  if (f.lag_stalled && f.drain_bytes_per_s) {
    return "  lag not falling (+" + FormatBytes(-*f.drain_bytes_per_s) + "/s)";
  }
  return "";
}

std::optional<double> Num(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// One bar line: "copy    [#####.....]  52%  detail  rate  ETA 0:09".
std::string BarLine(const char* label, std::optional<double> done, std::optional<double> total,
                    const std::string& amounts, std::optional<double> rate,
                    const std::string& rate_text, int columns, bool unicode) {
  std::string head = Pad(label, 8);
  if (!done || !total || *total <= 0) {
    return head + (done ? amounts : std::string("waiting for figures"));
  }
  double fraction = std::clamp(*done / *total, 0.0, 1.0);
  std::string pct = Fixed(fraction * 100, 0) + "%";
  std::string tail =
      "  " + std::string(4 - std::min<size_t>(pct.size(), 4), ' ') + pct + "  " + amounts;
  if (fraction >= 1) {
    tail += "  done";
  } else {
    tail += rate ? "  " + rate_text : std::string("");
    std::optional<double> eta;
    if (rate && *rate > 0) eta = (*total - *done) / *rate;
    tail += "  ETA " + FormatEta(eta);
  }
  int cells = std::clamp(
      columns - 1 - static_cast<int>(head.size()) - 2 - static_cast<int>(Cells(tail)), 10, 40);
  return head + "[" + RenderBar(fraction, cells, unicode) + "]" + tail;
}

}  // namespace

Result<ProgressMode> ParseProgressMode(const std::string& text) {
  if (text == "auto") return ProgressMode::kAuto;
  if (text == "plain") return ProgressMode::kPlain;
  if (text == "bars") return ProgressMode::kBars;
  if (text == "detail") return ProgressMode::kDetail;
  return Status::InvalidArgument("--progress must be auto, plain, bars or detail, not '" + text +
                                 "'");
}

ProgressFigures FiguresFromSnapshot(const engine::StatsSnapshot& s) {
  ProgressFigures f;
  f.migration_id = s.migration_id;
  f.phase = s.phase;
  f.lag_bytes = s.Total(&engine::DatabaseStats::lag_bytes);
  for (const auto& [name, db] : s.databases) {
    auto v = s.Fresh(db.lag_seconds);
    if (!v) {
      f.lag_seconds.reset();
      break;
    }
    f.lag_seconds = std::max(f.lag_seconds.value_or(0), *v);
  }
  f.drain_bytes_per_s = s.Fresh(s.lag_drain_bytes_per_s);
  f.ready_in_s = s.Fresh(s.ready_in_s);
  f.lag_stalled = s.lag_stalled && f.drain_bytes_per_s.has_value();
  f.bytes_copied = s.Total(&engine::DatabaseStats::bytes_copied);
  f.bytes_total = s.Total(&engine::DatabaseStats::bytes_total);
  f.tables_synced = s.Total(&engine::DatabaseStats::tables_synced);
  f.tables_total = s.Total(&engine::DatabaseStats::tables_total);
  f.rows_copied = s.Total(&engine::DatabaseStats::rows_copied);
  f.ranges_done = s.Total(&engine::DatabaseStats::ranges_done);
  f.ranges_total = s.Total(&engine::DatabaseStats::ranges_total);
  f.verify_done = s.verify_tables_done;
  f.verify_total = s.verify_tables_total;
  f.verify_mismatches = s.verify_mismatches;
  return f;
}

ProgressFigures FiguresFromStatus(const nlohmann::json& status,
                                  const std::vector<nlohmann::json>& history_tail,
                                  int64_t now_unix_ms) {
  ProgressFigures f;
  f.migration_id = status.value("id", "");
  f.phase = status.value("phase", "");
  if (status.contains("live") && status["live"].is_object()) {
    const auto& live = status["live"];
    f.lag_bytes = Num(live, "lag_bytes");
    if (auto total = Num(live, "tables_total"); total && *total > 0) {
      f.tables_total = total;
      f.tables_synced = Num(live, "tables_ready");
    }
    if (live.contains("databases") && live["databases"].is_array()) {
      for (const auto& d : live["databases"]) {
        auto v = Num(d, "lag_seconds");
        if (!v) {
          f.lag_seconds.reset();
          break;
        }
        f.lag_seconds = std::max(f.lag_seconds.value_or(0), *v);
      }
    }
  }
  // The running engine's latest figures; a sample is only as good as it is fresh.
  for (auto it = history_tail.rbegin(); it != history_tail.rend(); ++it) {
    if (!it->is_object() || it->value("kind", "") != "sample") continue;
    auto ts = Num(*it, "ts");
    if (ts && now_unix_ms - *ts <= engine::kStaleAfterMs) {
      f.bytes_copied = Num(*it, "bytes_copied");
      f.bytes_total = Num(*it, "bytes_total");
      f.rows_copied = Num(*it, "rows_copied");
      f.ranges_done = Num(*it, "ranges_done");
      f.ranges_total = Num(*it, "ranges_total");
      f.drain_bytes_per_s = Num(*it, "drain_bytes_per_s");
      f.ready_in_s = Num(*it, "ready_in_s");
      f.lag_stalled = it->value("lag_stalled", false);
    }
    break;
  }
  for (auto it = history_tail.rbegin(); it != history_tail.rend(); ++it) {
    if (!it->is_object() || it->value("kind", "") != "verify") continue;
    f.verify_done = static_cast<int64_t>(Num(*it, "tables_done").value_or(0));
    f.verify_total = static_cast<int64_t>(Num(*it, "tables_total").value_or(0));
    f.verify_mismatches = static_cast<int64_t>(Num(*it, "mismatches").value_or(0));
    break;
  }
  if (f.verify_total == 0 && status.contains("verification") &&
      status["verification"].is_object()) {
    if (auto n = Num(status["verification"], "tables_verified"); n && *n > 0) {
      f.verify_done = f.verify_total = static_cast<int64_t>(*n);
      f.verify_mismatches =
          static_cast<int64_t>(Num(status["verification"], "mismatches").value_or(0));
    }
  }
  return f;
}

std::vector<std::string> DetailLines(const nlohmann::json& status, size_t max_lines) {
  std::vector<std::string> pending;
  if (!status.contains("live") || !status["live"].contains("databases")) return pending;
  for (const auto& d : status["live"]["databases"]) {
    if (!d.is_object() || !d.contains("tables") || !d["tables"].is_array()) continue;
    const std::string db = d.value("name", "");
    for (const auto& t : d["tables"]) {
      const std::string state = t.value("state", "");
      if (state == "ready") continue;
      pending.push_back("  " + Pad(db + "." + t.value("table", ""), 48) + " " + state);
    }
  }
  if (pending.size() > max_lines && max_lines > 0) {
    size_t more = pending.size() - (max_lines - 1);
    pending.resize(max_lines - 1);
    pending.push_back("  ... and " + std::to_string(more) + " more tables not ready");
  }
  return pending;
}

std::vector<nlohmann::json> ReadHistoryTail(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return out;
  std::streamoff size = in.tellg();
  std::streamoff from = std::max<std::streamoff>(0, size - 64 * 1024);
  in.seekg(from);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto lines = Split(text, '\n', true);
  // The first line may be cut by the seek; a torn last line fails to parse: both skipped.
  for (size_t i = from > 0 ? 1 : 0; i < lines.size(); ++i) {
    auto j = nlohmann::json::parse(lines[i], nullptr, false);
    if (j.is_object()) out.push_back(std::move(j));
  }
  return out;
}

void RateMeter::Add(int64_t now_ms, double value) {
  if (!points_.empty() && value < points_.back().second) points_.clear();  // a restart
  points_.emplace_back(now_ms, value);
  while (points_.size() > 2 && now_ms - points_[1].first >= window_ms_) points_.pop_front();
}

std::optional<double> RateMeter::PerSecond() const {
  if (points_.size() < 2) return std::nullopt;
  const auto& [t0, v0] = points_.front();
  const auto& [t1, v1] = points_.back();
  if (t1 - t0 < 1000) return std::nullopt;
  return (v1 - v0) * 1000.0 / static_cast<double>(t1 - t0);
}

std::string FormatEta(std::optional<double> seconds) {
  if (!seconds || !std::isfinite(*seconds) || *seconds < 0) return "-";
  return Duration(*seconds);
}

std::string RenderBar(double fraction, int cells, bool unicode) {
  fraction = std::clamp(std::isfinite(fraction) ? fraction : 0.0, 0.0, 1.0);
  std::string out;
  if (!unicode) {
    int full = static_cast<int>(std::floor(fraction * cells));
    out.append(full, '#');
    out.append(cells - full, '.');
    return out;
  }
  static const char* kEighths[] = {"",       "\u258f", "\u258e", "\u258d",
                                   "\u258c", "\u258b", "\u258a", "\u2589"};
  int eighths = static_cast<int>(std::floor(fraction * cells * 8));
  int full = eighths / 8;
  for (int i = 0; i < full; ++i) out += "\u2588";
  int used = full;
  if (full < cells && eighths % 8 > 0) {
    out += kEighths[eighths % 8];
    ++used;
  }
  for (int i = used; i < cells; ++i) out += "\u00b7";
  return out;
}

std::vector<std::string> RenderProgress(const ProgressFigures& f, ProgressRates* rates,
                                        int64_t now_ms, int columns, bool unicode) {
  std::vector<std::string> lines;
  if (f.verify_only) {
    lines.push_back("pgshift verify");
  } else {
    std::string head = "pgshift " + f.migration_id + "  " + (f.phase.empty() ? "?" : f.phase);
    head += "  lag " + (f.lag_bytes ? FormatBytes(*f.lag_bytes) : std::string("-"));
    if (f.lag_seconds) head += " / " + Fixed(*f.lag_seconds, 1) + " s";
    head += LagOutlook(f);
    lines.push_back(head);
  }

  if (f.verify_only) {
    // Only the tables done so far are known: a count and a rate, no bar.
    rates->verify.Add(now_ms, static_cast<double>(f.verify_done));
    auto vps = rates->verify.PerSecond();
    std::string v = "verify  " + std::to_string(f.verify_done) + " tables compared";
    if (f.verify_mismatches > 0) v += ", " + std::to_string(f.verify_mismatches) + " differ";
    if (vps) v += "  " + Fixed(*vps, 1) + "/s";
    lines.push_back(v);
    for (auto& l : lines) l = Clip(l, static_cast<size_t>(std::max(columns - 1, 10)));
    return lines;
  }
  if (f.bytes_copied) rates->bytes.Add(now_ms, *f.bytes_copied);
  auto bps = rates->bytes.PerSecond();
  std::string amounts = f.bytes_copied ? FormatBytes(*f.bytes_copied) : std::string("-");
  if (f.bytes_total) amounts += " of " + FormatBytes(*f.bytes_total);
  if (f.rows_copied) amounts += ", " + Fixed(*f.rows_copied, 0) + " rows";
  lines.push_back(BarLine("copy", f.bytes_copied, f.bytes_total, amounts, bps,
                          bps ? FormatBytes(*bps) + "/s" : "", columns, unicode));

  if (f.tables_synced) rates->tables.Add(now_ms, *f.tables_synced);
  auto tps = rates->tables.PerSecond();
  std::string tables = f.tables_synced ? Fixed(*f.tables_synced, 0) : std::string("-");
  if (f.tables_total) tables += " of " + Fixed(*f.tables_total, 0) + " synced";
  if (f.ranges_total && f.ranges_done) {
    tables += ", " + Fixed(*f.ranges_done, 0) + " of " + Fixed(*f.ranges_total, 0) + " ranges";
  }
  lines.push_back(BarLine("tables", f.tables_synced, f.tables_total, tables, tps,
                          tps ? Fixed(*tps, 1) + "/s" : "", columns, unicode));

  if (f.verify_total > 0 || f.verify_done > 0) {
    rates->verify.Add(now_ms, static_cast<double>(f.verify_done));
    auto vps = rates->verify.PerSecond();
    std::string v = std::to_string(f.verify_done) +
                    (f.verify_total > 0 ? " of " + std::to_string(f.verify_total) : "") + " tables";
    if (f.verify_mismatches > 0) v += ", " + std::to_string(f.verify_mismatches) + " differ";
    std::optional<double> total;
    if (f.verify_total > 0) total = static_cast<double>(f.verify_total);
    lines.push_back(BarLine("verify", static_cast<double>(f.verify_done), total, v, vps,
                            vps ? Fixed(*vps, 1) + "/s" : "", columns, unicode));
  } else {
    lines.push_back("verify  not started");
  }
  for (const auto& d : f.detail) lines.push_back(d);
  for (auto& l : lines) l = Clip(l, static_cast<size_t>(std::max(columns - 1, 10)));
  return lines;
}

bool UseBars(ProgressMode mode, int fd) {
  if (mode == ProgressMode::kPlain || !isatty(fd)) return false;
  const char* term = std::getenv("TERM");
  return term != nullptr && std::strcmp(term, "dumb") != 0;
}

// --- the terminal part ------------------------------------------------------------------

namespace {

constexpr int kBarLines = 4;  // header, copy, tables, verify
constexpr int kDetailLines = 10;

// Restores the full scroll region from a signal handler: async-signal-safe calls only.
int g_signal_fd = -1;
struct sigaction g_old_int, g_old_term;

void RestoreOnSignal(int sig) {
  static const char kReset[] = "\0337\033[r\0338\n";
  if (g_signal_fd >= 0) (void)!write(g_signal_fd, kReset, sizeof kReset - 1);
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  raise(sig);
}

void WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n <= 0) return;  // a terminal that went away: drawing is best effort
    off += static_cast<size_t>(n);
  }
}

bool TerminalSize(int fd, int* rows, int* cols) {
  struct winsize ws {};
  if (ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0) return false;
  *rows = ws.ws_row;
  *cols = ws.ws_col;
  return true;
}

}  // namespace

bool Utf8Locale() {
  for (const char* var : {"LC_ALL", "LC_CTYPE", "LANG"}) {
    const char* v = std::getenv(var);
    if (v != nullptr && *v != '\0') {
      std::string s = ToLower(v);
      return s.find("utf-8") != std::string::npos || s.find("utf8") != std::string::npos;
    }
  }
  return false;
}

int TerminalColumns(int fd, int fallback) {
  int rows = 0, cols = 0;
  return TerminalSize(fd, &rows, &cols) && cols > 0 ? cols : fallback;
}

std::unique_ptr<ProgressDisplay> ProgressDisplay::Start(int fd, Poll poll, DetailPoll detail) {
  int rows = 0, cols = 0;
  if (!TerminalSize(fd, &rows, &cols)) return nullptr;
  int height = kBarLines + (detail ? std::min(kDetailLines, rows / 3) : 0);
  if (rows < height + 4 || cols < 40) return nullptr;
  std::unique_ptr<ProgressDisplay> d(
      new ProgressDisplay(fd, std::move(poll), std::move(detail), rows, height));
  d->cols_ = cols;
  d->Reserve();
  g_signal_fd = fd;
  struct sigaction sa {};
  sa.sa_handler = RestoreOnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  d->thread_ = std::thread([p = d.get()] { p->Loop(); });
  return d;
}

ProgressDisplay::ProgressDisplay(int fd, Poll poll, DetailPoll detail, int rows, int height)
    : fd_(fd),
      poll_(std::move(poll)),
      detail_(std::move(detail)),
      rows_(rows),
      height_(height),
      unicode_(Utf8Locale()) {}

// Makes room for the bars below the cursor, then confines scrolling to the lines above them.
void ProgressDisplay::Reserve() {
  std::string s(static_cast<size_t>(height_), '\n');
  s += "\033[" + std::to_string(height_) + "A";
  s += "\0337\033[1;" + std::to_string(rows_ - height_) + "r\0338";
  WriteAll(fd_, s);
}

ProgressDisplay::~ProgressDisplay() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  // Full scroll region again, bars erased; the cursor stays where the log goes on.
  std::string s =
      "\0337\033[r\0338\0337\033[" + std::to_string(rows_ - height_ + 1) + ";1H\033[J\0338";
  WriteAll(fd_, s);
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  g_signal_fd = -1;
}

void ProgressDisplay::Draw(const std::vector<std::string>& lines) {
  std::string s = "\0337";
  for (int i = 0; i < height_; ++i) {
    s += "\033[" + std::to_string(rows_ - height_ + 1 + i) + ";1H\033[2K";
    if (i < static_cast<int>(lines.size())) {
      // Bold header, plain bars.
      s += i == 0 ? "\033[1m" + lines[i] + "\033[0m" : lines[i];
    }
  }
  s += "\0338";
  WriteAll(fd_, s);
}

void ProgressDisplay::Loop() {
  ProgressRates rates;
  std::vector<std::string> detail;
  int64_t last_detail = 0;
  while (!stop_) {
    int rows = rows_, cols = cols_;
    if (TerminalSize(fd_, &rows, &cols) && (rows != rows_ || cols != cols_)) {
      cols_ = cols;
      if (rows != rows_ && rows >= height_ + 4) {
        rows_ = rows;
        WriteAll(fd_, "\0337\033[1;" + std::to_string(rows_ - height_) + "r\0338");
      }
    }
    ProgressFigures f = poll_();
    if (detail_ && MonotonicMillis() - last_detail >= 1000) {
      detail = detail_(static_cast<size_t>(height_ - kBarLines));
      last_detail = MonotonicMillis();
    }
    f.detail = detail;
    Draw(RenderProgress(f, &rates, MonotonicMillis(), cols_, unicode_));
    for (int i = 0; i < 4 && !stop_; ++i) SleepMillis(50);
  }
}

}  // namespace pgshift::cli
