#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "common/clock.h"
#include "common/files.h"
#include "common/strings.h"
#include "report/html.h"

namespace pgshift::report {

namespace {

using nlohmann::json;

// Typed reads that tolerate missing or mistyped members: a report renders whatever is there.
std::string Str(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}
std::optional<double> Num(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}
bool Bool(const json& j, const char* key) {
  if (!j.is_object()) return false;
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}
const json& Member(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}
json OrNull(std::optional<double> v) { return v ? json(*v) : json(nullptr); }

// `v` with `digits` decimals.
std::string Fixed(double v, int digits) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string FormatDuration(double seconds) {
  if (seconds < 1) return Fixed(seconds * 1000, 0) + " ms";
  if (seconds < 60) return Fixed(seconds, 1) + " s";
  int64_t s = std::llround(seconds);
  if (s < 3600) return std::to_string(s / 60) + " min " + std::to_string(s % 60) + " s";
  return std::to_string(s / 3600) + " h " + std::to_string(s % 3600 / 60) + " min";
}

// "22:37:49" (UTC) of a Unix time in seconds.
std::string ClockTime(double unix_s) {
  return FormatUtc(static_cast<int64_t>(unix_s * 1000)).substr(11, 8);
}

struct PhaseSpan {
  std::string phase;
  double start = 0, end = 0;  // Unix seconds
};

std::vector<PhaseSpan> PhaseSpans(const json& state) {
  std::vector<PhaseSpan> out;
  const json& times = Member(state, "phase_times");
  if (!times.is_object()) return out;
  auto updated = ParseUtcMillis(Str(state, "updated_at"));
  for (const auto& [phase, t] : times.items()) {
    auto start = ParseUtcMillis(Str(t, "started_at"));
    if (!start) continue;
    auto end = ParseUtcMillis(Str(t, "finished_at"));
    if (!end) end = std::max(*start, updated.value_or(*start));
    out.push_back({phase, *start / 1000.0, *end / 1000.0});
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const PhaseSpan& a, const PhaseSpan& b) { return a.start < b.start; });
  return out;
}

struct Cutover {
  double t = 0;  // Unix seconds when clients were paused
  std::string direction;
  bool succeeded = false;
  double pause_ms = 0;
  std::string failed_step, error;
};

std::vector<Cutover> Cutovers(const json& state) {
  std::vector<Cutover> out;
  const json& list = Member(state, "cutovers");
  if (!list.is_array()) return out;
  for (const auto& c : list) {
    auto t = ParseUtcMillis(Str(c, "started_at"));
    if (!t) continue;
    out.push_back({*t / 1000.0, Str(c, "direction"), Bool(c, "succeeded"),
                   Num(c, "pause_ms").value_or(0), Str(c, "failed_step"), Str(c, "error")});
  }
  return out;
}

bool AnyValue(const json& series) {
  return std::any_of(series.begin(), series.end(), [](const json& v) { return !v.is_null(); });
}

std::string Outcome(const json& state) {
  const std::string phase = Str(state, "phase");
  if (phase == "RollbackReady")
    return "cut over to the target; reverse replication keeps a rollback possible";
  if (phase == "Completed") return "completed: traffic on the target, pgshift's objects dropped";
  if (phase == "RolledBack") return "rolled back: traffic on the source again";
  if (phase == "Aborted") return "aborted before cutover; the source was left as it was";
  if (phase == "Failed") return "failed";
  if (phase == "ReadyForCutover") return "ready for cutover, waiting for `pgshift cutover`";
  return "in progress (" + phase + ")";
}

// The state's verification reports: before cutover (live, converging) and at the last
// cutover's switch point (exact: a snapshot of each side at one moment).
struct VerificationKind {
  const char* key;      // in state.json
  const char* when;     // in the summary row
  const char* heading;  // of its table
};
constexpr VerificationKind kVerifications[] = {
    {"verification", "before cutover", "Before cutover: converging while replication runs"},
    {"switch_point_verification", "at the switch point",
     "At the switch point: exact, one snapshot per side at the same moment"}};

// A table's result word; states written before "result" existed only have "match".
std::string TableResultOf(const json& t) {
  std::string r = Str(t, "result");
  if (!r.empty()) return r;
  return Bool(t, "match") ? "match" : "different";
}

// "clean: 12 tables compared (checksum, ...): ..." with the verdict coloured.
std::string VerificationResult(const json& v) {
  if (Str(v, "state") == "running") return "<span class=\"bad\">not finished</span>";
  if (!Str(v, "error").empty()) {
    return "<span class=\"bad\">not done</span>: " + HtmlEscape(Str(v, "error"));
  }
  bool clean = Bool(v, "clean");
  std::string summary = Str(v, "summary");
  if (summary.empty()) {
    summary = Str(v, "level") + ", " + Fixed(Num(v, "tables_verified").value_or(0), 0) +
              " tables, " + Fixed(Num(v, "mismatches").value_or(0), 0) + " mismatches";
  }
  std::string out = std::string("<span class=\"") +
                    (clean ? "ok\">clean" : "bad\">differences found") + "</span>: " +
                    HtmlEscape(summary);
  if (!Str(v, "action").empty()) out += " (" + HtmlEscape(Str(v, "action")) + ")";
  return out;
}

void Row(std::string* h, std::string_view key, const std::string& value_html) {
  *h += "<tr><th>" + HtmlEscape(key) + "</th><td>" + value_html + "</td></tr>\n";
}

// "When could sync end?" from the history's catch-up samples: how far behind the target started,
// how long it took to get under the cutover threshold and at what pace, and how the engine's
// first estimate compared. Empty when the history has no catch-up with a lag.
std::string CatchUpHtml(const ReportInput& in) {
  std::vector<const json*> samples;
  for (const auto& e : in.history.events) {
    if (Str(e, "kind") == "sample" && Str(e, "phase") == "CatchingUp" && Num(e, "lag_bytes")) {
      samples.push_back(&e);
    }
  }
  if (samples.empty()) return "";
  const double threshold =
      Num(Member(in.state, "options"), "max_lag_bytes").value_or(16.0 * 1024 * 1024);
  const json& first = *samples.front();
  const double t0 = first["ts"].get<double>() / 1000.0, lag0 = *Num(first, "lag_bytes");
  const json* under = nullptr;
  const json* estimate = nullptr;
  for (const json* e : samples) {
    if (estimate == nullptr && Num(*e, "ready_in_s").value_or(0) > 0) estimate = e;
    if (*Num(*e, "lag_bytes") <= threshold) {
      under = e;
      break;
    }
  }
  std::string out = "started " + FormatBytes(lag0) + " behind";
  if (under == nullptr) return HtmlEscape(out + "; the lag never got under the threshold (" +
                                          FormatBytes(threshold) + ") in the history");
  const double t1 = (*under)["ts"].get<double>() / 1000.0;
  out += "; under the threshold (" + FormatBytes(threshold) + ") " +
         FormatDurationShort(t1 - t0) + " later";
  if (t1 > t0 && lag0 > threshold) out += " (" + FormatBytes((lag0 - *Num(*under, "lag_bytes")) / (t1 - t0)) + "/s)";
  if (estimate != nullptr) {
    const double te = (*estimate)["ts"].get<double>() / 1000.0;
    out += "; first estimate \"ready in ~" + FormatDurationShort(*Num(*estimate, "ready_in_s")) +
           "\" at " + FormatBytes(*Num(*estimate, "lag_bytes")) + ", " +
           FormatDurationShort(std::max(0.0, t1 - te)) + " before it was";
  }
  return HtmlEscape(out);
}

std::string SummaryHtml(const ReportInput& in, const std::vector<PhaseSpan>& phases,
                        const std::vector<Cutover>& cutovers) {
  const json& s = in.state;
  std::string h = "<table class=\"summary\">\n";
  Row(&h, "migration", "<code>" + HtmlEscape(Str(s, "id")) + "</code>");
  auto src = Num(s, "source_major"), dst = Num(s, "target_major");
  Row(&h, "PostgreSQL",
      HtmlEscape((src ? Fixed(*src, 0) : "?") + " \u2192 " + (dst ? Fixed(*dst, 0) : "?")));
  std::vector<std::string> dbs;
  for (const auto& d : Member(s, "databases")) {
    std::string name = Str(d, "name");
    const json& tables = Member(d, "tables");
    // The marker table is pgshift's own; do not count it.
    size_t n = tables.is_array() ? tables.size() : 0;
    if (n > 0) --n;
    dbs.push_back(HtmlEscape(name) + " (" + std::to_string(n) + " tables)");
  }
  Row(&h, "databases", dbs.empty() ? "-" : Join(dbs, ", "));
  Row(&h, "router", HtmlEscape(Str(Member(s, "options"), "router")));
  std::string outcome =
      "<span class=\"phase\">" + HtmlEscape(Str(s, "phase")) + "</span> " + HtmlEscape(Outcome(s));
  if (!Str(s, "last_error").empty()) {
    outcome += "<div class=\"error\">last error: " + HtmlEscape(Str(s, "last_error")) + "</div>";
  }
  Row(&h, "outcome", outcome);
  if (!phases.empty()) {
    double total = phases.back().end - phases.front().start;
    Row(&h, "ran",
        HtmlEscape(FormatUtc(static_cast<int64_t>(phases.front().start * 1000)) + " for " +
                   FormatDuration(total)));
  }
  for (auto it = in.history.events.rbegin(); it != in.history.events.rend(); ++it) {
    auto total = Num(*it, "bytes_total");
    if (Str(*it, "kind") != "sample" || !total) continue;
    std::string copy = HtmlEscape(FormatBytes(Num(*it, "bytes_copied").value_or(0))) + " of " +
                       HtmlEscape(FormatBytes(*total));
    if (auto rows = Num(*it, "rows_copied")) copy += ", " + HtmlEscape(Fixed(*rows, 0)) + " rows";
    if (auto ranges = Num(*it, "ranges_total")) {
      copy += ", " + HtmlEscape(Fixed(Num(*it, "ranges_done").value_or(0), 0)) + " of " +
              HtmlEscape(Fixed(*ranges, 0)) + " ranges";
    }
    Row(&h, "initial copy", copy + " (last sample)");
    break;
  }
  if (std::string c = CatchUpHtml(in); !c.empty()) Row(&h, "catch-up", c);
  const Cutover* last_ok = nullptr;
  for (const auto& c : cutovers) {
    if (c.succeeded) last_ok = &c;
  }
  std::string pause = last_ok ? "<b>" + HtmlEscape(Fixed(last_ok->pause_ms, 1) + " ms") + "</b> (" +
                                    HtmlEscape(last_ok->direction) + ", " +
                                    HtmlEscape(ClockTime(last_ok->t)) + " UTC)"
                              : std::string("no cutover yet");
  size_t failed = std::count_if(cutovers.begin(), cutovers.end(),
                                [](const Cutover& c) { return !c.succeeded; });
  pause +=
      "; " + std::to_string(cutovers.size()) + " attempt(s), " + std::to_string(failed) + " undone";
  Row(&h, "last pause", pause);
  // What was compared, how and the result: before cutover, and exactly at the switch point.
  std::string verification;
  for (const auto& k : kVerifications) {
    const json& v = Member(s, k.key);
    if (!v.is_object() || v.empty()) continue;
    if (!verification.empty()) verification += "<br>";
    verification += HtmlEscape(k.when) + ": " + VerificationResult(v);
  }
  Row(&h, "verification", verification.empty() ? "not run" : verification);
  if (in.load) {
    const json& l = in.load->summary;
    std::string t = HtmlEscape(Fixed(Num(l, "acknowledged").value_or(0), 0)) + " writes, " +
                    HtmlEscape(Fixed(Num(l, "reads").value_or(0), 0)) + " reads, ";
    double errors = Num(l, "errors").value_or(0);
    t += std::string("<span class=\"") + (errors > 0 ? "bad" : "ok") + "\">" +
         HtmlEscape(Fixed(errors, 0)) + " errors</span>, worst latency " +
         HtmlEscape(Fixed(Num(l, "max_latency_ms").value_or(0), 1) + " ms") + ", p99 " +
         HtmlEscape(Fixed(Num(l, "p99_ms").value_or(0), 1) + " ms") + ", " +
         HtmlEscape(Fixed(Num(l, "reconnects").value_or(0), 0)) + " reconnects";
    Row(&h, "clients", t);
  }
  h += "</table>\n";
  return h;
}

// The phase timeline as inline SVG: one row per phase, cutovers as vertical lines.
std::string TimelineSvg(const std::vector<PhaseSpan>& phases,
                        const std::vector<Cutover>& cutovers) {
  if (phases.empty()) return "<p class=\"nodata\">No phase times in state.json.</p>\n";
  const double t0 = phases.front().start;
  double t1 = t0;
  for (const auto& p : phases) t1 = std::max(t1, p.end);
  const double span = std::max(t1 - t0, 0.001);
  const int label_w = 150, plot_w = 760, row_h = 22, top = 8;
  const int height = top + row_h * static_cast<int>(phases.size()) + 24;
  auto x = [&](double t) { return label_w + (t - t0) / span * plot_w; };
  std::string s = "<svg id=\"timeline\" class=\"timeline\" viewBox=\"0 0 " +
                  std::to_string(label_w + plot_w + 90) + " " + std::to_string(height) +
                  "\" role=\"img\" aria-label=\"phase timeline\">\n";
  for (size_t i = 0; i < phases.size(); ++i) {
    const auto& p = phases[i];
    const int y = top + static_cast<int>(i) * row_h;
    double x0 = x(p.start), w = std::max(x(p.end) - x0, 2.0);
    s += "<text x=\"" + std::to_string(label_w - 8) + "\" y=\"" + std::to_string(y + 15) +
         "\" text-anchor=\"end\">" + HtmlEscape(p.phase) + "</text>";
    s += "<rect class=\"phase-bar\" data-phase=\"" + HtmlEscape(p.phase) + "\" x=\"" +
         Fixed(x0, 1) + "\" y=\"" + std::to_string(y + 3) + "\" width=\"" + Fixed(w, 1) +
         "\" height=\"" + std::to_string(row_h - 6) + "\"><title>" +
         HtmlEscape(p.phase + ": " + ClockTime(p.start) + " .. " + ClockTime(p.end) + " UTC") +
         "</title></rect>";
    s += "<text class=\"dur\" x=\"" + Fixed(x0 + w + 4, 1) + "\" y=\"" + std::to_string(y + 15) +
         "\">" + HtmlEscape(FormatDuration(p.end - p.start)) + "</text>\n";
  }
  const int axis_y = top + row_h * static_cast<int>(phases.size()) + 4;
  s += "<line class=\"axis\" x1=\"" + std::to_string(label_w) + "\" x2=\"" +
       std::to_string(label_w + plot_w) + "\" y1=\"" + std::to_string(axis_y) + "\" y2=\"" +
       std::to_string(axis_y) + "\"/>";
  s += "<text x=\"" + std::to_string(label_w) + "\" y=\"" + std::to_string(axis_y + 16) + "\">" +
       HtmlEscape(ClockTime(t0)) + " UTC</text>";
  s += "<text x=\"" + std::to_string(label_w + plot_w) + "\" y=\"" + std::to_string(axis_y + 16) +
       "\" text-anchor=\"end\">" + HtmlEscape(ClockTime(t1)) + "</text>\n";
  for (const auto& c : cutovers) {
    double cx = x(c.t);
    s += std::string("<line class=\"cutover-mark ") + (c.succeeded ? "ok" : "undone") + "\" x1=\"" +
         Fixed(cx, 1) + "\" x2=\"" + Fixed(cx, 1) + "\" y1=\"" + std::to_string(top) + "\" y2=\"" +
         std::to_string(axis_y) + "\"><title>" +
         HtmlEscape(c.direction + (c.succeeded ? " cutover, pause " : " cutover undone, pause ") +
                    Fixed(c.pause_ms, 1) + " ms") +
         "</title></line>\n";
  }
  s += "</svg>\n";
  return s;
}

std::string CutoverTable(const std::vector<Cutover>& cutovers) {
  if (cutovers.empty()) return "<p class=\"nodata\">No cutover was attempted.</p>\n";
  std::string h =
      "<table class=\"grid\"><tr><th>at (UTC)</th><th>direction</th><th>result</th>"
      "<th>pause</th><th>failed step / error</th></tr>\n";
  for (const auto& c : cutovers) {
    h += "<tr><td>" + HtmlEscape(FormatUtc(static_cast<int64_t>(c.t * 1000))) + "</td><td>" +
         HtmlEscape(c.direction) + "</td><td class=\"" +
         (c.succeeded ? "ok\">done" : "bad\">undone") + "</td><td>" +
         HtmlEscape(Fixed(c.pause_ms, 1) + " ms") + "</td><td>" +
         HtmlEscape(c.failed_step + (c.error.empty() ? "" : ": " + c.error)) + "</td></tr>\n";
  }
  return h + "</table>\n";
}

constexpr size_t kMaxVerifyRows = 500;

std::string VerificationTable(const json& v) {
  const json& tables = Member(v, "tables");
  if (!tables.is_array() || tables.empty()) {
    return "<p class=\"nodata\">No table results.</p>\n";
  }
  std::vector<const json*> rows;
  for (const auto& t : tables) rows.push_back(&t);
  // Differences first, then rows still being written: what a reader looks for.
  auto rank = [](const json* t) {
    std::string r = TableResultOf(*t);
    return r == "different" ? 0 : r == "changing" ? 1 : 2;
  };
  std::stable_sort(rows.begin(), rows.end(),
                   [&](const json* a, const json* b) { return rank(a) < rank(b); });
  auto cell = [](const json& t, const char* k) {
    auto n = Num(t, k);
    return n ? Fixed(*n, 0) : std::string("-");
  };
  auto list = [](const json& t, const char* k) {
    std::vector<std::string> out;
    const json& items = Member(t, k);
    if (items.is_array()) {
      for (const auto& i : items) {
        if (i.is_string()) out.push_back(i.get<std::string>());
      }
    }
    return out;
  };
  std::string h =
      "<table class=\"grid verification\"><tr><th>database</th><th>table</th><th>key</th>"
      "<th>source rows</th><th>target rows</th><th>result</th><th>note</th></tr>\n";
  for (size_t i = 0; i < rows.size() && i < kMaxVerifyRows; ++i) {
    const json& t = *rows[i];
    const std::string result = TableResultOf(t);
    std::string note = Str(t, "note");
    auto add = [&note](const std::string& part) { note += (note.empty() ? "" : "; ") + part; };
    if (auto k = list(t, "differing_keys"); !k.empty()) add("keys " + Join(k, " "));
    if (auto k = list(t, "changing_keys"); !k.empty()) add("being written: " + Join(k, " "));
    for (const auto& r : list(t, "differing_rows_text")) add(r);
    const char* cls = result == "different" ? "bad" : result == "match" ? "ok" : "note";
    h += "<tr><td>" + HtmlEscape(Str(t, "database")) + "</td><td>" +
         HtmlEscape(Str(t, "schema") + "." + Str(t, "table")) + "</td><td>" +
         HtmlEscape(Str(t, "key").empty() ? "-" : Str(t, "key")) + "</td><td>" +
         cell(t, "source_rows") + "</td><td>" + cell(t, "target_rows") + "</td><td class=\"" +
         cls + "\">" + HtmlEscape(result) + "</td><td>" + HtmlEscape(note) + "</td></tr>\n";
  }
  h += "</table>\n";
  if (rows.size() > kMaxVerifyRows) {
    h += "<p>and " + std::to_string(rows.size() - kMaxVerifyRows) +
         " more tables, all matching (state.json has them all).</p>\n";
  }
  return h;
}

// Both verifications, each with what was compared, how, and the result.
std::string VerificationSection(const json& state) {
  std::string h;
  for (const auto& k : kVerifications) {
    const json& v = Member(state, k.key);
    if (!v.is_object() || v.empty()) continue;
    h += "<h3 id=\"" + std::string(k.key) + "\">" + HtmlEscape(k.heading) + "</h3>\n<p>" +
         VerificationResult(v) + "</p>\n" + VerificationTable(v);
  }
  if (h.empty()) return "<p class=\"nodata\">No verification results in state.json.</p>\n";
  return h;
}

// The clients' seconds around each successful cutover: what they felt.
std::string AroundCutoverTable(const LoadRun& load, const std::vector<Cutover>& cutovers) {
  std::string h;
  for (const auto& c : cutovers) {
    if (!c.succeeded) continue;
    double rel = c.t - load.started_unix_ms / 1000.0;
    int64_t at = static_cast<int64_t>(std::floor(rel));
    if (at < 0 || at >= static_cast<int64_t>(load.seconds.size()) + 1) continue;
    h += "<h3>" + HtmlEscape(c.direction) + " cutover at " + HtmlEscape(ClockTime(c.t)) +
         " UTC (second " + std::to_string(at) + " of the load run), pause " +
         HtmlEscape(Fixed(c.pause_ms, 1) + " ms") + "</h3>\n";
    h += "<table class=\"grid around\"><tr><th>second</th><th>ops</th><th>writes</th><th>reads</th>"
         "<th>errors</th><th>max latency</th></tr>\n";
    for (const auto& sec : load.seconds) {
      if (sec.second < at - 5 || sec.second > at + 5) continue;
      h += std::string("<tr") + (sec.second == at ? " class=\"cut\"" : "") + "><td>" +
           std::to_string(sec.second - at) + "</td><td>" + std::to_string(sec.ops) + "</td><td>" +
           std::to_string(sec.writes) + "</td><td>" + std::to_string(sec.reads) + "</td><td" +
           (sec.errors > 0 ? " class=\"bad\"" : "") + ">" + std::to_string(sec.errors) +
           "</td><td>" + HtmlEscape(Fixed(sec.max_latency_ms, 1) + " ms") + "</td></tr>\n";
    }
    h += "</table>\n";
  }
  return h.empty() ? "<p class=\"nodata\">No successful cutover happened while the load ran.</p>\n"
                   : h;
}

std::string Chart(const char* id, const char* title, const char* what) {
  return std::string("<figure class=\"chart-box\"><figcaption>") + title +
         "</figcaption><div class=\"chart\" id=\"" + id + "\" data-what=\"" + what +
         "\"></div></figure>\n";
}

}  // namespace

