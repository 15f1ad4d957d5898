#include "engine/server_ops.h"

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "common/clock.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/fence.h"
#include "engine/migration.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

Result<ConnPtr> Connect(const std::string& dsn, const std::string& db, const std::string& side) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string d, pg::DsnForDatabase(dsn, db));
  auto c = pg::Connection::Connect(d, 10, "pgshift");
  if (!c.ok()) return c.status().WithContext(side + " database " + db);
  // pgshift's sessions write even where it fenced the database against everyone else, and
  // their commits are flushed at once whatever the server's default. Where the role may (a
  // superuser), they run as replication does: the application's triggers and event triggers
  // (an audit of DDL into a replicated table, say) do not fire on pgshift's own DDL and rows.
  Status s = (*c)->Exec(
      "SET default_transaction_read_only = off; SET synchronous_commit = on; "
      "SET statement_timeout = 0; SET lock_timeout = '10s'; "
      "SELECT set_config('session_replication_role', 'replica', false) "
      "WHERE current_setting('is_superuser') = 'on'");
  if (!s.ok()) return s.WithContext(side + " database " + db);
  return std::move(*c);
}

// The conninfo a subscription on one server uses to reach the other: the DSN pgshift was
// given, for database `db`, with the password pgshift authenticated with (the server has no
// access to our pgpass file).
Result<std::string> SubscriptionConnInfo(const std::string& dsn, const std::string& db,
                                         const pg::Connection& authenticated) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo info, pg::ConnInfo::Parse(dsn));
  info.Set("dbname", db);
  info.Erase("passfile");
  info.Erase("application_name");
  std::string pw = authenticated.Password();
  if (!pw.empty()) info.Set("password", pw);
  return info.ToString();
}

Result<Endpoint> EndpointOf(const std::string& dsn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo info, pg::ConnInfo::Parse(dsn));
  long long port = 5432;
  if (!ParseInt64(info.port(), &port)) {
    return Status::InvalidArgument("bad port in " + info.Redacted());
  }
  return Endpoint{info.Get("hostaddr", info.host()), static_cast<int>(port)};
}

std::string Ms(double ms) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.1f", ms);
  return buf;
}

bool Exists(pg::Connection& c, const std::string& sql, const std::string& name) {
  auto r = c.Query(sql, {name});
  return r.ok() && r->rows() > 0;
}


// Drops a replication slot if it exists and no one uses it.
Status DropSlotIfIdle(pg::Connection& c, const std::string& slot) {
  auto r = c.Query(
      "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
      "WHERE slot_name = $1 AND NOT active",
      {slot});
  return r.ok() ? Status::Ok() : r.status();
}

// DROP SUBSCRIPTION, also when the other side is gone: detach the slot first then.
Status DropSubscription(pg::Connection& c, const std::string& name) {
  if (!Exists(c, kHasSubscription, name)) return Status::Ok();
  std::string q = c.QuoteIdent(name);
  (void)c.Exec("ALTER SUBSCRIPTION " + q + " DISABLE");
  Status s = c.Exec("DROP SUBSCRIPTION " + q);
  if (s.ok()) return s;
  LogWarn("dropping subscription " + name + " without its remote slot: " + s.message());
  PGSHIFT_RETURN_IF_ERROR(c.Exec("ALTER SUBSCRIPTION " + q + " SET (slot_name = NONE)"));
  return c.Exec("DROP SUBSCRIPTION " + q);
}

// After a switch by a router that cannot hold clients (nginx, a Kubernetes Service), new
// connections reach the new side only once every proxy applied the change (kube-proxy on
// every node, asynchronously); clients that reconnect before that land on the old, fenced
// side and would stay there, failing every write. Their sessions are ended until none has
// appeared for `quiet_ms` (at most `max_ms`), so they reconnect until they reach the new side.
void DrainOldSide(pg::Connection& old_side, const std::vector<std::string>& dbs,
                  const std::vector<int>& keep_pids, int64_t quiet_ms, int64_t max_ms) {
  const int64_t start = MonotonicMillis();
  int64_t quiet_since = start;
  while (MonotonicMillis() - start < max_ms && MonotonicMillis() - quiet_since < quiet_ms) {
    auto n = EndClientSessions(old_side, dbs, keep_pids, MonotonicMillis() + 1000);
    if (!n.ok()) return;
    if (*n > 0) quiet_since = MonotonicMillis();
    SleepMillis(50);
  }
}

Status AdvanceSlotToNow(pg::Connection& c, const std::string& slot) {
  return c.Query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", {slot}).status();
}

