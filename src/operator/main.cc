// pgshift-operator: reconciles PostgresUpgrade resources (see controller.h, docs/kubernetes.md).
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <stop_token>
#include <thread>

#include <CLI/CLI.hpp>
#include <prometheus/metric_family.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/process.h"
#include "common/strings.h"
#include "engine/snapshot_keeper.h"
#include "k8s/config.h"
#include "k8s/events.h"
#include "k8s/leader_election.h"
#include "k8s/logging.h"
#include "obs/metrics_server.h"
#include "operator/controller.h"

namespace {

std::stop_source g_stop;

void OnSignal(int) { g_stop.request_stop(); }

std::string Hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "pgshift-operator";
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  // A snapshot keeper started by a migration's copy runs this same executable.
  if (auto rc = pgshift::engine::MaybeRunSnapshotKeeper(argc, argv)) return *rc;
  using namespace pgshift;
  CLI::App app{
      "pgshift-operator: moves PostgreSQL databases to another major version for "
      "PostgresUpgrade resources (pgshift.dev/v1alpha1)"};
  std::string kubeconfig, ns, connect = "service-dns", address_map, work_dir = "/var/lib/pgshift-operator";
  std::string pg_bin_dir, log_format = "text", lease_namespace, metrics_addr = ":8080",
                          health_addr = ":8081";
  bool leader_elect = false;
  int workers = 2;
  double lease_seconds = 15;
  app.add_option("--kubeconfig", kubeconfig,
                 "kubeconfig file (default: in-cluster, else $KUBECONFIG, else ~/.kube/config)");
  app.add_option("--namespace", ns, "watch one namespace (default: every namespace)");
  std::string selector;
  app.add_option("--selector", selector,
                 "carry only the PostgresUpgrades with these labels (a label selector, e.g. "
                 "team=payments; default: all of them)");
  app.add_option("--connect", connect,
                 "how to reach servers: service-dns (in a cluster) | endpoints (outside one: a "
                 "ready EndpointSlice address)")
      ->check(CLI::IsMember({"service-dns", "endpoints"}));
  app.add_option("--pod-address-map", address_map,
                 "JSON file mapping Pod IPs to host:port to dial (hosts where Pod IPs do not "
                 "route; e.g. the test harness's pods.json)");
  app.add_option("--work-dir", work_dir, "folder for pgpass files and migration reports");
  app.add_option("--pg-bin-dir", pg_bin_dir,
                 "folder with pg_dump, pg_dumpall, pg_restore and psql, at least the newest source major "
                 "(default: from PATH; the image puts PostgreSQL 18's on PATH)");
  app.add_option("--workers", workers, "reconcile workers")->check(CLI::Range(1, 16));
  app.add_flag("--leader-elect", leader_elect, "run only while holding the Lease");
  app.add_option("--lease-duration", lease_seconds,
                 "seconds a leader may go without renewing before another takes over; it "
                 "renews every duration/5 and gives up after 2/3 of it")
      ->check(CLI::Range(1.0, 300.0));
  app.add_option("--lease-namespace", lease_namespace,
                 "namespace of the Lease (default: the Pod's namespace, else pgshift-system)");
  app.add_option("--metrics-addr", metrics_addr, "serve /metrics on HOST:PORT (\"0\" disables)");
  app.add_option("--health-addr", health_addr, "serve /healthz and /readyz on HOST:PORT");
  app.add_option("--log-format", log_format, "text | json")->check(CLI::IsMember({"text", "json"}));
  CLI11_PARSE(app, argc, argv);

  SetLogFormat(log_format == "json" ? LogFormat::kJson : LogFormat::kText);
  k8s::SetLogSink([](k8s::LogLevel level, std::string_view line) {
    if (level == k8s::LogLevel::kError) LogError(line);
    else if (level == k8s::LogLevel::kWarning) LogWarn(line);
    else if (level == k8s::LogLevel::kInfo) LogInfo(line);
  });

  auto config = kubeconfig.empty() ? k8s::LoadDefaultConfig() : k8s::LoadKubeconfig(kubeconfig);
  if (!config.ok()) {
    std::cerr << "pgshift-operator: " << config.status().message() << "\n";
    return 2;
  }
  config->user_agent = "pgshift-operator";
  auto client = k8s::Client::Create(*config);
  if (!client.ok()) {
    std::cerr << "pgshift-operator: " << client.status().message() << "\n";
    return 2;
  }
  const std::string identity = Hostname() + "_" + RandomHex(6);
  k8s::EventRecorder events(client->get(), "pgshift-operator", identity);

