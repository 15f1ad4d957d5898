// verify: compares the data of a source and a target database, table by table, by row count
// or by an order-independent checksum of every row, computed in SQL on each server. Read-only
// on both servers: no temporary tables, every session read-only.
//
// Tables compared: IsMigrated (inspect.h) decides, the one filter pgshift has: ordinary tables
// and leaf partitions (read with FROM ONLY) of every user schema, `_pgshift_archive` included,
// pgshift's own `_pgshift` not. Unlogged tables are listed as skipped (logical replication
// does not carry them).
//
// How: a table with a key (its primary key, else its replica identity index) is cut into
// ranges of its key (about `chunk_rows` rows each, cut points from a page sample of the
// source) whose predicates are typed comparisons of the key columns, so the key's index serves
// them. Each range is hashed on both servers at once; several workers (`jobs`) take ranges of
// every table in parallel. A range that differs is cut again, and only its parts that differ
// are read further, down to ranges of at most `leaf_rows` rows whose rows (key, version, hash)
// are read and compared; the keys that differ are then read by key. A table without a key is
// compared as a whole (count and sum of row hashes).
//
// Client memory is bounded whatever the table's size or the writes it takes: every query
// returns one row per range or at most `leaf_rows` rows (about 2 x leaf_rows rows of key,
// version and hash per worker at a time), and at most kMaxTrackedKeys keys per table are
// followed. With the defaults (4 workers, 2,048-row leaves, 4,096 keys) and keys under 100
// bytes that is well under 10 MB.
//
// Two modes:
//  - Convergence (VerifyDatabases, before cutover, replication running): reads are live. A
//    differing key is read again for up to `max_rounds` rounds, source, then `settle` (the
//    target applies everything committed so far), then target, then source again, and
//    ClassifyRow (verify_plan.h) tells "still being written" (changing: not a blocker) from
//    "provably different" (blocks the cutover). A table without a key never blocks here: rows
//    cannot be followed, and it is settled exactly at the switch point.
//  - Switch point (SwitchPointCheck, switch_point.h): both sides read one exported snapshot
//    each, taken while the source was fenced and the target had applied all of it; the
//    comparison is exact for every table, every difference is real.
//
// Rows are compared column by column in the source's column order (matched by name on the
// target), so a target whose columns were created in another order still compares equal; a
// column present on one side only is a difference. Sessions pin every setting that changes a
// value's text form (TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output,
// lc_monetary), so the same data gives the same checksum on PostgreSQL 12..18. The hash
// method (verify_plan.h) is chosen per database by a probe of both servers.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/verify_plan.h"
#include "pg/connection.h"

namespace pgshift::engine {

enum class VerifyLevel { kNone, kCount, kChecksum };

// "none" | "count" | "checksum".
Result<VerifyLevel> ParseVerifyLevel(const std::string& text);
std::string VerifyLevelName(VerifyLevel level);

enum class VerifyMode {
  kConvergence,  // before cutover, live reads while replication runs
  kSwitchPoint,  // one snapshot per side taken at one moment (the cutover's consistent point)
};
std::string VerifyModeName(VerifyMode mode);  // "pre-cutover convergence" | "exact snapshot pair"

enum class TableResult {
  kMatch,      // the same on both sides
  kChanging,   // rows still being written (convergence only): not a blocker
  kDifferent,  // a real difference: blocks the cutover, or rolls it back
  kSkipped,    // not compared (unlogged: not replicated)
};
std::string TableResultName(TableResult r);  // "match" | "changing" | "different" | "skipped"

struct TableVerification {
  std::string database, schema, table;
  std::string key;  // the key's columns, "(aid)"; empty: the table has none
  int64_t source_rows = -1, target_rows = -1;    // -1: not counted (table missing on a side)
  std::string source_checksum, target_checksum;  // empty at count level
  TableResult result = TableResult::kDifferent;
  // Keys (KeyText) of rows proven different, and of rows still being written; at most
  // kMaxShownKeys each, while the counts say how many there were.
  std::vector<std::string> differing_keys, changing_keys;
  int64_t differing_rows = 0, changing_rows = 0;
  // A table without a key: a few differing rows as text, "+" (only on source) or "-" (only on
  // target) first. Switch point only.
  std::vector<std::string> differing_rows_text;
  int64_t ranges = 0;  // key ranges compared (narrowing included)
  int rounds = 0;      // reads by key of differing rows, or whole-table passes without a key
  std::string note;    // why it does not match, or what could not be done
  double seconds = 0;

