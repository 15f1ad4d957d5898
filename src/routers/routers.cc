#include "routers/routers.h"

#include <signal.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <regex>
#include <set>

#include "common/clock.h"
#include "common/fault.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "pg/connection.h"

namespace pgshift::routers {

using engine::Endpoint;

namespace {

Status ReadFileTo(const std::string& path, std::string* out) {
  auto r = ReadFile(path);
  if (!r.ok()) return r.status().WithContext("router config");
  *out = std::move(*r);
  return Status::Ok();
}

// Returns the value of `key=` inside a libpq-style connect string, or "".
std::string ConnValue(const std::string& connstr, const std::string& key) {
  std::regex re("(^|\\s)" + key + "\\s*=\\s*('[^']*'|\\S+)");
  std::smatch m;
  if (!std::regex_search(connstr, m, re)) return "";
  std::string v = m[2];
  if (v.size() >= 2 && v.front() == '\'') v = v.substr(1, v.size() - 2);
  return v;
}

std::string Describe(const std::vector<Endpoint>& eps) {
  std::string out;
  for (const auto& e : eps) out += (out.empty() ? "" : ", ") + e.ToString();
  return out.empty() ? "-" : out;
}

std::string SetConnValue(const std::string& connstr, const std::string& key,
                         const std::string& value) {
  std::regex re("(^|\\s)" + key + "\\s*=\\s*('[^']*'|\\S+)");
  if (std::regex_search(connstr, re)) {
    return std::regex_replace(connstr, re, "$1" + key + "=" + value,
                              std::regex_constants::format_first_only);
  }
  return connstr + " " + key + "=" + value;
}

// Calls `entry(line, eq)` for every `name = connstr` line of the ini's [databases] section
// (`eq`: the position of its '='), in order; the entry may rewrite the line in place.
template <typename F>
void ForEachDatabaseEntry(std::vector<std::string>& lines, F entry) {
  bool in_databases = false;
  for (auto& line : lines) {
    std::string_view t = Trim(line);
    if (!t.empty() && t.front() == '[') {
      in_databases = ToLower(t) == "[databases]";
      continue;
    }
    if (!in_databases || t.empty() || t.front() == ';' || t.front() == '#') continue;
    auto eq = line.find('=');
    if (eq != std::string::npos) entry(line, eq);
  }
}

class PgBouncerRouter : public engine::Router {
 public:
  explicit PgBouncerRouter(RouterConfig c) : config_(std::move(c)) {}
  std::string Kind() const override { return "pgbouncer"; }
  bool HoldsTraffic() const override { return true; }

  Status Check() override {
    PGSHIFT_RETURN_IF_ERROR(Connect());
    auto r = admin_->Query("SHOW VERSION");
    if (!r.ok()) return r.status().WithContext("PgBouncer admin console");
    const std::string version = r->rows() > 0 ? r->Get(0, 0) : "PgBouncer";
    std::string ini;
    PGSHIFT_RETURN_IF_ERROR(ReadFileTo(config_.config, &ini));
    auto t = PgBouncerIniTarget(ini);
    if (!t.ok()) return t.status();
    PGSHIFT_ASSIGN_OR_RETURN(PgBouncerPoolModes modes, ReadPoolModes(ini));
    std::vector<std::string> session = SessionPools(modes);
    if (!session.empty()) {
      return Status::FailedPrecondition(
          "PgBouncer pools in session mode (pool_mode = session: " + Join(session, ", ") +
          "). PAUSE there waits until every client disconnects, so clients cannot be held for "
          "a moment at cutover: each attempt would wait --max-pause and be undone. Fix: if the "
          "application keeps no session state across transactions (SET, prepared statements, "
          "advisory locks, LISTEN, temporary tables), set pool_mode = transaction for these in " +
          config_.config + " and RELOAD PgBouncer; otherwise use --router manual (pgshift "
          "fences the source, catches up, and waits for `pgshift cutover --confirm` once the "
          "application uses the target). Nothing was changed on the source");
    }
    summary_ = version + ", pool_mode " + (modes.global.empty() ? "session" : modes.global) +
               " by default";
    for (const auto& list : {modes.databases, modes.users}) {
      for (const auto& [name, mode] : list) {
        if (!mode.empty() && mode != modes.global) summary_ += ", " + name + ": " + mode;
      }
    }
    summary_ += ": PAUSE holds clients between transactions";
    return Status::Ok();
  }

