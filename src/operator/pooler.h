// spec.traffic.pooler: a PgBouncer the operator runs in front of the servers, and the Router
// that holds clients in it at cutover.
//
// The objects (all labelled pgshift.dev/pooler=<resource>, none owned by the resource: the
// application connects through them, so they must outlive it):
//   Service    <name>-pooler          what the application connects to (port 5432)
//   Deployment <name>-pooler          `replicas` PgBouncers (edoburu/pgbouncer by default, which
//                                     runs /etc/pgbouncer/pgbouncer.ini when it is there)
//   Secret     <name>-pooler          pgbouncer.ini and userlist.txt, mounted at /etc/pgbouncer
//   Service    <name>-pooler-backend  where every PgBouncer sends its server connections: it
//                                     selects the source's Pods, then the target's
//
// The cutover moves no file: PgBouncer reads its ini once, and a changed Secret reaches a
// running Pod only after the kubelet's sync (about a minute). Instead, while clients are held
// by PAUSE on every replica, the backend Service is moved: for the cutover it is led by an
// EndpointSlice of pgshift's instead of its selector (SliceBackend), and the switch rewrites
// that slice, as soon as every replica is paused (PAUSE closed the held entries' server
// connections), while the engine fences and catches up (SwitchesEarly, BeginSwitch). Every
// replica then RECONNECTs (closes its idle server connections) and proves, through its own
// network path, that a new server connection lands on the new server: it logs in through a
// probe database of its own ini (pgshift_probe_source / pgshift_probe_target,
// each with that server's credentials) and checks the major version there. Only then are
// clients resumed. The probe is what makes the switch exact where kube-proxy lags behind the
// EndpointSlices. After the step the Service gets its selector back.
//
// The ini's entries run the engine's hold (PoolerHoldQuery, fence.h) on each new server
// connection: a login to a fenced database waits there until the fence lifts. So the clients
// are resumed as soon as the probes passed, still inside the cutover: each pool logs in to the
// new side, still fenced, while the engine catches up, and its held transactions run the
// moment step open lifts the fence, with no login left to wait for (HoldsAtFencedSide).
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "engine/router.h"
#include "k8s/client.h"
#include "operator/cluster.h"
#include "operator/spec.h"
#include "pg/connection.h"

