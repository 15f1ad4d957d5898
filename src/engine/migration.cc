#include "engine/migration.h"

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/inspect.h"
#include "engine/preflight.h"
#include "engine/verify.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

namespace {

using ConnPtr = std::unique_ptr<pg::Connection>;

// pgshift's own bookkeeping in every migrated source (and target) database. The event
// trigger records DDL by anyone but pgshift itself; the marker row carries the cutover's
// "everything before this is applied" token through replication.
constexpr const char* kSourceSetupSql = R"SQL(
CREATE SCHEMA IF NOT EXISTS _pgshift;
CREATE TABLE IF NOT EXISTS _pgshift.ddl_log (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  tag text,
  command text,
  role text);
CREATE TABLE IF NOT EXISTS _pgshift.marker (
  id int PRIMARY KEY,
  token text NOT NULL,
  at timestamptz NOT NULL DEFAULT now());
INSERT INTO _pgshift.marker VALUES (1, 'init') ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION _pgshift.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF current_setting('application_name', true) = 'pgshift' THEN
    RETURN;
  END IF;
  INSERT INTO _pgshift.ddl_log (tag, command, role) VALUES (tg_tag, current_query(), session_user);
END
$f$;
)SQL";

constexpr const char* kTargetSetupSql = R"SQL(
CREATE SCHEMA IF NOT EXISTS _pgshift;
CREATE TABLE IF NOT EXISTS _pgshift.marker (
  id int PRIMARY KEY,
  token text NOT NULL,
  at timestamptz NOT NULL DEFAULT now());
)SQL";

Result<ConnPtr> Connect(const std::string& dsn, const std::string& db, const std::string& side) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string d, pg::DsnForDatabase(dsn, db));
  auto c = pg::Connection::Connect(d, 10, "pgshift");
  if (!c.ok()) return c.status().WithContext(side + " database " + db);
  // pgshift's sessions write even where it fenced the database against everyone else, and
  // their commits are flushed at once whatever the server's default.
  Status s = (*c)->Exec("SET default_transaction_read_only = off; SET synchronous_commit = on; "
                        "SET statement_timeout = 0; SET lock_timeout = '10s'");
  if (!s.ok()) return s.WithContext(side + " database " + db);
  return std::move(*c);
}

// The conninfo a subscription on one server uses to reach the other: the DSN pgshift was
// given, for database `db`, with the password pgshift authenticated with (the server has no
// access to our pgpass file).
Result<std::string> SubscriptionConnInfo(const std::string& dsn, const std::string& db,
                                         const pg::Connection& authenticated) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo info, pg::ConnInfo::Parse(dsn));
  info.Set("dbname", db);
  info.Erase("passfile");
  info.Erase("application_name");
  std::string pw = authenticated.Password();
  if (!pw.empty()) info.Set("password", pw);
  return info.ToString();
}

Result<Endpoint> EndpointOf(const std::string& dsn) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo info, pg::ConnInfo::Parse(dsn));
  long long port = 5432;
  if (!ParseInt64(info.port(), &port)) {
    return Status::InvalidArgument("bad port in " + info.Redacted());
  }
  return Endpoint{info.Get("hostaddr", info.host()), static_cast<int>(port)};
}

std::string Ms(double ms) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.1f", ms);
  return buf;
}

bool Exists(pg::Connection& c, const std::string& sql, const std::string& name) {
  auto r = c.Query(sql, {name});
  return r.ok() && r->rows() > 0;
}

constexpr const char* kHasPublication = "SELECT 1 FROM pg_publication WHERE pubname = $1";
constexpr const char* kHasSubscription =
    "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())";
constexpr const char* kHasSlot = "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1";

// Drops a replication slot if it exists and no one uses it.
Status DropSlotIfIdle(pg::Connection& c, const std::string& slot) {
  auto r = c.Query(
      "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
      "WHERE slot_name = $1 AND NOT active",
      {slot});
  return r.ok() ? Status::Ok() : r.status();
}

// DROP SUBSCRIPTION, also when the other side is gone: detach the slot first then.
Status DropSubscription(pg::Connection& c, const std::string& name) {
  if (!Exists(c, kHasSubscription, name)) return Status::Ok();
  std::string q = c.QuoteIdent(name);
  (void)c.Exec("ALTER SUBSCRIPTION " + q + " DISABLE");
  Status s = c.Exec("DROP SUBSCRIPTION " + q);
  if (s.ok()) return s;
  LogWarn("dropping subscription " + name + " without its remote slot: " + s.message());
  PGSHIFT_RETURN_IF_ERROR(c.Exec("ALTER SUBSCRIPTION " + q + " SET (slot_name = NONE)"));
  return c.Exec("DROP SUBSCRIPTION " + q);
}

// The fence: new sessions of `db` (any role) start read-only. pgshift's own sessions set it
// off for themselves (see Connect), and logical replication's apply workers are not held.
Status SetFence(pg::Connection& c, const std::string& db, bool on) {
  return c.Exec("ALTER DATABASE " + c.QuoteIdent(db) +
                (on ? " SET default_transaction_read_only = on" : " RESET default_transaction_read_only"));
}

// Ends every client session on the databases of `db_array` (a text[] literal) but pgshift's;
// returns how many there were.
Result<int64_t> EndClientSessionsCounted(pg::Connection& c, const std::string& db_array) {
  PGSHIFT_ASSIGN_OR_RETURN(
      std::string n,
      c.QueryValue("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                   "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid() "
                   "AND backend_type = 'client backend' "
                   "AND coalesce(application_name, '') <> 'pgshift'",
                   {db_array}));
  return std::stoll(n);
}

Status EndClientSessions(pg::Connection& c, const std::string& db_array) {
  return EndClientSessionsCounted(c, db_array).status();
}

// After a switch by a router that cannot hold clients (nginx, a Kubernetes Service), new
// connections reach the new side only once every proxy applied the change (kube-proxy on
// every node, asynchronously); clients that reconnect before that land on the old, fenced
// side and would stay there, failing every write. Their sessions are ended until none has
// appeared for `quiet_ms` (at most `max_ms`), so they reconnect until they reach the new side.
void DrainOldSide(pg::Connection& old_side, const std::string& db_array, int64_t quiet_ms,
                  int64_t max_ms) {
  const int64_t start = MonotonicMillis();
  int64_t quiet_since = start;
  while (MonotonicMillis() - start < max_ms && MonotonicMillis() - quiet_since < quiet_ms) {
    auto n = EndClientSessionsCounted(old_side, db_array);
    if (!n.ok()) return;
    if (*n > 0) quiet_since = MonotonicMillis();
    SleepMillis(50);
  }
}

Status AdvanceSlotToNow(pg::Connection& c, const std::string& slot) {
  return c.Query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", {slot}).status();
}

// The reverse subscription on the source, reading the slot made on the target during the
// cutover: no copy, no new slot.
Status CreateReverseSubscription(pg::Connection& source, const pg::Connection& target,
                                 const std::string& target_dsn, const std::string& db,
                                 const std::string& name) {
  if (Exists(source, kHasSubscription, name)) return Status::Ok();
  PGSHIFT_ASSIGN_OR_RETURN(std::string conninfo, SubscriptionConnInfo(target_dsn, db, target));
  return source.Exec("CREATE SUBSCRIPTION " + source.QuoteIdent(name) + " CONNECTION " +
                     source.QuoteLiteral(conninfo) + " PUBLICATION " + source.QuoteIdent(name) +
                     " WITH (copy_data = false, create_slot = false, slot_name = " +
                     source.QuoteLiteral(name) + ")");
}

