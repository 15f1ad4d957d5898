#include "operator/cluster.h"

#include <algorithm>
#include <set>

#include "common/clock.h"
#include "common/files.h"
#include "engine/server_ops.h"

namespace pgshift::op {

using nlohmann::json;

std::map<std::string, std::string> AddressMap::Parse(const std::string& text) {
  std::map<std::string, std::string> out;
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return out;
  for (const auto& [k, v] : j.items()) {
    if (v.is_string()) {
      out[k] = v.get<std::string>();
    } else if (v.is_object() && v.contains("podIP") && v.contains("address") &&
               v["podIP"].is_string() && v["address"].is_string()) {
      out[v["podIP"].get<std::string>()] = v["address"].get<std::string>();
    }
  }
  return out;
}

engine::Endpoint AddressMap::Translate(const std::string& pod_ip, int port) const {
  engine::Endpoint e{pod_ip, port};
  if (path_.empty()) return e;
  auto text = ReadFile(path_);
  if (!text.ok()) return e;
  auto m = Parse(*text);
  auto it = m.find(pod_ip);
  if (it == m.end()) return e;
  const std::string& a = it->second;
  size_t colon = a.rfind(':');
  if (colon == std::string::npos) return {a, port};
  try {
    return {a.substr(0, colon), std::stoi(a.substr(colon + 1))};
  } catch (const std::exception&) {
    return {a.substr(0, colon), port};
  }
}

std::vector<SliceEndpoint> ReadySliceEndpointsOf(const nlohmann::json& slice) {
  std::vector<SliceEndpoint> out;
  int port = 0;
  if (slice.contains("ports") && slice["ports"].is_array() && !slice["ports"].empty()) {
    port = slice["ports"][0].value("port", 0);
  }
  if (!slice.contains("endpoints") || !slice["endpoints"].is_array()) return out;
  for (const auto& ep : slice["endpoints"]) {
    bool ready = true;
    if (ep.contains("conditions") && ep["conditions"].contains("ready") &&
        ep["conditions"]["ready"].is_boolean()) {
      ready = ep["conditions"]["ready"].get<bool>();
    }
    if (!ready || !ep.contains("addresses")) continue;
    for (const auto& a : ep["addresses"]) out.push_back({a.get<std::string>(), port});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.ip < b.ip; });
  return out;
}

Result<std::vector<SliceEndpoint>> ReadySliceEndpoints(k8s::Client* client, const std::string& ns,
                                                       const std::string& service,
                                                       const std::string& and_selector) {
  k8s::ListOptions lo;
  lo.label_selector = "kubernetes.io/service-name=" + service;
  if (!and_selector.empty()) lo.label_selector += "," + and_selector;
  PGSHIFT_ASSIGN_OR_RETURN(k8s::ObjectList list,
                           client->List(k8s::resources::kEndpointSlices, ns, lo));
  std::vector<SliceEndpoint> out;
  for (const auto& slice : list.items) {
    for (auto& e : ReadySliceEndpointsOf(slice)) out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.ip < b.ip; });
  return out;
}

Result<std::vector<engine::Endpoint>> ReadyEndpoints(k8s::Client* client, const std::string& ns,
                                                     const std::string& service,
                                                     const AddressMap& map) {
  PGSHIFT_ASSIGN_OR_RETURN(auto eps, ReadySliceEndpoints(client, ns, service));
  std::vector<engine::Endpoint> out;
  for (const auto& e : eps) out.push_back(map.Translate(e.ip, e.port));
  return out;
}

