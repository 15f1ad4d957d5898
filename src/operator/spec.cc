#include "operator/spec.h"

#include <cctype>
#include <cmath>
#include <regex>

namespace pgshift::op {
namespace {

Status Bad(const std::string& field, const std::string& why) {
  return Status::InvalidArgument("spec." + field + ": " + why);
}

// Reads an optional typed member; a wrong type is an error naming the field.
template <typename T>
Status Read(const Json& obj, const char* key, const std::string& field, T* out) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return Status::Ok();
  try {
    *out = obj[key].get<T>();
  } catch (const std::exception&) {
    return Bad(field, "has the wrong type");
  }
  return Status::Ok();
}

const Json& Member(const Json& obj, const char* key) {
  static const Json kEmpty = Json::object();
  if (!obj.is_object() || !obj.contains(key) || !obj[key].is_object()) return kEmpty;
  return obj[key];
}

// An optional amount of bytes: a whole number, or a quantity such as 50Mi ("what": the unit
// said in the error, e.g. "bytes per second"); `fallback` when absent.
Result<int64_t> ReadBytes(const Json& obj, const char* key, const std::string& field,
                          const std::string& what, int64_t fallback) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return fallback;
  const Json& v = obj[key];
  Result<int64_t> bytes = Status::InvalidArgument("not a number or a string");
  if (v.is_number_integer()) {
    bytes = v.get<int64_t>();
    if (*bytes < 0) bytes = Status::InvalidArgument("negative");
  } else if (v.is_string()) {
    bytes = QuantityToInt64(v.get<std::string>());
  }
  if (!bytes.ok()) {
    return Bad(field, "must be a whole number of " + what +
                          ", 0 (no limit) or more, or a quantity such as 50Mi (" +
                          bytes.status().message() + ")");
  }
  return *bytes;
}

}  // namespace

