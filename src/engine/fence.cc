#include "engine/fence.h"

#include "common/clock.h"
#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

namespace {

// The two trigger functions in each state. The marker comment is how FenceState reads the
// state back; replacing a function is seen by every session at its next statement.
constexpr const char* kOnSql = R"SQL(
CREATE OR REPLACE FUNCTION _pgshift.fence_dml() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  -- pgshift-fence:on
  RAISE EXCEPTION 'cannot % %.%: database % is fenced by pgshift while its clients move to the other server',
    tg_op, tg_table_schema, tg_table_name, current_database()
    USING ERRCODE = 'read_only_sql_transaction';
END
$f$;
CREATE OR REPLACE FUNCTION _pgshift.fence_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  -- pgshift-fence:on
  RAISE EXCEPTION 'cannot run %: database % is fenced by pgshift while its clients move to the other server',
    tg_tag, current_database()
    USING ERRCODE = 'read_only_sql_transaction';
END
$f$;
)SQL";

constexpr const char* kOffSql = R"SQL(
CREATE OR REPLACE FUNCTION _pgshift.fence_dml() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  -- pgshift-fence:off
  RETURN NULL;
END
$f$;
CREATE OR REPLACE FUNCTION _pgshift.fence_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  -- pgshift-fence:off
  RETURN;
END
$f$;
)SQL";

// The pooler's hold (PoolerHoldQuery). The shared advisory lock (keys "pgsh", "hold") marks the
// session as the pooler's for as long as it lives: step open spares it (EndClientSessions).
// A session that logged in while the database was fenced started read-only (the database's
// default then); once the fence is off, it takes the default the database has now, unless it
// got it from elsewhere (a role's setting) or the database still sets one. The timeouts a role
// may carry would end the wait early and let a client read a fenced side: off while waiting.
// A PgBouncer that gives up on the login (server_connect_timeout) ends the wait too, on 14+
// through client_connection_check_interval.
constexpr int kHoldLockKey1 = 1885828968;  // "pgsh"
constexpr int kHoldLockKey2 = 1752132708;  // "hold"
// The keys, as pg_advisory_lock_shared takes them and as pg_locks shows them.
std::string HoldLockArgs() {
  return std::to_string(kHoldLockKey1) + ", " + std::to_string(kHoldLockKey2);
}
constexpr const char* kHoldSqlHead = R"SQL(
CREATE OR REPLACE FUNCTION _pgshift.hold() RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$
DECLARE
  fenced boolean;
  waited boolean := false;
BEGIN
  PERFORM pg_advisory_lock_shared()SQL";
constexpr const char* kHoldSqlTail = R"SQL();
  LOOP
    SELECT p.prosrc LIKE '%pgshift-fence:on%' INTO fenced FROM pg_proc p
     WHERE p.oid = to_regprocedure('_pgshift.fence_dml()');
    EXIT WHEN fenced IS NOT TRUE;
    IF NOT waited THEN
      waited := true;
      IF current_setting('server_version_num')::int >= 140000 THEN
        PERFORM set_config('client_connection_check_interval', '1000', true);
      END IF;
      IF current_setting('server_version_num')::int >= 170000 THEN
        PERFORM set_config('transaction_timeout', '0', true);
      END IF;
    END IF;
    PERFORM pg_sleep(0.001);
  END LOOP;
  IF current_setting('default_transaction_read_only') = 'on' THEN
    IF (SELECT s.source = 'database' FROM pg_settings s
         WHERE s.name = 'default_transaction_read_only')
       AND NOT EXISTS (SELECT FROM pg_db_role_setting d, unnest(d.setconfig) c
                        WHERE d.setdatabase = (SELECT oid FROM pg_database
                                                WHERE datname = current_database())
                          AND d.setrole = 0 AND c LIKE 'default\_transaction\_read\_only=%') THEN
      PERFORM set_config('default_transaction_read_only', 'off', false);
    END IF;
  END IF;
END
$f$;
GRANT USAGE ON SCHEMA _pgshift TO PUBLIC;
)SQL";

// Every table a client could write to: plain and partitioned, logged or not, outside the
// catalogs and pgshift's own schema; only those still without the trigger named $1.
constexpr const char* kTablesWithoutTrigger = R"SQL(
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pgshift')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = $1)
ORDER BY 1
)SQL";

}  // namespace

Status InstallFence(pg::Connection& c, const std::string& name) {
  const std::string quoted = c.QuoteIdent(name);
  PGSHIFT_ASSIGN_OR_RETURN(std::string no_schema,
                           c.QueryValue("SELECT to_regnamespace('_pgshift') IS NULL"));
  if (no_schema == "t") PGSHIFT_RETURN_IF_ERROR(c.Exec("CREATE SCHEMA _pgshift"));
  // New functions start off; existing ones keep their state (a fence that is on stays on).
  PGSHIFT_ASSIGN_OR_RETURN(std::string missing,
                           c.QueryValue("SELECT to_regprocedure('_pgshift.fence_dml()') IS NULL OR "
                                        "to_regprocedure('_pgshift.fence_ddl()') IS NULL"));
  if (missing == "t") {
    PGSHIFT_RETURN_IF_ERROR(
        c.Exec(std::string("BEGIN;") + kOffSql + "COMMIT;").WithContext("fence functions"));
  }
  PGSHIFT_RETURN_IF_ERROR(c.Exec(kHoldSqlHead + HoldLockArgs() + kHoldSqlTail)
                              .WithContext("the pooler's hold function"));
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string has_event_trigger,
      c.QueryValue("SELECT count(*) FROM pg_event_trigger WHERE evtname = $1", {name}));
  if (has_event_trigger == "0") {
    PGSHIFT_RETURN_IF_ERROR(c.Exec("CREATE EVENT TRIGGER " + quoted +
                                   " ON ddl_command_start EXECUTE FUNCTION _pgshift.fence_ddl()")
                                .WithContext("fence event trigger"));
  }
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult tables, c.Query(kTablesWithoutTrigger, {name}));
  for (int i = 0; i < tables.rows(); ++i) {
    // One table per transaction: each lock is held for a moment, never all of them at once.
    PGSHIFT_RETURN_IF_ERROR(
        c.Exec("CREATE TRIGGER " + quoted + " BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON " +
               tables.Get(i, 0) + " FOR EACH STATEMENT EXECUTE FUNCTION _pgshift.fence_dml()")
            .WithContext("fence trigger on " + tables.Get(i, 0)));
  }
  return Status::Ok();
}

