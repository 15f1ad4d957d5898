#include "engine/preflight.h"

#include <gtest/gtest.h>

#include <sstream>

namespace pgshift::engine {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

const CheckResult* Find(const std::vector<CheckResult>& results, const std::string& id,
                        const std::string& subject) {
  for (const auto& r : results) {
    if (r.id == id && r.subject == subject) return &r;
  }
  return nullptr;
}

TEST(Preflight, ParsesPgDumpVersions) {
  EXPECT_EQ(*ParseToolMajor("pg_dump (PostgreSQL) 17.11\n"), 17);
  EXPECT_EQ(*ParseToolMajor("pg_dump (PostgreSQL) 12.19 (Debian 12.19-1.pgdg120+1)\n"), 12);
  EXPECT_EQ(*ParseToolMajor("pg_dump (PostgreSQL) 18beta1"), 18);
  EXPECT_EQ(*ParseToolMajor("pg_dump (PostgreSQL) 9.6.24"), 9);
  EXPECT_EQ(*ParseToolMajor("/usr/bin/pg_dump (PostgreSQL) 16.4"), 16);
  EXPECT_FALSE(ParseToolMajor("").ok());
  EXPECT_FALSE(ParseToolMajor("bash: pg_dump: command not found").ok());
  EXPECT_FALSE(ParseToolMajor("pg_dump (PostgreSQL) devel").ok());
  EXPECT_EQ(*ParseToolMajor("psql (PostgreSQL) 18.6\n"), 18);
  EXPECT_EQ(*ParseToolMajor("pg_dumpall (PostgreSQL) 13.23"), 13);
}

TEST(Preflight, DirectionAndVersionPair) {
  EXPECT_EQ(DirectionFor(15, 17), "upgrade");
  EXPECT_EQ(DirectionFor(17, 15), "downgrade");
  EXPECT_EQ(DirectionFor(16, 16), "same");

  EXPECT_EQ(CheckVersions(15, 17).severity, Severity::kOk);
  CheckResult same = CheckVersions(16, 16);
  EXPECT_EQ(same.severity, Severity::kError);
  EXPECT_TRUE(Contains(same.message, "16")) << same.message;
  CheckResult down = CheckVersions(17, 15);
  EXPECT_EQ(down.severity, Severity::kWarning);
  EXPECT_TRUE(Contains(down.message, "downgrade-objects")) << down.message;
  CheckResult old = CheckVersions(11, 17);
  EXPECT_EQ(old.severity, Severity::kError);
  EXPECT_EQ(old.subject, "source");
  CheckResult future = CheckVersions(17, 19);
  EXPECT_EQ(future.severity, Severity::kError);
  EXPECT_EQ(future.subject, "target");
}

TEST(Preflight, WalLevelNamesTheExactFix) {
  EXPECT_EQ(CheckWalLevel("source", "logical", false).severity, Severity::kOk);
  CheckResult r = CheckWalLevel("source", "replica", false);
  EXPECT_EQ(r.severity, Severity::kError);
  EXPECT_EQ(r.id, "wal-level");
  EXPECT_TRUE(Contains(r.remedy, "ALTER SYSTEM SET wal_level = logical;")) << r.remedy;
  EXPECT_TRUE(Contains(r.remedy, "restart")) << r.remedy;
  CheckResult back = CheckWalLevel("target", "replica", true);
  EXPECT_EQ(back.id, "rollback-wal-level");
  EXPECT_TRUE(Contains(back.remedy, "--rollback-replication off")) << back.remedy;
}

TEST(Preflight, CapacityCountsUsageAndDirection) {
  ServerSettings s{"logical", 10, 10, 8, 4, 2};
  ReplicationUsage idle;
  auto ok = CheckCapacity(s, idle, s, idle, 2, true);
  ASSERT_EQ(ok.size(), 8u);
  for (const auto& r : ok) EXPECT_EQ(r.severity, Severity::kOk) << r.id << ": " << r.message;

  ReplicationUsage busy;
  busy.slots = 9;        // 1 free, 2 needed
  busy.wal_senders = 7;  // 3 free: enough, but not for 2 + 2 sync
  auto r = CheckCapacity(s, busy, s, idle, 2, false);
  ASSERT_EQ(r.size(), 4u);  // no reverse checks without rollback replication
  const CheckResult* slots = Find(r, "replication-slots", "source");
  ASSERT_NE(slots, nullptr);
  EXPECT_EQ(slots->severity, Severity::kError);
  EXPECT_TRUE(Contains(slots->message, "9 in use")) << slots->message;
  EXPECT_TRUE(Contains(slots->remedy, "ALTER SYSTEM SET max_replication_slots = 13;"))
      << slots->remedy;
  const CheckResult* senders = Find(r, "wal-senders", "source");
  ASSERT_NE(senders, nullptr);
  EXPECT_EQ(senders->severity, Severity::kWarning);

  // The reverse direction needs workers on the source and slots on the target.
  ServerSettings tight{"logical", 1, 1, 2, 1, 2};
  auto rev = CheckCapacity(tight, idle, s, idle, 2, true);
  EXPECT_EQ(Find(rev, "rollback-logical-workers", "source")->severity, Severity::kError);
  EXPECT_EQ(Find(rev, "rollback-replication-slots", "target")->severity, Severity::kOk);
}

TEST(Preflight, PrivilegesSayWhatIsMissing) {
  RolePrivileges su{"postgres", true, true, true, true, true};
  EXPECT_EQ(CheckPrivileges("source", su).severity, Severity::kOk);
  RolePrivileges app{"app", false, true, false, false, true};
  CheckResult r = CheckPrivileges("target", app);
  EXPECT_EQ(r.severity, Severity::kError);
  EXPECT_TRUE(Contains(r.message, "lacks SUPERUSER, CREATEDB")) << r.message;
  EXPECT_TRUE(Contains(r.message, "has REPLICATION")) << r.message;
  EXPECT_TRUE(Contains(r.remedy, "ALTER ROLE \"app\" SUPERUSER;")) << r.remedy;
}

TableInfo Table(const std::string& name, bool pk, char ident, bool usable) {
  TableInfo t;
  t.schema = "public";
  t.name = name;
  t.has_primary_key = pk;
  t.replica_identity = ident;
  t.replica_identity_usable = usable;
  return t;
}

TEST(Preflight, TablesWithoutIdentityAreNamed) {
  std::vector<TableInfo> tables = {
      Table("orders", true, 'd', true), Table("log", false, 'd', false),
      Table("audit", false, 'f', true), Table("notes", true, 'n', false)};
  TableInfo parent = Table("events", false, 'd', false);
  parent.partitioned = true;  // its partitions are what is replicated
  tables.push_back(parent);
  TableInfo scratch = Table("scratch", false, 'd', false);
  scratch.unlogged = true;
  tables.push_back(scratch);

  auto refuse = CheckTables("shop", tables, false);
  const CheckResult* id = Find(refuse, "tables-identity", "shop");
  ASSERT_NE(id, nullptr);
  EXPECT_EQ(id->severity, Severity::kError);
  EXPECT_TRUE(Contains(id->message, "2 tables have")) << id->message;
  EXPECT_TRUE(Contains(id->message, "public.log")) << id->message;
  EXPECT_TRUE(Contains(id->message, "public.notes (REPLICA IDENTITY NOTHING)")) << id->message;
  EXPECT_FALSE(Contains(id->message, "public.events")) << id->message;
  EXPECT_FALSE(Contains(id->message, "public.audit")) << id->message;
  EXPECT_TRUE(Contains(id->remedy, "--tables-without-pk full")) << id->remedy;
  const CheckResult* unlogged = Find(refuse, "unlogged-tables", "shop");
  ASSERT_NE(unlogged, nullptr);
  EXPECT_EQ(unlogged->severity, Severity::kWarning);
  EXPECT_TRUE(Contains(unlogged->message, "public.scratch")) << unlogged->message;

  auto full = CheckTables("shop", tables, true);
  EXPECT_EQ(Find(full, "tables-identity", "shop")->severity, Severity::kWarning);

  auto clean = CheckTables("shop", {Table("orders", true, 'd', true)}, false);
  ASSERT_EQ(clean.size(), 1u);
  EXPECT_EQ(clean[0].severity, Severity::kOk);
}

TEST(Preflight, ExtensionsMissingOnTheTargetAreErrors) {
  std::vector<ExtensionInfo> used = {{"plpgsql", "1.0"}, {"pgcrypto", "1.3"}, {"postgis", "3.4.2"}};
  std::vector<ExtensionInfo> available = {{"plpgsql", "1.0"}, {"pgcrypto", "1.3"}};
  CheckResult r = CheckExtensions("shop", used, available, 17);
  EXPECT_EQ(r.severity, Severity::kError);
  EXPECT_TRUE(Contains(r.message, "postgis 3.4.2")) << r.message;
  EXPECT_FALSE(Contains(r.message, "pgcrypto")) << r.message;
  // plpgsql is always there.
  EXPECT_EQ(CheckExtensions("shop", {{"plpgsql", "1.0"}}, {}, 17).severity, Severity::kOk);
}

TEST(Preflight, EveryClientToolMustBeAtLeastTheSourceMajor) {
  EXPECT_EQ(CheckClientTool("pg_dump", "/x/pg_dump", "/x", std::string("pg_dump (PostgreSQL) 17.2\n"), 15)
                .severity,
            Severity::kOk);
  CheckResult old = CheckClientTool("pg_dumpall", "/x/pg_dumpall", "/x",
                                    std::string("pg_dumpall (PostgreSQL) 14.2\n"), 15);
  EXPECT_EQ(old.severity, Severity::kError);
  EXPECT_EQ(old.subject, "pg_dumpall");
  EXPECT_TRUE(Contains(old.remedy, "--pg-bin DIR or PGSHIFT_PG_BIN=DIR (now: /x)")) << old.remedy;
  EXPECT_TRUE(Contains(old.remedy, "PostgreSQL 15 or newer")) << old.remedy;
  EXPECT_TRUE(Contains(old.remedy, "scripts/setup.sh")) << old.remedy;
  CheckResult missing = CheckClientTool(
      "psql", "psql", "", Result<std::string>(Status::NotFound("program not found on PATH: psql")), 15);
  EXPECT_EQ(missing.severity, Severity::kError);
  EXPECT_TRUE(Contains(missing.message, "not found")) << missing.message;
  EXPECT_TRUE(Contains(missing.remedy, "(now: PATH)")) << missing.remedy;
}

TEST(Preflight, LeftoversGetDropStatementsAndOwnOnesCanBeAllowed) {
  std::vector<PgshiftObject> found = {{"replication slot", "pgshift_m1_shop", "shop"},
                                      {"publication", "pgshift_m1_shop", "shop"},
                                      {"subscription", "pgshift_m0_app", "app"},
                                      {"schema", "_pgshift", "shop"}};
  PreflightOptions opts;
  CheckResult r = CheckLeftovers("source", found, opts);
  EXPECT_EQ(r.severity, Severity::kError);
  EXPECT_TRUE(Contains(r.message, "4 objects")) << r.message;
  EXPECT_TRUE(Contains(r.remedy, "pgshift abort --state DIR")) << r.remedy;
  EXPECT_TRUE(Contains(r.remedy, "SELECT pg_drop_replication_slot('pgshift_m1_shop');"));
  EXPECT_TRUE(Contains(r.remedy, "DROP PUBLICATION \"pgshift_m1_shop\";"));
  EXPECT_TRUE(Contains(r.remedy, "SET (slot_name = NONE); DROP SUBSCRIPTION \"pgshift_m0_app\";"));
  EXPECT_TRUE(Contains(r.remedy, "DROP SCHEMA \"_pgshift\" CASCADE;"));
  EXPECT_TRUE(Contains(r.remedy, "-- in database shop:"));

  opts.migration_id = "m1";
  opts.allow_own_leftovers = true;
  CheckResult resumed = CheckLeftovers("source", found, opts);
  EXPECT_EQ(resumed.severity, Severity::kError);  // m0's subscription is still foreign
  EXPECT_TRUE(Contains(resumed.message, "1 object")) << resumed.message;
  EXPECT_TRUE(Contains(resumed.message, "pgshift_m0_app")) << resumed.message;

  EXPECT_EQ(CheckLeftovers("target", {}, PreflightOptions{}).severity, Severity::kOk);
}

TEST(Preflight, NameListShortensLongLists) {
  EXPECT_EQ(NameList({"a", "b"}), "a, b");
  EXPECT_EQ(NameList({"a", "b", "c", "d"}, 2), "a, b and 2 more");
  EXPECT_EQ(NameList({}), "");
}

PreflightReport SampleReport() {
  PreflightReport r;
  r.source_major = 15;
  r.target_major = 17;
  r.direction = "upgrade";
  r.databases = {"shop"};
  r.results = {{"version", Severity::kOk, "source/target", "upgrade PostgreSQL 15 -> 17", ""},
               {"wal-level", Severity::kError, "source", "wal_level = replica",
                "ALTER SYSTEM SET wal_level = logical;\nthen restart"},
               {"unlogged-tables", Severity::kWarning, "shop", "1 unlogged table", "SET LOGGED"},
               {"sequences", Severity::kInfo, "shop", "3 sequences", ""}};
  r.tables["shop"] = {Table("orders", true, 'd', true)};
  return r;
}

TEST(Preflight, HasErrorsOnlyForErrors) {
  PreflightReport r = SampleReport();
  EXPECT_TRUE(r.HasErrors());
  EXPECT_EQ(r.Count(Severity::kWarning), 1);
  r.results[1].severity = Severity::kWarning;
  EXPECT_FALSE(r.HasErrors());
  EXPECT_FALSE(PreflightReport{}.HasErrors());
}

TEST(Preflight, RenderTableAlignsColumnsAndListsRemedies) {
  std::string text = SampleReport().RenderTable();
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(in, line)) {
    if (line.rfind("SEVERITY", 0) == 0 || line.rfind("OK ", 0) == 0 ||
        line.rfind("ERROR ", 0) == 0 || line.rfind("WARN ", 0) == 0 ||
        line.rfind("INFO ", 0) == 0) {
      rows.push_back(line);
    }
  }
  ASSERT_EQ(rows.size(), 5u) << text;
  // Every row's CHECK, SUBJECT and MESSAGE start in the same column.
  size_t check_col = rows[0].find("CHECK"), subject_col = rows[0].find("SUBJECT"),
         message_col = rows[0].find("MESSAGE");
  EXPECT_EQ(rows[1].find("version"), check_col);
  EXPECT_EQ(rows[2].find("wal-level"), check_col);
  EXPECT_EQ(rows[2].find("source"), subject_col);
  EXPECT_EQ(rows[2].find("wal_level = replica"), message_col);
  EXPECT_EQ(rows[3].find("shop"), subject_col);
  EXPECT_TRUE(Contains(text, "WARN ")) << text;
  EXPECT_TRUE(Contains(text, "Remedies:")) << text;
  EXPECT_TRUE(Contains(text, "    ALTER SYSTEM SET wal_level = logical;\n    then restart"))
      << text;
  EXPECT_FALSE(Contains(text, "INFO sequences (shop):")) << text;  // no remedy, not listed
  EXPECT_TRUE(Contains(text, "1 error, 1 warning")) << text;
  EXPECT_TRUE(Contains(text, "PostgreSQL 15 -> 17 (upgrade)")) << text;
}

