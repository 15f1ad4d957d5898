// Carrying DDL: what the source's schema changes during a migration become on the target
// (docs/engine.md, "DDL during the migration").
//
// On the source, the event trigger (step_prepare.cc) logs every DDL command into
// _pgshift.ddl_log, in the DDL's own transaction, with its verdict: `statement`, the one
// statement pgshift can run again on the target (CONCURRENTLY taken out: it runs inside the
// apply transaction), or NULL and `why_not`. The log is published from the start, and on the
// target a row trigger made with the schema (ENABLE ALWAYS: the apply worker runs in replica
// mode) runs each carried statement as its row arrives, so it takes effect at the exact point
// of the change stream where the source made it: the rows written after an ADD COLUMN arrive
// after the column does. A row pgshift itself inserts when the initial copy is done,
// kCarryFromHereTag, starts the carrying: rows before it were logged while the copy ran (the
// target's tables were not all there yet), are not run, and block the cutover (CheckDdlLog,
// step_ddl.cc).
#pragma once

#include <string>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

// The tag of the row that starts the carrying.
inline constexpr const char* kCarryFromHereTag = "pgshift: carry from here";

// Entries of the source's log (on `source`) past `mark`, the carry row left out.
Result<int64_t> CountDdlLog(pg::Connection& source, int64_t mark);

// The source's functions: _pgshift.single_statement(text) and the event trigger's
// _pgshift.log_ddl(). REQUIRES: _pgshift.ddl_log exists (step_prepare.cc).
extern const char* const kDdlLogFunctionsSql;

// The target's half, idempotent: _pgshift.ddl_log (the source's columns plus `carried`),
// _pgshift.ddl_state (whether the carry row came), _pgshift.ddl_applied (ids a person applied
// by hand, which the trigger then skips) and the ENABLE ALWAYS trigger.
Status InstallDdlCarry(pg::Connection& target);

}  // namespace pgshift::engine
