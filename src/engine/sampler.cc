#include "engine/sampler.h"

#include "engine/ddl_carry.h"

#include <algorithm>

#include "common/clock.h"
#include "common/strings.h"
#include "engine/replication_health.h"
#include "engine/wal_retention.h"
#include "engine/inspect.h"
#include "pg/conninfo.h"

namespace pgshift::engine {

namespace {

// Lag of the subscription's slot, the walsender's own lag times, and DDL recorded after the
// schema copy that pgshift cannot carry (ddl_carry.h). lag_seconds: the walsender reports NULL
// lag times once the subscriber caught up and WAL is idle, so NULL with a walsender present is
// 0; no walsender at all (replication not running) is unknown.
constexpr const char* kSourceSql = R"SQL(
SELECT (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
          FROM pg_replication_slots WHERE slot_name = $1) AS lag_bytes,
       (SELECT extract(epoch FROM coalesce(replay_lag, flush_lag, write_lag, interval '0'))::float8
          FROM pg_stat_replication WHERE application_name = $1
          ORDER BY backend_start DESC LIMIT 1) AS lag_seconds,
       (SELECT count(*) FROM _pgshift.ddl_log WHERE id > $2::bigint AND statement IS NULL
          AND tag IS DISTINCT FROM $3) AS ddl
)SQL";

constexpr const char* kSourceSizesSql = R"SQL(
SELECT format('%I.%I', schemaname, tablename),
       pg_table_size(format('%I.%I', schemaname, tablename)::regclass)
FROM pg_publication_tables WHERE pubname = $1 AND schemaname <> '_pgshift'
)SQL";

constexpr const char* kTargetTablesSql = R"SQL(
SELECT format('%I.%I', n.nspname, c.relname), sr.srsubstate, coalesce(st.n_live_tup, 0)
FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
JOIN pg_class c ON c.oid = sr.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
WHERE s.subname = $1 AND n.nspname <> '_pgshift'
)SQL";

// COPY in flight by the subscription's table-sync workers (PostgreSQL 14 and later).
constexpr const char* kTargetCopySql = R"SQL(
SELECT coalesce(sum(p.bytes_processed), 0)::bigint, coalesce(sum(p.tuples_processed), 0)::bigint
FROM pg_stat_progress_copy p
WHERE p.datname = current_database() AND p.relid IN (
  SELECT sr.srrelid FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid
  WHERE s.subname = $1 AND sr.srsubstate = 'd')
)SQL";

bool Sampled(Phase p) { return p >= Phase::kInitialCopy && p <= Phase::kCuttingOver; }

// A number from a server's answer; a NULL (empty) or odd cell counts as 0 in a sample.
double ToDouble(const std::string& s) {
  double v = 0;
  return ParseDouble(s, &v) ? v : 0;
}

}  // namespace

Result<pg::Connection*> StatsSampler::Conn(const std::string& dsn, const std::string& db,
                                           bool source) {
  std::string key = (source ? "s:" : "t:") + db;
  auto it = conns_.find(key);
  if (it != conns_.end() && !it->second->broken()) return it->second.get();
  conns_.erase(key);
  PGSHIFT_ASSIGN_OR_RETURN(std::string d, pg::DsnForDatabase(dsn, db));
  auto c = pg::Connection::Connect(d, 2, "pgshift");
  if (!c.ok()) return c.status().WithContext(std::string(source ? "source" : "target") + " " + db);
  // A sample never holds the engine up for long, and never writes.
  PGSHIFT_RETURN_IF_ERROR(
      (*c)->Exec("SET statement_timeout = '5s'; SET lock_timeout = '1s'; "
                 "SET default_transaction_read_only = on"));
  pg::Connection* raw = c->get();
  conns_[key] = std::move(*c);
  return raw;
}

Status StatsSampler::Sample(const MigrationState& state, StatsBoard* board) {
  if (state.phase == Phase::kRollbackReady && state.options.rollback_replication) {
    return SampleReverse(state, board);
  }
  if (!Sampled(state.phase)) return Status::Ok();
  Status first;
  int64_t ddl_events = 0;
  bool ddl_known = true;
  for (const auto& db : state.databases) {
    int64_t ddl = 0;
    Status s = SampleDatabase(state, db, board, &ddl);
    if (!s.ok()) {
      // The connection may be the problem: make a new one next time.
      conns_.erase("s:" + db.name);
      conns_.erase("t:" + db.name);
      if (first.ok()) first = s;
      ddl_known = false;
    }
    ddl_events += ddl;
  }
  if (ddl_known) {
    // A counter: deleting log rows (the documented remedy) does not make it go down.
    board->Update([&](StatsSnapshot& s) { s.ddl_events = std::max(s.ddl_events, ddl_events); });
  }
  return first;
}

