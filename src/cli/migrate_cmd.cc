// The migration commands: check, upgrade, status, cutover, rollback, finish, abort, verify.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "engine/inspect.h"
#include "engine/migration.h"
#include "engine/preflight.h"
#include "engine/verify.h"
#include "lab/paths.h"
#include "obs/metrics_server.h"
#include "pg/connection.h"
#include "routers/routers.h"

namespace pgshift::cli {

namespace {

struct MigrateArgs {
  std::string source, target, state_dir;
  std::string router = "pgbouncer", router_admin, router_config;
  std::string cutover = "auto";
  int64_t max_lag = 16 << 20;
  int max_pause = 2000;
  std::string databases;
  std::string tables_without_pk = "refuse";
  std::string verify = "checksum";
  std::string rollback_replication = "on";
  std::string report;
  std::string level = "checksum";
  bool json = false, watch = false, confirm = false;
  std::string metrics_addr;  // --metrics-addr HOST:PORT
  std::string progress = "auto";
};

engine::ToolPaths Tools() {
  lab::Paths paths = lab::Paths::Discover();
  engine::ToolPaths t;
  const char* dump = std::getenv("PGSHIFT_PG_DUMP");
  t.pg_dump = dump && *dump ? dump : paths.ClientTool("pg_dump");
  t.pg_dumpall = paths.ClientTool("pg_dumpall");
  t.psql = paths.ClientTool("psql");
  return t;
}

std::vector<std::string> DatabaseList(const std::string& csv) {
  std::vector<std::string> out;
  for (const auto& d : Split(csv, ',', true)) out.emplace_back(Trim(d));
  return out;
}

void AddMigrationOptions(CLI::App* c, MigrateArgs* a) {
  c->add_option("--router", a->router,
                "pgbouncer | nginx | manual (pgshift fences and waits for `cutover --confirm`)")
      ->check(CLI::IsMember({"pgbouncer", "nginx", "manual"}));
  c->add_option("--router-admin", a->router_admin, "PgBouncer admin console DSN");
  c->add_option("--router-config", a->router_config,
                "the router's config file (pgbouncer.ini whose [databases] lead to the source, or nginx.conf)");
  c->add_option("--cutover", a->cutover, "auto | manual")->check(CLI::IsMember({"auto", "manual"}));
  c->add_option("--max-lag", a->max_lag, "replication lag in bytes under which cutover may start")
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));
  c->add_option("--max-pause", a->max_pause, "longest time clients may be held, in ms (default 2000)")
      ->check(CLI::Range(10, 600000));
  c->add_option("--databases", a->databases, "a,b (default: every non-template database)");
  c->add_option("--tables-without-pk", a->tables_without_pk, "full | refuse (default refuse)")
      ->check(CLI::IsMember({"full", "refuse"}));
  c->add_option("--verify", a->verify, "none | count | checksum (default checksum)")
      ->check(CLI::IsMember({"none", "count", "checksum"}));
  c->add_option("--rollback-replication", a->rollback_replication, "on | off (default on)")
      ->check(CLI::IsMember({"on", "off"}));
  c->add_option("--report", a->report, "write a JSON report of the run to FILE");
}

