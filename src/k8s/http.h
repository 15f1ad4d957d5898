// HTTPS to the API server over libcurl: TLS from the Config (CA, client certificate and
// key given as PEM in memory), the bearer token added per request and never logged.
// Thread-safe; plain requests reuse connections from a small pool.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "k8s/config.h"

namespace pgshift::k8s {

struct HttpRequest {
  std::string method = "GET";
  std::string path{};  // path and query, e.g. "/api/v1/pods?limit=5"
  std::string body{};
  std::string content_type = "application/json";
  std::chrono::milliseconds timeout{0};  // 0: the Config's request timeout
};

struct HttpResponse {
  long status = 0;
  std::string body{};
};

class HttpClient {
 public:
  static Result<std::unique_ptr<HttpClient>> Create(Config config);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Only transport failures are errors (kUnavailable); any HTTP status is a response.
  Result<HttpResponse> Do(const HttpRequest& request);

  // Streams a long response line by line: `on_line` gets each line of a 2xx body and returns
  // false to stop. Stops too when `*cancel` becomes true (checked about every 100 ms).
  // Returns the HTTP status; for a non-2xx status the body is in `*error_body`.
  // A transport failure or a stream cut short is an error (kUnavailable).
  Result<long> Stream(const HttpRequest& request,
                      const std::function<bool(std::string_view line)>& on_line,
                      const std::atomic<bool>* cancel, std::string* error_body);

  const Config& config() const { return config_; }

 private:
  explicit HttpClient(Config config) : config_(std::move(config)) {}
  void* Acquire();
  void Release(void* handle);
  Status Prepare(void* handle, const HttpRequest& request, void** header_list);

  Config config_;
  std::mutex mu_;
  std::vector<void*> idle_;  // CURL* easy handles
};

}  // namespace pgshift::k8s
