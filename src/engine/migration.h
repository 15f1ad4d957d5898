// The orchestrator: steps a migration through its phases (see state.h and docs/engine.md).
//
// Every step is idempotent and checks the servers for partial work before acting, and the
// state file is written before and after each side effect, so `pgshift upgrade` run again
// with the same state folder continues after any crash, kill -9 included.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/copy.h"
#include "engine/cutover.h"
#include "engine/history.h"
#include "engine/lag_trend.h"
#include "engine/post_data.h"
#include "engine/replication_health.h"
#include "engine/router.h"
#include "engine/sampler.h"
#include "engine/schema.h"
#include "engine/state.h"
#include "engine/switch_point.h"
#include "engine/stats.h"
#include "pg/connection.h"

namespace pgshift::engine {

struct MigrationRequest {
  std::string source_dsn;
  std::string target_dsn;
  std::string state_dir;
  MigrationOptions options;
  // Given on a resume: the new --max-retained-wal (a DBA who made room allows more).
  std::optional<int64_t> max_retained_wal;
};

class Migration {
 public:
  // Opens the migration in `state_dir`, or creates it from `request` when there is none.
  // Resuming with different source or target DSNs is refused.
  static Result<std::unique_ptr<Migration>> OpenOrCreate(const MigrationRequest& request,
                                                         const ToolPaths& tools);
  // Opens an existing migration (status, cutover, rollback, finish, abort).
  static Result<std::unique_ptr<Migration>> Open(const std::string& state_dir,
                                                 const ToolPaths& tools);
  // For callers that keep the state elsewhere (the operator: in the resource's status).
  // `state` is a saved state, or nullopt to start one from `request` (its state_dir is only a
  // work folder then). Every save goes to `sink` instead of <state_dir>/state.json. DSNs may
  // differ from the saved ones (a server's address can change between restarts).
  using StateSink = std::function<Status(const MigrationState&)>;
  static Result<std::unique_ptr<Migration>> FromState(std::optional<MigrationState> state,
                                                      const MigrationRequest& request,
                                                      const ToolPaths& tools, StateSink sink);

  // Each of these first finishes or undoes a cutover or rollback that a crash interrupted
  // (observing the servers and the router), then does its own work.
  //
  // Runs until RollbackReady (auto cutover) or ReadyForCutover (manual).
  Status Run(Router* router);
  // The cutover table (cutover.h), source -> target. REQUIRES: phase ReadyForCutover.
  Status Cutover(Router* router);
  // The same table target -> source. REQUIRES: phase RollbackReady.
  Status Rollback(Router* router);
  // Ends reverse replication and drops every object pgshift made. REQUIRES: RollbackReady or
  // RolledBack, and no cutover or rollback in flight.
  Status Finish();
  // Before cutover (or after Failed): drops every object pgshift made; the source keeps its
  // data untouched.
  Status Abort(Router* router);

  // The step run at the consistent point of every cutover and rollback (see CutoverHook).
  void set_cutover_hook(CutoverHook hook) { hook_ = std::move(hook); }

  // The state plus live facts (lag, per-table sync state) read from the servers when they
  // answer; `live.error` says why not when they do not.
  nlohmann::json StatusJson(bool live);
  const MigrationState& state() const { return state_; }

  // Progress lines go here (default: the log).
  void set_progress(std::function<void(const std::string&)> f) { progress_ = std::move(f); }
  // Polled in every wait; when it returns true the running step stops with an Aborted status
  // at a safe point (state saved, nothing half made that a resume cannot finish).
  void set_stop(std::function<bool()> f) { stop_ = std::move(f); }
  // Live figures (lag, tables synced, bytes copied, verification, cutovers); any thread.
  const StatsBoard& stats() const { return stats_; }
  // Reads the live figures from the servers now and appends a "sample" record to the history.
  // Run() samples by itself about once a second while it waits; callers that hold the
  // migration idle (the operator between reconciles) call this on the thread that runs it.
  Status SampleStats();

 private:
  Migration(std::string dir, MigrationState state, ToolPaths tools)
      : dir_(std::move(dir)), state_(std::move(state)), tools_(std::move(tools)) {
    InitStats();
  }

  // `sync` false: see SaveState; with a sink (the operator) such a save is not sent at all.
  Status Save(bool sync = true);
  Status Move(Phase to);
  void Progress(const std::string& line);
  // Sleeps `ms`, returning Aborted when stop_ says so.
  Status Wait(int64_t ms);

  // Live figures and history (stats_, history_): seeded from the saved state; sampled at most
  // once a second from the wait loops.
  void InitStats();
  void MaybeSampleStats();
  // ANALYZE of every table on the target before ReadyForCutover (statistics.h).
  Status WarmStatistics();
  // The lag trend and its estimate ("ready in ~40 s") from a fresh sample, into the board.
  void UpdateLagTrend(const StatsSnapshot& snap);
  void RecordError(const Status& s);
  void RecordCutover(const CutoverAttempt& a);

