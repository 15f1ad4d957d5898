// The cutover as data: the table of steps that moves clients from one server to the other,
// forward (source -> target) and back (rollback, target -> source), run by the executor of
// cutover_executor.h. docs/engine.md shows the table and what recovery does at each row.
//
//   row                 do                                   undo                     observe
//   prepare             fence installed (off) on the old     drop the reverse slot    -
//                       side, on on the new; the stopping
//                       subscription enabled; forward: the
//                       reverse slot made
//   pause               router Pause                         router Resume            paused?
//   fence               old side fenced, its sessions ended  old side unfenced        fence on?
//   catch-up            marker on the old side, awaited on   -                        -
//                       the new
//   consistent-point    the CutoverHook's run, if one is set the hook's undo          -
//   sequences           old -> new                           -                        -
//   replication         the subscription into the new side   enabled again            enabled?
//                       stopped; forward: reverse slot moved
//                       to now
//   switch  (no return) router SwitchTo(new)                 SwitchTo(old)            router view
//   open                new side unfenced                    new side fenced          fence off?
//   resume              router Resume; sessions left on the  -                        paused?
//                       old side ended (routers that cannot
//                       hold clients)
//   reverse-subscription forward: made on the source        -                        exists?
//   drain               after the outcome is saved: end      -                        -
//                       sessions that reappear on the old
//                       side (nginx, Service)
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/state.h"
#include "pg/connection.h"

namespace pgshift::engine {

enum class Side { kSource, kTarget };

// Which way a cutover moves clients. Both ways run the same table; this value says which
// server is which and which subscriptions stop and start.
struct Direction {
  const char* name;  // "forward" | "rollback": the journal, the attempt record, fault points
  Side old_side;     // where clients are before
  Side new_side;     // where they are after
  // The subscription on the new side's server that carried the old side's writes; stopped in
  // step replication: forward the target's subscription, rollback the source's reverse one.
  bool stops_reverse_subscription;
  // Forward with reverse replication: the new side's writes flow back to the old side from the
  // slot made in prepare, through a subscription made after resume.
  bool starts_reverse_subscription;
  Phase done;    // the phase when completed: RollbackReady | RolledBack
  Phase undone;  // the phase when undone: ReadyForCutover | RollbackReady

  static const Direction& Forward();
  static const Direction& Rollback();
  static const Direction* Named(const std::string& name);  // nullptr when unknown
};

// What a CutoverHook sees: per migrated database, pgshift's sessions on both sides. When it
// runs, the old side is fenced (no client can write there), everything committed on it has
// been applied on the new side (the marker arrived), and no client has written to the new side
// yet (it is still fenced, the router still leads to the old side). The sessions belong to the
// cutover: the hook may run queries on them (with session_replication_role = replica, no
// statement timeout) but must not close them or leave a transaction open. The DSNs are the
// migration's, for this database; they may carry a password: never log them.
struct CutoverDatabase {
  std::string name;
  pg::Connection* old_side = nullptr;
  pg::Connection* new_side = nullptr;
  std::string old_dsn;
  std::string new_dsn;
};

struct CutoverContext {
  const Direction* direction = nullptr;
  std::string migration_id;
  std::vector<CutoverDatabase> databases;
  // MonotonicMillis() by which the pause must end (--max-pause); the hook counts against it.
  int64_t deadline_ms = 0;
};

// A step supplied from outside the engine, run in the table's "consistent-point" row (e.g. the
// verification's pair of exported snapshots, one per side, taken at the same logical instant).
//   run:  inside the clients' pause; an error undoes the whole attempt (clients stay on the
//         old side) and is recorded as the attempt's failure.
//   undo: called when the attempt is undone after run began (it may not have finished), and by
//         a recovery that rolls back from this row, possibly in another process where run never
//         ran: it must be idempotent and must not fail (log instead). May be empty.
//   sessions: the backend pids of the hook's own sessions on a side; every step that ends
//         client sessions (the fence, the drain of the old side) leaves them alone. May be empty.
// With no hook set the row does nothing.
struct CutoverHook {
  std::string name;
  std::function<Status(const CutoverContext&)> run;
  std::function<void()> undo;
  std::function<std::vector<int>(Side)> sessions;
};

}  // namespace pgshift::engine
