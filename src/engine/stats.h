// Live figures of one running migration, for metrics, progress bars, the history file and the
// operator's status. The orchestrator writes them as it works; readers take a snapshot from
// any thread. A figure that was never measured, or whose last measurement is older than
// `kStaleAfterMs`, is reported as unknown (nullopt), never as a stale value.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace pgshift::engine {

inline constexpr int64_t kStaleAfterMs = 5000;

// One value with the time (MonotonicMillis) it was measured.
struct Measured {
  double value = 0;
  int64_t at_ms = -1;  // -1: never measured
};

struct DatabaseStats {
  Measured lag_bytes;    // source WAL not yet confirmed by the target's subscription
  Measured lag_seconds;  // age of the oldest change not yet applied (0 when caught up)
  Measured tables_total;
  Measured tables_synced;  // pg_subscription_rel state 'r' (or 's')
  Measured bytes_copied;   // initial copy: bytes of tables already copied plus COPY in flight
  Measured bytes_total;    // initial copy: size of every published table on the source
  Measured rows_copied;
  // Failed attempts of the subscription's workers since it was made (PostgreSQL 15+:
  // pg_stat_subscription_stats), and tables whose copy failed and waits for its retry.
  Measured sync_errors;
  Measured apply_errors;
  Measured tables_retrying;
  // pgshift's own copy (CopyMethod::kSnapshot): pieces of tables, done of all.
  Measured ranges_total;
  Measured ranges_done;
  // Conflicts the apply worker counted, by type (PostgreSQL 18+: confl_* of
  // pg_stat_subscription_stats), and whether the subscription is enabled (1) or was disabled
  // (0: by hand, or by disable_on_error): nothing replicates then.
  std::map<std::string, Measured> conflicts;
  Measured subscription_enabled;
  // WAL the source keeps for the migration's slot (pg_current_wal_lsn() - restart_lsn), and
  // the slot's wal_status (13+; "" before) measured with it (wal_retention.h).
  Measured retained_wal_bytes;
  std::string wal_status;
  // After cutover (RollbackReady): target WAL not yet confirmed by reverse replication.
  Measured reverse_lag_bytes;
};

struct StatsSnapshot {
  std::string migration_id;
  std::string phase;  // PhaseName
  int64_t phase_entered_unix_ms = 0;
  bool ready_for_cutover = false;
  std::map<std::string, DatabaseStats> databases;  // by database name
  // Verification.
  int64_t verify_tables_total = 0;
  int64_t verify_tables_done = 0;
  int64_t verify_mismatches = 0;
  // Cutover.
  int64_t cutover_attempts = 0;        // forward and rollback, failed ones included
  int64_t cutover_failures = 0;
  std::optional<double> last_pause_ms;  // the last successful cutover or rollback
  int64_t ddl_events = 0;               // DDL after the schema copy that cannot be carried
  // Catch-up ("when can sync end?"): how fast the total lag falls (bytes/s; negative: it
  // grows) and the seconds until it is under the cutover threshold at that pace (LagTrend).
  // Measured only while catching up or ready; `lag_stalled`: measured and not falling.
  Measured lag_drain_bytes_per_s;
  Measured ready_in_s;
  bool lag_stalled = false;
  std::map<std::string, int64_t> errors;  // by kind: "connection", "precondition", ...
  int64_t now_ms = 0;                     // MonotonicMillis when the snapshot was taken

  // The value when it was measured within kStaleAfterMs of now_ms.
  std::optional<double> Fresh(const Measured& m) const {
    if (m.at_ms < 0 || now_ms - m.at_ms > kStaleAfterMs) return std::nullopt;
    return m.value;
  }
  // The sum of one figure over every database; unknown when there is none, or when any
  // database's value is not fresh.
  std::optional<double> Total(Measured DatabaseStats::*field) const {
    if (databases.empty()) return std::nullopt;
    double total = 0;
    for (const auto& [name, db] : databases) {
      std::optional<double> v = Fresh(db.*field);
      if (!v) return std::nullopt;
      total += *v;
    }
    return total;
  }
};

// Thread-safe holder: the orchestrator updates, anyone snapshots.
class StatsBoard {
 public:
  template <typename F>
  void Update(F&& f) {
    std::lock_guard<std::mutex> lock(mu_);
    f(s_);
  }
  StatsSnapshot Snapshot(int64_t now_ms) const {
    std::lock_guard<std::mutex> lock(mu_);
    StatsSnapshot copy = s_;
    copy.now_ms = now_ms;
    return copy;
  }

 private:
  mutable std::mutex mu_;
  StatsSnapshot s_;
};

}  // namespace pgshift::engine
