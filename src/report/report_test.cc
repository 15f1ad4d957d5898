#include "report/report.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>

#include "common/files.h"
#include "report/html.h"

namespace pgshift::report {
namespace {

const Assets kAssets{"/*chart*/", "/*chart css*/", "/*page*/", "/*page css*/", "uPlot test"};

nlohmann::json State() {
  return nlohmann::json::parse(R"j({
    "id": "ab12cd34", "phase": "RollbackReady", "source_major": 15, "target_major": 17,
    "options": {"router": "pgbouncer"},
    "databases": [{"name": "shop<db>", "tables": ["a", "b", "_pgshift.marker"]}],
    "phase_times": {
      "Preflight": {"started_at": "2026-11-22T01:00:00.000Z", "finished_at": "2026-11-22T01:00:01.000Z"},
      "InitialCopy": {"started_at": "2026-11-22T01:00:01.000Z", "finished_at": "2026-11-22T01:00:09.500Z"},
      "RollbackReady": {"started_at": "2026-11-22T01:00:12.000Z", "finished_at": ""}},
    "cutovers": [{"direction": "forward", "started_at": "2026-11-22T01:00:11.000Z",
                  "succeeded": true, "pause_ms": 31.5, "failed_step": "", "error": ""}],
    "verification": {"level": "checksum", "clean": false, "tables_verified": 2, "mismatches": 1,
      "tables": [
        {"database": "shop<db>", "schema": "s", "table": "ok", "source_rows": 5, "target_rows": 5,
         "match": true, "rounds": 1, "note": "", "differing_keys": []},
        {"database": "shop<db>", "schema": "s", "table": "<script>alert(1)</script>",
         "source_rows": 5, "target_rows": 4, "match": false, "rounds": 3,
         "note": "rows differ & \"quoted\"", "differing_keys": ["(7,'a')"]}]},
    "notes": ["it's <b>bold</b>"],
    "last_error": "", "created_at": "2026-11-22T01:00:00.000Z",
    "updated_at": "2026-11-22T01:00:12.500Z"})j");
}

std::string TempDir() {
  char tmpl[] = "/tmp/pgshift-report-test-XXXXXX";
  char* d = mkdtemp(tmpl);
  return d ? d : "/tmp";
}

TEST(HtmlTest, EscapesMarkupAndQuotes) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">Tom & 'Jerry'</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;");
  EXPECT_EQ(HtmlEscape("plain"), "plain");
}

TEST(HtmlTest, JsonForScriptCannotCloseTheScriptElement) {
  std::string s = JsonForScript({{"t", "</script><!-- & \u2028"}});
  EXPECT_EQ(s.find('<'), std::string::npos);
  EXPECT_EQ(s.find('>'), std::string::npos);
  EXPECT_EQ(s.find('&'), std::string::npos);
  EXPECT_NE(s.find("\\u003c/script\\u003e"), std::string::npos);
  EXPECT_NE(s.find("\\u2028"), std::string::npos);  // ASCII only
  // Still the same JSON.
  EXPECT_EQ(nlohmann::json::parse(s)["t"], "</script><!-- & \u2028");
}

TEST(HtmlTest, InlineSourceBreaksClosingTags) {
  EXPECT_EQ(InlineSource("a='</script>';b='</STYLE>';c=1</2"),
            "a='<\\/script>';b='<\\/STYLE>';c=1</2");
}

TEST(HtmlTest, ParsesPgshiftUtcTimes) {
  EXPECT_EQ(ParseUtcMillis("1970-01-01T00:00:01.250Z"), 1250);
  EXPECT_EQ(ParseUtcMillis("2026-11-22T01:00:00Z"), 1795309200000);
  EXPECT_EQ(ParseUtcMillis(""), std::nullopt);
  EXPECT_EQ(ParseUtcMillis("2026-11-22T01:00:00+02:00"), std::nullopt);
  EXPECT_EQ(ParseUtcMillis("2026-13-22T01:00:00Z"), std::nullopt);
}

