// The fence: what keeps a server from taking writes while clients move between the two servers
// of a migration (docs/engine.md, "The fence").
//
// Three layers on each fenced database, switched on and off together in one transaction:
//   - a BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE statement trigger on every table that
//     raises (read_only_sql_transaction): no SET, BEGIN READ WRITE or role gets past it;
//   - a ddl_command_start event trigger that raises: nobody drops or disables those triggers,
//     or makes a table that has none;
//   - default_transaction_read_only = on for the database: a plain client gets PostgreSQL's
//     usual "read-only transaction" error before any trigger runs.
// The triggers fire in the default ("origin") mode only. Logical replication's apply and
// table-sync workers run with session_replication_role = replica, so the reverse subscription
// still writes; so do pgshift's own sessions (Connect in server_ops.h sets the same), which is
// also why they, and nothing else short of a superuser, can lift it.
//
// A pooler can hold its new server connections at a fenced database (PoolerHoldQuery): they
// log in, then wait in _pgshift.hold() until the fence is off. A cutover through such a pooler
// lets its clients go before the new side is open; they wait there, already logged in, and
// their first statement runs the moment the fence lifts (docs/engine.md, "The pooler's hold").
//
// Every function here is idempotent; "on" and "off" are read back from the catalog
// (FenceState), never from pgshift's state.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

// Makes the fence on the database `c` is connected to, switched off when it is new: the
// functions in schema _pgshift (the hold's too), the event trigger `name` and a trigger `name`
// on every table that lacks one. Tables take a short lock each (CREATE TRIGGER), one at a time.
Status InstallFence(pg::Connection& c, const std::string& name);

// Switches the fence of database `db` (the one `c` is connected to) on: writes and DDL raise,
// new sessions start read-only; then ends every client session on `db` except `keep_pids`
// (pgshift's own) and waits, until `deadline_ms` (MonotonicMillis), for them to be gone, so
// that no transaction begun before the fence can still commit.
// REQUIRES: InstallFence ran on this database.
Status FenceOn(pg::Connection& c, const std::string& db, const std::vector<int>& keep_pids,
               int64_t deadline_ms);

// Switches it off: writes and DDL pass again; the database's read-only default is reset.
Status FenceOff(pg::Connection& c, const std::string& db);

// Whether the fence of the database `c` is connected to is on now (false when not installed).
Result<bool> FenceState(pg::Connection& c);

// The application_name of a pooler's server connections that hold (PoolerHoldQuery).
inline constexpr const char* kPoolerHoldApplicationName = "pgshift-pooler";

// What a PgBouncer runs on each new server connection (its connect_query; PgBouncer 1.18 sends
// at most ~500 bytes) to hold it while the database is fenced: _pgshift.hold() takes a shared
// advisory lock that marks the session as the pooler's, waits while the fence is on (polling
// every millisecond; it never gives up, so no client of the pooler reads a fenced side), then
// gives the session the read-write default the database now has. Nothing when the function is
// not installed yet; PgBouncer logs and ignores the errors of a connect_query.
std::string PoolerHoldQuery();

// Ends every client session on the databases `dbs` except `keep_pids` and waits, until
// `deadline_ms`, for them to be gone; returns how many there were. With
// `spare_pooler_sessions`, also except a pooler's sessions that hold or held
// (PoolerHoldQuery): they made themselves read-write (step open; never when fencing).
Result<int64_t> EndClientSessions(pg::Connection& c, const std::vector<std::string>& dbs,
                                  const std::vector<int>& keep_pids, int64_t deadline_ms,
                                  bool spare_pooler_sessions = false);

}  // namespace pgshift::engine
