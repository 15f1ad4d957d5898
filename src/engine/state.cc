#include "engine/state.h"

#include <array>

#include "common/clock.h"
#include "common/files.h"

namespace pgshift::engine {

namespace {

constexpr std::array<std::pair<Phase, const char*>, 14> kPhaseNames = {{
    {Phase::kPending, "Pending"},
    {Phase::kPreflight, "Preflight"},
    {Phase::kProvisioning, "Provisioning"},
    {Phase::kRoles, "Roles"},
    {Phase::kSchema, "Schema"},
    {Phase::kInitialCopy, "InitialCopy"},
    {Phase::kCatchingUp, "CatchingUp"},
    {Phase::kReadyForCutover, "ReadyForCutover"},
    {Phase::kCuttingOver, "CuttingOver"},
    {Phase::kRollbackReady, "RollbackReady"},
    {Phase::kCompleted, "Completed"},
    {Phase::kFailed, "Failed"},
    {Phase::kRolledBack, "RolledBack"},
    {Phase::kAborted, "Aborted"},
}};

template <typename E, size_t N>
using NameTable = std::array<std::pair<E, const char*>, N>;

constexpr NameTable<RouterKind, 4> kRouterNames = {{
    {RouterKind::kPgBouncer, "pgbouncer"},
    {RouterKind::kNginx, "nginx"},
    {RouterKind::kManual, "manual"},
    {RouterKind::kKubernetesService, "kubernetes-service"},
}};
constexpr NameTable<CutoverMode, 2> kCutoverModeNames = {{
    {CutoverMode::kAuto, "auto"},
    {CutoverMode::kManual, "manual"},
}};
constexpr NameTable<OnDifference, 2> kOnDifferenceNames = {{
    {OnDifference::kRollback, "rollback"},
    {OnDifference::kStop, "stop"},
}};
constexpr NameTable<TablesWithoutPk, 2> kTablesWithoutPkNames = {{
    {TablesWithoutPk::kRefuse, "refuse"},
    {TablesWithoutPk::kFull, "full"},
}};
constexpr NameTable<CopyMethod, 2> kCopyMethodNames = {{
    {CopyMethod::kSnapshot, "snapshot"},
    {CopyMethod::kNative, "native"},
}};

template <typename E, size_t N>
std::string NameOf(const NameTable<E, N>& table, E value) {
  for (const auto& [v, name] : table) {
    if (v == value) return name;
  }
  return "unknown";
}

template <typename E, size_t N>
Result<E> Parse(const NameTable<E, N>& table, const std::string& name, const char* what) {
  std::string all;
  for (const auto& [v, n] : table) {
    if (name == n) return v;
    all += std::string(all.empty() ? "" : ", ") + n;
  }
  return Status::InvalidArgument("unknown " + std::string(what) + " '" + name + "' (want " + all +
                                 ")");
}

}  // namespace

std::string RouterKindName(RouterKind k) { return NameOf(kRouterNames, k); }
Result<RouterKind> ParseRouterKind(const std::string& name) {
  return Parse(kRouterNames, name, "router");
}
std::string CutoverModeName(CutoverMode m) { return NameOf(kCutoverModeNames, m); }
Result<CutoverMode> ParseCutoverMode(const std::string& name) {
  return Parse(kCutoverModeNames, name, "cutover mode");
}
std::string TablesWithoutPkName(TablesWithoutPk t) { return NameOf(kTablesWithoutPkNames, t); }
Result<TablesWithoutPk> ParseTablesWithoutPk(const std::string& name) {
  return Parse(kTablesWithoutPkNames, name, "tables-without-pk choice");
}
std::string CopyMethodName(CopyMethod m) { return NameOf(kCopyMethodNames, m); }
Result<CopyMethod> ParseCopyMethod(const std::string& name) {
  return Parse(kCopyMethodNames, name, "copy method");
}

std::string OnDifferenceName(OnDifference d) { return NameOf(kOnDifferenceNames, d); }
Result<OnDifference> ParseOnDifference(const std::string& name) {
  return Parse(kOnDifferenceNames, name, "on-difference choice");
}

std::string PhaseName(Phase p) {
  for (const auto& [phase, name] : kPhaseNames) {
    if (phase == p) return name;
  }
  return "Unknown";
}

Result<Phase> ParsePhase(const std::string& name) {
  for (const auto& [phase, n] : kPhaseNames) {
    if (name == n) return phase;
  }
  return Status::InvalidArgument("unknown phase '" + name + "'");
}

bool IsTerminal(Phase p) {
  return p == Phase::kCompleted || p == Phase::kFailed || p == Phase::kRolledBack ||
         p == Phase::kAborted;
}

bool TransitionAllowed(Phase from, Phase to) {
  // Staying is not a transition: a step that "moves" to where it is hides a bug.
  if (from == to) return false;
  // Abort is allowed from every phase before the traffic moved, and from Failed (cleanup).
  if (to == Phase::kAborted) {
    return from == Phase::kFailed ||
           (from != Phase::kRollbackReady && from != Phase::kCuttingOver && !IsTerminal(from));
  }
  // Failed: the migration cannot go on (its replication lost changes); only before cutover.
  if (to == Phase::kFailed) return from >= Phase::kInitialCopy && from <= Phase::kReadyForCutover;
  switch (from) {
    case Phase::kPending: return to == Phase::kPreflight;
    case Phase::kPreflight: return to == Phase::kProvisioning || to == Phase::kPending;
    case Phase::kProvisioning: return to == Phase::kRoles;
    case Phase::kRoles: return to == Phase::kSchema;
    case Phase::kSchema: return to == Phase::kInitialCopy;
    case Phase::kInitialCopy: return to == Phase::kCatchingUp;
    case Phase::kCatchingUp: return to == Phase::kReadyForCutover;
    case Phase::kReadyForCutover: return to == Phase::kCuttingOver || to == Phase::kCatchingUp;
    case Phase::kCuttingOver: return to == Phase::kRollbackReady || to == Phase::kReadyForCutover;
    // Rollback runs the cutover protocol backwards; finish ends reverse replication.
    case Phase::kRollbackReady: return to == Phase::kRolledBack || to == Phase::kCompleted;
    case Phase::kRolledBack: return to == Phase::kCompleted;
    default: return false;
  }
}

std::string MigrationState::PublicationName(const DatabaseState& db) const {
  return Prefix() + "_" + std::to_string(db.index);
}
std::string MigrationState::SubscriptionName(const DatabaseState& db) const {
  return Prefix() + "_" + std::to_string(db.index);
}
std::string MigrationState::ReverseName(const DatabaseState& db) const {
  return Prefix() + "_" + std::to_string(db.index) + "_rev";
}

void MigrationState::Enter(Phase p) {
  std::string now = NowUtc();
  auto prev = phase_times.find(PhaseName(phase));
  if (prev != phase_times.end() && prev->second.finished_at.empty() && phase != p) {
    prev->second.finished_at = now;
  }
  phase = p;
  PhaseTimes& t = phase_times[PhaseName(p)];
  if (t.started_at.empty() || !t.finished_at.empty()) t = PhaseTimes{now, ""};
  if (IsTerminal(p)) t.finished_at = now;
}

nlohmann::json MigrationState::ToJson(bool with_reports) const {
  nlohmann::json dbs = nlohmann::json::array();
  for (const auto& d : databases) {
    dbs.push_back({{"name", d.name},
                   {"index", d.index},
                   {"target_created", d.target_created},
                   {"schema_copied", d.schema_copied},
                   {"not_valid_applied", d.not_valid_applied},
                   {"ddl_mark", d.ddl_mark},
                   {"ddl_carry", d.ddl_carry},
                   {"ddl_carried", d.ddl_carried},
                   {"lo_horizon", d.lo_horizon},
                   {"lo_reverse_horizon", d.lo_reverse_horizon},
                   {"tables", d.tables},
                   {"copy_done", d.copy_done},
                   {"post_data_done", d.post_data_done},
                   {"analyzed", d.analyzed},
                   {"analyzed_tables", d.analyzed_tables},
                   {"analyze_ms", d.analyze_ms},
                   {"statistics_copied", d.statistics_copied},
                   {"statistics_copy_ms", d.statistics_copy_ms}});
  }
  nlohmann::json cuts = nlohmann::json::array();
  for (const auto& c : cutovers) {
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& [k, v] : c.steps_ms) steps.push_back({{"step", k}, {"ms", v}});
    cuts.push_back({{"direction", c.direction},
                    {"started_at", c.started_at},
                    {"succeeded", c.succeeded},
                    {"recovered", c.recovered},
                    {"pause_ms", c.pause_ms},
                    {"failed_step", c.failed_step},
                    {"error", c.error},
                    {"notes", c.notes},
                    {"steps", steps}});
  }
  nlohmann::json times = nlohmann::json::object();
  for (const auto& [k, v] : phase_times) {
    times[k] = {{"started_at", v.started_at}, {"finished_at", v.finished_at}};
  }
  const MigrationOptions& o = options;
  return {{"version", version},
          {"id", id},
          {"phase", PhaseName(phase)},
          {"source_dsn", source_dsn},
          {"target_dsn", target_dsn},
          {"source_major", source_major},
          {"target_major", target_major},
          {"options",
           {{"router", RouterKindName(o.router)},
            {"router_admin", o.router_admin},
            {"router_config", o.router_config},
            {"cutover", CutoverModeName(o.cutover)},
            {"max_lag_bytes", o.max_lag_bytes},
            {"max_pause_ms", o.max_pause_ms},
            {"databases", o.databases},
            {"tables_without_pk_full", o.tables_without_pk == TablesWithoutPk::kFull},
            {"verify", VerifyLevelName(o.verify)},
            {"on_difference", OnDifferenceName(o.on_difference)},
            {"rollback_replication", o.rollback_replication},
            {"report_file", o.report_file},
            {"cutover_attempts", o.cutover_attempts},
            {"copy", CopyMethodName(o.copy)},
            {"copy_jobs", o.copy_jobs},
            {"copy_rate", o.copy_rate},
            {"max_retained_wal", o.max_retained_wal}}},
          {"databases", dbs},
          {"phase_times", times},
          {"cutovers", cuts},
          {"cutover_in_flight", cutover_in_flight},
          {"cutover_step",
           {{"row", cutover_journal.row},
            {"name", cutover_journal.row_name},
            {"undoing", cutover_journal.undoing}}},
          {"notes", notes},
          {"verification", with_reports ? verification : nlohmann::json(nullptr)},
          {"switch_point_verification",
           with_reports ? switch_point_verification : nlohmann::json(nullptr)},
          {"last_error", last_error},
          {"created_at", created_at},
          {"updated_at", updated_at}};
}

