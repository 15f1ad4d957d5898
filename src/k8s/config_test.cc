#include "k8s/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace pgshift::k8s {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/k8s_config_test.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }
  void Write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ + "/" + name) << content;
  }

 private:
  std::string path_;
};

const char kTwoContexts[] = R"(
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: Q0EgUEVN
- name: b
  cluster:
    server: https://b.example:443
    insecure-skip-tls-verify: true
    certificate-authority: certs/ca.crt
users:
- name: cert-user
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
- name: token-user
  user:
    token: abc.def
- name: file-user
  user:
    client-certificate: certs/u.crt
    client-key: /ABS/u.key
contexts:
- name: ctx-a
  context: {cluster: a, user: cert-user, namespace: team}
- name: ctx-b
  context: {cluster: b, user: token-user}
- name: ctx-files
  context: {cluster: b, user: file-user}
current-context: ctx-a
)";

TEST(KubeconfigTest, CurrentContextWithInlineData) {
  Result<Config> c = ParseKubeconfig(kTwoContexts, "/nowhere");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->server, "https://127.0.0.1:6443");  // trailing slash dropped
  EXPECT_EQ(c->ca_pem, "CA PEM");
  EXPECT_EQ(c->client_cert_pem, "CERT");
  EXPECT_EQ(c->client_key_pem, "KEY");
  EXPECT_EQ(c->default_namespace, "team");
  EXPECT_FALSE(c->insecure_skip_tls_verify);
  EXPECT_TRUE(c->token.empty());
}

TEST(KubeconfigTest, NamedContextWithTokenAndRelativeFile) {
  TempDir dir;
  fs::create_directories(dir.path() + "/certs");
  dir.Write("certs/ca.crt", "FILE CA");
  Result<Config> c = ParseKubeconfig(kTwoContexts, dir.path(), "ctx-b");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->server, "https://b.example:443");
  EXPECT_EQ(c->ca_pem, "FILE CA");
  EXPECT_EQ(c->token, "abc.def");
  EXPECT_TRUE(c->insecure_skip_tls_verify);
  EXPECT_EQ(c->default_namespace, "default");
  // The description names the kind of credential, never the token itself.
  EXPECT_EQ(c->Describe().find("abc.def"), std::string::npos);
}

TEST(KubeconfigTest, MissingFilesAreErrorsNamingTheField) {
  Result<Config> c = ParseKubeconfig(kTwoContexts, "/nowhere", "ctx-files");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("certificate-authority"), std::string::npos)
      << c.status().ToString();
}

TEST(KubeconfigTest, UnknownContextAndBrokenInput) {
  EXPECT_EQ(ParseKubeconfig(kTwoContexts, "", "nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ParseKubeconfig("{{{", "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKubeconfig("- a\n- b\n", "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKubeconfig("contexts: []\n", "").status().code(),
            StatusCode::kInvalidArgument);  // no current-context
  const char kCertWithoutKey[] = R"(
clusters: [{name: c, cluster: {server: "https://x"}}]
users: [{name: u, user: {client-certificate-data: Q0VSVA==}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
)";
  EXPECT_EQ(ParseKubeconfig(kCertWithoutKey, "").status().code(), StatusCode::kInvalidArgument);
  const char kExec[] = R"(
clusters: [{name: c, cluster: {server: "https://x"}}]
users: [{name: u, user: {exec: {command: aws}}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
)";
  Result<Config> exec = ParseKubeconfig(kExec, "");
  ASSERT_FALSE(exec.ok());
  EXPECT_NE(exec.status().message().find("exec"), std::string::npos);
}

TEST(KubeconfigTest, LoadFromFileResolvesPathsBesideIt) {
  TempDir dir;
  dir.Write("ca.pem", "CA FROM FILE");
  dir.Write("tok", "  file-token\n");
  dir.Write("config", R"(
clusters: [{name: c, cluster: {server: "https://h:1", certificate-authority: ca.pem}}]
users: [{name: u, user: {tokenFile: tok}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
)");
  Result<Config> c = LoadKubeconfig(dir.path() + "/config");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->ca_pem, "CA FROM FILE");
  ASSERT_NE(c->token_source, nullptr);
  Result<std::string> t = c->token_source->Token();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, "file-token");
}

TEST(TokenSourceTest, RereadsAfterRefreshAndKeepsLastGoodToken) {
  TempDir dir;
  dir.Write("token", "one");
  auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  TokenSource ts(dir.path() + "/token", std::chrono::seconds(60), [&] { return now; });
  EXPECT_EQ(*ts.Token(), "one");
  dir.Write("token", "two");
  now += std::chrono::seconds(59);
  EXPECT_EQ(*ts.Token(), "one");  // cached
  now += std::chrono::seconds(2);
  EXPECT_EQ(*ts.Token(), "two");  // rotated
  fs::remove(dir.path() + "/token");
  now += std::chrono::seconds(61);
  EXPECT_EQ(*ts.Token(), "two");  // a failed re-read keeps the last good one
  TokenSource missing(dir.path() + "/none", std::chrono::seconds(1));
  EXPECT_FALSE(missing.Token().ok());
}

TEST(InClusterConfigTest, ReadsServiceAccountFiles) {
  TempDir dir;
  dir.Write("token", "sa-token");
  dir.Write("ca.crt", "CLUSTER CA");
  dir.Write("namespace", "ops\n");
  setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  Result<Config> c = InClusterConfig({dir.path(), std::chrono::seconds(60)});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->server, "https://10.0.0.1:443");
  EXPECT_EQ(c->ca_pem, "CLUSTER CA");
  EXPECT_EQ(c->default_namespace, "ops");
  EXPECT_EQ(*c->token_source->Token(), "sa-token");
  setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  EXPECT_EQ(InClusterConfig({dir.path(), std::chrono::seconds(60)})->server, "https://[fd00::1]:443");
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
  EXPECT_EQ(InClusterConfig({dir.path(), std::chrono::seconds(60)}).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(Base64Test, RoundTrip) {
  for (std::string s : {"", "a", "ab", "abc", "abcd", "\x01\xff\x7f binary"}) {
    Result<std::string> back = Base64Decode(Base64Encode(s));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, s);
  }
  EXPECT_EQ(Base64Encode("hello"), "aGVsbG8=");
  EXPECT_EQ(*Base64Decode("aGVs\nbG8"), "hello");
  EXPECT_FALSE(Base64Decode("a*b").ok());
}

}  // namespace
}  // namespace pgshift::k8s