  bool match() const { return result == TableResult::kMatch; }
  bool blocking() const { return result == TableResult::kDifferent; }
};

inline constexpr int kMaxShownKeys = 20;
inline constexpr int kMaxTrackedKeys = 4096;

struct VerifyOptions {
  VerifyLevel level = VerifyLevel::kChecksum;
  std::vector<std::string> databases;      // required
  int max_rounds = 4;                      // convergence: reads of a differing key
  int jobs = 4;                            // workers, each with one session per side
  int64_t chunk_rows = 65536;              // rows per first-pass range
  int64_t leaf_rows = 2048;                // a differing range this small is read row by row
  std::optional<verify::HashMethod> hash;  // default: chosen by probing both servers
  // Convergence: makes the target apply everything the source committed before the call
  // (the orchestrator: a marker round trip; the standalone CLI can only wait). Called from
  // several workers at once: it must be thread-safe (CoalescingSettle helps).
  std::function<Status(const std::string& database)> settle;
  // Convergence: an exact comparison at the switch point will follow (the migration), so a
  // table without a key that differs is left to it (kChanging) even when the source stood
  // still meanwhile; without one (the standalone CLI) such a table is kDifferent.
  bool exact_check_follows = false;
  // Called once per table when its result is final, one call at a time. Optional.
  std::function<void(const TableVerification&)> on_table;
  // Polled between queries; true stops the verification with an Aborted status. Optional.
  std::function<bool()> stop;
};

struct VerifyReport {
  VerifyLevel level = VerifyLevel::kNone;
  VerifyMode mode = VerifyMode::kConvergence;
  std::string hash;  // HashMethodName of the method used (several: "md5, hashextended")
  int jobs = 0;
  double seconds = 0;
  // Where the workers spent their time, summed over workers (so it can exceed `seconds`):
  // planning, the first pass, narrowing, reads by key, whole tables without a key, and waiting
  // for replication (part of the others).
  std::vector<std::pair<std::string, double>> worker_seconds;
  std::vector<TableVerification> tables;

  bool clean() const { return mismatches() == 0; }
  int64_t mismatches() const;  // tables that block (kDifferent)
  int64_t Count(TableResult r) const;
  int64_t compared() const {
    return static_cast<int64_t>(tables.size()) - Count(TableResult::kSkipped);
  }
  // An aligned text table, one line per table, then a summary line that says what was
  // compared, how, and the result.
  std::string Render() const;
  // "7 tables compared (checksum, exact snapshot pair, hashextended): all match"
  std::string Summary() const;
  nlohmann::json ToJson() const;
};

// Before cutover: compares every database of `options.databases` on both servers (the same
// database name on each side), live (VerifyMode::kConvergence). Table differences are findings
// in the report; errors are for what stopped the comparison (a connection or a query failed,
// `settle` failed), naming the side. With level kNone the report is empty.
Result<VerifyReport> VerifyDatabases(const std::string& source_dsn, const std::string& target_dsn,
                                     const VerifyOptions& options);

// Wraps a settle function so that callers on several threads share its runs: a call returns
// once a run that started after the call began has finished (one run at a time). Thread-safe.
class CoalescingSettle {
 public:
  explicit CoalescingSettle(std::function<Status()> run) : run_(std::move(run)) {}
  Status operator()();

 private:
  std::function<Status()> run_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t started_ = 0, finished_ = 0;
  bool running_ = false;
  Status last_;
};

namespace verify {

// The session every verification query runs in: settings that change text output pinned,
// read-only, application_name "pgshift" (so the cutover's fence leaves it alone), no
// statement or idle-in-transaction timeout.
Result<std::unique_ptr<pg::Connection>> OpenSession(const std::string& dsn, const std::string& db,
                                                    const char* side);

// One database's pair of sessions for the comparison's own catalog reads, and in switch-point
// mode the snapshot every worker session imports (empty in convergence mode).
struct DatabaseSessions {
  std::string database;
  std::unique_ptr<pg::Connection> source, target;
  std::string source_snapshot, target_snapshot;
};

// The comparison both modes share. In switch-point mode `dbs` carry snapshots and settle is
// not used.
Result<VerifyReport> Compare(VerifyMode mode, const std::string& source_dsn,
                             const std::string& target_dsn, std::vector<DatabaseSessions> dbs,
                             const VerifyOptions& options);

}  // namespace verify
}  // namespace pgshift::engine
