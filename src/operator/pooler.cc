#include "operator/pooler.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <regex>
#include <thread>

#include "common/clock.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/fence.h"
#include "engine/server_ops.h"
#include "pg/connection.h"
#include "pg/conninfo.h"

namespace pgshift::op {
namespace {

using json = nlohmann::json;

// What PgBouncer's ini key and admin console (PAUSE <db>) take without quoting.
bool PlainDatabaseName(const std::string& name) {
  static const std::regex kName("^[A-Za-z0-9_][A-Za-z0-9_.-]*$");
  return std::regex_match(name, kName);
}

// A value of a [databases] connect string, quoted as PgBouncer unquotes it ('' is a quote).
std::string IniValue(const std::string& v) {
  std::string out = "'";
  for (char ch : v) {
    if (ch == '\'') out += '\'';
    out += ch;
  }
  return out + "'";
}

// A field of userlist.txt: in double quotes, "" is a quote.
std::string UserlistField(const std::string& v) {
  std::string out = "\"";
  for (char ch : v) {
    if (ch == '"') out += '"';
    out += ch;
  }
  return out + "\"";
}

json PoolerLabels(const std::string& name) { return {{kPoolerLabel, name}}; }

json PoolerMetadata(const Json& resource, const std::string& object_name) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  // No ownerReference: the application connects through these objects, so deleting the
  // resource must not delete them (docs/kubernetes.md says how to remove them).
  return {{"name", object_name},
          {"namespace", resource["metadata"]["namespace"]},
          {"labels",
           {{kPoolerLabel, name},
            {"app.kubernetes.io/name", "pgbouncer"},
            {"app.kubernetes.io/managed-by", "pgshift-operator"}}}};
}

std::string AdminDsn(const engine::Endpoint& e, const std::string& dbname, const std::string& user,
                     const std::string& password) {
  pg::ConnInfo ci;
  ci.Set("host", e.host);
  ci.Set("port", std::to_string(e.port));
  ci.Set("dbname", dbname);
  ci.Set("user", user);
  ci.Set("password", password);
  ci.Set("connect_timeout", "5");
  return ci.ToString();
}

// Runs fn(i) for i in [0, n) on a thread each and returns their statuses.
std::vector<Status> ForEachParallel(size_t n, const std::function<Status(size_t)>& fn) {
  std::vector<Status> out(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (size_t i = 0; i < n; ++i) threads.emplace_back([&, i] { out[i] = fn(i); });
  for (auto& t : threads) t.join();
  return out;
}

// One admin command that may wait (PAUSE waits for the pool's server connections to be
// released), bounded by `deadline_ms`.
Status AdminCommandUntil(pg::Connection& c, const std::string& command, int64_t deadline_ms) {
  PGconn* conn = c.raw();
  if (!PQsendQuery(conn, command.c_str())) {
    return Status::Unavailable("cannot send " + command + ": " + PQerrorMessage(conn));
  }
  while (true) {
    if (!PQconsumeInput(conn)) return Status::Unavailable("connection lost during " + command);
    if (!PQisBusy(conn)) break;
    if (MonotonicMillis() > deadline_ms) {
      return Status::DeadlineExceeded(command + " did not finish in time");
    }
    pollfd pfd{PQsocket(conn), POLLIN, 0};
    ::poll(&pfd, 1, 2);
  }
  Status result = Status::Ok();
  while (PGresult* res = PQgetResult(conn)) {
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
      std::string msg = PQresultErrorMessage(res);
      // Asked again after a crash or a retry: the state is already the one wanted.
      if (msg.find("already") == std::string::npos) {
        result = Status::Unavailable(command + ": " + std::string(Trim(msg)));
      }
    }
    PQclear(res);
  }
  return result;
}

// RESUME of each of `entries` on one replica's admin console ("not paused" counts as done).
Status ResumeEntries(pg::Connection& c, const std::vector<std::string>& entries) {
  for (const auto& db : entries) {
    auto r = c.Query("RESUME " + db);
    if (!r.ok() && r.status().message().find("not paused") == std::string::npos) {
      return r.status().WithContext("RESUME " + db);
    }
  }
  return Status::Ok();
}

}  // namespace

std::string PoolerName(const std::string& upgrade_name) { return upgrade_name + "-pooler"; }
std::string PoolerBackendName(const std::string& upgrade_name) {
  return upgrade_name + "-pooler-backend";
}

Result<std::string> PoolerIni(const PoolerConfig& c) {
  if (c.databases.empty()) return Status::InvalidArgument("the pooler needs a database to serve");
  for (const auto& db : c.databases) {
    if (!PlainDatabaseName(db)) {
      return Status::InvalidArgument(
          "database \"" + db +
          "\" cannot be served by the pooler: PgBouncer's ini and admin "
          "console take letters, digits, '_', '.' and '-' only. Fix: use traffic.service (the "
          "Service flip) for this database, or rename it");
    }
  }
  for (const auto* pw : {&c.source_password, &c.target_password, &c.admin_password}) {
    if (pw->find_first_of("\r\n") != std::string::npos) {
      return Status::InvalidArgument(
          "a password with a line break cannot go into pgbouncer.ini. Fix: change the password "
          "in spec.source.credentialsSecret");
    }
  }
  const std::string host = PoolerBackendName(c.upgrade) + "." + c.ns + ".svc";
  const std::string server = "host=" + host + " port=" + std::to_string(c.backend_port);
  std::string ini =
      "; Written by pgshift-operator for PostgresUpgrade " + c.ns + "/" + c.upgrade +
      " (docs/kubernetes.md, \"The pooler\").\n"
      "; The server connections go to the Service " +
      PoolerBackendName(c.upgrade) +
      ", which the operator moves from the source's Pods to the target's while clients are\n"
      "; held by PAUSE. The two probe databases let it check, through each PgBouncer, which\n"
      "; server a new connection reaches.\n"
      "[databases]\n";
  // application_name: what marks the server connection as the pooler's until the hold took its
  // lock (EndClientSessions); PgBouncer sets each client's own on it after.
  for (const auto& db : c.databases) {
    ini += db + " = " + server + " dbname=" + IniValue(db) +
           " application_name=" + engine::kPoolerHoldApplicationName +
           " connect_query=" + IniValue(engine::PoolerHoldQuery()) + "\n";
  }
  const std::string probe_db = IniValue(c.databases.front());
  ini += std::string(kProbeSource) + " = " + server + " dbname=" + probe_db +
         " user=" + IniValue(c.source_user) + " password=" + IniValue(c.source_password) +
         " pool_size=1\n";
  ini += std::string(kProbeTarget) + " = " + server + " dbname=" + probe_db +
         " user=postgres password=" + IniValue(c.target_password) + " pool_size=1\n";
  ini +=
      "\n[pgbouncer]\n"
      "listen_addr = 0.0.0.0\n"
      "listen_port = 5432\n"
      "unix_socket_dir =\n"
      // md5: md5 hashes log in with md5, SCRAM secrets with SCRAM (PgBouncer picks by secret).
      "auth_type = md5\n"
      "auth_file = /etc/pgbouncer/userlist.txt\n"
      "admin_users = " +
      std::string(kPoolerAdminUser) +
      "\n"
      "pool_mode = " +
      c.spec.pool_mode +
      "\n"
      "max_client_conn = " +
      std::to_string(c.spec.max_client_conn) +
      "\n"
      "default_pool_size = " +
      std::to_string(c.spec.default_pool_size) +
      "\n"
      // A probe that lands on the wrong server fails its login; try again after 1 s, not 15.
      "server_login_retry = 1\n"
      "ignore_startup_parameters = extra_float_digits,options\n";
  return ini;
}

