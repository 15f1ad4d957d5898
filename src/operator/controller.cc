#include "operator/controller.h"

#include <algorithm>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/migration.h"
#include "engine/preflight.h"
#include "k8s/informer.h"
#include "operator/pooler.h"
#include "pg/connection.h"
#include "pg/conninfo.h"

namespace pgshift::op {

using nlohmann::json;
namespace res = k8s::resources;

struct Controller::Task {
  std::string key, ns, name, uid;
  json cr;  // as read when the task started (for Events)
  Step step = Step::kNone;
  UpgradeSpec spec;  // as parsed, and the servers as wired, by the reconcile that started it
  Wiring wiring;
  int64_t generation = 0;
  std::atomic<bool> done{false};
  Status result;
  std::mutex mu;
  engine::Migration* migration = nullptr;  // while the step runs; guarded by mu
  std::string last_line;                   // the engine's last progress line
  std::string last_phase;
  bool degraded = false;  // Degraded was True when the step started: cleared on progress
  std::jthread thread;
};

namespace {

// Where the migration left clients: on the target after a forward cutover that succeeded last.
bool TrafficOnTarget(const engine::MigrationState& st) {
  for (auto it = st.cutovers.rbegin(); it != st.cutovers.rend(); ++it) {
    if (it->succeeded) return it->direction == "forward";
  }
  return false;
}

std::string KeyOf(const std::string& ns, const std::string& name) { return ns + "/" + name; }

bool HasFinalizer(const json& cr) {
  const json& m = cr["metadata"];
  if (!m.contains("finalizers")) return false;
  for (const auto& f : m["finalizers"]) {
    if (f == kFinalizer) return true;
  }
  return false;
}

// The engine's memory in the resource's status: none yet (no key, null or {}), a state, or an
// error when something is there that cannot be read. A corrupt state is never taken for "no
// migration yet": a new migration would start against servers a previous one has changed.
Result<std::optional<engine::MigrationState>> ReadSavedState(const json& cr) {
  if (!cr.contains("status") || !cr["status"].is_object() || !cr["status"].contains("engine")) {
    return std::optional<engine::MigrationState>();
  }
  const json& e = cr["status"]["engine"];
  if (e.is_null() || (e.is_object() && e.empty())) return std::optional<engine::MigrationState>();
  if (!e.is_object()) {
    return Status::FailedPrecondition(std::string("status.engine is a JSON ") + e.type_name() +
                            ", not an object");
  }
  auto s = engine::MigrationState::FromJson(e);
  if (!s.ok()) return Status::FailedPrecondition("status.engine cannot be read: " + s.status().message());
  return std::optional<engine::MigrationState>(std::move(*s));
}

std::optional<engine::MigrationState> SavedState(const json& cr) {
  auto s = ReadSavedState(cr);
  if (!s.ok()) return std::nullopt;
  return *s;
}

std::string ReasonFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument: return "InvalidSpec";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kFailedPrecondition: return "PreconditionFailed";
    case StatusCode::kUnavailable: return "Unavailable";
    case StatusCode::kDeadlineExceeded: return "Timeout";
    case StatusCode::kAborted: return "Stopped";
    default: return "EngineError";
  }
}

}  // namespace

Controller::Controller(k8s::Client* client, k8s::EventRecorder* events, ControllerOptions options)
    : client_(client),
      events_(events),
      options_(std::move(options)),
      status_writer_(client, kPostgresUpgrades,
                     k8s::StatusFence{options_.holds_lease, options_.leader_epoch}),
      queue_(k8s::Duration(500), std::chrono::seconds(60)) {}

Controller::~Controller() {
  std::vector<std::string> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [k, t] : tasks_) keys.push_back(k);
  }
  for (const auto& k : keys) StopTask(k);
}

std::vector<ResourceStats> Controller::Stats() const {
  std::vector<ResourceStats> out;
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = MonotonicMillis();
  for (const auto& [key, last] : last_stats_) {
    ResourceStats r = last;
    auto it = tasks_.find(key);
    if (it != tasks_.end()) {
      std::lock_guard<std::mutex> tl(it->second->mu);
      if (it->second->migration != nullptr) {
        r.snapshot = it->second->migration->stats().Snapshot(now);
        if (r.snapshot.phase.empty()) r.snapshot.phase = it->second->last_phase;
      }
    }
    r.snapshot.now_ms = now;
    out.push_back(std::move(r));
  }
  return out;
}

void Controller::Remember(const json& cr, const UpgradeSpec* spec) {
  const std::string key = KeyOf(cr["metadata"]["namespace"], cr["metadata"]["name"]);
  const json status = cr.value("status", json::object());
  std::lock_guard<std::mutex> lock(mu_);
  ResourceStats& r = last_stats_[key];
  r.key = key;
  if (tasks_.count(key) == 0) r.snapshot.phase = status.value("phase", "Pending");
  if (status.contains("engine") && status["engine"].is_object()) {
    r.snapshot.migration_id = status["engine"].value("id", "");
  }
  if (spec != nullptr) {
    r.max_lag_bytes = spec->max_lag_bytes;
    r.max_pause_ms = spec->max_pause_ms;
  }
}

void Controller::Run(std::stop_token stop) {
  k8s::Reflector::Options ro;
  ro.resource = kPostgresUpgrades;
  ro.ns = options_.watch_namespace;
  ro.label_selector = options_.label_selector;
  k8s::Informer informer(client_, ro);
  informer.AddHandler(k8s::EnqueueHandler(&queue_));
  informer.Start();
  while (!stop.stop_requested() && !informer.WaitForSync(std::chrono::seconds(1))) {
  }
  synced_ = true;
  LogInfo("watching PostgresUpgrade resources",
          {{"namespace", options_.watch_namespace.empty() ? "*" : options_.watch_namespace},
           {"selector", options_.label_selector.empty() ? "*" : options_.label_selector}});
  std::vector<std::jthread> workers;
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers.emplace_back([this]() {
      while (auto key = queue_.Get()) {
        Status s = Reconcile(*key);
        if (s.ok()) {
          queue_.Forget(*key);
        } else {
          LogWarn("reconcile failed; will retry", {{"resource", *key}, {"error", s.message()}});
          queue_.AddRateLimited(*key);
        }
        queue_.Done(*key);
      }
    });
  }
  std::stop_callback on_stop(stop, [this]() { queue_.ShutDown(); });
  for (auto& w : workers) w.join();
  informer.Stop();
  std::vector<std::string> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [k, t] : tasks_) keys.push_back(k);
  }
  for (const auto& k : keys) StopTask(k);
}

