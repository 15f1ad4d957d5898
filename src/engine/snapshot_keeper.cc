#include "engine/snapshot_keeper.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/files.h"
#include "common/process.h"
#include "common/strings.h"
#include "pg/conninfo.h"
#include "pg/connection.h"

namespace pgshift::engine {

namespace {

constexpr char kEnvDsn[] = "PGSHIFT_KEEPER_DSN";
constexpr char kEnvInfo[] = "PGSHIFT_KEEPER_INFO";
constexpr char kEnvHeartbeat[] = "PGSHIFT_KEEPER_HEARTBEAT";
constexpr char kEnvHold[] = "PGSHIFT_KEEPER_HOLD_S";

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// The replication command that makes a logical slot and exports its snapshot. PostgreSQL 15
// introduced the parenthesized options; 13 and 14 know only the keyword form.
std::string CreateSlotCommand(const pg::Connection& c, const std::string& slot) {
  std::string q = c.QuoteIdent(slot);
  // 17+: a failover slot, which a standby with sync_replication_slots = on keeps a copy of
  // (wal_retention.h, CheckFailoverSlots).
  if (c.ServerMajor() >= 17) {
    return "CREATE_REPLICATION_SLOT " + q + " LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)";
  }
  if (c.ServerMajor() >= 15) {
    return "CREATE_REPLICATION_SLOT " + q + " LOGICAL pgoutput (SNAPSHOT 'export')";
  }
  return "CREATE_REPLICATION_SLOT " + q + " LOGICAL pgoutput EXPORT_SNAPSHOT";
}

// Seconds since `path` was last modified; a missing file counts as very old.
int64_t AgeSeconds(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return INT64_MAX / 2;
  return static_cast<int64_t>(::time(nullptr)) - static_cast<int64_t>(st.st_mtime);
}

// argv of a running process, NUL-separated as in /proc/<pid>/cmdline.
std::string CmdLine(int pid) {
  auto r = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  return r.ok() ? *r : "";
}

std::string ExpectedCmdLine(const std::string& slot) {
  return std::string(kSnapshotKeeperName) + '\0' + slot + '\0';
}

int KeeperMain(const std::string& slot) {
  ::signal(SIGPIPE, SIG_IGN);
  const std::string info_file = Env(kEnvInfo);
  const std::string heartbeat = Env(kEnvHeartbeat);
  long long hold_s = 3600;
  (void)ParseInt64(Env(kEnvHold), &hold_s);
  auto fail = [](const std::string& what) {
    printf("error %s\n", what.c_str());
    fflush(stdout);
    return 2;
  };
  auto conn = pg::Connection::Connect(Env(kEnvDsn), 10, "pgshift");
  if (!conn.ok()) return fail("replication connection to the source: " + conn.status().message());
  pg::Connection& c = **conn;
  auto r = c.Query(CreateSlotCommand(c, slot));
  if (!r.ok()) return fail("creating slot " + slot + ": " + r.status().message());
  SnapshotKeeperInfo info{static_cast<int>(::getpid()), r->Get(0, "slot_name"),
                          r->Get(0, "snapshot_name"), r->Get(0, "consistent_point")};
  nlohmann::json j = {
      {"pid", info.pid}, {"slot", info.slot}, {"snapshot", info.snapshot}, {"lsn", info.lsn}};
  Status s = WriteFileAtomic(info_file, j.dump() + "\n", 0600);
  if (!s.ok()) return fail("writing " + info_file + ": " + s.message());
  printf("ready pid=%d lsn=%s snapshot=%s\n", info.pid, info.lsn.c_str(), info.snapshot.c_str());
  fflush(stdout);
  // No one reads on after the ready line; a pgshift killed later must not leave us writing to
  // a broken pipe.
  FILE* null = freopen("/dev/null", "w", stdout);
  (void)null;
  fprintf(stderr, "%s: holding snapshot %s of slot %s\n", kSnapshotKeeperName,
          info.snapshot.c_str(), slot.c_str());
  // Idle: any command on this session would end the snapshot. Watch the socket (the server or
  // the network may end it) and the heartbeat.
  while (true) {
    pollfd p{PQsocket(c.raw()), POLLIN, 0};
    int n = ::poll(&p, 1, 2000);
    if (n < 0 && errno != EINTR) return 3;
    if (n > 0) {
      if (PQconsumeInput(c.raw()) == 0 || PQstatus(c.raw()) != CONNECTION_OK) {
        fprintf(stderr, "%s: the source ended the session: %s\n", kSnapshotKeeperName,
                c.ErrorMessage().c_str());
        return 3;
      }
      while (PGresult* res = PQgetResult(c.raw())) PQclear(res);
    }
    if (AgeSeconds(heartbeat) > hold_s) {
      fprintf(stderr, "%s: no heartbeat for %llds: releasing the snapshot\n", kSnapshotKeeperName,
              hold_s);
      return 0;
    }
  }
}

}  // namespace

std::optional<int> MaybeRunSnapshotKeeper(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[0], kSnapshotKeeperName) != 0) return std::nullopt;
  return KeeperMain(argv[1]);
}

