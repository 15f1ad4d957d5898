// pgshift: near-zero-downtime PostgreSQL major version upgrades and downgrades.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "common/log.h"
#include "common/process.h"
#include "engine/snapshot_keeper.h"

namespace pgshift::cli {

int ExitCode(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk: return 0;
    case StatusCode::kInvalidArgument: return 2;
    case StatusCode::kFailedPrecondition: return 3;
    case StatusCode::kNotFound: return 4;
    case StatusCode::kUnavailable: return 5;
    default: return 1;
  }
}

}  // namespace pgshift::cli

int main(int argc, char** argv) {
  // A snapshot keeper started by a migration's copy runs this same executable.
  if (auto rc = pgshift::engine::MaybeRunSnapshotKeeper(argc, argv)) return *rc;
  using namespace pgshift;
  // A write to a closed pipe or socket (a child tool that exited early) is an error to
  // report, never a silent death by SIGPIPE (exit status 141).
  IgnoreSigpipe();
  CLI::App app{
      "pgshift moves a live PostgreSQL database to another major version (up or down) with\n"
      "logical replication and a router cutover that holds writes for milliseconds.\n"
      "Exit codes: 0 ok, 1 error, 2 bad input, 3 failed precondition, 4 not found, 5 unavailable."};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand
  cli::GlobalOptions global;
  app.add_option("--lab-dir", global.lab_dir,
                 "lab state folder (default: $PGSHIFT_LAB_DIR or .cache/lab in the checkout)");
  app.add_option("--log-format", global.log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_flag("-v,--verbose", global.verbose, "debug logging");
  app.add_option("--pg-bin", global.pg_bin,
                 "folder of the client tools pgshift runs (pg_dump, pg_dumpall, pg_restore, psql), at least "
                 "the source's major (default: $PGSHIFT_PG_BIN, else .cache/pgclient/bin from "
                 "scripts/setup.sh, else PATH)");
  app.parse_complete_callback([&]() {
    SetLogFormat(global.log_format == "json" ? LogFormat::kJson : LogFormat::kText);
    if (global.verbose) SetLogLevel(LogLevel::kDebug);
  });

  Status status;
  cli::AddLabCommands(app, global, &status);
  cli::AddLoadCommands(app, global, &status);
  cli::AddMigrateCommands(app, global, &status);
  cli::AddReportCommands(app, global, &status);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (!status.ok()) {
    fprintf(stderr, "pgshift: %s\n", status.message().c_str());
    return cli::ExitCode(status);
  }
  return 0;
}