Status Controller::PatchStatus(const std::string& ns, const std::string& name,
                               const json& status) {
  return status_writer_.Write(ns, name, status);
}

Status Controller::SaveEngineState(const std::string& ns, const std::string& name,
                                   const engine::MigrationState& state) {
  json st = StatusFromEngine(state);
  // Saved at every step, the cutover journal's inside the pause too: the reports' per-table
  // lists are neither copied nor serialized here unless they changed.
  json small = state.ToJson(/*with_reports=*/false);
  for (const auto& [key, report] : {std::pair<const char*, const json*>{"verification",
                                                                         &state.verification},
                                    {"switch_point_verification",
                                     &state.switch_point_verification}}) {
    small[key] = VerificationForStatus(*report, VerificationDetailNote(name, key));
  }
  // Per-table verification detail goes to ConfigMaps (spec.h, VerificationForStatus), written
  // when it changed; status.engine keeps the summary.
  PGSHIFT_RETURN_IF_ERROR(WriteVerificationDetail(ns, name, state));
  st["engine"] = std::move(small);
  if (!state.last_error.empty()) st["message"] = state.last_error;
  return PatchStatus(ns, name, st);
}

Status Controller::WriteVerificationDetail(const std::string& ns, const std::string& name,
                                           const engine::MigrationState& state) {
  const std::string key = ns + "/" + name;
  std::string fingerprint = state.ReportsFingerprint();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = verification_written_.find(key);
    if (it != verification_written_.end() && it->second == fingerprint) return Status::Ok();
  }
  json engine = state.ToJson();
  if (HasVerificationDetail(engine)) {
    PGSHIFT_RETURN_IF_ERROR(WriteVerificationConfigMaps(ns, name, engine));
  }
  std::lock_guard<std::mutex> lock(mu_);
  verification_written_[key] = std::move(fingerprint);
  return Status::Ok();
}

Status Controller::WriteVerificationConfigMaps(const std::string& ns, const std::string& name,
                                               const json& engine) {
  // The ConfigMaps are owned by the resource: its uid, read now.
  PGSHIFT_ASSIGN_OR_RETURN(json cr, client_->Get(kPostgresUpgrades, ns, name));
  for (const json& cm : VerificationConfigMaps(cr, engine)) {
    // A merge: a resumed run's state holds only the report it makes now (the other one was
    // shortened in status.engine), and the key of the other stays as written.
    const std::string cm_name = cm["metadata"]["name"].get<std::string>();
    auto r = client_->MergePatch(res::kConfigMaps, ns, cm_name, {{"data", cm["data"]}});
    if (!r.ok() && r.status().code() == StatusCode::kNotFound) {
      r = client_->CreateObject(res::kConfigMaps, ns, cm);
    }
    if (!r.ok()) {
      return r.status().WithContext("writing the verification detail (ConfigMap " +
                                    cm["metadata"]["name"].get<std::string>() + ")");
    }
  }
  return Status::Ok();
}

Status Controller::ReportProblem(const json& cr, const std::string& reason,
                                 const std::string& message, bool working) {
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  json status = cr.value("status", json::object());
  std::string phase = status.value("phase", "");
  json st = {{"message", message},
             {"conditions", Conditions(status.value("conditions", json::array()), phase, working,
                                       false, reason, message,
                                       cr["metadata"].value("generation", int64_t{0}), NowUtc())}};
  // Repeats of the same failure are aggregated by the recorder (one Event, its count bumped).
  (void)events_->Record(cr, k8s::EventType::kWarning, reason, message);
  return PatchStatus(ns, name, st);
}

Status Controller::EnsureFinalizer(const json& cr) {
  if (HasFinalizer(cr)) return Status::Ok();
  auto r = client_->Modify(kPostgresUpgrades, cr["metadata"]["namespace"].get<std::string>(),
                           cr["metadata"]["name"].get<std::string>(), [](json& o) {
                             if (!HasFinalizer(o)) o["metadata"]["finalizers"].push_back(kFinalizer);
                             return Status::Ok();
                           });
  return r.ok() ? Status::Ok() : r.status();
}

Result<std::pair<std::string, std::string>> Controller::Credentials(
    const std::string& ns, const std::string& secret_name, const std::string& username_key,
    const std::string& password_key, const std::string& field) {
  auto secret = client_->Get(res::kSecrets, ns, secret_name);
  if (!secret.ok()) {
    if (secret.status().code() == StatusCode::kNotFound) {
      return Status::FailedPrecondition("Secret " + ns + "/" + secret_name + " (spec." + field +
                                        ".name) does not exist");
    }
    return secret.status();
  }
  const json data = secret->value("data", json::object());
  std::pair<std::string, std::string> out;
  for (auto [key, dest] :
       {std::pair{username_key, &out.first}, std::pair{password_key, &out.second}}) {
    if (!data.contains(key) || !data[key].is_string()) {
      return Status::FailedPrecondition("Secret " + ns + "/" + secret_name + " has no key \"" +
                                        key + "\" (spec." + field + ")");
    }
    PGSHIFT_ASSIGN_OR_RETURN(*dest, k8s::Base64Decode(data[key].get<std::string>()));
  }
  if (out.first.empty()) {
    return Status::FailedPrecondition("Secret " + ns + "/" + secret_name + ": key \"" +
                                      username_key + "\" is empty");
  }
  return out;
}

Result<std::pair<std::string, std::string>> Controller::SourceCredentials(const std::string& ns,
                                                                          const UpgradeSpec& spec) {
  return Credentials(ns, spec.secret_name, spec.username_key, spec.password_key,
                     "source.credentialsSecret");
}