struct SyncCounts {
  int ready = 0;
  int total = 0;
};

Result<SyncCounts> SubscriptionSync(pg::Connection& target, const std::string& sub) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      target.Query("SELECT count(*) FILTER (WHERE sr.srsubstate = 'r'), count(*) "
                   "FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid "
                   "WHERE s.subname = $1",
                   {sub}));
  return SyncCounts{std::stoi(r.Get(0, 0)), std::stoi(r.Get(0, 1))};
}

Result<std::vector<std::pair<std::string, std::string>>> TableSyncStates(pg::Connection& target,
                                                                         const std::string& sub) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      target.Query("SELECT format('%I.%I', n.nspname, c.relname), sr.srsubstate "
                   "FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid "
                   "JOIN pg_class c ON c.oid = sr.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE s.subname = $1 ORDER BY 1",
                   {sub}));
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 0; i < r.rows(); ++i) {
    static const std::map<std::string, std::string> kStates = {
        {"i", "initializing"}, {"d", "copying"}, {"f", "copied"},
        {"s", "synchronized"}, {"r", "ready"}};
    auto it = kStates.find(r.Get(i, 1));
    out.emplace_back(r.Get(i, 0), it == kStates.end() ? r.Get(i, 1) : it->second);
  }
  return out;
}

// Copies every sequence's position from `from` to `to` in one round trip each way.
Status SyncSequences(pg::Connection& from, pg::Connection& to) {
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      from.Query("SELECT coalesce(array_agg(schemaname ORDER BY 1, 2)::text, '{}'), "
                 "coalesce(array_agg(sequencename ORDER BY 1, 2)::text, '{}'), "
                 "coalesce(array_agg(last_value ORDER BY 1, 2)::text, '{}') "
                 "FROM pg_sequences WHERE last_value IS NOT NULL "
                 "AND schemaname NOT IN ('_pgshift')"));
  if (r.Get(0, 0) == "{}") return Status::Ok();
  auto s = to.Query(
      "SELECT count(setval(format('%I.%I', s, n)::regclass, v, true)) "
      "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(s, n, v)",
      {r.Get(0, 0), r.Get(0, 1), r.Get(0, 2)});
  return s.ok() ? Status::Ok() : s.status().WithContext("setting sequences");
}

// Test hook for crash tests: when $PGSHIFT_FAULT_KILL_AT names this point (a phase pgshift just
// entered, or a step such as "after-subscription"), the process kills itself with SIGKILL, as
// kill -9 would, right after the state was saved.
void FaultPointForTest(const std::string& point) {
  const char* at = std::getenv("PGSHIFT_FAULT_KILL_AT");
  if (at != nullptr && point == at) {
    fprintf(stderr, "pgshift: fault injection: killed at %s\n", point.c_str());
    fflush(stderr);
    ::raise(SIGKILL);
  }
}

}  // namespace

Result<int64_t> ForwardLagBytes(const MigrationState& s, const DatabaseState& db) {
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(s.source_dsn, db.name, "source"));
  PGSHIFT_ASSIGN_OR_RETURN(
      pg::QueryResult r,
      src->Query("SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint "
                 "FROM pg_replication_slots WHERE slot_name = $1",
                 {s.SubscriptionName(db)}));
  if (r.rows() == 0) return int64_t{-1};
  return std::max<int64_t>(0, std::stoll(r.Get(0, 0)));
}

Result<std::unique_ptr<Migration>> Migration::Open(const std::string& state_dir,
                                                   const ToolPaths& tools) {
  PGSHIFT_ASSIGN_OR_RETURN(MigrationState s, LoadState(state_dir));
  return std::unique_ptr<Migration>(new Migration(state_dir, std::move(s), tools));
}

Result<std::unique_ptr<Migration>> Migration::OpenOrCreate(const MigrationRequest& req,
                                                           const ToolPaths& tools) {
  if (StateExists(req.state_dir)) {
    PGSHIFT_ASSIGN_OR_RETURN(auto m, Open(req.state_dir, tools));
    if ((!req.source_dsn.empty() && req.source_dsn != m->state_.source_dsn) ||
        (!req.target_dsn.empty() && req.target_dsn != m->state_.target_dsn)) {
      return Status::InvalidArgument(
          "the state folder " + req.state_dir + " holds migration " + m->state_.id +
          " between other servers; use another --state folder, or omit --source/--target to "
          "resume it");
    }
    return m;
  }
  if (req.source_dsn.empty() || req.target_dsn.empty()) {
    return Status::InvalidArgument("--source and --target are required to start a migration");
  }
  for (const auto& dsn : {req.source_dsn, req.target_dsn}) {
    auto parsed = pg::ConnInfo::Parse(dsn);
    if (!parsed.ok()) return parsed.status();
  }
  MigrationState s;
  s.id = RandomHex(8);
  s.source_dsn = req.source_dsn;
  s.target_dsn = req.target_dsn;
  s.options = req.options;
  s.created_at = NowUtc();
  s.Enter(Phase::kPending);
  auto m = std::unique_ptr<Migration>(new Migration(req.state_dir, std::move(s), tools));
  return m;
}

Result<std::unique_ptr<Migration>> Migration::FromState(std::optional<MigrationState> state,
                                                        const MigrationRequest& req,
                                                        const ToolPaths& tools, StateSink sink) {
  for (const auto& dsn : {req.source_dsn, req.target_dsn}) {
    auto parsed = pg::ConnInfo::Parse(dsn);
    if (!parsed.ok()) return parsed.status();
  }
  MigrationState s;
  if (state.has_value()) {
    s = std::move(*state);
  } else {
    s.id = RandomHex(8);
    s.options = req.options;
    s.created_at = NowUtc();
    s.Enter(Phase::kPending);
  }
  s.source_dsn = req.source_dsn;
  s.target_dsn = req.target_dsn;
  auto m = std::unique_ptr<Migration>(new Migration(req.state_dir, std::move(s), tools));
  m->sink_ = std::move(sink);
  return m;
}

Status Migration::Save() {
  if (sink_) {
    state_.updated_at = NowUtc();
    return sink_(state_);
  }
  return SaveState(dir_, &state_);
}

Status Migration::Wait(int64_t ms) {
  const int64_t until = MonotonicMillis() + ms;
  while (true) {
    if (stop_ && stop_()) return Status::Aborted("stopped on request");
    int64_t left = until - MonotonicMillis();
    if (left <= 0) return Status::Ok();
    SleepMillis(std::min<int64_t>(left, 100));
  }
}

