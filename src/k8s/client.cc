#include "k8s/client.h"

#include "k8s/api_error.h"
#include "k8s/logging.h"

namespace pgshift::k8s {
namespace {

std::string MetaString(const Json& object, const char* field) {
  if (!object.is_object()) return "";
  auto meta = object.find("metadata");
  if (meta == object.end() || !meta->is_object()) return "";
  auto v = meta->find(field);
  return v != meta->end() && v->is_string() ? v->get<std::string>() : "";
}

}  // namespace

std::string KeyOf(const Json& object) {
  std::string ns = MetaString(object, "namespace");
  std::string name = MetaString(object, "name");
  return ns.empty() ? name : ns + "/" + name;
}

std::string ResourceVersionOf(const Json& object) {
  return MetaString(object, "resourceVersion");
}

Result<std::unique_ptr<Client>> Client::Create(Config config) {
  PGSHIFT_ASSIGN_OR_RETURN(auto http, HttpClient::Create(std::move(config)));
  return std::unique_ptr<Client>(new Client(std::move(http)));
}

void Client::Count(const std::string& method) {
  std::lock_guard<std::mutex> lock(counts_mu_);
  counts_[method]++;
}

std::map<std::string, uint64_t> Client::RequestCounts() const {
  std::lock_guard<std::mutex> lock(counts_mu_);
  return counts_;
}

Result<Json> Client::Send(const HttpRequest& req) {
  Count(req.method);
  Result<HttpResponse> resp = http_->Do(req);
  if (!resp.ok()) return resp.status();
  std::string what = req.method + " " + req.path;
  if (resp->status < 200 || resp->status >= 300) {
    return StatusFromResponse(what, resp->status, resp->body);
  }
  if (resp->body.empty()) return Json::object();
  Json j = Json::parse(resp->body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Internal(what + ": the answer is not JSON");
  return j;
}

Result<Json> Client::Request(const std::string& method, const std::string& path,
                             const Json* body, const std::string& content_type) {
  HttpRequest req;
  req.method = method;
  req.path = path;
  if (body != nullptr) req.body = body->dump();
  req.content_type = content_type;
  return Send(req);
}

Result<Json> Client::Get(const Resource& r, std::string_view ns, std::string_view name,
                         std::string_view subresource) {
  return Request("GET", r.Path(ns, name, subresource), nullptr);
}

Result<ObjectList> Client::List(const Resource& r, std::string_view ns, const ListOptions& opts) {
  ObjectList out;
  std::string cont;
  do {
    std::string path = r.Path(ns) + QueryString({{"labelSelector", opts.label_selector},
                                                 {"fieldSelector", opts.field_selector},
                                                 {"limit", opts.page_size > 0
                                                               ? std::to_string(opts.page_size)
                                                               : ""},
                                                 {"continue", cont}});
    PGSHIFT_ASSIGN_OR_RETURN(Json page, Request("GET", path, nullptr));
    if (page.contains("items") && page["items"].is_array()) {
      for (Json& item : page["items"]) {
        // Items of a list carry no apiVersion/kind; fill them in for the caller.
        if (!item.contains("apiVersion")) item["apiVersion"] = r.ApiVersion();
        if (!item.contains("kind") && !r.kind.empty()) item["kind"] = r.kind;
        out.items.push_back(std::move(item));
      }
    }
    const Json& meta = page.value("metadata", Json::object());
    cont = meta.value("continue", "");
    // The resourceVersion of the first page is the snapshot all pages come from.
    if (out.resource_version.empty()) out.resource_version = meta.value("resourceVersion", "");
  } while (!cont.empty());
  return out;
}

Result<Json> Client::CreateObject(const Resource& r, std::string_view ns, const Json& object) {
  return Request("POST", r.Path(ns), &object);
}

Result<Json> Client::Update(const Resource& r, std::string_view ns, const Json& object,
                            std::string_view subresource) {
  std::string name = MetaString(object, "name");
  if (name.empty()) return Status::InvalidArgument("update: object has no metadata.name");
  return Request("PUT", r.Path(ns, name, subresource), &object);
}

Status Client::Delete(const Resource& r, std::string_view ns, std::string_view name,
                      const DeleteOptions& opts) {
  Json body = {{"apiVersion", "v1"}, {"kind", "DeleteOptions"}};
  if (!opts.propagation_policy.empty()) body["propagationPolicy"] = opts.propagation_policy;
  if (opts.grace_period_seconds) body["gracePeriodSeconds"] = *opts.grace_period_seconds;
  if (!opts.precondition_uid.empty()) body["preconditions"]["uid"] = opts.precondition_uid;
  if (!opts.precondition_resource_version.empty()) {
    body["preconditions"]["resourceVersion"] = opts.precondition_resource_version;
  }
  Result<Json> r2 = Request("DELETE", r.Path(ns, name), &body);
  return r2.status();
}

Result<Json> Client::Apply(const Resource& r, std::string_view ns, const Json& object,
                           const ApplyOptions& opts, std::string_view subresource) {
  if (opts.field_manager.empty()) return Status::InvalidArgument("apply needs a field manager");
  std::string name = MetaString(object, "name");
  if (name.empty()) return Status::InvalidArgument("apply: object has no metadata.name");
  std::string path = r.Path(ns, name, subresource) +
                     QueryString({{"fieldManager", opts.field_manager},
                                  {"force", opts.force ? "true" : ""}});
  // JSON is YAML: the apply content type takes it as it is.
  return Request("PATCH", path, &object, "application/apply-patch+yaml");
}

Result<Json> Client::MergePatch(const Resource& r, std::string_view ns, std::string_view name,
                                const Json& patch, std::string_view subresource) {
  return Request("PATCH", r.Path(ns, name, subresource), &patch,
                 "application/merge-patch+json");
}

Result<Json> Client::Modify(const Resource& r, std::string_view ns, std::string_view name,
                            const std::function<Status(Json&)>& mutate,
                            std::string_view subresource, int attempts) {
  Status last;
  for (int i = 0; i < attempts; ++i) {
    PGSHIFT_ASSIGN_OR_RETURN(Json object, Get(r, ns, name));
    PGSHIFT_RETURN_IF_ERROR(mutate(object));
    Result<Json> updated = Update(r, ns, object, subresource);
    if (updated.ok() || !IsConflict(updated.status())) return updated;
    last = updated.status();
    Log(LogLevel::kDebug, "conflict on " + r.Path(ns, name) + "; reading it again");
  }
  return last.WithContext("giving up after " + std::to_string(attempts) + " conflicts");
}

Status Client::WatchOnce(const Resource& r, std::string_view ns, const WatchOptions& opts,
                         const std::function<bool(const WatchEvent&)>& on_event,
                         const std::atomic<bool>* cancel) {
  HttpRequest req;
  req.path = r.Path(ns) +
             QueryString({{"watch", "true"},
                          {"resourceVersion", opts.resource_version},
                          {"allowWatchBookmarks", opts.allow_bookmarks ? "true" : ""},
                          {"timeoutSeconds", std::to_string(opts.timeout.count())},
                          {"labelSelector", opts.label_selector},
                          {"fieldSelector", opts.field_selector}});
  // The server ends the watch at timeoutSeconds; the client gives it some slack beyond.
  req.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(opts.timeout) +
                std::chrono::seconds(30);
  Status parse_error;
  auto on_line = [&](std::string_view line) {
    Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("type")) {
      parse_error = Status::Internal("watch " + r.Path(ns) + ": malformed event");
      return false;
    }
    WatchEvent ev;
    ev.type = j["type"].get<std::string>();
    ev.object = std::move(j["object"]);
    return on_event(ev);
  };
  std::string error_body;
  Count("WATCH");
  Result<long> code = http_->Stream(req, on_line, cancel, &error_body);
  if (!code.ok()) return code.status();
  if (!parse_error.ok()) return parse_error;
  if (*code != 0 && (*code < 200 || *code >= 300)) {
    return StatusFromResponse("GET " + req.path, *code, error_body);
  }
  return Status::Ok();
}

}  // namespace pgshift::k8s
