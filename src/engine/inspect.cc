#include "engine/inspect.h"

#include <cstdlib>
#include <iterator>

namespace pgshift::engine {
namespace {

int64_t ToInt64(const std::string& s) { return std::strtoll(s.c_str(), nullptr, 10); }

// Runs a query whose first column is a list of names.
Result<std::vector<std::string>> FirstColumn(pg::Connection& conn, const std::string& sql,
                                             const std::vector<pg::Param>& params = {}) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r, conn.Query(sql, params));
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) out.push_back(r.Get(i, 0));
  return out;
}

struct BlockerQuery {
  const char* feature;
  int since_major;
  // Returns one text column, the object's name; ends in a WHERE clause so that the user
  // schema condition on `schema_column` can be appended with AND.
  const char* sql;
  const char* schema_column;  // nullptr: no schema filter
  const char* remedy;
};

// Each query names objects with format('%I...') so names can be pasted into SQL.
const BlockerQuery kBlockerQueries[] = {
    {"multirange column", 14,
     "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_attribute a "
     "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "JOIN pg_type t ON t.oid = a.atttypid "
     "WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped "
     "AND (t.typtype = 'm' OR EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem "
     "AND e.typtype = 'm'))",
     "n.nspname", "change the column to another type (e.g. an array of ranges) or drop it"},
    {"SQL-standard function body (BEGIN ATOMIC / RETURN)", 14,
     "SELECT format('%I.%I(%s)', n.nspname, p.proname, "
     "pg_get_function_identity_arguments(p.oid)) FROM pg_proc p JOIN pg_namespace n ON "
     "n.oid = p.pronamespace WHERE p.prosqlbody IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
     "pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')",
     "n.nspname", "recreate the function with a string body (AS $$ ... $$)"},
    {"NULLS NOT DISTINCT unique index", 15,
     "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i "
     "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE i.indnullsnotdistinct",
     "n.nspname", "drop the index, or recreate it without NULLS NOT DISTINCT"},
    {"publication with a row filter, column list or TABLES IN SCHEMA", 15,
     "SELECT format('%I', p.pubname) FROM pg_publication p WHERE p.pubname NOT LIKE "
     "'pgshift\\_%' AND (EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid "
     "AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)) OR EXISTS (SELECT 1 FROM "
     "pg_publication_namespace pn WHERE pn.pnpubid = p.oid))",
     nullptr, "drop the publication, or recreate it with plain FOR TABLE lists"},
    {"ICU collation rules", 16,
     "SELECT format('%I.%I', n.nspname, c.collname) FROM pg_collation c "
     "JOIN pg_namespace n ON n.oid = c.collnamespace WHERE c.collicurules IS NOT NULL",
     "n.nspname", "recreate the collation without rules"},
    {"database with ICU rules", 16,
     "SELECT format('%I', datname) FROM pg_database WHERE datname = current_database() "
     "AND daticurules IS NOT NULL",
     nullptr, "create the target database yourself without ICU rules"},
    {"MAINTAIN privilege grant", 17,
     "SELECT DISTINCT format('%I.%I to %s', n.nspname, c.relname, CASE a.grantee WHEN 0 "
     "THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END) FROM pg_class c "
     "JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN LATERAL aclexplode(c.relacl) a "
     "WHERE a.privilege_type = 'MAINTAIN' AND a.grantee <> c.relowner",
     "n.nspname", "REVOKE MAINTAIN ON TABLE <table> FROM <role>;"},
    {"builtin collation provider", 17,
     "SELECT format('%I.%I', n.nspname, c.collname) FROM pg_collation c "
     "JOIN pg_namespace n ON n.oid = c.collnamespace WHERE c.collprovider = 'b'",
     "n.nspname", "recreate the collation with the libc or icu provider"},
    {"database with the builtin locale provider", 17,
     "SELECT format('%I', datname) FROM pg_database WHERE datname = current_database() "
     "AND datlocprovider = 'b'",
     nullptr, "create the target database yourself with the libc or icu locale provider"},
    {"inheritance child or partition column with a generation expression of its own", 16,
     "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_inherits i "
     "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
     "AND a.attgenerated <> '' JOIN pg_attribute pa ON pa.attrelid = i.inhparent "
     "AND pa.attname = a.attname AND NOT pa.attisdropped AND pa.attgenerated <> '' "
     "JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
     "JOIN pg_attrdef pd ON pd.adrelid = pa.attrelid AND pd.adnum = pa.attnum "
     "WHERE pg_get_expr(d.adbin, d.adrelid) <> pg_get_expr(pd.adbin, pd.adrelid)",
     "n.nspname",
     "give the child column its parent's expression (drop the column from the child and let "
     "it inherit the parent's)"},
    {"virtual generated column", 18,
     "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_attribute a "
     "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped "
     "AND a.attgenerated = 'v'",
     "n.nspname",
     "make the column STORED (drop it and add it back as GENERATED ALWAYS AS (...) STORED)"},
    {"temporal constraint (WITHOUT OVERLAPS / PERIOD)", 18,
     "SELECT format('%I.%s (constraint %I)', n.nspname, COALESCE(quote_ident(c.relname), "
     "con.contypid::regtype::text), con.conname) FROM pg_constraint con "
     "JOIN pg_namespace n ON n.oid = con.connamespace "
     "LEFT JOIN pg_class c ON c.oid = con.conrelid WHERE con.conperiod",
     "n.nspname", "drop the constraint (ALTER TABLE ... DROP CONSTRAINT ...)"},
    {"NOT ENFORCED constraint", 18,
     "SELECT format('%I.%s (constraint %I)', n.nspname, COALESCE(quote_ident(c.relname), "
     "con.contypid::regtype::text), con.conname) FROM pg_constraint con "
     "JOIN pg_namespace n ON n.oid = con.connamespace "
     "LEFT JOIN pg_class c ON c.oid = con.conrelid WHERE NOT con.conenforced",
     "n.nspname",
     "drop the constraint, or make it enforced (ALTER TABLE ... ALTER CONSTRAINT ... ENFORCED)"},
    {"NOT VALID NOT NULL constraint", 18,
     "SELECT format('%I.%s (constraint %I)', n.nspname, COALESCE(quote_ident(c.relname), "
     "con.contypid::regtype::text), con.conname) FROM pg_constraint con "
     "JOIN pg_namespace n ON n.oid = con.connamespace "
     "LEFT JOIN pg_class c ON c.oid = con.conrelid WHERE con.contype = 'n' "
     "AND NOT con.convalidated",
     "n.nspname", "validate it: ALTER TABLE ... VALIDATE CONSTRAINT ...;"},
};

