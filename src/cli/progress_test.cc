#include "cli/progress.h"

#include <gtest/gtest.h>

namespace pgshift::cli {
namespace {

engine::StatsSnapshot Snapshot(int64_t now) {
  engine::StatsSnapshot s;
  s.migration_id = "ab12cd34";
  s.phase = "InitialCopy";
  s.now_ms = now;
  auto m = [&](double v) { return engine::Measured{v, now - 100}; };
  s.databases["a"] = {m(1000), m(0.5), m(4), m(1), m(50 << 20), m(200 << 20), m(10), {}, {}, {}, m(8), m(3), {}, {}, {}, {}, {}};
  s.databases["b"] = {m(24), m(1.5), m(6), m(5), m(10 << 20), m(40 << 20), m(10), {}, {}, {}, m(4), m(4), {}, {}, {}, {}, {}};
  return s;
}

TEST(ProgressTest, SnapshotFiguresSumDatabases) {
  ProgressFigures f = FiguresFromSnapshot(Snapshot(100000));
  EXPECT_EQ(f.lag_bytes, 1024);
  EXPECT_EQ(f.lag_seconds, 1.5);  // the slowest database
  EXPECT_EQ(f.tables_synced, 6);
  EXPECT_EQ(f.tables_total, 10);
  EXPECT_EQ(f.bytes_copied, 60 << 20);
  EXPECT_EQ(f.bytes_total, 240 << 20);
}

TEST(ProgressTest, StaleOrMissingFiguresAreUnknownNotOld) {
  engine::StatsSnapshot s = Snapshot(100000);
  s.databases["b"].bytes_copied.at_ms = 100000 - engine::kStaleAfterMs - 1;
  s.databases["a"].lag_seconds.at_ms = -1;
  ProgressFigures f = FiguresFromSnapshot(s);
  EXPECT_EQ(f.bytes_copied, std::nullopt);
  EXPECT_EQ(f.lag_seconds, std::nullopt);
  EXPECT_EQ(f.tables_synced, 6);
  ProgressRates rates;
  auto lines = RenderProgress(f, &rates, 0, 100, false);
  EXPECT_EQ(lines[1], "copy    waiting for figures");
}

TEST(ProgressTest, BarsShowRateAndEta) {
  ProgressRates rates;
  ProgressFigures f = FiguresFromSnapshot(Snapshot(100000));
  f.bytes_copied = 0;
  RenderProgress(f, &rates, 0, 100, false);
  f.bytes_copied = 20 << 20;  // 10 MB/s over 2 s; 220 MB to go: 22 s
  auto lines = RenderProgress(f, &rates, 2000, 100, false);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "pgshift ab12cd34  InitialCopy  lag 1.0 kB / 1.5 s");
  EXPECT_NE(lines[1].find("  8%  20.0 MB of 240.0 MB, 20 rows  10.0 MB/s  ETA 0:22"),
            std::string::npos)
      << lines[1];
  EXPECT_TRUE(lines[1].starts_with("copy    [#"));
  EXPECT_NE(lines[2].find(" 60%  6 of 10 synced, 7 of 12 ranges"), std::string::npos) << lines[2];
  EXPECT_EQ(lines[3], "verify  not started");
  for (const auto& l : lines) EXPECT_LE(l.size(), 99u) << l;
}

TEST(ProgressTest, VerifyBarAndDone) {
  ProgressRates rates;
  ProgressFigures f;
  f.phase = "CatchingUp";
  f.tables_synced = f.tables_total = 3;
  f.verify_done = 3;
  f.verify_total = 12;
  f.verify_mismatches = 1;
  auto lines = RenderProgress(f, &rates, 0, 80, true);
  EXPECT_NE(lines[2].find("100%  3 of 3 synced  done"), std::string::npos) << lines[2];
  EXPECT_NE(lines[3].find(" 25%  3 of 12 tables, 1 differ"), std::string::npos) << lines[3];
  EXPECT_NE(lines[3].find("ETA -"), std::string::npos);  // no rate yet
}

TEST(ProgressTest, NarrowTerminalClipsLines) {
  ProgressRates rates;
  ProgressFigures f = FiguresFromSnapshot(Snapshot(100000));
  f.migration_id = std::string(200, 'x');
  for (const auto& l : RenderProgress(f, &rates, 0, 50, false)) EXPECT_LE(l.size(), 49u) << l;
}

TEST(ProgressTest, RenderBar) {
  EXPECT_EQ(RenderBar(0.5, 10, false), "#####.....");
  EXPECT_EQ(RenderBar(1.5, 4, false), "####");
  EXPECT_EQ(RenderBar(-1, 3, false), "...");
  EXPECT_EQ(RenderBar(0.5, 2, true), "\u2588\u00b7");
  EXPECT_EQ(RenderBar(0.25, 2, true), "\u258c\u00b7");    // half of the first cell
  EXPECT_EQ(RenderBar(0.0625, 2, true), "\u258f\u00b7");  // one eighth of it
}

TEST(ProgressTest, RateMeterWindowAndRestart) {
  RateMeter r(10000);
  EXPECT_EQ(r.PerSecond(), std::nullopt);
  r.Add(0, 0);
  r.Add(500, 50);
  EXPECT_EQ(r.PerSecond(), std::nullopt);  // under a second of data
  r.Add(1000, 100);
  EXPECT_DOUBLE_EQ(*r.PerSecond(), 100);
  for (int t = 2000; t <= 30000; t += 1000) r.Add(t, 100 + (t - 1000) / 1000.0 * 10);
  EXPECT_NEAR(*r.PerSecond(), 10, 0.01);  // the old fast start left the window
  r.Add(31000, 5);                        // counter went back: a restart
  EXPECT_EQ(r.PerSecond(), std::nullopt);
}

TEST(ProgressTest, EtaFormat) {
  EXPECT_EQ(FormatEta(std::nullopt), "-");
  EXPECT_EQ(FormatEta(42), "0:42");
  EXPECT_EQ(FormatEta(3723), "1:02:03");
  EXPECT_EQ(FormatEta(-1), "-");
}

TEST(ProgressTest, StatusWatchFiguresFromStatusAndHistory) {
  nlohmann::json status = nlohmann::json::parse(R"({"id": "x", "phase": "InitialCopy",
    "live": {"tables_ready": 2, "tables_total": 5, "lag_bytes": 77,
             "databases": [{"name": "d", "lag_seconds": 0.25, "tables": [
               {"table": "s.a", "state": "ready"}, {"table": "s.b", "state": "copying"}]}]}})");
  std::vector<nlohmann::json> tail = {
      {{"ts", 9000}, {"kind", "sample"}, {"bytes_copied", 10}, {"bytes_total", 40}},
      {{"ts", 9500},
       {"kind", "verify"},
       {"tables_done", 1},
       {"tables_total", 5},
       {"mismatches", 0}}};
  ProgressFigures f = FiguresFromStatus(status, tail, 10000);
  EXPECT_EQ(f.tables_synced, 2);
  EXPECT_EQ(f.tables_total, 5);
  EXPECT_EQ(f.lag_bytes, 77);
  EXPECT_EQ(f.lag_seconds, 0.25);
  EXPECT_EQ(f.bytes_copied, 10);
  EXPECT_EQ(f.verify_total, 5);
  // A sample older than the staleness limit is not shown as current.
  ProgressFigures old = FiguresFromStatus(status, tail, 9000 + engine::kStaleAfterMs + 1);
  EXPECT_EQ(old.bytes_copied, std::nullopt);
  auto detail = DetailLines(status, 5);
  ASSERT_EQ(detail.size(), 1u);
  EXPECT_NE(detail[0].find("d.s.b"), std::string::npos);
  EXPECT_NE(detail[0].find("copying"), std::string::npos);
}

