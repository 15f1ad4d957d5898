// A work queue of object keys ("namespace/name") for reconcilers, with client-go's
// semantics: a key is queued at most once; a key being processed is not handed to a second
// worker, and if it is added meanwhile it is queued again when Done() is called; delayed
// and rate-limited (per-key exponential backoff) re-adds.
//
// Thread-safe. Typical worker:
//   while (auto key = queue.Get()) {
//     Status s = Reconcile(*key);
//     if (s.ok()) queue.Forget(*key); else queue.AddRateLimited(*key);
//     queue.Done(*key);
//   }
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "k8s/backoff.h"

namespace pgshift::k8s {

class WorkQueue {
 public:
  // Rate-limited re-adds wait base * 2^failures, at most max.
  explicit WorkQueue(Duration base = Duration(5), Duration max = std::chrono::seconds(1000));
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Add(const std::string& key);
  // Adds `key` once `delay` has passed (at the earliest of several pending delays).
  void AddAfter(const std::string& key, Duration delay);
  // AddAfter with the key's next backoff delay.
  void AddRateLimited(const std::string& key);
  // Resets the key's backoff.
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const { return limiter_.NumRequeues(key); }

  // Blocks until a key is ready or the queue is shut down (then nullopt). The caller must
  // call Done(key) when finished with it.
  std::optional<std::string> Get();
  // As Get(), but gives up after `timeout`.
  std::optional<std::string> Get(Duration timeout);
  void Done(const std::string& key);

  // Wakes all Get() callers; keys still queued are dropped, later adds are ignored.
  void ShutDown();
  bool shutting_down() const;
  // Keys ready to be handed out (not counting delayed ones).
  size_t Len() const;

 private:
  using Clock = std::chrono::steady_clock;

  std::optional<std::string> GetUntil(std::optional<Clock::time_point> deadline);
  void AddLocked(const std::string& key);
  // Moves due delayed keys to the queue; returns when the next one is due.
  std::optional<Clock::time_point> PromoteDueLocked(Clock::time_point now);

  ItemBackoff limiter_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::set<std::string> dirty_;       // queued (or to re-queue after processing)
  std::set<std::string> processing_;  // handed out, Done() not called yet
  std::multimap<Clock::time_point, std::string> delayed_;
  bool shutting_down_ = false;
};

}  // namespace pgshift::k8s