Status Migration::Move(Phase to) {
  if (!TransitionAllowed(state_.phase, to)) {
    return Status::Internal("illegal transition " + PhaseName(state_.phase) + " -> " +
                            PhaseName(to));
  }
  Progress("phase " + PhaseName(state_.phase) + " -> " + PhaseName(to));
  state_.Enter(to);
  PGSHIFT_RETURN_IF_ERROR(Save());
  const int64_t now = UnixMillis();
  stats_.Update([&](StatsSnapshot& st) {
    st.phase = PhaseName(to);
    st.phase_entered_unix_ms = now;
    // StepCatchUp checked every precondition just before this move; samples refine it.
    st.ready_for_cutover = to == Phase::kReadyForCutover;
  });
  history_.AppendOrLog(HistoryPhase(now, PhaseName(to)));
  FaultPointForTest(PhaseName(to));
  return Status::Ok();
}

void Migration::Progress(const std::string& line) {
  if (progress_) {
    progress_(line);
  } else {
    LogInfo(line, {{"migration", state_.id}});
  }
}

void Migration::InitStats() {
  history_ = HistoryWriter(dir_.empty() ? "" : dir_ + "/" + kHistoryFile);
  stats_.Update([&](StatsSnapshot& st) {
    st.migration_id = state_.id;
    st.phase = PhaseName(state_.phase);
    auto t = state_.phase_times.find(st.phase);
    st.phase_entered_unix_ms =
        t == state_.phase_times.end() ? 0 : ParseUtcMillis(t->second.started_at).value_or(0);
    st.ready_for_cutover = state_.phase == Phase::kReadyForCutover;
    for (const auto& a : state_.cutovers) {
      st.cutover_attempts++;
      if (!a.succeeded) st.cutover_failures++;
      if (a.succeeded) st.last_pause_ms = a.pause_ms;
    }
    const auto& v = state_.verification;
    if (v.is_object() && v.contains("tables_verified") && v.contains("mismatches")) {
      st.verify_tables_total = st.verify_tables_done = v["tables_verified"].get<int64_t>();
      st.verify_mismatches = v["mismatches"].get<int64_t>();
    }
  });
}

Status Migration::SampleStats() {
  last_sample_ms_ = MonotonicMillis();
  if (IsTerminal(state_.phase)) {
    sampler_.Close();
    return Status::Ok();
  }
  Status s = sampler_.Sample(state_, &stats_);
  StatsSnapshot snap = stats_.Snapshot(MonotonicMillis());
  if (state_.phase == Phase::kReadyForCutover) {
    // Still ready only while the lag stays under the threshold.
    double lag = 0;
    bool known = !snap.databases.empty();
    for (const auto& [name, db] : snap.databases) {
      auto v = snap.Fresh(db.lag_bytes);
      if (!v) known = false;
      lag += v.value_or(0);
    }
    bool ready = known && lag <= static_cast<double>(state_.options.max_lag_bytes);
    stats_.Update([&](StatsSnapshot& st) { st.ready_for_cutover = ready; });
  }
  // Only whole samples go to the history: every database answered.
  if (s.ok() && state_.phase >= Phase::kInitialCopy && state_.phase <= Phase::kCuttingOver) {
    history_.AppendOrLog(HistorySample(UnixMillis(), snap));
  }
  return s;
}

void Migration::MaybeSampleStats() {
  if (last_sample_ms_ >= 0 && MonotonicMillis() - last_sample_ms_ < 1000) return;
  Status s = SampleStats();
  if (!s.ok()) LogDebug("live figures: " + s.message(), {{"migration", state_.id}});
}

void Migration::RecordError(const Status& s) {
  if (s.ok()) return;
  std::string kind(StatusCodeName(s.code()));
  std::replace(kind.begin(), kind.end(), ' ', '_');
  stats_.Update([&](StatsSnapshot& st) { st.errors[kind]++; });
  history_.AppendOrLog(HistoryError(UnixMillis(), s.message()));
}

void Migration::RecordCutover(const CutoverAttempt& a) {
  stats_.Update([&](StatsSnapshot& st) {
    if (!a.succeeded) st.cutover_failures++;
    if (a.succeeded) st.last_pause_ms = a.pause_ms;
  });
  history_.AppendOrLog(HistoryCutover(UnixMillis(), a));
}

Status Migration::Run(Router* router) {
  if (IsTerminal(state_.phase)) {
    return Status::FailedPrecondition("migration " + state_.id + " already ended (" +
                                      PhaseName(state_.phase) + ")");
  }
  if (router != nullptr) {
    Status s = router->Check().WithContext("router");
    if (!s.ok()) {
      RecordError(s);
      return s;
    }
  }
  while (true) {
    Status s;
    const Phase step = state_.phase;
    switch (state_.phase) {
      case Phase::kPending:
      case Phase::kPreflight: s = StepPreflight(); break;
      case Phase::kProvisioning: s = StepProvision(); break;
      case Phase::kRoles: s = StepRoles(); break;
      case Phase::kSchema: s = StepSchema(); break;
      case Phase::kInitialCopy: s = StepInitialCopy(); break;
      case Phase::kCatchingUp: s = StepCatchUp(); break;
      case Phase::kReadyForCutover:
        if (state_.options.cutover == "manual" || router == nullptr) {
          Progress("ready for cutover: run `pgshift cutover --state " + dir_ + "`");
          return WriteReport();
        }
        s = Cutover(router);
        if (s.ok()) return WriteReport();
        break;
      case Phase::kCuttingOver: s = RecoverCutover(router); break;
      default: return WriteReport();
    }
    if (!s.ok()) {
      if (s.code() == StatusCode::kAborted && stop_ && stop_()) return s;  // resumable as is
      if (step != Phase::kReadyForCutover) RecordError(s);  // Cutover() records its own
      if (state_.phase == Phase::kPending || state_.phase == Phase::kPreflight) {
        // Nothing exists on either server before Provisioning: forget the attempt, so that
        // a corrected command (another DSN, a fixed server) starts afresh with this folder.
        if (!sink_) (void)RemoveAll(dir_ + "/state.json");
        if (!dir_.empty()) (void)RemoveAll(dir_ + "/" + kHistoryFile);
        return s;
      }
      state_.last_error = s.message();
      (void)Save();
      return s;
    }
  }
}

Status Migration::StepPreflight() {
  if (state_.phase == Phase::kPending) {
    PGSHIFT_RETURN_IF_ERROR(Save());
    PGSHIFT_RETURN_IF_ERROR(Move(Phase::kPreflight));
  }
  PreflightOptions po;
  po.databases = state_.options.databases;
  po.tables_without_pk_full = state_.options.tables_without_pk_full;
  po.pg_dump_path = tools_.pg_dump;
  po.rollback_replication = state_.options.rollback_replication;
  po.migration_id = state_.id;
  po.allow_own_leftovers = true;
  auto rep = RunPreflight(state_.source_dsn, state_.target_dsn, po);
  if (!rep.ok()) return rep.status().WithContext("preflight");
  if (rep->HasErrors()) {
    Progress("preflight found problems:\n" + rep->RenderTable());
    return Status::FailedPrecondition("preflight failed; nothing was changed on either server");
  }
  state_.source_major = rep->source_major;
  state_.target_major = rep->target_major;
  state_.databases.clear();
  int index = 0;
  for (const auto& name : rep->databases) {
    DatabaseState db;
    db.name = name;
    db.index = index++;
    state_.databases.push_back(db);
  }
  for (const auto& r : rep->results) {
    if (r.severity == Severity::kWarning) state_.notes.push_back(r.subject + ": " + r.message);
  }
  Progress("preflight passed: PostgreSQL " + std::to_string(rep->source_major) + " -> " +
           std::to_string(rep->target_major) + " (" + rep->direction + "), databases: " +
           Join(rep->databases, ", "));
  return Move(Phase::kProvisioning);
}

