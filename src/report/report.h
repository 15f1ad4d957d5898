// `pgshift report`: one self-contained HTML page about one migration run, from the state
// (state.json, as `status --json` shows it: DSNs redacted), the engine's history file
// (<state_dir>/history.jsonl) and, optionally, the load client's per-second series
// (<ledger>.series.csv, <ledger>.summary.json).
//
// This module reads files and renders text; it never connects to a server. The chart library
// and the page's script are handed in (`Assets`), so tests render without them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pgshift::report {

struct LoadSecond {
  int64_t second = 0;
  int64_t ops = 0, writes = 0, reads = 0, errors = 0;
  double max_latency_ms = 0;
};

struct LoadRun {
  std::string ledger;
  nlohmann::json summary;  // <ledger>.summary.json as written by `pgshift load run`
  int64_t started_unix_ms = 0;
  std::vector<LoadSecond> seconds;
};

struct History {
  bool found = false;
  std::vector<nlohmann::json> events;  // objects with "ts" and "kind", in file order
  int bad_lines = 0;                   // lines that were not such objects (a torn last line)
};

struct ReportInput {
  nlohmann::json state;  // Migration::StatusJson(false)
  History history;
  std::optional<LoadRun> load;
  int64_t generated_unix_ms = 0;
};

// The chart library and the page's own script and style, inlined into the page.
struct Assets {
  std::string_view chart_js, chart_css, page_js, page_css;
  std::string chart_library;  // "uPlot 1.6.32", named in the page's footer
};

// <dir>/history.jsonl; a missing file is `found = false`, not an error.
Result<History> ReadHistory(const std::string& path);
// The load client's files for `ledger` (the path given to `load run --ledger`). Missing
// files are a NotFound error naming them.
Result<LoadRun> ReadLoadRun(const std::string& ledger);
// Parses <ledger>.series.csv text.
Result<std::vector<LoadSecond>> ParseSeriesCsv(std::string_view csv);

// The chart data the page's script draws (also what the tests inspect): time in Unix
// seconds, null where a figure was unknown.
nlohmann::json ChartData(const ReportInput& in);

std::string RenderHtml(const ReportInput& in, const Assets& assets);

}  // namespace pgshift::report