void TouchHeartbeat(const std::string& heartbeat_file) {
  FILE* f = fopen(heartbeat_file.c_str(), "a");
  if (f != nullptr) fclose(f);
  (void)::utimensat(AT_FDCWD, heartbeat_file.c_str(), nullptr, 0);
}

Result<SnapshotKeeperInfo> StartSnapshotKeeper(const SnapshotKeeperRequest& req) {
  PGSHIFT_ASSIGN_OR_RETURN(pg::ConnInfo info, pg::ConnInfo::Parse(req.source_db_dsn));
  info.Set("replication", "database");
  std::map<std::string, std::string> env = {
      {kEnvDsn, info.ToString()},
      {kEnvInfo, req.info_file},
      {kEnvHeartbeat, req.heartbeat_file},
      {kEnvHold, std::to_string(req.hold_s)}};
  if (!req.password.empty()) env["PGPASSWORD"] = req.password;
  (void)RemoveAll(req.info_file);
  TouchHeartbeat(req.heartbeat_file);
  // The same executable, whatever it is (pgshift, the operator): its main() runs the keeper.
  PGSHIFT_ASSIGN_OR_RETURN(int fd, StartDaemon("/proc/self/exe", {kSnapshotKeeperName, req.slot},
                                               env, req.log_file));
  std::string line;
  const int64_t deadline = MonotonicMillis() + int64_t{req.ready_timeout_s} * 1000;
  bool eof = false;
  while (line.find('\n') == std::string::npos && !eof) {
    int64_t left = deadline - MonotonicMillis();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (n <= 0) continue;
    char buf[512];
    ssize_t got = ::read(fd, buf, sizeof buf);
    if (got <= 0) {
      eof = true;
    } else {
      line.append(buf, static_cast<size_t>(got));
    }
  }
  ::close(fd);
  line = std::string(Trim(line.substr(0, line.find('\n'))));
  if (line.rfind("ready ", 0) == 0) {
    auto found = FindSnapshotKeeper(req.info_file);
    if (found) return *found;
    return Status::Internal("the snapshot keeper of " + req.slot + " reported ready, then ended");
  }
  if (line.rfind("error ", 0) == 0) return Status::Unavailable(line.substr(6));
  if (!eof) {
    // Still waiting for a consistent point: it waits for every transaction open on the source.
    StopSnapshotKeeper(req.info_file);
    return Status::DeadlineExceeded(
        "creating replication slot " + req.slot + " took longer than " +
        std::to_string(req.ready_timeout_s) +
        " s: it waits until every transaction open on the source has ended (see "
        "pg_stat_activity.xact_start on the source)");
  }
  return Status::Internal("the snapshot keeper of " + req.slot + " ended without a word (see " +
                          req.log_file + ")");
}

std::optional<SnapshotKeeperInfo> FindSnapshotKeeper(const std::string& info_file) {
  auto text = ReadFile(info_file);
  if (!text.ok()) return std::nullopt;
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  SnapshotKeeperInfo info{j.value("pid", 0), j.value("slot", ""), j.value("snapshot", ""),
                          j.value("lsn", "")};
  if (info.pid <= 0 || !ProcessAlive(info.pid) || CmdLine(info.pid) != ExpectedCmdLine(info.slot)) {
    return std::nullopt;
  }
  return info;
}

void StopSnapshotKeeper(const std::string& info_file) {
  if (auto k = FindSnapshotKeeper(info_file)) {
    ::kill(k->pid, SIGTERM);
    const int64_t deadline = MonotonicMillis() + 5000;
    while (ProcessAlive(k->pid) && MonotonicMillis() < deadline) SleepMillis(10);
    if (ProcessAlive(k->pid) && CmdLine(k->pid) == ExpectedCmdLine(k->slot)) {
      ::kill(k->pid, SIGKILL);
    }
  }
  (void)RemoveAll(info_file);
}

}  // namespace pgshift::engine