std::vector<std::string> PoolerIniDatabases(const std::string& ini) {
  std::vector<std::string> out;
  bool in_databases = false;
  for (const auto& raw : Split(ini, '\n', true)) {
    std::string_view line = Trim(raw);
    if (line.empty() || line.front() == ';' || line.front() == '#') continue;
    if (line.front() == '[') {
      in_databases = line == "[databases]";
      continue;
    }
    auto eq = line.find('=');
    if (!in_databases || eq == std::string_view::npos) continue;
    std::string name(Trim(line.substr(0, eq)));
    if (name != kProbeSource && name != kProbeTarget) out.push_back(name);
  }
  return out;
}

bool PoolerIniHolds(const std::string& ini) {
  return ini.find(IniValue(engine::PoolerHoldQuery())) != std::string::npos;
}

std::string PoolerUserlist(const PoolerConfig& c) {
  std::string out = UserlistField(kPoolerAdminUser) + " " + UserlistField(c.admin_password) + "\n";
  for (const auto& r : c.roles) {
    if (r.name == kPoolerAdminUser || r.secret.empty()) continue;
    out += UserlistField(r.name) + " " + UserlistField(r.secret) + "\n";
  }
  return out;
}

Result<Json> PoolerSecret(const Json& resource, const PoolerConfig& c) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string ini, PoolerIni(c));
  const std::string name = resource["metadata"]["name"].get<std::string>();
  return Json{{"apiVersion", "v1"},
              {"kind", "Secret"},
              {"metadata", PoolerMetadata(resource, PoolerName(name))},
              {"type", "Opaque"},
              {"stringData",
               {{"pgbouncer.ini", ini},
                {"userlist.txt", PoolerUserlist(c)},
                {"admin-password", c.admin_password}}}};
}

Json PoolerDeployment(const Json& resource, const PoolerSpec& spec) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  Json container = {
      {"name", "pgbouncer"},
      {"image", spec.image},
      {"ports", Json::array({{{"name", "pgbouncer"}, {"containerPort", 5432}}})},
      {"volumeMounts",
       Json::array({{{"name", "config"}, {"mountPath", "/etc/pgbouncer"}, {"readOnly", true}}})},
      {"readinessProbe",
       {{"tcpSocket", {{"port", 5432}}}, {"periodSeconds", 2}, {"failureThreshold", 2}}},
  };
  if (!spec.resources.empty()) container["resources"] = spec.resources;
  Json pod_labels = PoolerLabels(name);
  return {
      {"apiVersion", "apps/v1"},
      {"kind", "Deployment"},
      {"metadata", PoolerMetadata(resource, PoolerName(name))},
      {"spec",
       {{"replicas", spec.replicas},
        {"selector", {{"matchLabels", pod_labels}}},
        // A new Pod is ready before an old one goes: clients always have a PgBouncer.
        {"strategy",
         {{"type", "RollingUpdate"}, {"rollingUpdate", {{"maxUnavailable", 0}, {"maxSurge", 1}}}}},
        {"template",
         {{"metadata", {{"labels", pod_labels}}},
          {"spec",
           {{"containers", Json::array({container})},
            {"volumes",
             Json::array(
                 {{{"name", "config"},
                   {"secret", {{"secretName", PoolerName(name)}, {"defaultMode", 0444}}}}})}}}}}}}};
}

Json PoolerService(const Json& resource) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", PoolerMetadata(resource, PoolerName(name))},
          {"spec",
           {{"selector", PoolerLabels(name)},
            {"ports", Json::array({{{"name", "postgres"},
                                    {"port", 5432},
                                    {"targetPort", "pgbouncer"},
                                    {"protocol", "TCP"}}})}}}};
}

Result<Json> PoolerBackendService(const Json& resource, const Json& source_service) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  const std::string source = source_service["metadata"].value("name", "");
  const Json spec = source_service.value("spec", Json::object());
  const Json selector = spec.value("selector", Json::object());
  if (!selector.is_object() || selector.empty()) {
    return Status::FailedPrecondition(
        "source.service " + source +
        " has no selector: the pooler's backend Service selects "
        "the source's Pods the same way. Fix: give source.service a selector");
  }
  const Json ports = spec.value("ports", Json::array());
  if (!ports.is_array() || ports.empty()) {
    return Status::FailedPrecondition("source.service " + source + " has no port");
  }
  Json target_port = ports[0].contains("targetPort") ? ports[0]["targetPort"] : ports[0]["port"];
  const bool fits = (target_port.is_number_integer() && target_port.get<int>() == 5432) ||
                    (target_port.is_string() && target_port.get<std::string>() == "postgres");
  if (!fits) {
    return Status::FailedPrecondition(
        "source.service " + source + " leads to port " + target_port.dump() +
        " of the source's Pods; the pooler's backend Service keeps one targetPort for both "
        "servers, and the target listens on 5432 (named \"postgres\"). Fix: name the source "
        "container's port \"postgres\" and use targetPort: postgres, or serve on 5432");
  }
  Json meta = PoolerMetadata(resource, PoolerBackendName(name));
  meta["annotations"] = {{kSourceSelectorAnnotation, selector.dump()}};
  return Json{{"apiVersion", "v1"},
              {"kind", "Service"},
              {"metadata", meta},
              {"spec",
               {{"selector", selector},
                {"ports", Json::array({{{"name", "postgres"},
                                        {"port", 5432},
                                        {"targetPort", target_port},
                                        {"protocol", "TCP"}}})}}}};
}