// Objects an older major held that a newer one refuses (or loads differently), checked when
// the target is at least `since_major` and the source older: since_major is the first major
// that refuses. Like pg_upgrade --check, but for what a schema dump and reload meets.
const BlockerQuery kUpgradeQueries[] = {
    {"postfix operator (removed in PostgreSQL 14)", 14,
     "SELECT format('%I.%s', n.nspname, o.oprname) FROM pg_operator o "
     "JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE o.oprright = 0 AND o.oid >= 16384",
     "n.nspname", "drop the operator (DROP OPERATOR ...), and use a function instead"},
    {"user-defined encoding conversion (its function's signature changed in PostgreSQL 14)", 14,
     "SELECT format('%I.%I', n.nspname, c.conname) FROM pg_conversion c "
     "JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.oid >= 16384",
     "n.nspname", "drop the conversion (DROP CONVERSION ...) and recreate it on the target"},
    {"aggregate or operator over array_append, array_cat, ... with anyarray (changed to "
     "anycompatible in PostgreSQL 14)", 14,
     "WITH o AS (SELECT ARRAY(SELECT to_regprocedure(f)::oid FROM unnest(ARRAY["
     "'array_append(anyarray,anyelement)', 'array_cat(anyarray,anyarray)', "
     "'array_prepend(anyelement,anyarray)', 'array_remove(anyarray,anyelement)', "
     "'array_replace(anyarray,anyelement,anyelement)', 'array_position(anyarray,anyelement)', "
     "'array_position(anyarray,anyelement,integer)', 'array_positions(anyarray,anyelement)', "
     "'width_bucket(anyelement,anyarray)']) f WHERE to_regprocedure(f) IS NOT NULL) AS fns) "
     "SELECT x.name FROM (SELECT format('%I.%I', n.nspname, p.proname) AS name, n.nspname "
     "FROM pg_proc p JOIN pg_aggregate a ON a.aggfnoid = p.oid "
     "JOIN pg_namespace n ON n.oid = p.pronamespace, o WHERE p.oid >= 16384 AND "
     "(a.aggtransfn::oid = ANY(o.fns) OR a.aggfinalfn::oid = ANY(o.fns)) "
     "UNION ALL SELECT format('%I.%s', n.nspname, op.oprname), n.nspname FROM pg_operator op "
     "JOIN pg_namespace n ON n.oid = op.oprnamespace, o WHERE op.oid >= 16384 AND "
     "op.oprcode::oid = ANY(o.fns)) x WHERE true",
     "x.nspname",
     "drop the aggregate or operator, and recreate it on the target with the anycompatible "
     "variants of the functions"},
    {"generated column of an inheritance child whose parent column is not generated "
     "(PostgreSQL 16+ refuses: child column specifies generation expression)", 16,
     "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_inherits i "
     "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
     "AND a.attgenerated <> '' JOIN pg_attribute pa ON pa.attrelid = i.inhparent "
     "AND pa.attname = a.attname AND NOT pa.attisdropped AND pa.attgenerated = '' "
     "WHERE NOT c.relispartition",
     "n.nspname",
     "detach the child (ALTER TABLE child NO INHERIT parent), or make the parent's column "
     "generated too; a child column may be generated only where its parent's is"},
    {"nullable column of an inheritance child whose parent column is NOT NULL (PostgreSQL 18 "
     "makes it NOT NULL: the copy refuses the child's NULLs)", 18,
     "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_inherits i "
     "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
     "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
     "AND NOT a.attnotnull JOIN pg_attribute pa ON pa.attrelid = i.inhparent "
     "AND pa.attname = a.attname AND NOT pa.attisdropped AND pa.attnotnull WHERE true",
     "n.nspname",
     "give the child's NULLs a value, then ALTER TABLE child ALTER COLUMN col SET NOT NULL"},
};

