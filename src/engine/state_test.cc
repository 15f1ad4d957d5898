#include "engine/state.h"

#include <gtest/gtest.h>


namespace pgshift::engine {
namespace {

TEST(State, RoundTripsThroughJson) {
  MigrationState s;
  s.id = "abcd1234";
  s.source_dsn = "host=a";
  s.target_dsn = "host=b";
  s.options.databases = {"app", "postgres"};
  s.options.max_pause_ms = 123;
  s.databases.push_back(DatabaseState{"app", 0, true, true, 7, {"\"s\".\"t\""}});
  CutoverAttempt a;
  a.direction = "forward";
  a.pause_ms = 42.5;
  a.steps_ms = {{"pause", 1.0}, {"switch", 2.0}};
  s.cutovers.push_back(a);
  s.verification = {{"clean", true}};
  s.Enter(Phase::kPreflight);
  s.Enter(Phase::kProvisioning);
  auto back = MigrationState::FromJson(nlohmann::json::parse(s.ToJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->phase, Phase::kProvisioning);
  EXPECT_EQ(back->options.max_pause_ms, 123);
  EXPECT_EQ(back->options.databases, s.options.databases);
  ASSERT_EQ(back->databases.size(), 1u);
  EXPECT_EQ(back->databases[0].ddl_mark, 7);
  EXPECT_EQ(back->databases[0].tables, s.databases[0].tables);
  ASSERT_EQ(back->cutovers.size(), 1u);
  EXPECT_DOUBLE_EQ(back->cutovers[0].pause_ms, 42.5);
  EXPECT_EQ(back->cutovers[0].steps_ms.size(), 2u);
  EXPECT_FALSE(back->phase_times["Preflight"].finished_at.empty());
  EXPECT_TRUE(back->phase_times["Provisioning"].finished_at.empty());
  EXPECT_EQ(back->PublicationName(back->databases[0]), "pgshift_abcd1234_0");
  EXPECT_EQ(back->ReverseName(back->databases[0]), "pgshift_abcd1234_0_rev");
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
  for (const char* name : {"Pending", "CatchingUp", "RollbackReady", "Aborted"}) {
    auto p = ParsePhase(name);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(PhaseName(*p), name);
  }
  EXPECT_FALSE(ParsePhase("Done").ok());
}

}  // namespace
}  // namespace pgshift::engine