bool HostNamesService(std::string_view host, const std::string& service, const std::string& ns) {
  if (host == service) return true;
  const std::string qualified = service + "." + ns;
  if (host == qualified || host == qualified + ".svc") return true;
  const std::string prefix = qualified + ".svc.";
  return host.size() > prefix.size() && host.substr(0, prefix.size()) == prefix;
}

Result<std::vector<std::string>> AdoptedPoolerDatabases(const std::vector<PoolerDatabaseRow>& rows,
                                                        const std::string& default_mode,
                                                        const std::string& backend,
                                                        const std::string& ns,
                                                        const std::vector<std::string>& migrated) {
  std::vector<std::string> out;
  for (const auto& r : rows) {
    if (!HostNamesService(r.host, backend, ns)) continue;
    const std::string mode = r.pool_mode.empty() ? default_mode : r.pool_mode;
    if (mode == "session") {
      return Status::FailedPrecondition(
          "PgBouncer entry " + r.name +
          " pools in session mode: PAUSE would wait for every "
          "client to disconnect, so clients cannot be held at cutover. Fix: pool_mode = "
          "transaction (when the application keeps no session state), or use traffic.service");
    }
    if (!migrated.empty() &&
        std::find(migrated.begin(), migrated.end(), r.database) == migrated.end()) {
      return Status::FailedPrecondition(
          "PgBouncer entry " + r.name + " reaches database " + r.database + " through Service " +
          backend + ", which the operator moves to the target, but " + r.database +
          " is not migrated (source.databases). Fix: add it to source.databases, or give that "
          "entry another host");
    }
    out.push_back(r.name);
  }
  if (out.empty()) {
    return Status::FailedPrecondition("no [databases] entry of the PgBouncer uses Service " +
                                      backend +
                                      " as its host, so "
                                      "moving that Service would move no client. Fix: set host=" +
                                      backend + " (or " + backend + "." + ns +
                                      ".svc) in the entries of the migrated databases and RELOAD");
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string BackendSliceName(const std::string& backend) { return backend + "-pgshift"; }

Json BackendSlice(const std::string& ns, const std::string& backend, const std::string& upgrade,
                  const std::vector<SliceEndpoint>& eps) {
  const bool v6 = !eps.empty() && eps.front().ip.find(':') != std::string::npos;
  Json endpoints = Json::array();
  for (const auto& e : eps) {
    endpoints.push_back({{"addresses", Json::array({e.ip})}, {"conditions", {{"ready", true}}}});
  }
  return {{"apiVersion", "discovery.k8s.io/v1"},
          {"kind", "EndpointSlice"},
          {"metadata",
           {{"name", BackendSliceName(backend)},
            {"namespace", ns},
            {"labels",
             {{"kubernetes.io/service-name", backend},
              {kSliceManagedBy, kSliceManager},
              {kPoolerLabel, upgrade}}}}},
          {"addressType", v6 ? "IPv6" : "IPv4"},
          {"endpoints", endpoints},
          {"ports", Json::array({{{"name", "postgres"},
                                  {"port", eps.empty() ? 5432 : eps.front().port},
                                  {"protocol", "TCP"}}})}};
}

std::string SideOfEndpoints(const std::vector<SliceEndpoint>& eps,
                            const std::vector<SliceEndpoint>& source,
                            const std::vector<SliceEndpoint>& target) {
  if (eps.empty()) return "";
  if (eps == target) return "target";
  if (eps == source) return "source";
  return "";
}

SliceBackend::SliceBackend(k8s::Client* client, std::string ns, std::string upgrade,
                           engine::Endpoint source, std::string source_service,
                           engine::Endpoint target, int settle_timeout_ms)
    : ServiceRouter(client, ns, PoolerBackendName(upgrade), std::move(source),
                    std::move(source_service), std::move(target), TargetName(upgrade),
                    TargetSelector(upgrade), settle_timeout_ms),
      upgrade_(std::move(upgrade)) {}

Result<std::vector<SliceEndpoint>> SliceBackend::ReadyOf(const std::string& service) {
  PGSHIFT_ASSIGN_OR_RETURN(auto eps, ReadySliceEndpoints(client_, ns_, service));
  if (eps.empty()) {
    return Status::Unavailable("Service " + ns_ + "/" + service + " has no ready endpoint");
  }
  return eps;
}

Status SliceBackend::WriteSlice(const std::vector<SliceEndpoint>& eps) {
  k8s::ApplyOptions ao{kFieldManager, true};
  PGSHIFT_ASSIGN_OR_RETURN(Json written,
                           client_->Apply(k8s::resources::kEndpointSlices, ns_,
                                          BackendSlice(ns_, traffic_, upgrade_, eps), ao));
  slice_version_ = written["metadata"].value("resourceVersion", "");
  return Status::Ok();
}

Status SliceBackend::PrepareSwitch() {
  PGSHIFT_RETURN_IF_ERROR(Detach());
  PGSHIFT_ASSIGN_OR_RETURN(source_eps_, ReadyOf(source_service_));
  PGSHIFT_ASSIGN_OR_RETURN(target_eps_, ReadyOf(target_service_));
  return Status::Ok();
}

Status SliceBackend::Detach() {
  const auto& slices = k8s::resources::kEndpointSlices;
  const std::string owned = BackendSliceName(traffic_);
  PGSHIFT_ASSIGN_OR_RETURN(Json svc, client_->Get(k8s::resources::kServices, ns_, traffic_));
  const Json selector = svc["spec"].value("selector", Json::object());
  if (!selector.empty()) {
    // The Pods it leads to now, in a slice of pgshift's: the same endpoints twice, for now.
    PGSHIFT_ASSIGN_OR_RETURN(auto now, ReadyOf(traffic_));
    PGSHIFT_RETURN_IF_ERROR(WriteSlice(now).WithContext("making the backend's EndpointSlice"));
    const Json patch =
        Json::array({{{"op", "test"}, {"path", "/spec/selector"}, {"value", selector}},
                     {{"op", "remove"}, {"path", "/spec/selector"}}});
    auto removed = client_->Request("PATCH", k8s::resources::kServices.Path(ns_, traffic_), &patch,
                                    "application/json-patch+json");
    if (!removed.ok()) return removed.status().WithContext("removing the backend's selector");
  } else if (auto got = client_->Get(slices, ns_, owned); !got.ok()) {
    return got.status().code() == StatusCode::kNotFound
               ? Status::FailedPrecondition(
                     "the pooler's backend Service " + traffic_ +
                     " has no selector and no EndpointSlice " + owned +
                     ": it leads nowhere. Fix: give it the source's selector again (the "
                     "annotation " +
                     std::string(kSourceSelectorAnnotation) + " has it)")
               : got.status();
  } else {
    slice_version_ = (*got)["metadata"].value("resourceVersion", "");
  }
  // The endpoints controller leaves a selectorless Service's Endpoints as they were, and the
  // mirroring controller then copies them into a slice of its own: delete them. The
  // EndpointSlice controller leaves its slices too: delete those. Until a list made a while
  // after that shows only pgshift's slice (every slice of the Service is routed to).
  const int64_t quiet_from = MonotonicMillis() + 200;
  const int64_t deadline = MonotonicMillis() + settle_timeout_ms_;
  k8s::ListOptions lo;
  lo.label_selector = "kubernetes.io/service-name=" + traffic_;
  while (true) {
    // Again each time: a controller that had not seen the selector go may write them again.
    Status e = client_->Delete(k8s::resources::kEndpoints, ns_, traffic_);
    if (!e.ok() && e.code() != StatusCode::kNotFound) {
      return e.WithContext("deleting the backend Service's Endpoints");
    }
    int foreign = e.ok() ? 1 : 0;
    PGSHIFT_ASSIGN_OR_RETURN(k8s::ObjectList list, client_->List(slices, ns_, lo));
    for (const auto& item : list.items) {
      const std::string name = item["metadata"].value("name", "");
      if (name == owned) continue;
      foreign++;
      Status d = client_->Delete(slices, ns_, name);
      if (!d.ok() && d.code() != StatusCode::kNotFound) {
        return d.WithContext("deleting EndpointSlice " + name + " of the backend Service");
      }
    }
    if (foreign == 0 && MonotonicMillis() >= quiet_from) break;
    if (MonotonicMillis() > deadline) {
      return Status::DeadlineExceeded(
          "EndpointSlices other than pgshift's keep appearing for the "
          "backend Service " +
          traffic_);
    }
    SleepMillis(50);
  }
  detached_ = true;
  return Status::Ok();
}

Status SliceBackend::SwitchTo(const engine::Endpoint& to) {
  if (!(to == source_) && !(to == target_)) {
    return Status::InvalidArgument("the backend knows " + source_.ToString() + " and " +
                                   target_.ToString() + ", not " + to.ToString());
  }
  const int64_t start_us = MonotonicMicros();
  // A recovery's switch: no PrepareSwitch ran in this process; the Service may have its selector.
  if (!detached_) PGSHIFT_RETURN_IF_ERROR(Detach());
  const bool to_target = to == target_;
  std::vector<SliceEndpoint>& eps = to_target ? target_eps_ : source_eps_;
  if (eps.empty()) {
    PGSHIFT_ASSIGN_OR_RETURN(eps, ReadyOf(to_target ? target_service_ : source_service_));
  }
  const std::string before = slice_version_;
  PGSHIFT_RETURN_IF_ERROR(WriteSlice(eps).WithContext("moving the backend's EndpointSlice"));
  const int64_t written_us = MonotonicMicros();
  // Returns once a watch delivered the write: the nodes' proxies watch the same way, so a
  // probe sent now does not race them (a failed probe login costs server_login_retry).
  if (!before.empty() && before != slice_version_) {
    k8s::WatchOptions wo;
    wo.resource_version = before;
    wo.allow_bookmarks = false;
    wo.timeout = std::chrono::seconds(2);
    wo.field_selector = "metadata.name=" + BackendSliceName(traffic_);
    const std::string want = slice_version_;
    Status w = client_->WatchOnce(
        k8s::resources::kEndpointSlices, ns_, wo, [&want](const k8s::WatchEvent& ev) {
          return ev.object["metadata"].value("resourceVersion", "") != want;
        });
    if (!w.ok()) LogWarn("backend EndpointSlice: watching the switch: " + w.message());
  }
  last_switch_times_ = "EndpointSlice written in " + engine::Ms((written_us - start_us) / 1000.0) +
                       " ms, seen by a watch in " +
                       engine::Ms((MonotonicMicros() - written_us) / 1000.0) + " ms";
  return Status::Ok();
}

Status SliceBackend::Attach(std::optional<bool> on_target) {
  const auto& slices = k8s::resources::kEndpointSlices;
  const std::string owned = BackendSliceName(traffic_);
  auto got = client_->Get(slices, ns_, owned);
  if (!got.ok() && got.status().code() == StatusCode::kNotFound) return Status::Ok();
  if (!got.ok()) return got.status();
  const std::vector<SliceEndpoint> mine = ReadySliceEndpointsOf(*got);
  PGSHIFT_ASSIGN_OR_RETURN(Json svc, client_->Get(k8s::resources::kServices, ns_, traffic_));
  if (svc["spec"].value("selector", Json::object()).empty()) {
    auto src = ReadySliceEndpoints(client_, ns_, source_service_);
    auto tgt = ReadySliceEndpoints(client_, ns_, target_service_);
    PGSHIFT_RETURN_IF_ERROR(src.status());
    PGSHIFT_RETURN_IF_ERROR(tgt.status());
    std::string side = SideOfEndpoints(mine, *src, *tgt);
    // A server Pod restarted with a new IP while the slice led: the migration says which.
    if (side.empty() && on_target.has_value()) side = *on_target ? "target" : "source";
    if (side.empty()) {
      return Status::FailedPrecondition(
          "the pooler's backend EndpointSlice " + owned +
          " leads to neither server's ready Pods; its selector is given back at the next try");
    }
    Json selector = target_selector_;
    if (side == "source") {
      PGSHIFT_ASSIGN_OR_RETURN(selector, SourceSelector(svc));
    }
    const Json patch =
        Json::array({{{"op", "add"}, {"path", "/spec/selector"}, {"value", selector}}});
    auto added = client_->Request("PATCH", k8s::resources::kServices.Path(ns_, traffic_), &patch,
                                  "application/json-patch+json");
    if (!added.ok()) return added.status().WithContext("giving the backend its selector back");
  }
  // pgshift's slice goes once the controller's list the same endpoints: never none meanwhile.
  const int64_t deadline = MonotonicMillis() + settle_timeout_ms_;
  auto ips = [](const std::vector<SliceEndpoint>& eps) {
    std::vector<std::string> out;
    for (const auto& e : eps) out.push_back(e.ip);
    return out;
  };
  while (true) {
    auto theirs = ReadySliceEndpoints(client_, ns_, traffic_,
                                      std::string(kSliceManagedBy) + "!=" + kSliceManager);
    if (theirs.ok() && ips(*theirs) == ips(mine)) break;
    if (MonotonicMillis() > deadline) {
      return Status::DeadlineExceeded(
          "the backend Service's EndpointSlices did not follow its "
          "selector in time; pgshift's slice stays until they do");
    }
    SleepMillis(50);
  }
  Status d = client_->Delete(slices, ns_, owned);
  if (!d.ok() && d.code() != StatusCode::kNotFound) return d;
  detached_ = false;
  return Status::Ok();
}

PoolerRouter::PoolerRouter(k8s::Client* client, Options o, engine::Endpoint source,
                           std::string source_service, engine::Endpoint target)
    : client_(client), o_(std::move(o)), source_(source), target_(target) {
  if (o_.adopted) {
    backend_ = std::make_unique<ServiceRouter>(
        client, o_.ns, o_.backend, source, std::move(source_service), target,
        TargetName(o_.upgrade), TargetSelector(o_.upgrade), o_.settle_timeout_ms);
  } else {
    backend_ = std::make_unique<SliceBackend>(
        client, o_.ns, o_.upgrade, source, std::move(source_service), target, o_.settle_timeout_ms);
  }
}

Status PoolerRouter::AttachBackend(std::optional<bool> on_target) {
  JoinEarly();
  if (o_.adopted) return Status::Ok();
  return static_cast<SliceBackend*>(backend_.get())->Attach(on_target);
}

PoolerRouter::~PoolerRouter() { JoinEarly(); }

Status PoolerRouter::PrepareSwitch() {
  JoinEarly();
  PGSHIFT_RETURN_IF_ERROR(backend_->PrepareSwitch());
  // Each replica's admin console opened now, outside the pause (Pause takes them). One that
  // cannot be reached now is tried again by Pause.
  auto reps = Replicas();
  if (!reps.ok()) return Status::Ok();
  std::vector<std::unique_ptr<pg::Connection>> opened(reps->size());
  ForEachParallel(reps->size(), [&](size_t i) {
    auto c = AdminConnect((*reps)[i].address);
    if (c.ok()) opened[i] = std::move(*c);
    return Status::Ok();
  });
  for (size_t i = 0; i < reps->size(); ++i) {
    if (opened[i]) standby_[(*reps)[i].address.ToString()] = std::move(opened[i]);
  }
  return Status::Ok();
}

Result<std::vector<PoolerReplica>> PoolerRouter::Replicas() {
  PGSHIFT_ASSIGN_OR_RETURN(auto eps, ReadyEndpoints(client_, o_.ns, o_.service, o_.address_map));
  std::vector<PoolerReplica> out;
  for (const auto& e : eps) out.push_back({e.ToString(), e});
  return out;
}

Status PoolerRouter::Check() {
  JoinEarly();
  PGSHIFT_ASSIGN_OR_RETURN(auto reps, Replicas());
  if (reps.empty()) {
    return Status::Unavailable("the pooler " + o_.ns + "/" + o_.service +
                               " has no ready PgBouncer yet");
  }
  std::string version;
  for (const auto& r : reps) {
    auto c = AdminConnect(r.address);
    if (!c.ok()) return c.status().WithContext("pooler replica " + r.pod_ip + " admin console");
    auto v = (*c)->Query("SHOW VERSION");
    if (!v.ok()) return v.status().WithContext("pooler replica " + r.pod_ip);
    if (v->rows() > 0) version = v->Get(0, 0);
    if (o_.adopted) continue;  // its entries: Discover
    auto dbs = (*c)->Query("SHOW DATABASES");
    if (!dbs.ok()) return dbs.status().WithContext("pooler replica " + r.pod_ip);
    std::vector<std::string> names;
    for (int i = 0; i < dbs->rows(); ++i) names.push_back(dbs->Get(i, "name"));
    for (const auto& db : o_.databases) {
      if (std::find(names.begin(), names.end(), db) == names.end()) {
        return Status::FailedPrecondition(
            "pooler replica " + r.pod_ip + " has no database " + db +
            " in its ini; it runs an older configuration. Fix: delete the Secret " + o_.service +
            " and the pooler's Pods; the operator writes it again");
      }
    }
  }
  if (o_.adopted) PGSHIFT_RETURN_IF_ERROR(Discover(reps));
  PGSHIFT_RETURN_IF_ERROR(backend_->Check());
  summary_ = std::to_string(reps.size()) + " PgBouncer replica" + (reps.size() == 1 ? "" : "s") +
             " (" + version + "): PAUSE holds clients in each while the backend Service " +
             o_.backend + " moves";
  return Status::Ok();
}

Result<std::unique_ptr<pg::Connection>> PoolerRouter::AdminConnect(const engine::Endpoint& e,
                                                                   const std::string& dbname) {
  return pg::Connection::Connect(AdminDsn(e, dbname, o_.admin_user, o_.admin_password), 5,
                                 "pgshift-operator");
}

bool PoolerRouter::Holds(const std::string& name, std::string_view host) const {
  // An adopted PgBouncer's entries not discovered by this router (a recovery after a crash
  // makes a new one): every entry through the backend, unchecked, so none stays paused.
  if (o_.adopted && o_.databases.empty()) return HostNamesService(host, o_.backend, o_.ns);
  return std::find(o_.databases.begin(), o_.databases.end(), name) != o_.databases.end();
}

std::vector<std::string> PoolerRouter::HeldEntries(pg::Connection& admin) {
  if (!o_.databases.empty() || !o_.adopted) return o_.databases;
  std::vector<std::string> out;
  auto dbs = admin.Query("SHOW DATABASES");
  if (!dbs.ok()) return out;
  for (int i = 0; i < dbs->rows(); ++i) {
    if (Holds(dbs->Get(i, "name"), dbs->Get(i, "host"))) out.push_back(dbs->Get(i, "name"));
  }
  return out;
}

Status PoolerRouter::HoldReadyReplicas() {
  if (held_) return Status::Ok();
  PGSHIFT_ASSIGN_OR_RETURN(auto reps, Replicas());
  held_ = Held{reps, std::vector<std::unique_ptr<pg::Connection>>(reps.size())};
  return Status::Ok();
}

Status PoolerRouter::OnHeld(const std::function<Status(size_t, pg::Connection*)>& fn) {
  auto results =
      ForEachParallel(held_->replicas.size(), [&](size_t i) { return fn(i, HeldAdmin(i)); });
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok()) {
      return results[i].WithContext("pooler replica " + held_->replicas[i].pod_ip);
    }
  }
  return Status::Ok();
}

