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
#include "engine/cutover_executor.h"
#include "engine/verify.h"

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

// How clients are moved at cutover. The names are the --router words and the state's JSON.
enum class RouterKind {
  kPgBouncer,          // "pgbouncer": PAUSE, ini rewrite + RELOAD, RESUME
  kNginx,              // "nginx": upstream rewrite + reload; cannot hold clients
  kManual,             // "manual": pgshift fences and waits for `cutover --confirm`
  kKubernetesService,  // "kubernetes-service": the operator moves a Service's selector
};
std::string RouterKindName(RouterKind k);
Result<RouterKind> ParseRouterKind(const std::string& name);

// "auto": cutover as soon as ready; "manual": stop at ReadyForCutover.
enum class CutoverMode { kAuto, kManual };
std::string CutoverModeName(CutoverMode m);
Result<CutoverMode> ParseCutoverMode(const std::string& name);

// Tables without a primary key or replica identity: "refuse" them in preflight, or replicate
// them with REPLICA IDENTITY "full". (The state's JSON keeps the bool tables_without_pk_full.)
enum class TablesWithoutPk { kRefuse, kFull };
std::string TablesWithoutPkName(TablesWithoutPk t);
Result<TablesWithoutPk> ParseTablesWithoutPk(const std::string& name);

// How the initial copy is made (docs/engine.md). kSnapshot: pgshift's own parallel copy under
// the exported snapshot of the slot replication then continues from (schema before the copy
// without indexes and constraints, those built after it, then the subscription with
// copy_data = false). kNative: the subscription's own copy_data = true into tables that already
// carry every index.
enum class CopyMethod { kSnapshot, kNative };
std::string CopyMethodName(CopyMethod m);  // "snapshot" | "native"
Result<CopyMethod> ParseCopyMethod(const std::string& name);

// What a migration does when the exact comparison at the cutover's switch point (after the
// clients moved) finds a difference: "rollback" moves them back to the source at once (reverse
// replication carried every write made on the target meanwhile, so nothing is lost); "stop"
// leaves them on the target and stops for a person to choose `pgshift rollback` or `finish`.
enum class OnDifference { kRollback, kStop };
std::string OnDifferenceName(OnDifference d);
Result<OnDifference> ParseOnDifference(const std::string& name);

// Every option of a migration with its default: the CLI, the operator and the state JSON
// start from a default-constructed MigrationOptions and spell no default of their own.
// (The verify level's names are in verify.h: none | count | checksum.)
struct MigrationOptions {
  RouterKind router = RouterKind::kPgBouncer;
  std::string router_admin;   // PgBouncer admin console DSN
  std::string router_config;  // pgbouncer.ini or nginx.conf
  CutoverMode cutover = CutoverMode::kAuto;
  int64_t max_lag_bytes = 16 << 20;
  int max_pause_ms = 2000;
  std::vector<std::string> databases;  // empty: every non-template database of the source
  TablesWithoutPk tables_without_pk = TablesWithoutPk::kRefuse;
  VerifyLevel verify = VerifyLevel::kChecksum;
  // Without rollback replication a rollback would lose writes: the migration stops instead.
  OnDifference on_difference = OnDifference::kRollback;
  bool rollback_replication = true;
  std::string report_file;
  int cutover_attempts = 5;
  CopyMethod copy = CopyMethod::kSnapshot;
  int copy_jobs = 0;          // sessions per side copying at once (kSnapshot); 0: the target's cores
  int64_t copy_rate = 0;      // bytes/s the copy reads from the source, all jobs together; 0: no limit
  // Most WAL the source may keep for one of pgshift's slots before pgshift stops (0: no limit;
  // wal_retention.h).
  int64_t max_retained_wal = 0;
};

