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

}  // namespace

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
  if (from == to) return true;
  // Abort is allowed from every phase before the traffic moved.
  if (to == Phase::kAborted) {
    return from != Phase::kRollbackReady && from != Phase::kCuttingOver && !IsTerminal(from);
  }
  if (to == Phase::kFailed) return !IsTerminal(from);
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

nlohmann::json MigrationState::ToJson() const {
  nlohmann::json dbs = nlohmann::json::array();
  for (const auto& d : databases) {
    dbs.push_back({{"name", d.name},
                   {"index", d.index},
                   {"target_created", d.target_created},
                   {"schema_copied", d.schema_copied},
                   {"ddl_mark", d.ddl_mark},
                   {"tables", d.tables}});
  }
  nlohmann::json cuts = nlohmann::json::array();
  for (const auto& c : cutovers) {
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& [k, v] : c.steps_ms) steps.push_back({{"step", k}, {"ms", v}});
    cuts.push_back({{"direction", c.direction},
                    {"started_at", c.started_at},
                    {"succeeded", c.succeeded},
                    {"pause_ms", c.pause_ms},
                    {"failed_step", c.failed_step},
                    {"error", c.error},
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
           {{"router", o.router},
            {"router_admin", o.router_admin},
            {"router_config", o.router_config},
            {"cutover", o.cutover},
            {"max_lag_bytes", o.max_lag_bytes},
            {"max_pause_ms", o.max_pause_ms},
            {"databases", o.databases},
            {"tables_without_pk_full", o.tables_without_pk_full},
            {"verify", o.verify},
            {"rollback_replication", o.rollback_replication},
            {"report_file", o.report_file},
            {"cutover_attempts", o.cutover_attempts}}},
          {"databases", dbs},
          {"phase_times", times},
          {"cutovers", cuts},
          {"cutover_in_flight", cutover_in_flight},
          {"notes", notes},
          {"verification", verification},
          {"last_error", last_error},
          {"created_at", created_at},
          {"updated_at", updated_at}};
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
    s.options.router = o.value("router", "pgbouncer");
    s.options.router_admin = o.value("router_admin", "");
    s.options.router_config = o.value("router_config", "");
    s.options.cutover = o.value("cutover", "auto");
    s.options.max_lag_bytes = o.value("max_lag_bytes", int64_t{16 << 20});
    s.options.max_pause_ms = o.value("max_pause_ms", 2000);
    s.options.databases = o.value("databases", std::vector<std::string>{});
    s.options.tables_without_pk_full = o.value("tables_without_pk_full", false);
    s.options.verify = o.value("verify", "checksum");
    s.options.rollback_replication = o.value("rollback_replication", true);
    s.options.report_file = o.value("report_file", "");
    s.options.cutover_attempts = o.value("cutover_attempts", 5);
    for (const auto& d : j.at("databases")) {
      DatabaseState db;
      db.name = d.at("name").get<std::string>();
      db.index = d.at("index").get<int>();
      db.target_created = d.value("target_created", false);
      db.schema_copied = d.value("schema_copied", false);
      db.ddl_mark = d.value("ddl_mark", int64_t{0});
      db.tables = d.value("tables", std::vector<std::string>{});
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
      a.pause_ms = c.value("pause_ms", 0.0);
      a.failed_step = c.value("failed_step", "");
      a.error = c.value("error", "");
      for (const auto& st : c.contains("steps") ? c["steps"] : kEmptyArray) {
        a.steps_ms.emplace_back(st.value("step", ""), st.value("ms", 0.0));
      }
      s.cutovers.push_back(a);
    }
    s.cutover_in_flight = j.value("cutover_in_flight", "");
    s.notes = j.value("notes", std::vector<std::string>{});
    if (j.contains("verification")) s.verification = j["verification"];
    s.last_error = j.value("last_error", "");
    s.created_at = j.value("created_at", "");
    s.updated_at = j.value("updated_at", "");
    return s;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("corrupt state file: ") + e.what());
  }
}

bool StateExists(const std::string& dir) { return PathExists(dir + "/state.json"); }

Status SaveState(const std::string& dir, MigrationState* state) {
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  state->updated_at = NowUtc();
  return WriteFileAtomic(dir + "/state.json", state->ToJson().dump(2) + "\n", 0600);
}

Result<MigrationState> LoadState(const std::string& dir) {
  auto content = ReadFile(dir + "/state.json");
  if (!content.ok()) {
    return Status::NotFound("no migration state in " + dir +
                            " (start one with `pgshift upgrade --state " + dir + " ...`)");
  }
  auto j = nlohmann::json::parse(*content, nullptr, false);
  if (j.is_discarded()) return Status::Internal("state file " + dir + "/state.json is not JSON");
  return MigrationState::FromJson(j);
}

}  // namespace pgshift::engine