Status StatsSampler::SampleDatabase(const MigrationState& state, const DatabaseState& db,
                                    StatsBoard* board, int64_t* ddl_events) {
  const std::string sub = state.SubscriptionName(db);
  PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * src, Conn(state.source_dsn, db.name, true));
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult lag,
                           src->Query(kSourceSql,
                                      {sub, std::to_string(db.ddl_mark), kCarryFromHereTag}));
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult sizes,
                           src->Query(kSourceSizesSql, {state.PublicationName(db)}));
  PGSHIFT_ASSIGN_OR_RETURN(SlotRetention retention, ReadSlotRetention(*src, sub));
  const int64_t src_at = MonotonicMillis();
  PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * dst, Conn(state.target_dsn, db.name, false));
  PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult tables, dst->Query(kTargetTablesSql, {sub}));
  double copy_bytes = 0, copy_rows = 0;
  if (dst->ServerMajor() >= 14) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::QueryResult copy, dst->Query(kTargetCopySql, {sub}));
    copy_bytes = ToDouble(copy.Get(0, 0));
    copy_rows = ToDouble(copy.Get(0, 1));
  }
  PGSHIFT_ASSIGN_OR_RETURN(ReplicationFacts workers, ReadReplicationFacts(*dst, sub));
  const int64_t at = MonotonicMillis();

  std::map<std::string, double> size_of;
  double bytes_total = 0;
  for (int i = 0; i < sizes.rows(); ++i) {
    double sz = ToDouble(sizes.Get(i, 1));
    size_of[sizes.Get(i, 0)] = sz;
    bytes_total += sz;
  }
  double synced = 0, copied_bytes = 0, copied_rows = 0;
  for (int i = 0; i < tables.rows(); ++i) {
    const std::string st = tables.Get(i, 1);
    if (st == "s" || st == "r") synced += 1;
    if (st == "f" || st == "s" || st == "r") {
      auto it = size_of.find(tables.Get(i, 0));
      if (it != size_of.end()) copied_bytes += it->second;
      copied_rows += ToDouble(tables.Get(i, 2));
    }
  }
  // COPY's byte count is of its text input, not of the table on disk: an estimate, capped so
  // that copied never exceeds the total.
  copied_bytes = std::min(bytes_total, copied_bytes + copy_bytes);
  copied_rows += copy_rows;
  *ddl_events = static_cast<int64_t>(ToDouble(lag.Get(0, 2)));

  // pgshift's own copy publishes these figures itself until the subscription exists (it has
  // no tables before): leave them to it.
  const bool copier_reports = state.options.copy == CopyMethod::kSnapshot && tables.rows() == 0;
  board->Update([&](StatsSnapshot& s) {
    DatabaseStats& d = s.databases[db.name];
    if (retention.found) {
      d.retained_wal_bytes = {static_cast<double>(retention.retained_bytes), src_at};
      d.wal_status = retention.wal_status;
    }
    if (!lag.IsNull(0, 0)) {
      double bytes = std::max(0.0, ToDouble(lag.Get(0, 0)));
      d.lag_bytes = {bytes, src_at};
      if (bytes == 0) {
        d.lag_seconds = {0, src_at};
      } else if (!lag.IsNull(0, 1)) {
        d.lag_seconds = {ToDouble(lag.Get(0, 1)), src_at};
      }
    }
    if (copier_reports) return;
    d.tables_total = {static_cast<double>(tables.rows()), at};
    d.tables_synced = {synced, at};
    d.bytes_total = {bytes_total, at};
    d.bytes_copied = {copied_bytes, at};
    d.rows_copied = {copied_rows, at};
    if (workers.sync_errors) d.sync_errors = {static_cast<double>(*workers.sync_errors), at};
    if (workers.apply_errors) d.apply_errors = {static_cast<double>(*workers.apply_errors), at};
    d.tables_retrying = {static_cast<double>(workers.retrying.size()), at};
    for (const auto& [type, n] : workers.conflicts) d.conflicts[type] = {static_cast<double>(n), at};
    if (workers.found) d.subscription_enabled = {workers.enabled ? 1.0 : 0.0, at};
    if (state.options.copy == CopyMethod::kSnapshot && d.ranges_total.at_ms >= 0) {
      // Replicating: every range of the copy is done (and stays so).
      d.ranges_done = {d.ranges_total.value, at};
      d.ranges_total.at_ms = at;
    }
  });
  return Status::Ok();
}

Status StatsSampler::SampleReverse(const MigrationState& state, StatsBoard* board) {
  for (const auto& db : state.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * dst, Conn(state.target_dsn, db.name, false));
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult r,
        dst->Query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                   "FROM pg_replication_slots WHERE slot_name = $1",
                   {state.ReverseName(db)}));
    if (r.rows() == 0 || r.IsNull(0, 0)) continue;
    const double lag = std::max(0.0, ToDouble(r.Get(0, 0)));
    const int64_t at = MonotonicMillis();
    board->Update([&](StatsSnapshot& s) { s.databases[db.name].reverse_lag_bytes = {lag, at}; });
  }
  return Status::Ok();
}

Result<int64_t> StatsSampler::CountVerifiedTables(const MigrationState& state) {
  int64_t total = 0;
  for (const auto& db : state.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(pg::Connection * src, Conn(state.source_dsn, db.name, true));
    PGSHIFT_ASSIGN_OR_RETURN(std::vector<TableInfo> tables, ListTables(*src));
    total += std::count_if(tables.begin(), tables.end(), IsMigrated);
  }
  return total;
}

}  // namespace pgshift::engine
