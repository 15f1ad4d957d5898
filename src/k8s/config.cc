#include "k8s/config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

namespace pgshift::k8s {
namespace {

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Trim(std::string s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  size_t e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/' || base_dir.empty()) return path;
  return base_dir + "/" + path;
}

std::string Scalar(const YAML::Node& node, const char* key) {
  const YAML::Node v = node[key];
  return v && v.IsScalar() ? v.as<std::string>() : "";
}

// Finds `name` in a kubeconfig list of {name, <field>} entries; nullopt unless it is a map.
std::optional<YAML::Node> FindNamed(const YAML::Node& list, const std::string& name,
                                    const char* field) {
  if (!list || !list.IsSequence()) return std::nullopt;
  for (const YAML::Node& entry : list) {
    if (entry.IsMap() && Scalar(entry, "name") == name) {
      YAML::Node v = entry[field];
      if (v && v.IsMap()) return v;
      return std::nullopt;
    }
  }
  return std::nullopt;
}

// Reads the PEM from "<key>-data" (base64) or the file named by "<key>".
Result<std::string> DataOrFile(const YAML::Node& node, const std::string& key,
                               const std::string& base_dir) {
  std::string data = Scalar(node, (key + "-data").c_str());
  if (!data.empty()) {
    Result<std::string> decoded = Base64Decode(data);
    if (!decoded.ok()) return decoded.status().WithContext(key + "-data");
    return decoded;
  }
  std::string file = Scalar(node, key.c_str());
  if (file.empty()) return std::string();
  Result<std::string> content = ReadFile(Resolve(base_dir, file));
  if (!content.ok()) return content.status().WithContext(key);
  return content;
}

Result<Config> ParseKubeconfigNode(const YAML::Node& root, const std::string& base_dir,
                                   std::string_view context_name) {
  std::string ctx_name(context_name);
  if (ctx_name.empty()) ctx_name = Scalar(root, "current-context");
  if (ctx_name.empty()) return Status::InvalidArgument("kubeconfig has no current-context");
  std::optional<YAML::Node> ctx_node = FindNamed(root["contexts"], ctx_name, "context");
  if (!ctx_node) return Status::NotFound("kubeconfig has no context \"" + ctx_name + "\"");
  const YAML::Node& ctx = *ctx_node;
  std::string cluster_name = Scalar(ctx, "cluster");
  std::string user_name = Scalar(ctx, "user");
  std::optional<YAML::Node> cluster_node = FindNamed(root["clusters"], cluster_name, "cluster");
  if (!cluster_node) return Status::NotFound("kubeconfig has no cluster \"" + cluster_name + "\"");
  const YAML::Node& cluster = *cluster_node;

  Config c;
  c.server = Scalar(cluster, "server");
  while (!c.server.empty() && c.server.back() == '/') c.server.pop_back();
  if (c.server.empty()) return Status::InvalidArgument("cluster \"" + cluster_name + "\" has no server");
  if (c.server.rfind("https://", 0) != 0 && c.server.rfind("http://", 0) != 0) {
    return Status::InvalidArgument("cluster server must be an http(s) URL: " + c.server);
  }
  c.insecure_skip_tls_verify = Scalar(cluster, "insecure-skip-tls-verify") == "true";
  c.tls_server_name = Scalar(cluster, "tls-server-name");
  PGSHIFT_ASSIGN_OR_RETURN(c.ca_pem, DataOrFile(cluster, "certificate-authority", base_dir));
  std::string ns = Scalar(ctx, "namespace");
  if (!ns.empty()) c.default_namespace = ns;

  if (!user_name.empty()) {
    std::optional<YAML::Node> user_node = FindNamed(root["users"], user_name, "user");
    if (!user_node) return Status::NotFound("kubeconfig has no user \"" + user_name + "\"");
    const YAML::Node& user = *user_node;
    PGSHIFT_ASSIGN_OR_RETURN(c.client_cert_pem, DataOrFile(user, "client-certificate", base_dir));
    PGSHIFT_ASSIGN_OR_RETURN(c.client_key_pem, DataOrFile(user, "client-key", base_dir));
    if (c.client_cert_pem.empty() != c.client_key_pem.empty()) {
      return Status::InvalidArgument("user \"" + user_name +
                                     "\" needs both a client certificate and a client key");
    }
    c.token = Scalar(user, "token");
    std::string token_file = Scalar(user, "tokenFile");
    if (c.token.empty() && !token_file.empty()) {
      c.token_source = std::make_shared<TokenSource>(Resolve(base_dir, token_file),
                                                     std::chrono::seconds(60));
    }
    if (user["exec"] || user["auth-provider"]) {
      if (c.token.empty() && !c.token_source && c.client_cert_pem.empty()) {
        return Status::InvalidArgument("user \"" + user_name +
                                       "\": exec and auth-provider credentials are not supported");
      }
    }
    if (!Scalar(user, "username").empty()) {
      return Status::InvalidArgument("user \"" + user_name + "\": basic auth is not supported");
    }
  }
  return c;
}

}  // namespace

TokenSource::TokenSource(std::string path, std::chrono::seconds refresh, Clock clock)
    : path_(std::move(path)), refresh_(refresh), clock_(std::move(clock)) {
  if (!clock_) clock_ = [] { return std::chrono::steady_clock::now(); };
}

Result<std::string> TokenSource::Token() {
  std::lock_guard<std::mutex> lock(mu_);
  auto now = clock_();
  if (have_ && now - read_at_ < refresh_) return token_;
  Result<std::string> content = ReadFile(path_);
  if (content.ok() && !Trim(*content).empty()) {
    token_ = Trim(*content);
    have_ = true;
    read_at_ = now;
    return token_;
  }
  if (have_) return token_;
  if (!content.ok()) return content.status().WithContext("reading token");
  return Status::FailedPrecondition("token file " + path_ + " is empty");
}

std::string Config::Describe() const {
  std::string auth = !client_cert_pem.empty() ? "client certificate"
                     : token_source           ? "token file " + token_source->path()
                     : !token.empty()         ? "bearer token"
                                              : "anonymous";
  return server + " (" + auth + ", namespace " + default_namespace + ")";
}

Result<Config> ParseKubeconfig(std::string_view yaml, const std::string& base_dir,
                               std::string_view context) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(std::string("kubeconfig is not valid YAML: ") + e.what());
  }
  if (!root.IsMap()) return Status::InvalidArgument("kubeconfig is not a YAML mapping");
  try {
    return ParseKubeconfigNode(root, base_dir, context);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(std::string("kubeconfig: ") + e.what());
  }
}

