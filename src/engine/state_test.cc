#include "engine/state.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "common/files.h"

namespace pgshift::engine {
namespace {

TEST(State, RoundTripsThroughJson) {
  MigrationState s;
  s.id = "abcd1234";
  s.source_dsn = "host=a";
  s.target_dsn = "host=b";
  s.options.databases = {"app", "postgres"};
  s.options.max_pause_ms = 123;
  s.options.copy = CopyMethod::kSnapshot;
  s.options.copy_jobs = 3;
  s.options.copy_rate = 50 << 20;
  DatabaseState db;
  db.name = "app";
  db.target_created = true;
  db.schema_copied = true;
  db.ddl_mark = 7;
  db.tables = {"\"s\".\"t\""};
  db.not_valid_applied = true;
  db.copy_done = true;
  s.databases.push_back(db);
  CutoverAttempt a;
  a.direction = "forward";
  a.pause_ms = 42.5;
  a.steps_ms = {{"pause", 1.0}, {"switch", 2.0}};
  s.cutovers.push_back(a);
  s.verification = {{"clean", true}};
  s.switch_point_verification = {{"clean", false}, {"action", "rolled back"}};
  s.options.on_difference = OnDifference::kStop;
  s.Enter(Phase::kPreflight);
  s.Enter(Phase::kProvisioning);
  auto back = MigrationState::FromJson(nlohmann::json::parse(s.ToJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->phase, Phase::kProvisioning);
  EXPECT_EQ(back->options.max_pause_ms, 123);
  EXPECT_EQ(back->options.on_difference, OnDifference::kStop);
  EXPECT_EQ(back->switch_point_verification["action"], "rolled back");
  EXPECT_EQ(back->verification["clean"], true);
  EXPECT_EQ(back->options.databases, s.options.databases);
  ASSERT_EQ(back->databases.size(), 1u);
  EXPECT_EQ(back->databases[0].ddl_mark, 7);
  EXPECT_EQ(back->databases[0].tables, s.databases[0].tables);
  EXPECT_TRUE(back->databases[0].target_created);
  EXPECT_TRUE(back->databases[0].not_valid_applied);
  EXPECT_TRUE(back->databases[0].copy_done);
  EXPECT_FALSE(back->databases[0].post_data_done);
  EXPECT_EQ(back->options.copy, CopyMethod::kSnapshot);
  EXPECT_EQ(back->options.copy_jobs, 3);
  EXPECT_EQ(back->options.copy_rate, 50 << 20);
  ASSERT_EQ(back->cutovers.size(), 1u);
  EXPECT_DOUBLE_EQ(back->cutovers[0].pause_ms, 42.5);
  EXPECT_EQ(back->cutovers[0].steps_ms.size(), 2u);
  EXPECT_FALSE(back->phase_times["Preflight"].finished_at.empty());
  EXPECT_TRUE(back->phase_times["Provisioning"].finished_at.empty());
  EXPECT_EQ(back->PublicationName(back->databases[0]), "pgshift_abcd1234_0");
  EXPECT_EQ(back->ReverseName(back->databases[0]), "pgshift_abcd1234_0_rev");
}

TEST(State, TheVerificationReportsAreSavedApartAndOnlyWhenTheyChange) {
  char tmpl[] = "/tmp/pgshift-state-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  MigrationState s;
  s.id = "abcd1234";
  s.phase = Phase::kReadyForCutover;
  nlohmann::json tables = nlohmann::json::array();
  for (int i = 0; i < 3000; ++i) {
    tables.push_back({{"schema", "public"}, {"table", "t" + std::to_string(i)}, {"result", "match"}});
  }
  s.verification = {{"summary", "3000 tables compared"}, {"seconds", 1.5}, {"tables", tables}};
  ASSERT_TRUE(SaveState(dir, &s, false).ok());
  auto state_json = ReadFile(dir + "/state.json");
  auto reports = ReadFile(dir + "/" + kReportsFile);
  ASSERT_TRUE(state_json.ok() && reports.ok());
  EXPECT_EQ(state_json->find("\"t2999\""), std::string::npos);  // small at every save
  EXPECT_LT(state_json->size(), 4000u);
  EXPECT_NE(reports->find("\"t2999\""), std::string::npos);

  // Unchanged reports are not written again (a save inside the cutover's pause stays cheap).
  ASSERT_TRUE(RemoveAll(dir + "/" + kReportsFile).ok());
  s.phase = Phase::kCuttingOver;
  ASSERT_TRUE(SaveState(dir, &s, false).ok());
  EXPECT_FALSE(PathExists(dir + "/" + kReportsFile));
  s.switch_point_verification = {{"state", "running"}};
  ASSERT_TRUE(SaveState(dir, &s, false).ok());
  ASSERT_TRUE(PathExists(dir + "/" + kReportsFile));

  auto back = LoadState(dir);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->phase, Phase::kCuttingOver);
  EXPECT_EQ(back->verification, s.verification);
  EXPECT_EQ(back->switch_point_verification, s.switch_point_verification);
  EXPECT_EQ(back->reports_saved, s.ReportsFingerprint());
  // A state.json that holds its reports (written before they moved out) reads as ever.
  ASSERT_TRUE(RemoveAll(dir + "/" + kReportsFile).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/state.json", s.ToJson().dump(), 0600, false).ok());
  back = LoadState(dir);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->verification, s.verification);
  (void)RemoveAll(dir);
}

TEST(State, OptionsKeepTheirJsonWords) {
  // A state saved before the options were typed: the same words load into the enums.
  nlohmann::json j = {{"version", 1},
                      {"id", "abcd1234"},
                      {"phase", "CatchingUp"},
                      {"source_dsn", "host=a"},
                      {"target_dsn", "host=b"},
                      {"options",
                       {{"router", "nginx"},
                        {"cutover", "manual"},
                        {"tables_without_pk_full", true},
                        {"verify", "count"}}},
                      {"databases", nlohmann::json::array()}};
  auto s = MigrationState::FromJson(j);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->options.router, RouterKind::kNginx);
  EXPECT_EQ(s->options.cutover, CutoverMode::kManual);
  EXPECT_EQ(s->options.tables_without_pk, TablesWithoutPk::kFull);
  EXPECT_EQ(s->options.verify, VerifyLevel::kCount);
  EXPECT_EQ(s->options.max_pause_ms, MigrationOptions{}.max_pause_ms);
  const nlohmann::json back = s->ToJson()["options"];
  EXPECT_EQ(back["router"], "nginx");
  EXPECT_EQ(back["cutover"], "manual");
  EXPECT_EQ(back["tables_without_pk_full"], true);
  EXPECT_EQ(back["verify"], "count");