Result<std::string> Controller::TargetPassword(const std::string& ns, const std::string& name) {
  PGSHIFT_ASSIGN_OR_RETURN(json secret, client_->Get(res::kSecrets, ns, TargetName(name)));
  const json data = secret.value("data", json::object());
  if (!data.contains("password")) {
    return Status::FailedPrecondition("the target's Secret " + TargetName(name) + " has no password");
  }
  return k8s::Base64Decode(data["password"].get<std::string>());
}

Status Controller::EnsureTarget(const json& cr, const UpgradeSpec& spec) {
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  k8s::ApplyOptions ao{kFieldManager, true};
  auto svc = client_->Apply(res::kServices, ns, TargetService(cr), ao);
  if (!svc.ok()) return svc.status().WithContext("applying the target's Service");
  auto sts = client_->Apply(res::kStatefulSets, ns, TargetStatefulSet(cr, spec), ao);
  if (!sts.ok()) return sts.status().WithContext("applying the target's StatefulSet");
  // The Pod waits for its Secret, as a kubelet does.
  auto secret = client_->Get(res::kSecrets, ns, TargetName(name));
  if (!secret.ok()) {
    if (secret.status().code() != StatusCode::kNotFound) return secret.status();
    auto created = client_->CreateObject(res::kSecrets, ns, TargetSecret(cr, *sts, RandomHex(24)));
    if (!created.ok() && created.status().code() != StatusCode::kAlreadyExists) {
      return created.status().WithContext("creating the target's Secret");
    }
  }
  return Status::Ok();
}

Result<Controller::Wiring> Controller::Wire(const json& cr, const UpgradeSpec& spec) {
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  PGSHIFT_ASSIGN_OR_RETURN(auto creds, SourceCredentials(ns, spec));
  PGSHIFT_ASSIGN_OR_RETURN(std::string target_pw, TargetPassword(ns, name));
  Wiring w;
  if (!spec.source_service.empty()) {
    PGSHIFT_ASSIGN_OR_RETURN(w.source, ResolveService(client_, options_.connect_mode, ns,
                                                      spec.source_service, spec.source_port,
                                                      options_.address_map));
  } else {
    w.source = {spec.source_host, spec.source_port};
  }
  PGSHIFT_ASSIGN_OR_RETURN(w.target, ResolveService(client_, options_.connect_mode, ns,
                                                    TargetName(name), 5432, options_.address_map));
  w.work_dir = options_.work_dir + "/" + ns + "/" + name;
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(w.work_dir, 0700));
  const std::string pgpass = w.work_dir + "/pgpass";
  PGSHIFT_RETURN_IF_ERROR(
      WriteFileAtomic(pgpass,
                      pg::PgpassLine(w.source.host, w.source.port, creds.first, creds.second) +
                          pg::PgpassLine(w.target.host, w.target.port, "postgres", target_pw),
                      0600));
  auto dsn = [&](const engine::Endpoint& e, const std::string& user) {
    pg::ConnInfo ci;
    ci.Set("host", e.host);
    ci.Set("port", std::to_string(e.port));
    ci.Set("user", user);
    ci.Set("dbname", "postgres");
    ci.Set("passfile", pgpass);
    ci.Set("connect_timeout", "10");
    return ci.ToString();
  };
  w.source_dsn = dsn(w.source, creds.first);
  w.target_dsn = dsn(w.target, "postgres");
  return w;
}

Status Controller::EnsurePooler(const json& cr, const UpgradeSpec& spec, Wiring* wiring) {
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  if (const auto& e = spec.pooler.existing) {
    // Adopted: nothing is made. Its admin console's credentials, and a ready PgBouncer.
    PGSHIFT_ASSIGN_OR_RETURN(auto admin, Credentials(ns, e->admin_secret, e->username_key,
                                                     e->password_key,
                                                     "traffic.pooler.existing.adminSecret"));
    std::tie(wiring->pooler_admin_user, wiring->pooler_admin_password) = admin;
    for (const std::string& svc : {e->service, e->backend_service}) {
      auto got = client_->Get(res::kServices, ns, svc);
      if (!got.ok() && got.status().code() == StatusCode::kNotFound) {
        return Status::FailedPrecondition("Service " + ns + "/" + svc +
                                          " (spec.traffic.pooler.existing) does not exist");
      }
      if (!got.ok()) return got.status();
    }
    PGSHIFT_ASSIGN_OR_RETURN(auto ready,
                             ReadyEndpoints(client_, ns, e->service, options_.address_map));
    if (ready.empty()) {
      return Status::Unavailable("waiting for the Service " + e->service +
                                 " (your PgBouncer) to have a ready Pod");
    }
    return Status::Ok();
  }
  // The backend Service is made once: the cutover moves its selector, a re-apply must not.
  auto backend = client_->Get(res::kServices, ns, PoolerBackendName(name));
  if (!backend.ok()) {
    if (backend.status().code() != StatusCode::kNotFound) return backend.status();
    PGSHIFT_ASSIGN_OR_RETURN(json source_svc, client_->Get(res::kServices, ns, spec.source_service));
    PGSHIFT_ASSIGN_OR_RETURN(json object, PoolerBackendService(cr, source_svc));
    auto made = client_->CreateObject(res::kServices, ns, object);
    if (!made.ok() && made.status().code() != StatusCode::kAlreadyExists) {
      return made.status().WithContext("creating the pooler's backend Service");
    }
  }
  // The Secret is written once too: it holds the admin password the cutover logs in with.
  auto secret = client_->Get(res::kSecrets, ns, PoolerName(name));
  if (!secret.ok()) {
    if (secret.status().code() != StatusCode::kNotFound) return secret.status();
    PGSHIFT_ASSIGN_OR_RETURN(auto creds, SourceCredentials(ns, spec));
    PGSHIFT_ASSIGN_OR_RETURN(std::string target_pw, TargetPassword(ns, name));
    PoolerConfig pc;
    pc.ns = ns;
    pc.upgrade = name;
    pc.source_user = creds.first;
    pc.source_password = creds.second;
    pc.target_password = target_pw;
    pc.admin_password = RandomHex(24);
    pc.spec = spec.pooler;
    auto src = pg::Connection::Connect(wiring->source_dsn, 10, "pgshift-operator");
    if (!src.ok()) return src.status().WithContext("reading the source's roles for the pooler");
    pc.databases = spec.databases;
    if (pc.databases.empty()) {
      PGSHIFT_ASSIGN_OR_RETURN(
          auto dbs, (*src)->Query("SELECT datname FROM pg_database "
                                  "WHERE datallowconn AND NOT datistemplate ORDER BY 1"));
      for (int i = 0; i < dbs.rows(); ++i) pc.databases.push_back(dbs.Get(i, 0));
    }
    auto roles = (*src)->Query(
        "SELECT rolname, rolpassword FROM pg_authid "
        "WHERE rolcanlogin AND rolpassword IS NOT NULL ORDER BY 1");
    if (!roles.ok()) {
      return roles.status().WithContext(
          "the pooler logs clients in with the source's password hashes (pg_authid), which "
          "only a superuser can read; spec.source.credentialsSecret must name one");
    }
    for (int i = 0; i < roles->rows(); ++i) pc.roles.push_back({roles->Get(i, 0), roles->Get(i, 1)});
    PGSHIFT_ASSIGN_OR_RETURN(json object, PoolerSecret(cr, pc));
    auto made = client_->CreateObject(res::kSecrets, ns, object);
    if (!made.ok() && made.status().code() != StatusCode::kAlreadyExists) {
      return made.status().WithContext("creating the pooler's Secret");
    }
    LogInfo("pooler configured", {{"resource", ns + "/" + name},
                                  {"databases", std::to_string(pc.databases.size())},
                                  {"roles", std::to_string(pc.roles.size())}});
  }
  PGSHIFT_RETURN_IF_ERROR(AttachPoolerBackend(cr, spec));
  k8s::ApplyOptions ao{kFieldManager, true};
  auto svc = client_->Apply(res::kServices, ns, PoolerService(cr), ao);
  if (!svc.ok()) return svc.status().WithContext("applying the pooler's Service");
  auto dep = client_->Apply(res::kDeployments, ns, PoolerDeployment(cr, spec.pooler), ao);
  if (!dep.ok()) return dep.status().WithContext("applying the pooler's Deployment");
  PGSHIFT_ASSIGN_OR_RETURN(wiring->pooler_admin_password, PoolerAdminPassword(ns, name));
  // The engine checks its router before it starts: wait for a PgBouncer to serve.
  PGSHIFT_ASSIGN_OR_RETURN(auto ready, ReadyEndpoints(client_, ns, PoolerName(name), options_.address_map));
  if (ready.empty()) {
    return Status::Unavailable("waiting for the pooler " + PoolerName(name) + " to have a ready Pod");
  }
  return Status::Ok();
}

