// `pgshift load run|verify`: continuous traffic that proves nothing was lost.
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "lab/load.h"
#include "lab/probe.h"
#include "common/strings.h"

namespace pgshift::cli {

void AddLoadCommands(CLI::App& app, GlobalOptions& /*global*/, Status* status) {
  auto opts = std::make_shared<lab::LoadOptions>();
  auto verify_dsn = std::make_shared<std::string>();
  auto verify_ledger = std::make_shared<std::string>();
  CLI::App* load = app.add_subcommand("load", "a client that writes and reads and proves no write was lost");
  load->require_subcommand(1);

  CLI::App* run = load->add_subcommand(
      "run", "run a steady, scheduled mix of INSERT/UPDATE/DELETE and reads; record every "
             "acknowledged write in the ledger");
  run->add_option("--dsn", opts->dsn, "connection string (through the router)")->required();
  run->add_option("--rate", opts->rate, "operations per second, all clients together")->required();
  run->add_option("--duration", opts->duration_s, "seconds to run")->required();
  run->add_option("--ledger", opts->ledger,
                  "ledger file (appended); FILE.series.csv and FILE.summary.json go beside it")
      ->required();
  run->add_option("--clients", opts->clients, "concurrent connections (default 4)");
  run->add_option("--reads", opts->read_percent, "percent of operations that are reads (default 20)");
  run->add_option("--slow-ms", opts->slow_ms,
                  "write every operation at least this slow (from its scheduled time) to "
                  "FILE.slow.csv, with wall-clock times (default 0: none)");
  run->callback([=]() {
    lab::LoadOptions o = *opts;
    o.progress = isatty(STDERR_FILENO) != 0;
    auto sum = lab::RunLoad(o);
    if (!sum.ok()) return void(*status = sum.status());
    printf("%s\n%s\n", sum->SummaryLine().c_str(), sum->DetailLine().c_str());
  });

  auto probe = std::make_shared<lab::ProbeOptions>();
  auto probe_paths = std::make_shared<std::vector<std::string>>();
  CLI::App* prober = load->add_subcommand(
      "probe", "try a write every few ms through each path; record every success with the "
               "server's clock and port (tests: no two servers take writes at once)");
  prober->add_option("--path", *probe_paths,
                     "NAME=MODE=DSN, MODE plain | readonly-off | begin-rw | set-tx-rw; repeat")
      ->required();
  prober->add_option("--interval-ms", probe->interval_ms, "between attempts of each path")
      ->capture_default_str();
  prober->add_option("--duration", probe->duration_s, "seconds to run")->required();
  prober->add_option("--out", probe->out, "CSV file of successes (appended)")->required();
  prober->callback([=]() {
    lab::ProbeOptions o = *probe;
    for (const auto& spec : *probe_paths) {
      auto first = spec.find('=');
      auto second = first == std::string::npos ? first : spec.find('=', first + 1);
      if (second == std::string::npos) {
        return void(*status = Status::InvalidArgument("--path wants NAME=MODE=DSN, not " + spec));
      }
      auto mode = lab::ParseProbeMode(spec.substr(first + 1, second - first - 1));
      if (!mode.ok()) return void(*status = mode.status());
      o.paths.push_back({spec.substr(0, first), spec.substr(second + 1), *mode});
    }
    auto sum = lab::RunProbe(o);
    if (!sum.ok()) return void(*status = sum.status());
    printf("attempts=%lld successes=%lld\n", static_cast<long long>(sum->attempts),
           static_cast<long long>(sum->successes));
  });

  CLI::App* verify = load->add_subcommand(
      "verify", "check the database holds exactly the ledger's acknowledged final state");
  verify->add_option("--dsn", *verify_dsn, "connection string of the database to check")->required();
  verify->add_option("--ledger", *verify_ledger, "ledger file written by `load run`")->required();
  verify->callback([=]() {
    auto rep = lab::VerifyLoad(*verify_dsn, *verify_ledger);
    if (!rep.ok()) return void(*status = rep.status());
    for (const auto& p : rep->problems) fprintf(stderr, "  %s\n", p.c_str());
    printf("%s\n", rep->SummaryLine().c_str());
    if (!rep->clean()) {
      *status = Status::Aborted("verification failed: " + std::to_string(rep->missing) +
                                " missing, " + std::to_string(rep->mismatched) + " mismatched");
    }
  });
}

}  // namespace pgshift::cli