Result<History> ReadHistory(const std::string& path) {
  History h;
  auto text = ReadFile(path);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return h;
    return text.status();
  }
  h.found = true;
  for (const auto& line : Split(*text, '\n', true)) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("ts") || !j["ts"].is_number() || !j.contains("kind") ||
        !j["kind"].is_string()) {
      h.bad_lines++;
      continue;
    }
    h.events.push_back(std::move(j));
  }
  return h;
}

Result<std::vector<LoadSecond>> ParseSeriesCsv(std::string_view csv) {
  std::vector<LoadSecond> out;
  auto lines = Split(csv, '\n', true);
  if (lines.empty() || Trim(lines[0]) != "second,ops,writes,reads,errors,max_latency_ms") {
    return Status::InvalidArgument(
        "not a load series: the header must be second,ops,writes,reads,errors,max_latency_ms");
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    auto f = Split(Trim(lines[i]), ',');
    long long n[5];
    bool ok = f.size() == 6;
    for (int k = 0; ok && k < 5; ++k) ok = ParseInt64(f[k], &n[k]);
    char* end = nullptr;
    double lat = ok ? strtod(f[5].c_str(), &end) : 0;
    if (!ok || end == f[5].c_str() || *end != '\0') {
      return Status::InvalidArgument("load series line " + std::to_string(i + 1) + " is malformed");
    }
    out.push_back({n[0], n[1], n[2], n[3], n[4], lat});
  }
  return out;
}