// Target databases, and pgshift's DDL log and marker on the source.
Status Migration::StepProvision() {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo tinfo, pg::ConnInfo::Parse(state_.target_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo sinfo, pg::ConnInfo::Parse(state_.source_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr tadmin, Connect(state_.target_dsn, tinfo.dbname(), "target"));
  PGSHIFT_ASSIGN_OR_RETURN(ConnPtr sadmin, Connect(state_.source_dsn, sinfo.dbname(), "source"));
  for (auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(bool exists, DatabaseExists(*tadmin, db.name));
    if (!exists) {
      PGSHIFT_ASSIGN_OR_RETURN(
          pg::QueryResult r,
          sadmin->Query("SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                        "pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
                        {db.name}));
      std::string q = tadmin->QuoteIdent(db.name);
      std::string create = "CREATE DATABASE " + q + " TEMPLATE template0 ENCODING " +
                           tadmin->QuoteLiteral(r.Get(0, 0));
      Status s = tadmin->Exec(create + " LC_COLLATE " + tadmin->QuoteLiteral(r.Get(0, 1)) +
                              " LC_CTYPE " + tadmin->QuoteLiteral(r.Get(0, 2)));
      if (!s.ok() && tadmin->last_sqlstate() != "42P04") {
        LogWarn("creating " + db.name + " with the source's locale failed (" + s.message() +
                "); using the target's default locale");
        s = tadmin->Exec(create);
      }
      if (!s.ok() && tadmin->last_sqlstate() != "42P04") {
        return s.WithContext("creating database " + db.name + " on the target");
      }
      db.target_created = true;
      PGSHIFT_RETURN_IF_ERROR(Save());
      Progress("created database " + db.name + " on the target");
    }
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_RETURN_IF_ERROR(src->Exec(kSourceSetupSql).WithContext("source " + db.name));
    std::string trig = state_.EventTriggerName();
    if (!Exists(*src, "SELECT 1 FROM pg_event_trigger WHERE evtname = $1", trig)) {
      PGSHIFT_RETURN_IF_ERROR(src->Exec("CREATE EVENT TRIGGER " + src->QuoteIdent(trig) +
                                        " ON ddl_command_end EXECUTE FUNCTION _pgshift.log_ddl()")
                                  .WithContext("source " + db.name + ": DDL event trigger"));
    }
  }
  return Move(Phase::kRoles);
}

Status Migration::StepRoles() {
  PGSHIFT_ASSIGN_OR_RETURN(auto notes, CopyRoles(state_.source_dsn, state_.target_dsn, tools_));
  for (const auto& n : notes) {
    Progress("roles: " + n);
    state_.notes.push_back("roles: " + n);
  }
  return Move(Phase::kSchema);
}

Status Migration::StepSchema() {
  for (auto& db : state_.databases) {
    if (db.schema_copied) continue;
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    // A crash after the schema was applied but before the state said so: the target already
    // holds it (the apply is one transaction, so it is all or nothing).
    PGSHIFT_ASSIGN_OR_RETURN(auto target_tables, ListTables(*dst));
    bool already = !target_tables.empty();
    // DDL logged up to here is part of the dump; anything later blocks cutover.
    PGSHIFT_ASSIGN_OR_RETURN(std::string mark,
                             src->QueryValue("SELECT coalesce(max(id), 0) FROM _pgshift.ddl_log"));
    if (!already) {
      PGSHIFT_ASSIGN_OR_RETURN(std::string sdsn, pg::DsnForDatabase(state_.source_dsn, db.name));
      PGSHIFT_ASSIGN_OR_RETURN(std::string tdsn, pg::DsnForDatabase(state_.target_dsn, db.name));
      Status s = CopySchema(sdsn, tdsn, tools_);
      if (!s.ok()) return s.WithContext("schema of database " + db.name);
    }
    PGSHIFT_RETURN_IF_ERROR(dst->Exec(kTargetSetupSql).WithContext("target " + db.name));
    db.ddl_mark = std::stoll(mark);
    db.schema_copied = true;
    PGSHIFT_RETURN_IF_ERROR(Save());
    Progress("schema copied: " + db.name);
  }
  return Move(Phase::kInitialCopy);
}

Status Migration::StepInitialCopy() {
  for (auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    std::string pub = state_.PublicationName(db);
    std::string sub = state_.SubscriptionName(db);
    if (!Exists(*src, kHasPublication, pub)) {
      PGSHIFT_ASSIGN_OR_RETURN(auto tables, ListTables(*src));
      std::vector<std::string> names;
      for (const auto& t : tables) {
        if (t.partitioned || t.unlogged) continue;
        std::string q = src->QuoteIdent(t.schema) + "." + src->QuoteIdent(t.name);
        if (!t.replica_identity_usable) {
          if (!state_.options.tables_without_pk_full) {
            return Status::FailedPrecondition("table " + t.QualifiedName() +
                                              " has no primary key or replica identity");
          }
          // Both sides: the target needs it too for reverse replication.
          PGSHIFT_RETURN_IF_ERROR(src->Exec("ALTER TABLE " + q + " REPLICA IDENTITY FULL"));
          PGSHIFT_RETURN_IF_ERROR(dst->Exec("ALTER TABLE " + q + " REPLICA IDENTITY FULL"));
          state_.notes.push_back(db.name + ": " + t.QualifiedName() + " set to REPLICA IDENTITY FULL");
        }
        names.push_back(q);
      }
      names.push_back("_pgshift.marker");
      db.tables = names;
      PGSHIFT_RETURN_IF_ERROR(Save());
      PGSHIFT_RETURN_IF_ERROR(src->Exec("CREATE PUBLICATION " + src->QuoteIdent(pub) +
                                        " FOR TABLE " + Join(names, ", "))
                                  .WithContext("source " + db.name + ": publication"));
    }
    if (!Exists(*dst, kHasSubscription, sub)) {
      // A slot without its subscription is what a crash between the two leaves behind.
      if (Exists(*src, kHasSlot, sub)) PGSHIFT_RETURN_IF_ERROR(DropSlotIfIdle(*src, sub));
      PGSHIFT_ASSIGN_OR_RETURN(std::string conninfo,
                               SubscriptionConnInfo(state_.source_dsn, db.name, *src));
      // The marker row is replicated by the copy like everything else.
      Status s = dst->Exec("CREATE SUBSCRIPTION " + dst->QuoteIdent(sub) + " CONNECTION " +
                           dst->QuoteLiteral(conninfo) + " PUBLICATION " + dst->QuoteIdent(pub) +
                           " WITH (copy_data = true, slot_name = " + dst->QuoteLiteral(sub) + ")");
      if (!s.ok()) return s.WithContext("target " + db.name + ": subscription");
      FaultPointForTest("after-subscription");
      Progress("replication started: " + db.name + " (" + std::to_string(db.tables.size()) +
               " tables)");
    }
  }
  // Wait for every table's initial copy.
  int64_t last_report = 0;
  while (true) {
    int ready = 0, total = 0;
    for (const auto& db : state_.databases) {
      PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
      PGSHIFT_ASSIGN_OR_RETURN(SyncCounts c, SubscriptionSync(*dst, state_.SubscriptionName(db)));
      ready += c.ready;
      total += c.total;
    }
    if (total > 0 && ready == total) break;
    MaybeSampleStats();
    if (MonotonicMillis() - last_report > 2000) {
      Progress("initial copy: " + std::to_string(ready) + "/" + std::to_string(total) +
               " tables ready");
      last_report = MonotonicMillis();
    }
    PGSHIFT_RETURN_IF_ERROR(Wait(250));
  }
  Progress("initial copy done: every table is replicating");
  // Whatever the throttle: the history and the metrics show the finished copy.
  (void)SampleStats();
  return Move(Phase::kCatchingUp);
}

Status Migration::CheckDdlLog() {
  std::vector<std::string> found;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult r,
        src->Query("SELECT at::text, tag, role, left(command, 500) FROM _pgshift.ddl_log "
                   "WHERE id > $1 ORDER BY id LIMIT 20",
                   {std::to_string(db.ddl_mark)}));
    for (int i = 0; i < r.rows(); ++i) {
      found.push_back(db.name + ": " + r.Get(i, 1) + " by " + r.Get(i, 2) + " at " + r.Get(i, 0) +
                      ": " + r.Get(i, 3));
    }
  }
  if (found.empty()) return Status::Ok();
  // A lower bound (at most 20 rows are read per database); samples count them all.
  stats_.Update([&](StatsSnapshot& st) {
    st.ddl_events = std::max(st.ddl_events, static_cast<int64_t>(found.size()));
  });
  return Status::FailedPrecondition(
      "DDL ran on the source after the schema copy, so the target's schema may differ; cutover "
      "is blocked:\n  " + Join(found, "\n  ") +
      "\napply the same change to the target, then remove these rows from _pgshift.ddl_log on "
      "the source, or abort and start again");
}