namespace pgshift::op {

inline constexpr const char* kPoolerLabel = "pgshift.dev/pooler";
inline constexpr const char* kPoolerAdminUser = "pgshift_pooler_admin";
inline constexpr const char* kProbeSource = "pgshift_probe_source";
inline constexpr const char* kProbeTarget = "pgshift_probe_target";
// The label that names who manages an EndpointSlice, and its value on pgshift's own slice.
inline constexpr const char* kSliceManagedBy = "endpointslice.kubernetes.io/managed-by";
inline constexpr const char* kSliceManager = "pgshift-operator";

std::string PoolerName(const std::string& upgrade_name);         // "<name>-pooler"
std::string PoolerBackendName(const std::string& upgrade_name);  // "<name>-pooler-backend"

// A login role of the source and its password hash (pg_authid.rolpassword: SCRAM or md5), as
// PgBouncer's auth_file takes it. Roles are copied to the target with the same hash, so the
// same line logs a client in on either side.
struct PoolerRole {
  std::string name;
  std::string secret;
};

// What the pooler's configuration is made of.
struct PoolerConfig {
  std::string ns;
  std::string upgrade;
  std::vector<std::string> databases;        // the migrated databases: one [databases] entry each
  int backend_port = 5432;                   // the backend Service's port
  std::string source_user, source_password;  // the probe of the source
  std::string target_password;               // the probe of the target (user postgres)
  std::string admin_password;                // kPoolerAdminUser, the admin console's user
  std::vector<PoolerRole> roles;
  PoolerSpec spec;
};

// pgbouncer.ini. InvalidArgument for a database name PgBouncer's ini or console cannot carry
// (only letters, digits, '_', '.', '-'), or a password with a line break.
Result<std::string> PoolerIni(const PoolerConfig& c);
// The [databases] entries of a pooler's ini, probes left out: what it serves.
std::vector<std::string> PoolerIniDatabases(const std::string& ini);
// Whether a pooler's ini holds new server connections at a fenced database (its entries run
// PoolerHoldQuery). An ini an older operator wrote does not: its cutover resumes at the end.
bool PoolerIniHolds(const std::string& ini);
// userlist.txt: the admin user (plain text) and every role with a password hash.
std::string PoolerUserlist(const PoolerConfig& c);
// The Secret with both files and the admin password (key "admin-password").
Result<Json> PoolerSecret(const Json& resource, const PoolerConfig& c);
Json PoolerDeployment(const Json& resource, const PoolerSpec& spec);
Json PoolerService(const Json& resource);
// Selects what `source_service` selects, on its port's targetPort, and remembers that selector
// in the annotation the ServiceRouter restores it from. FailedPrecondition when the source
// Service has no selector, or a targetPort the target's Pods do not have (5432 or "postgres").
Result<Json> PoolerBackendService(const Json& resource, const Json& source_service);

// The managed pooler's backend Service during a cutover, moved without the EndpointSlice
// controller. Flipping a selector costs that controller's reaction (7-100 ms measured on the
// test cluster, more on a busy real one) inside the clients' pause; writing the Service's
// EndpointSlice costs one request. Outside a cutover the Service keeps its selector, so it
// follows the servers' Pods with or without the operator:
//   PrepareSwitch (before the cutover's or rollback's attempts) an EndpointSlice of pgshift's
//   (<backend>-pgshift) with the
//                             endpoints the Service has now, then the selector removed and the
//                             controller's slices deleted (it leaves a selectorless Service's
//                             slices alone); at every step clients reach the same Pods
//   SwitchTo (in the pause)   that slice rewritten with the other server's endpoints, read
//                             before the pause; returns once a watch saw the write, as the
//                             nodes' proxies do
//   Attach (after the step, and before any next one: EnsurePooler) the selector of the side
//                             the slice leads to, then, once the controller's slices list the
//                             same endpoints, pgshift's slice deleted
class SliceBackend : public ServiceRouter {
 public:
  SliceBackend(k8s::Client* client, std::string ns, std::string upgrade, engine::Endpoint source,
               std::string source_service, engine::Endpoint target, int settle_timeout_ms = 10000);

  std::string Kind() const override { return "kubernetes-endpointslice"; }
  Status PrepareSwitch() override;  // detaches
  Status SwitchTo(const engine::Endpoint& to) override;
  // The selector back: of the side whose ready endpoints the slice lists, else of the side
  // `on_target` names (where the migration left traffic), else FailedPrecondition.
  Status Attach(std::optional<bool> on_target = std::nullopt);

 private:
  Status Detach();
  Status WriteSlice(const std::vector<SliceEndpoint>& eps);
  // The ready endpoints of Service `service`; Unavailable when it has none.
  Result<std::vector<SliceEndpoint>> ReadyOf(const std::string& service);