Status PoolerRouter::Discover(const std::vector<PoolerReplica>& reps) {
  std::optional<std::vector<std::string>> agreed;
  for (const auto& r : reps) {
    auto c = AdminConnect(r.address);
    if (!c.ok()) return c.status().WithContext("pooler replica " + r.pod_ip + " admin console");
    auto config = (*c)->Query("SHOW CONFIG");
    if (!config.ok()) return config.status().WithContext("pooler replica " + r.pod_ip);
    std::string default_mode = "session";  // PgBouncer's own default
    for (int i = 0; i < config->rows(); ++i) {
      if (config->Get(i, "key") == "pool_mode") default_mode = config->Get(i, "value");
    }
    auto dbs = (*c)->Query("SHOW DATABASES");
    if (!dbs.ok()) return dbs.status().WithContext("pooler replica " + r.pod_ip);
    const bool has_mode = dbs->ColumnIndex("pool_mode") >= 0;
    std::vector<PoolerDatabaseRow> rows;
    for (int i = 0; i < dbs->rows(); ++i) {
      rows.push_back({dbs->Get(i, "name"), dbs->Get(i, "database"), dbs->Get(i, "host"),
                      has_mode ? dbs->Get(i, "pool_mode") : ""});
    }
    auto names = AdoptedPoolerDatabases(rows, default_mode, o_.backend, o_.ns, o_.migrated);
    if (!names.ok()) return names.status().WithContext("pooler replica " + r.pod_ip);
    if (agreed && *agreed != *names) {
      return Status::FailedPrecondition(
          "the PgBouncer replicas behind Service " + o_.service +
          " serve different entries "
          "through " +
          o_.backend + " (" + Join(*agreed, ", ") + " and " + Join(*names, ", ") +
          "); give them one configuration (a rollout) before the cutover");
    }
    agreed = std::move(*names);
  }
  if (agreed) o_.databases = *agreed;
  return Status::Ok();
}