Status Controller::AttachPoolerBackend(const json& cr, const UpgradeSpec& spec) {
  if (!spec.pooler.enabled || spec.pooler.existing) return Status::Ok();
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  auto backend = client_->Get(res::kServices, ns, PoolerBackendName(name));
  if (!backend.ok() || !(*backend)["spec"].value("selector", json::object()).empty()) {
    return Status::Ok();
  }
  // A cutover in flight is finished by the next step, which gives the selector back itself.
  std::optional<engine::MigrationState> saved = SavedState(cr);
  if (saved && !saved->cutover_in_flight.empty()) return Status::Ok();
  SliceBackend sb(client_, ns, name, {}, spec.source_service, {});
  std::optional<bool> on_target;
  if (saved) on_target = TrafficOnTarget(*saved);
  return sb.Attach(on_target).WithContext("the pooler's backend Service");
}

Result<std::string> Controller::PoolerAdminPassword(const std::string& ns, const std::string& name) {
  PGSHIFT_ASSIGN_OR_RETURN(json secret, client_->Get(res::kSecrets, ns, PoolerName(name)));
  const json data = secret.value("data", json::object());
  if (!data.contains("admin-password") || !data["admin-password"].is_string()) {
    return Status::FailedPrecondition("the pooler's Secret " + PoolerName(name) +
                                      " has no admin-password; delete it and the operator "
                                      "writes it again");
  }
  return k8s::Base64Decode(data["admin-password"].get<std::string>());
}

Result<std::unique_ptr<engine::Router>> Controller::MakeRouter(const json& cr,
                                                               const UpgradeSpec& spec,
                                                               const Wiring& wiring,
                                                               const engine::MigrationState* state) {
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  if (!spec.pooler.enabled) {
    return std::unique_ptr<engine::Router>(
        new ServiceRouter(client_, ns, spec.traffic_service, wiring.source, spec.source_service,
                          wiring.target, TargetName(name), TargetSelector(name)));
  }
  PoolerRouter::Options o;
  o.ns = ns;
  o.upgrade = name;
  o.address_map = options_.address_map;
  if (const auto& e = spec.pooler.existing) {
    o.adopted = true;
    o.service = e->service;
    o.backend = e->backend_service;
    o.settle_ms = e->settle_ms;
    o.migrated = spec.databases;
    o.admin_user = wiring.pooler_admin_user;
    o.admin_password = wiring.pooler_admin_password;
    if (o.admin_password.empty()) {
      PGSHIFT_ASSIGN_OR_RETURN(auto admin, Credentials(ns, e->admin_secret, e->username_key,
                                                       e->password_key,
                                                       "traffic.pooler.existing.adminSecret"));
      std::tie(o.admin_user, o.admin_password) = admin;
    }
    return std::unique_ptr<engine::Router>(
        new PoolerRouter(client_, o, wiring.source, spec.source_service, wiring.target));
  }
  o.service = PoolerName(name);
  o.backend = PoolerBackendName(name);
  o.admin_password = wiring.pooler_admin_password;
  if (o.admin_password.empty()) {
    PGSHIFT_ASSIGN_OR_RETURN(o.admin_password, PoolerAdminPassword(ns, name));
  }
  // The databases its ini serves: the ones it holds at cutover.
  PGSHIFT_ASSIGN_OR_RETURN(json secret, client_->Get(res::kSecrets, ns, PoolerName(name)));
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string ini,
      k8s::Base64Decode(secret.value("data", json::object()).value("pgbouncer.ini", "")));
  o.databases = PoolerIniDatabases(ini);
  o.holds_at_fence = PoolerIniHolds(ini);
  o.majors = [state]() -> std::pair<int, int> {
    return state == nullptr ? std::pair{0, 0} : std::pair{state->source_major, state->target_major};
  };
  return std::unique_ptr<engine::Router>(
      new PoolerRouter(client_, o, wiring.source, spec.source_service, wiring.target));
}

