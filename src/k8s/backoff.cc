#include "k8s/backoff.h"

#include <algorithm>
#include <cmath>

namespace pgshift::k8s {

Backoff::Backoff(Duration initial, Duration max, double factor, double jitter, uint64_t seed)
    : initial_(initial), max_(max), factor_(factor), jitter_(std::clamp(jitter, 0.0, 1.0)),
      rng_(seed) {}

Duration Backoff::Next() {
  double base = static_cast<double>(initial_.count()) * std::pow(factor_, attempt_);
  base = std::min(base, static_cast<double>(max_.count()));
  if (attempt_ < 64) ++attempt_;
  std::uniform_real_distribution<double> spread(1.0 - jitter_, 1.0 + jitter_);
  double d = std::min(base * spread(rng_), static_cast<double>(max_.count()));
  return Duration(static_cast<int64_t>(std::max(d, 0.0)));
}

Duration ItemBackoff::When(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  int n = failures_[key]++;
  double d = static_cast<double>(base_.count()) * std::pow(2.0, std::min(n, 62));
  d = std::min(d, static_cast<double>(max_.count()));
  return Duration(static_cast<int64_t>(d));
}

void ItemBackoff::Forget(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_.erase(key);
}

int ItemBackoff::NumRequeues(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

}  // namespace pgshift::k8s