  std::string Summary() const override { return summary_; }

  Status Pause(int timeout_ms) override {
    PGSHIFT_RETURN_IF_ERROR(Connect());
    // PAUSE returns once every server connection is released; bound the wait.
    PGconn* c = admin_->raw();
    if (!PQsendQuery(c, "PAUSE")) return Status::Unavailable("PgBouncer: cannot send PAUSE");
    int64_t deadline = MonotonicMillis() + timeout_ms;
    while (true) {
      if (!PQconsumeInput(c)) return Status::Unavailable("PgBouncer: connection lost during PAUSE");
      if (!PQisBusy(c)) break;
      if (MonotonicMillis() > deadline) {
        // A second admin session can RESUME while the first waits for its PAUSE.
        auto other = pg::Connection::Connect(config_.admin, 5, "pgshift");
        if (other.ok()) (void)(*other)->Query("RESUME");
        admin_.reset();
        return Status::DeadlineExceeded("PgBouncer PAUSE did not drain within " +
                                        std::to_string(timeout_ms) + " ms");
      }
      pollfd pfd{PQsocket(c), POLLIN, 0};
      ::poll(&pfd, 1, 1);
    }
    Status result = Status::Ok();
    while (PGresult* res = PQgetResult(c)) {
      if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        result = Status::Unavailable(std::string("PgBouncer PAUSE: ") + PQresultErrorMessage(res));
      }
      PQclear(res);
    }
    return result;
  }

  Status Resume() override {
    PGSHIFT_RETURN_IF_ERROR(Connect());
    auto r = admin_->Query("RESUME");
    if (!r.ok() && r.status().message().find("not paused") == std::string::npos) {
      return r.status().WithContext("PgBouncer RESUME");
    }
    return Status::Ok();
  }

  // The ini first (so that a restart or anyone's RELOAD leads to `to` too), then RELOAD, then
  // a check that the running PgBouncer took it. Repeating it repeats only what is missing.
  Status SwitchTo(const Endpoint& to) override {
    // A console that is gone is found out before the ini changes: PgBouncer down then means
    // nothing switched, and the engine can undo instead of having to go forward.
    if (admin_ && !admin_->Query("SHOW VERSION").ok()) admin_.reset();
    PGSHIFT_RETURN_IF_ERROR(Connect());
    std::string ini;
    PGSHIFT_RETURN_IF_ERROR(ReadFileTo(config_.config, &ini));
    PGSHIFT_ASSIGN_OR_RETURN(std::string next, RewritePgBouncerIni(ini, to));
    if (next != ini) PGSHIFT_RETURN_IF_ERROR(ReplaceFileKeepingOwner(config_.config, next));
    PGSHIFT_RETURN_IF_ERROR(FailPointForTest("pgbouncer-reload").WithContext("PgBouncer RELOAD"));
    // RELOAD sees the changed host/port and closes the old server connections as they are
    // released; RECONNECT makes sure none of them is reused.
    auto r = admin_->Query("RELOAD");
    if (!r.ok()) return r.status().WithContext("PgBouncer RELOAD");
    auto rc = admin_->Query("RECONNECT");
    if (!rc.ok()) LogWarn("PgBouncer RECONNECT: " + rc.status().message());
    PGSHIFT_ASSIGN_OR_RETURN(engine::RouterState st, Observe());
    for (const Endpoint& e : st.leads_to) {
      if (!(e == to)) {
        return Status::Unavailable("PgBouncer still leads to " + e.ToString() +
                                   " after RELOAD (" + st.detail + ")");
      }
    }
    return Status::Ok();
  }