Status Controller::Reconcile(const std::string& key) {
  auto slash = key.find('/');
  const std::string ns = key.substr(0, slash), name = key.substr(slash + 1);
  auto got = client_->Get(kPostgresUpgrades, ns, name);
  if (!got.ok()) {
    if (got.status().code() == StatusCode::kNotFound) {
      StopTask(key);
      status_writer_.Forget(ns, name);
      std::lock_guard<std::mutex> lock(mu_);
      last_stats_.erase(key);
      reverse_lag_.erase(key);
      verification_written_.erase(key);
      return Status::Ok();
    }
    return got.status();
  }
  json cr = *got;
  if (!cr["metadata"].contains("namespace")) cr["metadata"]["namespace"] = ns;
  if (cr["metadata"].contains("deletionTimestamp")) {
    StopTask(key);
    if (!HasFinalizer(cr)) return Status::Ok();
    Status s = Finalize(cr);
    if (!s.ok()) {
      (void)events_->Record(cr, k8s::EventType::kWarning, "CleanupFailed", s.message());
      return s;
    }
    auto r = client_->Modify(kPostgresUpgrades, ns, name, [](json& o) {
      json& f = o["metadata"]["finalizers"];
      f.erase(std::remove(f.begin(), f.end(), json(kFinalizer)), f.end());
      return Status::Ok();
    });
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_stats_.erase(key);
      reverse_lag_.erase(key);
      verification_written_.erase(key);
    }
    return r.ok() || r.status().code() == StatusCode::kNotFound ? Status::Ok() : r.status();
  }
  PGSHIFT_RETURN_IF_ERROR(EnsureFinalizer(cr));

  // A step in flight: let it work; a finished one is collected here.
  bool previous_step_ok = false;
  {
    std::shared_ptr<Task> task;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = tasks_.find(key);
      if (it != tasks_.end()) task = it->second;
    }
    if (task != nullptr) {
      const int64_t gen = cr["metadata"].value("generation", int64_t{0});
      if (!task->done && task->generation == gen) return Status::Ok();
      // Done, or the spec changed under a running step: stop it at a safe point (every step
      // resumes from the saved state) and decide again with the new spec.
      const bool changed = !task->done;
      StopTask(key);
      if (changed) {
        LogInfo("spec changed: restarting the step", {{"resource", key}});
        PGSHIFT_ASSIGN_OR_RETURN(cr, client_->Get(kPostgresUpgrades, ns, name));
        task = nullptr;
      }
    }
    if (task != nullptr) {
      if (!task->result.ok()) {
        auto reread = client_->Get(kPostgresUpgrades, ns, name);
        json fresh = reread.ok() ? *reread : cr;
        std::vector<std::string> findings;
        {
          std::lock_guard<std::mutex> lock(task->mu);
          findings = PreflightFindings(task->last_line);
        }
        std::string message = InSpecWords(task->result.message());
        if (!findings.empty()) {
          // What to change is in the findings, in the spec's words, as for checkOnly.
          (void)PatchStatus(ns, name, {{"preflight", findings}});
          message += " (status.preflight lists the findings and what to change)";
        }
        (void)ReportProblem(fresh, ReasonFor(task->result), message);
        // Retried with backoff: most failures (a server restarting, lag) pass.
        return Status::Unavailable(StepName(task->step) + " failed: " + task->result.message());
      }
      previous_step_ok = true;
      PGSHIFT_ASSIGN_OR_RETURN(cr, client_->Get(kPostgresUpgrades, ns, name));
    }
  }

  auto spec = ParseSpec(cr);
  Remember(cr, spec.ok() ? &*spec : nullptr);
  if (!spec.ok()) {
    (void)ReportProblem(cr, "InvalidSpec", spec.status().message());
    return Status::Ok();  // a spec change queues the resource again
  }
  const json status = cr.value("status", json::object());
  auto read = ReadSavedState(cr);
  if (!read.ok()) {
    // Stop here, loudly: no step runs until a person restores the state or deletes the resource.
    (void)ReportProblem(
        cr, "CorruptStatus",
        read.status().message() +
            "; pgshift will not start a new migration against servers a previous one may have "
            "changed: restore status.engine (kubectl get pgu -o json of a backup, then a "
            "status patch), or delete the resource and clean both servers by hand "
            "(docs/kubernetes.md)");
    return Status::Ok();  // a status or spec change queues the resource again
  }
  std::optional<engine::MigrationState> saved = std::move(*read);
  std::optional<engine::Phase> phase;
  if (saved) phase = saved->phase;
  const int64_t generation = cr["metadata"].value("generation", int64_t{0});
  const bool preflight_done = status.contains("preflight") &&
                              status.value("observedGeneration", int64_t{-1}) == generation;
  Step step = NextStep(*spec, phase, preflight_done);
  // A failed step is retried with backoff; Degraded stays True (with its reason) through the
  // retries and clears once a step succeeds.
  std::string degraded_reason, degraded_message;
  if (!previous_step_ok && status.contains("conditions") && status["conditions"].is_array()) {
    for (const auto& c : status["conditions"]) {
      if (c.value("type", "") == "Degraded" && c.value("status", "") == "True") {
        degraded_reason = c.value("reason", "");
        degraded_message = c.value("message", "");
      }
    }
  }

  if (step == Step::kNone) {
    // No step runs: a backend a crashed step left without its selector gets it back.
    Status a = AttachPoolerBackend(cr, *spec);
    if (!a.ok()) LogWarn("pooler backend: " + a.message(), {{"resource", key}});
    const std::string ph = status.value("phase", "");
    const bool waiting = ph == "ReadyForCutover" && spec->cutover_mode == engine::CutoverMode::kManual;
    json st = {{"observedGeneration", generation},
               {"conditions", Conditions(status.value("conditions", json::array()), ph, false,
                                         waiting, "", "", generation, NowUtc())},
               {"message", waiting ? "ready for cutover: set spec.cutover.approved to true"
                                   : status.value("message", "")}};
    if (saved) st.update(StatusFromEngine(*saved));
    if (saved && saved->phase == engine::Phase::kRollbackReady &&
        saved->options.rollback_replication) {
      // Cut over and idle: how far the source is behind the target through reverse
      // replication (what a rollback would wait for). Read every kReverseLagEveryMs (the
      // metrics call a figure older than 5 s unknown); a reconcile in between, such as the one
      // this very status patch queues, reuses the last reading instead of patching in a loop.
      constexpr int64_t kReverseLagEveryMs = 4000;
      const int64_t now = MonotonicMillis();
      std::optional<int64_t> total;
      bool due = true;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = reverse_lag_.find(key);
        if (it != reverse_lag_.end() && now - it->second.at_ms < kReverseLagEveryMs) {
          due = false;
          total = it->second.total;
        }
      }
      if (due) {
        std::map<std::string, int64_t> per_db;
        // The target's DSN is wired again once a minute, or after a failed reading (Wire
        // reads Secrets and EndpointSlices: four requests, every 4 s, per resource).
        constexpr int64_t kRewireEveryMs = 60000;
        std::string target_dsn;
        {
          std::lock_guard<std::mutex> lock(mu_);
          auto it = reverse_lag_.find(key);
          if (it != reverse_lag_.end() && it->second.total.has_value() &&
              now - it->second.wired_at_ms < kRewireEveryMs) {
            target_dsn = it->second.target_dsn;
          }
        }
        int64_t wired_at = 0;
        if (target_dsn.empty()) {
          auto wiring = Wire(cr, *spec);
          if (wiring.ok()) {
            target_dsn = wiring->target_dsn;
            wired_at = now;
          }
        }
        if (!target_dsn.empty()) {
          engine::MigrationState live = *saved;
          live.target_dsn = target_dsn;
          for (const auto& db : live.databases) {
            auto lag = engine::ReverseLagBytes(live, db);
            if (!lag.ok() || *lag < 0) break;
            per_db[db.name] = *lag;
          }
          if (per_db.size() == live.databases.size()) {
            total = 0;
            for (const auto& [db, lag] : per_db) *total += lag;
          }
        }
        std::lock_guard<std::mutex> lock(mu_);
        ReverseLagReading& r = reverse_lag_[key];
        r.at_ms = now;
        r.total = total;
        if (wired_at > 0) {
          r.target_dsn = target_dsn;
          r.wired_at_ms = wired_at;
        }
        engine::StatsSnapshot& snap = last_stats_[key].snapshot;
        for (const auto& [db, lag] : per_db) {
          snap.databases[db].reverse_lag_bytes = {static_cast<double>(lag), now};
        }
      }
      st["reverseLagBytes"] = total ? json(*total) : json(nullptr);
      if (due) queue_.AddAfter(key, std::chrono::milliseconds(kReverseLagEveryMs));
    }
    return PatchStatus(ns, name, st);
  }

  // Target first (it is needed by the preflight too), then credentials and addresses.
  if (!phase.has_value() || *phase < engine::Phase::kCuttingOver) {
    Status s = EnsureTarget(cr, *spec);
    if (!s.ok()) return s;
  }
  auto wiring = Wire(cr, *spec);
  if (!wiring.ok()) {
    const Status& s = wiring.status();
    if (s.code() == StatusCode::kUnavailable) {
      // The target (or the source) has no ready Pod yet: look again soon.
      json st = {{"message", s.message()},
                 {"observedGeneration", generation},
                 {"conditions", Conditions(status.value("conditions", json::array()),
                                           status.value("phase", ""), true, false,
                                           degraded_reason, degraded_message, generation,
                                           NowUtc())}};
      if (!status.contains("phase")) st["phase"] = "Pending";
      (void)PatchStatus(ns, name, st);
      queue_.AddAfter(key, std::chrono::seconds(2));
      return Status::Ok();
    }
    std::string reason = s.message().find("Secret") != std::string::npos ? "CredentialsProblem"
                                                                            : ReasonFor(s);
    (void)ReportProblem(cr, reason, s.message());
    queue_.AddAfter(key, std::chrono::seconds(10));  // Secrets are not watched
    return Status::Ok();
  }
  if (spec->pooler.enabled) {
    Status p = EnsurePooler(cr, *spec, &*wiring);
    if (p.code() == StatusCode::kUnavailable) {
      json st = {{"message", p.message()}, {"observedGeneration", generation}};
      if (!status.contains("phase")) st["phase"] = "Pending";
      (void)PatchStatus(ns, name, st);
      queue_.AddAfter(key, std::chrono::seconds(2));
      return Status::Ok();
    }
    if (!p.ok()) {
      (void)ReportProblem(cr, "PoolerProblem", p.message());
      queue_.AddAfter(key, std::chrono::seconds(5));
      return Status::Ok();
    }
  }
  json st = {{"observedGeneration", generation},
             {"conditions", Conditions(status.value("conditions", json::array()),
                                       status.value("phase", ""), true, false, degraded_reason,
                                       degraded_message, generation, NowUtc())}};
  if (!status.contains("phase")) st["phase"] = "Pending";
  // A message of a wait that is over (no ready endpoint yet, a missing Secret) must not stay.
  st["message"] = "running step " + StepName(step);
  PGSHIFT_RETURN_IF_ERROR(PatchStatus(ns, name, st));
  StartTask(cr, *spec, step, std::move(*wiring));
  return Status::Ok();
}