Status PoolerRouter::Pause(int timeout_ms) {
  JoinEarly();
  early_status_.reset();
  early_resumed_ = false;
  majors_ = o_.majors ? o_.majors() : std::pair{0, 0};
  held_.reset();
  PGSHIFT_ASSIGN_OR_RETURN(auto reps, Replicas());
  if (reps.empty()) {
    return Status::Unavailable("the pooler " + o_.service + " has no ready PgBouncer");
  }
  if (o_.adopted && o_.databases.empty()) PGSHIFT_RETURN_IF_ERROR(Discover(reps));
  const int64_t deadline = MonotonicMillis() + timeout_ms;
  Held held{reps, std::vector<std::unique_ptr<pg::Connection>>(reps.size())};
  // The admin consoles PrepareSwitch (or the last RESUME) left open: every replica's PAUSE is
  // sent at once, not after a login each (the first replica's clients wait for the last's).
  std::vector<std::unique_ptr<pg::Connection>> ready(reps.size());
  for (size_t i = 0; i < reps.size(); ++i) {
    auto it = standby_.find(reps[i].address.ToString());
    if (it != standby_.end()) ready[i] = std::move(it->second);
  }
  standby_.clear();
  auto results = ForEachParallel(reps.size(), [&](size_t i) -> Status {
    auto pause = [&](pg::Connection& c) -> Status {
      for (const auto& db : o_.databases) {
        PGSHIFT_RETURN_IF_ERROR(AdminCommandUntil(c, "PAUSE " + db, deadline));
      }
      return Status::Ok();
    };
    std::unique_ptr<pg::Connection> c = std::move(ready[i]);
    if (c != nullptr && PQstatus(c->raw()) == CONNECTION_OK) {
      Status s = pause(*c);
      // A console that broke since (PgBouncer restarted) is opened again; PAUSE is repeated
      // ("already paused" counts as done).
      if (s.ok() || PQstatus(c->raw()) == CONNECTION_OK) {
        held.admin[i] = std::move(c);
        return s;
      }
    }
    auto fresh = AdminConnect(reps[i].address);
    if (!fresh.ok()) return fresh.status();
    PGSHIFT_RETURN_IF_ERROR(pause(**fresh));
    held.admin[i] = std::move(*fresh);
    return Status::Ok();
  });
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].ok()) continue;
    // Nothing stays held: a replica whose PAUSE is still waiting is resumed too (on a new
    // connection; the waiting one is busy).
    Status undo = Resume();
    if (!undo.ok()) LogWarn("pooler: RESUME after a failed PAUSE: " + undo.message());
    return results[i].WithContext("pooler replica " + reps[i].pod_ip);
  }
  held_ = std::move(held);
  return Status::Ok();
}

