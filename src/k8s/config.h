// Where the API server is and how to authenticate to it: from a kubeconfig (its current or a
// named context; file paths or the inline *-data fields) or from inside a Pod (service
// account token, CA and namespace). Tokens that live in files are re-read periodically, so
// rotated service-account tokens keep working.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "common/status.h"

namespace pgshift::k8s {

// Re-reads a token file at most every `refresh`. Thread-safe.
class TokenSource {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  TokenSource(std::string path, std::chrono::seconds refresh, Clock clock = nullptr);

  // The current token; on a failed re-read, the last good one (the error only when there
  // was never one).
  Result<std::string> Token();
  const std::string& path() const { return path_; }

 private:
  std::string path_{};
  std::chrono::seconds refresh_;
  Clock clock_;
  std::mutex mu_;
  std::string token_{};
  std::chrono::steady_clock::time_point read_at_{};
  bool have_ = false;
};

struct Config {
  std::string server{};  // "https://host:port", no trailing slash
  std::string ca_pem{};  // empty: the system's CAs
  std::string client_cert_pem{};
  std::string client_key_pem{};
  std::string token{};                         // a static bearer token
  std::shared_ptr<TokenSource> token_source{};  // or one read from a file
  bool insecure_skip_tls_verify = false;
  std::string tls_server_name{};
  std::string default_namespace = "default";
  std::chrono::milliseconds request_timeout{30000};
  std::string user_agent = "pgshift";

  // A readable description without secrets, for logs.
  std::string Describe() const;
};

// Parses kubeconfig text. Relative file paths are taken from `base_dir`; `context` empty
// means the file's current-context.
Result<Config> ParseKubeconfig(std::string_view yaml, const std::string& base_dir,
                               std::string_view context = "");

// Reads a kubeconfig file: `path`, else the first entry of $KUBECONFIG, else ~/.kube/config.
Result<Config> LoadKubeconfig(const std::string& path = "", std::string_view context = "");

struct InClusterPaths {
  std::string dir = "/var/run/secrets/kubernetes.io/serviceaccount";
  std::chrono::seconds token_refresh{60};
};

// The config of a process running in a Pod: KUBERNETES_SERVICE_HOST/PORT and the mounted
// service account (token, ca.crt, namespace).
Result<Config> InClusterConfig(const InClusterPaths& paths = {});

// In-cluster when KUBERNETES_SERVICE_HOST is set, else LoadKubeconfig().
Result<Config> LoadDefaultConfig();

// Standard base64 (with or without padding; whitespace ignored).
Result<std::string> Base64Decode(std::string_view in);
std::string Base64Encode(std::string_view in);

}  // namespace pgshift::k8s