Result<std::vector<std::string>> ReadyPodIps(k8s::Client* client, const std::string& ns,
                                             const std::string& service) {
  PGSHIFT_ASSIGN_OR_RETURN(auto eps, ReadySliceEndpoints(client, ns, service));
  std::vector<std::string> out;
  for (const auto& e : eps) out.push_back(e.ip);
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result<engine::Endpoint> ResolveService(k8s::Client* client, ConnectMode mode,
                                        const std::string& ns, const std::string& service,
                                        int port, const AddressMap& map) {
  if (mode == ConnectMode::kServiceDns) return engine::Endpoint{service + "." + ns + ".svc", port};
  PGSHIFT_ASSIGN_OR_RETURN(auto eps, ReadyEndpoints(client, ns, service, map));
  if (eps.empty()) {
    return Status::Unavailable("Service " + ns + "/" + service + " has no ready endpoint");
  }
  if (eps.size() > 1) {
    return Status::FailedPrecondition("Service " + ns + "/" + service + " has " +
                                      std::to_string(eps.size()) +
                                      " ready endpoints; pgshift needs the one primary server");
  }
  return eps[0];
}

ServiceRouter::ServiceRouter(k8s::Client* client, std::string ns, std::string traffic_service,
                             engine::Endpoint source, std::string source_service,
                             engine::Endpoint target, std::string target_service,
                             json target_selector, int settle_timeout_ms)
    : client_(client),
      ns_(std::move(ns)),
      traffic_(std::move(traffic_service)),
      source_service_(std::move(source_service)),
      target_service_(std::move(target_service)),
      source_(std::move(source)),
      target_(std::move(target)),
      target_selector_(std::move(target_selector)),
      settle_timeout_ms_(settle_timeout_ms) {}

Status ServiceRouter::Check() {
  auto svc = client_->Get(k8s::resources::kServices, ns_, traffic_);
  if (!svc.ok()) return svc.status().WithContext("traffic Service " + ns_ + "/" + traffic_);
  const json& meta = (*svc)["metadata"];
  if (meta.contains("annotations") && meta["annotations"].contains(kSourceSelectorAnnotation)) {
    source_selector_ = SourceSelector(*svc);
    return Status::Ok();
  }
  json selector = (*svc)["spec"].value("selector", json::object());
  if (selector.empty()) {
    return Status::FailedPrecondition("traffic Service " + ns_ + "/" + traffic_ +
                                      " has no selector; pgshift moves clients by changing it");
  }
  if (selector == target_selector_) return Status::Ok();  // already moved; nothing to remember
  json patch = {{"metadata", {{"annotations", {{kSourceSelectorAnnotation, selector.dump()}}}}}};
  auto r = client_->MergePatch(k8s::resources::kServices, ns_, traffic_, patch);
  if (!r.ok()) return r.status().WithContext("annotating the traffic Service");
  source_selector_ = selector;
  return Status::Ok();
}

Result<json> ServiceRouter::SourceSelector(const json& svc) const {
  const json& meta = svc["metadata"];
  if (!meta.contains("annotations") || !meta["annotations"].is_object() ||
      !meta["annotations"].contains(kSourceSelectorAnnotation)) {
    return Status::FailedPrecondition("the traffic Service lost its " +
                                      std::string(kSourceSelectorAnnotation) +
                                      " annotation; cannot restore the source's selector");
  }
  json sel = json::parse(meta["annotations"][kSourceSelectorAnnotation].get<std::string>(), nullptr,
                         false);
  if (!sel.is_object() || sel.empty()) return Status::Internal("bad source selector annotation");
  return sel;
}

Status ServiceRouter::SwitchTo(const engine::Endpoint& to) {
  if (!(to == source_) && !(to == target_)) {
    return Status::InvalidArgument("the Service router knows " + source_.ToString() + " and " +
                                   target_.ToString() + ", not " + to.ToString());
  }
  const bool to_target = to == target_;
  const int64_t start_us = MonotonicMicros();
  if (!to_target && !source_selector_.ok()) {
    // Not read by Check (a recovery): from the Service's annotation.
    auto svc = client_->Get(k8s::resources::kServices, ns_, traffic_);
    if (!svc.ok()) return svc.status().WithContext("reading the traffic Service");
    source_selector_ = SourceSelector(*svc);
  }
  if (!to_target && !source_selector_.ok()) return source_selector_.status();
  // One request: the selector replaced whole (a merge patch would keep the other side's keys).
  const json patch = json::array({{{"op", "replace"},
                                   {"path", "/spec/selector"},
                                   {"value", to_target ? target_selector_ : *source_selector_}}});
  auto updated = client_->Request("PATCH", k8s::resources::kServices.Path(ns_, traffic_), &patch,
                                  "application/json-patch+json");
  if (!updated.ok()) return updated.status().WithContext("switching the traffic Service");
  const int64_t patched_us = MonotonicMicros();
  Status s = WaitForEndpoints(to_target ? target_service_ : source_service_);
  last_switch_times_ = "Service selector replaced in " +
                       engine::Ms((patched_us - start_us) / 1000.0) + " ms" +
                       ", its endpoints followed in " +
                       engine::Ms((MonotonicMicros() - patched_us) / 1000.0) + " ms";
  return s;
}

Status ServiceRouter::WaitForEndpoints(const std::string& like_service) {
  const int64_t deadline = MonotonicMillis() + settle_timeout_ms_;
  // What the Service must lead to, read again every tenth try (a Pod that restarted meanwhile):
  // every read is an API request inside the clients' pause.
  Result<std::vector<std::string>> want = Status::Unavailable("not read yet");
  for (int attempt = 0;; ++attempt) {
    if (!like_service.empty() && (!want.ok() || attempt % 10 == 0)) {
      want = ReadyPodIps(client_, ns_, like_service);
    }
    auto have = ReadyPodIps(client_, ns_, traffic_);
    if (have.ok() && !have->empty()) {
      if (!like_service.empty()) {
        if (want.ok() && *want == *have) return Status::Ok();
      } else {
        // Back to a source known by host: done once no target Pod is left behind the Service.
        auto tgt = ReadyPodIps(client_, ns_, target_service_);
        if (tgt.ok()) {
          std::set<std::string> t(tgt->begin(), tgt->end());
          bool any = std::any_of(have->begin(), have->end(),
                                 [&](const std::string& ip) { return t.count(ip) > 0; });
          if (!any) return Status::Ok();
        }
      }
    }
    if (MonotonicMillis() > deadline) {
      return Status::DeadlineExceeded("the traffic Service's endpoints did not follow its new "
                                      "selector in time");
    }
    SleepMillis(10);
  }
}

Result<engine::RouterState> ServiceRouter::Observe() {
  PGSHIFT_ASSIGN_OR_RETURN(json svc, client_->Get(k8s::resources::kServices, ns_, traffic_));
  json selector = json::object();
  if (svc.contains("spec") && svc["spec"].is_object() && svc["spec"].contains("selector") &&
      svc["spec"]["selector"].is_object()) {
    selector = svc["spec"]["selector"];
  }
  engine::RouterState st;
  const bool to_target = selector == target_selector_;
  // No selector: the Service's own EndpointSlice (SliceBackend, pooler.h) is its configuration.
  const bool detached = selector.empty();
  st.config = {to_target ? target_ : source_};
  auto have = ReadyPodIps(client_, ns_, traffic_);
  auto target_pods = ReadyPodIps(client_, ns_, target_service_);
  if (detached && (!have.ok() || !target_pods.ok())) {
    return Status::Unavailable("Service " + traffic_ +
                               " has no selector and its EndpointSlices cannot be read (" +
                               (have.ok() ? target_pods : have).status().message() + ")");
  }
  if (!have.ok() || !target_pods.ok()) {
    // The selector is all that could be read: clients follow it as the endpoints catch up.
    st.leads_to = st.config;
    st.settling = true;
    st.detail = std::string("selector leads to the ") + (to_target ? "target" : "source") +
                "; endpoints unknown (" + (have.ok() ? target_pods : have).status().message() + ")";
    return st;
  }
  std::set<std::string> target_ips(target_pods->begin(), target_pods->end());
  int on_target = 0, elsewhere = 0;
  for (const auto& ip : *have) (target_ips.count(ip) ? on_target : elsewhere)++;
  if (on_target > 0) st.leads_to.push_back(target_);
  if (elsewhere > 0) st.leads_to.push_back(source_);
  const std::string endpoints = "ready endpoints: " + std::to_string(on_target) + " target, " +
                                std::to_string(elsewhere) + " other";
  if (detached) {
    st.config = st.leads_to;
    st.detail = "no selector, pgshift's EndpointSlice; " + endpoints;
    return st;
  }
  st.settling = st.leads_to != st.config;
  st.detail =
      std::string("selector leads to the ") + (to_target ? "target" : "source") + "; " + endpoints;
  return st;
}

}  // namespace pgshift::op
