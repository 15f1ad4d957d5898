// Is replication into the target moving, or do its workers fail over and over?
//
// A table sync or apply worker that hits an error (a row a constraint refuses, a missing
// column, a lost connection) exits; the subscription starts another one about every
// wal_retrieve_retry_interval (5 s by default), for ever, and the error text goes to the
// server log only: no catalog view keeps it. What can be seen from SQL on the subscriber:
//   - pg_stat_subscription_stats (PostgreSQL 15+): sync_error_count and apply_error_count;
//   - pg_subscription_rel: a table in state 'd' (copying) with no table sync worker in
//     pg_stat_subscription is waiting for its retry after a failed attempt (from 14 on the
//     state is committed before the copy starts, so a failure leaves it there);
//   - pg_stat_subscription: worker pids; a new pid for the same table or for the apply
//     worker is a restart (the only signal before 15);
//   - the server log, where the role may read it (superuser or pg_read_server_files):
//     pg_current_logfile() when the logging collector runs, else the server's own stderr
//     when it is a regular file (/proc/self/fd/2 on Linux, as `pg_ctl -l FILE` leaves it).
// Everything here only reads. ReplicationWatch turns repeated failures into an error naming
// the table (or the apply worker), how often it failed and the server's own message; the
// initial copy's wait and the catch-up's wait both call it, so a stall ends the step within
// seconds, with the reason, instead of a progress line that never moves.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

// One subscription at one moment, as the target (its database) shows it.
struct ReplicationFacts {
  bool found = false;    // the subscription exists
  bool enabled = false;
  std::optional<int64_t> sync_errors;   // pg_stat_subscription_stats (15+)
  std::optional<int64_t> apply_errors;
  // Conflicts the apply worker met, by type ("insert_exists", "update_missing", ...), from
  // pg_stat_subscription_stats' confl_* columns (18+; empty before). Some stop the apply
  // worker (they are apply errors too); update_missing and delete_missing are skipped
  // silently, so the target no longer holds what the source holds.
  std::map<std::string, int64_t> conflicts;
  int apply_pid = 0;                    // 0: no apply worker running
  std::map<std::string, int> sync_pids;  // "schema.table" -> its running table sync worker
  // Tables in state 'd' without a running sync worker: a failed copy waiting for its retry.
  std::vector<std::string> retrying;
  std::vector<std::string> not_ready;   // every table not in state 'r' or 's'
};
Result<ReplicationFacts> ReadReplicationFacts(pg::Connection& target, const std::string& sub);

// The last lines of the server log `c` is connected to, where the role may read them; else
// an error saying why and where to look instead.
Result<std::string> ReadServerLogTail(pg::Connection& c, int64_t bytes = 256 * 1024);

// An error a replication worker of one subscription logged, with its DETAIL, HINT and CONTEXT.
struct WorkerLogError {
  std::string table;  // the table its sync worker copied (as logged: unqualified); "" = apply
  std::string text;
};
// The last error of each worker of subscription `sub` that exited with an error, found in
// `log`: workers are told apart by the PID that both their "has started" line and the
// postmaster's "exited with exit code 1" line name, which log_line_prefix's %p (the default)
// also puts before each of their lines. Without %p, falls back to errors whose CONTEXT names
// one of `tables` (unqualified, as COPY's context does). Latest last. Pure, for tests.
std::vector<WorkerLogError> FindWorkerErrors(const std::string& log, const std::string& sub,
                                             const std::vector<std::string>& tables);

// Watches the subscriptions of one migration across calls. Not thread-safe.
class ReplicationWatch {
 public:
  // A worker is stalled once it failed `failures_for_stall` times within `window_ms`: a
  // worker that fails for good fails about every 5 s, one that failed once and then worked
  // (or was fixed) drops out of the window.
  explicit ReplicationWatch(int failures_for_stall = 2, int64_t window_ms = 30000)
      : failures_for_stall_(failures_for_stall), window_ms_(window_ms) {}

  // Observes subscription `sub` of database `database` through `target` (a session on that
  // database). Ok while every worker works, or has failed fewer times than the threshold; a
  // FailedPrecondition error naming the stalled table(s) or the apply worker, the number of
  // failed attempts and the server's message (or where to find it) once it has. A disabled
  // subscription is an error at once, and so is any conflict the apply worker counted since
  // the subscription began (18+): a skipped change means the target differs from the source.
  Status Observe(pg::Connection& target, const std::string& database, const std::string& sub);

 private:
  struct Counters {
    int64_t at_ms = 0;
    std::optional<int64_t> sync, apply;  // pg_stat_subscription_stats (15+)
  };
  struct Seen {
    std::deque<Counters> counters;  // observations within the window, oldest first
    std::map<std::string, int> sync_pid;                       // last sync worker per table
    std::map<std::string, std::deque<int64_t>> sync_restarts;  // when a new pid appeared
    int apply_pid = 0;
    std::deque<int64_t> apply_restarts;
    std::map<std::string, int64_t> retrying_since;  // first seen waiting for a retry
    int64_t apply_missing_since = 0;                // 0: an apply worker runs
  };
  int failures_for_stall_;
  int64_t window_ms_;
  std::map<std::string, Seen> seen_;  // by subscription
};

// "update_missing 3, insert_exists 1" of the counters above 0; empty when none.
std::string DescribeConflicts(const std::map<std::string, int64_t>& conflicts);

// What `pgshift status` shows of a subscription's workers: counters, tables waiting for a
// retry, and the errors the log holds for them (or why it cannot be read).
struct WorkerTrouble {
  bool enabled = true;
  std::optional<int64_t> sync_errors, apply_errors;
  std::map<std::string, int64_t> conflicts;  // 18+, the counters above 0
  std::vector<std::string> retrying;
  std::vector<WorkerLogError> log_errors;
  std::string log_note;  // why the log could not be read; empty when it was (or not needed)
};
Result<WorkerTrouble> DescribeWorkerTrouble(pg::Connection& target, const std::string& sub);

}  // namespace pgshift::engine