  // SHOW STATE and SHOW DATABASES: what the running PgBouncer does. Its ini is only what it
  // would load next; when PgBouncer cannot be reached, that is all there is (live = false).
  Result<engine::RouterState> Observe() override {
    engine::RouterState st;
    std::string ini;
    Status read = ReadFileTo(config_.config, &ini);
    if (read.ok()) {
      auto all = PgBouncerIniTargets(ini);
      if (all.ok()) st.config = *all;
    }
    const std::string ini_text = "ini: " + Describe(st.config);
    Status c = Connect();
    if (c.ok()) {
      // SHOW STATE came with PgBouncer 1.19; before it, whether it is paused cannot be read.
      auto state = admin_->Query("SHOW STATE");
      if (state.ok()) {
        st.paused = false;
        for (int i = 0; i < state->rows(); ++i) {
          if (state->Get(i, 0) == "paused" || state->Get(i, 0) == "suspended") {
            st.paused = *st.paused || state->Get(i, 1) == "yes";
          }
        }
      } else {
        st.paused = std::nullopt;
      }
      auto dbs = admin_->Query("SHOW DATABASES");
      if (dbs.ok()) {
        std::string shown;
        for (int i = 0; i < dbs->rows(); ++i) {
          const std::string name = dbs->Get(i, "name");
          if (name == "pgbouncer") continue;  // the admin console itself
          long long port = 0;
          if (!ParseInt64(dbs->Get(i, "port"), &port)) continue;
          Endpoint e{dbs->Get(i, "host"), static_cast<int>(port)};
          shown += (shown.empty() ? "" : ", ") + name + " -> " + e.ToString();
          if (std::find(st.leads_to.begin(), st.leads_to.end(), e) == st.leads_to.end()) {
            st.leads_to.push_back(e);
          }
        }
        st.detail = "SHOW DATABASES: " + (shown.empty() ? "no pool yet" : shown) + "; " +
                    ini_text +
                    (!st.paused ? "; paused unknown" : *st.paused ? "; paused" : "; not paused");
        return st;
      }
      c = dbs.status();
      admin_.reset();
    }
    if (!read.ok()) return read;
    // Down: it routes nothing now, and starts with its ini.
    st.live = false;
    st.paused = false;  // a PgBouncer that starts again starts running
    st.leads_to = st.config;
    st.detail = "PgBouncer cannot be reached (" + c.message() + "); " + ini_text;
    return st;
  }

 private:
  Status Connect() {
    if (admin_ && !admin_->broken()) return Status::Ok();
    auto c = pg::Connection::Connect(config_.admin, 5, "pgshift");
    if (!c.ok()) return c.status().WithContext("PgBouncer admin console");
    admin_ = std::move(*c);
    return Status::Ok();
  }

  // SHOW CONFIG, SHOW DATABASES and SHOW USERS (columns by name: they vary by version), and
  // the ini's own `pool_mode=` on [databases] entries.
  Result<PgBouncerPoolModes> ReadPoolModes(const std::string& ini) {
    PgBouncerPoolModes m;
    auto config = admin_->Query("SHOW CONFIG");
    if (!config.ok()) return config.status().WithContext("PgBouncer SHOW CONFIG");
    for (int i = 0; i < config->rows(); ++i) {
      if (config->Get(i, "key") == "pool_mode") m.global = config->Get(i, "value");
    }
    auto dbs = admin_->Query("SHOW DATABASES");
    if (!dbs.ok()) return dbs.status().WithContext("PgBouncer SHOW DATABASES");
    const bool db_modes = dbs->ColumnIndex("pool_mode") >= 0;
    std::set<std::string> live;
    for (int i = 0; i < dbs->rows(); ++i) {
      const std::string name = dbs->Get(i, "name");
      if (name == "pgbouncer") continue;  // the admin console itself
      live.insert(name);
      m.databases.emplace_back("database " + name, db_modes ? dbs->Get(i, "pool_mode") : "");
    }
    // Entries with no pool yet (a `*` entry is never shown as one).
    for (const auto& [name, mode] : PgBouncerIniPoolModes(ini)) {
      if (!live.count(name)) m.databases.emplace_back("database " + name, mode);
    }
    auto users = admin_->Query("SHOW USERS");
    if (users.ok() && users->ColumnIndex("pool_mode") >= 0) {
      for (int i = 0; i < users->rows(); ++i) {
        m.users.emplace_back("user " + users->Get(i, "name"), users->Get(i, "pool_mode"));
      }
    }
    return m;
  }

