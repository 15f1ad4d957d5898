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

#include "common/status.h"
#include "engine/history.h"
#include "engine/router.h"
#include "engine/sampler.h"
#include "engine/schema.h"
#include "engine/state.h"
#include "engine/stats.h"

namespace pgshift::engine {

struct MigrationRequest {
  std::string source_dsn;
  std::string target_dsn;
  std::string state_dir;
  MigrationOptions options;
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

  // Runs until RollbackReady (auto cutover) or ReadyForCutover (manual).
  Status Run(Router* router);
  // The cutover protocol, source -> target. REQUIRES: phase ReadyForCutover.
  Status Cutover(Router* router);
  // The same protocol target -> source. REQUIRES: phase RollbackReady.
  Status Rollback(Router* router);
  // Ends reverse replication and drops every object pgshift made. REQUIRES: RollbackReady or
  // RolledBack.
  Status Finish();
  // Before cutover: drops every object pgshift made; the source keeps its data untouched.
  Status Abort(Router* router);

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

  Status Save();
  Status Move(Phase to);
  void Progress(const std::string& line);
  // Sleeps `ms`, returning Aborted when stop_ says so.
  Status Wait(int64_t ms);

  // Live figures and history (stats_, history_): seeded from the saved state; sampled at most
  // once a second from the wait loops.
  void InitStats();
  void MaybeSampleStats();
  void RecordError(const Status& s);
  void RecordCutover(const CutoverAttempt& a);

  Status StepPreflight();
  Status StepProvision();
  Status StepRoles();
  Status StepSchema();
  Status StepInitialCopy();
  Status StepCatchUp();
  Status RecoverCutover(Router* router);

  // One attempt of the protocol; `forward` false is the rollback direction.
  Status SwitchOver(Router* router, bool forward);
  Status WaitForMarker(bool forward, int64_t deadline_ms);
  Status CheckDdlLog();
  Status Verify();
  Status WriteReport();
  Status DropEverything(bool keep_target_fence);

  std::string dir_;
  MigrationState state_;
  ToolPaths tools_;
  std::function<void(const std::string&)> progress_;
  std::function<bool()> stop_;
  StateSink sink_;
  StatsBoard stats_;
  StatsSampler sampler_;
  HistoryWriter history_{""};
  int64_t last_sample_ms_ = -1;
};

// Replication lag of one database in bytes (source WAL not yet confirmed by the target's
// subscription); -1 when the slot is missing.
Result<int64_t> ForwardLagBytes(const MigrationState& s, const DatabaseState& db);

}  // namespace pgshift::engine
