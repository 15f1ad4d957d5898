#include "obs/metrics.h"

#include <prometheus/text_serializer.h>

#include <sstream>

#include "engine/state.h"

namespace pgshift::obs {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Builds one family; samples are added with Add(labels, value).
class Family {
 public:
  Family(std::string name, std::string help, MetricType type) {
    f_.name = std::move(name);
    f_.help = std::move(help);
    f_.type = type;
  }
  void Add(const Labels& labels, double value) {
    ClientMetric m;
    for (const auto& [k, v] : labels) m.label.push_back({k, v});
    if (f_.type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    f_.metric.push_back(std::move(m));
  }
  void Add(const Labels& labels, const std::optional<double>& value) {
    if (value) Add(labels, *value);
  }
  MetricFamily Take() { return std::move(f_); }

 private:
  MetricFamily f_;
};

Labels With(Labels l, const std::string& key, const std::string& value) {
  l[key] = value;
  return l;
}

}  // namespace

std::vector<MetricFamily> MigrationFamilies(const std::vector<MigrationMetrics>& migrations) {
  const auto G = MetricType::Gauge;
  const auto C = MetricType::Counter;
  Family phase("pgshift_phase", "1 for the migration's current phase, 0 for the others", G);
  Family entered("pgshift_phase_entered_timestamp_seconds",
                 "Unix time the current phase was entered", G);
  Family ready("pgshift_ready_for_cutover",
               "1 when every cutover precondition holds (tables replicating, lag under the "
               "threshold, no DDL, verification clean)",
               G);
  Family max_lag("pgshift_cutover_max_lag_bytes",
                 "Replication lag under which cutover may start (--max-lag)", G);
  Family max_pause("pgshift_cutover_max_pause_seconds",
                   "Longest time the cutover may hold clients (--max-pause)", G);
  Family lag_bytes("pgshift_replication_lag_bytes",
                   "Source WAL not yet confirmed by the target's subscription", G);
  Family lag_seconds("pgshift_replication_lag_seconds",
                     "Replication delay reported by the source's walsender (replay lag); 0 when "
                     "caught up; absent when replication is not running",
                     G);
  Family drain("pgshift_replication_lag_drain_bytes_per_second",
               "How fast the total replication lag falls while catching up (a least-squares fit "
               "over the last 30 s; negative: it grows)",
               G);
  Family ready_in("pgshift_cutover_ready_in_seconds",
                  "Estimated seconds until the lag is under the cutover threshold at the pace "
                  "measured (0: it is); absent when not catching up or the lag is not falling",
                  G);
  Family tables("pgshift_tables", "Tables replicated by the migration's subscription", G);
  Family synced("pgshift_tables_synced",
                "Tables whose initial copy finished and that replicate (state s or r)", G);
  Family copy_size("pgshift_copy_size_bytes",
                   "Initial copy: on-disk size of every published table on the source", G);
  Family copied_bytes(
      "pgshift_copied_bytes",
      "Initial copy: source size of the tables already copied plus the bytes of COPY in flight "
      "on the target (PostgreSQL 14+); an estimate",
      G);
  Family copied_rows("pgshift_copied_rows",
                     "Initial copy: live rows of the copied tables on the target plus rows of "
                     "COPY in flight; an estimate",
                     G);
  Family worker_errors("pgshift_replication_worker_errors_total",
                       "Failed attempts of the subscription's table sync and apply workers "
                       "(pg_stat_subscription_stats, PostgreSQL 15+ targets)",
                       C);
  Family conflicts("pgshift_replication_conflicts_total",
                   "Conflicts the subscription's apply worker met, by type (PostgreSQL 18+ "
                   "targets); any blocks the cutover",
                   C);
  Family enabled("pgshift_subscription_enabled",
                 "1 while the subscription into the target is enabled, 0 when it was disabled "
                 "(nothing replicates)",
                 G);
  Family retained("pgshift_source_retained_wal_bytes",
                  "WAL the source keeps for the migration's replication slot (current LSN minus "
                  "the slot's restart_lsn); --max-retained-wal stops pgshift past it",
                  G);
  Family reverse_lag("pgshift_reverse_replication_lag_bytes",
                      "After cutover: target WAL not yet confirmed by reverse replication to the "
                      "source (what a rollback would wait for)",
                      G);
  Family retrying("pgshift_tables_retrying",
                  "Tables whose initial copy failed and waits for the subscription's retry", G);
  Family ranges("pgshift_copy_ranges",
                "pgshift's own copy (--copy snapshot): pieces the tables were cut into", G);
  Family ranges_done("pgshift_copy_ranges_done",
                     "pgshift's own copy: pieces whose rows are committed on the target", G);
  Family verify_tables("pgshift_verify_tables", "Tables the verification compares", G);
  Family verify_done("pgshift_verify_tables_done", "Tables whose verification finished", G);
  Family verify_mismatches("pgshift_verify_mismatches", "Tables that differ after verification", G);
  Family attempts("pgshift_cutover_attempts_total",
                  "Cutover and rollback attempts started (failed ones included)", C);
  Family failures("pgshift_cutover_failures_total",
                  "Cutover and rollback attempts undone (traffic stayed where it was)", C);
  Family last_pause("pgshift_cutover_last_pause_seconds",
                    "How long the last successful cutover or rollback held clients", G);
  Family ddl("pgshift_ddl_events_total",
             "DDL statements recorded on the source after the schema copy that pgshift cannot "
             "carry to the target (they block cutover)",
             C);
  Family errors("pgshift_errors_total", "Errors that stopped a step, by kind (status code)", C);

  for (const MigrationMetrics& m : migrations) {
    const engine::StatsSnapshot& s = m.stats;
    const Labels& l = m.labels;
    for (int p = 0; p <= static_cast<int>(engine::Phase::kAborted); ++p) {
      std::string name = engine::PhaseName(static_cast<engine::Phase>(p));
      phase.Add(With(l, "phase", name), name == s.phase ? 1.0 : 0.0);
    }
    if (s.phase_entered_unix_ms > 0) entered.Add(l, s.phase_entered_unix_ms / 1000.0);
    ready.Add(l, s.ready_for_cutover ? 1.0 : 0.0);
    if (m.extra.max_lag_bytes) max_lag.Add(l, static_cast<double>(*m.extra.max_lag_bytes));
    if (m.extra.max_pause_ms) max_pause.Add(l, *m.extra.max_pause_ms / 1000.0);
    drain.Add(l, s.Fresh(s.lag_drain_bytes_per_s));
    ready_in.Add(l, s.Fresh(s.ready_in_s));
    for (const auto& [db, d] : s.databases) {
      Labels dl = With(l, "database", db);
      lag_bytes.Add(dl, s.Fresh(d.lag_bytes));
      lag_seconds.Add(dl, s.Fresh(d.lag_seconds));
      tables.Add(dl, s.Fresh(d.tables_total));
      synced.Add(dl, s.Fresh(d.tables_synced));
      copy_size.Add(dl, s.Fresh(d.bytes_total));
      copied_bytes.Add(dl, s.Fresh(d.bytes_copied));
      copied_rows.Add(dl, s.Fresh(d.rows_copied));
      worker_errors.Add(With(dl, "worker", "table_sync"), s.Fresh(d.sync_errors));
      worker_errors.Add(With(dl, "worker", "apply"), s.Fresh(d.apply_errors));
      for (const auto& [type, n] : d.conflicts) conflicts.Add(With(dl, "type", type), s.Fresh(n));
      enabled.Add(dl, s.Fresh(d.subscription_enabled));
      retained.Add(dl, s.Fresh(d.retained_wal_bytes));
      reverse_lag.Add(dl, s.Fresh(d.reverse_lag_bytes));
      retrying.Add(dl, s.Fresh(d.tables_retrying));
      ranges.Add(dl, s.Fresh(d.ranges_total));
      ranges_done.Add(dl, s.Fresh(d.ranges_done));
    }
    if (s.verify_tables_total > 0 || s.verify_tables_done > 0) {  // absent until it starts
      verify_tables.Add(l, static_cast<double>(s.verify_tables_total));
      verify_done.Add(l, static_cast<double>(s.verify_tables_done));
      verify_mismatches.Add(l, static_cast<double>(s.verify_mismatches));
    }
    attempts.Add(l, static_cast<double>(s.cutover_attempts));
    failures.Add(l, static_cast<double>(s.cutover_failures));
    if (s.last_pause_ms) last_pause.Add(l, *s.last_pause_ms / 1000.0);
    ddl.Add(l, static_cast<double>(s.ddl_events));
    for (const auto& [kind, n] : s.errors)
      errors.Add(With(l, "kind", kind), static_cast<double>(n));
  }

  std::vector<MetricFamily> out;
  for (Family* f : {&phase,        &entered,     &ready,         &max_lag,     &max_pause,
                    &lag_bytes,    &lag_seconds, &drain,         &ready_in,    &tables,        &synced,      &copy_size,
                    &copied_bytes, &copied_rows, &worker_errors, &conflicts, &enabled, &retained, &reverse_lag, &retrying,     &ranges, &ranges_done,
                    &verify_tables, &verify_done, &verify_mismatches,
                    &attempts,     &failures,    &last_pause,    &ddl,         &errors}) {
    out.push_back(f->Take());
  }
  return out;
}

std::string RenderText(const std::vector<MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

std::vector<MetricFamily> MigrationCollector::Collect() const {
  return MigrationFamilies(source_ ? source_() : std::vector<MigrationMetrics>{});
}

}  // namespace pgshift::obs
