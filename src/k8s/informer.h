// A local cache of one collection, kept current by a Reflector, with event handlers. After
// a relist (410) it reports the differences as adds, updates and deletes, so handlers see
// every change even when the watch missed the events.
//
// Thread-safe: Get/List from any thread; handlers run on the reflector thread, in order.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "k8s/reflector.h"
#include "k8s/workqueue.h"

namespace pgshift::k8s {

struct EventHandler {
  std::function<void(const Json& object)> on_add{};
  std::function<void(const Json& old_object, const Json& object)> on_update{};
  std::function<void(const Json& last_known)> on_delete{};
};

class Informer {
 public:
  Informer(Client* client, Reflector::Options options);
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  // REQUIRES: before Start().
  void AddHandler(EventHandler handler);
  void Start();
  void Stop();
  // True once the first list has been delivered; false when `timeout` passed first.
  bool WaitForSync(Duration timeout);

  std::optional<Json> Get(const std::string& key) const;
  std::vector<Json> List() const;
  Reflector::Stats stats() const { return reflector_.stats(); }
  std::string last_resource_version() const { return reflector_.last_resource_version(); }

 private:
  void Replace(std::vector<Json> items);
  void Apply(const WatchEvent& event);

  std::vector<EventHandler> handlers_;
  mutable std::mutex mu_;
  std::condition_variable synced_cv_;
  bool synced_ = false;
  std::map<std::string, Json> cache_;
  Reflector reflector_;
};

// A handler that adds the key (namespace/name) of every changed object to `queue`.
EventHandler EnqueueHandler(WorkQueue* queue);

}  // namespace pgshift::k8s
