// Shared set-up for tests against the test control plane: the admin client, a fresh
// namespace per test, polling helpers and the fault-injection script.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "k8s/client.h"

namespace pgshift::k8s::testing {

// $PGSHIFT_K8S_DIR (default .cache/k8s beside the checkout the binary was built from).
std::string K8sDir();
std::unique_ptr<Client> AdminClient();
// Runs scripts/k8s/ctl.sh with `args`; returns its stdout (trimmed); fails the test on error.
std::string Ctl(const std::string& args);
// Polls `pred` every 100 ms until it is true or `timeout` passes.
bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout);
// Runs a shell command, returns stdout; `*exit_code` gets its status.
std::string Shell(const std::string& command, int* exit_code = nullptr);

// Creates namespace "<prefix>-<random>" and deletes it at destruction.
class TestNamespace {
 public:
  TestNamespace(Client* client, const std::string& prefix);
  ~TestNamespace();
  const std::string& name() const { return name_; }

 private:
  Client* client_;
  std::string name_;
};

}  // namespace pgshift::k8s::testing
