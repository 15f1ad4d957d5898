// Server operations the migration's steps share: pgshift's own sessions, replication objects
// (slots, subscriptions), the fence, client sessions, sequences. Internal to the engine: the
// steps (migration.cc, step_*.cc, cutover.cc, migration_end.cc) use them; nothing outside
// src/engine should.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/fault.h"
#include "common/status.h"
#include "engine/router.h"
#include "engine/state.h"
#include "pg/connection.h"

namespace pgshift::engine {

using ConnPtr = std::unique_ptr<pg::Connection>;

// A session of pgshift's own on database `db` of the server `dsn` (`side` names it in errors):
// writable even where pgshift fenced the database (session_replication_role = replica, as
// logical replication's workers: the fence's triggers do not fire for it, fence.h), commits
// flushed at once (synchronous_commit = on), no statement timeout, a 10 s lock timeout.
Result<ConnPtr> Connect(const std::string& dsn, const std::string& db, const std::string& side);

// The conninfo a subscription on one server uses to reach the other: the DSN pgshift was
// given, for database `db`, with the password pgshift authenticated with (the server has no
// access to our pgpass file).
Result<std::string> SubscriptionConnInfo(const std::string& dsn, const std::string& db,
                                         const pg::Connection& authenticated);

// host (or hostaddr) and port of a DSN.
Result<Endpoint> EndpointOf(const std::string& dsn);

// "12.3": milliseconds with one decimal.
std::string Ms(double ms);

// True when `sql` (one $1 parameter) returns a row for `name`.
bool Exists(pg::Connection& c, const std::string& sql, const std::string& name);
inline constexpr const char* kHasPublication = "SELECT 1 FROM pg_publication WHERE pubname = $1";
inline constexpr const char* kHasSubscription =
    "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())";
inline constexpr const char* kHasSlot =
    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1";

// Drops a replication slot if it exists and no one uses it.
Status DropSlotIfIdle(pg::Connection& c, const std::string& slot);
// DROP SUBSCRIPTION, also when the other side is gone (the slot is detached first then).
Status DropSubscription(pg::Connection& c, const std::string& name);

// After a switch by a router that cannot hold clients: ends the sessions (but `keep_pids`) that
// reappear on the old side's databases `dbs` until none has for `quiet_ms` (at most `max_ms`),
// so clients reconnect to the new.
void DrainOldSide(pg::Connection& old_side, const std::vector<std::string>& dbs,
                  const std::vector<int>& keep_pids, int64_t quiet_ms, int64_t max_ms);

// Moves logical slot `slot` to the server's current WAL position.
Status AdvanceSlotToNow(pg::Connection& c, const std::string& slot);

// The reverse subscription `name` on the source, reading the slot of the same name made on the
// target during the cutover: no copy, no new slot. Nothing happens when it exists.
Status CreateReverseSubscription(pg::Connection& source, const pg::Connection& target,
                                 const std::string& target_dsn, const std::string& db,
                                 const std::string& name);

// Tables of subscription `sub` in state ready ('r'), of all.
struct SyncCounts {
  int ready = 0;
  int total = 0;
};
Result<SyncCounts> SubscriptionSync(pg::Connection& target, const std::string& sub);
// (table, state in words) for every table of subscription `sub`, by name.
// pgshift's own copy (--copy snapshot) per table, from its plan on the target: "ready" when
// every range of the table is done, else "copying d/n ranges" or "waiting"; empty when the
// target holds no plan.
Result<std::vector<std::pair<std::string, std::string>>> OwnCopyTableStates(pg::Connection& target);
Result<std::vector<std::pair<std::string, std::string>>> TableSyncStates(pg::Connection& target,
                                                                         const std::string& sub);

// Copies every sequence's position from `from` to `to` in one round trip each way.
Status SyncSequences(pg::Connection& from, pg::Connection& to);


}  // namespace pgshift::engine
