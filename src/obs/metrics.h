// obs: what a running migration looks like to Prometheus. This layer turns engine snapshots
// (engine::StatsSnapshot) into metric families and serves them over HTTP (metrics_server.h);
// it reads the engine's figures and never touches a server or the migration itself. It knows
// nothing of Kubernetes: the operator passes its own labels ("namespace/name").
//
// Families are built afresh from snapshots on every scrape (a custom prometheus::Collectable,
// no registry of long-lived metrics), so a migration that went away or a figure that turned
// stale simply has no sample: nothing old lingers as if it were current. Every family is
// always declared (HELP and TYPE), with or without samples.
//
// Names follow Prometheus conventions: base units (_bytes, _seconds), _total for counters.
// Labels: the caller's (e.g. migration="ab12cd34"), plus database="..." on per-database
// families, phase="..." on pgshift_phase and kind="..." on pgshift_errors_total. The list with
// one line each is in docs/observability.md.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/stats.h"

namespace pgshift::obs {

using Labels = std::map<std::string, std::string>;

// Settings drawn next to the measurements (the dashboard's threshold lines).
struct MigrationExtra {
  std::optional<int64_t> max_lag_bytes;  // lag under which cutover may start (--max-lag)
  std::optional<int64_t> max_pause_ms;   // the cutover's pause budget (--max-pause)
};

// One migration's figures at scrape time.
struct MigrationMetrics {
  Labels labels;  // identifies the migration on every sample, e.g. {{"migration", "ab12cd34"}}
  engine::StatsSnapshot stats;  // its now_ms decides what is fresh
  MigrationExtra extra;
};

// The metric families of `migrations`, in a fixed order (see docs/observability.md).
std::vector<prometheus::MetricFamily> MigrationFamilies(
    const std::vector<MigrationMetrics>& migrations);

// Prometheus text exposition format (version 0.0.4).
std::string RenderText(const std::vector<prometheus::MetricFamily>& families);
inline constexpr const char* kTextContentType = "text/plain; version=0.0.4; charset=utf-8";

// Collects by calling `source` at each scrape. `source` must be safe to call from any thread.
class MigrationCollector : public prometheus::Collectable {
 public:
  using Source = std::function<std::vector<MigrationMetrics>()>;
  explicit MigrationCollector(Source source) : source_(std::move(source)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  Source source_;
};

}  // namespace pgshift::obs
