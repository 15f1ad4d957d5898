// Retry delays: a jittered exponential backoff for reconnects, and a per-item exponential
// backoff for rate-limited requeues (client-go's ItemExponentialFailureRateLimiter).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <string>

namespace pgshift::k8s {

using Duration = std::chrono::milliseconds;

// Not thread-safe: one per retry loop.
class Backoff {
 public:
  // Delays grow from `initial` by `factor` up to `max`; each is then spread by +-`jitter`
  // (a fraction, 0..1) so that many clients do not retry in step.
  Backoff(Duration initial, Duration max, double factor = 2.0, double jitter = 0.2,
          uint64_t seed = std::random_device{}());

  Duration Next();
  void Reset() { attempt_ = 0; }
  int attempts() const { return attempt_; }

 private:
  Duration initial_;
  Duration max_;
  double factor_;
  double jitter_;
  int attempt_ = 0;
  std::mt19937_64 rng_;
};

// Thread-safe.
class ItemBackoff {
 public:
  ItemBackoff(Duration base = Duration(5), Duration max = std::chrono::seconds(1000))
      : base_(base), max_(max) {}

  // The delay before retrying `key` once more: base * 2^(failures so far), capped.
  Duration When(const std::string& key);
  // Clears `key`'s failures (after it was processed successfully).
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const;

 private:
  Duration base_;
  Duration max_;
  mutable std::mutex mu_;
  std::map<std::string, int> failures_;
};

}  // namespace pgshift::k8s