Result<LoadRun> ReadLoadRun(const std::string& ledger) {
  LoadRun run;
  run.ledger = ledger;
  const std::string csv_path = ledger + ".series.csv", summary_path = ledger + ".summary.json";
  auto csv = ReadFile(csv_path);
  if (!csv.ok()) {
    return Status(csv.status().code(),
                  csv.status().message() +
                      " (--load takes the --ledger path of `pgshift load run`, whose run writes "
                      "LEDGER.series.csv and LEDGER.summary.json when it ends)");
  }
  auto secs = ParseSeriesCsv(*csv);
  if (!secs.ok()) return secs.status().WithContext(csv_path);
  run.seconds = std::move(*secs);
  auto sum = ReadFile(summary_path);
  if (!sum.ok()) return sum.status();
  run.summary = json::parse(*sum, nullptr, false);
  if (!run.summary.is_object() || !Num(run.summary, "started_unix_ms")) {
    return Status::InvalidArgument(summary_path + ": not a load summary (no started_unix_ms)");
  }
  run.started_unix_ms = static_cast<int64_t>(*Num(run.summary, "started_unix_ms"));
  return run;
}

json ChartData(const ReportInput& in) {
  json d;
  json phases = json::array();
  for (const auto& p : PhaseSpans(in.state)) {
    phases.push_back({{"phase", p.phase}, {"start", p.start}, {"end", p.end}});
  }
  d["phases"] = phases;
  json cuts = json::array();
  for (const auto& c : Cutovers(in.state)) {
    cuts.push_back({{"t", c.t},
                    {"direction", c.direction},
                    {"succeeded", c.succeeded},
                    {"pause_ms", c.pause_ms}});
  }
  d["cutovers"] = cuts;

  json lag = {{"t", json::array()},
              {"bytes", json::array()},
              {"seconds", json::array()},
              {"ready_in", json::array()}};
  json copy = {{"t", json::array()},
               {"bytes_pct", json::array()},
               {"tables_pct", json::array()},
               {"bytes_copied", json::array()},
               {"bytes_total", json::array()},
               {"tables_synced", json::array()},
               {"tables_total", json::array()},
               {"rows_copied", json::array()}};
  json verify = {{"t", json::array()},
                 {"done", json::array()},
                 {"total", json::array()},
                 {"mismatches", json::array()}};
  json errors = json::array();
  for (const auto& e : in.history.events) {
    const double t = e["ts"].get<double>() / 1000.0;
    const std::string kind = e["kind"].get<std::string>();
    if (kind == "sample") {
      lag["t"].push_back(t);
      lag["bytes"].push_back(OrNull(Num(e, "lag_bytes")));
      lag["seconds"].push_back(OrNull(Num(e, "lag_seconds")));
      lag["ready_in"].push_back(OrNull(Num(e, "ready_in_s")));
      auto bc = Num(e, "bytes_copied"), bt = Num(e, "bytes_total");
      auto ts = Num(e, "tables_synced"), tt = Num(e, "tables_total");
      copy["t"].push_back(t);
      copy["bytes_copied"].push_back(OrNull(bc));
      copy["bytes_total"].push_back(OrNull(bt));
      copy["tables_synced"].push_back(OrNull(ts));
      copy["tables_total"].push_back(OrNull(tt));
      copy["rows_copied"].push_back(OrNull(Num(e, "rows_copied")));
      copy["bytes_pct"].push_back(bc && bt && *bt > 0 ? json(std::min(100.0, *bc / *bt * 100))
                                                      : json(nullptr));
      copy["tables_pct"].push_back(ts && tt && *tt > 0 ? json(std::min(100.0, *ts / *tt * 100))
                                                       : json(nullptr));
    } else if (kind == "verify") {
      verify["t"].push_back(t);
      verify["done"].push_back(OrNull(Num(e, "tables_done")));
      verify["total"].push_back(OrNull(Num(e, "tables_total")));
      verify["mismatches"].push_back(OrNull(Num(e, "mismatches")));
    } else if (kind == "error") {
      errors.push_back({{"t", t}, {"message", Str(e, "message")}});
    }
  }
  d["lag"] = lag;
  d["copy"] = copy;
  d["verify"] = verify;
  d["errors"] = errors;
  if (in.load) {
    json l = {{"t", json::array()},      {"ops", json::array()},
              {"writes", json::array()}, {"reads", json::array()},
              {"errors", json::array()}, {"max_latency_ms", json::array()}};
    for (const auto& s : in.load->seconds) {
      l["t"].push_back((in.load->started_unix_ms + s.second * 1000) / 1000.0);
      l["ops"].push_back(s.ops);
      l["writes"].push_back(s.writes);
      l["reads"].push_back(s.reads);
      l["errors"].push_back(s.errors);
      l["max_latency_ms"].push_back(s.max_latency_ms);
    }
    d["load"] = l;
  } else {
    d["load"] = nullptr;
  }
  return d;
}