TEST(ReportTest, UserDataIsEscapedEverywhere) {
  ReportInput in;
  in.state = State();
  in.history.found = true;
  in.history.events.push_back(nlohmann::json::parse(
      R"({"ts": 1795309205000, "kind": "error", "message": "</script><script>alert(2)</script>"})"));
  std::string html = RenderHtml(in, kAssets);
  EXPECT_EQ(html.find("<script>alert"), std::string::npos);
  EXPECT_EQ(html.find("<b>bold"), std::string::npos);
  EXPECT_EQ(html.find("shop<db>"), std::string::npos);
  EXPECT_NE(html.find("s.&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("it&#39;s &lt;b&gt;bold&lt;/b&gt;"), std::string::npos);
  EXPECT_NE(html.find("rows differ &amp; &quot;quoted&quot;; keys (7,&#39;a&#39;)"),
            std::string::npos);
  EXPECT_NE(html.find("&lt;/script&gt;&lt;script&gt;alert(2)"), std::string::npos);
  // Exactly the page's own script elements: the data, the chart library, the page's.
  size_t n = 0;
  for (size_t p = html.find("<script"); p != std::string::npos; p = html.find("<script", p + 1))
    n++;
  EXPECT_EQ(n, 3u);
  EXPECT_NE(html.find("differences found"), std::string::npos);
  EXPECT_NE(html.find("31.5 ms"), std::string::npos);
  EXPECT_NE(html.find("15 \u2192 17"), std::string::npos);
  EXPECT_NE(html.find("shop&lt;db&gt; (2 tables)"), std::string::npos);
}

TEST(ReportTest, DifferencesAreListedFirst) {
  ReportInput in;
  in.state = State();
  std::string html = RenderHtml(in, kAssets);
  EXPECT_LT(html.find(">different<"), html.find(">match<"));
}

// Before cutover and at the switch point: what was compared, how, and the result of each.
TEST(ReportTest, ShowsBothVerificationsWithHowAndResult) {
  ReportInput in;
  in.state = State();
  in.state["verification"] = nlohmann::json::parse(R"j({
    "level": "checksum", "mode": "convergence", "clean": true, "tables_verified": 2,
    "mismatches": 0, "changing": 1,
    "summary": "2 tables compared (checksum, pre-cutover convergence, hashextended): 1 match, 1 still being written (not blocking)",
    "tables": [
      {"database": "app", "schema": "public", "table": "accounts", "key": "(aid)",
       "result": "match", "source_rows": 5, "target_rows": 5},
      {"database": "app", "schema": "public", "table": "branches", "key": "(bid)",
       "result": "changing", "source_rows": 20, "target_rows": 20,
       "note": "2 rows were still being written", "changing_keys": ["(4)", "(18)"]}]})j");
  in.state["switch_point_verification"] = nlohmann::json::parse(R"j({
    "level": "checksum", "mode": "snapshot", "clean": false, "tables_verified": 2,
    "mismatches": 1, "action": "rolled back",
    "summary": "2 tables compared (checksum, exact snapshot pair, hashextended): 1 match, 1 different",
    "tables": [
      {"database": "app", "schema": "public", "table": "history", "key": "",
       "result": "different", "source_rows": 9, "target_rows": 10, "note": "row count differs",
       "differing_rows_text": ["- only on target: (1,2,3)"]},
      {"database": "app", "schema": "public", "table": "branches", "key": "(bid)",
       "result": "match", "source_rows": 20, "target_rows": 20}]})j");
  std::string html = RenderHtml(in, kAssets);
  EXPECT_NE(html.find("before cutover: <span class=\"ok\">clean</span>: 2 tables compared "
                      "(checksum, pre-cutover convergence, hashextended)"),
            std::string::npos)
      << html;
  EXPECT_NE(html.find("at the switch point: <span class=\"bad\">differences found</span>: 2 "
                      "tables compared (checksum, exact snapshot pair, hashextended): 1 match, 1 "
                      "different (rolled back)"),
            std::string::npos);
  EXPECT_NE(html.find("Before cutover: converging while replication runs"), std::string::npos);
  EXPECT_NE(html.find("At the switch point: exact"), std::string::npos);
  EXPECT_NE(html.find("being written: (4) (18)"), std::string::npos);
  EXPECT_NE(html.find("- only on target: (1,2,3)"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"note\">changing</td>"), std::string::npos);
  EXPECT_LT(html.find("Before cutover:"), html.find("At the switch point:"));
}