Status FenceOn(pg::Connection& c, const std::string& db, const std::vector<int>& keep_pids,
               int64_t deadline_ms) {
  const std::string qdb = c.QuoteIdent(db);
  PGSHIFT_RETURN_IF_ERROR(c.Exec(std::string("BEGIN;") + kOnSql + "ALTER DATABASE " + qdb +
                                 " SET default_transaction_read_only = on; COMMIT;")
                              .WithContext("fencing " + db));
  return EndClientSessions(c, {db}, keep_pids, deadline_ms).status().WithContext("fencing " + db);
}

Status FenceOff(pg::Connection& c, const std::string& db) {
  const std::string qdb = c.QuoteIdent(db);
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string installed,
      c.QueryValue("SELECT to_regprocedure('_pgshift.fence_dml()') IS NOT NULL AND "
                   "to_regprocedure('_pgshift.fence_ddl()') IS NOT NULL"));
  std::string sql = "BEGIN;";
  if (installed == "t") sql += kOffSql;
  sql += "ALTER DATABASE " + qdb + " RESET default_transaction_read_only; COMMIT;";
  return c.Exec(sql).WithContext("lifting the fence of " + db);
}

Result<bool> FenceState(pg::Connection& c) {
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string on,
      c.QueryValue("SELECT coalesce((SELECT prosrc LIKE '%pgshift-fence:on%' FROM pg_proc "
                   "WHERE oid = to_regprocedure('_pgshift.fence_dml()')), false)"));
  return on == "t";
}

std::string PoolerHoldQuery() {
  return "SET statement_timeout = 0; DO $pgshift$BEGIN IF pg_catalog.to_regprocedure("
         "'_pgshift.hold()') IS NOT NULL THEN PERFORM _pgshift.hold(); END IF; END$pgshift$; "
         "RESET statement_timeout";
}

Result<int64_t> EndClientSessions(pg::Connection& c, const std::vector<std::string>& dbs,
                                  const std::vector<int>& keep_pids, int64_t deadline_ms,
                                  bool spare_pooler_sessions) {
  std::vector<std::string> keep;
  for (int pid : keep_pids) keep.push_back(std::to_string(pid));
  keep.push_back("0");  // never an empty array literal of unknown type
  // A pooler's session is its own from its login (the application_name of its startup packet)
  // until it took the hold's lock, and by that lock after (PgBouncer sets the application_name
  // of its clients on it).
  const std::string spare =
      spare_pooler_sessions
          ? " AND application_name IS DISTINCT FROM $3 AND NOT EXISTS (SELECT 1 FROM pg_locks l "
            "WHERE l.pid = a.pid AND l.locktype = 'advisory' AND (l.classid, l.objid) = (" +
                HoldLockArgs() + ") AND l.objsubid = 2)"
          : "";
  std::vector<pg::Param> params{pg::TextArrayLiteral(dbs), "{" + Join(keep, ",") + "}"};
  if (spare_pooler_sessions) params.push_back(kPoolerHoldApplicationName);
  // The sessions first, then the signals: in one statement the planner may call
  // pg_terminate_backend before the other conditions, on replication workers too.
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      c.Query("SELECT coalesce(array_agg(pid), '{}')::text, count(*) FROM pg_stat_activity a "
              "WHERE datname = ANY($1::text[]) AND backend_type = 'client backend' "
              "AND pid <> pg_backend_pid() AND pid <> ALL($2::int[])" +
                  spare,
              params));
  long long ended = 0;
  if (!ParseInt64(r.Get(0, 1), &ended)) return Status::Internal("bad session count");
  if (ended > 0) {
    PGSHIFT_RETURN_IF_ERROR(
        c.Query("SELECT count(pg_terminate_backend(p)) FROM unnest($1::int[]) AS p", {r.Get(0, 0)})
            .status());
  }
  // pg_terminate_backend only signals: wait until the sessions are gone, so none of them can
  // still commit after the caller goes on.
  const std::string pids = r.Get(0, 0);
  while (ended > 0) {
    PGSHIFT_ASSIGN_OR_RETURN(
        std::string left,
        c.QueryValue("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", {pids}));
    if (left == "0") break;
    if (MonotonicMillis() > deadline_ms) {
      return Status::DeadlineExceeded(left + " ended client session(s) did not exit in time");
    }
    SleepMillis(1);
  }
  return static_cast<int64_t>(ended);
}

}  // namespace pgshift::engine