Status Migration::WaitForMarker(bool forward, int64_t deadline_ms) {
  const std::string& from_dsn = forward ? state_.source_dsn : state_.target_dsn;
  const std::string& to_dsn = forward ? state_.target_dsn : state_.source_dsn;
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr from, Connect(from_dsn, db.name, forward ? "source" : "target"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr to, Connect(to_dsn, db.name, forward ? "target" : "source"));
    std::string token = RandomHex(16);
    PGSHIFT_RETURN_IF_ERROR(
        from->Query("UPDATE _pgshift.marker SET token = $1, at = now() WHERE id = 1", {token}).status());
    while (true) {
      auto v = to->QueryValue("SELECT token FROM _pgshift.marker WHERE id = 1");
      if (v.ok() && *v == token) break;
      MaybeSampleStats();
      if (MonotonicMillis() > deadline_ms) {
        return Status::DeadlineExceeded("replication of " + db.name + " did not catch up in time");
      }
      SleepMillis(20);
    }
  }
  return Status::Ok();
}

Status Migration::Verify() {
  auto level = ParseVerifyLevel(state_.options.verify);
  if (!level.ok()) return level.status();
  if (*level == VerifyLevel::kNone) return Status::Ok();
  VerifyOptions vo;
  vo.level = *level;
  for (const auto& db : state_.databases) vo.databases.push_back(db.name);
  vo.max_rounds = 4;
  vo.settle = [this]() { return WaitForMarker(true, MonotonicMillis() + 120000); };
  int64_t last_history = 0;
  vo.on_table = [this, &last_history](const TableVerification& t) {
    if (!t.match) Progress("verify: " + t.database + "." + t.schema + "." + t.table + " differs: " + t.note);
    StatsSnapshot st;
    stats_.Update([&](StatsSnapshot& s) {
      s.verify_tables_done++;
      if (!t.match) s.verify_mismatches++;
      s.verify_tables_total = std::max(s.verify_tables_total, s.verify_tables_done);
      st = s;
    });
    if (MonotonicMillis() - last_history >= 1000) {
      last_history = MonotonicMillis();
      history_.AppendOrLog(HistoryVerify(UnixMillis(), st.verify_tables_done,
                                         st.verify_tables_total, st.verify_mismatches));
    }
    MaybeSampleStats();
  };
  Progress("verifying (" + state_.options.verify + ")");
  auto to_verify = sampler_.CountVerifiedTables(state_);
  stats_.Update([&](StatsSnapshot& s) {
    s.verify_tables_total = to_verify.ok() ? *to_verify : 0;
    s.verify_tables_done = s.verify_mismatches = 0;
  });
  PGSHIFT_RETURN_IF_ERROR(WaitForMarker(true, MonotonicMillis() + 120000));
  PGSHIFT_ASSIGN_OR_RETURN(VerifyReport rep, VerifyDatabases(state_.source_dsn, state_.target_dsn, vo));
  state_.verification = rep.ToJson();
  const auto verified = static_cast<int64_t>(rep.tables.size());
  stats_.Update([&](StatsSnapshot& s) {
    s.verify_tables_total = s.verify_tables_done = verified;
    s.verify_mismatches = rep.mismatches();
  });
  history_.AppendOrLog(HistoryVerify(UnixMillis(), verified, verified, rep.mismatches()));
  PGSHIFT_RETURN_IF_ERROR(Save());
  if (!rep.clean()) {
    return Status::FailedPrecondition("verification found differences; cutover is blocked:\n" +
                                      rep.Render());
  }
  Progress("verification clean: " + std::to_string(rep.tables.size()) + " tables");
  return Status::Ok();
}

Status Migration::StepCatchUp() {
  // Lag under the threshold.
  while (true) {
    int64_t total = 0;
    for (const auto& db : state_.databases) {
      PGSHIFT_ASSIGN_OR_RETURN(int64_t lag, ForwardLagBytes(state_, db));
      if (lag < 0) {
        return Status::FailedPrecondition("replication slot " + state_.SubscriptionName(db) +
                                          " is missing on the source");
      }
      total += lag;
    }
    MaybeSampleStats();
    if (total <= state_.options.max_lag_bytes) break;
    Progress("catching up: lag " + std::to_string(total) + " bytes");
    PGSHIFT_RETURN_IF_ERROR(Wait(1000));
  }
  PGSHIFT_RETURN_IF_ERROR(CheckDdlLog());
  PGSHIFT_RETURN_IF_ERROR(Verify());
  // Materialized views come over empty with the schema; fill them on the target.
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_ASSIGN_OR_RETURN(
        pg::QueryResult mv,
        dst->Query("SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews "
                   "WHERE schemaname NOT IN ('pg_catalog', 'information_schema', '_pgshift')"));
    for (int i = 0; i < mv.rows(); ++i) {
      PGSHIFT_RETURN_IF_ERROR(dst->Exec("REFRESH MATERIALIZED VIEW " + mv.Get(i, 0)));
    }
    // The reverse publication exists before cutover so that the cutover only makes a slot.
    if (state_.options.rollback_replication) {
      std::string rev = state_.ReverseName(db);
      if (!Exists(*dst, kHasPublication, rev)) {
        PGSHIFT_RETURN_IF_ERROR(dst->Exec("CREATE PUBLICATION " + dst->QuoteIdent(rev) +
                                          " FOR TABLE " + Join(db.tables, ", "))
                                    .WithContext("target " + db.name + ": reverse publication"));
      }
    }
  }
  // The lag as the cutover's preconditions left it, whatever the throttle.
  (void)SampleStats();
  return Move(Phase::kReadyForCutover);
}

