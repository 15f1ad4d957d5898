// A small HTTP server for Prometheus scrapes and health probes, shared by `pgshift upgrade
// --metrics-addr` and the operator's metrics port:
//
//   GET /metrics   Prometheus text format: the families of `collect` (metrics.h), then those
//                  of `more` (the caller's own, e.g. the operator's reconcile counters)
//   GET /healthz   200 "ok" while the process serves at all (liveness)
//   GET /readyz    200 "ready" when `ready` returns true (or no `ready` was given), else 503
//
//   auto server = obs::MetricsServer::Start("127.0.0.1:0", collect);
//   if (!server.ok()) return server.status();
//   fprintf(stderr, "metrics at %s\n", (*server)->Url().c_str());
//
// The callbacks run on the server's worker threads, possibly several at once: they must be
// thread-safe and quick (take snapshots; never query a database from them). Destroying the
// server stops it and waits for its threads; everything the callbacks use must outlive it.
#pragma once

#include <prometheus/metric_family.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "obs/metrics.h"

namespace pgshift::obs {

struct HostPort {
  std::string host;  // as given; "0.0.0.0" when empty (":9187" listens on every interface)
  int port = 0;      // 0: any free port
};

// "HOST:PORT", "[v6addr]:PORT" or ":PORT".
Result<HostPort> ParseHostPort(const std::string& text);

class MetricsServer {
 public:
  using CollectFn = std::function<std::vector<MigrationMetrics>()>;
  using ReadyFn = std::function<bool()>;
  using FamiliesFn = std::function<std::vector<prometheus::MetricFamily>()>;

  // Binds `host_port` (port 0: any free port; port() tells which) and serves on a thread of
  // its own. Fails with InvalidArgument for a malformed address and Unavailable when the
  // address cannot be bound.
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& host_port,
                                                      CollectFn collect, ReadyFn ready = nullptr,
                                                      FamiliesFn more = nullptr);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }
  const std::string& host() const { return host_; }
  // http://HOST:PORT/metrics with the bound port (IPv6 hosts in brackets).
  std::string Url() const;

 private:
  struct Impl;
  MetricsServer() = default;

  std::unique_ptr<Impl> impl_;
  std::string host_;
  int port_ = 0;
};

}  // namespace pgshift::obs
