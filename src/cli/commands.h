// Subcommand registration for the pgshift CLI. Each Add*Commands attaches its subcommands to
// `app` and sets the callback that runs them; the callback stores the exit status in
// `*status` (errors are printed once, by main).
#pragma once

#include <CLI/CLI.hpp>

#include "common/status.h"

namespace pgshift::cli {

struct GlobalOptions {
  std::string lab_dir;
  std::string log_format = "text";
  std::string pg_bin;  // --pg-bin: the folder of pg_dump, pg_dumpall and psql
  bool verbose = false;
};

void AddLabCommands(CLI::App& app, GlobalOptions& global, Status* status);
void AddLoadCommands(CLI::App& app, GlobalOptions& global, Status* status);
void AddMigrateCommands(CLI::App& app, GlobalOptions& global, Status* status);
void AddReportCommands(CLI::App& app, GlobalOptions& global, Status* status);

// Process exit code for a status: 0 ok, 2 bad input, 3 failed precondition, 4 not found,
// 5 unavailable (retry may help), 1 anything else.
int ExitCode(const Status& s);

}  // namespace pgshift::cli