engine::MigrationOptions ToOptions(const MigrateArgs& a) {
  engine::MigrationOptions o;
  o.router = a.router;
  o.router_admin = a.router_admin;
  o.router_config = a.router_config;
  o.cutover = a.cutover;
  o.max_lag_bytes = a.max_lag;
  o.max_pause_ms = a.max_pause;
  o.databases = DatabaseList(a.databases);
  o.tables_without_pk_full = a.tables_without_pk == "full";
  o.verify = a.verify;
  o.rollback_replication = a.rollback_replication == "on";
  o.report_file = a.report;
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
                                           const std::string& state_dir) {
  auto mode = ParseProgressMode(mode_text);
  if (!mode.ok() || !UseBars(*mode, STDERR_FILENO)) return nullptr;
  ProgressDisplay::DetailPoll detail;
  if (*mode == ProgressMode::kDetail) {
    // Its own Migration from state.json, with its own connections: never touches `m`.
    detail = [state_dir](size_t max_lines) {
      auto o = engine::Migration::Open(state_dir, Tools());
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
    printf("\n");
    for (const auto& d : l["databases"]) {
      printf("  %-20s", d["name"].get<std::string>().c_str());
      if (d.contains("lag_bytes")) printf(" lag %lld B", d["lag_bytes"].get<long long>());
      if (d.contains("lag_seconds")) printf(" %.1f s", d["lag_seconds"].get<double>());
      if (d.contains("error")) printf(" (%s)", d["error"].get<std::string>().c_str());
      printf("\n");
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
  for (const auto& [phase, t] : j["phase_times"].items()) {
    printf("  %-16s %s .. %s\n", phase.c_str(), t["started_at"].get<std::string>().c_str(),
           t["finished_at"].get<std::string>().c_str());
  }
  for (const auto& c : j["cutovers"]) {
    printf("cutover %-8s %s pause %.1f ms%s%s\n", c["direction"].get<std::string>().c_str(),
           c["succeeded"].get<bool>() ? "ok    " : "undone", c["pause_ms"].get<double>(),
           c["failed_step"].get<std::string>().empty() ? "" : " failed at ",
           c["failed_step"].get<std::string>().c_str());
  }
  for (const auto& n : j["notes"]) printf("note: %s\n", n.get<std::string>().c_str());
  if (!j["last_error"].get<std::string>().empty() &&
      j["phase"].get<std::string>() != "RollbackReady") {
    printf("last error: %s\n", j["last_error"].get<std::string>().c_str());
  }
}

}  // namespace

void AddMigrateCommands(CLI::App& app, GlobalOptions& /*global*/, Status* status) {
  auto a = std::make_shared<MigrateArgs>();

  CLI::App* check = app.add_subcommand("check", "preflight only: checks both servers, changes nothing");
  check->add_option("--source", a->source, "source DSN")->required();
  check->add_option("--target", a->target, "target DSN")->required();
  check->add_option("--databases", a->databases, "a,b (default: every non-template database)");
  check->add_option("--tables-without-pk", a->tables_without_pk, "full | refuse")
      ->check(CLI::IsMember({"full", "refuse"}));
  check->add_option("--rollback-replication", a->rollback_replication, "on | off")
      ->check(CLI::IsMember({"on", "off"}));
  check->add_flag("--json", a->json, "machine-readable output");
  check->callback([=]() {
    engine::PreflightOptions po;
    po.databases = DatabaseList(a->databases);
    po.tables_without_pk_full = a->tables_without_pk == "full";
    po.rollback_replication = a->rollback_replication == "on";
    po.pg_dump_path = Tools().pg_dump;
    auto rep = engine::RunPreflight(a->source, a->target, po);
    if (!rep.ok()) return void(*status = rep.status());
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
    engine::MigrationRequest req{a->source, a->target, a->state_dir, ToOptions(*a)};
    auto m = engine::Migration::OpenOrCreate(req, Tools());
    if (!m.ok()) return void(*status = m.status());
    auto router = RouterFor((*m)->state(), a->state_dir);
    if (!router.ok()) return void(*status = router.status());
    auto metrics = StartMetrics(a->metrics_addr, **m);
    if (!metrics.ok()) return void(*status = metrics.status());
    auto bars = StartBars(a->progress, **m, a->state_dir);
    *status = (*m)->Run(router->get());
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
      auto m = engine::Migration::Open(a->state_dir, Tools());
      if (!m.ok()) return void(*status = m.status());
      nlohmann::json j = (*m)->StatusJson(true);
      if (a->watch && isatty(STDOUT_FILENO)) printf("\033[H\033[2J");
      if (a->json) {
        printf("%s\n", j.dump(2).c_str());
      } else {
        PrintStatus(j);
        if (a->watch && isatty(STDOUT_FILENO)) {
          // The same bars as `upgrade` shows, from the live status and the history file.
          ProgressFigures f = FiguresFromStatus(
              j, ReadHistoryTail(a->state_dir + "/history.jsonl"), UnixMillis());
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
    c->callback([=]() {
      auto m = engine::Migration::Open(a->state_dir, Tools());
      if (!m.ok()) return void(*status = m.status());
      auto metrics = StartMetrics(with_metrics && !a->confirm ? a->metrics_addr : "", **m);
      if (!metrics.ok()) return void(*status = metrics.status());
      *status = action(**m, a->state_dir);
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
  simple("abort", "before cutover: drop everything pgshift made; the source is untouched",
         [](engine::Migration& m, const std::string& dir) -> Status {
           auto r = RouterFor(m.state(), dir);
           return m.Abort(r.ok() ? r->get() : nullptr);
         });

  CLI::App* verify = app.add_subcommand("verify", "compare row counts or checksums of every table");
  verify->add_option("--source", a->source, "source DSN")->required();
  verify->add_option("--target", a->target, "target DSN")->required();
  verify->add_option("--level", a->level, "count | checksum (default checksum)")
      ->check(CLI::IsMember({"count", "checksum"}));
  verify->add_option("--databases", a->databases, "a,b (default: every database of the source)");
  verify->add_flag("--json", a->json, "machine-readable output");
  AddProgressOption(verify, a.get());
  verify->callback([=]() {
    engine::VerifyOptions vo;
    auto level = engine::ParseVerifyLevel(a->level);
    if (!level.ok()) return void(*status = level.status());
    vo.level = *level;
    vo.databases = DatabaseList(a->databases);
    if (vo.databases.empty()) {
      auto conn = pg::Connection::Connect(a->source);
      if (!conn.ok()) return void(*status = conn.status().WithContext("source"));
      auto dbs = engine::ListDatabases(**conn);
      if (!dbs.ok()) return void(*status = dbs.status());
      vo.databases = *dbs;
    }
    vo.settle = []() {
      SleepMillis(1000);
      return Status::Ok();
    };
    auto done = std::make_shared<std::atomic<int64_t>>(0);
    auto differ = std::make_shared<std::atomic<int64_t>>(0);
    vo.on_table = [done, differ](const engine::TableVerification& t) {
      ++*done;
      if (!t.match) ++*differ;
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
    auto rep = engine::VerifyDatabases(a->source, a->target, vo);
    bars.reset();
    if (!rep.ok()) return void(*status = rep.status());
    printf("%s\n", a->json ? rep->ToJson().dump(2).c_str() : rep->Render().c_str());
    if (!rep->clean()) *status = Status::FailedPrecondition("the databases differ (see above)");
  });
}

}  // namespace pgshift::cli