Status Migration::Cutover(Router* router) {
  if (state_.phase != Phase::kReadyForCutover) {
    return Status::FailedPrecondition("cutover needs phase ReadyForCutover; migration " +
                                      state_.id + " is in " + PhaseName(state_.phase));
  }
  if (router == nullptr) return Status::InvalidArgument("cutover needs a router");
  PGSHIFT_RETURN_IF_ERROR(router->Check().WithContext("router"));
  Status last;
  for (int attempt = 1; attempt <= std::max(1, state_.options.cutover_attempts); ++attempt) {
    PGSHIFT_RETURN_IF_ERROR(CheckDdlLog());
    last = SwitchOver(router, true);
    if (last.ok()) return Status::Ok();
    if (last.code() == StatusCode::kFailedPrecondition) {
      RecordError(last);
      return last;
    }
    Progress("cutover attempt " + std::to_string(attempt) + " undone: " + last.message() +
             "; traffic stays on the source");
    SleepMillis(1000 * attempt);
  }
  RecordError(last);
  return last;
}

Status Migration::Rollback(Router* router) {
  if (state_.phase != Phase::kRollbackReady) {
    return Status::FailedPrecondition("rollback needs phase RollbackReady; migration " +
                                      state_.id + " is in " + PhaseName(state_.phase));
  }
  if (!state_.options.rollback_replication) {
    return Status::FailedPrecondition(
        "this migration ran with --rollback-replication off: writes made on the target since "
        "cutover were not replicated back, so a rollback would lose them");
  }
  if (router == nullptr) return Status::InvalidArgument("rollback needs a router");
  PGSHIFT_RETURN_IF_ERROR(router->Check().WithContext("router"));
  Status last;
  for (int attempt = 1; attempt <= std::max(1, state_.options.cutover_attempts); ++attempt) {
    last = SwitchOver(router, false);
    if (last.ok()) return WriteReport();
    Progress("rollback attempt " + std::to_string(attempt) + " undone: " + last.message());
    SleepMillis(1000 * attempt);
  }
  RecordError(last);
  return last;
}