  // Absent options take the one set of defaults.
  j["options"] = nlohmann::json::object();
  s = MigrationState::FromJson(j);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->options.router, RouterKind::kPgBouncer);
  EXPECT_EQ(s->options.cutover, CutoverMode::kAuto);
  EXPECT_EQ(s->options.verify, VerifyLevel::kChecksum);
  EXPECT_EQ(s->options.on_difference, OnDifference::kRollback);

  j["options"] = {{"on_difference", "ignore"}};
  EXPECT_FALSE(MigrationState::FromJson(j).ok());
  for (OnDifference d : {OnDifference::kRollback, OnDifference::kStop}) {
    EXPECT_EQ(*ParseOnDifference(OnDifferenceName(d)), d);
  }
  j["options"] = {{"router", "haproxy"}};
  EXPECT_FALSE(MigrationState::FromJson(j).ok());
  for (RouterKind k : {RouterKind::kPgBouncer, RouterKind::kNginx, RouterKind::kManual,
                       RouterKind::kKubernetesService}) {
    auto parsed = ParseRouterKind(RouterKindName(k));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, k);
  }
}

TEST(StateMachine, AllowsTheDocumentedEdgesOnly) {
  EXPECT_TRUE(TransitionAllowed(Phase::kPending, Phase::kPreflight));
  EXPECT_TRUE(TransitionAllowed(Phase::kCatchingUp, Phase::kReadyForCutover));
  EXPECT_TRUE(TransitionAllowed(Phase::kCuttingOver, Phase::kReadyForCutover));  // undone
  EXPECT_TRUE(TransitionAllowed(Phase::kRollbackReady, Phase::kRolledBack));
  EXPECT_TRUE(TransitionAllowed(Phase::kInitialCopy, Phase::kAborted));
  EXPECT_FALSE(TransitionAllowed(Phase::kRollbackReady, Phase::kAborted));
  EXPECT_FALSE(TransitionAllowed(Phase::kSchema, Phase::kCuttingOver));
  EXPECT_FALSE(TransitionAllowed(Phase::kCompleted, Phase::kPending));
  EXPECT_FALSE(TransitionAllowed(Phase::kAborted, Phase::kFailed));
  EXPECT_TRUE(TransitionAllowed(Phase::kCatchingUp, Phase::kFailed));
  EXPECT_FALSE(TransitionAllowed(Phase::kRollbackReady, Phase::kFailed));  // clients moved
  EXPECT_TRUE(TransitionAllowed(Phase::kFailed, Phase::kAborted));           // cleanup
  for (int p = 0; p <= static_cast<int>(Phase::kAborted); ++p) {
    EXPECT_FALSE(TransitionAllowed(static_cast<Phase>(p), static_cast<Phase>(p)))
        << PhaseName(static_cast<Phase>(p));
  }
  for (const char* name : {"Pending", "CatchingUp", "RollbackReady", "Aborted"}) {
    auto p = ParsePhase(name);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(PhaseName(*p), name);
  }
  EXPECT_FALSE(ParsePhase("Done").ok());
}

TEST(State, AStateWithoutCopyMethodResumesWithTheNativeCopy) {
  // Written before pgshift had its own copy: its schema was loaded whole, so only the native
  // copy can finish it.
  MigrationState s;
  s.id = "abcd1234";
  nlohmann::json j = s.ToJson();
  j["options"].erase("copy");
  auto back = MigrationState::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->options.copy, CopyMethod::kNative);
  EXPECT_EQ(MigrationOptions{}.copy, CopyMethod::kSnapshot);
  EXPECT_FALSE(ParseCopyMethod("fast").ok());
  EXPECT_EQ(CopyMethodName(*ParseCopyMethod("native")), "native");
}

}  // namespace
}  // namespace pgshift::engine
