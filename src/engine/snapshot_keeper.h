// The snapshot keeper: a small process that creates a database's logical replication slot
// with an exported snapshot and holds the replication session that exported it, because that
// snapshot lives only as long as the session (it dies at the session's next command or its
// end). The copy's jobs import it (SET TRANSACTION SNAPSHOT), so every table is read as of the
// slot's consistent point: the subscription made later on that slot continues exactly where
// the copy's data ends.
//
// The keeper runs in a session of its own, reparented to init, so kill -9 of pgshift leaves it
// and its snapshot alive: a resumed run imports the same snapshot and copies only what is not
// done yet. It writes what it made to an info file (JSON: pid, slot, snapshot, lsn) and ends
// when told (StopSnapshotKeeper: SIGTERM), when its connection breaks, or when the heartbeat
// file was not touched for `hold_s` seconds (pgshift gone and not resumed: the snapshot holds
// back VACUUM on the source, so it is not held forever). The slot outlives the keeper.
#pragma once

#include <optional>
#include <string>

#include "common/status.h"

namespace pgshift::engine {

inline constexpr char kSnapshotKeeperName[] = "pgshift-snapshot-keeper";

struct SnapshotKeeperRequest {
  std::string source_db_dsn;  // the source database the slot is for
  std::string password;       // the one pgshift authenticated with (to PGPASSWORD); may be empty
  std::string slot;
  std::string info_file;       // written by the keeper once the slot exists
  std::string heartbeat_file;  // touched by pgshift while it copies (TouchHeartbeat)
  std::string log_file;        // the keeper's stderr
  int hold_s = 3600;
  int ready_timeout_s = 600;  // making a slot waits for transactions open on the source
};

struct SnapshotKeeperInfo {
  int pid = 0;
  std::string slot;
  std::string snapshot;  // e.g. 00000003-0000001B-1
  std::string lsn;       // the slot's consistent point
};

// Starts a keeper and waits until the slot exists and the snapshot is exported. The slot must
// not exist yet.
Result<SnapshotKeeperInfo> StartSnapshotKeeper(const SnapshotKeeperRequest& request);
// The keeper recorded in `info_file`, when that process still runs and is the keeper of that
// slot (a reused pid is not mistaken for it).
std::optional<SnapshotKeeperInfo> FindSnapshotKeeper(const std::string& info_file);
// Ends the keeper of `info_file` if it runs (its snapshot is gone then; the slot stays) and
// removes the file.
void StopSnapshotKeeper(const std::string& info_file);
// Marks pgshift as alive for the keepers.
void TouchHeartbeat(const std::string& heartbeat_file);

// Entry point of the keeper process: every executable that runs migrations calls this first
// in main(); it returns the keeper's exit code when argv[0] is kSnapshotKeeperName, else
// nullopt and the program goes on as usual.
std::optional<int> MaybeRunSnapshotKeeper(int argc, char** argv);

}  // namespace pgshift::engine