pg::Connection* PoolerRouter::HeldAdmin(size_t i) {
  auto& c = held_->admin[i];
  if (c && PQstatus(c->raw()) == CONNECTION_OK && PQtransactionStatus(c->raw()) == PQTRANS_IDLE) {
    return c.get();
  }
  auto fresh = AdminConnect(held_->replicas[i].address);
  c = fresh.ok() ? std::move(*fresh) : nullptr;
  return c.get();
}

Status PoolerRouter::Resume() {
  JoinEarly();
  early_status_.reset();
  if (std::exchange(early_resumed_, false)) return Status::Ok();
  return ResumeHeld();
}

Status PoolerRouter::ResumeHeld() {
  // The replicas PAUSE held, on the connections it used; else (a recovery, an undo after a
  // failed PAUSE) every ready replica.
  PGSHIFT_RETURN_IF_ERROR(HoldReadyReplicas());
  Status s = OnHeld([&](size_t, pg::Connection* c) -> Status {
    // A PgBouncer that cannot be reached holds no client (a restarted one starts running).
    if (c == nullptr) return Status::Ok();
    return ResumeEntries(*c, HeldEntries(*c));
  });
  if (s.ok()) {
    ReleaseHeld();
  } else {
    held_.reset();
  }
  return s;
}

void PoolerRouter::HoldAgain(int64_t deadline_ms) {
  (void)OnHeld([&](size_t, pg::Connection* c) -> Status {
    if (c == nullptr) return Status::Ok();
    for (const auto& db : HeldEntries(*c)) (void)AdminCommandUntil(*c, "PAUSE " + db, deadline_ms);
    return Status::Ok();
  });
}

