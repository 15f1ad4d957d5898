// The PostgresUpgrade reconciler.
//
// Reconcile is short: it reads the resource, makes the target (a StatefulSet and a Service
// owned by the resource, a Secret owned by the StatefulSet), and decides which engine step is due (spec.h: NextStep). Each step
// runs on a worker thread of its own resource, so a long initial copy never holds up other
// resources; the engine saves its state into the resource's status (status.engine) before and
// after every side effect, so a restarted operator resumes where the last one stopped. When
// the step ends, the resource is queued again and the next step is decided.
//
// Deleting the resource stops its worker, then the finalizer removes what pgshift made on the
// servers: before cutover (Abort) the source is left as it was and the target goes with the
// resource; after cutover (Finish) the target is the database in use, so it is detached from
// the resource (owner references removed) and kept.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "engine/router.h"
#include "engine/schema.h"
#include "engine/stats.h"
#include "k8s/client.h"
#include "k8s/events.h"
#include "k8s/status_writer.h"
#include "k8s/workqueue.h"
#include "operator/cluster.h"
#include "operator/spec.h"

namespace pgshift::op {

inline const k8s::Resource kPostgresUpgrades{"pgshift.dev", "v1alpha1", "postgresupgrades", true,
                                             "PostgresUpgrade"};

struct ControllerOptions {
  std::string watch_namespace;  // "" : every namespace
  std::string label_selector;   // "" : every PostgresUpgrade (--selector)
  ConnectMode connect_mode = ConnectMode::kServiceDns;
  AddressMap address_map;
  std::string work_dir = "/var/lib/pgshift-operator";
  engine::ToolPaths tools;
  int workers = 2;
  int status_interval_ms = 2000;  // live figures (lag, tables) are written this often
  // With leader election: true while this process still holds the Lease (LeaderElector::
  // HoldsLease). Every status write is refused and every engine step stops at its next check
  // once it is false, so a leader that was frozen and replaced writes nothing when it wakes.
  std::function<bool()> holds_lease;
  // With leader election: this leader's epoch (LeaderElector::Epoch), written with every
  // status and checked against the one there (k8s::StatusWriter), so that a write from an
  // older leader that reaches the API server late is refused.
  std::function<int64_t()> leader_epoch;
};

// One resource's figures for the metrics endpoint.
struct ResourceStats {
  std::string key;  // namespace/name
  engine::StatsSnapshot snapshot;
  std::optional<int64_t> max_lag_bytes;  // the spec's cutover thresholds
  std::optional<int64_t> max_pause_ms;
};

class Controller {
 public:
  Controller(k8s::Client* client, k8s::EventRecorder* events, ControllerOptions options);
  ~Controller();

  // Watches PostgresUpgrade resources and reconciles them until `stop` is requested; then
  // stops every worker at a safe point and returns.
  void Run(std::stop_token stop);
  // True once the first list of resources arrived.
  bool Synced() const { return synced_; }
  std::vector<ResourceStats> Stats() const;

  // One reconcile of `key` (namespace/name); public for tests.
  Status Reconcile(const std::string& key);

 private:
  struct Task;