TEST(ReportTest, MissingHistoryGivesNotesNotCharts) {
  std::string dir = TempDir();
  auto h = ReadHistory(dir + "/history.jsonl");
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_FALSE(h->found);
  ReportInput in;
  in.state = State();
  in.history = *h;
  std::string html = RenderHtml(in, kAssets);
  EXPECT_NE(html.find("No history.jsonl"), std::string::npos);
  EXPECT_EQ(html.find("id=\"chart-lag\""), std::string::npos);
  EXPECT_EQ(html.find("id=\"chart-throughput\""), std::string::npos);  // no --load either
  // The timeline comes from state.json alone.
  EXPECT_NE(html.find("data-phase=\"InitialCopy\""), std::string::npos);
  EXPECT_NE(html.find("class=\"cutover-mark ok\""), std::string::npos);
  (void)RemoveAll(dir);
}

TEST(ReportTest, HistorySkipsTornLinesAndFeedsCharts) {
  std::string dir = TempDir();
  std::ofstream(dir + "/history.jsonl")
      << R"({"ts": 1795309202000, "kind": "phase", "phase": "InitialCopy"})"
      << "\n"
      << R"({"ts": 1795309203000, "kind": "sample", "phase": "InitialCopy", "lag_bytes": 1000, )"
      << R"("lag_seconds": null, "tables_total": 4, "tables_synced": 1, "bytes_copied": 50, )"
      << R"("bytes_total": 200, "rows_copied": 7})"
      << "\n"
      << R"({"ts": 1795309204000, "kind": "sample", "phase": "InitialCopy", "lag_bytes": null, )"
      << R"("lag_seconds": 0.5, "tables_total": 4, "tables_synced": 4, "bytes_copied": 200, )"
      << R"("bytes_total": 200, "rows_copied": 9})"
      << "\n"
      << R"({"ts": 1795309205000, "kind": "sam)";  // torn by a crash
  auto h = ReadHistory(dir + "/history.jsonl");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->found);
  EXPECT_EQ(h->events.size(), 3u);
  EXPECT_EQ(h->bad_lines, 1);
  ReportInput in;
  in.state = State();
  in.history = *h;
  nlohmann::json d = ChartData(in);
  EXPECT_EQ(d["lag"]["t"], nlohmann::json({1795309203.0, 1795309204.0}));
  EXPECT_EQ(d["lag"]["bytes"], nlohmann::json({1000, nullptr}));
  EXPECT_EQ(d["copy"]["bytes_pct"], nlohmann::json({25.0, 100.0}));
  EXPECT_EQ(d["copy"]["tables_pct"], nlohmann::json({25.0, 100.0}));
  EXPECT_EQ(d["cutovers"][0]["t"], 1795309211.0);
  std::string html = RenderHtml(in, kAssets);
  EXPECT_NE(html.find("id=\"chart-lag\""), std::string::npos);
  EXPECT_NE(html.find("id=\"chart-copy\""), std::string::npos);
  EXPECT_NE(html.find("1 line(s) of history.jsonl could not be read"), std::string::npos);
  EXPECT_NE(html.find("200 B of 200 B, 9 rows"), std::string::npos);
  (void)RemoveAll(dir);
}

