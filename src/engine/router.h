// What the cutover needs from the thing that routes clients to a server. Implementations live
// in src/routers (PgBouncer, nginx, manual) and in the operator (a Kubernetes Service).
#pragma once

#include <string>

#include "common/status.h"

namespace pgshift::engine {

struct Endpoint {
  std::string host;
  int port = 0;
  std::string ToString() const { return host + ":" + std::to_string(port); }
  bool operator==(const Endpoint&) const = default;
};

class Router {
 public:
  virtual ~Router() = default;
  virtual std::string Kind() const = 0;
  // Reachable and configured; called before a cutover.
  virtual Status Check() = 0;
  // Holds new transactions; returns once in-flight ones finished. Routers that cannot hold
  // traffic (nginx) return Ok at once: the source fence then makes writes fail instead.
  virtual Status Pause(int timeout_ms) = 0;
  virtual Status Resume() = 0;
  // Leads new traffic to `to`, closing pooled connections to the old server.
  virtual Status SwitchTo(const Endpoint& to) = 0;
  // Where the router leads now.
  virtual Result<Endpoint> Current() = 0;
  // True when Pause() really holds clients (PgBouncer) rather than being a no-op.
  virtual bool HoldsTraffic() const = 0;
  // True when SwitchTo() waits for a person (the manual router): no pause budget applies.
  virtual bool WaitsForPeople() const { return false; }
};

}  // namespace pgshift::engine