  op::ControllerOptions co;
  co.watch_namespace = ns;
  co.label_selector = selector;
  co.connect_mode = connect == "endpoints" ? op::ConnectMode::kEndpoints : op::ConnectMode::kServiceDns;
  co.address_map = op::AddressMap(address_map);
  co.work_dir = work_dir;
  co.workers = workers;
  co.tools = engine::ToolPaths::InDir(pg_bin_dir);
  // Set once the elector exists (below); the controller starts only after it leads.
  std::atomic<k8s::LeaderElector*> elected{nullptr};
  if (leader_elect) {
    co.holds_lease = [&elected]() {
      k8s::LeaderElector* e = elected.load();
      return e != nullptr && e->HoldsLease();
    };
    co.leader_epoch = [&elected]() {
      k8s::LeaderElector* e = elected.load();
      return e != nullptr ? e->Epoch() : int64_t{0};
    };
  }
  op::Controller controller(client->get(), &events, co);

  // /metrics: the engine's figures of every resource (label migration="namespace/name");
  // /healthz while the process serves; /readyz once the resources were listed (a standby
  // replica waiting for the Lease is ready too: it has nothing to load).
  std::atomic<bool> leading{false};
  auto collect = [&controller]() {
    std::vector<obs::MigrationMetrics> out;
    for (auto& r : controller.Stats()) {
      obs::MigrationMetrics m;
      m.labels = {{"migration", r.key}};
      m.stats = std::move(r.snapshot);
      m.extra.max_lag_bytes = r.max_lag_bytes;
      m.extra.max_pause_ms = r.max_pause_ms;
      out.push_back(std::move(m));
    }
    return out;
  };
  auto ready = [&]() { return controller.Synced() || (leader_elect && !leading); };
  // What the operator costs the API server: its requests by method.
  k8s::Client* api = client->get();
  auto process_families = [api]() {
    prometheus::MetricFamily f;
    f.name = "pgshift_operator_kube_api_requests_total";
    f.help = "Requests the operator sent to the Kubernetes API server, by HTTP method (WATCH: "
             "a watch); the leader election's Lease requests are not counted";
    f.type = prometheus::MetricType::Counter;
    for (const auto& [method, n] : api->RequestCounts()) {
      prometheus::ClientMetric m;
      m.label.push_back({"method", method});
      m.counter.value = static_cast<double>(n);
      f.metric.push_back(std::move(m));
    }
    return std::vector<prometheus::MetricFamily>{std::move(f)};
  };
  std::unique_ptr<obs::MetricsServer> metrics, health;
  if (metrics_addr != "0") {
    auto m = obs::MetricsServer::Start(metrics_addr, collect, ready, process_families);
    if (!m.ok()) {
      std::cerr << "pgshift-operator: --metrics-addr: " << m.status().message() << "\n";
      return 2;
    }
    metrics = std::move(*m);
    LogInfo("metrics", {{"url", metrics->Url()}});
  }
  // One address for both serves both from one server (port 0 means two servers).
  const bool shared = metrics != nullptr && health_addr == metrics_addr &&
                      !(metrics_addr.size() >= 2 && metrics_addr.substr(metrics_addr.size() - 2) == ":0");
  if (shared) {
    LogInfo("health probes", {{"url", "http://" + metrics->host() + ":" + std::to_string(metrics->port()) + "/healthz"}});
  } else if (health_addr != "0") {
    auto h = obs::MetricsServer::Start(health_addr, nullptr, ready);
    if (!h.ok()) {
      std::cerr << "pgshift-operator: --health-addr: " << h.status().message() << "\n";
      return 2;
    }
    health = std::move(*h);
    LogInfo("health probes", {{"url", "http://" + health->host() + ":" + std::to_string(health->port()) + "/healthz"}});
  }

  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  IgnoreSigpipe();  // a closed pipe or socket is an error to report, not a silent exit 141
  LogInfo("pgshift-operator starting", {{"api", config->server}, {"identity", identity}});

