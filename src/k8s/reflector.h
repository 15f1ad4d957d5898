// A list-then-watch loop that keeps a consumer in step with a collection for as long as it
// runs, across everything that ends a single watch:
//  - the server's timeout: watch again from the last resourceVersion seen (events and
//    BOOKMARKs both advance it);
//  - a dropped stream or an unreachable apiserver: reconnect with jittered backoff and
//    resume from the last resourceVersion;
//  - 410 Gone / Expired (the version was compacted away): list again and hand the consumer
//    the full state (OnReplace), then watch from the new list's version.
//
// Handlers run on the reflector's own thread, one at a time, in order.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "k8s/backoff.h"
#include "k8s/client.h"

namespace pgshift::k8s {

class Reflector {
 public:
  struct Handlers {
    // The complete current state (after the first list and after every relist).
    std::function<void(std::vector<Json> items, const std::string& resource_version)> on_replace{};
    // ADDED, MODIFIED or DELETED.
    std::function<void(const WatchEvent& event)> on_event{};
  };
  struct Options {
    Resource resource{};
    std::string ns{};  // "" : all namespaces (or a cluster-scoped resource)
    std::string label_selector{};
    std::string field_selector{};
    std::chrono::seconds watch_timeout{300};
    Duration backoff_initial{200};
    Duration backoff_max{std::chrono::seconds(10)};
    // Resume: skip the first list and watch from this version (a consumer that kept its
    // state). If the version is gone, the reflector relists as usual.
    std::string resume_from{};
  };
  struct Stats {
    int lists = 0;
    int watches = 0;
    int reconnects = 0;  // watches that ended in an error other than 410
    int expired = 0;     // 410 Gone, as HTTP status or ERROR event
    int bookmarks = 0;
    int events = 0;
  };

  Reflector(Client* client, Options options, Handlers handlers);
  ~Reflector();
  Reflector(const Reflector&) = delete;
  Reflector& operator=(const Reflector&) = delete;

  void Start();
  // Ends the current watch and joins the thread. Idempotent.
  void Stop();

  std::string last_resource_version() const;
  Stats stats() const;

 private:
  void Run();
  bool ListAndReplace(Backoff& backoff);
  void SleepFor(Duration d);

  Client* client_;
  Options options_;
  Handlers handlers_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::string resource_version_{};
  Stats stats_;
};

}  // namespace pgshift::k8s
