// Roles and schema: pg_dumpall --roles-only and pg_dump --schema-only from the source, adapted
// to the target's version and applied there. Child processes get the connection through the
// environment (PGPASSWORD, ...), never through argv.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

struct ToolPaths {
  std::string pg_dump = "pg_dump";
  std::string pg_dumpall = "pg_dumpall";
  std::string psql = "psql";
};

// Copies roles (with password hashes where the source lets us read them) onto the target.
// Roles that exist already are altered, not recreated; the role pgshift connects to the target
// as keeps its own password. Returns notes on what could not be carried.
Result<std::vector<std::string>> CopyRoles(const std::string& source_dsn,
                                           const std::string& target_dsn, const ToolPaths& tools);

// Dumps the schema of the database `source_db_dsn` points at (without pgshift's own objects)
// and applies it to `target_db_dsn` in one transaction.
Status CopySchema(const std::string& source_db_dsn, const std::string& target_db_dsn,
                  const ToolPaths& tools);

// Adapts a pg_dump script to the target: drops SET lines for settings the target does not
// know (pg_dump 17 sets transaction_timeout, which 16 and older reject), pgshift's own event
// triggers, and statements the target's version cannot parse. Pure, for tests.
std::string AdaptDump(const std::string& dump, const std::set<std::string>& target_settings,
                      int target_major);

// Splits a pg_dumpall --roles-only script into statements (no psql meta-commands).
std::vector<std::string> SplitRoleStatements(const std::string& script);
// Older servers reject GRANT ... WITH INHERIT/SET options (PostgreSQL 16+): strip them.
std::string DowngradeGrant(const std::string& statement);

}  // namespace pgshift::engine
