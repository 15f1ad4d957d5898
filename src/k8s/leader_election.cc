#include "k8s/leader_election.h"

#include <algorithm>

#include "k8s/api_error.h"
#include "k8s/logging.h"
#include "k8s/time_format.h"

namespace pgshift::k8s {

Result<std::unique_ptr<LeaderElector>> LeaderElector::Create(Client* client,
                                                             LeaderElectionConfig config,
                                                             LeaderCallbacks callbacks) {
  if (client == nullptr) return Status::InvalidArgument("leader election needs a client");
  if (config.lease_name.empty() || config.lease_namespace.empty() || config.identity.empty()) {
    return Status::InvalidArgument("leader election needs a lease name, namespace and identity");
  }
  if (config.lease_duration <= config.renew_deadline) {
    return Status::InvalidArgument("lease_duration must be greater than renew_deadline");
  }
  if (config.renew_deadline <= config.retry_period) {
    return Status::InvalidArgument("renew_deadline must be greater than retry_period");
  }
  return std::unique_ptr<LeaderElector>(
      new LeaderElector(client, std::move(config), std::move(callbacks)));
}

LeaderElector::LeaderElector(Client* client, LeaderElectionConfig config,
                             LeaderCallbacks callbacks)
    : client_(client), config_(std::move(config)), callbacks_(std::move(callbacks)) {}

LeaderElector::~LeaderElector() { Stop(); }

void LeaderElector::Start() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void LeaderElector::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::string LeaderElector::CurrentLeader() const {
  std::lock_guard<std::mutex> lock(mu_);
  return observed_holder_;
}

void LeaderElector::SleepFor(std::chrono::milliseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!stop_ && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void LeaderElector::Run() {
  while (!stop_) {
    // A renewal counts from when it was sent, not from when the answer came: a slow or
    // partitioned API server must not stretch this process's view of its own Lease.
    auto now = std::chrono::steady_clock::now();
    bool held = TryAcquireOrRenew();
    if (held) {
      last_renew_ = now;
      last_renew_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           now.time_since_epoch()).count();
      if (!leading_) StartLeading();
    } else if (leading_) {
      std::string holder = CurrentLeader();
      bool other = !holder.empty() && holder != config_.identity;
      if (other || now - last_renew_ >= config_.renew_deadline) {
        Log(LogLevel::kWarning, "leader election: " + config_.identity + " lost lease " +
                                    config_.lease_namespace + "/" + config_.lease_name +
                                    (other ? " to " + holder : " (renew deadline passed)"));
        if (callbacks_.on_lost_lease) callbacks_.on_lost_lease();
        StopLeading();
      }
    }
    SleepFor(config_.retry_period);
  }
  if (leading_) {
    StopLeading();
    if (config_.release_on_stop) Release();
  }
}

bool LeaderElector::HoldsLease() const {
  if (!leading_) return false;
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  const int64_t deadline =
      std::chrono::duration_cast<std::chrono::nanoseconds>(config_.renew_deadline).count();
  return now - last_renew_ns_.load() < deadline;
}

void LeaderElector::StartLeading() {
  leading_ = true;
  Log(LogLevel::kInfo, "leader election: " + config_.identity + " leads " +
                           config_.lease_namespace + "/" + config_.lease_name);
  if (callbacks_.on_started_leading) {
    work_ = std::jthread([fn = callbacks_.on_started_leading](std::stop_token st) { fn(st); });
  }
}

void LeaderElector::StopLeading() {
  leading_ = false;
  if (work_.joinable()) {
    work_.request_stop();
    work_.join();
  }
  if (callbacks_.on_stopped_leading) callbacks_.on_stopped_leading();
}

bool LeaderElector::TryAcquireOrRenew() {
  const Resource& leases = resources::kLeases;
  auto now_sys = std::chrono::system_clock::now();
  auto now = std::chrono::steady_clock::now();
  std::string now_text = FormatMicroTime(now_sys);
  int duration_s = static_cast<int>(
      std::chrono::duration_cast<std::chrono::seconds>(config_.lease_duration).count());
  if (duration_s < 1) duration_s = 1;

  Result<Json> got = client_->Get(leases, config_.lease_namespace, config_.lease_name);
  if (!got.ok() && !IsNotFound(got.status())) {
    Log(LogLevel::kWarning, "leader election: reading lease: " + got.status().ToString());
    return false;
  }
  auto note_holder = [&](const std::string& holder) {
    bool changed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      changed = holder != observed_holder_;
      observed_holder_ = holder;
    }
    if (changed && callbacks_.on_new_leader && !holder.empty()) callbacks_.on_new_leader(holder);
  };
  if (!got.ok()) {
    Json lease = {
        {"apiVersion", "coordination.k8s.io/v1"},
        {"kind", "Lease"},
        {"metadata", {{"name", config_.lease_name}, {"namespace", config_.lease_namespace}}},
        {"spec",
         {{"holderIdentity", config_.identity},
          {"leaseDurationSeconds", duration_s},
          {"acquireTime", now_text},
          {"renewTime", now_text},
          {"leaseTransitions", std::max<int64_t>(0, config_.min_epoch + 1)}}}};
    Result<Json> created = client_->CreateObject(leases, config_.lease_namespace, lease);
    if (!created.ok()) return false;  // someone else created it first
    epoch_ = (*created)["spec"].value("leaseTransitions", int64_t{0});
    {
      std::lock_guard<std::mutex> lock(mu_);
      observed_renew_time_ = now_text;
      observed_at_ = now;
    }
    note_holder(config_.identity);
    return true;
  }

