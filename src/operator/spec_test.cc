#include "operator/spec.h"

#include <gtest/gtest.h>

#include "operator/cluster.h"
#include "pg/conninfo.h"

namespace pgshift::op {
namespace {

Json Resource(Json spec) {
  return {{"apiVersion", kApiVersion},
          {"kind", kKind},
          {"metadata", {{"name", "shop"}, {"namespace", "prod"}, {"uid", "u-1"}, {"generation", 3}}},
          {"spec", std::move(spec)}};
}

Json MinimalSpec() {
  return {{"source", {{"service", "pg15"}, {"credentialsSecret", {{"name", "pg15-admin"}}}}},
          {"target", {{"version", 17}}},
          {"traffic", {{"service", "shop-db"}}}};
}

TEST(ParseSpec, AppliesDefaults) {
  auto s = ParseSpec(Resource(MinimalSpec()));
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->source_port, 5432);
  EXPECT_EQ(s->username_key, "username");
  EXPECT_EQ(s->password_key, "password");
  EXPECT_EQ(s->target_image, "postgres:17");
  EXPECT_EQ(s->cutover_mode, engine::CutoverMode::kAuto);
  EXPECT_EQ(s->max_lag_bytes, 16 << 20);
  EXPECT_EQ(s->verify, engine::VerifyLevel::kChecksum);
  EXPECT_TRUE(s->keep_reverse_replication);
  EXPECT_FALSE(s->check_only);
}

TEST(ParseSpec, RejectsNonsenseWithTheFieldName) {
  struct Case {
    std::function<void(Json&)> edit;
    std::string expect;
  };
  std::vector<Case> cases = {
      {[](Json& j) { j["target"]["version"] = 11; }, "spec.target.version"},
      {[](Json& j) { j["target"]["version"] = "abc"; }, "spec.target.version: has the wrong type"},
      {[](Json& j) { j["source"]["host"] = "db.example"; }, "exactly one of source.service"},
      {[](Json& j) { j["source"].erase("service"); }, "exactly one of source.service"},
      {[](Json& j) { j["traffic"]["service"] = "pg15"; }, "not the source's own Service"},
      {[](Json& j) { j["cutover"]["maxLagBytes"] = -1; }, "spec.cutover.maxLagBytes"},
      {[](Json& j) { j["cutover"]["maxPauseMs"] = 0; }, "spec.cutover.maxPauseMs"},
      {[](Json& j) { j["verify"] = "sha"; }, "spec.verify"},
      {[](Json& j) { j["target"]["parameters"] = {{"wal_level", "replica"}}; }, "wal_level"},
      {[](Json& j) { j["target"]["parameters"] = {{"Bad Name", "1"}}; }, "bad parameter name"},
      {[](Json& j) { j["source"]["credentialsSecret"].erase("name"); }, "credentialsSecret.name"},
      {[](Json& j) { j["action"] = "Explode"; }, "spec.action"},
  };
  for (const auto& c : cases) {
    Json spec = MinimalSpec();
    c.edit(spec);
    auto s = ParseSpec(Resource(spec));
    ASSERT_FALSE(s.ok()) << spec.dump();
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(c.expect), std::string::npos) << s.status().message();
  }
}

