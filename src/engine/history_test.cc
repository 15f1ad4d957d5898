#include "engine/history.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace pgshift::engine {
namespace {

TEST(HistoryTest, SampleSumsFreshFiguresAndNullsTheRest) {
  StatsSnapshot s;
  s.phase = "InitialCopy";
  s.now_ms = 10000;
  DatabaseStats a, b;
  a.lag_bytes = {100, 9000};
  a.lag_seconds = {0.5, 9000};
  a.tables_total = {3, 9000};
  a.tables_synced = {1, 9000};
  a.bytes_total = {1000, 9000};
  a.bytes_copied = {400, 9000};
  b.lag_bytes = {50, 9500};
  b.lag_seconds = {2.0, 9500};
  b.tables_total = {2, 9500};
  b.tables_synced = {2, 9500};
  b.bytes_total = {500, 9500};
  b.bytes_copied = {500, 4000};  // stale: 6 s old
  s.databases["a"] = a;
  s.databases["b"] = b;
  nlohmann::json j = HistorySample(1234, s);
  EXPECT_EQ(j["ts"], 1234);
  EXPECT_EQ(j["kind"], "sample");
  EXPECT_EQ(j["phase"], "InitialCopy");
  EXPECT_EQ(j["lag_bytes"], 150);
  EXPECT_EQ(j["lag_seconds"], 2.0);  // the worst database
  EXPECT_EQ(j["tables_total"], 5);
  EXPECT_EQ(j["tables_synced"], 3);
  EXPECT_EQ(j["bytes_total"], 1500);
  EXPECT_TRUE(j["bytes_copied"].is_null());  // one database's figure is stale
  EXPECT_TRUE(j["rows_copied"].is_null());   // never measured
}

TEST(HistoryTest, CutoverAndErrorRecordsRedactSecrets) {
  CutoverAttempt a;
  a.direction = "forward";
  a.succeeded = false;
  a.pause_ms = 12.5;
  a.failed_step = "catch-up";
  a.error = "connecting to host=x password=hunter2 failed";
  a.steps_ms = {{"pause", 1.5}, {"fence", 3.0}};
  nlohmann::json c = HistoryCutover(7, a);
  EXPECT_EQ(c["kind"], "cutover");
  EXPECT_EQ(c["direction"], "forward");
  EXPECT_EQ(c["succeeded"], false);
  EXPECT_EQ(c["pause_ms"], 12.5);
  EXPECT_EQ(c["steps_ms"]["fence"], 3.0);
  EXPECT_EQ(c.dump().find("hunter2"), std::string::npos) << c.dump();
  nlohmann::json e = HistoryError(8, "postgresql://u:hunter2@h/db refused");
  EXPECT_EQ(e["kind"], "error");
  EXPECT_EQ(e.dump().find("hunter2"), std::string::npos) << e.dump();
}

TEST(HistoryTest, WriterAppendsOneLinePerRecord) {
  char tmpl[] = "/tmp/pgshift-history-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string path = std::string(tmpl) + "/" + kHistoryFile;
  HistoryWriter w(path);
  ASSERT_TRUE(w.Append(HistoryPhase(1, "Preflight")).ok());
  VerifyProgress vp;
  vp.done = 1;
  vp.total = 4;
  ASSERT_TRUE(w.Append(HistoryVerify(2, vp)).ok());
  // A second writer (another process) appends to the same file.
  ASSERT_TRUE(HistoryWriter(path).Append(HistoryPhase(3, "Roles")).ok());
  std::ifstream in(path);
  std::string line;
  std::vector<nlohmann::json> lines;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["phase"], "Preflight");
  EXPECT_EQ(lines[1]["tables_total"], 4);
  EXPECT_EQ(lines[1]["mode"], "convergence");
  EXPECT_FALSE(lines[1].contains("summary"));
  EXPECT_EQ(lines[2]["ts"], 3);
  // A writer without a path drops records; one whose folder is gone reports it.
  EXPECT_TRUE(HistoryWriter("").Append(HistoryPhase(4, "x")).ok());
  EXPECT_FALSE(
      HistoryWriter(std::string(tmpl) + "/missing/h.jsonl").Append(HistoryPhase(4, "x")).ok());
  std::remove(path.c_str());
  rmdir(tmpl);
}

TEST(HistoryTest, ParsesTheStateFilesTimestamps) {
  EXPECT_EQ(ParseUtcMillis("1970-01-01T00:00:01.250Z"), 1250);
  EXPECT_EQ(ParseUtcMillis("2026-11-21T22:37:49.123Z"), 1795300669123);
  EXPECT_EQ(ParseUtcMillis("2026-11-21T22:37:49Z"), 1795300669000);
  EXPECT_FALSE(ParseUtcMillis("yesterday").has_value());
  EXPECT_FALSE(ParseUtcMillis("2026-11-21T22:37:49.123+01:00").has_value());
}

}  // namespace
}  // namespace pgshift::engine
