#include "operator/spec.h"

#include <algorithm>

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
  // The fields the CLI has too: the engine's defaults, whatever they are.
  const engine::MigrationOptions engine_defaults;
  EXPECT_EQ(s->tables_without_pk, engine_defaults.tables_without_pk);
  EXPECT_EQ(s->copy_method, engine_defaults.copy);
  EXPECT_EQ(s->copy_jobs, engine_defaults.copy_jobs);
  EXPECT_EQ(s->copy_rate, engine_defaults.copy_rate);
  EXPECT_FALSE(s->on_difference.has_value());
  const engine::MigrationOptions o = EngineOptions(*s);
  EXPECT_EQ(o.tables_without_pk, engine_defaults.tables_without_pk);
  EXPECT_EQ(o.on_difference, engine_defaults.on_difference);
  EXPECT_EQ(o.copy, engine_defaults.copy);
  EXPECT_EQ(o.copy_jobs, engine_defaults.copy_jobs);
  EXPECT_EQ(o.copy_rate, engine_defaults.copy_rate);
  EXPECT_EQ(o.router, engine::RouterKind::kKubernetesService);
}

TEST(ParseSpec, EveryCliSettingReachesTheEngine) {
  Json spec = MinimalSpec();
  spec["tablesWithoutPrimaryKey"] = "full";
  spec["copy"] = {{"method", "snapshot"}, {"jobs", 6}, {"rate", "50Mi"}};
  spec["cutover"] = {
      {"mode", "manual"}, {"maxLagBytes", 1024}, {"maxPauseMs", 800}, {"onDifference", "stop"}};
  spec["verify"] = "count";
  spec["rollback"] = {{"keepReverseReplication", false}};
  spec["source"]["databases"] = {"app", "audit"};
  spec["source"]["maxRetainedWal"] = "20Gi";
  auto s = ParseSpec(Resource(spec));
  ASSERT_TRUE(s.ok()) << s.status().message();
  const engine::MigrationOptions o = EngineOptions(*s);
  EXPECT_EQ(o.tables_without_pk, engine::TablesWithoutPk::kFull);
  EXPECT_EQ(o.copy, engine::CopyMethod::kSnapshot);
  EXPECT_EQ(o.copy_jobs, 6);
  EXPECT_EQ(o.copy_rate, int64_t{50} << 20);
  EXPECT_EQ(o.cutover, engine::CutoverMode::kManual);
  EXPECT_EQ(o.max_lag_bytes, 1024);
  EXPECT_EQ(o.max_pause_ms, 800);
  EXPECT_EQ(o.on_difference, engine::OnDifference::kStop);
  EXPECT_EQ(o.verify, engine::VerifyLevel::kCount);
  EXPECT_FALSE(o.rollback_replication);
  EXPECT_EQ(o.databases, (std::vector<std::string>{"app", "audit"}));
  EXPECT_EQ(o.max_retained_wal, int64_t{20} << 30);

  // The rate as a plain number of bytes per second; native with nothing else set.
  spec["copy"] = {{"method", "native"}, {"rate", 0}};
  spec["cutover"]["onDifference"] = "stop";
  s = ParseSpec(Resource(spec));
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(EngineOptions(*s).copy, engine::CopyMethod::kNative);
  spec["copy"] = {{"rate", 1000000}};
  s = ParseSpec(Resource(spec));
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(EngineOptions(*s).copy_rate, 1000000);
  EXPECT_EQ(EngineOptions(*s).copy, engine::CopyMethod::kSnapshot);
}

TEST(ParseSpec, AnExistingPoolerIsAdopted) {
  Json spec = MinimalSpec();
  spec["traffic"] = {{"pooler", {{"existing", {{"service", "pgbouncer"},
                                               {"backendService", "orders-db-rw"},
                                               {"adminSecret", {{"name", "pgb-admin"},
                                                                {"usernameKey", "user"}}}}}}}};
  auto s = ParseSpec(Resource(spec));
  ASSERT_TRUE(s.ok()) << s.status().message();
  ASSERT_TRUE(s->pooler.enabled && s->pooler.existing.has_value());
  EXPECT_EQ(s->pooler.existing->service, "pgbouncer");
  EXPECT_EQ(s->pooler.existing->backend_service, "orders-db-rw");
  EXPECT_EQ(s->pooler.existing->admin_secret, "pgb-admin");
  EXPECT_EQ(s->pooler.existing->username_key, "user");
  EXPECT_EQ(s->pooler.existing->password_key, "password");
  EXPECT_EQ(s->pooler.existing->settle_ms, 1000);
}