  Json lease = std::move(*got);
  Json& spec = lease["spec"];
  if (!spec.is_object()) spec = Json::object();
  std::string holder = spec.value("holderIdentity", "");
  std::string renew = spec.value("renewTime", "");
  int held_for_s = spec.value("leaseDurationSeconds", duration_s);
  bool expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (holder != observed_holder_ || renew != observed_renew_time_) {
      observed_renew_time_ = renew;
      observed_at_ = now;
    }
    expired = now - observed_at_ >= std::chrono::seconds(held_for_s);
  }
  note_holder(holder);
  if (!holder.empty() && holder != config_.identity && !expired) return false;

  if (holder != config_.identity) {
    spec["acquireTime"] = now_text;
    // Every change of holder counts (also after a release), so that the count is a fencing
    // token: each leader's epoch is greater than every earlier leader's.
    spec["leaseTransitions"] =
        std::max(spec.value("leaseTransitions", int64_t{0}) + 1, config_.min_epoch + 1);
  }
  spec["holderIdentity"] = config_.identity;
  spec["leaseDurationSeconds"] = duration_s;
  spec["renewTime"] = now_text;
  // Conditional on the resourceVersion just read: a concurrent writer makes this a 409.
  Result<Json> updated = client_->Update(leases, config_.lease_namespace, lease);
  if (!updated.ok()) {
    if (!IsConflict(updated.status())) {
      Log(LogLevel::kWarning, "leader election: updating lease: " + updated.status().ToString());
    }
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    observed_renew_time_ = now_text;
    observed_at_ = now;
  }
  if (!leading_) epoch_ = (*updated)["spec"].value("leaseTransitions", int64_t{0});
  note_holder(config_.identity);
  return true;
}

void LeaderElector::Release() {
  Result<Json> released = client_->Modify(
      resources::kLeases, config_.lease_namespace, config_.lease_name, [this](Json& lease) {
        if (lease["spec"].value("holderIdentity", "") != config_.identity) {
          return Status::Aborted("the lease is no longer ours");
        }
        lease["spec"]["holderIdentity"] = "";
        lease["spec"]["leaseDurationSeconds"] = 1;
        return Status::Ok();
      });
  if (!released.ok() && released.status().code() != StatusCode::kAborted) {
    Log(LogLevel::kWarning, "leader election: releasing lease: " + released.status().ToString());
  }
}

}  // namespace pgshift::k8s
