// WAL the source keeps for pgshift's replication slots.
//
// A logical slot makes the source keep every WAL segment from its restart_lsn on, until the
// subscriber confirms it. A target that stops applying (down, a blocked apply worker, a long
// lock) therefore makes the source's pg_wal grow until its disk is full, which stops the
// source: the one outcome a migration tool must never cause. Two guards exist:
//   - the server's own max_slot_wal_keep_size (13+): past it the source invalidates the slot
//     (wal_status 'lost') and the migration must start again;
//   - pgshift's --max-retained-wal: past it pgshift stops the step and says so, while the slot
//     is still whole, so a person can fix the target or abort (which drops the slot).
// Preflight shows both, what pg_wal holds now and, when pgshift runs on the source's host, the
// free space of its data directory's file system; on 18 it names idle_replication_slot_timeout,
// which invalidates a slot nobody streams from for that long.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/preflight.h"
#include "pg/connection.h"

namespace pgshift::engine {

struct WalRetentionFacts {
  int major = 0;
  // max_slot_wal_keep_size in bytes (13+); -1: unlimited (also before 13, which has none).
  int64_t max_slot_wal_keep_bytes = -1;
  int64_t wal_keep_bytes = 0;             // wal_keep_size (13+) or wal_keep_segments (12)
  std::optional<int64_t> wal_dir_bytes;   // pg_ls_waldir(), when the role may call it
  std::optional<int64_t> free_bytes;      // statvfs of the data directory, when local
  std::string free_note;                  // why free_bytes is unknown
  int64_t idle_slot_timeout_s = 0;        // idle_replication_slot_timeout (18+); 0: off
  int physical_standbys = 0;              // pg_stat_replication rows that are not logical
  std::string synchronized_standby_slots;  // 17+: the standbys logical senders wait for
};
// Reads the facts through `source` (any database); what the role may not read stays unknown.
Result<WalRetentionFacts> ReadWalRetentionFacts(pg::Connection& source);

// The "wal-retention" findings (pure): OK with the figures when a limit exists (the server's
// or `max_retained_wal`), WARN when none does; WARN when idle_replication_slot_timeout is set.
std::vector<CheckResult> CheckWalRetention(const WalRetentionFacts& facts, int64_t max_retained_wal);

// The "failover-slots" finding (pure), when physical standbys stream from the source. On 17+
// pgshift makes its slots with failover = true (FailoverSlots), so a standby with
// sync_replication_slots = on keeps a copy and the migration survives a failover to it: INFO,
// or WARN while synchronized_standby_slots is empty (the target may then get changes the
// standby lacks). Before 17 logical slots stay on the primary: WARN, the migration must start
// again after a failover. Nothing without standbys.
std::vector<CheckResult> CheckFailoverSlots(const WalRetentionFacts& facts);

// True when slots made on a server of `major` can be failover slots (17+).
inline bool FailoverSlots(int major) { return major >= 17; }

// One slot now.
struct SlotRetention {
  std::string slot;
  bool found = false;
  int64_t retained_bytes = 0;  // pg_current_wal_lsn() - restart_lsn: WAL the source keeps for it
  std::string wal_status;      // 13+: reserved, extended, unreserved, lost; "" before
};
Result<SlotRetention> ReadSlotRetention(pg::Connection& source, const std::string& slot);

// Ok while the slot keeps at most `max_retained_wal` bytes (0: no limit) and its WAL is not
// about to be removed; else a FailedPrecondition saying how much, the limit, and what to do.
// Pure.
Status GuardRetention(const SlotRetention& r, int64_t max_retained_wal, const std::string& database);

}  // namespace pgshift::engine
