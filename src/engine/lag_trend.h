// "When can sync end?": how fast the replication lag drains, and when it will be under the
// cutover threshold at that pace.
//
// The lag is sampled every second or so while the target catches up. Its net fall per second
// (the target's apply rate minus the source's write rate, measured as one figure) is the slope
// of a least-squares line through the samples of the last `window_ms`: one sample's noise (a
// burst of writes, a checkpoint) moves it little, and a change of pace shows within the window.
// Pure: the caller feeds samples and reads estimates.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace pgshift::engine {

struct LagEstimate {
  // Bytes per second the lag falls by (negative: it grows). Unknown until the samples span
  // `min_span_ms`.
  std::optional<double> drain_bytes_per_s;
  // Seconds until the lag is under the threshold at that pace: 0 when it already is; unknown
  // when it is not falling (then `stalled` says so) or not yet measured.
  std::optional<double> ready_in_s;
  bool stalled = false;  // measured, and not falling: the target does not keep up

  // For people: "ready in ~40 s (lag falls 8.1 MB/s)", "lag not falling (+1.2 MB/s)", "".
  std::string Describe() const;
};

class LagTrend {
 public:
  explicit LagTrend(int64_t window_ms = 30000, int64_t min_span_ms = 3000)
      : window_ms_(window_ms), min_span_ms_(min_span_ms) {}
  void Add(int64_t now_ms, double lag_bytes);
  void Reset() { points_.clear(); }
  LagEstimate Estimate(double threshold_bytes) const;

 private:
  int64_t window_ms_, min_span_ms_;
  std::deque<std::pair<int64_t, double>> points_;
};

}  // namespace pgshift::engine
