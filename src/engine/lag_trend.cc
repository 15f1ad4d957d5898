#include "engine/lag_trend.h"

#include <cmath>

#include "common/strings.h"

namespace pgshift::engine {

void LagTrend::Add(int64_t now_ms, double lag_bytes) {
  if (!points_.empty() && now_ms <= points_.back().first) return;  // one sample per instant
  points_.emplace_back(now_ms, lag_bytes);
  while (!points_.empty() && now_ms - points_.front().first > window_ms_) points_.pop_front();
}

LagEstimate LagTrend::Estimate(double threshold_bytes) const {
  LagEstimate e;
  if (points_.empty()) return e;
  const double lag = points_.back().second;
  if (lag <= threshold_bytes) e.ready_in_s = 0;
  if (points_.size() < 3 || points_.back().first - points_.front().first < min_span_ms_) return e;
  // Least squares over (seconds since the first sample, lag).
  const int64_t t0 = points_.front().first;
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [t, y] : points_) {
    const double x = static_cast<double>(t - t0) / 1000.0;
    n += 1;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double den = n * sxx - sx * sx;
  if (den <= 0) return e;
  const double slope = (n * sxy - sx * sy) / den;  // bytes per second
  e.drain_bytes_per_s = -slope;
  if (lag <= threshold_bytes) return e;
  // A lag that falls so slowly it would take more than a day is not falling: an estimate of
  // "ready in ~1183044404104 h" (seen under a busy machine's noise) tells nobody anything.
  constexpr double kLongestEtaS = 24 * 3600;
  if (slope >= 0 || (lag - threshold_bytes) / -slope > kLongestEtaS) {
    e.stalled = true;
    return e;
  }
  e.ready_in_s = (lag - threshold_bytes) / -slope;
  return e;
}

std::string LagEstimate::Describe() const {
  if (!drain_bytes_per_s) {
    return ready_in_s && *ready_in_s == 0 ? "lag under the cutover threshold" : "";
  }
  const double d = *drain_bytes_per_s;
  const std::string pace = FormatBytes(std::fabs(d)) + "/s";
  if (ready_in_s) {
    if (*ready_in_s == 0) return "lag under the cutover threshold";
    return "ready in ~" + FormatDurationShort(*ready_in_s) + " (lag falls " + pace + ")";
  }
  if (stalled)
    return "lag not falling (" + std::string(d < 0 ? "+" : "") + pace +
           "): the target does not keep up";
  return "";
}

}  // namespace pgshift::engine
