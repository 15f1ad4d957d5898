// pgshift lab: local PostgreSQL servers of any major version and routers (PgBouncer, nginx
// stream) in front of them, shared by tests, benchmarks and the demo.
//
// Each instance lives in <lab-dir>/<name>/ with an instance.json (mode 0600: it holds the
// generated password). Clients authenticate through <lab-dir>/pgpass, named in every DSN the
// lab prints, so no password appears in a DSN, a log line or a process's argv.
// Not thread-safe; two pgshift processes working on one instance at once is unsupported.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "lab/paths.h"

namespace pgshift::lab {

enum class Kind { kPostgres, kPgBouncer, kNginx };
std::string KindName(Kind kind);
Result<Kind> ParseKind(const std::string& name);

struct Instance {
  std::string name;
  Kind kind = Kind::kPostgres;
  int version = 0;  // PostgreSQL major; for routers the backend's
  std::string host = "127.0.0.1";
  int port = 0;
  std::string dir;          // <lab-dir>/<name>
  std::string data_dir;     // PostgreSQL only
  std::string config_file;  // postgresql.conf, pgbouncer.ini or nginx.conf
  std::string log_file;
  std::string backend;      // routers: the server they lead to
  std::string user = "postgres";
  std::string password;

  nlohmann::json ToJson() const;
  static Result<Instance> FromJson(const nlohmann::json& j);
};

enum class RunState { kRunning, kStopped, kCrashed };
std::string RunStateName(RunState s);

struct InstanceStatus {
  Instance instance;
  RunState state = RunState::kStopped;
  int pid = 0;
};

struct ServerOptions {
  int port = 0;  // 0: a free one
  std::string host = "127.0.0.1";
  std::vector<std::string> settings;  // extra "name = value" lines for postgresql.conf
};

class Lab {
 public:
  // `dir` empty: $PGSHIFT_LAB_DIR, else <cache>/lab.
  static Result<Lab> Open(const std::string& dir, Paths paths = Paths::Discover());

  // initdb once, start, wait for connections. A running server is left alone.
  Result<Instance> StartServer(const std::string& name, int major, const ServerOptions& opts);
  // A router in front of lab server `backend`; port 0: a free one. Idempotent like servers.
  Result<Instance> StartRouter(const std::string& name, const std::string& backend, Kind kind,
                               int port);
  Status Stop(const std::string& name);
  Status Destroy(const std::string& name);
  Status Down();  // stops every instance, routers first
  Result<std::vector<InstanceStatus>> List() const;
  Result<Instance> Get(const std::string& name) const;
  InstanceStatus Probe(const Instance& inst) const;

  // postgresql://postgres@127.0.0.1:PORT/DB?passfile=<lab-dir>/pgpass
  std::string Dsn(const Instance& inst, const std::string& dbname = "postgres") const;
  // Routers: the PgBouncer admin console ("pgbouncer" database); empty for others.
  std::string AdminDsn(const Instance& inst) const;
  const std::string& dir() const { return dir_; }
  const std::string& pgpass() const { return pgpass_; }

 private:
  Lab(std::string dir, Paths paths)
      : dir_(std::move(dir)), paths_(std::move(paths)), pgpass_(dir_ + "/pgpass") {}
  Status Save(const Instance& inst) const;
  Status WritePgpass() const;
  Result<int> ChoosePort(int requested, const std::string& host, const std::string& self) const;
  Status InitServer(Instance* inst, const ServerOptions& opts, const std::string& bin);
  Status LaunchServer(const Instance& inst);
  Status LaunchRouter(const Instance& inst);
  Status WriteRouterConfig(const Instance& inst, const Instance& backend) const;
  Status StopPid(const Instance& inst, int pid) const;
  int ReadPid(const Instance& inst) const;

  std::string dir_;
  Paths paths_;
  std::string pgpass_;
};

// True when nothing listens on host:port and we may bind it.
bool PortFree(const std::string& host, int port);
// Waits until a TCP connection to host:port succeeds.
Status WaitForPort(const std::string& host, int port, int timeout_ms);

}  // namespace pgshift::lab