TEST(TargetObjects, StatefulSetRunsTheVersionWithLogicalWalAndIsOwned) {
  Json spec = MinimalSpec();
  spec["target"]["parameters"] = {{"max_connections", "200"}};
  spec["target"]["storage"] = {{"size", "5Gi"}, {"storageClassName", "fast"}};
  auto s = ParseSpec(Resource(spec));
  ASSERT_TRUE(s.ok());
  Json sts = TargetStatefulSet(Resource(spec), *s);
  EXPECT_EQ(sts["metadata"]["name"], "shop-target");
  EXPECT_EQ(sts["metadata"]["namespace"], "prod");
  EXPECT_EQ(sts["metadata"]["ownerReferences"][0]["uid"], "u-1");
  EXPECT_EQ(sts["metadata"]["ownerReferences"][0]["controller"], true);
  const Json& c = sts["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(c["image"], "postgres:17");
  EXPECT_EQ(c["args"], Json::array({"-c", "wal_level=logical", "-c", "max_connections=200"}));
  EXPECT_EQ(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "shop-target");
  EXPECT_EQ(sts["spec"]["selector"]["matchLabels"], TargetSelector("shop"));
  EXPECT_EQ(sts["spec"]["template"]["metadata"]["labels"], TargetSelector("shop"));
  const Json& claim = sts["spec"]["volumeClaimTemplates"][0]["spec"];
  EXPECT_EQ(claim["resources"]["requests"]["storage"], "5Gi");
  EXPECT_EQ(claim["storageClassName"], "fast");
  EXPECT_EQ(TargetService(Resource(spec))["spec"]["selector"], TargetSelector("shop"));
  Json applied = sts;
  applied["metadata"]["uid"] = "sts-uid";
  Json secret = TargetSecret(Resource(spec), applied, "pw");
  EXPECT_EQ(secret["stringData"]["password"], "pw");
  EXPECT_EQ(secret["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
  EXPECT_EQ(secret["metadata"]["ownerReferences"][0]["uid"], "sts-uid");
}

TEST(NextStep, FollowsPhaseAndSpec) {
  UpgradeSpec s;
  using engine::Phase;
  EXPECT_EQ(NextStep(s, std::nullopt, false), Step::kRun);
  EXPECT_EQ(NextStep(s, Phase::kInitialCopy, false), Step::kRun);
  EXPECT_EQ(NextStep(s, Phase::kCuttingOver, false), Step::kRun);
  EXPECT_EQ(NextStep(s, Phase::kReadyForCutover, false), Step::kRun);  // auto
  EXPECT_EQ(NextStep(s, Phase::kRollbackReady, false), Step::kNone);
  s.cutover_mode = engine::CutoverMode::kManual;
  EXPECT_EQ(NextStep(s, Phase::kReadyForCutover, false), Step::kNone);
  s.cutover_approved = true;
  EXPECT_EQ(NextStep(s, Phase::kReadyForCutover, false), Step::kCutover);
  s.action = "Rollback";
  EXPECT_EQ(NextStep(s, Phase::kRollbackReady, false), Step::kRollback);
  EXPECT_EQ(NextStep(s, Phase::kRolledBack, false), Step::kNone);
  s.action = "Finish";
  EXPECT_EQ(NextStep(s, Phase::kRolledBack, false), Step::kFinish);
  EXPECT_EQ(NextStep(s, Phase::kCompleted, false), Step::kNone);
  s.check_only = true;
  EXPECT_EQ(NextStep(s, std::nullopt, false), Step::kPreflight);
  EXPECT_EQ(NextStep(s, std::nullopt, true), Step::kNone);
}

TEST(Conditions, KeepTransitionTimeWhileUnchanged) {
  Json c1 = Conditions(Json::array(), "InitialCopy", true, false, "", "", 1, "T1");
  ASSERT_EQ(c1.size(), 4u);
  EXPECT_EQ(c1[0]["type"], "Ready");
  EXPECT_EQ(c1[0]["status"], "False");
  EXPECT_EQ(c1[1]["type"], "Progressing");
  EXPECT_EQ(c1[1]["status"], "True");
  Json c2 = Conditions(c1, "CatchingUp", true, false, "", "", 1, "T2");
  EXPECT_EQ(c2[1]["lastTransitionTime"], "T1");
  EXPECT_EQ(c2[1]["reason"], "CatchingUp");
  Json c3 = Conditions(c2, "RollbackReady", false, false, "", "", 2, "T3");
  EXPECT_EQ(c3[0]["status"], "True");
  EXPECT_EQ(c3[0]["lastTransitionTime"], "T3");
  Json c4 = Conditions(c3, "CatchingUp", false, false, "Unavailable", "source down", 2, "T4");
  EXPECT_EQ(c4[3]["type"], "Degraded");
  EXPECT_EQ(c4[3]["status"], "True");
  EXPECT_EQ(c4[3]["reason"], "Unavailable");
  EXPECT_EQ(c4[3]["message"], "source down");
  Json c5 = Conditions(c4, "ReadyForCutover", false, true, "", "", 2, "T5");
  EXPECT_EQ(c5[1]["reason"], "WaitingForApproval");
  EXPECT_EQ(c5[2]["status"], "True");
}

TEST(StatusFromStats, StaleFiguresAreRemovedNotShown) {
  engine::StatsSnapshot snap;
  snap.now_ms = 100000;
  engine::DatabaseStats d;
  d.lag_bytes = {4096, 99000};
  d.lag_seconds = {0.5, 99000};
  d.tables_total = {10, 99000};
  d.tables_synced = {7, 99000};
  d.bytes_copied = {1e6, 1000};  // stale
  snap.databases["shop"] = d;
  Json st = StatusFromStats(snap);
  EXPECT_EQ(st["lagBytes"], 4096);
  EXPECT_EQ(st["tablesSynced"], 7);
  EXPECT_EQ(st["tablesTotal"], 10);
  EXPECT_TRUE(st["bytesCopied"].is_null());
  EXPECT_TRUE(st["readyInSeconds"].is_null());  // not catching up: no estimate
  snap.ready_in_s = {39.2, 99500};
  snap.lag_drain_bytes_per_s = {8e6, 99500};
  st = StatusFromStats(snap);
  EXPECT_EQ(st["readyInSeconds"], 40);
  EXPECT_EQ(st["lagDrainBytesPerSecond"], 8e6);
  snap.now_ms = 200000;
  st = StatusFromStats(snap);
  EXPECT_TRUE(st["lagBytes"].is_null());
  EXPECT_TRUE(st["readyInSeconds"].is_null());
}

TEST(Pgpass, EscapesSeparators) {
  EXPECT_EQ(pg::PgpassLine("h", 5432, "u:x", "p\\w:d"), "h:5432:*:u\\:x:p\\\\w\\:d\n");
}

TEST(AddressMap, ReadsPlainAndHarnessForms) {
  auto plain = AddressMap::Parse(R"({"10.0.0.5": "127.0.0.5:5432"})");
  EXPECT_EQ(plain["10.0.0.5"], "127.0.0.5:5432");
  auto harness = AddressMap::Parse(
      R"({"ns/pg-0": {"podIP": "10.88.0.100", "address": "127.0.0.100:5432", "dataDir": "/x"}})");
  EXPECT_EQ(harness["10.88.0.100"], "127.0.0.100:5432");
  EXPECT_TRUE(AddressMap::Parse("not json").empty());
}

}  // namespace
}  // namespace pgshift::op
