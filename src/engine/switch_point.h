// switch_point: the exact comparison of both sides at the cutover's consistent point.
//
// Before cutover, verification reads live sides and can only tell rows still being written
// from rows that differ (verify.h). The cutover has one instant where both sides hold the same
// point in history: the source is fenced, the marker arrived on the target (every write is
// applied) and no client has written to the target yet. There, Take() starts a REPEATABLE READ,
// READ ONLY transaction on a session of each side and exports its snapshot: one round trip per
// session, all sessions at once, about a millisecond. The clients resume; Compare() then reads
// the two snapshots with verification's comparison (every worker session imports them), every
// table with or without a key, and every difference it finds is real: nothing moved in either
// snapshot.
//
// The open snapshots hold back vacuum on both servers while Compare runs; the sessions end when
// it returns. A crash loses the snapshots: that point in history cannot be compared any more.
// Not thread-safe: the orchestrator's thread owns it (Compare runs its own workers).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/verify.h"
#include "pg/connection.h"

namespace pgshift::engine {

class SwitchPointCheck {
 public:
  // Opens one session per database of `options.databases` on each side (application_name
  // pgshift: the cutover's fence leaves them alone). `source_dsn` is the side clients leave
  // (the old side), `target_dsn` the side they move to.
  static Result<std::unique_ptr<SwitchPointCheck>> Prepare(const std::string& source_dsn,
                                                           const std::string& target_dsn,
                                                           VerifyOptions options);

  // At the consistent point: exports one snapshot per session. REQUIRES: not taken.
  Status Take();
  // The cutover was undone: ends the snapshots' transactions (Take may run again).
  void Release();
  // After the switch: compares the two snapshots exactly (VerifyMode::kSwitchPoint), then ends
  // the sessions. REQUIRES: taken; runs once.
  Result<VerifyReport> Compare();

  // Backend pids of the sessions on the source (true) or the target: the cutover's fence and
  // drain must leave them alone, or the snapshots die with them.
  std::vector<int> Pids(bool source) const;

  bool taken() const { return taken_; }
  double take_ms() const { return take_ms_; }

 private:
  // Opens again a session that broke since Prepare (a server restart, an admin's
  // pg_terminate_backend), so that a retried cutover attempt can take its snapshots.
  Status Reopen();

  SwitchPointCheck(std::string source_dsn, std::string target_dsn, VerifyOptions options)
      : source_dsn_(std::move(source_dsn)),
        target_dsn_(std::move(target_dsn)),
        options_(std::move(options)) {}

  std::string source_dsn_, target_dsn_;
  VerifyOptions options_;
  std::vector<verify::DatabaseSessions> dbs_;
  bool taken_ = false;
  double take_ms_ = 0;
};

}  // namespace pgshift::engine