TEST(ProgressTest, CatchUpHeadSaysWhenTheLagWillBeUnderTheThreshold) {
  engine::StatsSnapshot s = Snapshot(100000);
  s.phase = "CatchingUp";
  s.lag_drain_bytes_per_s = {8.0 * (1 << 20), 99900};
  s.ready_in_s = {40.2, 99900};
  ProgressRates rates;
  auto lines = RenderProgress(FiguresFromSnapshot(s), &rates, 0, 120, false);
  EXPECT_EQ(lines[0], "pgshift ab12cd34  CatchingUp  lag 1.0 kB / 1.5 s  ready in ~40 s (-8.0 MB/s)");
  s.ready_in_s = {0, 99900};
  lines = RenderProgress(FiguresFromSnapshot(s), &rates, 0, 120, false);
  EXPECT_NE(lines[0].find("under the cutover threshold"), std::string::npos) << lines[0];
  // Growing: no estimate, and it says so.
  s.ready_in_s = {};
  s.lag_drain_bytes_per_s = {-1.0 * (1 << 20), 99900};
  s.lag_stalled = true;
  lines = RenderProgress(FiguresFromSnapshot(s), &rates, 0, 120, false);
  EXPECT_NE(lines[0].find("lag not falling (+1.0 MB/s)"), std::string::npos) << lines[0];
  // From `status --watch`: the running engine's last sample in the history file.
  nlohmann::json status = {{"id", "x"}, {"phase", "CatchingUp"}};
  std::vector<nlohmann::json> tail = {
      {{"ts", 9000}, {"kind", "sample"}, {"drain_bytes_per_s", 1048576.0}, {"ready_in_s", 130.0}}};
  ProgressFigures f = FiguresFromStatus(status, tail, 10000);
  EXPECT_EQ(f.ready_in_s, 130.0);
  lines = RenderProgress(f, &rates, 0, 120, false);
  EXPECT_NE(lines[0].find("ready in ~2 min (-1.0 MB/s)"), std::string::npos) << lines[0];
}

TEST(ProgressTest, DetailLinesAreCapped) {
  nlohmann::json tables = nlohmann::json::array();
  for (int i = 0; i < 30; ++i)
    tables.push_back({{"table", "t" + std::to_string(i)}, {"state", "copying"}});
  nlohmann::json status = {{"live", {{"databases", {{{"name", "d"}, {"tables", tables}}}}}}};
  auto lines = DetailLines(status, 4);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[3], "  ... and 27 more tables not ready");
}

TEST(ProgressTest, ModeParsing) {
  EXPECT_EQ(*ParseProgressMode("detail"), ProgressMode::kDetail);
  EXPECT_FALSE(ParseProgressMode("fancy").ok());
  EXPECT_FALSE(UseBars(ProgressMode::kPlain, 0));
}

}  // namespace
}  // namespace pgshift::cli