std::string MigrationState::ReportsFingerprint() const {
  std::string out;
  for (const nlohmann::json* r : {&verification, &switch_point_verification}) {
    if (r->is_object()) {
      // Every field but the per-table list, and the list's length: a report run again has
      // another duration at least.
      for (const auto& [k, v] : r->items()) {
        if (k == "tables") {
          out += "tables:" + std::to_string(v.size()) + ";";
        } else {
          out += k + "=" + v.dump() + ";";
        }
      }
    } else {
      out += r->dump();
    }
    out += "|";
  }
  return out;
}

Result<MigrationState> MigrationState::FromJson(const nlohmann::json& j) {
  try {
    MigrationState s;
    s.version = j.at("version").get<int>();
    if (s.version != 1) {
      return Status::FailedPrecondition("state file version " + std::to_string(s.version) +
                                        " is newer than this pgshift understands");
    }
    s.id = j.at("id").get<std::string>();
    PGSHIFT_ASSIGN_OR_RETURN(s.phase, ParsePhase(j.at("phase").get<std::string>()));
    s.source_dsn = j.at("source_dsn").get<std::string>();
    s.target_dsn = j.at("target_dsn").get<std::string>();
    s.source_major = j.value("source_major", 0);
    s.target_major = j.value("target_major", 0);
    const auto& o = j.at("options");
    const MigrationOptions defaults;
    MigrationOptions& so = s.options;
    PGSHIFT_ASSIGN_OR_RETURN(
        so.router, ParseRouterKind(o.value("router", RouterKindName(defaults.router))));
    so.router_admin = o.value("router_admin", "");
    so.router_config = o.value("router_config", "");
    PGSHIFT_ASSIGN_OR_RETURN(
        so.cutover, ParseCutoverMode(o.value("cutover", CutoverModeName(defaults.cutover))));
    so.max_lag_bytes = o.value("max_lag_bytes", defaults.max_lag_bytes);
    so.max_pause_ms = o.value("max_pause_ms", defaults.max_pause_ms);
    so.databases = o.value("databases", std::vector<std::string>{});
    so.tables_without_pk = o.value("tables_without_pk_full", false) ? TablesWithoutPk::kFull
                                                                    : TablesWithoutPk::kRefuse;
    PGSHIFT_ASSIGN_OR_RETURN(
        so.verify, ParseVerifyLevel(o.value("verify", VerifyLevelName(defaults.verify))));
    PGSHIFT_ASSIGN_OR_RETURN(
        so.on_difference,
        ParseOnDifference(o.value("on_difference", OnDifferenceName(defaults.on_difference))));
    so.rollback_replication = o.value("rollback_replication", defaults.rollback_replication);
    so.report_file = o.value("report_file", "");
    so.cutover_attempts = o.value("cutover_attempts", defaults.cutover_attempts);
    // A state written before pgshift had its own copy started with the native one.
    PGSHIFT_ASSIGN_OR_RETURN(so.copy, ParseCopyMethod(o.value("copy", "native")));
    so.copy_jobs = o.value("copy_jobs", defaults.copy_jobs);
    so.copy_rate = o.value("copy_rate", defaults.copy_rate);
    so.max_retained_wal = o.value("max_retained_wal", defaults.max_retained_wal);
    for (const auto& d : j.at("databases")) {
      DatabaseState db;
      db.name = d.at("name").get<std::string>();
      db.index = d.at("index").get<int>();
      db.target_created = d.value("target_created", false);
      db.schema_copied = d.value("schema_copied", false);
      db.not_valid_applied = d.value("not_valid_applied", false);
      db.ddl_mark = d.value("ddl_mark", int64_t{0});
      db.ddl_carry = d.value("ddl_carry", false);
      db.ddl_carried = d.value("ddl_carried", std::vector<int64_t>{});
      db.lo_horizon = d.value("lo_horizon", "");
      db.lo_reverse_horizon = d.value("lo_reverse_horizon", "");
      db.tables = d.value("tables", std::vector<std::string>{});
      db.copy_done = d.value("copy_done", false);
      db.post_data_done = d.value("post_data_done", false);
      db.analyzed = d.value("analyzed", false);
      db.analyzed_tables = d.value("analyzed_tables", 0);
      db.analyze_ms = d.value("analyze_ms", 0.0);
      db.statistics_copied = d.value("statistics_copied", -1);
      db.statistics_copy_ms = d.value("statistics_copy_ms", 0.0);
      s.databases.push_back(db);
    }
    static const nlohmann::json kEmptyObject = nlohmann::json::object();
    static const nlohmann::json kEmptyArray = nlohmann::json::array();
    auto member = [&j](const char* key, const nlohmann::json& fallback) -> const nlohmann::json& {
      return j.contains(key) && !j[key].is_null() ? j[key] : fallback;
    };
    for (const auto& [k, v] : member("phase_times", kEmptyObject).items()) {
      s.phase_times[k] = PhaseTimes{v.value("started_at", ""), v.value("finished_at", "")};
    }
    for (const auto& c : member("cutovers", kEmptyArray)) {
      CutoverAttempt a;
      a.direction = c.value("direction", "");
      a.started_at = c.value("started_at", "");
      a.succeeded = c.value("succeeded", false);
      a.recovered = c.value("recovered", false);
      a.pause_ms = c.value("pause_ms", 0.0);
      a.failed_step = c.value("failed_step", "");
      a.error = c.value("error", "");
      for (const auto& st : c.contains("steps") ? c["steps"] : kEmptyArray) {
        a.steps_ms.emplace_back(st.value("step", ""), st.value("ms", 0.0));
      }
      for (const auto& n : c.contains("notes") ? c["notes"] : kEmptyArray) {
        if (n.is_string()) a.notes.push_back(n.get<std::string>());
      }
      s.cutovers.push_back(a);
    }
    s.cutover_in_flight = j.value("cutover_in_flight", "");
    if (const auto& step = member("cutover_step", kEmptyObject); step.is_object()) {
      s.cutover_journal.row = step.value("row", -1);
      s.cutover_journal.row_name = step.value("name", "");
      s.cutover_journal.undoing = step.value("undoing", false);
    }
    if (!s.cutover_in_flight.empty() && s.cutover_in_flight != "forward" &&
        s.cutover_in_flight != "rollback") {
      return Status::Internal("corrupt state file: cutover_in_flight is '" + s.cutover_in_flight +
                              "'");
    }
    s.notes = j.value("notes", std::vector<std::string>{});
    if (j.contains("verification")) s.verification = j["verification"];
    if (j.contains("switch_point_verification")) {
      s.switch_point_verification = j["switch_point_verification"];
    }
    s.last_error = j.value("last_error", "");
    s.created_at = j.value("created_at", "");
    s.updated_at = j.value("updated_at", "");
    return s;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("corrupt state file: ") + e.what());
  }
}