  RouterConfig config_;
  std::unique_ptr<pg::Connection> admin_;
  std::string summary_;
};

class NginxRouter : public engine::Router {
 public:
  explicit NginxRouter(RouterConfig c) : config_(std::move(c)) {}
  std::string Kind() const override { return "nginx"; }
  bool HoldsTraffic() const override { return false; }
  Status Check() override { return Observe().status(); }
  Status Pause(int) override { return Status::Ok(); }
  Status Resume() override { return Status::Ok(); }

  // The config, then SIGHUP: nginx re-reads it and new connections go to `to`. Repeating it
  // signals again, so a crash between the two is mended by running it once more.
  Status SwitchTo(const Endpoint& to) override {
    std::string conf;
    PGSHIFT_RETURN_IF_ERROR(ReadFileTo(config_.config, &conf));
    PGSHIFT_ASSIGN_OR_RETURN(std::string next, RewriteNginxUpstream(conf, to));
    if (next != conf) PGSHIFT_RETURN_IF_ERROR(ReplaceFileKeepingOwner(config_.config, next));
    // nginx re-reads its configuration on SIGHUP; the pid file sits where the config says.
    std::smatch m;
    std::regex pid_re(R"((^|\n)\s*pid\s+([^;]+);)");
    if (!std::regex_search(conf, m, pid_re)) {
      return Status::FailedPrecondition("nginx config " + config_.config + " names no pid file");
    }
    auto pid_text = ReadFile(Trim(m[2].str()).data());
    long long pid = 0;
    if (!pid_text.ok() || !ParseInt64(Split(*pid_text, '\n')[0], &pid) || pid <= 0) {
      return Status::Unavailable("nginx is not running (no pid in " + m[2].str() + ")");
    }
    if (::kill(static_cast<pid_t>(pid), SIGHUP) != 0) {
      return Status::Unavailable("cannot signal nginx pid " + std::to_string(pid));
    }
    return Status::Ok();
  }

  // nginx has no admin interface to ask where it leads: its config is what it uses once
  // signalled, so that is reported, as not live.
  Result<engine::RouterState> Observe() override {
    std::string conf;
    PGSHIFT_RETURN_IF_ERROR(ReadFileTo(config_.config, &conf));
    PGSHIFT_ASSIGN_OR_RETURN(Endpoint e, NginxUpstreamTarget(conf));
    engine::RouterState st;
    st.live = false;
    st.leads_to = st.config = {e};
    st.detail = "nginx.conf upstream: " + e.ToString();
    return st;
  }

 private:
  RouterConfig config_;
};

// The application switches itself: pgshift fences the source and catches up, then waits for
// `pgshift cutover --state DIR --confirm`, which the operator runs once the application uses
// the target. Files in the state folder carry the handshake, so the waiting process and the
// confirming one need nothing else in common.
class ManualRouter : public engine::Router {
 public:
  explicit ManualRouter(RouterConfig c) : config_(std::move(c)) {}
  std::string Kind() const override { return "manual"; }
  bool HoldsTraffic() const override { return false; }
  bool WaitsForPeople() const override { return true; }
  Status Check() override { return Status::Ok(); }
  Status Pause(int) override { return Status::Ok(); }
  Status Resume() override { return Status::Ok(); }

