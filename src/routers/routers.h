// Router implementations for the cutover: PgBouncer (admin console PAUSE/RELOAD/RESUME and an
// atomic rewrite of its ini), nginx stream (upstream rewrite and reload) and manual (the
// application switches itself; pgshift only fences and waits).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/router.h"
#include "engine/state.h"

namespace pgshift::routers {

struct RouterConfig {
  engine::RouterKind kind = engine::RouterKind::kPgBouncer;
  std::string admin;   // PgBouncer admin console DSN
  std::string config;  // pgbouncer.ini or nginx.conf
  std::string state_dir;  // manual: where `pgshift cutover --confirm` leaves its mark
};

Result<std::unique_ptr<engine::Router>> MakeRouter(const RouterConfig& config);

// The manual router's handshake files in the state folder: the cutover waits while the first
// exists; `pgshift cutover --confirm` writes the second.
inline constexpr const char* kManualWaitingFile = "cutover.waiting";
inline constexpr const char* kManualConfirmedFile = "cutover.confirmed";

// Rewrites every [databases] entry of a pgbouncer.ini to lead to `to` (pure; for tests).
Result<std::string> RewritePgBouncerIni(const std::string& ini, const engine::Endpoint& to);
// The endpoint of the first [databases] entry.
Result<engine::Endpoint> PgBouncerIniTarget(const std::string& ini);
// Every distinct endpoint of the [databases] entries, in order.
Result<std::vector<engine::Endpoint>> PgBouncerIniTargets(const std::string& ini);
// Pool modes a running PgBouncer uses, as its admin console shows them: the [pgbouncer]
// default (SHOW CONFIG), and the overrides of databases (SHOW DATABASES, and `pool_mode=` of
// the ini's [databases] entries, which covers `*` before any pool exists) and users
// (SHOW USERS); an empty override means the default applies.
struct PgBouncerPoolModes {
  std::string global;
  std::vector<std::pair<std::string, std::string>> databases;  // name, override
  std::vector<std::pair<std::string, std::string>> users;      // name, override
};
// The pools in session mode, for people ("the default pool_mode of [pgbouncer]", "database
// shop", "user app"); empty when every pool pauses between transactions (transaction or
// statement mode). Pure, for tests.
std::vector<std::string> SessionPools(const PgBouncerPoolModes& modes);
// Every [databases] entry's name and its `pool_mode=` (empty when it has none).
std::vector<std::pair<std::string, std::string>> PgBouncerIniPoolModes(const std::string& ini);

// Rewrites the `server host:port` lines of nginx stream upstreams.
Result<std::string> RewriteNginxUpstream(const std::string& conf, const engine::Endpoint& to);
Result<engine::Endpoint> NginxUpstreamTarget(const std::string& conf);

// Writes `content` over `path` atomically, keeping the file's owner and mode (the router
// process, running as another user, must still read it).
Status ReplaceFileKeepingOwner(const std::string& path, const std::string& content);

}  // namespace pgshift::routers
