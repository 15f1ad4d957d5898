// Which REST collection an object lives in. The client does no discovery: callers name the
// group, version and plural (constants below for the kinds pgshift uses).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgshift::k8s {

struct Resource {
  std::string group{};    // "" for the core group
  std::string version{};  // "v1"
  std::string plural{};   // "pods"
  bool namespaced = true;
  std::string kind{};     // "Pod"

  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
  // "/api/v1/namespaces/NS/pods/NAME/SUB"; `ns` is ignored for cluster-scoped resources and
  // may be empty for a list across all namespaces.
  std::string Path(std::string_view ns, std::string_view name = "",
                   std::string_view subresource = "") const;
};

namespace resources {
inline const Resource kNamespaces{"", "v1", "namespaces", false, "Namespace"};
inline const Resource kPods{"", "v1", "pods", true, "Pod"};
inline const Resource kPodTemplates{"", "v1", "podtemplates", true, "PodTemplate"};
inline const Resource kServices{"", "v1", "services", true, "Service"};
inline const Resource kEndpoints{"", "v1", "endpoints", true, "Endpoints"};
inline const Resource kConfigMaps{"", "v1", "configmaps", true, "ConfigMap"};
inline const Resource kSecrets{"", "v1", "secrets", true, "Secret"};
inline const Resource kServiceAccounts{"", "v1", "serviceaccounts", true, "ServiceAccount"};
inline const Resource kEvents{"", "v1", "events", true, "Event"};
inline const Resource kPersistentVolumeClaims{"", "v1", "persistentvolumeclaims", true,
                                              "PersistentVolumeClaim"};
inline const Resource kNodes{"", "v1", "nodes", false, "Node"};
inline const Resource kStatefulSets{"apps", "v1", "statefulsets", true, "StatefulSet"};
inline const Resource kDeployments{"apps", "v1", "deployments", true, "Deployment"};
inline const Resource kLeases{"coordination.k8s.io", "v1", "leases", true, "Lease"};
inline const Resource kEndpointSlices{"discovery.k8s.io", "v1", "endpointslices", true,
                                      "EndpointSlice"};
inline const Resource kCustomResourceDefinitions{"apiextensions.k8s.io", "v1",
                                                 "customresourcedefinitions", false,
                                                 "CustomResourceDefinition"};
}  // namespace resources

// Percent-encodes one URL component (RFC 3986 unreserved characters stay).
std::string UrlEncode(std::string_view s);
// "?a=1&b=2" from the non-empty values; "" when there are none.
std::string QueryString(const std::vector<std::pair<std::string, std::string>>& params);

}  // namespace pgshift::k8s