std::string RenderHtml(const ReportInput& in, const Assets& assets) {
  const json data = ChartData(in);
  const auto phases = PhaseSpans(in.state);
  const auto cutovers = Cutovers(in.state);
  const std::string id = Str(in.state, "id");
  std::string h;
  h.reserve(assets.chart_js.size() + 64 * 1024);
  h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  h += "<title>pgshift migration " + HtmlEscape(id) + "</title>\n";
  h += "<style>\n" + InlineSource(assets.chart_css) + "\n" + InlineSource(assets.page_css) +
       "\n</style>\n</head>\n<body>\n";
  h += "<header><h1>pgshift migration <code>" + HtmlEscape(id) + "</code></h1><p>Report written " +
       HtmlEscape(FormatUtc(in.generated_unix_ms)) + ". Times are UTC.</p></header>\n<main>\n";

  h += "<section id=\"summary\"><h2>Summary</h2>\n" + SummaryHtml(in, phases, cutovers) +
       "</section>\n";

  h += "<section id=\"phases\"><h2>Phase timeline</h2>\n" + TimelineSvg(phases, cutovers) +
       "</section>\n";

  h += "<section id=\"replication\"><h2>Replication</h2>\n";
  if (!in.history.found) {
    h += "<p class=\"nodata\">No history.jsonl in the state folder: lag and copy progress over "
         "time are recorded by the engine while `pgshift upgrade` runs.</p>\n";
  } else {
    if (in.history.bad_lines > 0) {
      h += "<p class=\"note\">" + std::to_string(in.history.bad_lines) +
           " line(s) of history.jsonl could not be read and were skipped.</p>\n";
    }
    if (AnyValue(data["lag"]["bytes"]) || AnyValue(data["lag"]["seconds"])) {
      h += Chart("chart-lag",
                 "Replication lag (bytes and seconds) over time, and while catching up the "
                 "estimated seconds until it is under the cutover threshold",
                 "lag");
    } else {
      h += "<p class=\"nodata\">history.jsonl holds no lag figures.</p>\n";
    }
    if (AnyValue(data["copy"]["bytes_pct"]) || AnyValue(data["copy"]["tables_pct"])) {
      h += Chart("chart-copy", "Initial copy progress: bytes copied and tables synchronised (%)",
                 "copy");
    } else {
      h += "<p class=\"nodata\">history.jsonl holds no copy progress figures.</p>\n";
    }
    if (AnyValue(data["verify"]["done"])) {
      h += Chart("chart-verify", "Verification progress (tables done)", "verify");
    }
    if (!data["errors"].empty()) {
      h += "<h3>Errors recorded</h3><ul class=\"errors\">\n";
      for (const auto& e : data["errors"]) {
        h += "<li>" + HtmlEscape(ClockTime(e["t"].get<double>())) + " " +
             HtmlEscape(e["message"].get<std::string>()) + "</li>\n";
      }
      h += "</ul>\n";
    }
  }
  h += "</section>\n";

  h += "<section id=\"cutovers\"><h2>Cutover attempts</h2>\n" + CutoverTable(cutovers) +
       "</section>\n";
  h += "<section id=\"verify\"><h2>Verification</h2>\n" + VerificationSection(in.state) +
       "</section>\n";

  if (in.load) {
    h += "<section id=\"load\"><h2>What the clients felt</h2>\n<p>Load client ledger <code>" +
         HtmlEscape(in.load->ledger) +
         "</code>, one point per second; the dashed line marks the "
         "cutover.</p>\n";
    h += Chart("chart-throughput", "Client operations per second", "throughput");
    h += Chart("chart-latency", "Client errors per second and worst latency (ms)", "latency");
    h += AroundCutoverTable(*in.load, cutovers);
    h += "</section>\n";
  }

  const json& notes = Member(in.state, "notes");
  if (notes.is_array() && !notes.empty()) {
    h += "<section id=\"notes\"><h2>Notes</h2><ul>\n";
    for (const auto& n : notes) {
      if (n.is_string()) h += "<li>" + HtmlEscape(n.get<std::string>()) + "</li>\n";
    }
    h += "</ul></section>\n";
  }
  h += "</main>\n<footer>Written by pgshift; charts drawn with " +
       HtmlEscape(assets.chart_library) +
       " (MIT licence), inlined: this page loads nothing from anywhere.</footer>\n";
  h += "<script type=\"application/json\" id=\"pgshift-data\">" + JsonForScript(data) +
       "</script>\n";
  h += "<script>\n" + InlineSource(assets.chart_js) + "\n</script>\n";
  h += "<script>\n" + InlineSource(assets.page_js) + "\n</script>\n";
  h += "</body>\n</html>\n";
  return h;
}

}  // namespace pgshift::report
