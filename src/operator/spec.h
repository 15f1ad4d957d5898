// The PostgresUpgrade resource (pgshift.dev/v1alpha1) as the operator reads it, and the pure
// functions that turn it into objects and status: the target StatefulSet, Service and Secret,
// the engine's options, and the standard conditions. No I/O here (unit-tested in
// spec_test.cc); deploy/crd/ holds the schema the API server validates first.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/state.h"
#include "engine/stats.h"

namespace pgshift::op {

using Json = nlohmann::json;

inline constexpr const char* kGroup = "pgshift.dev";
inline constexpr const char* kApiVersion = "pgshift.dev/v1alpha1";
inline constexpr const char* kKind = "PostgresUpgrade";
inline constexpr const char* kFinalizer = "pgshift.dev/cleanup";
inline constexpr const char* kUpgradeLabel = "pgshift.dev/upgrade";
inline constexpr const char* kRoleLabel = "pgshift.dev/role";
// On the traffic Service: its selector before pgshift moved it (JSON), to move it back.
inline constexpr const char* kSourceSelectorAnnotation = "pgshift.dev/source-selector";
inline constexpr const char* kFieldManager = "pgshift-operator";

// spec.traffic.pooler.existing: a PgBouncer the user already runs, which the operator adopts:
// it makes nothing, and at cutover holds clients in it and moves the Service its [databases]
// entries name as their host (see pooler.h).
struct ExistingPoolerSpec {
  std::string service;          // in front of the PgBouncer Pods: its ready endpoints
  std::string backend_service;  // what the ini's [databases] name; selects the source's Pods
  std::string admin_secret;     // a user of PgBouncer's admin_users and its password
  std::string username_key = "username";
  std::string password_key = "password";
  int settle_ms = 1000;  // clients held after the EndpointSlices moved (kube-proxy's sync)
};

// spec.traffic.pooler: a PgBouncer the operator runs in front of the source (see pooler.h),
// or one it adopts (`existing`; the other fields are then unused).
struct PoolerSpec {
  bool enabled = false;
  std::optional<ExistingPoolerSpec> existing;
  int replicas = 2;
  std::string pool_mode = "transaction";  // transaction | statement
  std::string image = "edoburu/pgbouncer:v1.24.1-p1";
  int max_client_conn = 1000;
  int default_pool_size = 20;
  Json resources = Json::object();
};

struct UpgradeSpec {
  // source
  std::string source_service;  // XOR source_host
  std::string source_host;
  int source_port = 5432;
  std::vector<std::string> databases;
  std::string secret_name;
  std::string username_key = "username";
  std::string password_key = "password";
  // target
  int target_version = 0;
  std::string target_image;  // default postgres:<version>
  std::string storage_size = "1Gi";
  std::string storage_class;
  Json resources = Json::object();
  std::map<std::string, std::string> parameters;
  // traffic, cutover, verify, rollback: exactly one of traffic_service and pooler
  std::string traffic_service;
  PoolerSpec pooler;
  // Defaults are the engine's (engine::MigrationOptions), as the CRD's schema documents.
  engine::TablesWithoutPk tables_without_pk = engine::MigrationOptions{}.tables_without_pk;
  engine::CopyMethod copy_method = engine::MigrationOptions{}.copy;
  int copy_jobs = engine::MigrationOptions{}.copy_jobs;
  int64_t copy_rate = engine::MigrationOptions{}.copy_rate;  // bytes/s
  // source.maxRetainedWal: --max-retained-wal (0: no limit); follows the spec on resume.
  int64_t max_retained_wal = engine::MigrationOptions{}.max_retained_wal;
  engine::CutoverMode cutover_mode = engine::MigrationOptions{}.cutover;
  bool cutover_approved = false;
  int64_t max_lag_bytes = engine::MigrationOptions{}.max_lag_bytes;
  int max_pause_ms = engine::MigrationOptions{}.max_pause_ms;
  // Unset: the engine's (rollback, which the engine turns into stop without reverse
  // replication). Set to rollback, it needs keep_reverse_replication.
  std::optional<engine::OnDifference> on_difference;
  engine::VerifyLevel verify = engine::MigrationOptions{}.verify;
  bool keep_reverse_replication = engine::MigrationOptions{}.rollback_replication;
  std::string action;  // "" | Rollback | Finish
  bool check_only = false;
};

// Reads .spec with the CRD's defaults, and checks it again (the CRD may be installed without
// validation, or by an older version): an InvalidArgument says what to fix.
Result<UpgradeSpec> ParseSpec(const Json& resource);

// Names of the objects the operator makes for a resource.
std::string TargetName(const std::string& upgrade_name);  // "<name>-target"
// The labels of the target's Pods; also the traffic Service's selector after cutover.
Json TargetSelector(const std::string& upgrade_name);

// An ownerReference to `resource` (controller, blockOwnerDeletion).
Json OwnerReference(const Json& resource);
// The target's Secret: user postgres and `password`. Owned by the target's StatefulSet
// (not by the resource), so it lives exactly as long as the server that uses it: gone with
// the resource before cutover, kept with the StatefulSet when the target is detached.
Json TargetSecret(const Json& resource, const Json& statefulset, const std::string& password);
// A headless-free ClusterIP Service on 5432 selecting the target's Pod.
Json TargetService(const Json& resource);
// One replica of postgres:<version> with wal_level=logical, the spec's parameters, resources
// and storage; the claim goes with the StatefulSet.
Json TargetStatefulSet(const Json& resource, const UpgradeSpec& spec);

// A Kubernetes quantity ("50Mi", "50M", "5e7", "1000") as a whole number; an
// InvalidArgument for anything else: a fraction ("1.5", "100m"), a negative value, or more
// than int64 holds.
Result<int64_t> QuantityToInt64(const std::string& text);

// The engine's text (an error, a preflight remedy) in the resource's words: the CLI options
// and commands it names for the settings the spec has are replaced by the spec's fields.
std::string InSpecWords(std::string engine_text);

// The findings of a preflight that stopped a migration, from the engine's progress line
// ("preflight found problems:" and the report's table), one line each, InSpecWords; empty
// when `progress_line` is no such report.
std::vector<std::string> PreflightFindings(const std::string& progress_line);

// The engine's options from the spec.
engine::MigrationOptions EngineOptions(const UpgradeSpec& spec);

// The options to resume a started migration with: `started` (its saved options) with what the
// spec may still change at `phase` taken from `spec`. The cutover settings, verify and the copy's
// pace always follow the spec; the choice for tables without a primary key follows it until the
// initial copy is done (it is used by the preflight and when the publications are made), so
// a preflight that refused such a table passes once the spec says full; databases, reverse
// replication and the copy method stay as started (they shaped the servers).
engine::MigrationOptions ResumedOptions(const engine::MigrationOptions& started,
                                        engine::Phase phase, const UpgradeSpec& spec);

// What the operator must ask of the engine now, from the engine's phase and the spec.
enum class Step {
  kNone,       // nothing to do (waiting for approval, idle after cutover, ended)
  kPreflight,  // checkOnly
  kRun,        // to ReadyForCutover, and on through the cutover when mode is auto
  kCutover,    // manual mode, approved
  kRollback,   // action Rollback after cutover
  kFinish,     // action Finish after cutover or rollback
};
Step NextStep(const UpgradeSpec& spec, std::optional<engine::Phase> phase, bool preflight_done);
std::string StepName(Step s);

// Standard conditions (Ready, Progressing, CutoverReady, Degraded) for the state at hand.
// `error_reason`/`error` are the last failure (empty when none); `working` is true while a
// worker runs a step. Existing conditions keep their lastTransitionTime when unchanged.
Json Conditions(const Json& existing, const std::string& phase, bool working,
                bool waiting_for_approval, const std::string& error_reason,
                const std::string& error, int64_t generation, const std::string& now);

// The status fields derived from the engine's state (phase, versions, phase times, last
// cutover) and from live stats (lag, tables, bytes copied: absent when not fresh).
Json StatusFromEngine(const engine::MigrationState& state);
Json StatusFromStats(const engine::StatsSnapshot& snapshot);

// Verification detail out of status.engine. A verification report lists every table (about
// 400 bytes of JSON each, twice: before cutover and at the switch point), which past a few
// thousand tables would not fit in the object limit of the API server (1.5 MiB in etcd). In
// status.engine each report keeps its summary and at most `max_listed` tables that did not
// match ("tables_listed", with "tables_not_listed" and "detail" naming where the rest went);
// every table goes to a ConfigMap per database (VerificationConfigMaps). A report without a
// per-table list (running, an error, or one already shortened) is left as it is.
Json VerificationForStatus(const Json& report, const std::string& detail, size_t max_listed = 20);
// The "detail" of report `report` ("verification" or "switch_point_verification") of the
// resource `upgrade_name`: where every table went.
std::string VerificationDetailNote(const std::string& upgrade_name, const std::string& report);
// True when `engine` holds a report with its per-table list.
bool HasVerificationDetail(const Json& engine);

// "<name>-verification-<database index>"
std::string VerificationConfigMapName(const std::string& upgrade_name, int database_index);
// One ConfigMap per database of the engine's state, owned by `resource`: data keys
// "before-cutover.tsv" and "switch-point.tsv" (each only when `engine` holds that report's
// per-table list), a header line and a line per table (schema,
// table, result, source rows, target rows, seconds, note). Each key is cut at
// `max_bytes_per_key` (with a last line saying how many tables it leaves out): a ConfigMap
// holds at most 1 MiB.
std::vector<Json> VerificationConfigMaps(const Json& resource, const Json& engine,
                                         size_t max_bytes_per_key = 480 * 1024);

}  // namespace pgshift::op