TEST(Preflight, JsonCarriesEveryFinding) {
  nlohmann::json j = SampleReport().ToJson();
  EXPECT_EQ(j["source_major"], 15);
  EXPECT_EQ(j["direction"], "upgrade");
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["errors"], 1);
  ASSERT_EQ(j["results"].size(), 4u);
  EXPECT_EQ(j["results"][1]["id"], "wal-level");
  EXPECT_EQ(j["results"][1]["severity"], "error");
  EXPECT_EQ(j["results"][2]["severity"], "warning");
  EXPECT_EQ(j["tables"]["shop"][0]["name"], "orders");
  EXPECT_EQ(j["tables"]["shop"][0]["replica_identity"], "d");
}

TEST(Preflight, SchemaLoadResultsNameEachRefusalAndFoldConsequences) {
  SchemaProof proof;
  proof.entries = 120;
  proof.dropped_leftovers = {"pgshift_scratch_0badf00d"};
  proof.refusals.push_back({"FUNCTION public.f(integer)", "FUNCTION", "58P01",
                            "ERROR: could not access file \"$libdir/mylib\": No such file",
                            "CREATE FUNCTION public.f(integer) ...", 10, false});
  proof.refusals.push_back({"TABLE public.nc", "TABLE", "42P16",
                            "ERROR: child column \"b\" specifies generation expression\nHINT:  x",
                            "CREATE TABLE public.nc ...", 20, false});
  proof.refusals.push_back({"TABLE public.nc", "TABLE", "42P01",
                            "ERROR: relation \"public.nc\" does not exist", "ALTER ...", 21, true});
  proof.role_notes = {"a role statement was refused: ERROR: permission denied"};
  auto results = SchemaLoadResults("app", proof, 18);
  ASSERT_EQ(results.size(), 5u);
  EXPECT_EQ(results[0].severity, Severity::kInfo);
  EXPECT_TRUE(Contains(results[0].message, "pgshift_scratch_0badf00d"));
  EXPECT_EQ(results[1].id, "c-functions");
  EXPECT_EQ(results[1].severity, Severity::kError);
  EXPECT_TRUE(Contains(results[1].message, "FUNCTION public.f(integer)"));
  EXPECT_TRUE(Contains(results[1].remedy, "install the library built for PostgreSQL 18"));
  EXPECT_TRUE(Contains(results[1].remedy, "CREATE FUNCTION public.f(integer)"));
  EXPECT_EQ(results[2].id, "schema-load");
  EXPECT_EQ(results[2].message,
            "TABLE public.nc is refused by PostgreSQL 18: ERROR: child column \"b\" specifies "
            "generation expression");
  EXPECT_TRUE(Contains(results[2].remedy, "HINT:  x"));
  EXPECT_EQ(results[3].id, "schema-load");
  EXPECT_TRUE(Contains(results[3].message, "1 more statements fail"));
  EXPECT_EQ(results[4].id, "roles");
  EXPECT_EQ(results[4].severity, Severity::kWarning);

  SchemaProof clean;
  clean.entries = 7;
  auto ok = SchemaLoadResults("app", clean, 15);
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_EQ(ok[0].severity, Severity::kOk);
  EXPECT_TRUE(Contains(ok[0].message, "(7 objects) load into PostgreSQL 15"));
}