Result<std::vector<VersionBlocker>> RunBlockerQueries(pg::Connection& conn,
                                                      const BlockerQuery* begin,
                                                      const BlockerQuery* end,
                                                      bool applies(const BlockerQuery&, int, int),
                                                      int target_major) {
  std::vector<VersionBlocker> out;
  int source_major = conn.ServerMajor();
  for (const BlockerQuery* q = begin; q != end; ++q) {
    if (!applies(*q, source_major, target_major)) continue;
    std::string sql = q->sql;
    if (q->schema_column != nullptr) sql += " AND " + UserSchemaCondition(q->schema_column);
    sql += " ORDER BY 1";
    auto names = FirstColumn(conn, sql);
    if (!names.ok()) {
      return names.status().WithContext(std::string("looking for ") + q->feature);
    }
    for (auto& name : *names) {
      out.push_back({q->feature, q->since_major, std::move(name), q->remedy});
    }
  }
  return out;
}

}  // namespace

std::string UserSchemaCondition(const std::string& column) {
  // Only pgshift's own schema is left out: a user schema such as _pgshift_archive is data.
  return "(" + column + " NOT IN ('pg_catalog', 'information_schema', '_pgshift') AND " + column +
         " NOT LIKE 'pg\\_toast%' AND " + column + " NOT LIKE 'pg\\_temp\\_%')";
}

Result<std::vector<std::string>> ListDatabases(pg::Connection& conn) {
  // datconnlimit -2 marks a database whose DROP was interrupted (15.4+/16+): unusable.
  return FirstColumn(conn,
                     "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                     "AND datconnlimit <> -2 ORDER BY datname");
}

Result<bool> DatabaseExists(pg::Connection& conn, const std::string& name) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r,
                           conn.Query("SELECT 1 FROM pg_database WHERE datname = $1", {name}));
  return r.rows() > 0;
}

