// Large objects, which logical replication does not carry (docs/engine.md, "Large objects").
//
// A pass makes the new side's large objects equal to the old side's. It finds what changed on
// the old side since a horizon, an xid as text ("" when there is none: then it compares
// every object's pages, owner and ACL on both sides), and copies each such object whole
// (pages by number, holes kept; owner; ACL), in one transaction per object, and unlinks on
// the new side what the old side no longer has.
//
// Why it is exact: every write to a large object (lo_write, lo_put, lo_truncate, lo_create,
// ALTER LARGE OBJECT, GRANT) makes new rows in pg_largeobject or pg_largeobject_metadata, and a
// new row's xmin is at least the xmin of any snapshot taken before its transaction began. A
// pass starts by reading the old side's snapshot xmin; everything committed by older xids is
// visible to what it reads next, and anything from that xid on is looked at again by the next
// pass. Deletions leave no row: pages removed by a truncate are found by comparing each
// object's page count on both sides, unlinked objects by comparing the lists. The pass in the
// cutover's pause runs while the old side is fenced (lo_write and friends refuse to run in a
// read-only transaction), so nothing can change behind it.
//
// Cost: a pass with a horizon scans pg_largeobject on the old side (its xmin is in no index)
// and the page counts on both sides, and copies only what changed; without one it reads every
// object on both sides. pg_largeobject needs a superuser (or pg_read_all_data on 14+ to read,
// and the write side a superuser): the preflight refuses otherwise.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "pg/connection.h"

namespace pgshift::engine {

struct LargeObjectPass {
  int64_t objects = 0;   // on the old side
  int64_t copied = 0;    // written on the new side
  int64_t unlinked = 0;  // gone from the new side
  int64_t bytes = 0;     // of data copied
  // Where the next pass from the same old side starts: the old side's snapshot xmin read
  // when this pass began.
  std::string horizon;
};

// One pass `from` -> `to` (sessions of pgshift on the same database of both servers; `to` may
// be fenced: pgshift's sessions write there). `since`: the horizon of an earlier pass from the
// same side, or "".
Result<LargeObjectPass> SyncLargeObjects(pg::Connection& from, pg::Connection& to,
                                         const std::string& since);

// A horizon on `c` from which writes are new: an xid assigned now, so every transaction that
// writes later has a larger one. For the server clients are about to move to, taken while it
// is still fenced: the first pass back (a rollback) starts there.
Result<std::string> LargeObjectHorizonNow(pg::Connection& c);

// True when either session's database holds a large object.
Result<bool> AnyLargeObjects(pg::Connection& a, pg::Connection& b);

}  // namespace pgshift::engine