Result<UpgradeSpec> ParseSpec(const Json& resource) {
  UpgradeSpec s;
  const Json& spec = Member(resource, "spec");
  const Json& src = Member(spec, "source");
  PGSHIFT_RETURN_IF_ERROR(Read(src, "service", "source.service", &s.source_service));
  PGSHIFT_RETURN_IF_ERROR(Read(src, "host", "source.host", &s.source_host));
  PGSHIFT_RETURN_IF_ERROR(Read(src, "port", "source.port", &s.source_port));
  PGSHIFT_RETURN_IF_ERROR(Read(src, "databases", "source.databases", &s.databases));
  const Json& cred = Member(src, "credentialsSecret");
  PGSHIFT_RETURN_IF_ERROR(Read(cred, "name", "source.credentialsSecret.name", &s.secret_name));
  PGSHIFT_RETURN_IF_ERROR(
      Read(cred, "usernameKey", "source.credentialsSecret.usernameKey", &s.username_key));
  PGSHIFT_RETURN_IF_ERROR(
      Read(cred, "passwordKey", "source.credentialsSecret.passwordKey", &s.password_key));

  const Json& tgt = Member(spec, "target");
  PGSHIFT_RETURN_IF_ERROR(Read(tgt, "version", "target.version", &s.target_version));
  PGSHIFT_RETURN_IF_ERROR(Read(tgt, "image", "target.image", &s.target_image));
  const Json& storage = Member(tgt, "storage");
  PGSHIFT_RETURN_IF_ERROR(Read(storage, "size", "target.storage.size", &s.storage_size));
  PGSHIFT_RETURN_IF_ERROR(
      Read(storage, "storageClassName", "target.storage.storageClassName", &s.storage_class));
  if (tgt.contains("resources") && tgt["resources"].is_object()) s.resources = tgt["resources"];
  PGSHIFT_RETURN_IF_ERROR(Read(tgt, "parameters", "target.parameters", &s.parameters));

  const Json& traffic = Member(spec, "traffic");
  PGSHIFT_RETURN_IF_ERROR(Read(traffic, "service", "traffic.service", &s.traffic_service));
  if (traffic.contains("pooler") && traffic["pooler"].is_object()) {
    const Json& pooler = traffic["pooler"];
    s.pooler.enabled = true;
    PGSHIFT_RETURN_IF_ERROR(Read(pooler, "replicas", "traffic.pooler.replicas", &s.pooler.replicas));
    PGSHIFT_RETURN_IF_ERROR(Read(pooler, "poolMode", "traffic.pooler.poolMode", &s.pooler.pool_mode));
    PGSHIFT_RETURN_IF_ERROR(Read(pooler, "image", "traffic.pooler.image", &s.pooler.image));
    PGSHIFT_RETURN_IF_ERROR(
        Read(pooler, "maxClientConn", "traffic.pooler.maxClientConn", &s.pooler.max_client_conn));
    PGSHIFT_RETURN_IF_ERROR(Read(pooler, "defaultPoolSize", "traffic.pooler.defaultPoolSize",
                                 &s.pooler.default_pool_size));
    if (pooler.contains("resources") && pooler["resources"].is_object()) {
      s.pooler.resources = pooler["resources"];
    }
    if (pooler.contains("existing") && pooler["existing"].is_object()) {
      const Json& ex = pooler["existing"];
      ExistingPoolerSpec e;
      PGSHIFT_RETURN_IF_ERROR(Read(ex, "service", "traffic.pooler.existing.service", &e.service));
      PGSHIFT_RETURN_IF_ERROR(Read(ex, "backendService", "traffic.pooler.existing.backendService",
                                   &e.backend_service));
      const Json& admin = Member(ex, "adminSecret");
      PGSHIFT_RETURN_IF_ERROR(
          Read(admin, "name", "traffic.pooler.existing.adminSecret.name", &e.admin_secret));
      PGSHIFT_RETURN_IF_ERROR(Read(admin, "usernameKey",
                                   "traffic.pooler.existing.adminSecret.usernameKey",
                                   &e.username_key));
      PGSHIFT_RETURN_IF_ERROR(Read(admin, "passwordKey",
                                   "traffic.pooler.existing.adminSecret.passwordKey",
                                   &e.password_key));
      PGSHIFT_RETURN_IF_ERROR(
          Read(ex, "settleMs", "traffic.pooler.existing.settleMs", &e.settle_ms));
      s.pooler.existing = e;
    }
  }
  std::string tables_without_pk = engine::TablesWithoutPkName(s.tables_without_pk);
  PGSHIFT_RETURN_IF_ERROR(
      Read(spec, "tablesWithoutPrimaryKey", "tablesWithoutPrimaryKey", &tables_without_pk));
  const Json& copy = Member(spec, "copy");
  std::string copy_method = engine::CopyMethodName(s.copy_method);
  PGSHIFT_RETURN_IF_ERROR(Read(copy, "method", "copy.method", &copy_method));
  PGSHIFT_RETURN_IF_ERROR(Read(copy, "jobs", "copy.jobs", &s.copy_jobs));
  const Json& cut = Member(spec, "cutover");
  std::string cutover_mode = engine::CutoverModeName(s.cutover_mode);
  PGSHIFT_RETURN_IF_ERROR(Read(cut, "mode", "cutover.mode", &cutover_mode));
  PGSHIFT_RETURN_IF_ERROR(Read(cut, "approved", "cutover.approved", &s.cutover_approved));
  PGSHIFT_RETURN_IF_ERROR(Read(cut, "maxLagBytes", "cutover.maxLagBytes", &s.max_lag_bytes));
  PGSHIFT_RETURN_IF_ERROR(Read(cut, "maxPauseMs", "cutover.maxPauseMs", &s.max_pause_ms));
  std::string on_difference;
  const bool on_difference_set = cut.contains("onDifference") && !cut["onDifference"].is_null();
  PGSHIFT_RETURN_IF_ERROR(Read(cut, "onDifference", "cutover.onDifference", &on_difference));
  std::string verify = engine::VerifyLevelName(s.verify);
  PGSHIFT_RETURN_IF_ERROR(Read(spec, "verify", "verify", &verify));
  PGSHIFT_RETURN_IF_ERROR(Read(Member(spec, "rollback"), "keepReverseReplication",
                               "rollback.keepReverseReplication", &s.keep_reverse_replication));
  PGSHIFT_RETURN_IF_ERROR(Read(spec, "action", "action", &s.action));
  PGSHIFT_RETURN_IF_ERROR(Read(spec, "checkOnly", "checkOnly", &s.check_only));

  // The same rules as the CRD's schema and CEL rules.
  if (s.source_service.empty() == s.source_host.empty()) {
    return Bad("source", "set exactly one of source.service and source.host");
  }
  if (s.source_port < 1 || s.source_port > 65535) return Bad("source.port", "must be 1..65535");
  if (s.secret_name.empty()) return Bad("source.credentialsSecret.name", "is required");
  if (s.target_version < 12 || s.target_version > 18) {
    return Bad("target.version", "must be a PostgreSQL major version from 12 to 18");
  }
  if (s.target_image.empty()) s.target_image = "postgres:" + std::to_string(s.target_version);
  static const std::regex kParam("^[a-z][a-z0-9_.]*$");
  for (const auto& [k, v] : s.parameters) {
    if (!std::regex_match(k, kParam)) return Bad("target.parameters", "bad parameter name " + k);
    if (k == "wal_level") return Bad("target.parameters", "wal_level is set by pgshift (logical)");
  }
  if (s.traffic_service.empty() == !s.pooler.enabled) {
    return Bad("traffic", "set exactly one of traffic.service (the operator moves that Service's "
                          "selector) and traffic.pooler (the operator runs a PgBouncer)");
  }
  if (s.pooler.enabled) {
    if (s.source_service.empty()) {
      return Bad("traffic.pooler",
                 "needs source.service: the pooler reaches the source through a Service of its "
                 "own that selects the source's Pods like source.service does");
    }
    if (s.pooler.replicas < 1 || s.pooler.replicas > 64) {
      return Bad("traffic.pooler.replicas", "must be 1..64");
    }
    if (s.pooler.pool_mode != "transaction" && s.pooler.pool_mode != "statement") {
      return Bad("traffic.pooler.poolMode",
                 "must be transaction or statement: in session mode PAUSE waits for every client "
                 "to disconnect, so clients could not be held at cutover");
    }
    if (s.pooler.image.empty()) return Bad("traffic.pooler.image", "must not be empty");
    if (s.pooler.max_client_conn < 1) return Bad("traffic.pooler.maxClientConn", "must be 1 or more");
    if (s.pooler.default_pool_size < 1) {
      return Bad("traffic.pooler.defaultPoolSize", "must be 1 or more");
    }
    if (const auto& e = s.pooler.existing) {
      if (e->service.empty()) {
        return Bad("traffic.pooler.existing.service",
                   "must name the Service in front of your PgBouncer Pods");
      }
      if (e->backend_service.empty()) {
        return Bad("traffic.pooler.existing.backendService",
                   "must name the Service your PgBouncer's [databases] entries use as host");
      }
      if (e->admin_secret.empty()) {
        return Bad("traffic.pooler.existing.adminSecret.name",
                   "must name a Secret with a user of your PgBouncer's admin_users");
      }
      if (e->backend_service == s.source_service) {
        return Bad("traffic.pooler.existing.backendService",
                   "must differ from source.service: the operator moves it to the target at "
                   "cutover, while source.service keeps leading to the source. Fix: give your "
                   "PgBouncer a Service of its own for the database (same selector) and use "
                   "its name as host in the ini");
      }
      if (e->backend_service == e->service) {
        return Bad("traffic.pooler.existing.backendService",
                   "must differ from traffic.pooler.existing.service (that one leads to "
                   "PgBouncer, this one to the database)");
      }
      if (e->settle_ms < 0 || e->settle_ms > 10000) {
        return Bad("traffic.pooler.existing.settleMs", "must be 0..10000");
      }
    }
  }
  if (!s.traffic_service.empty() && s.traffic_service == s.source_service) {
    return Bad("traffic.service",
               "must be the Service clients use, not the source's own Service (source.service)");
  }
  auto mode = engine::ParseCutoverMode(cutover_mode);
  if (!mode.ok()) return Bad("cutover.mode", "must be auto or manual");
  s.cutover_mode = *mode;
  if (s.max_lag_bytes < 0) return Bad("cutover.maxLagBytes", "must not be negative");
  if (s.max_pause_ms < 1 || s.max_pause_ms > 600000) {
    return Bad("cutover.maxPauseMs", "must be 1..600000");
  }
  auto level = engine::ParseVerifyLevel(verify);
  if (!level.ok()) return Bad("verify", "must be none, count or checksum");
  s.verify = *level;
  auto twp = engine::ParseTablesWithoutPk(tables_without_pk);
  if (!twp.ok()) return Bad("tablesWithoutPrimaryKey", "must be refuse or full");
  s.tables_without_pk = *twp;
  auto method = engine::ParseCopyMethod(copy_method);
  if (!method.ok()) return Bad("copy.method", "must be snapshot or native");
  s.copy_method = *method;
  if (s.copy_jobs < 0 || s.copy_jobs > 256) {
    return Bad("copy.jobs", "must be 0..256 (0: as many as the target has cores)");
  }
  PGSHIFT_ASSIGN_OR_RETURN(
      s.copy_rate, ReadBytes(copy, "rate", "copy.rate", "bytes per second", s.copy_rate));
  PGSHIFT_ASSIGN_OR_RETURN(s.max_retained_wal,
                           ReadBytes(Member(spec, "source"), "maxRetainedWal",
                                     "source.maxRetainedWal", "bytes", s.max_retained_wal));
  if (s.copy_method == engine::CopyMethod::kNative && (s.copy_jobs != 0 || s.copy_rate != 0)) {
    return Bad("copy",
               "jobs and rate apply to method snapshot only (native copies one table per "
               "subscription worker at its own pace): remove them, or use method snapshot");
  }
  if (on_difference_set) {
    auto d = engine::ParseOnDifference(on_difference);
    if (!d.ok()) return Bad("cutover.onDifference", "must be rollback or stop");
    s.on_difference = *d;
  }
  if (s.on_difference == engine::OnDifference::kRollback && !s.keep_reverse_replication) {
    return Bad("cutover.onDifference",
               "rollback needs rollback.keepReverseReplication: true (without reverse "
               "replication going back loses the writes made on the target): set onDifference "
               "to stop, or keep reverse replication");
  }
  if (!s.action.empty() && s.action != "Rollback" && s.action != "Finish") {
    return Bad("action", "must be empty, Rollback or Finish");
  }
  return s;
}

