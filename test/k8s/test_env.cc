#include "test_env.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

namespace pgshift::k8s::testing {

std::string K8sDir() {
  const char* d = std::getenv("PGSHIFT_K8S_DIR");
  if (d != nullptr && *d != '\0') return d;
  return std::string(PGSHIFT_SOURCE_DIR) + "/.cache/k8s";
}

std::unique_ptr<Client> AdminClient() {
  Result<Config> cfg = LoadKubeconfig(K8sDir() + "/kubeconfig");
  if (!cfg.ok()) {
    ADD_FAILURE() << cfg.status().ToString() << " (is the control plane up? make k8s-up)";
    return nullptr;
  }
  Result<std::unique_ptr<Client>> c = Client::Create(*cfg);
  if (!c.ok()) {
    ADD_FAILURE() << c.status().ToString();
    return nullptr;
  }
  return std::move(*c);
}

std::string Shell(const std::string& command, int* exit_code) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    if (exit_code != nullptr) *exit_code = -1;
    return out;
  }
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int rc = pclose(p);
  if (exit_code != nullptr) *exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string Ctl(const std::string& args) {
  const char* ctl = std::getenv("PGSHIFT_K8S_CTL");
  std::string script = ctl != nullptr ? ctl : std::string(PGSHIFT_SOURCE_DIR) + "/scripts/k8s/ctl.sh";
  int rc = 0;
  std::string out = Shell(script + " " + args, &rc);
  EXPECT_EQ(rc, 0) << script << " " << args << ": " << out;
  return out;
}

bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

TestNamespace::TestNamespace(Client* client, const std::string& prefix) : client_(client) {
  std::random_device rd;
  name_ = prefix + "-" + std::to_string(rd() % 1000000);
  Json ns = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", name_}}}};
  Result<Json> r = client_->CreateObject(resources::kNamespaces, "", ns);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  // Pods need the namespace's default ServiceAccount, which the controller manager adds.
  EXPECT_TRUE(Eventually([&] {
    return client_->Get(resources::kServiceAccounts, name_, "default").ok();
  }, std::chrono::seconds(20))) << "no default ServiceAccount in " << name_;
}

TestNamespace::~TestNamespace() {
  (void)client_->Delete(resources::kNamespaces, "", name_);
}

}  // namespace pgshift::k8s::testing
