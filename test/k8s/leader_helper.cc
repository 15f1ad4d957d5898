// A leader-election candidate for the integration tests:
//   pgshift_k8s_leader_helper KUBECONFIG NAMESPACE LEASE IDENTITY
// Prints "LEADING <id>" when it starts leading, "WORKING <id>" every 100 ms while its work
// runs, "STOPPED <id>" when leading ends. Runs until killed (SIGTERM: releases the lease).
#include <csignal>
#include <cstdio>
#include <thread>

#include "k8s/leader_election.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }
}  // namespace

int main(int argc, char** argv) {
  using namespace pgshift::k8s;
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s KUBECONFIG NAMESPACE LEASE IDENTITY\n", argv[0]);
    return 2;
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto cfg = LoadKubeconfig(argv[1]);
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s\n", cfg.status().ToString().c_str());
    return 1;
  }
  auto client = Client::Create(*cfg);
  if (!client.ok()) return 1;
  std::string id = argv[4];
  LeaderElectionConfig lc;
  lc.lease_namespace = argv[2];
  lc.lease_name = argv[3];
  lc.identity = id;
  lc.lease_duration = std::chrono::seconds(3);
  lc.renew_deadline = std::chrono::seconds(2);
  lc.retry_period = std::chrono::milliseconds(300);
  LeaderCallbacks cb;
  cb.on_started_leading = [id](std::stop_token st) {
    std::printf("LEADING %s\n", id.c_str());
    while (!st.stop_requested()) {
      std::printf("WORKING %s\n", id.c_str());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  };
  cb.on_stopped_leading = [id] { std::printf("STOPPED %s\n", id.c_str()); };
  auto elector = LeaderElector::Create(client->get(), lc, cb);
  if (!elector.ok()) {
    std::fprintf(stderr, "%s\n", elector.status().ToString().c_str());
    return 1;
  }
  (*elector)->Start();
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  (*elector)->Stop();
  return 0;
}
