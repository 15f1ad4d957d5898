// Reads a migration's live figures from the servers into a StatsBoard: replication lag (bytes
// and seconds), tables synced, initial-copy progress and DDL seen on the source, per database.
//
// It keeps one connection per database and side (application_name pgshift, statement_timeout
// 5 s, read-only queries), made on first use and remade after an error, so a sample costs a
// few catalog queries, not new sessions. A figure it could not read keeps its old time stamp
// and so turns stale (StatsSnapshot::Fresh) instead of showing an old value as current.
// Not thread-safe: the orchestrator's thread owns it.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "common/status.h"
#include "engine/state.h"
#include "engine/stats.h"
#include "pg/connection.h"

namespace pgshift::engine {

class StatsSampler {
 public:
  // Samples every database of `state` (phases InitialCopy .. CuttingOver; other phases have
  // no replication to measure and are left alone). Returns the first error; figures of the
  // databases that answered are updated anyway.
  Status Sample(const MigrationState& state, StatsBoard* board);
  // Tables verification will compare in every database (IsMigrated, as verify does).
  Result<int64_t> CountVerifiedTables(const MigrationState& state);
  // Closes every connection (before the servers are told to drop what pgshift made).
  void Close() { conns_.clear(); }

 private:
  Result<pg::Connection*> Conn(const std::string& dsn, const std::string& db, bool source);
  // After cutover: only the reverse replication's lag, from the target.
  Status SampleReverse(const MigrationState& state, StatsBoard* board);
  Status SampleDatabase(const MigrationState& state, const DatabaseState& db, StatsBoard* board,
                        int64_t* ddl_events);

  // Key: "s:" or "t:" + database name.
  std::map<std::string, std::unique_ptr<pg::Connection>> conns_;
};

}  // namespace pgshift::engine