Result<int64_t> QuantityToInt64(const std::string& text) {
  // <digits>[.<digits>] then a suffix: binary (Ki..Ei), decimal SI (n, u, m, "", k..E) or a
  // decimal exponent (e/E<int>), as Kubernetes' resource.Quantity reads them. The value is
  // mantissa * 10^exp10 * 2^exp2, kept exact.
  const auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("\"" + text + "\" " + why);
  };
  size_t i = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
  int64_t mantissa = 0;
  int exp10 = 0, exp2 = 0, digits = 0;
  bool point = false;
  for (; i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.');
       ++i) {
    if (text[i] == '.') {
      if (point) return bad("is not a quantity");
      point = true;
      continue;
    }
    ++digits;
    if (__builtin_mul_overflow(mantissa, 10, &mantissa) ||
        __builtin_add_overflow(mantissa, text[i] - '0', &mantissa)) {
      return bad("has too many digits");
    }
    if (point) --exp10;
  }
  if (digits == 0) return bad("is not a quantity");
  if (negative && mantissa != 0) return bad("is negative");
  const std::string suffix = text.substr(i);
  static const std::map<std::string, std::pair<int, int>> kSuffixes = {
      {"", {0, 0}},    {"n", {-9, 0}},  {"u", {-6, 0}},  {"m", {-3, 0}},
      {"k", {3, 0}},   {"M", {6, 0}},   {"G", {9, 0}},   {"T", {12, 0}},
      {"P", {15, 0}},  {"E", {18, 0}},  {"Ki", {0, 10}}, {"Mi", {0, 20}},
      {"Gi", {0, 30}}, {"Ti", {0, 40}}, {"Pi", {0, 50}}, {"Ei", {0, 60}}};
  if (auto it = kSuffixes.find(suffix); it != kSuffixes.end()) {
    exp10 += it->second.first;
    exp2 += it->second.second;
  } else if (static const std::regex kExp("^[eE][-+]?[0-9]{1,3}$");
             std::regex_match(suffix, kExp)) {
    exp10 += std::stoi(suffix.substr(1));
  } else {
    return bad("has an unknown suffix (want Ki, Mi, Gi, ..., k, M, G, ... or e<exponent>)");
  }
  int64_t v = mantissa;
  if (v == 0) return int64_t{0};
  // Divide by 10 per negative decimal exponent, or by 5 with one factor 2 of 2^exp2 ("1.5Ki").
  for (; exp10 < 0; ++exp10) {
    if (v % 10 == 0) {
      v /= 10;
    } else if (exp2 > 0 && v % 5 == 0) {
      v /= 5;
      --exp2;
    } else {
      return bad("is not a whole number");
    }
  }
  for (; exp10 > 0; --exp10) {
    if (__builtin_mul_overflow(v, 10, &v)) return bad("is too large");
  }
  for (; exp2 > 0; --exp2) {
    if (__builtin_mul_overflow(v, 2, &v)) return bad("is too large");
  }
  return v;
}

