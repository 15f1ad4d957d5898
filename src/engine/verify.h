// verify: compares the data of a source and a target database, table by table, by row count
// or by an order-independent checksum of every row's text form, both computed in SQL on each
// server. Read-only on both servers: no temporary tables, sessions set read-only.
//
// Tables compared: ordinary tables (relkind 'r') of every schema except pg_catalog,
// information_schema, pg_toast*, pg_temp*, and pgshift's own `_pgshift*`. Partitioned tables
// are compared through their leaf partitions (each a relkind 'r' table, read with FROM ONLY);
// the partitioned parent holds no rows itself and is not listed.
//
// Rows are compared column by column in the source's column order (matched by name on the
// target), so a target whose columns were created in another order still compares equal; a
// column present on one side only is a mismatch. Sessions pin every setting that changes a
// value's text form (TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output,
// lc_monetary), so the same data gives the same checksum on PostgreSQL 12..18.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::engine {

enum class VerifyLevel { kNone, kCount, kChecksum };

// "none" | "count" | "checksum".
Result<VerifyLevel> ParseVerifyLevel(const std::string& text);
std::string VerifyLevelName(VerifyLevel level);

struct TableVerification {
  std::string database, schema, table;
  int64_t source_rows = -1, target_rows = -1;    // -1: not counted (table missing on a side)
  std::string source_checksum, target_checksum;  // empty at count level
  bool match = false;
  // Primary-key values of rows that differ, rendered as text: "(42)", "(7,'a')"; at most
  // kMaxDifferingKeys, and only for a checksum mismatch on a table with a primary key.
  std::vector<std::string> differing_keys;
  int rounds = 0;    // how many times the table was compared
  std::string note;  // why it does not match, or what could not be done
  double seconds = 0;
};

inline constexpr int kMaxDifferingKeys = 20;

struct VerifyOptions {
  VerifyLevel level = VerifyLevel::kChecksum;
  std::vector<std::string> databases;  // required
  int max_rounds = 3;
  // Called between rounds, before re-checking the tables that differed: the orchestrator
  // waits there until replication lag is zero; the standalone CLI sleeps. An error stops the
  // verification and is returned.
  std::function<Status()> settle;
  // Called once per table when its result is final. Optional.
  std::function<void(const TableVerification&)> on_table;
};

struct VerifyReport {
  VerifyLevel level = VerifyLevel::kNone;
  std::vector<TableVerification> tables;

  bool clean() const { return mismatches() == 0; }
  int64_t mismatches() const;
  // An aligned text table, one line per table, then a summary line.
  std::string Render() const;
  nlohmann::json ToJson() const;
};

// Compares every database of `options.databases` on both servers (the same database name on
// each side). Table differences are findings in the report; errors are for what stopped the
// comparison (a connection or a query failed, `settle` failed), naming the side.
// With level kNone the report is empty.
Result<VerifyReport> VerifyDatabases(const std::string& source_dsn, const std::string& target_dsn,
                                     const VerifyOptions& options);

}  // namespace pgshift::engine
