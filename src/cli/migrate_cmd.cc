// The migration commands: check, upgrade, status, cutover, rollback, finish, abort, verify.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/clock.h"
#include "common/dir_lock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/stop_signals.h"
#include "common/strings.h"
#include "engine/inspect.h"
#include "engine/lag_trend.h"
#include "engine/migration.h"
#include "engine/preflight.h"
#include "engine/switch_point.h"
#include "engine/verify.h"
#include "lab/paths.h"
#include "obs/metrics_server.h"
#include "pg/connection.h"
#include "routers/routers.h"

namespace pgshift::cli {

namespace {

// The options' words as typed; their defaults are the engine's (engine::MigrationOptions).
struct MigrateArgs {
  static inline const engine::MigrationOptions kDefaults{};
  std::string source, target, state_dir;
  std::string router = engine::RouterKindName(kDefaults.router), router_admin, router_config;
  std::string cutover = engine::CutoverModeName(kDefaults.cutover);
  int64_t max_lag = kDefaults.max_lag_bytes;
  int max_pause = kDefaults.max_pause_ms;
  std::string databases;
  std::string tables_without_pk = engine::TablesWithoutPkName(kDefaults.tables_without_pk);
  std::string verify = engine::VerifyLevelName(kDefaults.verify);
  std::string rollback_replication = kDefaults.rollback_replication ? "on" : "off";
  std::string on_difference = engine::OnDifferenceName(kDefaults.on_difference);
  std::string report;
  std::string copy = engine::CopyMethodName(kDefaults.copy);
  int jobs = kDefaults.copy_jobs;
  int64_t copy_rate = kDefaults.copy_rate;
  int64_t max_retained_wal = kDefaults.max_retained_wal;
  CLI::Option* max_retained_wal_option = nullptr;
  std::string level = "checksum";
  int verify_jobs = 4;
  std::string hash = "auto";
  bool json = false, watch = false, confirm = false, snapshot = false;
  std::string metrics_addr;  // --metrics-addr HOST:PORT
  std::string progress = "auto";
};

// The client tools, all from one folder: --pg-bin, else $PGSHIFT_PG_BIN, else setup's.
engine::ToolPaths Tools(const GlobalOptions& global) {
  if (!global.pg_bin.empty()) return engine::ToolPaths::InDir(AbsolutePath(global.pg_bin));
  return engine::ToolPaths::InDir(lab::Paths::Discover().ClientBinDir());
}

std::vector<std::string> DatabaseList(const std::string& csv) {
  std::vector<std::string> out;
  for (const auto& d : Split(csv, ',', true)) out.emplace_back(Trim(d));
  return out;
}

// Checks an option's word with the engine's parser: the names live in one place.
template <typename T>
CLI::Validator Word(Result<T> (*parse)(const std::string&)) {
  return CLI::Validator(
      [parse](std::string& v) {
        auto r = parse(v);
        return r.ok() ? std::string() : r.status().message();
      },
      "", "");
}

// The routers the CLI drives (kubernetes-service is the operator's).
Result<engine::RouterKind> ParseCliRouter(const std::string& v) {
  auto k = engine::ParseRouterKind(v);
  if (k.ok() && *k != engine::RouterKind::kKubernetesService) return k;
  return Status::InvalidArgument("unknown router '" + v + "' (want pgbouncer, nginx or manual)");
}

Result<bool> ParseOnOff(const std::string& v) {
  if (v == "on" || v == "off") return v == "on";
  return Status::InvalidArgument("want on or off, not '" + v + "'");
}

void AddMigrationOptions(CLI::App* c, MigrateArgs* a) {
  c->add_option("--router", a->router,
                "pgbouncer | nginx | manual (pgshift fences and waits for `cutover --confirm`)")
      ->check(Word(ParseCliRouter))
      ->capture_default_str();
  c->add_option("--router-admin", a->router_admin, "PgBouncer admin console DSN");
  c->add_option("--router-config", a->router_config,
                "the router's config file (pgbouncer.ini whose [databases] lead to the source, or nginx.conf)");
  c->add_option("--cutover", a->cutover, "auto | manual")
      ->check(Word(engine::ParseCutoverMode))
      ->capture_default_str();
  c->add_option("--max-lag", a->max_lag, "replication lag in bytes under which cutover may start")
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  c->add_option("--max-pause", a->max_pause, "longest time clients may be held, in ms")
      ->check(CLI::Range(10, 600000))
      ->capture_default_str();
  c->add_option("--databases", a->databases, "a,b (default: every non-template database)");
  c->add_option("--tables-without-pk", a->tables_without_pk, "full | refuse")
      ->check(Word(engine::ParseTablesWithoutPk))
      ->capture_default_str();
  c->add_option("--verify", a->verify, "none | count | checksum")
      ->check(Word(engine::ParseVerifyLevel))
      ->capture_default_str();
  c->add_option("--rollback-replication", a->rollback_replication, "on | off")
      ->check(Word(ParseOnOff))
      ->capture_default_str();
  c->add_option("--on-difference", a->on_difference,
                "rollback | stop: what to do when the exact comparison of both sides at the "
                "cutover's switch point (after clients moved) finds a difference: move them "
                "back at once (nothing is lost), or stop for a person to choose rollback or "
                "finish (always stop with --rollback-replication off)")
      ->check(Word(engine::ParseOnDifference))
      ->capture_default_str();
  c->add_option("--report", a->report, "write a JSON report of the run to FILE");
  c->add_option("--copy", a->copy,
                "snapshot (default): pgshift copies the rows itself, in parallel, under the "
                "replication slot's exported snapshot, then builds indexes and constraints; "
                "native: the subscription's copy_data, one table per sync worker, into indexed "
                "tables")
      ->check(Word(engine::ParseCopyMethod));
  c->add_option("--jobs", a->jobs,
                "sessions per side copying rows and building indexes at once (--copy snapshot; "
                "default: the target's cores)")
      ->check(CLI::Range(0, 256));
  c->add_option("--copy-rate", a->copy_rate,
                "most bytes per second the copy reads from the source, all jobs together, e.g. "
                "50MB (--copy snapshot; default 0: no limit)")
      ->transform(CLI::AsSizeValue(false));
  a->max_retained_wal_option =
      c->add_option("--max-retained-wal", a->max_retained_wal,
                    "most WAL the source may keep for one of pgshift's replication slots, e.g. "
                    "20GB: past it pgshift stops and says so, before the source's disk fills "
                    "(default 0: no limit; given again on a resume, it replaces the old one)")
          ->transform(CLI::AsSizeValue(false));
}

Result<engine::MigrationOptions> ToOptions(const MigrateArgs& a) {
  engine::MigrationOptions o;
  PGSHIFT_ASSIGN_OR_RETURN(o.router, ParseCliRouter(a.router));
  o.router_admin = a.router_admin;
  o.router_config = a.router_config;
  PGSHIFT_ASSIGN_OR_RETURN(o.cutover, engine::ParseCutoverMode(a.cutover));
  o.max_lag_bytes = a.max_lag;
  o.max_pause_ms = a.max_pause;
  o.databases = DatabaseList(a.databases);
  PGSHIFT_ASSIGN_OR_RETURN(o.tables_without_pk, engine::ParseTablesWithoutPk(a.tables_without_pk));
  PGSHIFT_ASSIGN_OR_RETURN(o.verify, engine::ParseVerifyLevel(a.verify));
  PGSHIFT_ASSIGN_OR_RETURN(o.rollback_replication, ParseOnOff(a.rollback_replication));
  PGSHIFT_ASSIGN_OR_RETURN(o.on_difference, engine::ParseOnDifference(a.on_difference));
  o.report_file = a.report;
  PGSHIFT_ASSIGN_OR_RETURN(o.copy, engine::ParseCopyMethod(a.copy));
  o.copy_jobs = a.jobs;
  o.copy_rate = a.copy_rate;
  o.max_retained_wal = a.max_retained_wal;
  return o;
}

Result<std::unique_ptr<engine::Router>> RouterFor(const engine::MigrationState& s,
                                                  const std::string& dir) {
  routers::RouterConfig rc;
  rc.kind = s.options.router;
  rc.admin = s.options.router_admin;
  rc.config = s.options.router_config;
  rc.state_dir = dir;
  return routers::MakeRouter(rc);
}

// `check --router ...`: the router's own Check(), as a preflight finding.
engine::CheckResult CheckRouter(const engine::MigrationOptions& o, const std::string& state_dir) {
  engine::CheckResult r;
  r.id = "router";
  r.subject = engine::RouterKindName(o.router);
  routers::RouterConfig rc;
  rc.kind = o.router;
  rc.admin = o.router_admin;
  rc.config = o.router_config;
  rc.state_dir = state_dir.empty() ? "." : state_dir;
  auto router = routers::MakeRouter(rc);
  Status s = router.ok() ? (*router)->Check() : router.status();
  if (s.ok()) {
    r.message = (*router)->Summary().empty() ? "reachable and configured" : (*router)->Summary();
    return r;
  }
  r.severity = engine::Severity::kError;
  const std::string text = s.message();
  const auto fix = text.find(" Fix: ");
  r.message = fix == std::string::npos ? text : text.substr(0, fix);
  r.remedy = fix == std::string::npos ? "" : text.substr(fix + 6);
  return r;
}

void AddProgressOption(CLI::App* c, MigrateArgs* a) {
  c->add_option("--progress", a->progress,
                "auto | plain | bars | detail: bars with rate and ETA at the bottom of the "
                "terminal (auto: when stderr is one; detail adds the tables still copying); "
                "plain log lines otherwise")
      ->check(CLI::IsMember({"auto", "plain", "bars", "detail"}));
}

// Bars for a running migration when stderr is a terminal and the mode allows; else nullptr
// and the engine's plain progress lines are all there is.
std::unique_ptr<ProgressDisplay> StartBars(const std::string& mode_text, const engine::Migration& m,
                                           const std::string& state_dir,
                                           const engine::ToolPaths& tools) {
  auto mode = ParseProgressMode(mode_text);
  if (!mode.ok() || !UseBars(*mode, STDERR_FILENO)) return nullptr;
  ProgressDisplay::DetailPoll detail;
  if (*mode == ProgressMode::kDetail) {
    // Its own Migration from state.json, with its own connections: never touches `m`.
    detail = [state_dir, tools](size_t max_lines) {
      auto o = engine::Migration::Open(state_dir, tools);
      if (!o.ok()) return std::vector<std::string>{};
      return DetailLines((*o)->StatusJson(true), max_lines);
    };
  }
  return ProgressDisplay::Start(
      STDERR_FILENO, [&m] { return FiguresFromSnapshot(m.stats().Snapshot(MonotonicMillis())); },
      std::move(detail));
}

void AddMetricsOption(CLI::App* c, MigrateArgs* a) {
  c->add_option("--metrics-addr", a->metrics_addr,
                "serve Prometheus metrics (and /healthz, /readyz) on HOST:PORT while this runs; "
                "port 0 picks a free one (the URL is printed to stderr)");
}

// The metrics server for `m` when --metrics-addr was given (nullptr when not). It only reads
// `m`'s stats board, which is thread-safe; `m` must outlive it.
Result<std::unique_ptr<obs::MetricsServer>> StartMetrics(const std::string& addr,
                                                         const engine::Migration& m) {
  if (addr.empty()) return std::unique_ptr<obs::MetricsServer>();
  obs::MigrationExtra extra;
  extra.max_lag_bytes = m.state().options.max_lag_bytes;
  extra.max_pause_ms = m.state().options.max_pause_ms;
  const std::string id = m.state().id;
  auto server = obs::MetricsServer::Start(addr, [&m, id, extra] {
    obs::MigrationMetrics mm{{{"migration", id}}, m.stats().Snapshot(MonotonicMillis()), extra};
    return std::vector<obs::MigrationMetrics>{std::move(mm)};
  });
  if (!server.ok()) return server.status().WithContext("--metrics-addr");
  fprintf(stderr, "pgshift: metrics at %s\n", (*server)->Url().c_str());
  fflush(stderr);
  return server;
}

// The state folder's lock for `command`, saying so when it took over one whose holder died.
Result<std::unique_ptr<DirLock>> LockStateDir(const std::string& dir, const std::string& command) {
  std::string gone;
  auto lock = DirLock::Acquire(dir, command, &gone);
  if (lock.ok() && !gone.empty()) {
    fprintf(stderr, "pgshift: took over the lock of %s, which is gone\n", gone.c_str());
  }
  return lock;
}

// How a command that was asked to stop ends: the engine stopped at a safe point.
Status Stopped(const Status& s, const StopSignals& signals) {
  if (s.ok() || !signals.requested()) return s;
  return Status::Aborted("stopped on request at a safe point (" + s.message() +
                         "); nothing is half done: run the same command again to go on");
}

void PrintStatus(const nlohmann::json& j) {
  printf("migration %s  phase %s  (PostgreSQL %d -> %d)\n", j["id"].get<std::string>().c_str(),
         j["phase"].get<std::string>().c_str(), j["source_major"].get<int>(),
         j["target_major"].get<int>());
  printf("source %s\ntarget %s\n", j["source_dsn"].get<std::string>().c_str(),
         j["target_dsn"].get<std::string>().c_str());
  if (j.contains("live")) {
    const auto& l = j["live"];
    printf("tables ready %d/%d", l["tables_ready"].get<int>(), l["tables_total"].get<int>());
    if (l.contains("lag_bytes")) printf("  lag %lld bytes", l["lag_bytes"].get<long long>());
    if (l.contains("reverse_lag_bytes")) {
      printf("  reverse replication (target -> source, for rollback) lag %lld bytes",
             l["reverse_lag_bytes"].get<long long>());
    }
    printf("\n");
    // The running engine's estimate, said as the engine says it (LagEstimate::Describe).
    engine::LagEstimate outlook;
    if (l.contains("drain_bytes_per_s")) {
      outlook.drain_bytes_per_s = l["drain_bytes_per_s"].get<double>();
    }
    if (l.contains("ready_in_s")) outlook.ready_in_s = l["ready_in_s"].get<double>();
    outlook.stalled = l.value("lag_stalled", false);
    if (const std::string said = outlook.Describe(); !said.empty()) printf("%s\n", said.c_str());
    for (const auto& d : l["databases"]) {
      printf("  %-20s", d["name"].get<std::string>().c_str());
      if (d.contains("lag_bytes")) printf(" lag %lld B", d["lag_bytes"].get<long long>());
      if (d.contains("lag_seconds")) printf(" %.1f s", d["lag_seconds"].get<double>());
      if (d.contains("reverse_lag_bytes")) {
        printf(" reverse lag %lld B", d["reverse_lag_bytes"].get<long long>());
      }
      if (d.contains("error")) printf(" (%s)", d["error"].get<std::string>().c_str());
      printf("\n");
      if (d.contains("workers")) {
        const auto& w = d["workers"];
        if (!w.value("enabled", true)) {
          printf("    subscription DISABLED: nothing replicates (ALTER SUBSCRIPTION ... ENABLE "
                 "on the target once its cause is fixed)\n");
        }
        if (w.contains("conflicts") && !w["conflicts"].empty()) {
          std::vector<std::string> parts;
          for (const auto& [type, n] : w["conflicts"].items()) {
            parts.push_back(type + " " + std::to_string(n.get<long long>()));
          }
          printf("    replication conflicts: %s (the target differs from the source; cutover "
                 "is blocked)\n",
                 Join(parts, ", ").c_str());
        }
        if (w.value("sync_errors", 0) > 0 || w.value("apply_errors", 0) > 0 ||
            !w["retrying"].empty()) {
          printf("    replication errors: %lld table sync, %lld apply",
                 w.value("sync_errors", 0LL), w.value("apply_errors", 0LL));
          if (!w["retrying"].empty()) {
            printf("; copy failed, waiting to retry: %s",
                   Join(w["retrying"].get<std::vector<std::string>>(), ", ").c_str());
          }
          printf("\n");
          for (const auto& e : w["errors"]) {
            std::string who = e["table"].get<std::string>().empty()
                                  ? "apply worker"
                                  : "table " + e["table"].get<std::string>();
            printf("    %s: %s\n", who.c_str(), e["error"].get<std::string>().c_str());
          }
          if (w.contains("log")) printf("    %s\n", w["log"].get<std::string>().c_str());
        }
      }
      if (d.contains("tables")) {
        for (const auto& t : d["tables"]) {
          if (t["state"] != "ready") {
            printf("    %-40s %s\n", t["table"].get<std::string>().c_str(),
                   t["state"].get<std::string>().c_str());
          }
        }
      }
    }
  }
  // In the order they happened (UTC timestamps of one format sort as text), not by name.
  std::vector<std::pair<std::string, std::string>> phases;  // started_at, phase
  for (const auto& [phase, t] : j["phase_times"].items()) {
    phases.emplace_back(t["started_at"].get<std::string>(), phase);
  }
  int analyzed = 0, copied = 0;
  double analyze_ms = 0, copy_ms = 0;
  bool any_analyzed = false, any_copied = false;
  for (const auto& d : j.value("databases", nlohmann::json::array())) {
    if (!d.value("analyzed", false)) continue;
    any_analyzed = true;
    analyzed += d.value("analyzed_tables", 0);
    analyze_ms += d.value("analyze_ms", 0.0);
    if (d.value("statistics_copied", -1) >= 0) {
      any_copied = true;
      copied += d.value("statistics_copied", 0);
      copy_ms += d.value("statistics_copy_ms", 0.0);
    }
  }
  if (any_copied) {
    printf("statistics: the source's statistics of %d relations copied (pg_dump --statistics-only) "
           "in %.1f s, then %d tables analyzed on the target in %.1f s, before cutover\n",
           copied, copy_ms / 1000.0, analyzed, analyze_ms / 1000.0);
  } else if (any_analyzed) {
    printf("statistics: %d tables analyzed on the target in %.1f s before cutover\n", analyzed,
           analyze_ms / 1000.0);
  }
  std::stable_sort(phases.begin(), phases.end());
  for (const auto& [started, phase] : phases) {
    printf("  %-16s %s .. %s\n", phase.c_str(), started.c_str(),
           j["phase_times"][phase]["finished_at"].get<std::string>().c_str());
  }
  for (const auto& c : j["cutovers"]) {
    printf("cutover %-8s %s pause %.1f ms%s%s\n", c["direction"].get<std::string>().c_str(),
           c["succeeded"].get<bool>() ? "ok    " : "undone", c["pause_ms"].get<double>(),
           c["failed_step"].get<std::string>().empty() ? "" : " failed at ",
           c["failed_step"].get<std::string>().c_str());
    for (const auto& n : c.value("notes", nlohmann::json::array())) {
      if (n.is_string()) printf("  note: %s\n", n.get<std::string>().c_str());
    }
  }
  if (!j["cutover_in_flight"].get<std::string>().empty()) {
    const auto& step = j["cutover_step"];
    printf("in flight: %s interrupted at step %s%s; run `pgshift %s` again to finish or undo it\n",
           j["cutover_in_flight"].get<std::string>().c_str(),
           step.value("name", std::string("?")).c_str(),
           step.value("undoing", false) ? " (undoing)" : "",
           j["cutover_in_flight"] == "rollback" ? "rollback" : "cutover");
  }
  // What was compared, how, and the result: before cutover and at the switch point.
  for (const auto& [key, when] : {std::pair{"verification", "before cutover"},
                                  std::pair{"switch_point_verification", "at the switch point"}}) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_object() || it->empty()) continue;
    const nlohmann::json& v = *it;
    std::string line;
    if (v.value("state", "") == "running") {
      line = "not finished";
    } else if (v.contains("error")) {
      line = "not done: " + v.value("error", "");
    } else {
      line = std::string(v.value("clean", false) ? "clean" : "DIFFERENCES") + ": " +
             v.value("summary", v.value("level", "") + ", " +
                                    std::to_string(v.value("tables_verified", 0)) + " tables");
      // What was done about a difference ("rolled back", "stopped for a person"); "none" is noise.
      const std::string action = v.value("action", "");
      if (!action.empty() && action != "none") line += " (" + action + ")";
    }
    printf("verification %s: %s\n", when, line.c_str());
    for (const auto& t : v.value("tables", nlohmann::json::array())) {
      const std::string result = t.value("result", t.value("match", false) ? "match" : "different");
      if (result != "different" && result != "changing") continue;
      std::string detail = t.value("note", "");
      for (const char* k : {"differing_keys", "changing_keys", "differing_rows_text"}) {
        std::vector<std::string> items;
        for (const auto& x : t.value(k, nlohmann::json::array())) {
          if (x.is_string() && items.size() < 5) items.push_back(x.get<std::string>());
        }
        if (!items.empty()) detail += (detail.empty() ? "" : "; ") + Join(items, " ");
      }
      printf("  %-9s %s.%s.%s  %s\n", result.c_str(), t.value("database", "").c_str(),
             t.value("schema", "").c_str(), t.value("table", "").c_str(), detail.c_str());
    }
  }
  for (const auto& n : j["notes"]) printf("note: %s\n", n.get<std::string>().c_str());
  if (!j["last_error"].get<std::string>().empty() &&
      j["phase"].get<std::string>() != "RollbackReady") {
    printf("last error: %s\n", j["last_error"].get<std::string>().c_str());
  }
}

}  // namespace

