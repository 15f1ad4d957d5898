// How the operator reaches PostgreSQL servers in the cluster, and the Router that moves
// clients by flipping a Kubernetes Service's selector.
#pragma once

#include <map>
#include <string>

#include "engine/router.h"
#include "k8s/client.h"
#include "operator/spec.h"

namespace pgshift::op {

enum class ConnectMode {
  kServiceDns,  // in a cluster: <service>.<namespace>.svc:<port>
  kEndpoints,   // outside one: a ready endpoint address of the Service's EndpointSlices
};

// Pod IP -> "host:port" to dial instead, for hosts where Pod IPs do not route (a test
// harness, a port-forward). The file is JSON: {"10.88.0.5": "127.0.0.5:5432"} or the fake
// kubelet's pods.json ({"ns/pod": {"podIP": ..., "address": "host:port"}}); re-read on every
// lookup, since Pods come and go.
class AddressMap {
 public:
  AddressMap() = default;
  explicit AddressMap(std::string path) : path_(std::move(path)) {}
  // The endpoint to dial for `pod_ip`:`port`; unchanged when there is no map or no entry.
  engine::Endpoint Translate(const std::string& pod_ip, int port) const;
  static std::map<std::string, std::string> Parse(const std::string& json_text);

 private:
  std::string path_;
};

// The addresses of the ready endpoints of Service `ns/name`, translated; sorted.
Result<std::vector<engine::Endpoint>> ReadyEndpoints(k8s::Client* client, const std::string& ns,
                                                     const std::string& service,
                                                     const AddressMap& map);
// A ready endpoint of a Service's EndpointSlices: the Pod IP and the port number there.
struct SliceEndpoint {
  std::string ip;
  int port = 0;
  bool operator==(const SliceEndpoint&) const = default;
};
// The ready endpoints of one EndpointSlice; sorted by IP.
std::vector<SliceEndpoint> ReadySliceEndpointsOf(const nlohmann::json& slice);
// The ready endpoints of Service `ns/name` (every slice labelled with its name, and matching
// the label selector `and_selector` if one is given); sorted by IP.
Result<std::vector<SliceEndpoint>> ReadySliceEndpoints(k8s::Client* client, const std::string& ns,
                                                       const std::string& service,
                                                       const std::string& and_selector = "");
// Pod IPs (untranslated) of the ready endpoints of Service `ns/name`; sorted.
Result<std::vector<std::string>> ReadyPodIps(k8s::Client* client, const std::string& ns,
                                             const std::string& service);

// Where to connect to Service `ns/name` (port `port`) in the given mode.
Result<engine::Endpoint> ResolveService(k8s::Client* client, ConnectMode mode,
                                        const std::string& ns, const std::string& service,
                                        int port, const AddressMap& map);

// A Service whose selector is moved between the source's Pods and the target's. It cannot
// hold clients (HoldsTraffic false): the engine's fence on the old server makes writes fail
// meanwhile, and clients reconnect through the Service to the new one. SwitchTo returns when
// the Service's EndpointSlices list only the new server's Pods, so new connections land there.
class ServiceRouter : public engine::Router {
 public:
  // `source`/`target` are the endpoints the engine knows the two servers by (its DSNs);
  // `source_service`/`target_service` are Services whose ready Pods are each server's.
  ServiceRouter(k8s::Client* client, std::string ns, std::string traffic_service,
                engine::Endpoint source, std::string source_service, engine::Endpoint target,
                std::string target_service, nlohmann::json target_selector,
                int settle_timeout_ms = 10000);

  std::string Kind() const override { return "kubernetes-service"; }
  // The Service exists; remembers its selector (an annotation) before the first switch.
  Status Check() override;
  Status Pause(int) override { return Status::Ok(); }
  Status Resume() override { return Status::Ok(); }
  Status SwitchTo(const engine::Endpoint& to) override;
  // The selector is the configuration; the traffic Service's ready EndpointSlice addresses
  // are where clients go (the target's when they are Pods of the target Service, else the
  // source's); settling while the two differ.
  Result<engine::RouterState> Observe() override;
  bool HoldsTraffic() const override { return false; }
  // kube-controller-manager moves the EndpointSlices after the selector; when it is slow (or
  // down), SwitchTo returns kDeadlineExceeded with the selector already switched.
  bool SettlesByItself() const override { return true; }
  // Where the last SwitchTo spent its time, for the log ("Service selector replaced in ...").
  const std::string& LastSwitchTimes() const { return last_switch_times_; }

 protected:
  Status WaitForEndpoints(const std::string& like_service);
  // The selector remembered in the Service's annotation (kSourceSelectorAnnotation).
  Result<nlohmann::json> SourceSelector(const nlohmann::json& svc) const;

  k8s::Client* client_;
  std::string ns_, traffic_, source_service_, target_service_;
  engine::Endpoint source_, target_;
  nlohmann::json target_selector_;
  int settle_timeout_ms_;
  Result<nlohmann::json> source_selector_ = Status::Unavailable("not read yet");
  std::string last_switch_times_;
};

}  // namespace pgshift::op
