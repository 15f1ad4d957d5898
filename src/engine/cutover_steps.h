// The real cutover table (the rows of cutover.h) over pgshift's sessions and a Router.
// Internal to the engine: Migration (cutover.cc) builds one per attempt or recovery.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/cutover.h"
#include "engine/cutover_executor.h"
#include "engine/router.h"
#include "engine/server_ops.h"
#include "engine/state.h"

namespace pgshift::engine {

class CutoverSteps {
 public:
  // `state`, `router` and `hook` (may be null) must outlive this object. `note` records what
  // people must know (kept in the state's notes).
  CutoverSteps(const MigrationState& state, Router* router, const Direction& direction,
               const CutoverHook* hook, std::function<void(const std::string&)> note);

  std::vector<CutoverRow> Rows();

  // The time by which the clients' pause must end; 0 before the pause row ran.
  int64_t pause_deadline_ms() const { return pause_deadline_ms_; }
  // Forward, by database: the target's large object horizon taken in the pause (step
  // sequences), where a pass back starts; empty when that step did not run.
  const std::map<std::string, std::string>& reverse_lo_horizons() const {
    return reverse_lo_horizons_;
  }

 private:
  struct Sessions {
    ConnPtr old_side, new_side;
  };

  const std::string& Dsn(Side side) const;
  const char* SideName(Side side) const;
  // pgshift's session on `side` for database `db`, made again when it broke.
  Result<pg::Connection*> Session(Side side, const DatabaseState& db);
  // Backend pids of pgshift's own sessions on `side` (kept when sessions are ended).
  std::vector<int> OwnPids(Side side) const;
  std::vector<std::string> DatabaseNames() const;
  // The pause deadline, or a few seconds from now outside a first run (redo, undo).
  int64_t Deadline() const;
  // The subscription step replication stops (it lives on the new side's server).
  std::string StoppingSubscription(const DatabaseState& db) const;

  // Fence on `side` for every database, or off; off only while the other side is fenced (or
  // unreachable: a server that cannot be reached cannot take writes, and its fence is kept in
  // its catalog).
  Status Fence(Side side);
  Status Open(Side side);
  Result<Observation> ObserveFence(Side side, bool want_on);
  Status Prepare();
  Status UndoPrepare();
  Status CatchUp();
  Status RunHook();
  Status Sequences();
  Status Replication(bool enabled);
  Result<Observation> ObserveReplication();
  Result<Observation> ObserveSwitch();
  // SwitchTo(`side`); a router that settles by itself and whose configuration leads only to
  // `side` counts as switched when its live view is late (said in a note).
  Status Switch(Side side);
  Status Resume();
  Status ReverseSubscription();
  Result<Observation> ObserveReverseSubscription();
  Status Drain();

  const MigrationState& state_;
  Router* router_;
  const Direction& d_;
  const CutoverHook* hook_;
  std::function<void(const std::string&)> note_;
  std::map<std::string, Sessions> sessions_;
  int64_t pause_deadline_ms_ = 0;
  std::map<std::string, std::string> reverse_lo_horizons_;
};

}  // namespace pgshift::engine