Result<std::vector<TableInfo>> ListTables(pg::Connection& conn) {
  std::string sql =
      "SELECT n.nspname AS schema, c.relname AS name, "
      "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS pk, "
      "c.relreplident AS ident, "
      "CASE c.relreplident WHEN 'f' THEN true "
      "  WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
      "    AND i.indisprimary) "
      "  WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
      "    AND i.indisreplident) "
      "  ELSE false END AS usable, "
      "c.relpersistence = 'u' AS unlogged, c.relkind = 'p' AS partitioned, "
      "c.relispartition AS is_partition, "
      "GREATEST(c.reltuples, 0)::bigint AS est_rows, "
      "COALESCE(pg_total_relation_size(c.oid), 0) AS bytes "
      "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND " +
      UserSchemaCondition("n.nspname") + " ORDER BY 1, 2";
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r, conn.Query(sql));
  std::vector<TableInfo> out;
  out.reserve(static_cast<size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) {
    TableInfo t;
    t.schema = r.Get(i, "schema");
    t.name = r.Get(i, "name");
    t.has_primary_key = r.GetBool(i, "pk");
    std::string ident = r.Get(i, "ident");
    t.replica_identity = ident.empty() ? 'd' : ident[0];
    t.replica_identity_usable = r.GetBool(i, "usable");
    t.unlogged = r.GetBool(i, "unlogged");
    t.partitioned = r.GetBool(i, "partitioned");
    t.is_partition = r.GetBool(i, "is_partition");
    t.estimated_rows = r.GetInt(i, "est_rows");
    t.bytes = r.GetInt(i, "bytes");
    out.push_back(std::move(t));
  }
  return out;
}

bool IsMigrated(const TableInfo& t) { return !t.partitioned && !t.unlogged; }

std::string NotMigratedReason(const TableInfo& t) {
  if (t.partitioned) return "partitioned table: its partitions hold the rows";
  if (t.unlogged) return "unlogged table: logical replication does not carry it";
  return "";
}

Result<std::vector<SequenceInfo>> ListSequences(pg::Connection& conn) {
  // pg_sequences.last_value is NULL for an unused sequence and for one this role cannot read.
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT schemaname, sequencename, last_value FROM pg_sequences WHERE " +
                 UserSchemaCondition("schemaname") + " ORDER BY 1, 2"));
  std::vector<SequenceInfo> out;
  for (int i = 0; i < r.rows(); ++i) {
    SequenceInfo s;
    s.schema = r.Get(i, "schemaname");
    s.name = r.Get(i, "sequencename");
    if (auto v = r.GetOpt(i, "last_value")) s.last_value = ToInt64(*v);
    out.push_back(std::move(s));
  }
  return out;
}

Result<int64_t> CountLargeObjects(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string n,
                           conn.QueryValue("SELECT count(*) FROM pg_largeobject_metadata"));
  return ToInt64(n);
}

Result<LargeObjectFacts> ReadLargeObjects(pg::Connection& conn) {
  LargeObjectFacts f;
  PGSHIFT_ASSIGN_OR_RETURN(f.count, CountLargeObjects(conn));
  if (f.count == 0) return f;
  // pg_largeobject is readable by superusers only; anyone else gets no size.
  auto bytes = conn.QueryValue("SELECT coalesce(sum(octet_length(data)), 0)::bigint FROM pg_largeobject");
  if (bytes.ok()) f.bytes = ToInt64(*bytes);
  PGSHIFT_ASSIGN_OR_RETURN(
      f.oid_columns,
      FirstColumn(conn,
                  "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_attribute a "
                  "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "JOIN pg_type t ON t.oid = a.atttypid "
                  "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') "
                  "AND NOT c.relispartition AND (t.oid = 'oid'::regtype OR t.typname = 'lo') AND " +
                      UserSchemaCondition("n.nspname") + " ORDER BY 1"));
  return f;
}

Result<std::vector<std::string>> ListMaterializedViews(pg::Connection& conn) {
  return FirstColumn(conn, "SELECT schemaname || '.' || matviewname FROM pg_matviews WHERE " +
                               UserSchemaCondition("schemaname") + " ORDER BY 1");
}

Result<std::vector<ExtensionInfo>> ListInstalledExtensions(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r,
                           conn.Query("SELECT extname, extversion FROM pg_extension ORDER BY 1"));
  std::vector<ExtensionInfo> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back({r.Get(i, 0), r.Get(i, 1)});
  return out;
}