  std::string upgrade_;
  bool detached_ = false;
  std::vector<SliceEndpoint> source_eps_, target_eps_;  // read by Check, before the pause
  std::string slice_version_;                           // of pgshift's slice, as last written
};

// pgshift's EndpointSlice of backend Service `backend` with endpoints `eps` (one port, named
// like the Service's, "postgres").
Json BackendSlice(const std::string& ns, const std::string& backend, const std::string& upgrade,
                  const std::vector<SliceEndpoint>& eps);
std::string BackendSliceName(const std::string& backend);  // "<backend>-pgshift"
// Which server `eps` lead to: "target", "source", or "" when neither's endpoints exactly.
std::string SideOfEndpoints(const std::vector<SliceEndpoint>& eps,
                            const std::vector<SliceEndpoint>& source,
                            const std::vector<SliceEndpoint>& target);

// How to reach one PgBouncer replica.
struct PoolerReplica {
  std::string pod_ip;
  engine::Endpoint address;  // translated (AddressMap) when the Pod IP does not route
};

// Holds clients in every replica of the pooler and moves them by flipping the backend Service.
// One row of an adopted PgBouncer's SHOW DATABASES: the entry's name (what PAUSE takes), the
// server's database, the host and the entry's own pool_mode ("" for the default).
struct PoolerDatabaseRow {
  std::string name, database, host, pool_mode;
};

// Whether a [databases] host names Service `service` of namespace `ns`: its short name,
// <service>.<ns>, <service>.<ns>.svc, or <service>.<ns>.svc.<cluster domain>.
bool HostNamesService(std::string_view host, const std::string& service, const std::string& ns);

// The entries of an adopted PgBouncer that reach the database through Service `backend` (the
// ones to hold at cutover). FailedPrecondition, with the fix, when there is none, when one is
// in session mode (its own or `default_mode`), or when one serves a database that is not
// migrated (`migrated` empty: every database is).
Result<std::vector<std::string>> AdoptedPoolerDatabases(const std::vector<PoolerDatabaseRow>& rows,
                                                        const std::string& default_mode,
                                                        const std::string& backend,
                                                        const std::string& ns,
                                                        const std::vector<std::string>& migrated);

class PoolerRouter : public engine::Router {
 public:
  struct Options {
    std::string ns, upgrade;
    // The databases (ini entry names) to hold. Adopted: found by Check from SHOW DATABASES.
    std::vector<std::string> databases;
    // The Service of the PgBouncer Pods and the one their server connections go through.
    std::string service, backend;
    std::string admin_user = kPoolerAdminUser;
    std::string admin_password;
    // An adopted PgBouncer (spec.traffic.pooler.existing): its ini has no probe databases, so
    // the switch waits for the backend's EndpointSlices, then `settle_ms` more for every
    // node's service proxy, then RECONNECTs. `migrated`: the databases migrated (empty: all).
    bool adopted = false;
    int settle_ms = 1000;
    std::vector<std::string> migrated;
    // (source, target) majors: what each probe must find; 0 when not known yet.
    std::function<std::pair<int, int>()> majors;
    AddressMap address_map;
    int settle_timeout_ms = 10000;
    // Managed: its ini runs the hold (PoolerIniHolds).
    bool holds_at_fence = false;
  };
  PoolerRouter(k8s::Client* client, Options o, engine::Endpoint source, std::string source_service,
               engine::Endpoint target);
  ~PoolerRouter() override;

  std::string Kind() const override { return "kubernetes-pooler"; }
  // Every ready replica answers on its admin console; the backend Service exists.
  Status Check() override;
  std::string Summary() const override { return summary_; }
  // PAUSE <db> for each migrated database on every ready replica, in parallel; on a failure or
  // the deadline, what was paused is resumed.
  Status Pause(int timeout_ms) override;
  // RESUME <db> on every replica that can be reached (one that cannot holds no client).
  Status Resume() override;
  // Moves the backend Service (managed: its EndpointSlice, SliceBackend; adopted: its
  // selector, then waits for its EndpointSlices), then on each replica RECONNECTs and probes
  // until a new server connection lands on the `to` server. (A probe sent while the node's
  // proxy is between endpoint sets can fail its server login, and PgBouncer then waits
  // server_login_retry before the next: switches of 1.0-1.4 s measured without waiting for
  // the endpoints to be seen, tens of ms with it.)
  Status SwitchTo(const engine::Endpoint& to) override;
  // The backend Service (selector and endpoints) and the replicas' SHOW DATABASES `paused`.
  Result<engine::RouterState> Observe() override;
  bool HoldsTraffic() const override { return true; }
  Status PrepareSwitch() override;
  // Managed: PAUSE closed every server connection of the held entries and PgBouncer opens none
  // for them until RESUME, so the backend can move (and be probed) while the engine fences and
  // catches up. Adopted: no, the application's Service may carry other clients.
  bool SwitchesEarly() const override { return !o_.adopted; }
  bool HoldsAtFencedSide() const override { return !o_.adopted && o_.holds_at_fence; }
  // SwitchTo(to) on a thread of its own, then with `resume_when_moved` the RESUME; SwitchTo(to)
  // takes its result.
  void BeginSwitch(const engine::Endpoint& to, bool resume_when_moved) override;
  void NewSideCaughtUp() override;

  // The ready replicas, sorted by Pod IP.
  Result<std::vector<PoolerReplica>> Replicas();
  // Managed: the backend Service's selector back after a cutover (SliceBackend::Attach).
  Status AttachBackend(std::optional<bool> on_target = std::nullopt);

