// Warm planner statistics on the target before cutover.
//
// Logical replication copies rows, not pg_statistic: the target's planner knows only what
// autovacuum got round to, so the first hour after cutover can run on bad plans. Before the
// migration becomes ready for cutover, every table of a database is ANALYZEd on the target,
// `jobs` sessions at once, largest first (extended statistics objects, CREATE STATISTICS, are
// built by the same ANALYZE). Partitioned tables are analyzed at their root, which samples
// every partition and recurses into each; materialized views after their refresh.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::engine {

struct AnalyzeReport {
  int tables = 0;                    // analyzed
  int jobs = 0;                      // sessions used
  double elapsed_ms = 0;
  std::vector<std::string> skipped;  // "table: why" (dropped meanwhile, a lock not granted)
};

// ANALYZE of every user table, partitioned root and materialized view of database `db` on the
// server `dsn` (pgshift's own sessions, server_ops.h Connect). Stops between tables when
// `stop` says so (kAborted). A table that cannot be analyzed is listed in `skipped`, not an
// error: statistics are worth having, not worth failing a migration over.
// With `only_missing`, only the tables a statistics copy (schema.h CopyStatistics) left
// without what ANALYZE gives: none on the source (reltuples -1, no column statistics), or an
// extended statistics object (not in pg_dump 18's statistics).
Result<AnalyzeReport> AnalyzeDatabase(const std::string& dsn, const std::string& db, int jobs,
                                      const std::function<bool()>& stop,
                                      bool only_missing = false);

// The tables to analyze, largest first: a catalog query (exposed for tests); the filter
// `only_missing` adds.
extern const char* const kAnalyzeTablesSql;
extern const char* const kWithoutStatisticsSql;

}  // namespace pgshift::engine