  Status StepPreflight();
  Status StepProvision();
  Status StepRoles();
  Status StepSchema();
  Status StepInitialCopy();
  // After every table's initial copy through the subscription: the constraints NOT VALID on
  // the source (SchemaSection::kNotValid), created NOT VALID, once per database.
  Status ApplyNotValidConstraints();
  // CopyMethod::kSnapshot for one database (step_copy.cc): the slot with its exported snapshot,
  // the copy, then post-data; leaves the slot for the subscription.
  Status CopyDatabase(DatabaseState& db, int jobs);
  Status RunCopy(const DatabaseState& db, const CopyPlan& plan, int jobs, bool resumed,
                 PostDataBuilder* post);
  Status BuildPostData(const DatabaseState& db, PostDataBuilder& post);
  // --jobs, or the target's cores when it was left at 0.
  int CopyJobs(pg::Connection& target);
  void PublishCopyProgress(const DatabaseState& db, const CopyProgress& p);
  std::string KeeperFile(const DatabaseState& db) const;
  std::string WorkFile(const std::string& name) const;
  Status StepCatchUp();
  // The new side takes no client write before the cutover opens it (fence.h).
  Status FenceTarget();

  // Cutover attempts in direction `d` (cutover.cc).
  Status Attempts(Router* router, const Direction& d);
  Status SwitchOver(Router* router, const Direction& d);
  // Finishes or undoes a cutover or rollback left in flight; Ok when none is.
  Status RecoverInFlight(Router* router);
  // The table once: from its start, or (recover) from the journal.
  Status RunTable(Router* router, const Direction& d, const CutoverJournal* recover);
  void RecordAttempt(const Direction& d, const CutoverReport& rep, bool succeeded);
  // Ok, or FailedPrecondition saying which command must run first.
  Status NothingInFlight(const char* action) const;
  // `watch`: also observe the forward subscription's workers while waiting (not inside the
  // cutover's pause, where every millisecond counts).
  Status WaitForMarker(bool forward, int64_t deadline_ms, ReplicationWatch* watch = nullptr);
  // Before a forward cutover holds clients: the subscriptions are enabled, met no conflict,
  // and a marker written on the source reaches the target now (their workers watched while
  // it travels), so the pause is never spent on replication that cannot apply.
  Status CheckReplicationFlows();
  // The WAL the source keeps for each slot, as the last sample measured it, against
  // --max-retained-wal and the slot's wal_status (wal_retention.h).
  Status GuardWal();
  // From the catch-up on, DDL on the source is carried to the target (ddl_carry.h): the
  // target's trigger starts at the carry row this inserts. Idempotent.
  Status EnableDdlCarry();
  // DDL logged on the source since the schema copy: every entry carried on the target (the
  // stream is waited for when it has not arrived yet), else FailedPrecondition with the
  // statements and why; then the tables that carried DDL made, renamed or dropped follow
  // (SyncNewTables: published, copied, and in the reverse publication).
  Status CheckDdlLog();
  // One pass of large objects (large_objects.h) for each database in direction `d`, from the
  // horizon of the last one, outside the cutover's pause; saves the new horizon.
  Status CarryLargeObjects(const Direction& d);
  Status SyncNewTables(DatabaseState& db, pg::Connection& src, pg::Connection& dst);
  // Entries of the source's DDL logs past their marks, all databases.
  Result<int64_t> DdlLogSize();
  Status Verify();
  // The exact comparison at the switch point (step_switch_point.cc, switch_point.h). Before a
  // forward cutover: opens its sessions (switch_point_); the cutover's consistent-point step
  // takes the snapshots. After it: compares them, records the result and acts on a difference
  // as --on-difference says (rollback through `router`, or stop with an error).
  Status PrepareSwitchPoint();
  Status CheckSwitchPoint(Router* router);
  // A comparison that was running when the process ended lost its snapshots: say so.
  void NoteLostSwitchPoint();
  Status WriteReport();
  // Drops everything pgshift made on both servers. The read-only default of the side clients
  // left (`keep_read_only`: the source after a cutover, the target after a rollback) stays,
  // so nothing writes to the old server by mistake.
  Status DropEverything(std::optional<Side> keep_read_only);
  // Abort: drops the target databases pgshift created, notes those it keeps and why.
  Status DropCreatedDatabases();

  std::string dir_;
  MigrationState state_;
  ToolPaths tools_;
  std::function<void(const std::string&)> progress_;
  std::function<bool()> stop_;
  StateSink sink_;
  std::optional<CutoverHook> hook_;
  std::string attempt_started_at_;
  StatsBoard stats_;
  StatsSampler sampler_;
  HistoryWriter history_{""};
  std::unique_ptr<SwitchPointCheck> switch_point_;
  int64_t last_sample_ms_ = -1;
  std::vector<std::string> attempt_notes_;  // the running cutover's steps said these
  LagTrend lag_trend_;     // the total lag while catching up (stats: ready_in_s)
  LagEstimate lag_estimate_;
  // Failing table sync and apply workers, across the copy and catch-up waits of this process.
  ReplicationWatch watch_;
  int64_t last_heartbeat_ms_ = -1;
};

// Replication lag of one database in bytes (source WAL not yet confirmed by the target's
// subscription); -1 when the slot is missing.
Result<int64_t> ForwardLagBytes(const MigrationState& s, const DatabaseState& db);
// The same for reverse replication after cutover: target WAL not yet confirmed by the
// source's reverse subscription (slot ReverseName(db) on the target); -1 when it is gone.
Result<int64_t> ReverseLagBytes(const MigrationState& s, const DatabaseState& db);

}  // namespace pgshift::engine