TEST(ReportTest, CatchUpSaysHowFarBehindHowLongAndHowGoodTheEstimateWas) {
  ReportInput in;
  in.state = State();
  in.state["options"]["max_lag_bytes"] = 16 << 20;
  in.history.found = true;
  const double mb = 1 << 20;
  auto sample = [&](int64_t ts, double lag, std::optional<double> ready_in) {
    nlohmann::json e = {{"ts", ts}, {"kind", "sample"}, {"phase", "CatchingUp"}, {"lag_bytes", lag * mb}};
    if (ready_in) e["ready_in_s"] = *ready_in;
    in.history.events.push_back(e);
  };
  sample(1795309210000, 500, std::nullopt);
  sample(1795309213000, 380, 9.0);  // the first estimate: 9 s
  sample(1795309216000, 200, 4.0);
  sample(1795309220000, 10, 0.0);  // under 16 MB: 10 s after the start, 7 s after the estimate
  nlohmann::json d = ChartData(in);
  EXPECT_EQ(d["lag"]["ready_in"], nlohmann::json({nullptr, 9.0, 4.0, 0.0}));
  std::string html = RenderHtml(in, kAssets);
  EXPECT_NE(html.find("<th>catch-up</th><td>started 500.0 MB behind; under the threshold (16.0 MB) "
                      "10 s later (49.0 MB/s); first estimate &quot;ready in ~9 s&quot; at 380.0 MB, "
                      "7 s before it was</td>"),
            std::string::npos)
      << html.substr(html.find("<table class=\"summary\">"), 2000);
}

TEST(ReportTest, MissingLedgerIsAClearError) {
  std::string dir = TempDir();
  auto r = ReadLoadRun(dir + "/nope.ledger");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("nope.ledger.series.csv"), std::string::npos);
  (void)RemoveAll(dir);
}

TEST(ReportTest, LoadSeriesIsChartedAroundTheCutover) {
  std::string dir = TempDir();
  std::string ledger = dir + "/l.ledger";
  {
    std::ofstream csv(ledger + ".series.csv");
    csv << "second,ops,writes,reads,errors,max_latency_ms\n";
    for (int i = 0; i < 20; ++i) csv << i << ",300,240,60," << (i == 10 ? 2 : 0) << ",4.50\n";
  }
  // The cutover (01:00:11) is second 10 of a run that started at 01:00:01.
  std::ofstream(ledger + ".summary.json")
      << R"({"acknowledged": 4800, "reads": 1200, "errors": 2, "max_latency_ms": 45.2,
             "p99_ms": 3.1, "reconnects": 0, "started_unix_ms": 1795309201000})";
  auto run = ReadLoadRun(ledger);
  ASSERT_TRUE(run.ok()) << run.status().message();
  EXPECT_EQ(run->seconds.size(), 20u);
  ReportInput in;
  in.state = State();
  in.load = *run;
  nlohmann::json d = ChartData(in);
  EXPECT_EQ(d["load"]["t"][10], 1795309211.0);
  EXPECT_EQ(d["load"]["errors"][10], 2);
  std::string html = RenderHtml(in, kAssets);
  EXPECT_NE(html.find("id=\"chart-throughput\""), std::string::npos);
  EXPECT_NE(html.find("id=\"chart-latency\""), std::string::npos);
  EXPECT_NE(html.find("second 10 of the load run"), std::string::npos);
  EXPECT_NE(html.find("<tr class=\"cut\"><td>0</td><td>300</td>"), std::string::npos);
  EXPECT_NE(html.find("2 errors</span>"), std::string::npos);
  (void)RemoveAll(dir);
}

TEST(ReportTest, MalformedSeriesIsRefused) {
  EXPECT_FALSE(ParseSeriesCsv("a,b\n1,2\n").ok());
  EXPECT_FALSE(ParseSeriesCsv("second,ops,writes,reads,errors,max_latency_ms\n1,2,3\n").ok());
  auto ok = ParseSeriesCsv("second,ops,writes,reads,errors,max_latency_ms\n0,5,4,1,0,1.25\n");
  ASSERT_TRUE(ok.ok());
  EXPECT_DOUBLE_EQ((*ok)[0].max_latency_ms, 1.25);
}

}  // namespace
}  // namespace pgshift::report
