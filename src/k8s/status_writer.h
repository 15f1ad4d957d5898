// One writer for the status of a kind's objects.
//
// Every status change of an object goes through Write(): writes to one object are serialized
// (one at a time, in the order they were asked), each is a PUT of the status subresource
// conditional on the resourceVersion it was computed from, and a 409 Conflict reads the object
// again and merges the change into what is there now (RFC 7386 merge patch semantics), so no
// writer's change is lost and none overwrites another's with a stale copy.
//
// With a fence (leader election), a write is refused (kAborted) when this process no longer
// holds the Lease, and each written status carries the writer's epoch (the Lease's
// leaseTransitions when this process took it) in status.leaderEpoch: a write computed by a
// leader whose epoch is older than the one already in the object is refused, even when it
// reaches the API server late (a partition healed, a frozen process woke up). The epoch is a
// fencing token in the sense of Kleppmann's "How to do distributed locking".
//
// The last object written is kept, so a status write costs one request when nobody else
// wrote in between (and none when it would change nothing).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "k8s/client.h"

namespace pgshift::k8s {

struct StatusFence {
  // True while this process may write (e.g. LeaderElector::HoldsLease).
  std::function<bool()> holds_lease{};
  // This writer's epoch (LeaderElector::Epoch); empty: no epoch is written or checked.
  std::function<int64_t()> epoch{};
};

inline constexpr const char* kLeaderEpochField = "leaderEpoch";

class StatusWriter {
 public:
  StatusWriter(Client* client, Resource resource, StatusFence fence = {});

  // Merges `patch` into the status of ns/name (RFC 7386: null removes a field). kAborted when
  // the fence refuses; kNotFound when the object is gone; the API error otherwise.
  Status Write(const std::string& ns, const std::string& name, const Json& patch);
  // Drops what is kept of ns/name (call when the object is deleted).
  void Forget(const std::string& ns, const std::string& name);

  // Counters for tests and metrics.
  int64_t puts() const;
  int64_t conflicts() const;

 private:
  struct Entry {
    std::mutex mu;  // one write at a time per object
    Json last;      // the object as last read or written; null: read it first
  };
  std::shared_ptr<Entry> EntryFor(const std::string& key);
  Status Fenced(const Json& object, int64_t* epoch) const;

  Client* client_;
  Resource resource_;
  StatusFence fence_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_;
  int64_t puts_ = 0, conflicts_ = 0;
};

}  // namespace pgshift::k8s
