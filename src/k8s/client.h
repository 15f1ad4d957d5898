// A small Kubernetes REST client on JSON objects (nlohmann::json): get, list (all pages),
// create, update, delete, server-side apply, JSON merge patch, the status subresource,
// read-modify-write with retries on conflicts, and single watch requests. Reflector and
// Informer (watch.h, informer.h) build long-running watches on WatchOnce().
//
// Thread-safe. Errors are Status values as described in api_error.h.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "k8s/config.h"
#include "k8s/http.h"
#include "k8s/resource.h"

namespace pgshift::k8s {

using Json = nlohmann::json;

struct ListOptions {
  std::string label_selector{};
  std::string field_selector{};
  int64_t page_size = 500;  // the list is read in pages of this size
};

struct ObjectList {
  std::vector<Json> items{};
  std::string resource_version{};  // of the list: where a watch continues from
};

struct ApplyOptions {
  std::string field_manager{};  // required
  bool force = false;         // take fields over from other managers
};

struct DeleteOptions {
  std::string propagation_policy{};  // "", "Foreground", "Background", "Orphan"
  std::optional<int64_t> grace_period_seconds{};
  std::string precondition_uid{};
  std::string precondition_resource_version{};
};

struct WatchOptions {
  std::string resource_version{};  // "" : from now (the server's choice)
  bool allow_bookmarks = true;
  std::chrono::seconds timeout{300};  // the server ends the watch after this
  std::string label_selector{};
  std::string field_selector{};
};

struct WatchEvent {
  std::string type{};  // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
  Json object{};
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> Create(Config config);

  const Config& config() const { return http_->config(); }
  const std::string& default_namespace() const { return http_->config().default_namespace; }

  Result<Json> Get(const Resource& r, std::string_view ns, std::string_view name,
                   std::string_view subresource = "");
  Result<ObjectList> List(const Resource& r, std::string_view ns, const ListOptions& opts = {});
  Result<Json> CreateObject(const Resource& r, std::string_view ns, const Json& object);
  // PUT; the object's metadata.resourceVersion makes it conditional (409 Conflict when the
  // object changed since). With `subresource` "status", writes only the status.
  Result<Json> Update(const Resource& r, std::string_view ns, const Json& object,
                      std::string_view subresource = "");
  Result<Json> UpdateStatus(const Resource& r, std::string_view ns, const Json& object) {
    return Update(r, ns, object, "status");
  }
  Status Delete(const Resource& r, std::string_view ns, std::string_view name,
                const DeleteOptions& opts = {});
  // Server-side apply of a partial object (apiVersion, kind, metadata.name required).
  Result<Json> Apply(const Resource& r, std::string_view ns, const Json& object,
                     const ApplyOptions& opts, std::string_view subresource = "");
  // RFC 7386 JSON merge patch.
  Result<Json> MergePatch(const Resource& r, std::string_view ns, std::string_view name,
                          const Json& patch, std::string_view subresource = "");
  // Optimistic concurrency: reads the object, lets `mutate` change it, writes it back with
  // its resourceVersion, and on 409 Conflict reads again and retries (up to `attempts`).
  // `mutate` may return a non-ok Status to give up.
  Result<Json> Modify(const Resource& r, std::string_view ns, std::string_view name,
                      const std::function<Status(Json&)>& mutate,
                      std::string_view subresource = "", int attempts = 10);

  // One watch request. Calls `on_event` for every event until the server ends the stream
  // (returns ok), `on_event` returns false or `*cancel` is set (ok too), or it fails: an HTTP
  // error status (e.g. 410 Gone) or a broken connection (kUnavailable). ERROR events are
  // delivered to `on_event` like others; their object is a metav1.Status.
  Status WatchOnce(const Resource& r, std::string_view ns, const WatchOptions& opts,
                   const std::function<bool(const WatchEvent&)>& on_event,
                   const std::atomic<bool>* cancel = nullptr);

  // Any request; HTTP errors become Status values.
  Result<Json> Request(const std::string& method, const std::string& path, const Json* body,
                       const std::string& content_type = "application/json");

  // Requests sent so far, by HTTP method ("WATCH" for a watch), answered or not: what this
  // client costs the API server.
  std::map<std::string, uint64_t> RequestCounts() const;

 private:
  explicit Client(std::unique_ptr<HttpClient> http) : http_(std::move(http)) {}
  Result<Json> Send(const HttpRequest& req);

  void Count(const std::string& method);

  std::unique_ptr<HttpClient> http_;
  mutable std::mutex counts_mu_;
  std::map<std::string, uint64_t> counts_;
};

// "namespace/name", or "name" for cluster-scoped objects.
std::string KeyOf(const Json& object);
// metadata.resourceVersion, or "".
std::string ResourceVersionOf(const Json& object);

}  // namespace pgshift::k8s