// What exists for one migrated database. Each flag is set after the object was made, and
// every transition checks the server too, so a crash between the two is harmless.
struct DatabaseState {
  std::string name;
  int index = 0;
  // pgshift made the target database (set before CREATE DATABASE, so a crash in between
  // still counts it as pgshift's): abort drops it.
  bool target_created = false;
  bool schema_copied = false;
  int64_t ddl_mark = 0;         // ddl log entries up to this id predate the schema copy
  // The DDL log is replicated and its carried statements run on the target (ddl_carry.h).
  bool ddl_carry = false;
  // Ids of the log's entries past ddl_mark found carried on the target (CheckDdlLog).
  std::vector<int64_t> ddl_carried;
  // Large objects (large_objects.h): where the next pass source -> target starts ("" before
  // the first), and the target's horizon from the forward cutover for a pass back.
  std::string lo_horizon;
  std::string lo_reverse_horizon;
  std::vector<std::string> tables;  // schema-qualified, quoted names in the publication
  // The constraints NOT VALID on the source, created after every table's initial copy.
  bool not_valid_applied = false;
  // CopyMethod::kSnapshot. The target holds the truth (copy.h); these only spare a resumed run
  // the work of finding out.
  bool copy_done = false;       // every table's rows are on the target
  bool post_data_done = false;  // indexes, constraints, triggers built after the copy
  // Planner statistics warmed on the target before cutover (statistics.h).
  bool analyzed = false;
  int analyzed_tables = 0;
  double analyze_ms = 0;
  // The other path (18+ targets, pg_dump 18+): relations whose statistics were copied from
  // the source (pg_dump --statistics-only) before the ANALYZE of what it left out; -1: the
  // statistics were not copied (every table analyzed).
  int statistics_copied = -1;
  double statistics_copy_ms = 0;
};

struct CutoverAttempt {
  std::string direction;  // forward | rollback
  std::string started_at;
  bool succeeded = false;
  bool recovered = false;  // ended by a later run, after a crash
  double pause_ms = 0;
  std::string failed_step;
  std::string error;
  std::vector<std::pair<std::string, double>> steps_ms;
  // What the cutover said on its way (a roll forward and why, a router that was late).
  std::vector<std::string> notes;
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
  // Set while a cutover or rollback runs, with the step the executor was at (written before
  // the step acts). A restart observes the servers and the router and finishes or undoes it.
  std::string cutover_in_flight;  // "", "forward" or "rollback"
  CutoverJournal cutover_journal;
  std::vector<std::string> notes;  // things people must know (roles not carried, ...)
  nlohmann::json verification;     // the last verification report (before cutover)
  // The exact comparison at the last forward cutover's switch point: its report plus
  // "action" (what pgshift did about a difference); {"state": "running"} while it runs (a
  // crash then lost the snapshots), {"error": ...} when it could not be done.
  nlohmann::json switch_point_verification;
  std::string last_error;
  std::string created_at;
  std::string updated_at;

  // `with_reports` false leaves out the two verification reports, which list every table
  // (about 400 bytes of JSON each): what is saved at every step, and in the cutover's pause,
  // stays small however many tables there are.
  nlohmann::json ToJson(bool with_reports = true) const;
  static Result<MigrationState> FromJson(const nlohmann::json& j);
  // Changes whenever either report does, without serializing their per-table lists.
  std::string ReportsFingerprint() const;
  // The fingerprint of the reports in <dir>/verification.json (not saved itself).
  std::string reports_saved;

  std::string Prefix() const { return "pgshift_" + id; }
  std::string PublicationName(const DatabaseState& db) const;
  std::string SubscriptionName(const DatabaseState& db) const;  // also the slot's name
  std::string ReverseName(const DatabaseState& db) const;       // reverse pub, sub and slot
  std::string EventTriggerName() const { return Prefix() + "_ddl"; }
  // The fence's event trigger and table triggers (fence.h).
  std::string FenceName() const { return Prefix() + "_fence"; }
  // Marks `p` as entered now (and the previous phase finished).
  void Enter(Phase p);
};

// <dir>/state.json, written atomically (temp file, fsync, rename), mode 0600: it holds DSNs.
// `sync` false skips the fsyncs (see WriteFileAtomic): for journal entries inside the clients'
// pause that only a process crash needs to find. The verification reports go to
// <dir>/verification.json (kReportsFile), written before state.json and only when they
// changed; LoadState puts them back (a state.json that holds them, from before, reads too).
inline constexpr const char* kReportsFile = "verification.json";
Status SaveState(const std::string& dir, MigrationState* state, bool sync = true);
Result<MigrationState> LoadState(const std::string& dir);
bool StateExists(const std::string& dir);

// The allowed edges of the state machine; the orchestrator refuses any other move, staying
// included (from == to is not an edge).
bool TransitionAllowed(Phase from, Phase to);

}  // namespace pgshift::engine