TEST(QuantityToInt64, ReadsKubernetesQuantitiesAsWholeNumbers) {
  const std::vector<std::pair<std::string, int64_t>> good = {
      {"0", 0},     {"1000", 1000},    {"50M", 50000000}, {"50Mi", 50 << 20},
      {"1k", 1000}, {"1Ki", 1024},     {"1.5Ki", 1536},   {"1.5M", 1500000},
      {"2000m", 2}, {"5e7", 50000000}, {"5E+3", 5000},    {".5k", 500},
      {"+7", 7},    {"-0", 0},         {"1Gi", 1 << 30},  {"7Ei", int64_t{7} << 60},
  };
  for (const auto& [text, want] : good) {
    auto v = QuantityToInt64(text);
    ASSERT_TRUE(v.ok()) << text << ": " << v.status().message();
    EXPECT_EQ(*v, want) << text;
  }
  // 8Ei is 2^63, one past int64; a millionth of a byte is no whole number either.
  for (const std::string bad :
       {"", "abc", "1.5", "100m", "1.1Ki", "-1", "-5Mi", "8Ei", "1e19", "0.000001",
        "99999999999999999999", "1..2", "5MB", "5 Mi", "1e", "Mi"}) {
    auto v = QuantityToInt64(bad);
    ASSERT_FALSE(v.ok()) << bad << " gave " << *v;
    EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(PreflightFindings, SayWhatToChangeInTheSpec) {
  // As Migration::StepPreflight reports a refused table (PreflightReport::RenderTable).
  const std::string line =
      "preflight found problems:\n"
      "pgshift check: PostgreSQL 15 -> 17 (upgrade); databases: postgres\n\n"
      "SEVERITY  CHECK            SUBJECT   MESSAGE\n"
      "error     tables-identity  postgres  1 table has no primary key or usable replica "
      "identity: public.audit_log; their updates and deletes cannot be replicated   \n"
      "\nRemedies:\n"
      "  error tables-identity (postgres):\n"
      "    add a primary key (ALTER TABLE <table> ADD PRIMARY KEY (<columns>);), or rerun with "
      "--tables-without-pk full (uses REPLICA IDENTITY FULL: slower updates)\n"
      "\n1 error, 0 warnings: fix the errors and run the check again\n";
  const std::vector<std::string> f = PreflightFindings(line);
  ASSERT_EQ(f.size(), 7u);
  EXPECT_EQ(f[0], "pgshift check: PostgreSQL 15 -> 17 (upgrade); databases: postgres");
  EXPECT_EQ(f[2].substr(f[2].size() - 10), "replicated");  // padding trimmed
  EXPECT_NE(f[2].find("public.audit_log"), std::string::npos);
  EXPECT_EQ(f[5],
            "    add a primary key (ALTER TABLE <table> ADD PRIMARY KEY (<columns>);), or set "
            "spec.tablesWithoutPrimaryKey: full (uses REPLICA IDENTITY FULL: slower updates)");
  EXPECT_EQ(PreflightFindings("pass --rollback-replication off").size(), 0u);  // no report
  EXPECT_EQ(
      PreflightFindings("preflight found problems:\n x, or pass --rollback-replication off").at(0),
      " x, or set spec.rollback.keepReverseReplication: false");
  EXPECT_TRUE(PreflightFindings("copy postgres: 3 tables").empty());
  // As CheckSwitchPoint stops after a difference with --on-difference stop.
  EXPECT_EQ(InSpecWords("clients stay on the target (--on-difference stop); decide: `pgshift "
                        "rollback --state DIR` moves them back to the source, nothing lost; "
                        "`pgshift finish --state DIR` keeps the target as it is"),
            "clients stay on the target (spec.cutover.onDifference: stop); decide: spec.action: "
            "Rollback moves them back to the source, nothing lost; spec.action: Finish keeps the "
            "target as it is");
  // The target's settings are the spec's; the source's stay the DBA's to change.
  EXPECT_EQ(InSpecWords("raise max_locks_per_transaction on the target to 256 (ALTER SYSTEM SET "
                        "max_locks_per_transaction = 256, then restart it)"),
            "set spec.target.parameters.max_locks_per_transaction: \"256\"");
  const std::string source = "raise max_locks_per_transaction on the source to 128 (ALTER SYSTEM "
                             "SET max_locks_per_transaction = 128, then restart it)";
  EXPECT_EQ(InSpecWords(source), source);
}

TEST(ResumedOptions, WhatShapedTheServersStaysAsStarted) {
  Json spec = MinimalSpec();
  auto first = ParseSpec(Resource(spec));
  ASSERT_TRUE(first.ok());
  const engine::MigrationOptions started = EngineOptions(*first);

  spec["tablesWithoutPrimaryKey"] = "full";
  spec["copy"] = {{"method", "native"}};
  spec["cutover"] = {{"maxPauseMs", 900}, {"onDifference", "stop"}};
  spec["rollback"] = {{"keepReverseReplication", false}};
  auto changed = ParseSpec(Resource(spec));
  ASSERT_TRUE(changed.ok()) << changed.status().message();

  // A preflight that refused a table without a primary key passes once the spec says full.
  engine::MigrationOptions o = ResumedOptions(started, engine::Phase::kPreflight, *changed);
  EXPECT_EQ(o.tables_without_pk, engine::TablesWithoutPk::kFull);
  EXPECT_EQ(o.max_pause_ms, 900);
  EXPECT_EQ(o.on_difference, engine::OnDifference::kStop);
  EXPECT_EQ(o.copy, engine::CopyMethod::kSnapshot);  // the schema was loaded for it
  EXPECT_TRUE(o.rollback_replication);
  EXPECT_EQ(o.router, engine::RouterKind::kKubernetesService);
  EXPECT_EQ(ResumedOptions(started, engine::Phase::kInitialCopy, *changed).tables_without_pk,
            engine::TablesWithoutPk::kFull);
  // After the initial copy the publications hold the tables as they were made.
  o = ResumedOptions(started, engine::Phase::kCatchingUp, *changed);
  EXPECT_EQ(o.tables_without_pk, engine::TablesWithoutPk::kRefuse);
  EXPECT_EQ(o.on_difference, engine::OnDifference::kStop);

  // The copy's pace follows the spec (a spec change restarts the step at a safe point).
  spec["copy"] = {{"jobs", 3}, {"rate", "10M"}};
  auto pace = ParseSpec(Resource(spec));
  ASSERT_TRUE(pace.ok()) << pace.status().message();
  o = ResumedOptions(started, engine::Phase::kInitialCopy, *pace);
  EXPECT_EQ(o.copy_jobs, 3);
  EXPECT_EQ(o.copy_rate, 10000000);

  // The WAL limit follows the spec in every phase: a DBA who made room allows more.
  spec["source"]["maxRetainedWal"] = 1073741824;
  auto room = ParseSpec(Resource(spec));
  ASSERT_TRUE(room.ok()) << room.status().message();
  EXPECT_EQ(ResumedOptions(started, engine::Phase::kCatchingUp, *room).max_retained_wal,
            1073741824);
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
      {[](Json& j) {
         j["target"]["parameters"] = {{"wal_level", "replica"}};
       },
       "wal_level"},
      {[](Json& j) {
         j["target"]["parameters"] = {{"Bad Name", "1"}};
       },
       "bad parameter name"},
      {[](Json& j) { j["source"]["credentialsSecret"].erase("name"); }, "credentialsSecret.name"},
      {[](Json& j) { j["action"] = "Explode"; }, "spec.action"},
      {[](Json& j) { j["tablesWithoutPrimaryKey"] = "yes"; },
       "spec.tablesWithoutPrimaryKey: must be refuse or full"},
      {[](Json& j) { j["tablesWithoutPrimaryKey"] = true; },
       "spec.tablesWithoutPrimaryKey: has the wrong type"},
      {[](Json& j) { j["cutover"]["onDifference"] = "ignore"; },
       "spec.cutover.onDifference: must be rollback or stop"},
      {[](Json& j) { j["cutover"]["onDifference"] = ""; },
       "spec.cutover.onDifference: must be rollback or stop"},
      {[](Json& j) {
         j["cutover"]["onDifference"] = "rollback";
         j["rollback"]["keepReverseReplication"] = false;
       },
       "spec.cutover.onDifference: rollback needs rollback.keepReverseReplication: true"},
      {[](Json& j) { j["copy"]["method"] = "pg_dump"; },
       "spec.copy.method: must be snapshot or native"},
      {[](Json& j) { j["copy"]["jobs"] = -1; }, "spec.copy.jobs: must be 0..256"},
      {[](Json& j) { j["copy"]["jobs"] = 257; }, "spec.copy.jobs: must be 0..256"},
      {[](Json& j) { j["copy"]["jobs"] = "four"; }, "spec.copy.jobs: has the wrong type"},
      {[](Json& j) { j["copy"]["rate"] = -5; }, "spec.copy.rate: must be a whole number"},
      {[](Json& j) { j["copy"]["rate"] = "1.5"; }, "\"1.5\" is not a whole number"},
      {[](Json& j) { j["copy"]["rate"] = "50MB"; }, "\"50MB\" has an unknown suffix"},
      {[](Json& j) { j["copy"]["rate"] = 2.5; }, "spec.copy.rate: must be a whole number"},
      {[](Json& j) { j["source"]["maxRetainedWal"] = -1; },
       "spec.source.maxRetainedWal: must be a whole number of bytes"},
      {[](Json& j) { j["source"]["maxRetainedWal"] = "20GB"; }, "\"20GB\" has an unknown suffix"},
      {[](Json& j) {
         j["copy"] = {{"method", "native"}, {"jobs", 4}};
       },
       "spec.copy: jobs and rate apply to method snapshot only"},
      {[](Json& j) {
         j["copy"] = {{"method", "native"}, {"rate", "1Mi"}};
       },
       "spec.copy: jobs and rate apply to method snapshot only"},
      {[](Json& j) {
         j["traffic"] = {{"pooler", {{"existing", {{"service", "pgb"},
                                                   {"backendService", "pg15"},
                                                   {"adminSecret", {{"name", "pgb-admin"}}}}}}}};
       },
       "spec.traffic.pooler.existing.backendService: must differ from source.service"},
      {[](Json& j) {
         j["traffic"] = {{"pooler", {{"existing", {{"service", "pgb"},
                                                   {"backendService", "pgb"},
                                                   {"adminSecret", {{"name", "pgb-admin"}}}}}}}};
       },
       "spec.traffic.pooler.existing.backendService: must differ from traffic.pooler.existing"},
      {[](Json& j) {
         j["traffic"] = {
             {"pooler", {{"existing", {{"service", "pgb"}, {"backendService", "db-rw"}}}}}};
       },
       "spec.traffic.pooler.existing.adminSecret.name"},
      {[](Json& j) {
         j["traffic"] = {{"pooler", {{"existing", {{"service", "pgb"},
                                                   {"backendService", "db-rw"},
                                                   {"adminSecret", {{"name", "a"}}},
                                                   {"settleMs", 60000}}}}}};
       },
       "spec.traffic.pooler.existing.settleMs: must be 0..10000"},
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
  EXPECT_TRUE(st["retainedWalBytes"].is_null());  // never measured
  snap.databases["shop"].retained_wal_bytes = {64e6, 99500};
  EXPECT_EQ(StatusFromStats(snap)["retainedWalBytes"], 64000000);
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


Json Report(int tables, const std::string& db) {
  Json list = Json::array();
  for (int i = 0; i < tables; ++i) {
    list.push_back({{"database", db}, {"schema", "public"}, {"table", "t" + std::to_string(i)},
                    {"result", i == 7 ? "different" : "match"}, {"blocking", i == 7},
                    {"source_rows", 10}, {"target_rows", i == 7 ? 9 : 10},
                    {"source_checksum", std::string(32, 'a')}, {"note", i == 7 ? "a\tb" : ""},
                    {"seconds", 0.5}});
  }
  return {{"level", "checksum"}, {"clean", false}, {"tables_verified", tables}, {"tables", list}};
}

TEST(VerificationForStatus, KeepsTheSummaryAndOnlyTablesThatDidNotMatch) {
  Json v = VerificationForStatus(Report(5000, "app"), "see the ConfigMaps", 20);
  EXPECT_FALSE(v.contains("tables"));
  EXPECT_EQ(v["tables_verified"], 5000);
  EXPECT_EQ(v["clean"], false);
  ASSERT_EQ(v["tables_listed"].size(), 1u);
  EXPECT_EQ(v["tables_listed"][0]["table"], "t7");
  EXPECT_FALSE(v["tables_listed"][0].contains("source_checksum"));
  EXPECT_EQ(v["tables_not_listed"], 4999);
  EXPECT_EQ(v["detail"], "see the ConfigMaps");
  EXPECT_LT(v.dump().size(), 1000u);
  // Already shortened, running, or an error: unchanged.
  EXPECT_EQ(VerificationForStatus(v, "x"), v);
  Json running = {{"state", "running"}};
  EXPECT_EQ(VerificationForStatus(running, "x"), running);
}

TEST(VerificationDetailNote, NamesTheConfigMapsAndTheKey) {
  EXPECT_EQ(VerificationDetailNote("shop", "verification"),
            "every table: ConfigMaps shop-verification-<n>, key before-cutover.tsv (n: the "
            "database's index)");
  EXPECT_NE(VerificationDetailNote("shop", "switch_point_verification").find("switch-point.tsv"),
            std::string::npos);
  Json engine = {{"verification", Report(100, "app")}};
  EXPECT_TRUE(HasVerificationDetail(engine));
  engine["verification"] = VerificationForStatus(engine["verification"], "x");
  EXPECT_FALSE(HasVerificationDetail(engine));
  EXPECT_EQ(engine["verification"]["tables_not_listed"], 99);
}

TEST(VerificationConfigMaps, OnePerDatabaseOwnedByTheResourceAndCutToItsLimit) {
  Json resource = {{"metadata", {{"name", "shop"}, {"namespace", "ns1"}, {"uid", "u-1"}}}};
  Json both = Report(3, "app");
  const Json big_report = Report(5000, "big");
  for (const Json& t : big_report["tables"]) both["tables"].push_back(t);
  Json engine = {{"databases", Json::array({{{"name", "app"}, {"index", 0}},
                                            {{"name", "big"}, {"index", 1}}})},
                 {"verification", both}};
  auto maps = VerificationConfigMaps(resource, engine, 480 * 1024);
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(maps[0]["metadata"]["name"], "shop-verification-0");
  EXPECT_EQ(maps[1]["metadata"]["annotations"]["pgshift.dev/database"], "big");
  EXPECT_EQ(maps[1]["metadata"]["ownerReferences"][0]["uid"], "u-1");
  EXPECT_FALSE(maps[1]["data"].contains("switch-point.tsv"));
  const std::string app = maps[0]["data"]["before-cutover.tsv"];
  EXPECT_EQ(app,
            "schema\ttable\tresult\tsource_rows\ttarget_rows\tseconds\tnote\n"
            "public\tt0\tmatch\t10\t10\t0.5\t\n"
            "public\tt1\tmatch\t10\t10\t0.5\t\n"
            "public\tt2\tmatch\t10\t10\t0.5\t\n");
  const std::string big = maps[1]["data"]["before-cutover.tsv"];
  EXPECT_EQ(std::count(big.begin(), big.end(), '\n'), 5001);
  EXPECT_NE(big.find("public\tt7\tdifferent\t10\t9\t0.5\ta b\n"), std::string::npos);
  // A small limit: cut, and said so.
  auto cut = VerificationConfigMaps(resource, engine, 1000);
  const std::string small = cut[1]["data"]["before-cutover.tsv"];
  EXPECT_LE(small.size(), 1000u + 200u);
  EXPECT_NE(small.find("more tables not listed"), std::string::npos);
}

}  // namespace
}  // namespace pgshift::op