// The cutover protocol (docs/engine.md). forward: source -> target; else the rollback.
Status Migration::SwitchOver(Router* router, bool forward) {
  const std::string& old_dsn = forward ? state_.source_dsn : state_.target_dsn;
  const std::string& new_dsn = forward ? state_.target_dsn : state_.source_dsn;
  const char* old_side = forward ? "source" : "target";
  const char* new_side = forward ? "target" : "source";
  PGSHIFT_ASSIGN_OR_RETURN(Endpoint new_endpoint, EndpointOf(new_dsn));

  // Everything the pause needs is connected and prepared before it starts.
  struct DbConns {
    const DatabaseState* db;
    ConnPtr old_side, new_side;
    std::string token;
  };
  std::vector<DbConns> conns;
  for (const auto& db : state_.databases) {
    DbConns c{&db, nullptr, nullptr, RandomHex(16)};
    PGSHIFT_ASSIGN_OR_RETURN(c.old_side, Connect(old_dsn, db.name, old_side));
    PGSHIFT_ASSIGN_OR_RETURN(c.new_side, Connect(new_dsn, db.name, new_side));
    if (forward && state_.options.rollback_replication) {
      // The reverse slot is made now, outside the pause (making one waits for a consistent
      // point, tens of ms); inside the pause it is only moved past what the forward
      // replication wrote, so it starts exactly at the first write clients make on the target.
      std::string rev = state_.ReverseName(db);
      PGSHIFT_RETURN_IF_ERROR(DropSlotIfIdle(*c.new_side, rev));
      PGSHIFT_RETURN_IF_ERROR(
          c.new_side->Query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", {rev})
              .status()
              .WithContext("target " + db.name + ": reverse replication slot"));
    }
    conns.push_back(std::move(c));
  }
  std::vector<std::string> dbnames;
  for (const auto& db : state_.databases) dbnames.push_back(db.name);
  std::string db_array = pg::TextArrayLiteral(dbnames);

  CutoverAttempt attempt;
  attempt.direction = forward ? "forward" : "rollback";
  attempt.started_at = NowUtc();
  state_.cutover_in_flight = attempt.direction;
  stats_.Update([](StatsSnapshot& st) { st.cutover_attempts++; });
  bool switched = false;
  if (forward) {
    PGSHIFT_RETURN_IF_ERROR(Move(Phase::kCuttingOver));
  } else {
    PGSHIFT_RETURN_IF_ERROR(Save());
  }

  if (forward && state_.options.rollback_replication) {
    // Move the reverse slots up to now before pausing, so that inside the pause they only
    // decode the last few milliseconds of WAL.
    for (auto& c : conns) {
      PGSHIFT_RETURN_IF_ERROR(AdvanceSlotToNow(*c.new_side, state_.ReverseName(*c.db)));
    }
  }

  const int64_t budget = state_.options.max_pause_ms;
  const int64_t t0 = MonotonicMicros();
  const int64_t deadline = MonotonicMillis() + budget;
  int64_t step_start = t0;
  auto step_done = [&](const char* name) {
    int64_t now = MonotonicMicros();
    attempt.steps_ms.emplace_back(name, (now - step_start) / 1000.0);
    step_start = now;
  };
  bool paused = false, fenced = false, forward_disabled = false;
  std::string failed_step;

  auto run = [&]() -> Status {
    failed_step = "pause";
    PGSHIFT_RETURN_IF_ERROR(router->Pause(static_cast<int>(budget)));
    paused = true;
    step_done("pause");

    // Fence: new sessions of the old side start read-only; sessions already there (direct
    // clients, pooled server connections) are ended. pgshift's own sessions stay writable.
    failed_step = "fence";
    for (auto& c : conns) PGSHIFT_RETURN_IF_ERROR(SetFence(*c.old_side, c.db->name, true));
    fenced = true;
    if (forward) FaultPointForTest("cutover-fenced");
    PGSHIFT_RETURN_IF_ERROR(EndClientSessions(*conns[0].old_side, db_array));
    step_done("fence");

    // Marker: committed with synchronous_commit = on (set on our sessions), so its WAL is
    // flushed and sent at once; once the new side shows it, every earlier write is there.
    failed_step = "catch-up";
    for (auto& c : conns) {
      PGSHIFT_RETURN_IF_ERROR(
          c.old_side->Query("UPDATE _pgshift.marker SET token = $1, at = now() WHERE id = 1",
                            {c.token})
              .status());
    }
    for (auto& c : conns) {
      while (true) {
        auto v = c.new_side->QueryValue("SELECT token FROM _pgshift.marker WHERE id = 1");
        if (!v.ok()) return v.status();
        if (*v == c.token) break;
        if (MonotonicMillis() > deadline) {
          return Status::DeadlineExceeded("the " + std::string(new_side) +
                                          " did not apply the marker within --max-pause");
        }
        SleepMillis(1);
      }
    }
    step_done("catch-up");

    failed_step = "sequences";
    for (auto& c : conns) PGSHIFT_RETURN_IF_ERROR(SyncSequences(*c.old_side, *c.new_side));
    step_done("sequences");

    // Stop the old direction, then make the slot for the new one before any write lands:
    // nothing is lost for a later rollback and nothing echoes back and forth.
    failed_step = "replication";
    for (auto& c : conns) {
      if (forward) {
        PGSHIFT_RETURN_IF_ERROR(c.new_side->Exec("ALTER SUBSCRIPTION " +
                                                 c.new_side->QuoteIdent(state_.SubscriptionName(*c.db)) +
                                                 " DISABLE"));
      } else {
        // Rolling back: the reverse subscription lives on the source, the new side.
        PGSHIFT_RETURN_IF_ERROR(c.new_side->Exec("ALTER SUBSCRIPTION " +
                                                 c.new_side->QuoteIdent(state_.ReverseName(*c.db)) +
                                                 " DISABLE"));
      }
    }
    forward_disabled = true;
    if (forward && state_.options.rollback_replication) {
      for (auto& c : conns) {
        PGSHIFT_RETURN_IF_ERROR(AdvanceSlotToNow(*c.new_side, state_.ReverseName(*c.db)));
      }
    }
    if (!forward) {
      // The source takes writes again.
      for (auto& c : conns) PGSHIFT_RETURN_IF_ERROR(SetFence(*c.new_side, c.db->name, false));
    }
    step_done("replication");
    if (MonotonicMillis() > deadline && !router->WaitsForPeople()) {
      return Status::DeadlineExceeded("cutover steps took longer than --max-pause");
    }

    failed_step = "switch";
    PGSHIFT_RETURN_IF_ERROR(router->SwitchTo(new_endpoint));
    switched = true;
    if (!router->HoldsTraffic()) {
      // A TCP router keeps the sessions it already proxies to the old side: once it reloaded,
      // end them so their clients reconnect, to the new side.
      SleepMillis(100);
      (void)EndClientSessions(*conns[0].old_side, db_array);
    }
    PGSHIFT_RETURN_IF_ERROR(router->Resume());
    paused = false;
    step_done("switch");
    return Status::Ok();
  };

  Status s = run();
  attempt.pause_ms = (MonotonicMicros() - t0) / 1000.0;
  if (!s.ok() && !switched) {
    // Undo in reverse order; traffic is never left paused.
    attempt.failed_step = failed_step;
    attempt.error = s.message();
    for (auto& c : conns) {
      if (forward) {
        if (state_.options.rollback_replication) (void)DropSlotIfIdle(*c.new_side, state_.ReverseName(*c.db));
        if (forward_disabled) {
          (void)c.new_side->Exec("ALTER SUBSCRIPTION " +
                                 c.new_side->QuoteIdent(state_.SubscriptionName(*c.db)) + " ENABLE");
        }
      } else if (forward_disabled) {
        // The source goes back to being a fenced replica of the target.
        (void)c.new_side->Exec("ALTER SUBSCRIPTION " +
                               c.new_side->QuoteIdent(state_.ReverseName(*c.db)) + " ENABLE");
        (void)SetFence(*c.new_side, c.db->name, true);
      }
      if (fenced) {
        (void)SetFence(*c.old_side, c.db->name, false);
      }
    }
    if (paused) (void)router->Resume();
    RecordCutover(attempt);
    state_.cutovers.push_back(attempt);
    state_.cutover_in_flight.clear();
    if (forward) {
      (void)Move(Phase::kReadyForCutover);
    } else {
      (void)Save();
    }
    return Status(s.code() == StatusCode::kFailedPrecondition ? StatusCode::kAborted : s.code(),
                  "step " + failed_step + ": " + s.message());
  }
  if (!s.ok()) {
    // The router already leads to the new side: finish forward rather than undo.
    LogWarn("cutover: after the switch: " + s.message());
    (void)router->Resume();
  }
  attempt.succeeded = true;
  RecordCutover(attempt);
  state_.cutovers.push_back(attempt);
  std::string steps;
  for (const auto& [k, v] : attempt.steps_ms) steps += " " + k + "=" + Ms(v);
  Progress(std::string(forward ? "cutover" : "rollback") + " done: clients held for " +
           Ms(attempt.pause_ms) + " ms (" + Trim(steps).data() + ")");

  if (forward && state_.options.rollback_replication) {
    // Reverse replication: the target's changes flow back to the source from the slot made
    // during the pause.
    for (auto& c : conns) {
      PGSHIFT_RETURN_IF_ERROR(CreateReverseSubscription(*c.old_side, *c.new_side, state_.target_dsn,
                                                        c.db->name, state_.ReverseName(*c.db)));
    }
  }
  state_.cutover_in_flight.clear();
  PGSHIFT_RETURN_IF_ERROR(Move(forward ? Phase::kRollbackReady : Phase::kRolledBack));
  // Saved as done first: the drain only helps clients along, and may take seconds.
  if (!router->HoldsTraffic() && !router->WaitsForPeople()) {
    DrainOldSide(*conns[0].old_side, db_array, /*quiet_ms=*/1500, /*max_ms=*/15000);
  }
  return Status::Ok();
}

// A restart found a cutover in flight: finish it when the router already switched, else undo.
Status Migration::RecoverCutover(Router* router) {
  if (router == nullptr) return Status::InvalidArgument("resuming a cutover needs the router");
  PGSHIFT_ASSIGN_OR_RETURN(Endpoint target, EndpointOf(state_.target_dsn));
  PGSHIFT_ASSIGN_OR_RETURN(Endpoint current, router->Current());
  if (current == target) {
    Progress("resuming a cutover that had switched the router: finishing it");
    for (const auto& db : state_.databases) {
      PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
      PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
      (void)SetFence(*src, db.name, true);
      (void)dst->Exec("ALTER SUBSCRIPTION " + dst->QuoteIdent(state_.SubscriptionName(db)) + " DISABLE");
      if (state_.options.rollback_replication) {
        std::string rev = state_.ReverseName(db);
        if (!Exists(*dst, kHasSlot, rev)) {
          PGSHIFT_RETURN_IF_ERROR(
              dst->Query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", {rev}).status());
          state_.notes.push_back(db.name + ": the reverse slot was made after the switch (crash "
                                           "recovery); writes before it are not replicated back");
        }
        PGSHIFT_RETURN_IF_ERROR(
            CreateReverseSubscription(*src, *dst, state_.target_dsn, db.name, rev));
      }
    }
    (void)router->Resume();
    state_.cutover_in_flight.clear();
    return Move(Phase::kRollbackReady);
  }
  Progress("resuming after a crash inside the cutover: undoing it (traffic stays on the source)");
  for (const auto& db : state_.databases) {
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr src, Connect(state_.source_dsn, db.name, "source"));
    PGSHIFT_ASSIGN_OR_RETURN(ConnPtr dst, Connect(state_.target_dsn, db.name, "target"));
    PGSHIFT_RETURN_IF_ERROR(dst->Exec("ALTER SUBSCRIPTION " +
                                      dst->QuoteIdent(state_.SubscriptionName(db)) + " ENABLE"));
    PGSHIFT_RETURN_IF_ERROR(DropSlotIfIdle(*dst, state_.ReverseName(db)));
    PGSHIFT_RETURN_IF_ERROR(SetFence(*src, db.name, false));
  }
  PGSHIFT_RETURN_IF_ERROR(router->Resume());
  state_.cutover_in_flight.clear();
  return Move(Phase::kReadyForCutover);
}