  if (!leader_elect) {
    controller.Run(g_stop.get_token());
    LogInfo("pgshift-operator stopped");
    return 0;
  }
  k8s::LeaderElectionConfig lc;
  lc.lease_namespace = lease_namespace;
  if (lc.lease_namespace.empty()) {
    const char* pod_ns = std::getenv("POD_NAMESPACE");
    lc.lease_namespace = pod_ns != nullptr && *pod_ns ? pod_ns : "pgshift-system";
  }
  lc.lease_name = "pgshift-operator";
  lc.lease_duration = std::chrono::milliseconds(static_cast<int64_t>(lease_seconds * 1000));
  lc.renew_deadline = lc.lease_duration * 2 / 3;
  lc.retry_period = lc.lease_duration / 5;
  lc.identity = identity;
  std::atomic<bool> lost{false};
  k8s::LeaderCallbacks cb;
  cb.on_started_leading = [&](std::stop_token stop) {
    leading = true;
    LogInfo("leading: reconciling");
    std::stop_source both;
    std::stop_callback a(stop, [&]() { both.request_stop(); });
    std::stop_callback b(g_stop.get_token(), [&]() { both.request_stop(); });
    controller.Run(both.get_token());
  };
  cb.on_stopped_leading = [&]() {
    if (!g_stop.stop_requested()) lost = true;
    g_stop.request_stop();
  };
  cb.on_lost_lease = []() {
    // Exit at once, as controller-runtime does: every engine step ends with the process, and
    // the new leader resumes from the saved state (the engine survives a crash at any step).
    LogError("lost the leader Lease; exiting so that a fresh process campaigns again");
    std::_Exit(1);
  };
  cb.on_new_leader = [](const std::string& who) { LogInfo("leader", {{"identity", who}}); };
  // The election's own client: each request is bounded well inside the renew deadline, so
  // a partitioned API server cannot hold the election thread past the moment the Lease is
  // lost (client-go bounds a renewal by the deadline the same way).
  k8s::Config election_config = *config;
  election_config.request_timeout = std::max(std::chrono::milliseconds(200), lc.renew_deadline / 3);
  auto election_client = k8s::Client::Create(election_config);
  if (!election_client.ok()) {
    std::cerr << "pgshift-operator: " << election_client.status().message() << "\n";
    return 2;
  }
  // Epochs already written into resources: a Lease made again (deleted by hand, a namespace
  // made anew) must not start below them, or every write would be refused as stale.
  {
    auto list = (*client)->List(op::kPostgresUpgrades, ns);
    for (int attempt = 1; !list.ok() && attempt < 10 && !g_stop.stop_requested(); ++attempt) {
      SleepMillis(1000);
      list = (*client)->List(op::kPostgresUpgrades, ns);
    }
    if (!list.ok()) {
      std::cerr << "pgshift-operator: listing PostgresUpgrades: " << list.status().message() << "\n";
      return 1;
    }
    for (const auto& pu : list->items) {
      const auto st = pu.find("status");
      if (st == pu.end() || !st->is_object()) continue;
      const auto e = st->find(k8s::kLeaderEpochField);
      if (e != st->end() && e->is_number_integer()) lc.min_epoch = std::max(lc.min_epoch, e->get<int64_t>());
    }
  }
  auto elector = k8s::LeaderElector::Create(election_client->get(), lc, cb);
  if (!elector.ok()) {
    std::cerr << "pgshift-operator: " << elector.status().message() << "\n";
    return 2;
  }
  elected = elector->get();
  (*elector)->Start();
  while (!g_stop.stop_requested()) {
    SleepMillis(100);
    // A watchdog that needs no answer from anyone: a leader whose renew deadline passed on
    // its own clock exits, whatever its election thread is waiting for.
    if ((*elector)->IsLeader() && !(*elector)->HoldsLease()) {
      LogError("lost the leader Lease (not renewed within the renew deadline); exiting so that "
               "a fresh process campaigns again");
      std::_Exit(1);
    }
  }
  (*elector)->Stop();
  if (lost) {
    LogError("lost the leader Lease; exiting so that a fresh process campaigns again");
    return 1;
  }
  LogInfo("pgshift-operator stopped");
  return 0;
}
