// Preflight: everything that must hold before a migration starts, checked read-only on both
// servers, each finding with a severity and a remedy a DBA can act on.
//
// RunPreflight changes nothing on the source: its sessions there are read-only and only run
// catalog SELECTs and pg_dump / pg_dumpall. On the target it reads too, except for the proof
// that the schema loads (PreflightOptions::prove_schema): a scratch database named
// pgshift_scratch_<hex>, loaded inside a transaction that is rolled back and dropped at once
// (one left by a crash is dropped by the next run). The Check* building blocks are pure
// functions of catalog facts (see inspect.h), so they can be tested without servers.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/inspect.h"
#include "engine/schema.h"

namespace pgshift::engine {

// Majors pgshift migrates between.
inline constexpr int kMinSupportedMajor = 12;
inline constexpr int kMaxSupportedMajor = 18;

enum class Severity { kOk, kInfo, kWarning, kError };
// "OK", "INFO", "WARN", "ERROR".
std::string_view SeverityName(Severity s);

struct CheckResult {
  std::string id;  // stable, e.g. "wal-level"
  Severity severity = Severity::kOk;
  std::string subject;  // "source", "target", a database name, ...
  std::string message;  // one line
  std::string remedy;   // what to do; may span lines (SQL statements); empty for OK
};

struct PreflightOptions {
  // Databases to migrate; empty: every non-template database of the source that allows
  // connections.
  std::vector<std::string> databases;
  // Tables without a primary key or usable replica identity: false refuses them (error), true
  // replicates them with REPLICA IDENTITY FULL (warning).
  bool tables_without_pk_full = false;
  // pg_dump, pg_dumpall and psql, from one folder: each is checked against the source.
  ToolPaths tools;
  // Keep replicating target -> source after cutover, so rollback loses nothing.
  bool rollback_replication = true;
  // --max-retained-wal (0: none), shown against the source's own limit and free space.
  int64_t max_retained_wal = 0;
  // Load the roles and every database's schema into a scratch database on the target, as the
  // migration will, and report each statement the target refuses (check id "schema-load";
  // C-language functions whose library it cannot load: "c-functions").
  bool prove_schema = true;
  // When resuming migration `migration_id`, its own objects are not leftovers.
  std::string migration_id;
  bool allow_own_leftovers = false;
};

struct PreflightReport {
  int source_major = 0;
  int target_major = 0;
  std::string direction;  // "upgrade", "downgrade", "same"
  std::vector<std::string> databases;
  std::vector<CheckResult> results;
  std::map<std::string, std::vector<TableInfo>> tables;  // per database of the source

  bool HasErrors() const;
  int Count(Severity s) const;
  // An aligned text table (SEVERITY  CHECK  SUBJECT  MESSAGE), then the remedies of every
  // finding that has one, then a one-line verdict.
  std::string RenderTable() const;
  nlohmann::json ToJson() const;
};

// Connects to both servers and runs every check. Fails (as a Status naming the side) only when
// a server cannot be reached or queried; findings are in the report.
Result<PreflightReport> RunPreflight(const std::string& source_dsn, const std::string& target_dsn,
                                     const PreflightOptions& options);

// ---- Building blocks (pure) ----

// "upgrade", "downgrade" or "same".
std::string DirectionFor(int source_major, int target_major);
// The major of a client tool's `--version` output, e.g. "pg_dump (PostgreSQL) 17.11" -> 17,
// "psql (PostgreSQL) 18.6" -> 18.
Result<int> ParseToolMajor(std::string_view version_output);
// "a, b, c and 4 more" (at most `max_names` names).
std::string NameList(const std::vector<std::string>& names, size_t max_names = 10);
// SQL that removes a leftover object (to run on the server, in object.database).
std::string DropStatement(const PgshiftObject& object);

CheckResult CheckVersions(int source_major, int target_major);
// `side` is "source" or "target".
CheckResult CheckWalLevel(const std::string& side, const std::string& wal_level, bool for_rollback);
// The shared lock tables against what one transaction takes on database `db`: the schema's
// load in one transaction on the target (and the scratch load of the schema-load check), and
// pg_dump's locks on the source. Past a lock table's size PostgreSQL fails with "out of
// shared memory" on whichever statement comes next.
std::vector<CheckResult> CheckLockTables(const std::string& db, const SchemaLocks& need,
                                         const ServerSettings& source, const ServerSettings& target);
// Slots and WAL senders on the publishing side, logical and background workers on the
// subscribing side, forward and (when `rollback_replication`) reverse.
std::vector<CheckResult> CheckCapacity(const ServerSettings& source,
                                       const ReplicationUsage& source_use,
                                       const ServerSettings& target,
                                       const ReplicationUsage& target_use, int databases,
                                       bool rollback_replication);
CheckResult CheckPrivileges(const std::string& side, const RolePrivileges& role);
// Replica identity and unlogged tables of one database.
std::vector<CheckResult> CheckTables(const std::string& database,
                                     const std::vector<TableInfo>& tables,
                                     bool tables_without_pk_full);
// Extensions of one source database against what the target offers (plpgsql ignored).
CheckResult CheckExtensions(const std::string& database, const std::vector<ExtensionInfo>& used,
                            const std::vector<ExtensionInfo>& available, int target_major);
// One client tool (`name` at `path`, from `tools.dir`): `version_output` is what `--version`
// printed, or the error running it. pg_dump and pg_dumpall refuse a server newer than
// themselves, so every tool must be at least the source's major (one folder, one major).
CheckResult CheckClientTool(const std::string& name, const std::string& path,
                            const std::string& dir, const Result<std::string>& version_output,
                            int source_major);
// Findings of the scratch load of `database` (ProveSchemaLoads): one per refused statement,
// with the server's message and the statement in the remedy; refusals that only follow from an
// earlier one folded into one finding; OK when nothing was refused.
std::vector<CheckResult> SchemaLoadResults(const std::string& database, const SchemaProof& proof,
                                           int target_major);
// Leftovers found on `side`; those of `options.migration_id` are skipped when allowed.
CheckResult CheckLeftovers(const std::string& side, const std::vector<PgshiftObject>& found,
                           const PreflightOptions& options);

}  // namespace pgshift::engine