  // Asks for the switch and waits for `pgshift cutover --confirm`. Once asked, the
  // application's owners may switch at any moment: the engine treats the request itself as
  // the point of no return (Observe reports it as settling). A request already made (a run
  // that stopped or crashed while waiting) is not repeated; the wait goes on.
  Status SwitchTo(const Endpoint& to) override {
    std::string waiting = config_.state_dir + "/" + kManualWaitingFile;
    std::string confirmed = config_.state_dir + "/" + kManualConfirmedFile;
    auto asked = ReadFile(waiting);
    if (!asked.ok() || Trim(*asked) != to.ToString()) {
      ::unlink(confirmed.c_str());
      PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(waiting, to.ToString() + "\n", 0600));
    }
    fprintf(stderr,
            "pgshift: the source is fenced and the target has every write. Switch the "
            "application to %s, then run:\n  pgshift cutover --state %s --confirm\n",
            to.ToString().c_str(), config_.state_dir.c_str());
    while (!PathExists(confirmed)) {
      if (stop_ && stop_()) {
        return Status::Aborted("stopped while waiting for `pgshift cutover --confirm`; run the "
                               "same command again to go on waiting");
      }
      SleepMillis(100);
    }
    PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(CurrentFile(), to.ToString() + "\n", 0600));
    ::unlink(waiting.c_str());
    ::unlink(confirmed.c_str());
    return Status::Ok();
  }

  // The application is the router: pgshift knows only what it asked for and what was
  // confirmed (live = false).
  Result<engine::RouterState> Observe() override {
    engine::RouterState st;
    st.live = false;
    if (auto e = EndpointIn(CurrentFile())) st.leads_to.push_back(*e);
    if (auto e = EndpointIn(config_.state_dir + "/" + kManualWaitingFile)) {
      st.config.push_back(*e);
      st.settling = true;
      st.detail = "waiting for the application to move to " + e->ToString();
    } else {
      st.config = st.leads_to;
      st.detail = st.leads_to.empty() ? "the application was never asked to move"
                                      : "the application uses " + st.leads_to[0].ToString();
    }
    return st;
  }

  void set_stop(std::function<bool()> stop) override { stop_ = std::move(stop); }

 private:
  std::string CurrentFile() const { return config_.state_dir + "/router.current"; }

  static std::optional<Endpoint> EndpointIn(const std::string& path) {
    auto text = ReadFile(path);
    if (!text.ok()) return std::nullopt;
    auto colon = std::string(Trim(*text)).rfind(':');
    std::string t(Trim(*text));
    long long port = 0;
    if (colon == std::string::npos || !ParseInt64(t.substr(colon + 1), &port)) return std::nullopt;
    return Endpoint{t.substr(0, colon), static_cast<int>(port)};
  }

  RouterConfig config_;
  std::function<bool()> stop_;
};

}  // namespace

