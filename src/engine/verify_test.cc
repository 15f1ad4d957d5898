#include "engine/verify.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/clock.h"

namespace pgshift::engine {
namespace {

TableVerification Table(std::string schema, std::string table, int64_t src, int64_t tgt,
                        bool match) {
  TableVerification t;
  t.database = "app";
  t.schema = std::move(schema);
  t.table = std::move(table);
  t.source_rows = src;
  t.target_rows = tgt;
  t.result = match ? TableResult::kMatch : TableResult::kDifferent;
  t.rounds = 1;
  return t;
}

TEST(ParseVerifyLevel, AcceptsTheThreeNamesOnly) {
  EXPECT_EQ(*ParseVerifyLevel("none"), VerifyLevel::kNone);
  EXPECT_EQ(*ParseVerifyLevel("count"), VerifyLevel::kCount);
  EXPECT_EQ(*ParseVerifyLevel("checksum"), VerifyLevel::kChecksum);
  EXPECT_EQ(*ParseVerifyLevel(" Checksum "), VerifyLevel::kChecksum);
  auto bad = ParseVerifyLevel("md5");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("md5"), std::string::npos);
  EXPECT_FALSE(ParseVerifyLevel("").ok());
  for (auto level : {VerifyLevel::kNone, VerifyLevel::kCount, VerifyLevel::kChecksum}) {
    EXPECT_EQ(*ParseVerifyLevel(VerifyLevelName(level)), level);
  }
}

TEST(VerifyReport, EmptyReportIsClean) {
  VerifyReport r;
  EXPECT_TRUE(r.clean());
  EXPECT_EQ(r.mismatches(), 0);
  EXPECT_NE(r.Render().find("0 tables compared"), std::string::npos);
  EXPECT_EQ(r.ToJson()["clean"], true);
}

TEST(VerifyReport, CountsTablesThatDoNotMatch) {
  VerifyReport r;
  r.tables.push_back(Table("public", "a", 3, 3, true));
  EXPECT_TRUE(r.clean());
  r.tables.push_back(Table("public", "b", 3, 2, false));
  r.tables.push_back(Table("public", "c", -1, 5, false));
  EXPECT_FALSE(r.clean());
  EXPECT_EQ(r.mismatches(), 2);
}

TEST(VerifyReport, ChangingAndSkippedTablesDoNotBlock) {
  VerifyReport r;
  r.level = VerifyLevel::kChecksum;
  r.hash = "hashextended";
  r.tables.push_back(Table("public", "a", 3, 3, true));
  TableVerification hot = Table("public", "branches", 20, 20, false);
  hot.result = TableResult::kChanging;
  hot.key = "(bid)";
  hot.changing_keys = {"(4)", "(18)"};
  hot.changing_rows = 2;
  r.tables.push_back(hot);
  TableVerification unlogged = Table("public", "scratch", -1, -1, false);
  unlogged.result = TableResult::kSkipped;
  r.tables.push_back(unlogged);
  EXPECT_TRUE(r.clean());
  EXPECT_EQ(r.mismatches(), 0);
  EXPECT_EQ(r.compared(), 2);
  EXPECT_FALSE(hot.blocking());
  EXPECT_FALSE(hot.match());
  EXPECT_EQ(r.Summary(),
            "2 tables compared (checksum, pre-cutover convergence, hashextended): 1 match, 1 "
            "still being written (not blocking); 1 skipped");
  EXPECT_NE(r.Render().find("being written: (4), (18)"), std::string::npos) << r.Render();
  nlohmann::json j = r.ToJson();
  EXPECT_EQ(j["clean"], true);
  EXPECT_EQ(j["changing"], 1);
  EXPECT_EQ(j["skipped"], 1);
  EXPECT_EQ(j["tables_verified"], 2);
  EXPECT_EQ(j["mode"], "convergence");
  EXPECT_EQ(j["tables"][1]["result"], "changing");
  EXPECT_EQ(j["tables"][1]["blocking"], false);
  EXPECT_EQ(j["tables"][1]["changing_keys"], nlohmann::json::array({"(4)", "(18)"}));
  EXPECT_EQ(j["tables"][2]["result"], "skipped");

  r.mode = VerifyMode::kSwitchPoint;
  EXPECT_EQ(r.ToJson()["mode"], "snapshot");
  EXPECT_NE(r.Summary().find("(checksum, exact snapshot pair, hashextended)"), std::string::npos);
}

TEST(VerifyReport, RenderAlignsColumnsAndShowsKeys) {
  VerifyReport r;
  r.level = VerifyLevel::kChecksum;
  r.tables.push_back(Table("public", "accounts", 1000, 1000, true));
  TableVerification bad = Table("Sales", "MixedCase", 12, 12, false);
  bad.rounds = 3;
  bad.note = "2 rows differ";
  bad.key = "(id, code)";
  bad.differing_keys = {"(42)", "(7,'a')"};
  bad.differing_rows = 2;
  r.tables.push_back(bad);
  TableVerification missing = Table("public", "gone", 5, -1, false);
  missing.note = "missing on target";
  missing.rounds = 0;
  r.tables.push_back(missing);

  std::string out = r.Render();
  std::vector<std::string> lines;
  for (size_t start = 0, end; (end = out.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(out.substr(start, end - start));
  }
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0].find("DATABASE"), 0u);
  // Every column starts at the same offset on every line.
  size_t result_col = lines[0].find("RESULT");
  EXPECT_EQ(lines[1].substr(result_col, 5), "match");
  EXPECT_EQ(lines[2].substr(result_col, 9), "DIFFERENT");
  EXPECT_EQ(lines[3].substr(result_col, 9), "DIFFERENT");
  EXPECT_EQ(lines[2].substr(lines[0].find("KEY"), 10), "(id, code)");
  // Numbers are right-aligned: the last digit sits under the header's last character.
  size_t src_end = lines[0].find("SOURCE ROWS") + std::string("SOURCE ROWS").size();
  EXPECT_EQ(lines[1].substr(src_end - 4, 4), "1000");
  EXPECT_EQ(lines[2].substr(src_end - 2, 2), "12");
  EXPECT_EQ(lines[3].substr(src_end - 1, 1), "5");
  EXPECT_NE(lines[3].find(" - "), std::string::npos);  // target rows unknown
  EXPECT_NE(lines[2].find("Sales.MixedCase"), std::string::npos);
  EXPECT_NE(lines[2].find("keys: (42), (7,'a')"), std::string::npos);
  EXPECT_NE(lines[3].find("missing on target"), std::string::npos);
  EXPECT_EQ(lines[4],
            "3 tables compared (checksum, pre-cutover convergence): 1 match, 2 different");
  for (const auto& l : lines) EXPECT_TRUE(l.empty() || l.back() != ' ') << l;
}