std::string TargetName(const std::string& upgrade_name) { return upgrade_name + "-target"; }

Json TargetSelector(const std::string& upgrade_name) {
  return {{kUpgradeLabel, upgrade_name}, {kRoleLabel, "target"}};
}

Json OwnerReference(const Json& resource) {
  return {{"apiVersion", kApiVersion},
          {"kind", kKind},
          {"name", resource["metadata"]["name"]},
          {"uid", resource["metadata"]["uid"]},
          {"controller", true},
          {"blockOwnerDeletion", true}};
}

namespace {

Json TargetMetadata(const Json& resource) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  Json labels = TargetSelector(name);
  labels["app.kubernetes.io/managed-by"] = "pgshift-operator";
  return {{"name", TargetName(name)},
          {"namespace", resource["metadata"]["namespace"]},
          {"labels", labels},
          {"ownerReferences", Json::array({OwnerReference(resource)})}};
}

}  // namespace

Json TargetSecret(const Json& resource, const Json& statefulset, const std::string& password) {
  Json meta = TargetMetadata(resource);
  meta["ownerReferences"] = Json::array({{{"apiVersion", "apps/v1"},
                                          {"kind", "StatefulSet"},
                                          {"name", statefulset["metadata"]["name"]},
                                          {"uid", statefulset["metadata"]["uid"]}}});
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata", meta},
          {"type", "Opaque"},
          {"stringData", {{"username", "postgres"}, {"password", password}}}};
}