void Controller::StartTask(const json& cr, const UpgradeSpec& spec, Step step, Wiring wiring) {
  auto task = std::make_shared<Task>();
  task->ns = cr["metadata"]["namespace"];
  task->name = cr["metadata"]["name"];
  task->uid = cr["metadata"].value("uid", "");
  task->key = KeyOf(task->ns, task->name);
  task->cr = cr;
  task->step = step;
  task->spec = spec;
  task->wiring = std::move(wiring);
  task->generation = cr["metadata"].value("generation", int64_t{0});
  task->last_phase = cr.value("status", json::object()).value("phase", "");
  for (const auto& c : cr.value("status", json::object()).value("conditions", json::array())) {
    if (c.value("type", "") == "Degraded" && c.value("status", "") == "True") task->degraded = true;
  }
  LogInfo("starting step", {{"resource", task->key}, {"step", StepName(step)}});
  (void)events_->Record(cr, k8s::EventType::kNormal, "Step", "running step " + StepName(step));
  std::lock_guard<std::mutex> lock(mu_);
  tasks_[task->key] = task;
  task->thread = std::jthread([this, task](std::stop_token stop) { RunTask(task, stop); });
}

void Controller::StopTask(const std::string& key) {
  std::shared_ptr<Task> task;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tasks_.find(key);
    if (it == tasks_.end()) return;
    task = it->second;
    tasks_.erase(it);
  }
  task->thread.request_stop();
  if (task->thread.joinable()) task->thread.join();
}

