// Catalog facts about one PostgreSQL server or database, for preflight and the orchestrator.
//
// Every function here only reads (SELECTs on catalogs and statistics views) and works on
// PostgreSQL 12 to 18: columns that only exist in newer majors are queried only when the
// connected server has them. Per-database facts describe the database `conn` is connected to;
// cluster-wide facts (slots, subscriptions, settings, roles) are the same from any database.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

// Every object pgshift creates on a server carries this name prefix (and the migration id).
inline constexpr const char kObjectPrefix[] = "pgshift_";
// The schema holding pgshift's own tables (DDL log) on a migrated database.
inline constexpr const char kStateSchema[] = "_pgshift";

// SQL condition on a column holding a schema name: true for user schemas. Excludes system
// schemas, other sessions' temporary schemas, and the schemas pgshift itself creates
// (`pgshift`, `_pgshift*`); keeps `pgshift_load`, the load client's table.
std::string UserSchemaCondition(const std::string& column);

// Non-template databases that accept connections (invalid, half-dropped ones excluded).
Result<std::vector<std::string>> ListDatabases(pg::Connection& conn);
// Whether a database of that name exists at all (templates and closed ones included).
Result<bool> DatabaseExists(pg::Connection& conn, const std::string& name);

struct TableInfo {
  std::string schema;
  std::string name;
  bool has_primary_key = false;
  char replica_identity = 'd';  // d (default: the primary key), n (nothing), f (full), i (index)
  // Updates and deletes can be replicated: a primary key under `d`, an existing identity index
  // under `i`, or `f`.
  bool replica_identity_usable = false;
  bool unlogged = false;
  bool partitioned = false;  // relkind 'p': holds no rows itself
  bool is_partition = false;
  int64_t estimated_rows = 0;  // pg_class.reltuples; 0 when never analyzed
  int64_t bytes = 0;           // pg_total_relation_size (0 for a partitioned parent)
  std::string QualifiedName() const { return schema + "." + name; }
};
// User tables (relkind r and p, temporary ones excluded), ordered by schema and name.
Result<std::vector<TableInfo>> ListTables(pg::Connection& conn);

// The one table filter: pgshift publishes, copies and verifies exactly the tables of ListTables
// for which this is true, and no other code decides which tables are data. True for ordinary
// tables and leaf partitions that are permanent. Not for a partitioned parent (it holds no rows:
// its partitions are migrated), nor for an unlogged table (its rows never reach the WAL, so
// logical replication cannot carry them; preflight warns that it arrives empty). The schema
// rule is ListTables' UserSchemaCondition: `_pgshift` is pgshift's own, any other schema, even
// `_pgshift_archive`, holds data.
bool IsMigrated(const TableInfo& t);
// Why IsMigrated(t) is false, for people ("unlogged: ..."); empty when it is true.
std::string NotMigratedReason(const TableInfo& t);

struct SequenceInfo {
  std::string schema;
  std::string name;
  std::optional<int64_t> last_value;  // nullopt: never used, or not readable by this role
};
Result<std::vector<SequenceInfo>> ListSequences(pg::Connection& conn);

Result<int64_t> CountLargeObjects(pg::Connection& conn);
// Large objects of the connected database: how many, their size when the role may read
// pg_largeobject (superuser), and the user tables' columns that may hold their OIDs (type oid,
// or the lo extension's domain lo) as "schema.table.column".
struct LargeObjectFacts {
  int64_t count = 0;
  std::optional<int64_t> bytes;
  std::vector<std::string> oid_columns;
};
Result<LargeObjectFacts> ReadLargeObjects(pg::Connection& conn);
// "schema.name" of every user materialized view.
Result<std::vector<std::string>> ListMaterializedViews(pg::Connection& conn);

struct ExtensionInfo {
  std::string name;
  std::string version;  // installed version, or the default version for available ones
};
// Extensions installed in the connected database.
Result<std::vector<ExtensionInfo>> ListInstalledExtensions(pg::Connection& conn);
// Extensions the server could install (pg_available_extensions: what its files provide).
Result<std::vector<ExtensionInfo>> ListAvailableExtensions(pg::Connection& conn);

