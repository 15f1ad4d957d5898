// Leader election through a coordination.k8s.io/v1 Lease, with client-go's rules: a
// candidate takes the Lease when it is free or when its holder has not renewed it for
// lease_duration (measured on the candidate's own clock from when it last saw the record
// change, so clocks need not agree); writes are conditional on resourceVersion, so two
// candidates never both win. The leader renews every retry_period; when it cannot renew
// for renew_deadline, or sees another holder, it stops leading at once: the work's
// stop_token is triggered and on_stopped_leading is called.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>

#include "k8s/client.h"

namespace pgshift::k8s {

struct LeaderElectionConfig {
  std::string lease_namespace{};
  std::string lease_name{};
  std::string identity{};  // unique per candidate, e.g. pod name + random suffix
  std::chrono::milliseconds lease_duration{std::chrono::seconds(15)};
  std::chrono::milliseconds renew_deadline{std::chrono::seconds(10)};
  std::chrono::milliseconds retry_period{std::chrono::seconds(2)};
  // On Stop() while leading: mark the Lease free so that another candidate takes over now.
  bool release_on_stop = true;
  // The highest epoch already used elsewhere (written into the objects this leader guards,
  // see Epoch()). A Lease this candidate creates or takes counts on from above it, so that
  // epochs stay increasing when the Lease was deleted and made again. -1: none.
  int64_t min_epoch = -1;
};

struct LeaderCallbacks {
  // Runs on its own thread while this candidate leads; must return soon after `stop` is
  // requested.
  std::function<void(std::stop_token stop)> on_started_leading{};
  // Called after leading ended (lost or stopped) and the work above has returned.
  std::function<void()> on_stopped_leading{};
  // Called on the election thread the moment the Lease is lost (another holder, or the renew
  // deadline passed), before the work is stopped and joined: the place to fence a stale
  // leader at once (the operator exits, as controller-runtime does). Not called on Stop().
  std::function<void()> on_lost_lease{};
  // Called whenever the observed leader changes (also to this candidate).
  std::function<void(const std::string& identity)> on_new_leader{};
};

class LeaderElector {
 public:
  static Result<std::unique_ptr<LeaderElector>> Create(Client* client, LeaderElectionConfig config,
                                                       LeaderCallbacks callbacks);
  ~LeaderElector();
  LeaderElector(const LeaderElector&) = delete;
  LeaderElector& operator=(const LeaderElector&) = delete;

  void Start();
  // Stops campaigning; if leading, stops the work, then releases the Lease.
  void Stop();
  bool IsLeader() const { return leading_; }
  // Leading, and the last renewal is younger than renew_deadline on this process's monotonic
  // clock. A process that was frozen (SIGSTOP, a long GC-like stall, a VM pause) sees false
  // here as soon as it runs again, before its election thread had a chance to notice: writes
  // guarded by it never come from a leader the others have already replaced.
  bool HoldsLease() const;
  std::string CurrentLeader() const;
  // The Lease's leaseTransitions when this process took it: greater than every earlier
  // leader's (a fencing token for writes, see StatusWriter). Meaningful while leading.
  int64_t Epoch() const { return epoch_; }

 private:
  LeaderElector(Client* client, LeaderElectionConfig config, LeaderCallbacks callbacks);
  void Run();
  // One attempt to acquire or renew. True when this candidate holds the Lease afterwards.
  bool TryAcquireOrRenew();
  void StartLeading();
  void StopLeading();
  void Release();
  void SleepFor(std::chrono::milliseconds d);

  Client* client_;
  LeaderElectionConfig config_;
  LeaderCallbacks callbacks_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> epoch_{0};
  std::atomic<bool> leading_{false};
  std::thread thread_;
  std::jthread work_;
  mutable std::mutex mu_;
  std::string observed_holder_{};
  std::string observed_renew_time_{};
  std::chrono::steady_clock::time_point observed_at_{};
  std::chrono::steady_clock::time_point last_renew_{};
  std::atomic<int64_t> last_renew_ns_{0};  // last_renew_ for other threads (HoldsLease)
};

}  // namespace pgshift::k8s