Result<Config> LoadKubeconfig(const std::string& path, std::string_view context) {
  std::string file = path;
  if (file.empty()) {
    const char* env = std::getenv("KUBECONFIG");
    if (env != nullptr && *env != '\0') {
      file = env;
      file = file.substr(0, file.find(':'));
    }
  }
  if (file.empty()) {
    const char* home = std::getenv("HOME");
    if (home == nullptr) return Status::NotFound("no kubeconfig: neither KUBECONFIG nor HOME is set");
    file = std::string(home) + "/.kube/config";
  }
  PGSHIFT_ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  std::string dir = file.find('/') == std::string::npos ? "." : file.substr(0, file.rfind('/'));
  Result<Config> c = ParseKubeconfig(text, dir, context);
  if (!c.ok()) return c.status().WithContext(file);
  return c;
}

Result<Config> InClusterConfig(const InClusterPaths& paths) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || port == nullptr || *host == '\0' || *port == '\0') {
    return Status::FailedPrecondition(
        "not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set");
  }
  Config c;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  c.server = "https://" + h + ":" + port;
  PGSHIFT_ASSIGN_OR_RETURN(c.ca_pem, ReadFile(paths.dir + "/ca.crt"));
  c.token_source = std::make_shared<TokenSource>(paths.dir + "/token", paths.token_refresh);
  Result<std::string> token = c.token_source->Token();
  if (!token.ok()) return token.status().WithContext("in-cluster config");
  Result<std::string> ns = ReadFile(paths.dir + "/namespace");
  if (ns.ok() && !Trim(*ns).empty()) c.default_namespace = Trim(*ns);
  return c;
}

Result<Config> LoadDefaultConfig() {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  if (host != nullptr && *host != '\0') return InClusterConfig();
  return LoadKubeconfig();
}

Result<std::string> Base64Decode(std::string_view in) {
  auto value = [](char ch) -> int {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+' || ch == '-') return 62;
    if (ch == '/' || ch == '_') return 63;
    return -1;
  };
  std::string out;
  unsigned int acc = 0;
  int bits = 0;
  for (char ch : in) {
    if (ch == '=' || ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t') continue;
    int v = value(ch);
    if (v < 0) return Status::InvalidArgument("invalid base64");
    acc = (acc << 6) | static_cast<unsigned int>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

std::string Base64Encode(std::string_view in) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned int n = (static_cast<unsigned char>(in[i]) << 16) |
                     (static_cast<unsigned char>(in[i + 1]) << 8) |
                     static_cast<unsigned char>(in[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i < in.size()) {
    unsigned int n = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

}  // namespace pgshift::k8s
