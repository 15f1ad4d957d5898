#include "obs/metrics.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include "obs/metrics_server.h"

namespace pgshift::obs {
namespace {

// A migration in CatchingUp with one database whose figures were measured 1 s before the
// snapshot, one database measured 6 s before (stale), a finished cutover and errors.
MigrationMetrics Fake() {
  MigrationMetrics m;
  m.labels = {{"migration", "ab12cd34"}};
  m.extra.max_lag_bytes = 16777216;
  m.extra.max_pause_ms = 2000;
  engine::StatsSnapshot& s = m.stats;
  s.migration_id = "ab12cd34";
  s.phase = "CatchingUp";
  s.phase_entered_unix_ms = 1763800000500;
  s.now_ms = 100000;
  engine::DatabaseStats fresh;
  fresh.lag_bytes = {4096, 99000};
  fresh.lag_seconds = {0.25, 99000};
  fresh.tables_total = {4, 99000};
  fresh.tables_synced = {3, 99000};
  fresh.bytes_total = {81920, 99000};
  fresh.bytes_copied = {40960, 99000};
  fresh.rows_copied = {1200, 99000};
  fresh.sync_errors = {5, 99000};
  fresh.apply_errors = {0, 99000};
  fresh.tables_retrying = {1, 99000};
  fresh.ranges_total = {12, 99000};
  fresh.ranges_done = {7, 99000};
  fresh.conflicts["update_missing"] = {2, 99000};
  fresh.subscription_enabled = {1, 99000};
  fresh.retained_wal_bytes = {33554432, 99000};
  fresh.reverse_lag_bytes = {512, 99000};
  s.databases["shop"] = fresh;
  engine::DatabaseStats stale;
  stale.lag_bytes = {123, 94000};
  stale.tables_total = {9, 94000};
  s.databases["old"] = stale;
  s.verify_tables_total = 4;
  s.verify_tables_done = 2;
  s.verify_mismatches = 1;
  s.cutover_attempts = 2;
  s.cutover_failures = 1;
  s.last_pause_ms = 31.5;
  s.ddl_events = 3;
  s.lag_drain_bytes_per_s = {2097152, 99000};
  s.ready_in_s = {42.5, 99000};
  s.errors["unavailable"] = 2;
  return m;
}

std::string Render(const MigrationMetrics& m) { return RenderText(MigrationFamilies({m})); }

TEST(MetricsTest, RendersEveryFamilyExactly) {
  std::string text = Render(Fake());
  std::string phases;
  for (const char* p : {"Pending", "Preflight", "Provisioning", "Roles", "Schema", "InitialCopy",
                        "CatchingUp", "ReadyForCutover", "CuttingOver", "RollbackReady",
                        "Completed", "Failed", "RolledBack", "Aborted"}) {
    phases += std::string("pgshift_phase{migration=\"ab12cd34\",phase=\"") + p + "\"} " +
              (std::string(p) == "CatchingUp" ? "1" : "0") + "\n";
  }
  const std::string expected =
      "# HELP pgshift_phase 1 for the migration's current phase, 0 for the others\n"
      "# TYPE pgshift_phase gauge\n" +
      phases +
      "# HELP pgshift_phase_entered_timestamp_seconds Unix time the current phase was entered\n"
      "# TYPE pgshift_phase_entered_timestamp_seconds gauge\n"
      "pgshift_phase_entered_timestamp_seconds{migration=\"ab12cd34\"} 1763800000.5\n"
      "# HELP pgshift_ready_for_cutover 1 when every cutover precondition holds (tables "
      "replicating, lag under the threshold, no DDL, verification clean)\n"
      "# TYPE pgshift_ready_for_cutover gauge\n"
      "pgshift_ready_for_cutover{migration=\"ab12cd34\"} 0\n"
      "# HELP pgshift_cutover_max_lag_bytes Replication lag under which cutover may start "
      "(--max-lag)\n"
      "# TYPE pgshift_cutover_max_lag_bytes gauge\n"
      "pgshift_cutover_max_lag_bytes{migration=\"ab12cd34\"} 16777216\n"
      "# HELP pgshift_cutover_max_pause_seconds Longest time the cutover may hold clients "
      "(--max-pause)\n"
      "# TYPE pgshift_cutover_max_pause_seconds gauge\n"
      "pgshift_cutover_max_pause_seconds{migration=\"ab12cd34\"} 2\n"
      "# HELP pgshift_replication_lag_bytes Source WAL not yet confirmed by the target's "
      "subscription\n"
      "# TYPE pgshift_replication_lag_bytes gauge\n"
      "pgshift_replication_lag_bytes{database=\"shop\",migration=\"ab12cd34\"} 4096\n"
      "# HELP pgshift_replication_lag_seconds Replication delay reported by the source's walsender "
      "(replay lag); 0 when caught up; absent when replication is not running\n"
      "# TYPE pgshift_replication_lag_seconds gauge\n"
      "pgshift_replication_lag_seconds{database=\"shop\",migration=\"ab12cd34\"} 0.25\n"
      "# HELP pgshift_replication_lag_drain_bytes_per_second How fast the total replication lag "
      "falls while catching up (a least-squares fit over the last 30 s; negative: it grows)\n"
      "# TYPE pgshift_replication_lag_drain_bytes_per_second gauge\n"
      "pgshift_replication_lag_drain_bytes_per_second{migration=\"ab12cd34\"} 2097152\n"
      "# HELP pgshift_cutover_ready_in_seconds Estimated seconds until the lag is under the cutover "
      "threshold at the pace measured (0: it is); absent when not catching up or the lag is not "
      "falling\n"
      "# TYPE pgshift_cutover_ready_in_seconds gauge\n"
      "pgshift_cutover_ready_in_seconds{migration=\"ab12cd34\"} 42.5\n"
      "# HELP pgshift_tables Tables replicated by the migration's subscription\n"
      "# TYPE pgshift_tables gauge\n"
      "pgshift_tables{database=\"shop\",migration=\"ab12cd34\"} 4\n"
      "# HELP pgshift_tables_synced Tables whose initial copy finished and that replicate (state s "
      "or r)\n"
      "# TYPE pgshift_tables_synced gauge\n"
      "pgshift_tables_synced{database=\"shop\",migration=\"ab12cd34\"} 3\n"
      "# HELP pgshift_copy_size_bytes Initial copy: on-disk size of every published table on the "
      "source\n"
      "# TYPE pgshift_copy_size_bytes gauge\n"
      "pgshift_copy_size_bytes{database=\"shop\",migration=\"ab12cd34\"} 81920\n"
      "# HELP pgshift_copied_bytes Initial copy: source size of the tables already copied plus the "
      "bytes of COPY in flight on the target (PostgreSQL 14+); an estimate\n"
      "# TYPE pgshift_copied_bytes gauge\n"
      "pgshift_copied_bytes{database=\"shop\",migration=\"ab12cd34\"} 40960\n"
      "# HELP pgshift_copied_rows Initial copy: live rows of the copied tables on the target plus "
      "rows of COPY in flight; an estimate\n"
      "# TYPE pgshift_copied_rows gauge\n"
      "pgshift_copied_rows{database=\"shop\",migration=\"ab12cd34\"} 1200\n"
      "# HELP pgshift_replication_worker_errors_total Failed attempts of the subscription's table "
      "sync and apply workers (pg_stat_subscription_stats, PostgreSQL 15+ targets)\n"
      "# TYPE pgshift_replication_worker_errors_total counter\n"
      "pgshift_replication_worker_errors_total{database=\"shop\",migration=\"ab12cd34\","
      "worker=\"table_sync\"} 5\n"
      "pgshift_replication_worker_errors_total{database=\"shop\",migration=\"ab12cd34\","
      "worker=\"apply\"} 0\n"
      "# HELP pgshift_replication_conflicts_total Conflicts the subscription's apply worker met, "
      "by type (PostgreSQL 18+ targets); any blocks the cutover\n"
      "# TYPE pgshift_replication_conflicts_total counter\n"
      "pgshift_replication_conflicts_total{database=\"shop\",migration=\"ab12cd34\","
      "type=\"update_missing\"} 2\n"
      "# HELP pgshift_subscription_enabled 1 while the subscription into the target is enabled, 0 "
      "when it was disabled (nothing replicates)\n"
      "# TYPE pgshift_subscription_enabled gauge\n"
      "pgshift_subscription_enabled{database=\"shop\",migration=\"ab12cd34\"} 1\n"
      "# HELP pgshift_source_retained_wal_bytes WAL the source keeps for the migration's "
      "replication slot (current LSN minus the slot's restart_lsn); --max-retained-wal stops "
      "pgshift past it\n"
      "# TYPE pgshift_source_retained_wal_bytes gauge\n"
      "pgshift_source_retained_wal_bytes{database=\"shop\",migration=\"ab12cd34\"} 33554432\n"
      "# HELP pgshift_reverse_replication_lag_bytes After cutover: target WAL not yet confirmed by "
      "reverse replication to the source (what a rollback would wait for)\n"
      "# TYPE pgshift_reverse_replication_lag_bytes gauge\n"
      "pgshift_reverse_replication_lag_bytes{database=\"shop\",migration=\"ab12cd34\"} 512\n"
      "# HELP pgshift_tables_retrying Tables whose initial copy failed and waits for the "
      "subscription's retry\n"
      "# TYPE pgshift_tables_retrying gauge\n"
      "pgshift_tables_retrying{database=\"shop\",migration=\"ab12cd34\"} 1\n"
      "# HELP pgshift_copy_ranges pgshift's own copy (--copy snapshot): pieces the tables were "
      "cut into\n"
      "# TYPE pgshift_copy_ranges gauge\n"
      "pgshift_copy_ranges{database=\"shop\",migration=\"ab12cd34\"} 12\n"
      "# HELP pgshift_copy_ranges_done pgshift's own copy: pieces whose rows are committed on the "
      "target\n"
      "# TYPE pgshift_copy_ranges_done gauge\n"
      "pgshift_copy_ranges_done{database=\"shop\",migration=\"ab12cd34\"} 7\n"
      "# HELP pgshift_verify_tables Tables the verification compares\n"
      "# TYPE pgshift_verify_tables gauge\n"
      "pgshift_verify_tables{migration=\"ab12cd34\"} 4\n"
      "# HELP pgshift_verify_tables_done Tables whose verification finished\n"
      "# TYPE pgshift_verify_tables_done gauge\n"
      "pgshift_verify_tables_done{migration=\"ab12cd34\"} 2\n"
      "# HELP pgshift_verify_mismatches Tables that differ after verification\n"
      "# TYPE pgshift_verify_mismatches gauge\n"
      "pgshift_verify_mismatches{migration=\"ab12cd34\"} 1\n"
      "# HELP pgshift_cutover_attempts_total Cutover and rollback attempts started (failed ones "
      "included)\n"
      "# TYPE pgshift_cutover_attempts_total counter\n"
      "pgshift_cutover_attempts_total{migration=\"ab12cd34\"} 2\n"
      "# HELP pgshift_cutover_failures_total Cutover and rollback attempts undone (traffic stayed "
      "where it was)\n"
      "# TYPE pgshift_cutover_failures_total counter\n"
      "pgshift_cutover_failures_total{migration=\"ab12cd34\"} 1\n"
      "# HELP pgshift_cutover_last_pause_seconds How long the last successful cutover or rollback "
      "held clients\n"
      "# TYPE pgshift_cutover_last_pause_seconds gauge\n"
      "pgshift_cutover_last_pause_seconds{migration=\"ab12cd34\"} 0.0315\n"
      "# HELP pgshift_ddl_events_total DDL statements recorded on the source after the schema copy "
      "that pgshift cannot carry to the target (they block cutover)\n"
      "# TYPE pgshift_ddl_events_total counter\n"
      "pgshift_ddl_events_total{migration=\"ab12cd34\"} 3\n"
      "# HELP pgshift_errors_total Errors that stopped a step, by kind (status code)\n"
      "# TYPE pgshift_errors_total counter\n"
      "pgshift_errors_total{kind=\"unavailable\",migration=\"ab12cd34\"} 2\n";
  EXPECT_EQ(text, expected);
}

TEST(MetricsTest, StaleFiguresAreAbsentNotOld) {
  MigrationMetrics m = Fake();
  // The "old" database was measured 6 s before the snapshot: none of its figures appear.
  std::string text = Render(m);
  EXPECT_EQ(text.find("database=\"old\""), std::string::npos) << text;
  // Exactly at the limit a figure still counts; one millisecond later it is gone.
  m.stats.now_ms = 99000 + engine::kStaleAfterMs;
  EXPECT_NE(Render(m).find("pgshift_replication_lag_bytes{database=\"shop\""), std::string::npos);
  m.stats.now_ms += 1;
  text = Render(m);
  EXPECT_EQ(text.find("pgshift_replication_lag_bytes{"), std::string::npos) << text;
  EXPECT_EQ(text.find("pgshift_tables{"), std::string::npos);
  // Families stay declared, and figures that are not measurements stay.
  EXPECT_NE(text.find("# TYPE pgshift_replication_lag_bytes gauge"), std::string::npos);
  EXPECT_NE(text.find("pgshift_cutover_attempts_total{migration=\"ab12cd34\"} 2"),
            std::string::npos);
  // Never measured at all: absent too.
  m.stats.databases["shop"].lag_seconds = engine::Measured{};
  m.stats.now_ms = 99500;
  text = Render(m);
  EXPECT_EQ(text.find("pgshift_replication_lag_seconds{"), std::string::npos);
  EXPECT_NE(text.find("pgshift_replication_lag_bytes{database=\"shop\""), std::string::npos);
}

TEST(MetricsTest, UnknownOptionalFiguresAreAbsent) {
  MigrationMetrics m;
  m.labels = {{"migration", "x"}};
  m.stats.phase = "Pending";
  std::string text = Render(m);
  for (const char* absent :
       {"pgshift_phase_entered_timestamp_seconds{", "pgshift_cutover_max_lag_bytes{",
        "pgshift_cutover_last_pause_seconds{", "pgshift_verify_tables{", "pgshift_errors_total{"}) {
    EXPECT_EQ(text.find(absent), std::string::npos) << absent;
  }
  EXPECT_NE(text.find("pgshift_phase{migration=\"x\",phase=\"Pending\"} 1"), std::string::npos);
}

TEST(MetricsTest, SeveralMigrationsKeepTheirLabels) {
  MigrationMetrics a = Fake(), b = Fake();
  b.labels = {{"migration", "ns/other"}};
  b.stats.phase = "Completed";
  std::string text = RenderText(MigrationFamilies({a, b}));
  EXPECT_NE(text.find("pgshift_phase{migration=\"ns/other\",phase=\"Completed\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("pgshift_phase{migration=\"ab12cd34\",phase=\"CatchingUp\"} 1"),
            std::string::npos);
  // One HELP per family, whatever the number of migrations.
  size_t first = text.find("# HELP pgshift_phase ");
  EXPECT_EQ(text.find("# HELP pgshift_phase ", first + 1), std::string::npos);
}

TEST(MetricsServerTest, ParsesAddresses) {
  auto a = ParseHostPort("127.0.0.1:9187");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 9187);
  auto b = ParseHostPort(":0");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "0.0.0.0");
  EXPECT_EQ(b->port, 0);
  auto c = ParseHostPort("[::1]:80");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->host, "::1");
  for (const char* bad : {"9187", "host:", "host:65536", "host:-1", "::1:80", "h:8x"}) {
    auto r = ParseHostPort(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    }
  }
}