Status Migration::DropEverything(bool keep_source_fence) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo sinfo, pg::ConnInfo::Parse(state_.source_dsn));
  Status first;
  auto note = [&first](const Status& s) {
    if (!s.ok() && first.ok()) first = s;
  };
  for (const auto& db : state_.databases) {
    auto src = Connect(state_.source_dsn, db.name, "source");
    auto dst = Connect(state_.target_dsn, db.name, "target");
    if (src.ok()) {
      note(DropSubscription(**src, state_.ReverseName(db)));
    }
    if (dst.ok()) {
      note(DropSubscription(**dst, state_.SubscriptionName(db)));
      note((*dst)->Exec("DROP PUBLICATION IF EXISTS " + (*dst)->QuoteIdent(state_.ReverseName(db))));
      note(DropSlotIfIdle(**dst, state_.ReverseName(db)));
      note((*dst)->Exec("DROP SCHEMA IF EXISTS _pgshift CASCADE"));
    } else {
      note(dst.status());
    }
    if (src.ok()) {
      auto& s = **src;
      note(s.Exec("DROP PUBLICATION IF EXISTS " + s.QuoteIdent(state_.PublicationName(db))));
      note(DropSlotIfIdle(s, state_.SubscriptionName(db)));
      note(s.Exec("DROP EVENT TRIGGER IF EXISTS " + s.QuoteIdent(state_.EventTriggerName())));
      note(s.Exec("DROP SCHEMA IF EXISTS _pgshift CASCADE"));
      if (!keep_source_fence) {
        note(SetFence(s, db.name, false));
      }
    } else {
      note(src.status());
    }
  }
  return first;
}

Status Migration::Finish() {
  if (state_.phase != Phase::kRollbackReady && state_.phase != Phase::kRolledBack) {
    return Status::FailedPrecondition("finish needs phase RollbackReady or RolledBack; migration " +
                                      state_.id + " is in " + PhaseName(state_.phase) +
                                      (state_.phase < Phase::kCuttingOver ? " (use abort before cutover)" : ""));
  }
  bool rolled_back = state_.phase == Phase::kRolledBack;
  sampler_.Close();
  PGSHIFT_RETURN_IF_ERROR(DropEverything(/*keep_source_fence=*/!rolled_back));
  if (!rolled_back) {
    state_.notes.push_back("the source databases stay read-only (default_transaction_read_only) "
                           "so nothing writes to the old server by mistake; undo with ALTER "
                           "DATABASE ... RESET default_transaction_read_only");
  }
  PGSHIFT_RETURN_IF_ERROR(Move(Phase::kCompleted));
  return WriteReport();
}

Status Migration::Abort(Router* router) {
  if (state_.phase == Phase::kCuttingOver && router != nullptr) {
    PGSHIFT_RETURN_IF_ERROR(RecoverCutover(router));
  }
  if (state_.phase == Phase::kRollbackReady || state_.phase == Phase::kCuttingOver) {
    return Status::FailedPrecondition(
        "traffic already moved to the target: use `pgshift rollback` to return to the source, "
        "or `pgshift finish` to keep the target");
  }
  if (IsTerminal(state_.phase)) {
    return Status::FailedPrecondition("migration " + state_.id + " already ended (" +
                                      PhaseName(state_.phase) + ")");
  }
  sampler_.Close();
  PGSHIFT_RETURN_IF_ERROR(DropEverything(/*keep_source_fence=*/false));
  std::vector<std::string> kept;
  for (const auto& db : state_.databases) {
    if (db.schema_copied) kept.push_back(db.name);
  }
  if (!kept.empty()) {
    state_.notes.push_back("the target still holds the copied schema and data of: " +
                           Join(kept, ", ") + "; drop them before another migration");
  }
  PGSHIFT_RETURN_IF_ERROR(Move(Phase::kAborted));
  return WriteReport();
}

nlohmann::json Migration::StatusJson(bool live) {
  nlohmann::json j = state_.ToJson();
  // Status is for people and dashboards: no DSN carries a password there.
  for (const char* k : {"source_dsn", "target_dsn"}) j[k] = RedactSecrets(j[k].get<std::string>());
  j["options"]["router_admin"] = RedactSecrets(j["options"]["router_admin"].get<std::string>());
  if (!state_.cutovers.empty()) {
    for (auto it = state_.cutovers.rbegin(); it != state_.cutovers.rend(); ++it) {
      if (it->succeeded) {
        j["last_cutover_pause_ms"] = it->pause_ms;
        break;
      }
    }
  }
  if (!live) return j;
  nlohmann::json dbs = nlohmann::json::array();
  int64_t lag_total = 0;
  int ready = 0, total = 0;
  bool lag_known = true;
  for (const auto& db : state_.databases) {
    nlohmann::json d = {{"name", db.name}};
    auto dst = Connect(state_.target_dsn, db.name, "target");
    if (dst.ok() && state_.phase >= Phase::kInitialCopy) {
      auto tables = TableSyncStates(**dst, state_.SubscriptionName(db));
      if (tables.ok()) {
        nlohmann::json t = nlohmann::json::array();
        for (const auto& [name, st] : *tables) {
          t.push_back({{"table", name}, {"state", st}});
          total++;
          if (st == "ready") ready++;
        }
        d["tables"] = t;
      }
      auto secs = (*dst)->QueryValue(
          "SELECT coalesce(extract(epoch FROM now() - latest_end_time), 0)::float8 "
          "FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL",
          {state_.SubscriptionName(db)});
      if (secs.ok()) d["lag_seconds"] = std::stod(*secs);
    } else if (!dst.ok()) {
      d["error"] = dst.status().message();
    }
    if (state_.phase >= Phase::kInitialCopy && state_.phase <= Phase::kCuttingOver) {
      auto lag = ForwardLagBytes(state_, db);
      if (lag.ok() && *lag >= 0) {
        d["lag_bytes"] = *lag;
        lag_total += *lag;
      } else {
        lag_known = false;
        if (!lag.ok()) d["error"] = lag.status().message();
      }
    }
    dbs.push_back(d);
  }
  j["live"] = {{"databases", dbs}, {"tables_ready", ready}, {"tables_total", total}};
  if (lag_known && state_.phase >= Phase::kInitialCopy && state_.phase <= Phase::kCuttingOver) {
    j["live"]["lag_bytes"] = lag_total;
  }
  return j;
}

Status Migration::WriteReport() {
  if (state_.options.report_file.empty()) return Status::Ok();
  return WriteFileAtomic(state_.options.report_file, StatusJson(false).dump(2) + "\n", 0600);
}

}  // namespace pgshift::engine
