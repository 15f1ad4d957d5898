#include "engine/verify.h"

#include <gtest/gtest.h>

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
  t.match = match;
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
  EXPECT_NE(r.Render().find("0 tables verified"), std::string::npos);
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

TEST(VerifyReport, RenderAlignsColumnsAndShowsKeys) {
  VerifyReport r;
  r.level = VerifyLevel::kChecksum;
  r.tables.push_back(Table("public", "accounts", 1000, 1000, true));
  TableVerification bad = Table("Sales", "MixedCase", 12, 12, false);
  bad.rounds = 3;
  bad.note = "row contents differ; 2 differing rows";
  bad.differing_keys = {"(42)", "(7,'a')"};
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
  EXPECT_EQ(lines[1].substr(result_col, 2), "ok");
  EXPECT_EQ(lines[2].substr(result_col, 8), "MISMATCH");
  EXPECT_EQ(lines[3].substr(result_col, 8), "MISMATCH");
  // Numbers are right-aligned: the last digit sits under the header's last character.
  size_t src_end = lines[0].find("SOURCE ROWS") + std::string("SOURCE ROWS").size();
  EXPECT_EQ(lines[1].substr(src_end - 4, 4), "1000");
  EXPECT_EQ(lines[2].substr(src_end - 2, 2), "12");
  EXPECT_EQ(lines[3].substr(src_end - 1, 1), "5");
  EXPECT_NE(lines[3].find(" - "), std::string::npos);  // target rows unknown
  EXPECT_NE(lines[2].find("Sales.MixedCase"), std::string::npos);
  EXPECT_NE(lines[2].find("keys: (42), (7,'a')"), std::string::npos);
  EXPECT_NE(lines[3].find("missing on target"), std::string::npos);
  EXPECT_EQ(lines[4], "3 tables verified (checksum): 2 mismatches");
  for (const auto& l : lines) EXPECT_TRUE(l.empty() || l.back() != ' ') << l;
}

TEST(VerifyReport, RenderShortensLongKeyLists) {
  VerifyReport r;
  TableVerification t = Table("public", "t", 30, 30, false);
  for (int i = 0; i < 20; ++i) t.differing_keys.push_back("(" + std::to_string(i) + ")");
  r.tables.push_back(t);
  std::string out = r.Render();
  EXPECT_NE(out.find("keys: (0), (1), (2), (3), (4), ..."), std::string::npos);
  EXPECT_EQ(out.find("(5)"), std::string::npos);
  EXPECT_NE(out.find("1 table verified (none): 1 mismatch\n"), std::string::npos);
}

TEST(VerifyReport, ToJsonCarriesEveryField) {
  VerifyReport r;
  r.level = VerifyLevel::kCount;
  r.tables.push_back(Table("public", "a", 3, 3, true));
  TableVerification b = Table("s", "b", -1, 2, false);
  b.note = "missing on source";
  b.differing_keys = {"(1)"};
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

}  // namespace
}  // namespace pgshift::engine