void AddMigrateCommands(CLI::App& app, GlobalOptions& global_options, Status* status) {
  // Read when a command runs, after parsing filled it in.
  const GlobalOptions* global = &global_options;
  auto a = std::make_shared<MigrateArgs>();

  CLI::App* check = app.add_subcommand(
      "check",
      "preflight only: checks both servers and proves the target accepts the schema (a scratch "
      "database on the target, dropped again); changes nothing on the source");
  check->add_option("--source", a->source, "source DSN")->required();
  check->add_option("--target", a->target, "target DSN")->required();
  check->add_option("--databases", a->databases, "a,b (default: every non-template database)");
  check->add_option("--tables-without-pk", a->tables_without_pk, "full | refuse")
      ->check(Word(engine::ParseTablesWithoutPk))
      ->capture_default_str();
  check->add_option("--rollback-replication", a->rollback_replication, "on | off")
      ->check(Word(ParseOnOff))
      ->capture_default_str();
  CLI::Option* check_router = check->add_option("--router", a->router,
                    "also check the router the cutover will drive: pgbouncer (reachable, its "
                    "ini leads somewhere, no pool in session mode) | nginx | manual")
      ->check(Word(ParseCliRouter));
  check->add_option("--max-retained-wal", a->max_retained_wal,
                    "the limit upgrade will run with, shown against the source's free space")
      ->transform(CLI::AsSizeValue(false));
  check->add_option("--router-admin", a->router_admin, "PgBouncer admin console DSN");
  check->add_option("--router-config", a->router_config, "pgbouncer.ini or nginx.conf");
  check->add_flag("--json", a->json, "machine-readable output");
  check->callback([=]() {
    auto options = ToOptions(*a);
    if (!options.ok()) return void(*status = options.status());
    engine::PreflightOptions po;
    po.databases = options->databases;
    po.tables_without_pk_full = options->tables_without_pk == engine::TablesWithoutPk::kFull;
    po.rollback_replication = options->rollback_replication;
    po.max_retained_wal = options->max_retained_wal;
    po.tools = Tools(*global);
    auto rep = engine::RunPreflight(a->source, a->target, po);
    if (!rep.ok()) return void(*status = rep.status());
    if (!a->router_admin.empty() || !a->router_config.empty() || check_router->count() > 0) {
      rep->results.push_back(CheckRouter(*options, a->state_dir));
    }
    printf("%s\n", a->json ? rep->ToJson().dump(2).c_str() : rep->RenderTable().c_str());
    if (rep->HasErrors()) *status = Status::FailedPrecondition("preflight found errors (see above)");
  });

  CLI::App* upgrade = app.add_subcommand(
      "upgrade", "migrate source -> target (up or down); run again with the same --state to resume");
  upgrade->add_option("--source", a->source, "source DSN");
  upgrade->add_option("--target", a->target, "target DSN (an empty server of the wanted version)");
  upgrade->add_option("--state", a->state_dir, "folder for the migration's state")->required();
  AddMigrationOptions(upgrade, a.get());
  AddProgressOption(upgrade, a.get());
  AddMetricsOption(upgrade, a.get());
  upgrade->callback([=]() {
    auto options = ToOptions(*a);
    if (!options.ok()) return void(*status = options.status());
    StopSignals signals;  // before any thread starts: they inherit the blocked signals
    auto lock = LockStateDir(a->state_dir, "upgrade");
    if (!lock.ok()) return void(*status = lock.status());
    engine::MigrationRequest req{a->source, a->target, a->state_dir, *options, std::nullopt};
    if (a->max_retained_wal_option->count() > 0) req.max_retained_wal = a->max_retained_wal;
    auto m = engine::Migration::OpenOrCreate(req, Tools(*global));
    if (!m.ok()) return void(*status = m.status());
    (*m)->set_stop([&signals] { return signals.requested(); });
    auto router = RouterFor((*m)->state(), a->state_dir);
    if (!router.ok()) return void(*status = router.status());
    auto metrics = StartMetrics(a->metrics_addr, **m);
    if (!metrics.ok()) return void(*status = metrics.status());
    auto bars = StartBars(a->progress, **m, a->state_dir, Tools(*global));
    *status = Stopped((*m)->Run(router->get()), signals);
    bars.reset();
    if (status->ok()) {
      const auto& st = (*m)->state();
      printf("phase %s\n", engine::PhaseName(st.phase).c_str());
      if (!st.cutovers.empty() && st.cutovers.back().succeeded) {
        printf("cutover_pause_ms=%.1f\n", st.cutovers.back().pause_ms);
      }
    }
  });

  CLI::App* stat = app.add_subcommand("status", "phase, progress, lag, timings");
  stat->add_option("--state", a->state_dir, "the migration's state folder")->required();
  stat->add_flag("--json", a->json, "machine-readable output");
  stat->add_flag("--watch", a->watch, "refresh every 2 seconds until the migration ends");
  stat->callback([=]() {
    ProgressRates rates;
    while (true) {
      auto m = engine::Migration::Open(a->state_dir, Tools(*global));
      if (!m.ok()) return void(*status = m.status());
      nlohmann::json j = (*m)->StatusJson(true);
      const auto tail = ReadHistoryTail(a->state_dir + "/history.jsonl");
      if (j.contains("live")) {
        // "When can sync end?": the running engine's estimate, from its last fresh sample.
        ProgressFigures now = FiguresFromStatus(j, tail, UnixMillis());
        if (now.drain_bytes_per_s) j["live"]["drain_bytes_per_s"] = *now.drain_bytes_per_s;
        if (now.ready_in_s) j["live"]["ready_in_s"] = *now.ready_in_s;
        if (now.lag_stalled) j["live"]["lag_stalled"] = true;
      }
      if (a->watch && isatty(STDOUT_FILENO)) printf("\033[H\033[2J");
      if (a->json) {
        printf("%s\n", j.dump(2).c_str());
      } else {
        PrintStatus(j);
        if (a->watch && isatty(STDOUT_FILENO)) {
          // The same bars as `upgrade` shows, from the live status and the history file.
          ProgressFigures f = FiguresFromStatus(j, tail, UnixMillis());
          printf("\n");
          const int cols = TerminalColumns(STDOUT_FILENO, 100);
          for (const auto& line :
               RenderProgress(f, &rates, MonotonicMillis(), cols, Utf8Locale())) {
            printf("%s\n", line.c_str());
          }
        }
      }
      fflush(stdout);
      if (!a->watch || engine::IsTerminal((*m)->state().phase)) return;
      SleepMillis(2000);
    }
  });

  auto simple = [&](const char* name, const char* help, auto action) {
    CLI::App* c = app.add_subcommand(name, help);
    c->add_option("--state", a->state_dir, "the migration's state folder")->required();
    if (std::string(name) == "cutover") {
      c->add_flag("--confirm", a->confirm, "--router manual: the application now uses the target");
    }
    const bool with_metrics = std::string(name) == "cutover" || std::string(name) == "rollback";
    if (with_metrics) AddMetricsOption(c, a.get());
    const std::string command = name;
    c->callback([=]() {
      StopSignals signals;
      // `cutover --confirm` only answers the waiting cutover, which holds the lock. Without a
      // state there is nothing to lock (Open says so).
      std::unique_ptr<DirLock> lock;
      if (!a->confirm && PathExists(a->state_dir + "/state.json")) {
        auto l = LockStateDir(a->state_dir, command);
        if (!l.ok()) return void(*status = l.status());
        lock = std::move(*l);
      }
      auto m = engine::Migration::Open(a->state_dir, Tools(*global));
      if (!m.ok()) return void(*status = m.status());
      (*m)->set_stop([&signals] { return signals.requested(); });
      auto metrics = StartMetrics(with_metrics && !a->confirm ? a->metrics_addr : "", **m);
      if (!metrics.ok()) return void(*status = metrics.status());
      *status = Stopped(action(**m, a->state_dir), signals);
      if (status->ok()) printf("phase %s\n", engine::PhaseName((*m)->state().phase).c_str());
    });
  };
  simple("cutover",
         "switch traffic to the target now (after upgrade --cutover manual); with --router "
         "manual, --confirm tells the waiting cutover that the application was switched",
         [a](engine::Migration& m, const std::string& dir) -> Status {
           if (a->confirm) {
             if (!PathExists(dir + "/" + routers::kManualWaitingFile)) {
               return Status::FailedPrecondition(
                   "no cutover waits for a confirmation in " + dir +
                   " (--confirm is for --router manual, once pgshift asked for it)");
             }
             Status s = WriteFileAtomic(dir + "/" + routers::kManualConfirmedFile, "confirmed\n", 0600);
             if (s.ok()) printf("confirmed: the waiting cutover goes on\n");
             return s;
           }
           auto r = RouterFor(m.state(), dir);
           if (!r.ok()) return r.status();
           Status s = m.Cutover(r->get());
           if (s.ok() && !m.state().cutovers.empty()) {
             printf("cutover_pause_ms=%.1f\n", m.state().cutovers.back().pause_ms);
           }
           return s;
         });
  simple("rollback", "after cutover: traffic back to the source, nothing lost",
         [](engine::Migration& m, const std::string& dir) -> Status {
           auto r = RouterFor(m.state(), dir);
           if (!r.ok()) return r.status();
           Status s = m.Rollback(r->get());
           if (s.ok() && !m.state().cutovers.empty()) {
             printf("rollback_pause_ms=%.1f\n", m.state().cutovers.back().pause_ms);
           }
           return s;
         });
  simple("finish", "end reverse replication and drop everything pgshift made",
         [](engine::Migration& m, const std::string&) { return m.Finish(); });
  simple("abort",
         "before cutover: drop everything pgshift made, the target databases it created too; "
         "the source keeps every row",
         [](engine::Migration& m, const std::string& dir) -> Status {
           auto r = RouterFor(m.state(), dir);
           return m.Abort(r.ok() ? r->get() : nullptr);
         });

  CLI::App* verify = app.add_subcommand(
      "verify",
      "compare every table's rows: counts or checksums by key ranges, both servers at once; "
      "rows still being written are told from rows that differ");
  verify->add_option("--source", a->source, "source DSN")->required();
  verify->add_option("--target", a->target, "target DSN")->required();
  verify->add_option("--level", a->level, "count | checksum (default checksum)")
      ->check(CLI::IsMember({"count", "checksum"}));
  verify->add_option("--databases", a->databases, "a,b (default: every database of the source)");
  verify->add_option("--jobs", a->verify_jobs, "tables and key ranges compared at once (default 4)")
      ->check(CLI::Range(1, 64));
  verify->add_option("--hash", a->hash,
                     "auto | hashextended | md5 | sha256: how rows are hashed (auto: "
                     "hashextended when both servers share an encoding and hash alike, else md5, "
                     "else sha256)")
      ->check(CLI::IsMember({"auto", "hashextended", "md5", "sha256"}));
  verify->add_flag("--snapshot", a->snapshot,
                   "compare one moment exactly: a snapshot of each side taken at once, no "
                   "rounds; every difference is reported as one (for sides nobody writes to, "
                   "e.g. with the application stopped; a migration does this itself at cutover)");
  verify->add_flag("--json", a->json, "machine-readable output");
  AddProgressOption(verify, a.get());
  verify->callback([=]() {
    engine::VerifyOptions vo;
    auto level = engine::ParseVerifyLevel(a->level);
    if (!level.ok()) return void(*status = level.status());
    vo.level = *level;
    vo.jobs = a->verify_jobs;
    if (a->hash != "auto") {
      auto method = engine::verify::ParseHashMethod(a->hash);
      if (!method.ok()) return void(*status = method.status());
      vo.hash = *method;
    }
    vo.databases = DatabaseList(a->databases);
    if (vo.databases.empty()) {
      auto conn = pg::Connection::Connect(a->source);
      if (!conn.ok()) return void(*status = conn.status().WithContext("source"));
      auto dbs = engine::ListDatabases(**conn);
      if (!dbs.ok()) return void(*status = dbs.status());
      vo.databases = *dbs;
    }
    // Standalone, pgshift knows of no replication between the two servers to wait for: a
    // row read again after a pause that still differs while neither side wrote it is a
    // difference; one whose version moved is still being written.
    vo.settle = [](const std::string&) {
      SleepMillis(200);
      return Status::Ok();
    };
    auto done = std::make_shared<std::atomic<int64_t>>(0);
    auto differ = std::make_shared<std::atomic<int64_t>>(0);
    vo.on_table = [done, differ](const engine::TableVerification& t) {
      ++*done;
      if (t.blocking()) ++*differ;
    };
    std::unique_ptr<ProgressDisplay> bars;
    if (auto mode = ParseProgressMode(a->progress); mode.ok() && UseBars(*mode, STDERR_FILENO)) {
      bars = ProgressDisplay::Start(
          STDERR_FILENO,
          [done, differ] {
            ProgressFigures f;
            f.verify_only = true;
            f.phase = "verify";
            f.verify_done = *done;
            f.verify_mismatches = *differ;
            return f;
          },
          nullptr);
    }
    auto rep = [&]() -> Result<engine::VerifyReport> {
      if (!a->snapshot) return engine::VerifyDatabases(a->source, a->target, vo);
      PGSHIFT_ASSIGN_OR_RETURN(auto pair,
                               engine::SwitchPointCheck::Prepare(a->source, a->target, vo));
      PGSHIFT_RETURN_IF_ERROR(pair->Take());
      return pair->Compare();
    }();
    bars.reset();
    if (!rep.ok()) return void(*status = rep.status());
    printf("%s\n", a->json ? rep->ToJson().dump(2).c_str() : rep->Render().c_str());
    if (!rep->clean()) *status = Status::FailedPrecondition("the databases differ (see above)");
  });
}

}  // namespace pgshift::cli
