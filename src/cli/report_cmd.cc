// `pgshift report`: one self-contained HTML page about a migration run (src/report).
#include "cli/commands.h"
#include "common/clock.h"
#include "common/files.h"
#include "engine/migration.h"
#include "report/assets.h"
#include "report/report.h"

namespace pgshift::cli {

void AddReportCommands(CLI::App& app, GlobalOptions& /*global*/, Status* status) {
  struct Args {
    std::string state_dir, load, out;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "report",
      "write one self-contained HTML page about a migration: summary, phase timeline, lag and "
      "copy progress over time, cutovers, verification, and with --load what the clients felt");
  c->add_option("--state", a->state_dir, "the migration's state folder")->required();
  c->add_option("--load", a->load,
                "the --ledger path of a `pgshift load run` that ran during the migration "
                "(reads LEDGER.series.csv and LEDGER.summary.json)");
  c->add_option("-o,--output", a->out, "the HTML file to write")->required();
  c->callback([=]() {
    // Status JSON, not the raw state: DSNs come out redacted.
    auto m = engine::Migration::Open(a->state_dir, engine::ToolPaths{});
    if (!m.ok()) return void(*status = m.status());
    report::ReportInput in;
    in.state = (*m)->StatusJson(false);
    in.generated_unix_ms = UnixMillis();
    auto history = report::ReadHistory(a->state_dir + "/history.jsonl");
    if (!history.ok()) return void(*status = history.status());
    in.history = std::move(*history);
    if (!a->load.empty()) {
      auto load = report::ReadLoadRun(a->load);
      if (!load.ok()) return void(*status = load.status().WithContext("--load"));
      in.load = std::move(*load);
    }
    std::string html = report::RenderHtml(in, report::EmbeddedAssets());
    Status s = WriteFileAtomic(a->out, html, 0644);
    if (!s.ok()) return void(*status = s);
    printf("report written: %s\n", AbsolutePath(a->out).c_str());
    if (!in.history.found) {
      fprintf(stderr, "note: %s/history.jsonl not found: no lag or copy charts\n",
              a->state_dir.c_str());
    }
  });
}

}  // namespace pgshift::cli