TEST(Preflight, SeverityNames) {
  EXPECT_EQ(SeverityName(Severity::kOk), "OK");
  EXPECT_EQ(SeverityName(Severity::kInfo), "INFO");
  EXPECT_EQ(SeverityName(Severity::kWarning), "WARN");
  EXPECT_EQ(SeverityName(Severity::kError), "ERROR");
}

TEST(CheckLockTables, AFullLockTableIsAnErrorWithTheSettingToUse) {
  ServerSettings small;
  small.max_locks_per_transaction = 64;
  small.lock_table_backends = 122;  // PostgreSQL's defaults: 64 x 122 = 7808
  ServerSettings big = small;
  big.max_locks_per_transaction = 256;
  // 5,000 tables with a primary key and a TOAST table: 4 relations each.
  SchemaLocks need{20000, 5000};
  auto r = CheckLockTables("app", need, small, small);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].subject, "target");
  EXPECT_EQ(r[0].severity, Severity::kError);
  EXPECT_NE(r[0].message.find("takes about 20000 locks"), std::string::npos) << r[0].message;
  EXPECT_NE(r[0].message.find("holds 7808 (max_locks_per_transaction 64 x 122 backends)"),
            std::string::npos)
      << r[0].message;
  // 20000 x 1.25 / 122 = 205 -> 256.
  EXPECT_EQ(r[0].remedy,
            "raise max_locks_per_transaction on the target to 256 (ALTER SYSTEM SET "
            "max_locks_per_transaction = 256, then restart it)");
  EXPECT_EQ(r[1].subject, "source");
  EXPECT_EQ(r[1].severity, Severity::kOk);
  r = CheckLockTables("app", need, small, big);
  EXPECT_EQ(r[0].severity, Severity::kOk);
  // pg_dump's share is the source's: 7000 tables is past 4/5 of 7808.
  r = CheckLockTables("app", SchemaLocks{100, 7000}, small, small);
  EXPECT_EQ(r[1].severity, Severity::kError);
  EXPECT_NE(r[1].remedy.find("on the source to 128"), std::string::npos) << r[1].remedy;
}

}  // namespace
}  // namespace pgshift::engine