bool StateExists(const std::string& dir) { return PathExists(dir + "/state.json"); }

Status SaveState(const std::string& dir, MigrationState* state, bool sync) {
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  state->updated_at = NowUtc();
  std::string fingerprint = state->ReportsFingerprint();
  if (fingerprint != state->reports_saved) {
    const nlohmann::json reports = {{"verification", state->verification},
                                    {"switch_point_verification", state->switch_point_verification}};
    PGSHIFT_RETURN_IF_ERROR(
        WriteFileAtomic(dir + "/" + kReportsFile, reports.dump() + "\n", 0600, sync));
    state->reports_saved = std::move(fingerprint);
  }
  return WriteFileAtomic(dir + "/state.json", state->ToJson(false).dump(2) + "\n", 0600, sync);
}

Result<MigrationState> LoadState(const std::string& dir) {
  if (!StateExists(dir)) {
    return Status::NotFound("no migration state in " + dir +
                            " (start one with `pgshift upgrade --state " + dir + " ...`)");
  }
  // From here on the file exists: whatever is wrong with it is an error, never "no migration"
  // (that would start a new one against half-migrated servers).
  auto content = ReadFile(dir + "/state.json");
  if (!content.ok()) return content.status().WithContext("reading the migration state");
  auto j = nlohmann::json::parse(*content, nullptr, false);
  if (j.is_discarded()) {
    return Status::Internal("state file " + dir + "/state.json is not JSON; restore it (pgshift "
                            "never starts a new migration over a damaged one)");
  }
  const std::string reports_path = dir + "/" + kReportsFile;
  if (PathExists(reports_path)) {
    auto text = ReadFile(reports_path);
    if (!text.ok()) return text.status().WithContext("reading the verification reports");
    auto r = nlohmann::json::parse(*text, nullptr, false);
    if (r.is_discarded() || !r.is_object()) {
      return Status::Internal(reports_path + " is not JSON; restore it, or remove it (only the "
                              "verification reports are in it)");
    }
    for (const char* key : {"verification", "switch_point_verification"}) {
      if (r.contains(key)) j[key] = r[key];
    }
  }
  auto s = MigrationState::FromJson(j);
  if (!s.ok()) return s.status().WithContext("state file " + dir + "/state.json");
  if (PathExists(reports_path)) s->reports_saved = s->ReportsFingerprint();
  return s;
}

}  // namespace pgshift::engine