Json TargetService(const Json& resource) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", TargetMetadata(resource)},
          {"spec",
           {{"selector", TargetSelector(name)},
            {"ports", Json::array({{{"name", "postgres"},
                                    {"port", 5432},
                                    {"targetPort", 5432},
                                    {"protocol", "TCP"}}})}}}};
}

Json TargetStatefulSet(const Json& resource, const UpgradeSpec& spec) {
  const std::string name = resource["metadata"]["name"].get<std::string>();
  const std::string target = TargetName(name);
  Json args = Json::array({"-c", "wal_level=logical"});
  for (const auto& [k, v] : spec.parameters) {
    args.push_back("-c");
    args.push_back(k + "=" + v);
  }
  Json container = {
      {"name", "postgres"},
      {"image", spec.target_image},
      {"args", args},
      {"ports", Json::array({{{"name", "postgres"}, {"containerPort", 5432}}})},
      {"env",
       Json::array({{{"name", "POSTGRES_PASSWORD"},
                     {"valueFrom", {{"secretKeyRef", {{"name", target}, {"key", "password"}}}}}},
                    {{"name", "PGDATA"}, {"value", "/var/lib/postgresql/data/pgdata"}}})},
      {"volumeMounts", Json::array({{{"name", "data"}, {"mountPath", "/var/lib/postgresql/data"}}})},
      {"readinessProbe",
       {{"exec", {{"command", Json::array({"pg_isready", "-U", "postgres"})}}},
        {"periodSeconds", 2}}}};
  if (!spec.resources.empty()) container["resources"] = spec.resources;
  Json claim_spec = {{"accessModes", Json::array({"ReadWriteOnce"})},
                     {"resources", {{"requests", {{"storage", spec.storage_size}}}}}};
  if (!spec.storage_class.empty()) claim_spec["storageClassName"] = spec.storage_class;
  return {{"apiVersion", "apps/v1"},
          {"kind", "StatefulSet"},
          {"metadata", TargetMetadata(resource)},
          {"spec",
           {{"replicas", 1},
            {"serviceName", target},
            {"selector", {{"matchLabels", TargetSelector(name)}}},
            {"persistentVolumeClaimRetentionPolicy",
             {{"whenDeleted", "Delete"}, {"whenScaled", "Retain"}}},
            {"template",
             {{"metadata", {{"labels", TargetSelector(name)}}},
              {"spec", {{"containers", Json::array({container})}}}}},
            {"volumeClaimTemplates",
             Json::array({{{"metadata", {{"name", "data"}}}, {"spec", claim_spec}}})}}}};
}

std::string InSpecWords(std::string text) {
  // Longest first: a remedy's whole phrase before the bare option.
  static const std::vector<std::pair<std::string, std::string>> kSpecWords = {
      {"rerun with --tables-without-pk full", "set spec.tablesWithoutPrimaryKey: full"},
      {"--tables-without-pk full", "spec.tablesWithoutPrimaryKey: full"},
      {"pass --rollback-replication off", "set spec.rollback.keepReverseReplication: false"},
      {"--rollback-replication off", "spec.rollback.keepReverseReplication: false"},
      {"--on-difference stop", "spec.cutover.onDifference: stop"},
      {"`pgshift rollback --state DIR`", "spec.action: Rollback"},
      {"`pgshift finish --state DIR`", "spec.action: Finish"},
      {"point --target at a server of another major version",
       "set spec.target.version to another major version"},
      {"with --databases", "in spec.source.databases"},
  };
  for (const auto& [cli, spec] : kSpecWords) {
    for (size_t p = text.find(cli); p != std::string::npos; p = text.find(cli, p + spec.size())) {
      text.replace(p, cli.size(), spec);
    }
  }
  // The target is the operator's: its settings come from the spec (the StatefulSet restarts
  // it).
  static const std::regex kTargetSetting(
      R"(raise ([a-z_]+) on the target to ([0-9]+) \(ALTER SYSTEM SET [a-z_]+ = [0-9]+, then restart it\))");
  return std::regex_replace(text, kTargetSetting, "set spec.target.parameters.$1: \"$2\"");
}