Result<std::vector<ExtensionInfo>> ListAvailableExtensions(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT name, default_version FROM pg_available_extensions ORDER BY 1"));
  std::vector<ExtensionInfo> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back({r.Get(i, 0), r.Get(i, 1)});
  return out;
}

Result<ServerSettings> ReadServerSettings(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT current_setting('wal_level') AS wal_level, "
                 "current_setting('max_replication_slots') AS slots, "
                 "current_setting('max_wal_senders') AS senders, "
                 "current_setting('max_worker_processes') AS workers, "
                 "current_setting('max_logical_replication_workers') AS logical_workers, "
                 "current_setting('max_sync_workers_per_subscription') AS sync_workers, "
                 "current_setting('max_locks_per_transaction') AS locks, "
                 "current_setting('max_connections')::int + "
                 "current_setting('autovacuum_max_workers')::int + 1 + "
                 "current_setting('max_worker_processes')::int + "
                 "current_setting('max_wal_senders')::int + "
                 "current_setting('max_prepared_transactions')::int AS lock_backends"));
  ServerSettings s;
  s.wal_level = r.Get(0, "wal_level");
  s.max_replication_slots = static_cast<int>(r.GetInt(0, "slots"));
  s.max_wal_senders = static_cast<int>(r.GetInt(0, "senders"));
  s.max_worker_processes = static_cast<int>(r.GetInt(0, "workers"));
  s.max_logical_replication_workers = static_cast<int>(r.GetInt(0, "logical_workers"));
  s.max_sync_workers_per_subscription = static_cast<int>(r.GetInt(0, "sync_workers"));
  s.max_locks_per_transaction = static_cast<int>(r.GetInt(0, "locks"));
  s.lock_table_backends = static_cast<int>(r.GetInt(0, "lock_backends"));
  return s;
}

Result<SchemaLocks> CountSchemaLocks(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT count(*) + 2 * count(*) FILTER (WHERE c.reltoastrelid <> 0) AS load, "
                 "count(*) FILTER (WHERE c.relkind IN ('r', 'p')) AS dump "
                 "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE c.relkind IN ('r', 'p', 'i', 'I', 'S', 'v', 'm', 'f') AND " +
                 std::string(UserSchemaCondition("n.nspname"))));
  SchemaLocks l;
  l.load = r.GetInt(0, "load");
  l.dump = r.GetInt(0, "dump");
  return l;
}

Result<ReplicationUsage> ReadReplicationUsage(pg::Connection& conn) {
  // backend_type of logical workers: "logical replication worker" up to 15, "logical
  // replication apply/tablesync/parallel worker" from 16; the launcher is counted apart.
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT (SELECT count(*) FROM pg_replication_slots) AS slots, "
                 "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender') "
                 "  AS senders, "
                 "(SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE "
                 "  'logical replication%worker') AS workers, "
                 "(SELECT count(*) FROM pg_subscription WHERE subenabled) AS subs"));
  ReplicationUsage u;
  u.slots = static_cast<int>(r.GetInt(0, "slots"));
  u.wal_senders = static_cast<int>(r.GetInt(0, "senders"));
  u.logical_workers = static_cast<int>(r.GetInt(0, "workers"));
  u.enabled_subscriptions = static_cast<int>(r.GetInt(0, "subs"));
  return u;
}

Result<RolePrivileges> ReadRolePrivileges(pg::Connection& conn) {
  std::string sql =
      "SELECT r.rolname, r.rolsuper, r.rolreplication, r.rolcreatedb, r.rolcreaterole, "
      "NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
      "  WHERE c.relkind IN ('r', 'p') AND " +
      UserSchemaCondition("n.nspname") +
      "  AND NOT pg_has_role(r.oid, c.relowner, 'USAGE')) AS owns_all "
      "FROM pg_roles r WHERE r.rolname = current_user";
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult r, conn.Query(sql));
  if (r.rows() != 1) return Status::Internal("current_user not found in pg_roles");
  RolePrivileges p;
  p.role = r.Get(0, "rolname");
  p.superuser = r.GetBool(0, "rolsuper");
  p.replication = r.GetBool(0, "rolreplication");
  p.create_db = r.GetBool(0, "rolcreatedb");
  p.create_role = r.GetBool(0, "rolcreaterole");
  p.owns_all_tables = r.GetBool(0, "owns_all");
  return p;
}

