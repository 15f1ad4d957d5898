// Records core/v1 Events about objects, as `kubectl describe` shows them. A repeat of the
// same (object, type, reason, message) within ten minutes bumps the existing Event's count
// instead of creating another. Thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "k8s/client.h"

namespace pgshift::k8s {

enum class EventType { kNormal, kWarning };

class EventRecorder {
 public:
  // `component` names the reporter (e.g. "pgshift-operator"); `instance` this replica.
  EventRecorder(Client* client, std::string component, std::string instance = "");

  // `object` is the involved object as read from the API (apiVersion, kind and metadata with
  // name, namespace, uid). Returns the Event as written.
  Result<Json> Record(const Json& object, EventType type, std::string_view reason,
                      std::string_view message);

 private:
  struct Seen {
    std::string ns{};
    std::string name{};
    int count = 0;
    std::chrono::steady_clock::time_point last;
  };

  Client* client_;
  std::string component_{};
  std::string instance_{};
  std::mutex mu_;
  std::map<std::string, Seen> seen_;
};

}  // namespace pgshift::k8s
