// The migration's persisted state machine (see docs/engine.md).
//
// Phases are the API: `pgshift status` and the operator's CR status use the same words.
// States do nothing; transitions act. The orchestrator writes the state before and after every
// side effect, so a restart after kill -9 finds what was done and what is half done.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::engine {

enum class Phase {
  kPending,
  kPreflight,
  kProvisioning,
  kRoles,
  kSchema,
  kInitialCopy,
  kCatchingUp,
  kReadyForCutover,
  kCuttingOver,
  kRollbackReady,
  kCompleted,
  kFailed,
  kRolledBack,
  kAborted,
};

std::string PhaseName(Phase p);
Result<Phase> ParsePhase(const std::string& name);
bool IsTerminal(Phase p);

struct MigrationOptions {
  std::string router = "pgbouncer";  // pgbouncer | nginx | manual
  std::string router_admin;          // PgBouncer admin console DSN
  std::string router_config;         // pgbouncer.ini or nginx.conf
  std::string cutover = "auto";      // auto | manual
  int64_t max_lag_bytes = 16 << 20;
  int max_pause_ms = 2000;
  std::vector<std::string> databases;  // empty: every non-template database of the source
  bool tables_without_pk_full = false;
  std::string verify = "checksum";  // none | count | checksum
  bool rollback_replication = true;
  std::string report_file;
  int cutover_attempts = 5;
};

// What exists for one migrated database. Each flag is set after the object was made, and
// every transition checks the server too, so a crash between the two is harmless.
struct DatabaseState {
  std::string name;
  int index = 0;
  bool target_created = false;  // pgshift made the target database
  bool schema_copied = false;
  int64_t ddl_mark = 0;         // ddl log entries up to this id predate the schema copy
  std::vector<std::string> tables;  // schema-qualified, quoted names in the publication
};

struct CutoverAttempt {
  std::string direction;  // forward | rollback
  std::string started_at;
  bool succeeded = false;
  double pause_ms = 0;
  std::string failed_step;
  std::string error;
  std::vector<std::pair<std::string, double>> steps_ms;
};

struct PhaseTimes {
  std::string started_at;
  std::string finished_at;
};

struct MigrationState {
  int version = 1;
  std::string id;  // 8 hex characters; in every object name: pgshift_<id>_...
  Phase phase = Phase::kPending;
  std::string source_dsn;
  std::string target_dsn;
  int source_major = 0;
  int target_major = 0;
  MigrationOptions options;
  std::vector<DatabaseState> databases;
  std::map<std::string, PhaseTimes> phase_times;
  std::vector<CutoverAttempt> cutovers;
  // Set while a cutover or rollback runs; a restart uses it to finish or undo the step.
  std::string cutover_in_flight;  // "", "forward" or "rollback"
  std::vector<std::string> notes;  // things people must know (roles not carried, ...)
  nlohmann::json verification;     // the last verification report
  std::string last_error;
  std::string created_at;
  std::string updated_at;

  nlohmann::json ToJson() const;
  static Result<MigrationState> FromJson(const nlohmann::json& j);

  std::string Prefix() const { return "pgshift_" + id; }
  std::string PublicationName(const DatabaseState& db) const;
  std::string SubscriptionName(const DatabaseState& db) const;  // also the slot's name
  std::string ReverseName(const DatabaseState& db) const;       // reverse pub, sub and slot
  std::string EventTriggerName() const { return Prefix() + "_ddl"; }
  // Marks `p` as entered now (and the previous phase finished).
  void Enter(Phase p);
};

// <dir>/state.json, written atomically (temp file, fsync, rename), mode 0600: it holds DSNs.
Status SaveState(const std::string& dir, MigrationState* state);
Result<MigrationState> LoadState(const std::string& dir);
bool StateExists(const std::string& dir);

// The allowed edges of the state machine; the orchestrator refuses any other move.
bool TransitionAllowed(Phase from, Phase to);

}  // namespace pgshift::engine