std::vector<std::string> PreflightFindings(const std::string& progress_line) {
  static const std::string kHead = "preflight found problems:";
  if (progress_line.rfind(kHead, 0) != 0) return {};
  std::vector<std::string> out;
  size_t start = kHead.size();
  while (start <= progress_line.size()) {
    size_t end = progress_line.find('\n', start);
    if (end == std::string::npos) end = progress_line.size();
    std::string line = progress_line.substr(start, end - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    if (!line.empty()) out.push_back(InSpecWords(std::move(line)));
    start = end + 1;
  }
  return out;
}

engine::MigrationOptions EngineOptions(const UpgradeSpec& spec) {
  engine::MigrationOptions o;
  o.router = engine::RouterKind::kKubernetesService;
  o.cutover = spec.cutover_mode;
  o.max_lag_bytes = spec.max_lag_bytes;
  o.max_pause_ms = spec.max_pause_ms;
  o.databases = spec.databases;
  o.verify = spec.verify;
  o.rollback_replication = spec.keep_reverse_replication;
  o.on_difference = spec.on_difference.value_or(o.on_difference);
  o.tables_without_pk = spec.tables_without_pk;
  o.copy = spec.copy_method;
  o.copy_jobs = spec.copy_jobs;
  o.copy_rate = spec.copy_rate;
  o.max_retained_wal = spec.max_retained_wal;
  return o;
}

engine::MigrationOptions ResumedOptions(const engine::MigrationOptions& started,
                                        engine::Phase phase, const UpgradeSpec& spec) {
  const engine::MigrationOptions now = EngineOptions(spec);
  engine::MigrationOptions o = started;
  o.cutover = now.cutover;
  o.max_lag_bytes = now.max_lag_bytes;
  o.max_pause_ms = now.max_pause_ms;
  o.verify = now.verify;
  o.on_difference = now.on_difference;
  o.copy_jobs = now.copy_jobs;
  o.copy_rate = now.copy_rate;
  o.max_retained_wal = now.max_retained_wal;  // a DBA who made room allows more
  if (phase <= engine::Phase::kInitialCopy) o.tables_without_pk = now.tables_without_pk;
  return o;
}

Step NextStep(const UpgradeSpec& spec, std::optional<engine::Phase> phase, bool preflight_done) {
  using engine::Phase;
  if (spec.check_only) return preflight_done ? Step::kNone : Step::kPreflight;
  if (!phase.has_value()) return Step::kRun;
  switch (*phase) {
    case Phase::kReadyForCutover:
      if (spec.cutover_mode == engine::CutoverMode::kAuto) return Step::kRun;
      return spec.cutover_approved ? Step::kCutover : Step::kNone;
    case Phase::kRollbackReady:
      if (spec.action == "Rollback") return Step::kRollback;
      if (spec.action == "Finish") return Step::kFinish;
      return Step::kNone;
    case Phase::kRolledBack:
      return spec.action == "Finish" ? Step::kFinish : Step::kNone;
    case Phase::kCompleted:
    case Phase::kFailed:
    case Phase::kAborted:
      return Step::kNone;
    default:
      return Step::kRun;  // before cutover, or a cutover to finish or undo after a crash
  }
}

std::string StepName(Step s) {
  switch (s) {
    case Step::kNone: return "none";
    case Step::kPreflight: return "preflight";
    case Step::kRun: return "run";
    case Step::kCutover: return "cutover";
    case Step::kRollback: return "rollback";
    case Step::kFinish: return "finish";
  }
  return "?";
}

namespace {

Json Condition(const Json& existing, const std::string& type, bool status,
               const std::string& reason, const std::string& message, int64_t generation,
               const std::string& now) {
  std::string s = status ? "True" : "False";
  std::string since = now;
  if (existing.is_array()) {
    for (const auto& c : existing) {
      if (c.value("type", "") == type && c.value("status", "") == s) {
        since = c.value("lastTransitionTime", now);
      }
    }
  }
  return {{"type", type},
          {"status", s},
          {"reason", reason},
          {"message", message},
          {"observedGeneration", generation},
          {"lastTransitionTime", since}};
}

}  // namespace

Json Conditions(const Json& existing, const std::string& phase, bool working,
                bool waiting_for_approval, const std::string& error_reason,
                const std::string& error, int64_t generation, const std::string& now) {
  const bool on_target = phase == "RollbackReady" || phase == "Completed";
  const bool ended = phase == "Completed" || phase == "RolledBack" || phase == "Aborted" ||
                     phase == "Failed";
  const std::string p = phase.empty() ? "Pending" : phase;
  Json out = Json::array();
  out.push_back(Condition(existing, "Ready", on_target, p,
                          on_target ? "traffic is on the target" : "traffic is on the source",
                          generation, now));
  std::string why = working ? "a step is running"
                    : waiting_for_approval ? "waiting for spec.cutover.approved"
                    : ended ? "the migration ended"
                            : "idle";
  out.push_back(Condition(existing, "Progressing", working, working ? p : (waiting_for_approval ? "WaitingForApproval" : p),
                          why, generation, now));
  const bool cutover_ready = phase == "ReadyForCutover";
  out.push_back(Condition(existing, "CutoverReady", cutover_ready, p,
                          cutover_ready ? "replication caught up and verified; cutover can run"
                                        : "not ready for cutover",
                          generation, now));
  out.push_back(Condition(existing, "Degraded", !error.empty(),
                          error.empty() ? "AsExpected" : error_reason, error, generation, now));
  return out;
}

Json StatusFromEngine(const engine::MigrationState& state) {
  Json st;
  st["phase"] = engine::PhaseName(state.phase);
  if (state.source_major > 0) st["sourceVersion"] = state.source_major;
  if (state.target_major > 0) st["targetVersion"] = state.target_major;
  Json times = Json::object();
  for (const auto& [phase, t] : state.phase_times) {
    Json pt = Json::object();
    if (!t.started_at.empty()) pt["started"] = t.started_at;
    if (!t.finished_at.empty()) pt["finished"] = t.finished_at;
    times[phase] = pt;
  }
  st["phaseTimes"] = times;
  if (!state.cutovers.empty()) {
    const engine::CutoverAttempt& c = state.cutovers.back();
    Json lc = {{"direction", c.direction},
               {"succeeded", c.succeeded},
               {"pauseMs", c.pause_ms},
               {"at", c.started_at}};
    if (!c.error.empty()) lc["error"] = c.error;
    if (!c.notes.empty()) lc["notes"] = c.notes;
    st["lastCutover"] = lc;
  }
  return st;
}

Json StatusFromStats(const engine::StatsSnapshot& snap) {
  // Absent when not fresh: a null in a merge patch removes the field.
  double lag_bytes = 0, lag_seconds = 0, synced = 0, total = 0, copied = 0;
  bool have_lag = !snap.databases.empty(), have_lag_s = have_lag, have_tables = have_lag,
       have_copied = have_lag;
  for (const auto& [db, d] : snap.databases) {
    auto lb = snap.Fresh(d.lag_bytes), ls = snap.Fresh(d.lag_seconds);
    auto ts = snap.Fresh(d.tables_synced), tt = snap.Fresh(d.tables_total);
    auto bc = snap.Fresh(d.bytes_copied);
    if (lb) lag_bytes += *lb; else have_lag = false;
    if (ls) lag_seconds = std::max(lag_seconds, *ls); else have_lag_s = false;
    if (ts && tt) { synced += *ts; total += *tt; } else have_tables = false;
    if (bc) copied += *bc; else have_copied = false;
  }
  Json st;
  st["lagBytes"] = have_lag ? Json(static_cast<int64_t>(lag_bytes)) : Json(nullptr);
  st["lagSeconds"] = have_lag_s ? Json(lag_seconds) : Json(nullptr);
  st["tablesSynced"] = have_tables ? Json(static_cast<int64_t>(synced)) : Json(nullptr);
  st["tablesTotal"] = have_tables ? Json(static_cast<int64_t>(total)) : Json(nullptr);
  st["bytesCopied"] = have_copied ? Json(static_cast<int64_t>(copied)) : Json(nullptr);
  auto drain = snap.Fresh(snap.lag_drain_bytes_per_s);
  auto ready_in = snap.Fresh(snap.ready_in_s);
  st["lagDrainBytesPerSecond"] = drain ? Json(std::round(*drain)) : Json(nullptr);
  st["readyInSeconds"] = ready_in ? Json(static_cast<int64_t>(std::ceil(*ready_in))) : Json(nullptr);
  // WAL the source keeps for the slots (source.maxRetainedWal stops the step past it).
  auto retained = snap.Total(&engine::DatabaseStats::retained_wal_bytes);
  st["retainedWalBytes"] = retained ? Json(static_cast<int64_t>(*retained)) : Json(nullptr);
  return st;
}

namespace {

constexpr std::pair<const char*, const char*> kReports[] = {
    {"verification", "before-cutover.tsv"}, {"switch_point_verification", "switch-point.tsv"}};

std::string Cell(const Json& v) {
  if (v.is_null()) return "-";
  std::string out = v.is_string() ? v.get<std::string>() : v.dump();
  for (char& c : out) {
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

}  // namespace

Json VerificationForStatus(const Json& report, const std::string& detail, size_t max_listed) {
  if (!report.is_object() || !report.contains("tables") || !report["tables"].is_array()) {
    return report;
  }
  Json out = Json::object();
  for (const auto& [key, value] : report.items()) {
    if (key != "tables") out[key] = value;  // the per-table list is not copied
  }
  Json listed = Json::array();
  for (const Json& t : report["tables"]) {
    if (t.value("result", "") == "match" || listed.size() >= max_listed) continue;
    Json brief = Json::object();
    for (const char* key : {"database", "schema", "table", "result", "blocking", "source_rows",
                            "target_rows", "note"}) {
      if (t.contains(key)) brief[key] = t[key];
    }
    listed.push_back(brief);
  }
  out["tables_listed"] = listed;
  out["tables_not_listed"] = report["tables"].size() - listed.size();
  out["detail"] = detail;
  return out;
}

std::string VerificationDetailNote(const std::string& upgrade_name, const std::string& report) {
  for (const auto& [key, file] : kReports) {
    if (report == key) {
      return std::string("every table: ConfigMaps ") + upgrade_name + "-verification-<n>, key " +
             file + " (n: the database's index)";
    }
  }
  return "";
}

bool HasVerificationDetail(const Json& engine) {
  for (const auto& [key, file] : kReports) {
    (void)file;
    if (engine.contains(key) && engine[key].is_object() && engine[key].contains("tables") &&
        engine[key]["tables"].is_array()) {
      return true;
    }
  }
  return false;
}

std::string VerificationConfigMapName(const std::string& upgrade_name, int database_index) {
  return upgrade_name + "-verification-" + std::to_string(database_index);
}

std::vector<Json> VerificationConfigMaps(const Json& resource, const Json& engine,
                                         size_t max_bytes_per_key) {
  std::vector<Json> out;
  if (!engine.contains("databases") || !engine["databases"].is_array()) return out;
  const std::string name = resource["metadata"]["name"].get<std::string>();
  for (const Json& db : engine["databases"]) {
    const std::string dbname = db.value("name", "");
    const int index = db.value("index", 0);
    Json data = Json::object();
    for (const auto& [key, file] : kReports) {
      if (!engine.contains(key) || !engine[key].is_object() || !engine[key].contains("tables")) {
        continue;
      }
      std::string text = "schema\ttable\tresult\tsource_rows\ttarget_rows\tseconds\tnote\n";
      size_t left_out = 0;
      for (const Json& t : engine[key]["tables"]) {
        if (t.value("database", "") != dbname) continue;
        std::string line = Cell(t.value("schema", Json())) + "\t" + Cell(t.value("table", Json())) +
                           "\t" + Cell(t.value("result", Json())) + "\t" +
                           Cell(t.value("source_rows", Json())) + "\t" +
                           Cell(t.value("target_rows", Json())) + "\t" +
                           Cell(t.value("seconds", Json())) + "\t" + Cell(t.value("note", Json())) +
                           "\n";
        if (left_out > 0 || text.size() + line.size() > max_bytes_per_key) {
          left_out++;
          continue;
        }
        text += line;
      }
      if (left_out > 0) {
        text += "# " + std::to_string(left_out) +
                " more tables not listed (a ConfigMap holds at most 1 MiB); the summary is in "
                "status.engine\n";
      }
      data[file] = text;
    }
    Json meta = {{"name", VerificationConfigMapName(name, index)},
                 {"namespace", resource["metadata"]["namespace"]},
                 {"labels",
                  {{kUpgradeLabel, name}, {"app.kubernetes.io/managed-by", "pgshift-operator"}}},
                 {"annotations", {{"pgshift.dev/database", dbname}}},
                 {"ownerReferences", Json::array({OwnerReference(resource)})}};
    out.push_back({{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"metadata", meta}, {"data", data}});
  }
  return out;
}

}  // namespace pgshift::op