// The reverse subscription on the source, reading the slot made on the target during the
// cutover: no copy, no new slot.
Status CreateReverseSubscription(pg::Connection& source, const pg::Connection& target,
                                 const std::string& target_dsn, const std::string& db,
                                 const std::string& name) {
  if (Exists(source, kHasSubscription, name)) return Status::Ok();
  PGSHIFT_ASSIGN_OR_RETURN(std::string conninfo, SubscriptionConnInfo(target_dsn, db, target));
  return source.Exec("CREATE SUBSCRIPTION " + source.QuoteIdent(name) + " CONNECTION " +
                     source.QuoteLiteral(conninfo) + " PUBLICATION " + source.QuoteIdent(name) +
                     " WITH (copy_data = false, create_slot = false, " +
                     (source.ServerMajor() >= 17 && target.ServerMajor() >= 17 ? "failover = true, "
                                                                                : "") +
                     "slot_name = " + source.QuoteLiteral(name) + ")");
}

Result<SyncCounts> SubscriptionSync(pg::Connection& target, const std::string& sub) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      target.Query("SELECT count(*) FILTER (WHERE sr.srsubstate = 'r'), count(*) "
                   "FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid "
                   "WHERE s.subname = $1",
                   {sub}));
  long long ready = 0, total = 0;
  if (!ParseInt64(r.Get(0, 0), &ready) || !ParseInt64(r.Get(0, 1), &total)) {
    return Status::Internal("unexpected table counts of subscription " + sub);
  }
  return SyncCounts{static_cast<int>(ready), static_cast<int>(total)};
}

Result<std::vector<std::pair<std::string, std::string>>> TableSyncStates(pg::Connection& target,
                                                                         const std::string& sub) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      target.Query("SELECT format('%I.%I', n.nspname, c.relname), sr.srsubstate "
                   "FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid "
                   "JOIN pg_class c ON c.oid = sr.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE s.subname = $1 ORDER BY 1",
                   {sub}));
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 0; i < r.rows(); ++i) {
    static const std::map<std::string, std::string> kStates = {
        {"i", "initializing"}, {"d", "copying"}, {"f", "copied"},
        {"s", "synchronized"}, {"r", "ready"}};
    auto it = kStates.find(r.Get(i, 1));
    out.emplace_back(r.Get(i, 0), it == kStates.end() ? r.Get(i, 1) : it->second);
  }
  return out;
}

Result<std::vector<std::pair<std::string, std::string>>> OwnCopyTableStates(pg::Connection& target) {
  std::vector<std::pair<std::string, std::string>> out;
  PGSHIFT_ASSIGN_OR_RETURN(std::string exists,
                           target.QueryValue("SELECT to_regclass('_pgshift.copy_range') IS NOT NULL"));
  if (exists != "t") return out;
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      target.Query("SELECT format('%I.%I', schema_name, table_name), count(*) FILTER (WHERE done), "
                   "count(*) FROM _pgshift.copy_range GROUP BY 1 ORDER BY 1"));
  for (int i = 0; i < r.rows(); ++i) {
    const std::string done = r.Get(i, 1), total = r.Get(i, 2);
    out.emplace_back(r.Get(i, 0), done == total ? "ready"
                                  : done == "0" ? "waiting"
                                                : "copying " + done + "/" + total + " ranges");
  }
  return out;
}

// Copies every sequence's position from `from` to `to` in one round trip each way.
Status SyncSequences(pg::Connection& from, pg::Connection& to) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      from.Query("SELECT coalesce(array_agg(schemaname ORDER BY 1, 2)::text, '{}'), "
                 "coalesce(array_agg(sequencename ORDER BY 1, 2)::text, '{}'), "
                 "coalesce(array_agg(last_value ORDER BY 1, 2)::text, '{}') "
                 "FROM pg_sequences WHERE last_value IS NOT NULL "
                 "AND schemaname NOT IN ('_pgshift')"));
  if (r.Get(0, 0) == "{}") return Status::Ok();
  auto s = to.Query(
      "SELECT count(setval(format('%I.%I', s, n)::regclass, v, true)) "
      "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(s, n, v)",
      {r.Get(0, 0), r.Get(0, 1), r.Get(0, 2)});
  return s.ok() ? Status::Ok() : s.status().WithContext("setting sequences");
}

namespace {

// WAL of the server at `dsn` not yet confirmed through its slot `slot`; -1 when it is gone.
Result<int64_t> SlotLagBytes(const std::string& dsn, const std::string& database,
                             const std::string& side, const std::string& slot) {
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr c, Connect(dsn, database, side));
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      c->Query("SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint "
               "FROM pg_replication_slots WHERE slot_name = $1",
               {slot}));
  if (r.rows() == 0) return int64_t{-1};
  long long lag = 0;
  if (!ParseInt64(r.Get(0, 0), &lag)) return Status::Internal("unexpected lag of slot " + slot);
  return std::max<int64_t>(0, lag);
}

}  // namespace

Result<int64_t> ForwardLagBytes(const MigrationState& s, const DatabaseState& db) {
  return SlotLagBytes(s.source_dsn, db.name, "source", s.SubscriptionName(db));
}

Result<int64_t> ReverseLagBytes(const MigrationState& s, const DatabaseState& db) {
  return SlotLagBytes(s.target_dsn, db.name, "target", s.ReverseName(db));
}

}  // namespace pgshift::engine