void Controller::RunTask(std::shared_ptr<Task> task, std::stop_token stop) {
  auto finish = [&](Status s) {
    task->result = s;
    task->done = true;
    LogInfo("step ended", {{"resource", task->key},
                           {"step", StepName(task->step)},
                           {"result", s.ok() ? "ok" : s.message()}});
    queue_.Add(task->key);
  };
  const json* cr = &task->cr;
  const UpgradeSpec* spec = &task->spec;
  const Wiring* wiring = &task->wiring;

  if (task->step == Step::kPreflight) {
    engine::PreflightOptions po;
    po.databases = spec->databases;
    po.tools = options_.tools;
    po.rollback_replication = spec->keep_reverse_replication;
    po.tables_without_pk_full = spec->tables_without_pk == engine::TablesWithoutPk::kFull;
    auto rep = engine::RunPreflight(wiring->source_dsn, wiring->target_dsn, po);
    if (!rep.ok()) return finish(rep.status());
    json lines = json::array();
    for (const auto& r : rep->results) {
      // The check's own words, with its fix in the spec's (as a refused migration's).
      std::string line = std::string(engine::SeverityName(r.severity)) + " " + r.id + " (" +
                         r.subject + "): " + r.message;
      if (r.severity != engine::Severity::kOk && !r.remedy.empty()) {
        line += "; fix: " + InSpecWords(r.remedy);
      }
      lines.push_back(line);
    }
    const int errors = rep->Count(engine::Severity::kError);
    json st = {{"phase", "Preflight"},
               {"preflight", lines},
               {"sourceVersion", rep->source_major},
               {"targetVersion", rep->target_major},
               {"message", errors == 0 ? "preflight passed (checkOnly: nothing was changed)"
                                       : "preflight found " + std::to_string(errors) +
                                             " problem(s); see status.preflight"},
               {"observedGeneration", (*cr)["metadata"].value("generation", int64_t{0})}};
    Status s = PatchStatus(task->ns, task->name, st);
    (void)events_->Record(*cr, errors == 0 ? k8s::EventType::kNormal : k8s::EventType::kWarning,
                          "Preflight", st["message"].get<std::string>());
    return finish(s);
  }

  engine::MigrationRequest req;
  req.source_dsn = wiring->source_dsn;
  req.target_dsn = wiring->target_dsn;
  req.state_dir = wiring->work_dir;
  req.options = EngineOptions(*spec);
  const std::string ns = task->ns, name = task->name;
  auto sink = [this, task, ns, name](const engine::MigrationState& state) -> Status {
    Status s = SaveEngineState(ns, name, state);
    const std::string phase = engine::PhaseName(state.phase);
    std::string previous;
    {
      std::lock_guard<std::mutex> lock(task->mu);
      previous = task->last_phase;
      task->last_phase = phase;
    }
    if (s.ok() && previous == "Preflight" && phase != previous) {
      (void)PatchStatus(ns, name, {{"preflight", nullptr}});  // findings of a refused try
    }
    if (s.ok() && previous != phase) {
      (void)events_->Record(task->cr, k8s::EventType::kNormal, "PhaseChanged",
                            (previous.empty() ? "Pending" : previous) + " -> " + phase);
      bool clear = false;
      {
        std::lock_guard<std::mutex> lock(task->mu);
        std::swap(clear, task->degraded);
      }
      if (clear) {
        // The step got past where the last attempt failed.
        const json& meta = task->cr["metadata"];
        (void)PatchStatus(ns, name,
                          {{"conditions",
                            Conditions(task->cr.value("status", json::object())
                                           .value("conditions", json::array()),
                                       phase, true, false, "", "",
                                       meta.value("generation", int64_t{0}), NowUtc())}});
      }
    }
    return s;
  };
  std::optional<engine::MigrationState> saved = SavedState(*cr);
  if (saved) saved->options = ResumedOptions(saved->options, saved->phase, *spec);
  auto m = engine::Migration::FromState(saved, req, options_.tools, sink);
  if (!m.ok()) return finish(m.status());
  engine::Migration* mig = m->get();
  mig->set_stop([&stop, this]() {
    return stop.stop_requested() || (options_.holds_lease && !options_.holds_lease());
  });
  mig->set_progress([task](const std::string& line) {
    LogInfo(line, {{"resource", task->key}});
    std::lock_guard<std::mutex> lock(task->mu);
    task->last_line = line;
  });
  {
    std::lock_guard<std::mutex> lock(task->mu);
    task->migration = mig;
  }
  auto made_router = MakeRouter(task->cr, *spec, *wiring, &mig->state());
  if (!made_router.ok()) return finish(made_router.status());
  engine::Router& router = **made_router;

  // Live figures and the last progress line go to the status while the step runs.
  std::jthread reporter([this, task, mig, ns, name](std::stop_token rs) {
    while (!rs.stop_requested()) {
      for (int i = 0; i < options_.status_interval_ms / 50 && !rs.stop_requested(); ++i) {
        SleepMillis(50);
      }
      engine::StatsSnapshot snap = mig->stats().Snapshot(MonotonicMillis());
      json st = StatusFromStats(snap);
      {
        std::lock_guard<std::mutex> lock(task->mu);
        if (!task->last_line.empty()) st["message"] = task->last_line;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_stats_[task->key].snapshot = snap;
      }
      (void)PatchStatus(ns, name, st);
    }
  });

  Status s;
  switch (task->step) {
    case Step::kRun: s = mig->Run(&router); break;
    case Step::kCutover: s = mig->Cutover(&router); break;
    case Step::kRollback: s = mig->Rollback(&router); break;
    case Step::kFinish: s = mig->Finish(); break;
    default: s = Status::Internal("no step");
  }
  reporter.request_stop();
  reporter.join();
  auto* pooler = dynamic_cast<PoolerRouter*>(&router);
  if (pooler != nullptr && mig->state().cutover_in_flight.empty()) {
    // A cutover moved the managed pooler's backend by its EndpointSlice: the selector back,
    // so that it follows the servers' Pods again without the operator. (One still in flight
    // is finished by the next step first.)
    Status a = pooler->AttachBackend(TrafficOnTarget(mig->state()));
    if (!a.ok()) {
      LogWarn("pooler backend: " + a.message() + " (tried again before the next step)",
              {{"resource", task->key}});
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine::StatsSnapshot snap = mig->stats().Snapshot(MonotonicMillis());
    snap.phase = engine::PhaseName(mig->state().phase);
    last_stats_[task->key].snapshot = snap;
  }
  {
    std::lock_guard<std::mutex> lock(task->mu);
    task->migration = nullptr;
  }
  if (s.ok()) {
    json st = StatusFromStats(mig->stats().Snapshot(MonotonicMillis()));
    st["message"] = "step " + StepName(task->step) + " done: " + engine::PhaseName(mig->state().phase);
    (void)PatchStatus(ns, name, st);
    if (mig->state().phase == engine::Phase::kCompleted && mig->state().cutovers.size() > 0 &&
        mig->state().cutovers.back().direction == "forward") {
      // The target is the database in use now: it must outlive this resource.
      Status d = DetachTarget(ns, name);
      if (!d.ok()) LogWarn("could not detach the target", {{"resource", task->key}, {"error", d.message()}});
    }
  }
  finish(s);
}

Status Controller::DetachTarget(const std::string& ns, const std::string& name) {
  // The Secret is the StatefulSet's (spec.h): it stays with it.
  for (const auto* r : {&res::kStatefulSets, &res::kServices}) {
    auto m = client_->Modify(*r, ns, TargetName(name), [](json& o) {
      o["metadata"].erase("ownerReferences");
      return Status::Ok();
    });
    if (!m.ok() && m.status().code() != StatusCode::kNotFound) return m.status();
  }
  return Status::Ok();
}

// Detaches the target from the resource when traffic is on it; otherwise removes every
// pgshift object from both servers and leaves the source as it was.
Status Controller::Finalize(const json& cr) {
  const std::string ns = cr["metadata"]["namespace"], name = cr["metadata"]["name"];
  std::optional<engine::MigrationState> saved = SavedState(cr);
  auto detach_target = [&]() { return DetachTarget(ns, name); };
  if (!saved.has_value()) return Status::Ok();  // nothing was made on a server yet
  using engine::Phase;
  const Phase phase = saved->phase;
  if (phase == Phase::kAborted || (phase == Phase::kCompleted && saved->cutovers.empty())) {
    return Status::Ok();
  }
  bool forward_done = false;
  for (const auto& c : saved->cutovers) {
    if (c.succeeded) forward_done = c.direction == "forward";
  }
  if (phase == Phase::kCompleted) return forward_done ? detach_target() : Status::Ok();

  auto spec = ParseSpec(cr);
  if (!spec.ok()) return spec.status();
  auto wiring = Wire(cr, *spec);
  if (!wiring.ok()) return wiring.status().WithContext("cleanup needs both servers");
  engine::MigrationRequest req;
  req.source_dsn = wiring->source_dsn;
  req.target_dsn = wiring->target_dsn;
  req.state_dir = wiring->work_dir;
  req.options = saved->options;
  auto m = engine::Migration::FromState(saved, req, options_.tools,
                                        [this, ns, name](const engine::MigrationState& st) {
                                          return SaveEngineState(ns, name, st);
                                        });
  if (!m.ok()) return m.status();
  PGSHIFT_ASSIGN_OR_RETURN(auto router, MakeRouter(cr, *spec, *wiring, &(*m)->state()));
  Status s;
  if (phase == Phase::kRollbackReady || phase == Phase::kRolledBack) {
    s = (*m)->Finish();
    if (s.ok() && phase == Phase::kRollbackReady) s = detach_target();
  } else {
    s = (*m)->Abort(router.get());
    if (s.code() == StatusCode::kFailedPrecondition &&
        (*m)->state().phase == Phase::kRollbackReady) {
      // The interrupted cutover had switched traffic: keep the target.
      s = (*m)->Finish();
      if (s.ok()) s = detach_target();
    }
  }
  if (!s.ok()) return s;
  if (auto* pooler = dynamic_cast<PoolerRouter*>(router.get())) {
    PGSHIFT_RETURN_IF_ERROR(pooler->AttachBackend(TrafficOnTarget((*m)->state()))
                                .WithContext("the pooler's backend Service"));
  }
  // The traffic Service, or an adopted pooler's backend, keeps no trace of pgshift (the
  // backend Service of a pooler pgshift runs is its own and keeps its annotation: a later
  // cutover through the same pooler needs it).
  const std::string moved = !spec->traffic_service.empty() ? spec->traffic_service
                            : spec->pooler.existing     ? spec->pooler.existing->backend_service
                                                        : "";
  if (!moved.empty()) {
    auto svc = client_->Modify(res::kServices, ns, moved, [](json& o) {
      if (o["metadata"].contains("annotations")) {
        o["metadata"]["annotations"].erase(kSourceSelectorAnnotation);
      }
      return Status::Ok();
    });
    if (!svc.ok() && svc.status().code() != StatusCode::kNotFound) return svc.status();
  }
  (void)events_->Record(cr, k8s::EventType::kNormal, "CleanedUp",
                        "pgshift's slots, publications and subscriptions were removed");
  return Status::Ok();
}

}  // namespace pgshift::op
