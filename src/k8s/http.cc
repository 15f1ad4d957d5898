#include "k8s/http.h"

#include <curl/curl.h>

#include <mutex>

namespace pgshift::k8s {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t AppendBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

struct StreamState {
  CURL* curl = nullptr;
  const std::function<bool(std::string_view)>* on_line = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  std::string pending;
  std::string error_body;
  bool ok_status = false;
  bool checked_status = false;
  bool stopped = false;  // on_line or cancel asked to stop
};

size_t StreamWrite(char* data, size_t size, size_t n, void* user) {
  auto* st = static_cast<StreamState*>(user);
  size_t len = size * n;
  if (!st->checked_status) {
    long code = 0;
    curl_easy_getinfo(st->curl, CURLINFO_RESPONSE_CODE, &code);
    st->ok_status = code >= 200 && code < 300;
    st->checked_status = true;
  }
  if (!st->ok_status) {
    st->error_body.append(data, len);
    return len;
  }
  st->pending.append(data, len);
  size_t start = 0;
  size_t nl;
  while ((nl = st->pending.find('\n', start)) != std::string::npos) {
    std::string_view line(st->pending.data() + start, nl - start);
    start = nl + 1;
    if (!line.empty() && !(*st->on_line)(line)) {
      st->stopped = true;
      return 0;  // aborts the transfer
    }
  }
  st->pending.erase(0, start);
  return len;
}

int StreamProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* st = static_cast<StreamState*>(user);
  if (st->cancel != nullptr && st->cancel->load()) {
    st->stopped = true;
    return 1;
  }
  return 0;
}

}  // namespace

Result<std::unique_ptr<HttpClient>> HttpClient::Create(Config config) {
  GlobalInit();
  if (config.server.empty()) return Status::InvalidArgument("config has no server URL");
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(config)));
}

HttpClient::~HttpClient() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* HttpClient::Acquire() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void HttpClient::Release(void* handle) {
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() < 8) {
    idle_.push_back(handle);
  } else {
    curl_easy_cleanup(static_cast<CURL*>(handle));
  }
}

Status HttpClient::Prepare(void* handle, const HttpRequest& req, void** header_list) {
  CURL* c = static_cast<CURL*>(handle);
  curl_easy_reset(c);
  std::string url = config_.server + req.path;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, config_.user_agent.c_str());
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 15L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 5L);
  if (!config_.ca_pem.empty()) {
    curl_blob ca{const_cast<char*>(config_.ca_pem.data()), config_.ca_pem.size(),
                 CURL_BLOB_COPY};
    curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &ca);
  }
  if (!config_.client_cert_pem.empty()) {
    curl_blob cert{const_cast<char*>(config_.client_cert_pem.data()),
                   config_.client_cert_pem.size(), CURL_BLOB_COPY};
    curl_blob key{const_cast<char*>(config_.client_key_pem.data()),
                  config_.client_key_pem.size(), CURL_BLOB_COPY};
    curl_easy_setopt(c, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(c, CURLOPT_SSLKEY_BLOB, &key);
    curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
  }
  if (config_.insecure_skip_tls_verify) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Accept: application/json");
  if (!req.body.empty() || req.method == "POST" || req.method == "PUT" ||
      req.method == "PATCH") {
    headers = curl_slist_append(headers, ("Content-Type: " + req.content_type).c_str());
  }
  std::string token = config_.token;
  if (token.empty() && config_.token_source) {
    Result<std::string> t = config_.token_source->Token();
    if (!t.ok()) {
      curl_slist_free_all(headers);
      return t.status();
    }
    token = *t;
  }
  if (!token.empty()) {
    headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  *header_list = headers;
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  if (req.method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  if (!req.body.empty() || req.method == "POST" || req.method == "PUT" ||
      req.method == "PATCH") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
  }
  return Status::Ok();
}

Result<HttpResponse> HttpClient::Do(const HttpRequest& req) {
  void* h = Acquire();
  if (h == nullptr) return Status::Internal("curl_easy_init failed");
  CURL* c = static_cast<CURL*>(h);
  void* headers = nullptr;
  Status prepared = Prepare(h, req, &headers);
  if (!prepared.ok()) {
    Release(h);
    return prepared;
  }
  HttpResponse resp;
  auto timeout = req.timeout.count() > 0 ? req.timeout : config_.request_timeout;
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp.body);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  curl_slist_free_all(static_cast<curl_slist*>(headers));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, nullptr);
  Release(h);
  if (rc != CURLE_OK) {
    std::string detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
    return Status::Unavailable(req.method + " " + config_.server + req.path + ": " + detail);
  }
  return resp;
}

Result<long> HttpClient::Stream(const HttpRequest& req,
                                const std::function<bool(std::string_view)>& on_line,
                                const std::atomic<bool>* cancel, std::string* error_body) {
  // A stream holds its connection for long: its own handle, not the pool's.
  CURL* c = curl_easy_init();
  if (c == nullptr) return Status::Internal("curl_easy_init failed");
  void* headers = nullptr;
  Status prepared = Prepare(c, req, &headers);
  if (!prepared.ok()) {
    curl_easy_cleanup(c);
    return prepared;
  }
  StreamState st;
  st.curl = c;
  st.on_line = &on_line;
  st.cancel = cancel;
  if (req.timeout.count() > 0) {
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(req.timeout.count()));
  }
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, StreamWrite);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, StreamProgress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &st);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(c);
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  curl_slist_free_all(static_cast<curl_slist*>(headers));
  curl_easy_cleanup(c);
  if (st.stopped) return code;
  if (rc != CURLE_OK) {
    std::string detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
    return Status::Unavailable("stream " + req.path + ": " + detail);
  }
  if (!st.pending.empty() && st.ok_status) on_line(st.pending);
  if (error_body != nullptr) *error_body = std::move(st.error_body);
  return code;
}

}  // namespace pgshift::k8s
