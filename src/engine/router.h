// What the cutover needs from the thing that routes clients to a server. Implementations live
// in src/routers (PgBouncer, nginx, manual) and in the operator (a Kubernetes Service).
//
// The cutover (cutover.h, docs/engine.md) is a table of steps; four of them act on the router:
//   pause  -> Pause()      resume -> Resume()      switch -> SwitchTo(new)   undo -> SwitchTo(old)
// and every recovery decision reads Observe(). The contract each implementation keeps:
//   - Every action is idempotent: Pause() on a paused router, Resume() on a running one,
//     SwitchTo(x) when it already leads to x all succeed (and do what is still missing, e.g.
//     SwitchTo(x) after a crash between a config rewrite and its reload redoes the reload).
//   - An action that fails may have happened in part. The engine never trusts its result
//     alone: it calls Observe() and decides from what the router really does.
//   - Observe() reports the router's live view (PgBouncer's SHOW DATABASES / SHOW STATE, the
//     Service's selector and EndpointSlices), not pgshift's memory of what it asked for and
//     not a config file the running router may not have loaded. Only when there is no live
//     view to read (the router is down; nginx has no admin interface) does it fall back to
//     what the router will load when it (re)starts, and says so with live = false.
//   - Nothing here fences or unfences a server: the engine does that; a router only moves
//     and holds clients.
// One Router object is used by one thread at a time.
#pragma once

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace pgshift::engine {

struct Endpoint {
  std::string host;
  int port = 0;
  std::string ToString() const { return host + ":" + std::to_string(port); }
  bool operator==(const Endpoint&) const = default;
};

// What a router does right now, as Observe() read it.
struct RouterState {
  // Where new and pooled client connections go. Several when the router is split (some of its
  // entries or endpoints lead to one server, some to the other); empty when it routes nothing
  // it can report (e.g. a PgBouncer with no pool yet: then `config` says where one would go).
  std::vector<Endpoint> leads_to;
  // Where the router's configuration leads, when that is separate from the live view (the ini
  // or nginx.conf on disk; the Service's selector). A router that has not loaded it yet, or
  // whose reload failed, shows a `config` different from `leads_to`.
  std::vector<Endpoint> config;
  // Clients are held (PgBouncer PAUSE): nothing reaches any server until Resume(). nullopt
  // when the router cannot say (PgBouncer before 1.19 has no SHOW STATE): the engine then
  // resumes it anyway, which Resume() allows.
  std::optional<bool> paused = false;
  // A change is still taking effect (the Service's EndpointSlices do not yet follow its
  // selector). Clients may reach either side meanwhile.
  bool settling = false;
  // False when `leads_to` and `paused` could not be read from the running router (it is down,
  // or has no way to report) and come from its configuration instead.
  bool live = true;
  // For people: what was read, e.g. "SHOW DATABASES: app -> 10.0.0.5:5432; ini: 10.0.0.6:5432".
  std::string detail;

  // True when clients may reach `e` now or as soon as they reconnect: `e` is among leads_to,
  // or, for a router that is settling or not live, among config.
  bool MayReach(const Endpoint& e) const;
  // True when the router leads only to `e`, live and configured alike, and is not settling.
  bool LeadsOnlyTo(const Endpoint& e) const;
};

inline bool RouterState::MayReach(const Endpoint& e) const {
  auto has = [&e](const std::vector<Endpoint>& v) {
    return std::find(v.begin(), v.end(), e) != v.end();
  };
  return has(leads_to) || ((settling || !live) && has(config));
}

inline bool RouterState::LeadsOnlyTo(const Endpoint& e) const {
  auto only = [&e](const std::vector<Endpoint>& v) {
    return !v.empty() && std::all_of(v.begin(), v.end(), [&e](const Endpoint& x) { return x == e; });
  };
  return only(leads_to) && (config.empty() || only(config)) && !settling;
}

class Router {
 public:
  virtual ~Router() = default;
  virtual std::string Kind() const = 0;
  // Reachable and configured, and able to do what the cutover asks of it (PgBouncer: no pool
  // in session mode); called before a migration starts and before a cutover.
  virtual Status Check() = 0;
  // After a Check() that passed: one line on what was checked, for `pgshift check`
  // (e.g. "PgBouncer 1.18.0, pool_mode transaction for every pool"); empty when none.
  virtual std::string Summary() const { return ""; }
  // Called once before a cutover's or a rollback's attempts, outside the clients' pause, after
  // Check. A router may make its switch cheaper here (the operator's pooler hands its backend
  // Service to an EndpointSlice of its own); nothing it does may move a client.
  virtual Status PrepareSwitch() { return Status::Ok(); }
  // True when this router can begin its switch while clients are held, before the cutover
  // reaches its switch step (BeginSwitch): its held clients reach no server until Resume(), so
  // moving its path early moves no client. Its Observe() may then show the new side before
  // the steps ahead of the switch (the old side's catch-up, the sequences) were done; the
  // cutover's recovery decides by the new side's fence instead (a fenced new side took no
  // client write: going back loses nothing). Constant for a router's kind and configuration,
  // so that a recovering process reads it as the crashed one did.
  virtual bool SwitchesEarly() const { return false; }
  // True when the new server connections this router makes wait while the database they
  // reach is fenced, and are spared by step open (the operator's pooler with PoolerHoldQuery
  // as its connect_query, fence.h). Its held clients can then be let go before the new side
  // opens: they log in there and wait, and run the moment step open lifts the fence, with no
  // login left to make. Only with SwitchesEarly(); constant like it.
  virtual bool HoldsAtFencedSide() const { return false; }
  // Only when SwitchesEarly(), right after Pause() held clients: starts moving the path to
  // `to` in the background. SwitchTo(to) then only waits for what is left of it; every other
  // call first waits for it to end. With `resume_when_moved` (only when HoldsAtFencedSide()
  // and `to` is fenced) the router lets its clients go once the path leads to `to` and the
  // cutover said the new side caught up (NewSideCaughtUp); Resume() is then Ok at once. A
  // cutover undone before its switch step holds them again and switches back (the pause
  // step's undo observes the router).
  virtual void BeginSwitch(const Endpoint& to, bool resume_when_moved) {
    (void)to;
    (void)resume_when_moved;
  }
  // Called by the cutover (after BeginSwitch) once the old side is fenced and the new side has
  // every change it made (step catch-up). A router that resumes when moved lets no client go
  // before: the most common failure of a cutover, a catch-up over the pause budget, then still
  // finds every client held by the router, and undoing it ends no login (PgBouncer counts a
  // login it closes as failed, and fails new requests until the next one succeeds).
  virtual void NewSideCaughtUp() {}
  // Holds new transactions; returns once in-flight ones finished, or fails after `timeout_ms`
  // leaving the router not paused. Routers that cannot hold traffic (nginx, a Service) return
  // Ok at once: the fence then makes writes fail instead.
  virtual Status Pause(int timeout_ms) = 0;
  // Lets held clients go on. Ok when not paused.
  virtual Status Resume() = 0;
  // Leads new traffic to `to`, closing pooled connections to the other server. Returns once
  // the running router (not only its configuration) leads to `to`.
  virtual Status SwitchTo(const Endpoint& to) = 0;
  // What the router does now (see RouterState). An error only when nothing at all could be
  // read, not even the configuration.
  virtual Result<RouterState> Observe() = 0;
  // True when Pause() really holds clients (PgBouncer) rather than being a no-op.
  virtual bool HoldsTraffic() const = 0;
  // True when SwitchTo() waits for a person (the manual router): no pause budget applies.
  virtual bool WaitsForPeople() const { return false; }
  // True when, once SwitchTo() changed the configuration, the running router follows it with
  // nothing more from pgshift (a Service's EndpointSlices follow its selector). Its SwitchTo
  // then returns kDeadlineExceeded when the live view did not follow in time, and the engine
  // counts the switch as made: clients reach the new side as the change takes effect.
  virtual bool SettlesByItself() const { return false; }
  // The manual router's SwitchTo waits for a person; it polls this and returns Aborted when it
  // turns true, so a stop request (SIGINT, lease loss) is not held up by the wait.
  virtual void set_stop(std::function<bool()> stop) { (void)stop; }
};

}  // namespace pgshift::engine