Result<std::vector<PgshiftObject>> FindClusterLeftovers(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT 'replication slot' AS kind, slot_name::text AS name, "
                 "  COALESCE(database::text, '') AS db "
                 "FROM pg_replication_slots WHERE slot_name LIKE 'pgshift\\_%' "
                 "UNION ALL "
                 "SELECT 'subscription', s.subname::text, d.datname::text FROM pg_subscription s "
                 "JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname LIKE 'pgshift\\_%' "
                 "ORDER BY 1, 2"));
  std::vector<PgshiftObject> out;
  for (int i = 0; i < r.rows(); ++i) {
    out.push_back({r.Get(i, "kind"), r.Get(i, "name"), r.Get(i, "db")});
  }
  return out;
}

Result<std::vector<PgshiftObject>> FindDatabaseLeftovers(pg::Connection& conn) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      conn.Query("SELECT 'publication' AS kind, pubname::text AS name FROM pg_publication "
                 "WHERE pubname LIKE 'pgshift\\_%' "
                 "UNION ALL SELECT 'event trigger', evtname::text FROM pg_event_trigger "
                 "WHERE evtname LIKE 'pgshift\\_%' "
                 "UNION ALL SELECT 'schema', nspname::text FROM pg_namespace "
                 "WHERE nspname = '_pgshift' "
                 "ORDER BY 1, 2"));
  PGSHIFT_ASSIGN_OR_RETURN(std::string db, conn.QueryValue("SELECT current_database()"));
  std::vector<PgshiftObject> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back({r.Get(i, "kind"), r.Get(i, "name"), db});
  return out;
}

Result<std::vector<VersionBlocker>> FindVersionBlockers(pg::Connection& conn, int target_major) {
  // A query only runs where its columns exist (source) and matter (target too old).
  return RunBlockerQueries(
      conn, std::begin(kBlockerQueries), std::end(kBlockerQueries),
      [](const BlockerQuery& q, int source, int target) {
        return source >= q.since_major && target < q.since_major;
      },
      target_major);
}

Result<std::vector<VersionBlocker>> FindUpgradeBlockers(pg::Connection& conn, int target_major) {
  return RunBlockerQueries(
      conn, std::begin(kUpgradeQueries), std::end(kUpgradeQueries),
      [](const BlockerQuery& q, int source, int target) {
        return source < q.since_major && target >= q.since_major;
      },
      target_major);
}

namespace {

// "schema.table (owner role)" of the user tables whose owner is no superuser and `condition`
// (on c: pg_class, r: pg_roles, n: pg_namespace) holds.
Result<std::vector<std::string>> TablesWithOrdinaryOwner(pg::Connection& conn,
                                                         const std::string& condition) {
  return FirstColumn(
      conn,
      "SELECT format('%I.%I (owner %I)', n.nspname, c.relname, r.rolname) FROM pg_class c "
      "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner "
      "WHERE c.relkind IN ('r', 'p') AND NOT r.rolsuper AND " + condition + " AND " +
          UserSchemaCondition("n.nspname") + " ORDER BY 1");
}

}  // namespace

Result<std::vector<std::string>> ListForcedRlsTables(pg::Connection& conn) {
  return TablesWithOrdinaryOwner(
      conn, "c.relrowsecurity AND c.relforcerowsecurity AND NOT r.rolbypassrls");
}

Result<std::vector<std::string>> ListOwnersWithoutSchemaUsage(pg::Connection& conn) {
  return TablesWithOrdinaryOwner(conn, "NOT has_schema_privilege(c.relowner, n.oid, 'USAGE')");
}

Result<std::vector<std::string>> ListReplicaTriggers(pg::Connection& conn) {
  return FirstColumn(
      conn,
      "SELECT format('%I on %I.%I (ENABLE %s)', t.tgname, n.nspname, c.relname, "
      "CASE t.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END) FROM pg_trigger t "
      "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
      "WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R') AND " +
          UserSchemaCondition("n.nspname") + " ORDER BY 1");
}

}  // namespace pgshift::engine