 private:
  // Until a new server connection of replica `r` lands on the `to_target` side. `trace` gets
  // each try's milestones (login, the server reached or the error) in ms from the start, for
  // the switch's log line.
  Status Probe(const PoolerReplica& r, pg::Connection* admin, bool to_target, int64_t deadline_ms,
               std::string* trace = nullptr);
  // What SwitchTo does: the backend moved, then each replica probed. With
  // `resume_when_caught_up` (BeginSwitch's thread, HoldsAtFencedSide), clients are then let go
  // once the engine says the new side caught up (NewSideCaughtUp); `*resumed` says whether
  // they were.
  Status Move(const engine::Endpoint& to, bool resume_when_caught_up, bool* resumed);
  // Until NewSideCaughtUp() or JoinEarly(), at most until `deadline_ms`: whether it was called.
  bool WaitNewSideCaughtUp(int64_t deadline_ms);
  // held_'s consoles kept for the next PAUSE, held_ cleared: clients are not held.
  void ReleaseHeld();
  // PAUSE again on every held_ replica, best effort (a RESUME that failed on some).
  void HoldAgain(int64_t deadline_ms);
  // Waits for the thread BeginSwitch started, if any (its result is then in early_status_).
  void JoinEarly();
  // Resume without JoinEarly (BeginSwitch's thread resumes with it).
  Status ResumeHeld();
  // Adopted: the entries to hold, read from every replica (they must agree).
  Status Discover(const std::vector<PoolerReplica>& reps);
  // A replica's admin console (or, as the admin user, another of its databases: a probe).
  Result<std::unique_ptr<pg::Connection>> AdminConnect(const engine::Endpoint& e,
                                                       const std::string& dbname = "pgbouncer");
  // Whether entry `name` (its host `host`) is one this router holds: in o_.databases, or when
  // an adopted PgBouncer's entries were not discovered yet, any entry through the backend.
  bool Holds(const std::string& name, std::string_view host) const;
  // The entries to RESUME or RECONNECT on a replica (Holds).
  std::vector<std::string> HeldEntries(pg::Connection& admin);
  // held_ from the ready replicas when no PAUSE of this router holds them.
  Status HoldReadyReplicas();
  // fn(i, admin connection or nullptr) for each held_ replica at once; the first error, named
  // by its replica.
  Status OnHeld(const std::function<Status(size_t, pg::Connection*)>& fn);
  // The admin connection to held_ replica i, opened again when it broke (nullptr when it
  // cannot be).
  pg::Connection* HeldAdmin(size_t i);

  k8s::Client* client_;
  Options o_;
  engine::Endpoint source_, target_;
  // Managed: a SliceBackend; adopted: a ServiceRouter on the application's Service.
  std::unique_ptr<ServiceRouter> backend_;
  std::string summary_;
  // From a PAUSE that held every replica to the RESUME: the replicas and their admin consoles,
  // so that no step inside the clients' pause waits for the API server or a new login (each is
  // milliseconds of the pause). Entry i is used by one thread at a time (ForEachParallel).
  struct Held {
    std::vector<PoolerReplica> replicas;
    std::vector<std::unique_ptr<pg::Connection>> admin;
  };
  std::optional<Held> held_;
  // Admin consoles opened before the pause (PrepareSwitch) or kept after a RESUME, by the
  // replica's address: the next Pause sends PAUSE on them.
  std::map<std::string, std::unique_ptr<pg::Connection>> standby_;
  // BeginSwitch's thread, its destination and result. The thread alone uses this object until
  // it is joined (JoinEarly, first thing in every public call but Replicas). The result is
  // taken by SwitchTo, dropped by a new PAUSE or a RESUME (a switch is proved again once
  // clients were let go).
  std::thread early_;
  engine::Endpoint early_to_;
  std::optional<Status> early_status_;
  // The thread let the clients go (BeginSwitch's resume_when_moved); a new PAUSE clears it.
  bool early_resumed_ = false;
  // NewSideCaughtUp() and JoinEarly() wake the thread's wait (WaitNewSideCaughtUp).
  std::mutex early_mu_;
  std::condition_variable early_cv_;
  bool caught_up_ = false, early_joining_ = false;
  int64_t early_start_us_ = 0, early_end_us_ = 0;
  // o_.majors() as read on the caller's thread (by Pause and SwitchTo), for the probes.
  std::pair<int, int> majors_{0, 0};
};

}  // namespace pgshift::op