struct ServerSettings {
  std::string wal_level;
  int max_replication_slots = 0;
  int max_wal_senders = 0;
  int max_worker_processes = 0;
  int max_logical_replication_workers = 0;
  int max_sync_workers_per_subscription = 0;
  // The shared lock table: max_locks_per_transaction x (every backend the server can have +
  // max_prepared_transactions) entries, which one transaction may fill alone.
  int max_locks_per_transaction = 64;
  int lock_table_backends = 0;  // max_connections + autovacuum workers + 1 + worker processes
                                // + WAL senders + prepared transactions
  int64_t LockTableSlots() const {
    return static_cast<int64_t>(max_locks_per_transaction) * lock_table_backends;
  }
};
Result<ServerSettings> ReadServerSettings(pg::Connection& conn);

// Locks one transaction takes on the connected database's user relations: loading its whole
// schema (each table, its TOAST table and TOAST index, each index, sequence, view, materialized
// view and foreign table), and dumping it (pg_dump locks every table).
struct SchemaLocks {
  int64_t load = 0;
  int64_t dump = 0;
};
Result<SchemaLocks> CountSchemaLocks(pg::Connection& conn);

// What is in use now, cluster-wide.
struct ReplicationUsage {
  int slots = 0;                  // rows of pg_replication_slots
  int wal_senders = 0;            // walsender processes
  int logical_workers = 0;        // running apply and table sync workers
  int enabled_subscriptions = 0;  // each wants an apply worker, running or not
};
Result<ReplicationUsage> ReadReplicationUsage(pg::Connection& conn);

struct RolePrivileges {
  std::string role;
  bool superuser = false;
  bool replication = false;
  bool create_db = false;
  bool create_role = false;
  // The role owns (or is a member of the owner of) every user table of the connected database.
  bool owns_all_tables = false;
};
Result<RolePrivileges> ReadRolePrivileges(pg::Connection& conn);

// An object an earlier pgshift run left behind.
struct PgshiftObject {
  std::string kind;  // "replication slot", "subscription", "publication", "event trigger",
                     // "schema"
  std::string name;
  std::string database;  // where it lives (empty for a physical slot)
};
// Replication slots and subscriptions named pgshift_* (cluster-wide).
Result<std::vector<PgshiftObject>> FindClusterLeftovers(pg::Connection& conn);
// Publications and event triggers named pgshift_*, and schemas _pgshift / _pgshift_* of the
// connected database.
Result<std::vector<PgshiftObject>> FindDatabaseLeftovers(pg::Connection& conn);

// An object of the connected (newer) database that an older major cannot hold.
struct VersionBlocker {
  std::string feature;  // e.g. "NULLS NOT DISTINCT unique index"
  int since_major = 0;  // first major that has it (upgrade blockers: first that refuses it)
  std::string object;   // e.g. "public.orders_code_key"
  std::string remedy;   // what to change on the source, in general terms
};
// Objects of the connected database that cannot be created on a server of `target_major`.
// Empty when the target is as new as the connected server.
Result<std::vector<VersionBlocker>> FindVersionBlockers(pg::Connection& conn, int target_major);
// Objects of the connected (older) database that a newer `target_major` refuses or loads
// differently (its `since_major` is the first major that does): postfix operators, encoding
// conversions and old-style polymorphic aggregates (14), generated columns of inheritance
// children under a plain parent column (16), nullable child columns under a NOT NULL parent
// column (18). Empty when the target is not newer.
Result<std::vector<VersionBlocker>> FindUpgradeBlockers(pg::Connection& conn, int target_major);

// Tables with FORCE ROW LEVEL SECURITY whose owner is neither a superuser nor BYPASSRLS
// ("schema.table (owner role)"): from PostgreSQL 16 a subscription copies and applies as the
// table's owner, and refuses a table whose policies would apply to that owner.
Result<std::vector<std::string>> ListForcedRlsTables(pg::Connection& conn);
// Tables whose owner (not a superuser) lacks USAGE on the table's schema, so cannot name the
// table ("schema.table (owner role)"): from PostgreSQL 16 the subscription works as that owner.
Result<std::vector<std::string>> ListOwnersWithoutSchemaUsage(pg::Connection& conn);
// Triggers set to ENABLE ALWAYS or ENABLE REPLICA ("trg on schema.table (ENABLE ALWAYS)"):
// unlike ordinary ones they fire in logical replication's table sync and apply workers.
Result<std::vector<std::string>> ListReplicaTriggers(pg::Connection& conn);

}  // namespace pgshift::engine