std::vector<std::string> SessionPools(const PgBouncerPoolModes& modes) {
  // A client's pool mode: its user's override, else its database's, else the default
  // (PgBouncer's own default is session).
  auto session = [](const std::string& mode) { return ToLower(mode) == "session"; };
  const bool global = modes.global.empty() || session(modes.global);
  std::vector<std::string> out;
  for (const auto& [name, mode] : modes.databases) {
    if (session(mode)) {
      out.push_back(name);
    } else if (mode.empty() && global) {
      out.push_back(name + " (the default pool_mode of [pgbouncer])");
    }
  }
  for (const auto& [name, mode] : modes.users) {
    if (session(mode)) out.push_back(name);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> PgBouncerIniPoolModes(const std::string& ini) {
  std::vector<std::pair<std::string, std::string>> out;
  std::vector<std::string> lines = Split(ini, '\n');
  ForEachDatabaseEntry(lines, [&out](const std::string& line, size_t eq) {
    out.emplace_back(std::string(Trim(line.substr(0, eq))), ConnValue(line.substr(eq + 1), "pool_mode"));
  });
  return out;
}

Result<std::string> RewritePgBouncerIni(const std::string& ini, const Endpoint& to) {
  std::vector<std::string> lines = Split(ini, '\n');
  int changed = 0;
  ForEachDatabaseEntry(lines, [&](std::string& line, size_t eq) {
    std::string name = line.substr(0, eq);
    std::string connstr(Trim(line.substr(eq + 1)));
    connstr = SetConnValue(connstr, "host", to.host);
    connstr = SetConnValue(connstr, "port", std::to_string(to.port));
    line = std::string(Trim(name)) + " = " + connstr;
    changed++;
  });
  if (changed == 0) {
    return Status::FailedPrecondition("the PgBouncer config has no [databases] entry to switch");
  }
  return Join(lines, "\n");
}

Result<Endpoint> PgBouncerIniTarget(const std::string& ini) {
  PGSHIFT_ASSIGN_OR_RETURN(std::vector<Endpoint> all, PgBouncerIniTargets(ini));
  return all.front();
}

Result<std::vector<Endpoint>> PgBouncerIniTargets(const std::string& ini) {
  std::vector<Endpoint> out;
  Status bad;
  std::vector<std::string> lines = Split(ini, '\n');
  ForEachDatabaseEntry(lines, [&](const std::string& line, size_t eq) {
    std::string connstr = line.substr(eq + 1);
    Endpoint e;
    e.host = ConnValue(connstr, "host");
    long long port = 5432;
    std::string p = ConnValue(connstr, "port");
    if (!p.empty() && !ParseInt64(p, &port)) {
      if (bad.ok()) bad = Status::InvalidArgument("bad port '" + p + "' in the PgBouncer config");
      return;
    }
    e.port = static_cast<int>(port);
    if (e.host.empty()) e.host = "localhost";
    if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
  });
  if (!bad.ok()) return bad;
  if (out.empty()) return Status::FailedPrecondition("the PgBouncer config has no [databases] entry");
  return out;
}

Result<std::string> RewriteNginxUpstream(const std::string& conf, const Endpoint& to) {
  // Only `server host:port` lines of upstreams, not `server {` blocks.
  std::regex re(R"((\n\s*server\s+)[^\s;{}]+:\d+)");
  if (!std::regex_search(conf, re)) {
    return Status::FailedPrecondition("the nginx config has no upstream `server` line to switch");
  }
  // Built by hand: "$1" followed by an address starting with a digit would read as "$11".
  std::string out;
  auto begin = conf.cbegin();
  std::smatch m;
  while (std::regex_search(begin, conf.cend(), m, re)) {
    out.append(begin, m[0].first);
    out += m[1].str() + to.ToString();
    begin = m[0].second;
  }
  out.append(begin, conf.cend());
  return out;
}

Result<Endpoint> NginxUpstreamTarget(const std::string& conf) {
  std::regex re(R"(\n\s*server\s+([^;:\s]+):(\d+))");
  std::smatch m;
  if (!std::regex_search(conf, m, re)) {
    return Status::FailedPrecondition("the nginx config has no upstream `server host:port` line");
  }
  long long port = 0;
  if (!ParseInt64(m[2].str(), &port) || port <= 0 || port > 65535) {
    return Status::InvalidArgument("bad port " + m[2].str() + " in the nginx config");
  }
  return Endpoint{m[1].str(), static_cast<int>(port)};
}

Status ReplaceFileKeepingOwner(const std::string& path, const std::string& content) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Status::NotFound("no such file: " + path);
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(path, content, static_cast<int>(st.st_mode & 07777)));
  if (::chown(path.c_str(), st.st_uid, st.st_gid) != 0 && ::geteuid() == 0) {
    return Status::Unavailable("cannot restore the owner of " + path);
  }
  return Status::Ok();
}

Result<std::unique_ptr<engine::Router>> MakeRouter(const RouterConfig& config) {
  if (config.kind == engine::RouterKind::kPgBouncer) {
    if (config.admin.empty() || config.config.empty()) {
      return Status::InvalidArgument(
          "--router pgbouncer needs --router-admin DSN (the admin console) and --router-config "
          "FILE (its pgbouncer.ini)");
    }
    return std::unique_ptr<engine::Router>(new PgBouncerRouter(config));
  }
  if (config.kind == engine::RouterKind::kNginx) {
    if (config.config.empty()) {
      return Status::InvalidArgument("--router nginx needs --router-config FILE (nginx.conf)");
    }
    return std::unique_ptr<engine::Router>(new NginxRouter(config));
  }
  if (config.kind == engine::RouterKind::kManual) {
    if (config.state_dir.empty()) return Status::InvalidArgument("--router manual needs --state");
    return std::unique_ptr<engine::Router>(new ManualRouter(config));
  }
  return Status::InvalidArgument("router '" + engine::RouterKindName(config.kind) +
                                 "' is not one the CLI drives: use pgbouncer, nginx or manual");
}

}  // namespace pgshift::routers