TEST(VerifyReport, RenderShortensLongKeyLists) {
  VerifyReport r;
  TableVerification t = Table("public", "t", 30, 30, false);
  for (int i = 0; i < 20; ++i) t.differing_keys.push_back("(" + std::to_string(i) + ")");
  t.differing_rows = 20;
  r.tables.push_back(t);
  std::string out = r.Render();
  EXPECT_NE(out.find("keys: (0), (1), (2), (3), (4), ..."), std::string::npos);
  EXPECT_EQ(out.find("(5)"), std::string::npos);
  EXPECT_NE(out.find("1 table compared (none, pre-cutover convergence): 0 match, 1 different\n"),
            std::string::npos)
      << out;
}

TEST(VerifyReport, ToJsonCarriesEveryField) {
  VerifyReport r;
  r.level = VerifyLevel::kCount;
  r.tables.push_back(Table("public", "a", 3, 3, true));
  TableVerification b = Table("s", "b", -1, 2, false);
  b.note = "missing on source";
  b.differing_keys = {"(1)"};
  b.differing_rows = 1;
  b.source_checksum = "10";
  b.target_checksum = "11";
  b.seconds = 0.5;
  r.tables.push_back(b);

  nlohmann::json j = r.ToJson();
  EXPECT_EQ(j["level"], "count");
  EXPECT_EQ(j["clean"], false);
  EXPECT_EQ(j["mismatches"], 1);
  EXPECT_EQ(j["tables_verified"], 2);
  ASSERT_EQ(j["tables"].size(), 2u);
  const auto& t = j["tables"][1];
  EXPECT_EQ(t["database"], "app");
  EXPECT_EQ(t["schema"], "s");
  EXPECT_EQ(t["table"], "b");
  EXPECT_TRUE(t["source_rows"].is_null());
  EXPECT_EQ(t["target_rows"], 2);
  EXPECT_EQ(t["source_checksum"], "10");
  EXPECT_EQ(t["target_checksum"], "11");
  EXPECT_EQ(t["match"], false);
  EXPECT_EQ(t["differing_keys"], nlohmann::json::array({"(1)"}));
  EXPECT_EQ(t["differing_rows"], 1);
  EXPECT_EQ(t["result"], "different");
  EXPECT_EQ(t["blocking"], true);
  EXPECT_EQ(t["rounds"], 1);
  EXPECT_EQ(t["note"], "missing on source");
  EXPECT_DOUBLE_EQ(t["seconds"].get<double>(), 0.5);
}

TEST(VerifyDatabases, NeedsDatabasesAndDoesNothingAtLevelNone) {
  VerifyOptions o;
  auto r = VerifyDatabases("host=/nonexistent", "host=/nonexistent", o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);

  o.databases = {"app"};
  o.level = VerifyLevel::kNone;
  auto none = VerifyDatabases("host=/nonexistent", "host=/nonexistent", o);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->tables.empty());
}

TEST(VerifyDatabases, NamesTheSideThatCannotConnect) {
  VerifyOptions o;
  o.databases = {"app"};
  auto r = VerifyDatabases("host=/nonexistent-pgshift-dir port=1", "host=/x port=1", o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("source database \"app\""), std::string::npos)
      << r.status().ToString();
}

// Callers on several threads share runs, and a call only returns after a run that started
// after the call began.
TEST(CoalescingSettle, SharesRunsThatStartAfterTheCall) {
  std::atomic<int> runs{0};
  std::atomic<int64_t> last_start{0};
  CoalescingSettle settle([&] {
    last_start = MonotonicMicros();
    ++runs;
    SleepMillis(100);
    return Status::Ok();
  });
  std::vector<std::thread> threads;
  std::atomic<int> late{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      int64_t called = MonotonicMicros();
      ASSERT_TRUE(settle().ok());
      if (last_start < called) ++late;  // the run it waited for began before the call
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(late, 0);
  // Callers that arrive together share a running and a next run (slack for a slow thread).
  EXPECT_LE(runs, 4);
  EXPECT_GE(runs, 1);
  EXPECT_TRUE(settle().ok());
}

TEST(CoalescingSettle, ReturnsTheRunsError) {
  CoalescingSettle settle([] { return Status::Unavailable("marker lost"); });
  Status s = settle();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace pgshift::engine