void PoolerRouter::ReleaseHeld() {
  // The consoles stay open for the next PAUSE (a retried attempt, the rollback).
  for (size_t i = 0; held_ && i < held_->replicas.size(); ++i) {
    if (held_->admin[i])
      standby_[held_->replicas[i].address.ToString()] = std::move(held_->admin[i]);
  }
  held_.reset();
}

Status PoolerRouter::Probe(const PoolerReplica& r, pg::Connection* admin, bool to_target,
                           int64_t deadline_ms, std::string* trace) {
  const std::string probe = to_target ? kProbeTarget : kProbeSource;
  const auto majors = majors_;
  const int want = to_target ? majors.second : majors.first;
  std::string last;
  std::unique_ptr<pg::Connection> own;
  const int64_t start_us = MonotonicMicros();
  // The first tries in full, then only the end: a proxy that lags a second is hundreds of tries.
  constexpr int kTracedTries = 3;
  int tries = 0;
  auto note = [&](const std::string& what) {
    if (trace == nullptr || tries > kTracedTries) return;
    *trace += " " + what + " " + engine::Ms((MonotonicMicros() - start_us) / 1000.0);
  };
  while (true) {
    ++tries;
    if (admin == nullptr || PQstatus(admin->raw()) != CONNECTION_OK) {
      auto c = AdminConnect(r.address);
      own = c.ok() ? std::move(*c) : nullptr;
      admin = own.get();
      if (!c.ok()) last = c.status().message();
    }
    if (admin != nullptr) {
      // Closes the server connections the pools hold: the next ones go where the Service leads.
      for (const auto& db : o_.databases) (void)admin->Query("RECONNECT " + db);
      (void)admin->Query("RECONNECT " + probe);
      note("reconnect");
      auto c = AdminConnect(r.address, probe);
      note("login");
      if (c.ok()) {
        auto v = (*c)->QueryValue("SELECT current_setting('server_version_num')::int / 10000");
        note(v.ok() ? "PostgreSQL " + *v + " at"
                    : "failed (" + std::string(Trim(v.status().message())) + ")");
        if (v.ok() && (want == 0 || *v == std::to_string(want))) {
          // Its server connection closed now (RECONNECT closes an idle one only at PgBouncer's
          // next maintenance): the step that opens the new side would otherwise end that
          // session and wait for it to exit, inside the pause. KILL holds the entry until its
          // RESUME.
          c->reset();
          (void)admin->Query("KILL " + probe);
          (void)admin->Query("RESUME " + probe);
          if (tries > kTracedTries) {
            const int all = std::exchange(tries, 0);  // the end is always traced
            note("... try " + std::to_string(all) + " reached it, closed");
          } else {
            note("closed");
          }
          return Status::Ok();
        }
        last = v.ok() ? "it reached PostgreSQL " + *v : v.status().message();
      } else {
        last = c.status().message();
      }
    }
    if (MonotonicMillis() > deadline_ms) {
      return Status::DeadlineExceeded(
          "a new server connection of pooler replica " + r.pod_ip + " does not reach the " +
          (to_target ? "target" : "source") + " through Service " + o_.backend +
          " (last try: " + std::string(Trim(last)) +
          "); the node's service proxy has not followed the Service's endpoints in time");
    }
    // Clients wait meanwhile: try again soon (the node's proxy follows within milliseconds
    // to a second or so; each try is a login, which paces the loop more than this sleep).
    SleepMillis(2);
  }
}

void PoolerRouter::JoinEarly() {
  {
    std::lock_guard<std::mutex> lock(early_mu_);
    early_joining_ = true;
  }
  early_cv_.notify_all();
  if (early_.joinable()) early_.join();
}

void PoolerRouter::NewSideCaughtUp() {
  {
    std::lock_guard<std::mutex> lock(early_mu_);
    caught_up_ = true;
  }
  early_cv_.notify_all();
}

bool PoolerRouter::WaitNewSideCaughtUp(int64_t deadline_ms) {
  std::unique_lock<std::mutex> lock(early_mu_);
  while (!caught_up_ && !early_joining_ && MonotonicMillis() < deadline_ms) {
    early_cv_.wait_for(
        lock, std::chrono::milliseconds(std::max<int64_t>(1, deadline_ms - MonotonicMillis())));
  }
  return caught_up_;
}

