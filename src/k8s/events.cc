#include "k8s/events.h"

#include <cstdio>

#include "k8s/api_error.h"
#include "k8s/time_format.h"

namespace pgshift::k8s {

EventRecorder::EventRecorder(Client* client, std::string component, std::string instance)
    : client_(client), component_(std::move(component)), instance_(std::move(instance)) {}

Result<Json> EventRecorder::Record(const Json& object, EventType type, std::string_view reason,
                                   std::string_view message) {
  const Json meta = object.value("metadata", Json::object());
  std::string name = meta.value("name", "");
  if (name.empty()) return Status::InvalidArgument("event: the object has no name");
  std::string ns = meta.value("namespace", "");
  std::string event_ns = ns.empty() ? "default" : ns;
  std::string type_name = type == EventType::kWarning ? "Warning" : "Normal";
  auto now_sys = std::chrono::system_clock::now();
  auto now = std::chrono::steady_clock::now();
  std::string now_text = FormatTime(now_sys);
  std::string key = meta.value("uid", "") + "\x1f" + type_name + "\x1f" + std::string(reason) +
                    "\x1f" + std::string(message);

  std::unique_lock<std::mutex> lock(mu_);
  auto it = seen_.find(key);
  if (it != seen_.end() && now - it->second.last < std::chrono::minutes(10)) {
    Seen& s = it->second;
    Json patch = {{"count", s.count + 1}, {"lastTimestamp", now_text}};
    Result<Json> patched = client_->MergePatch(resources::kEvents, s.ns, s.name, patch);
    if (patched.ok()) {
      ++s.count;
      s.last = now;
      return patched;
    }
    if (!IsNotFound(patched.status())) return patched.status();
    seen_.erase(it);  // expired on the server: record a new one
  }

  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".%llx",
                static_cast<unsigned long long>(now_sys.time_since_epoch().count()));
  Json event = {
      {"apiVersion", "v1"},
      {"kind", "Event"},
      {"metadata", {{"name", name + suffix}, {"namespace", event_ns}}},
      {"involvedObject",
       {{"apiVersion", object.value("apiVersion", "")},
        {"kind", object.value("kind", "")},
        {"name", name},
        {"namespace", ns},
        {"uid", meta.value("uid", "")},
        {"resourceVersion", meta.value("resourceVersion", "")}}},
      {"reason", std::string(reason)},
      {"message", std::string(message)},
      {"type", type_name},
      {"source", {{"component", component_}}},
      {"reportingComponent", component_},
      {"reportingInstance", instance_},
      {"firstTimestamp", now_text},
      {"lastTimestamp", now_text},
      {"count", 1},
  };
  Result<Json> created = client_->CreateObject(resources::kEvents, event_ns, event);
  if (!created.ok()) return created.status().WithContext("recording event " + std::string(reason));
  seen_[key] = Seen{event_ns, event["metadata"]["name"].get<std::string>(), 1, now};
  return created;
}

}  // namespace pgshift::k8s