TEST(MetricsServerTest, ServesMetricsAndProbesOnAFreePort) {
  std::atomic<bool> ready{false};
  auto server = MetricsServer::Start(
      "127.0.0.1:0", [] { return std::vector<MigrationMetrics>{Fake()}; },
      [&] { return ready.load(); },
      [] {
        prometheus::MetricFamily f;
        f.name = "pgshift_operator_reconciles_total";
        f.help = "test";
        f.type = prometheus::MetricType::Counter;
        prometheus::ClientMetric m;
        m.counter.value = 7;
        f.metric.push_back(m);
        return std::vector<prometheus::MetricFamily>{f};
      });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  int port = (*server)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ((*server)->Url(), "http://127.0.0.1:" + std::to_string(port) + "/metrics");

  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), kTextContentType);
  EXPECT_EQ(res->body.rfind(Render(Fake()), 0), 0u) << res->body;
  EXPECT_NE(res->body.find("pgshift_operator_reconciles_total 7\n"), std::string::npos);

  res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  ready = true;
  res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Get("/nothing");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);

  // The same port cannot be bound twice: a clear error, no crash.
  auto second = MetricsServer::Start("127.0.0.1:" + std::to_string(port), nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);

  // After the server is gone, the port refuses connections.
  server->reset();
  httplib::Client after("127.0.0.1", port);
  after.set_connection_timeout(1);
  EXPECT_FALSE(after.Get("/healthz"));
}

}  // namespace
}  // namespace pgshift::obs