  Status Finalize(const nlohmann::json& cr);
  Status EnsureFinalizer(const nlohmann::json& cr);
  Status EnsureTarget(const nlohmann::json& cr, const UpgradeSpec& spec);
  // Source credentials from the Secret; FailedPrecondition naming what is missing.
  // (username, password) from keys of a Secret; `field` names the spec field in errors.
  Result<std::pair<std::string, std::string>> Credentials(const std::string& ns,
                                                          const std::string& secret_name,
                                                          const std::string& username_key,
                                                          const std::string& password_key,
                                                          const std::string& field);
  Result<std::pair<std::string, std::string>> SourceCredentials(const std::string& ns,
                                                                const UpgradeSpec& spec);
  Result<std::string> TargetPassword(const std::string& ns, const std::string& name);
  // DSNs (password in a pgpass file under the work folder) and the Service router.
  struct Wiring {
    std::string source_dsn, target_dsn, work_dir;
    engine::Endpoint source, target;
    // spec.traffic.pooler: its admin console's user (empty: the operator's own) and password
    std::string pooler_admin_user, pooler_admin_password;
  };
  Result<Wiring> Wire(const nlohmann::json& cr, const UpgradeSpec& spec);
  // spec.traffic.pooler: its Secret (written once, from the source's roles and databases),
  // backend Service (made once: the cutover moves it), Deployment and Service; or an adopted
  // one's admin Secret. Sets wiring->pooler_admin_user and pooler_admin_password.
  Status EnsurePooler(const nlohmann::json& cr, const UpgradeSpec& spec, Wiring* wiring);
  Result<std::string> PoolerAdminPassword(const std::string& ns, const std::string& name);
  // A managed pooler's backend Service left without its selector (SliceBackend) by a step that
  // ended before giving it back, when no cutover is in flight: its selector back. Only while
  // no step runs for the resource.
  Status AttachPoolerBackend(const nlohmann::json& cr, const UpgradeSpec& spec);
  // The router of the spec: the pooler's, else the traffic Service's. `state` gives the
  // pooler's probes the servers' majors (it must outlive the router).
  Result<std::unique_ptr<engine::Router>> MakeRouter(const nlohmann::json& cr,
                                                     const UpgradeSpec& spec, const Wiring& wiring,
                                                     const engine::MigrationState* state);
  Status PatchStatus(const std::string& ns, const std::string& name, const nlohmann::json& status);
  // The engine's state into status.engine, with the fields derived from it.
  Status SaveEngineState(const std::string& ns, const std::string& name,
                         const engine::MigrationState& state);
  // The ConfigMaps with every table's verification (VerificationConfigMaps), when the
  // reports changed since this process last wrote them.
  Status WriteVerificationDetail(const std::string& ns, const std::string& name,
                                 const engine::MigrationState& state);
  Status WriteVerificationConfigMaps(const std::string& ns, const std::string& name,
                                     const nlohmann::json& engine);
  Status ReportProblem(const nlohmann::json& cr, const std::string& reason,
                       const std::string& message, bool working = false);
  // Starts `step` on a thread of its own, with the spec and servers this reconcile found.
  void StartTask(const nlohmann::json& cr, const UpgradeSpec& spec, Step step, Wiring wiring);
  // Removes the target's owner references, so it outlives the resource.
  Status DetachTarget(const std::string& ns, const std::string& name);
  void StopTask(const std::string& key);
  void RunTask(std::shared_ptr<Task> task, std::stop_token stop);

  k8s::Client* client_;
  k8s::EventRecorder* events_;
  ControllerOptions options_;
  // Every status write (reconcile, the engine's saves, the live figures) goes through it.
  k8s::StatusWriter status_writer_;
  k8s::WorkQueue queue_;
  std::atomic<bool> synced_{false};

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Task>> tasks_;
  // The last figures of every resource seen (phase, and the live ones while a step runs).
  std::map<std::string, ResourceStats> last_stats_;
  // After cutover: the last reading of each resource's reverse replication lag (MonotonicMillis
  // when read; the total, unknown when a database could not be read).
  struct ReverseLagReading {
    int64_t at_ms = 0;
    std::optional<int64_t> total;
    std::string target_dsn;  // as Wire gave it, at wired_at_ms
    int64_t wired_at_ms = 0;
  };
  std::map<std::string, ReverseLagReading> reverse_lag_;
  // ns/name -> MigrationState::ReportsFingerprint of the reports last written to ConfigMaps.
  std::map<std::string, std::string> verification_written_;
  // Keeps the phase and thresholds of `cr` in last_stats_.
  void Remember(const nlohmann::json& cr, const UpgradeSpec* spec);
};

}  // namespace pgshift::op