void PoolerRouter::BeginSwitch(const engine::Endpoint& to, bool resume_when_moved) {
  JoinEarly();
  {
    std::lock_guard<std::mutex> lock(early_mu_);
    early_joining_ = false;
    caught_up_ = false;
  }
  early_to_ = to;
  early_resumed_ = false;
  early_start_us_ = MonotonicMicros();
  early_ = std::thread([this, resume_when_moved] {
    bool resumed = false;
    early_status_ = Move(early_to_, resume_when_moved, &resumed);
    early_resumed_ = resumed;
    early_end_us_ = MonotonicMicros();
  });
}

Status PoolerRouter::SwitchTo(const engine::Endpoint& to) {
  const int64_t called_us = MonotonicMicros();
  JoinEarly();
  auto early = std::exchange(early_status_, std::nullopt);
  if (early && early_to_ == to) {
    if (early->ok()) {
      const int64_t now_us = MonotonicMicros();
      LogInfo("pooler switch begun with the pause: done " +
              engine::Ms((early_end_us_ - early_start_us_) / 1000.0) +
              " ms after it, the switch step waited " + engine::Ms((now_us - called_us) / 1000.0) +
              " ms for it");
      return Status::Ok();
    }
    LogWarn("pooler: the switch begun with the pause failed (" + early->message() +
            "); switching again");
  }
  majors_ = o_.majors ? o_.majors() : std::pair{0, 0};
  bool resumed = false;
  return Move(to, false, &resumed);
}

Status PoolerRouter::Move(const engine::Endpoint& to, bool resume_when_caught_up, bool* resumed) {
  if (!(to == source_) && !(to == target_)) {
    return Status::InvalidArgument("the pooler router knows " + source_.ToString() + " and " +
                                   target_.ToString() + ", not " + to.ToString());
  }
  PGSHIFT_RETURN_IF_ERROR(backend_->SwitchTo(to));
  const int64_t moved_us = MonotonicMicros();
  const int64_t deadline = MonotonicMillis() + o_.settle_timeout_ms;
  const bool to_target = to == target_;
  if (o_.adopted) {
    // No probe database in an ini pgshift did not write: the EndpointSlices have moved
    // (backend_ waited for them); give every node's service proxy settle_ms to follow, then
    // close the idle server connections so the next ones are made through the new path.
    SleepMillis(o_.settle_ms);
  }
  // Inside the pause: the replicas it holds, on its connections; else (a recovery's switch)
  // every ready replica.
  PGSHIFT_RETURN_IF_ERROR(HoldReadyReplicas());
  std::vector<std::string> traces(held_->replicas.size());
  Status s = OnHeld([&](size_t i, pg::Connection* c) -> Status {
    if (!o_.adopted) {
      traces[i] = held_->replicas[i].pod_ip + ":";
      return Probe(held_->replicas[i], c, to_target, deadline, &traces[i]);
    }
    if (c == nullptr) return Status::Ok();  // unreachable: it holds no client either
    for (const auto& db : HeldEntries(*c)) {
      auto r = c->Query("RECONNECT " + db);
      if (!r.ok()) return r.status().WithContext("RECONNECT " + db);
    }
    return Status::Ok();
  });
  const int64_t probed_us = MonotonicMicros();
  // HoldsAtFencedSide: every replica's new server connections now reach `to`, fenced. Once the
  // engine says the old side is fenced and caught up on `to` (NewSideCaughtUp), clients are let
  // go: each pool logs in to `to` while the engine's last steps run, and waits there until
  // step open lifts the fence.
  bool early = false;
  std::string resumed_at;
  if (s.ok() && resume_when_caught_up && WaitNewSideCaughtUp(deadline)) {
    Status r = OnHeld([&](size_t, pg::Connection* c) -> Status {
      if (c == nullptr) return Status::Unavailable("its admin console cannot be reached");
      return ResumeEntries(*c, HeldEntries(*c));
    });
    resumed_at = engine::Ms((MonotonicMicros() - probed_us) / 1000.0);
    early = r.ok();
    if (early) FaultPointForTest("pooler-released-early");
    if (!r.ok()) {
      // Held again where it worked: step resume lets them go, as without the hold.
      LogWarn("pooler: letting clients go before step open: " + r.message());
      HoldAgain(deadline);
    }
  }
  LogInfo("pooler switch to the " + std::string(to_target ? "target" : "source") + ": " +
          backend_->LastSwitchTimes() + ", " + (o_.adopted ? "settle and RECONNECT " : "probes ") +
          engine::Ms((probed_us - moved_us) / 1000.0) + " ms" +
          (o_.adopted ? "" : " (" + Join(traces, "; ") + ")") +
          (early ? ", clients let go after " + resumed_at + " ms more, to wait at the fence" : ""));
  if (early) {
    *resumed = true;
    ReleaseHeld();
  }
  return s;
}

Result<engine::RouterState> PoolerRouter::Observe() {
  JoinEarly();
  PGSHIFT_ASSIGN_OR_RETURN(engine::RouterState st, backend_->Observe());
  auto reps = Replicas();
  if (!reps.ok()) {
    st.paused = std::nullopt;
    st.detail += "; pooler replicas unknown (" + reps.status().message() + ")";
    return st;
  }
  int paused = 0, running = 0, unreachable = 0;
  for (const auto& r : *reps) {
    auto c = AdminConnect(r.address);
    auto dbs = c.ok() ? (*c)->Query("SHOW DATABASES") : Result<pg::QueryResult>(c.status());
    if (!dbs.ok() || dbs->ColumnIndex("paused") < 0) {
      unreachable++;
      continue;
    }
    bool any = false;
    for (int i = 0; i < dbs->rows(); ++i) {
      if (Holds(dbs->Get(i, "name"), dbs->Get(i, "host")) && dbs->Get(i, "paused") == "1") {
        any = true;
      }
    }
    (any ? paused : running)++;
  }
  // Unreachable replicas hold nobody: they count as not paused.
  st.paused = paused > 0;
  st.detail += "; pooler: " + std::to_string(paused) + " replica(s) paused, " +
               std::to_string(running) + " running, " + std::to_string(unreachable) +
               " unreachable";
  return st;
}

}  // namespace pgshift::op
