#include "lab/lab.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include "common/clock.h"
#include "common/files.h"
#include "common/log.h"
#include "common/process.h"
#include "common/strings.h"
#include "pg/conninfo.h"

namespace pgshift::lab {

namespace fs = std::filesystem;

namespace {

constexpr int kFirstAutoPort = 25432;
constexpr int kLastAutoPort = 29999;

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 40) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

Status CheckName(const std::string& name) {
  if (ValidName(name)) return Status::Ok();
  return Status::InvalidArgument("bad lab instance name '" + name +
                                 "': use 1 to 40 characters of a-z, 0-9, '-' and '_'");
}

int ReadPidFile(const std::string& path) {
  auto content = ReadFile(path);
  if (!content.ok()) return 0;
  long long pid = 0;
  auto lines = Split(*content, '\n');
  if (lines.empty() || !ParseInt64(lines[0], &pid)) return 0;
  return static_cast<int>(pid);
}

std::string LastLines(const std::string& path, int n) {
  auto content = ReadFile(path);
  if (!content.ok()) return "";
  auto lines = Split(*content, '\n', true);
  size_t from = lines.size() > static_cast<size_t>(n) ? lines.size() - n : 0;
  return Join(std::vector<std::string>(lines.begin() + static_cast<long>(from), lines.end()),
              "\n");
}

// Live (non-zombie) processes whose working folder is `dir`: PostgreSQL's server processes
// all run in their data folder.
std::vector<int> ProcessesIn(const std::string& dir) {
  std::vector<int> out;
  std::error_code ec;
  std::string want = fs::weakly_canonical(dir, ec).string();
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    long long pid = 0;
    if (!ParseInt64(e.path().filename().string(), &pid)) continue;
    std::error_code ec2;
    auto cwd = fs::read_symlink(e.path() / "cwd", ec2);
    if (!ec2 && cwd.string() == want && ProcessAlive(static_cast<int>(pid))) {
      out.push_back(static_cast<int>(pid));
    }
  }
  return out;
}

// Where a router keeps its pid (the configs below name the same files).
std::string RouterPidFile(const Instance& inst) {
  return inst.dir + (inst.kind == Kind::kNginx ? "/nginx.pid" : "/pgbouncer.pid");
}

}  // namespace

std::string KindName(Kind kind) {
  switch (kind) {
    case Kind::kPostgres: return "postgres";
    case Kind::kPgBouncer: return "pgbouncer";
    case Kind::kNginx: return "nginx";
  }
  return "postgres";
}

Result<Kind> ParseKind(const std::string& name) {
  if (name == "postgres") return Kind::kPostgres;
  if (name == "pgbouncer") return Kind::kPgBouncer;
  if (name == "nginx") return Kind::kNginx;
  return Status::InvalidArgument("unknown router kind '" + name + "': use pgbouncer or nginx");
}

std::string RunStateName(RunState s) {
  switch (s) {
    case RunState::kRunning: return "running";
    case RunState::kStopped: return "stopped";
    case RunState::kCrashed: return "crashed";
  }
  return "stopped";
}

nlohmann::json Instance::ToJson() const {
  return {{"name", name},       {"kind", KindName(kind)},  {"version", version},
          {"host", host},       {"port", port},            {"dir", dir},
          {"data_dir", data_dir}, {"config_file", config_file}, {"log_file", log_file},
          {"backend", backend}, {"user", user},            {"password", password}};
}

Result<Instance> Instance::FromJson(const nlohmann::json& j) {
  try {
    Instance i;
    i.name = j.at("name").get<std::string>();
    PGSHIFT_ASSIGN_OR_RETURN(i.kind, ParseKind(j.at("kind").get<std::string>()));
    i.version = j.at("version").get<int>();
    i.host = j.value("host", "127.0.0.1");
    i.port = j.at("port").get<int>();
    i.dir = j.at("dir").get<std::string>();
    i.data_dir = j.value("data_dir", "");
    i.config_file = j.value("config_file", "");
    i.log_file = j.value("log_file", "");
    i.backend = j.value("backend", "");
    i.user = j.value("user", "postgres");
    i.password = j.value("password", "");
    return i;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("corrupt instance.json: ") + e.what());
  }
}

bool PortFree(const std::string& host, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

Status WaitForPort(const std::string& host, int port, int timeout_ms) {
  int64_t deadline = MonotonicMillis() + timeout_ms;
  while (true) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    if (ok) return Status::Ok();
    if (MonotonicMillis() > deadline) {
      return Status::DeadlineExceeded("nothing accepts connections on " + host + ":" +
                                      std::to_string(port) + " after " +
                                      std::to_string(timeout_ms) + " ms");
    }
    SleepMillis(50);
  }
}

Result<Lab> Lab::Open(const std::string& dir, Paths paths) {
  std::string d = dir;
  if (d.empty()) {
    const char* env = std::getenv("PGSHIFT_LAB_DIR");
    d = env && *env ? env : paths.cache + "/lab";
  }
  d = AbsolutePath(d);
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(d, 0755));
  return Lab(d, std::move(paths));
}

Status Lab::Save(const Instance& inst) const {
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(inst.dir + "/instance.json", inst.ToJson().dump(2), 0600));
  return WritePgpass();
}

Status Lab::WritePgpass() const {
  auto all = List();
  if (!all.ok()) return all.status();
  std::string content;
  for (const auto& st : *all) {
    const Instance& i = st.instance;
    if (i.password.empty()) continue;
    content += pg::PgpassLine(i.host, i.port, i.user, i.password);
  }
  return WriteFileAtomic(pgpass_, content, 0600);
}

Result<Instance> Lab::Get(const std::string& name) const {
  PGSHIFT_RETURN_IF_ERROR(CheckName(name));
  std::string path = dir_ + "/" + name + "/instance.json";
  auto content = ReadFile(path);
  if (!content.ok()) {
    return Status::NotFound("no lab instance named '" + name + "' in " + dir_ +
                            " (see `pgshift lab list`)");
  }
  nlohmann::json j = nlohmann::json::parse(*content, nullptr, false);
  if (j.is_discarded()) return Status::Internal("corrupt " + path);
  return Instance::FromJson(j);
}

int Lab::ReadPid(const Instance& inst) const {
  switch (inst.kind) {
    case Kind::kPostgres: return ReadPidFile(inst.data_dir + "/postmaster.pid");
    case Kind::kPgBouncer:
    case Kind::kNginx: return ReadPidFile(RouterPidFile(inst));
  }
  return 0;
}

InstanceStatus Lab::Probe(const Instance& inst) const {
  InstanceStatus st;
  st.instance = inst;
  st.pid = ReadPid(inst);
  if (st.pid == 0) {
    st.state = RunState::kStopped;
  } else if (ProcessAlive(st.pid)) {
    st.state = RunState::kRunning;
  } else {
    // A pid file without its process: the instance died without cleaning up.
    st.state = RunState::kCrashed;
  }
  return st;
}

Result<std::vector<InstanceStatus>> Lab::List() const {
  std::vector<InstanceStatus> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    if (!entry.is_directory()) continue;
    std::string name = entry.path().filename().string();
    if (!ValidName(name) || !PathExists(entry.path().string() + "/instance.json")) continue;
    PGSHIFT_ASSIGN_OR_RETURN(Instance inst, Get(name));
    out.push_back(Probe(inst));
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.instance.name < b.instance.name; });
  return out;
}

Result<int> Lab::ChoosePort(int requested, const std::string& host,
                            const std::string& self) const {
  if (requested != 0) {
    if (requested < 1024 || requested > 65535) {
      return Status::InvalidArgument("port " + std::to_string(requested) +
                                     " is out of range: use 1024 to 65535");
    }
    if (!PortFree(host, requested)) {
      return Status::FailedPrecondition("port " + std::to_string(requested) + " on " + host +
                                        " is in use by another process: pick another with "
                                        "--port, or omit --port to get a free one");
    }
    return requested;
  }
  std::set<int> taken;
  auto all = List();
  if (all.ok()) {
    for (const auto& st : *all) {
      if (st.instance.name != self) taken.insert(st.instance.port);
    }
  }
  // Start at a point derived from the lab folder, so concurrent labs rarely race for a port.
  const int span = kLastAutoPort - kFirstAutoPort + 1;
  const int start = static_cast<int>(std::hash<std::string>{}(dir_) % 64) * 20;
  for (int i = 0; i < span; ++i) {
    int p = kFirstAutoPort + (start + i) % span;
    if (!taken.count(p) && PortFree(host, p)) return p;
  }
  return Status::Unavailable("no free port between " + std::to_string(kFirstAutoPort) + " and " +
                             std::to_string(kLastAutoPort));
}

std::string Lab::Dsn(const Instance& inst, const std::string& dbname) const {
  return "postgresql://" + inst.user + "@" + inst.host + ":" + std::to_string(inst.port) + "/" +
         dbname + "?passfile=" + pgpass_;
}

std::string Lab::AdminDsn(const Instance& inst) const {
  if (inst.kind != Kind::kPgBouncer) return "";
  return Dsn(inst, "pgbouncer");
}

Status Lab::InitServer(Instance* inst, const ServerOptions& opts, const std::string& bin) {
  std::string user = ServerOsUser();
  PGSHIFT_RETURN_IF_ERROR(MakeDirs(inst->dir, 0700));
  PGSHIFT_RETURN_IF_ERROR(ChownToUser(inst->dir, user, false));
  // One generated superuser password per lab: a router can then be switched between lab
  // servers, as an application role can after pgshift copied it with its password hash.
  std::string secret_file = dir_ + "/superuser.password";
  auto secret = ReadFile(secret_file);
  if (secret.ok() && Trim(*secret).size() >= 16) {
    inst->password = std::string(Trim(*secret));
  } else {
    inst->password = RandomHex(24);
    PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(secret_file, inst->password + "\n", 0600));
  }
  // initdb reads the password from a file only the server user can read, removed at once.
  std::string pwfile = inst->dir + "/.pwfile";
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(pwfile, inst->password + "\n", 0600));
  PGSHIFT_RETURN_IF_ERROR(ChownToUser(pwfile, user, false));
  ProcessOptions init;
  init.argv = {bin + "/initdb", "-D", inst->data_dir, "-U", inst->user, "--auth=scram-sha-256",
               "--pwfile=" + pwfile, "-E", "UTF8", "--locale=C", "--no-sync"};
  init.env["LD_LIBRARY_PATH"] = paths_.ServerLib(inst->version);
  init.run_as = user;
  init.timeout_ms = 120000;
  auto r = RunProcess(init);
  ::unlink(pwfile.c_str());
  if (!r.ok()) return r.status().WithContext("initdb");
  if (!r->ok()) return Status::Internal("initdb failed: " + r->Describe());

  std::string conf =
      "\n# --- pgshift lab ---\n"
      "listen_addresses = '" + opts.host + "'\n"
      "port = " + std::to_string(inst->port) + "\n"
      "unix_socket_directories = ''\n"
      "password_encryption = 'scram-sha-256'\n"
      "max_connections = 200\n"
      "shared_buffers = 128MB\n"
      "wal_level = logical\n"
      "max_wal_senders = 20\n"
      "max_replication_slots = 20\n"
      "max_worker_processes = 24\n"
      "max_logical_replication_workers = 12\n"
      "max_sync_workers_per_subscription = 4\n"
      "wal_sender_timeout = 30s\n"
      "wal_receiver_timeout = 30s\n"
      "log_line_prefix = '%m [%p] %u@%d '\n"
      "log_min_messages = warning\n";
  for (const auto& s : opts.settings) conf += s + "\n";
  auto existing = ReadFile(inst->config_file);
  if (!existing.ok()) return existing.status();
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(inst->config_file, *existing + conf, 0600));
  std::string hba =
      "# pgshift lab: password (SCRAM) over loopback only\n"
      "host all all 127.0.0.0/8 scram-sha-256\n"
      "host all all ::1/128 scram-sha-256\n"
      "host replication all 127.0.0.0/8 scram-sha-256\n"
      "host replication all ::1/128 scram-sha-256\n";
  PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(inst->data_dir + "/pg_hba.conf", hba, 0600));
  return ChownToUser(inst->dir, user, true);
}

Status Lab::LaunchServer(const Instance& inst) {
  PGSHIFT_ASSIGN_OR_RETURN(std::string bin, paths_.ServerBin(inst.version));
  // A crash leaves postmaster.pid behind; postgres removes a stale one itself.
  ProcessOptions start;
  start.argv = {bin + "/pg_ctl", "-D", inst.data_dir, "-l", inst.log_file, "-w", "-t", "60",
                "-o", "-p " + std::to_string(inst.port), "start"};
  start.env["LD_LIBRARY_PATH"] = paths_.ServerLib(inst.version);
  start.run_as = ServerOsUser();
  start.timeout_ms = 90000;
  auto r = RunProcess(start);
  if (!r.ok()) return r.status().WithContext("pg_ctl start");
  if (!r->ok()) {
    return Status::Unavailable("server '" + inst.name + "' did not start: " + r->Describe() +
                               "\nlast lines of " + inst.log_file + ":\n" +
                               LastLines(inst.log_file, 10));
  }
  return WaitForPort(inst.host, inst.port, 30000);
}

Result<Instance> Lab::StartServer(const std::string& name, int major, const ServerOptions& opts) {
  PGSHIFT_RETURN_IF_ERROR(CheckName(name));
  if (major < kMinMajor || major > kMaxMajor) {
    return Status::InvalidArgument("unknown PostgreSQL major version " + std::to_string(major) +
                                   ": pgshift lab runs majors " + std::to_string(kMinMajor) +
                                   " to " + std::to_string(kMaxMajor));
  }
  auto existing = Get(name);
  if (existing.ok()) {
    Instance inst = *existing;
    if (inst.kind != Kind::kPostgres) {
      return Status::AlreadyExists("lab instance '" + name + "' is a " + KindName(inst.kind) +
                                   ", not a server");
    }
    if (inst.version != major) {
      return Status::AlreadyExists("lab server '" + name + "' already exists with PostgreSQL " +
                                   std::to_string(inst.version) +
                                   "; destroy it first (`pgshift lab destroy " + name + "`)");
    }
    InstanceStatus st = Probe(inst);
    if (st.state == RunState::kRunning) {
      LogInfo("lab server already running", {{"name", name}, {"pid", std::to_string(st.pid)}});
      return inst;
    }
    if (st.state == RunState::kCrashed) {
      LogWarn("lab server had crashed (stale pid " + std::to_string(st.pid) + "); restarting",
              {{"name", name}});
      // Children of a killed postmaster leave within moments; only then is the stale pid
      // file safe to remove (a zombie postmaster would make postgres refuse to start).
      int64_t deadline = MonotonicMillis() + 20000;
      while (!ProcessesIn(inst.data_dir).empty() && MonotonicMillis() < deadline) SleepMillis(50);
      if (!ProcessesIn(inst.data_dir).empty()) {
        return Status::FailedPrecondition("processes of crashed server '" + name +
                                          "' are still running in " + inst.data_dir);
      }
      ::unlink((inst.data_dir + "/postmaster.pid").c_str());
    }
    if (opts.port != 0 && opts.port != inst.port) {
      return Status::InvalidArgument("lab server '" + name + "' uses port " +
                                     std::to_string(inst.port) + "; it cannot move to " +
                                     std::to_string(opts.port));
    }
    if (!PortFree(inst.host, inst.port)) {
      return Status::FailedPrecondition("port " + std::to_string(inst.port) + " of lab server '" +
                                        name + "' is in use by another process");
    }
    PGSHIFT_RETURN_IF_ERROR(LaunchServer(inst));
    return inst;
  }
  PGSHIFT_ASSIGN_OR_RETURN(std::string bin, paths_.ServerBin(major));
  Instance inst;
  inst.name = name;
  inst.kind = Kind::kPostgres;
  inst.version = major;
  inst.host = opts.host;
  PGSHIFT_ASSIGN_OR_RETURN(inst.port, ChoosePort(opts.port, opts.host, name));
  inst.dir = dir_ + "/" + name;
  inst.data_dir = inst.dir + "/data";
  inst.config_file = inst.data_dir + "/postgresql.conf";
  inst.log_file = inst.dir + "/server.log";
  Status s = InitServer(&inst, opts, bin);
  if (!s.ok()) {
    (void)RemoveAll(inst.dir);
    return s;
  }
  PGSHIFT_RETURN_IF_ERROR(Save(inst));
  // Another process (another lab) may take the chosen port between our check and the start.
  for (int tries = 0;; ++tries) {
    Status started = LaunchServer(inst);
    if (started.ok()) break;
    if (opts.port != 0 || tries >= 5 ||
        started.message().find("Address already in use") == std::string::npos) {
      return started;
    }
    PGSHIFT_ASSIGN_OR_RETURN(inst.port, ChoosePort(0, inst.host, name));
    PGSHIFT_RETURN_IF_ERROR(Save(inst));
  }
  LogInfo("lab server started", {{"name", name},
                                 {"version", std::to_string(major)},
                                 {"port", std::to_string(inst.port)}});
  return inst;
}

Status Lab::WriteRouterConfig(const Instance& inst, const Instance& backend) const {
  std::string user = ServerOsUser();
  if (inst.kind == Kind::kPgBouncer) {
    std::string ini =
        "; pgshift lab router '" + inst.name + "' in front of '" + backend.name + "'\n"
        "[databases]\n"
        "* = host=" + backend.host + " port=" + std::to_string(backend.port) + "\n"
        "\n[pgbouncer]\n"
        "listen_addr = " + inst.host + "\n"
        "listen_port = " + std::to_string(inst.port) + "\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        "auth_file = " + inst.dir + "/userlist.txt\n"
        "admin_users = " + inst.user + "\n"
        "stats_users = " + inst.user + "\n"
        "pool_mode = transaction\n"
        "max_client_conn = 1000\n"
        "default_pool_size = 40\n"
        "reserve_pool_size = 10\n"
        "server_reset_query =\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        "logfile = " + inst.log_file + "\n"
        "pidfile = " + RouterPidFile(inst) + "\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n";
    PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(inst.config_file, ini, 0600));
    // PgBouncer logs in to the server with this password and checks clients against it.
    std::string userlist = "\"" + inst.user + "\" \"" + backend.password + "\"\n";
    PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(inst.dir + "/userlist.txt", userlist, 0600));
  } else {
    std::string module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    std::string conf =
        "# pgshift lab router '" + inst.name + "' in front of '" + backend.name + "'\n"
        "load_module " + module + ";\n"
        "worker_processes 1;\n"
        "pid " + RouterPidFile(inst) + ";\n"
        "error_log " + inst.log_file + " warn;\n"
        "events { worker_connections 4096; }\n"
        "stream {\n"
        "  upstream backend {\n"
        "    server " + backend.host + ":" + std::to_string(backend.port) + ";\n"
        "  }\n"
        "  server {\n"
        "    listen " + inst.host + ":" + std::to_string(inst.port) + ";\n"
        "    proxy_pass backend;\n"
        "    proxy_connect_timeout 5s;\n"
        "  }\n"
        "}\n";
    PGSHIFT_RETURN_IF_ERROR(WriteFileAtomic(inst.config_file, conf, 0644));
  }
  return ChownToUser(inst.dir, user, true);
}

Status Lab::LaunchRouter(const Instance& inst) {
  ProcessOptions start;
  start.run_as = ServerOsUser();
  start.timeout_ms = 30000;
  if (inst.kind == Kind::kPgBouncer) {
    start.argv = {"pgbouncer", "-d", inst.config_file};
  } else {
    start.argv = {"nginx", "-c", inst.config_file, "-p", inst.dir, "-e", inst.log_file};
  }
  auto r = RunProcess(start);
  if (!r.ok()) return r.status().WithContext("starting " + KindName(inst.kind));
  if (!r->ok()) {
    return Status::Unavailable(KindName(inst.kind) + " '" + inst.name +
                               "' did not start: " + r->Describe() + "\n" +
                               LastLines(inst.log_file, 10));
  }
  Status s = WaitForPort(inst.host, inst.port, 15000);
  if (!s.ok()) return s.WithContext(KindName(inst.kind) + " '" + inst.name + "'");
  return Status::Ok();
}

Result<Instance> Lab::StartRouter(const std::string& name, const std::string& backend_name,
                                  Kind kind, int port) {
  PGSHIFT_RETURN_IF_ERROR(CheckName(name));
  if (kind == Kind::kPostgres) return Status::InvalidArgument("a router is pgbouncer or nginx");
  auto backend = Get(backend_name);
  if (!backend.ok()) return backend.status();
  if (backend->kind != Kind::kPostgres) {
    return Status::InvalidArgument("router backend '" + backend_name + "' is a " +
                                   KindName(backend->kind) + ", not a lab server");
  }
  Instance inst;
  auto existing = Get(name);
  if (existing.ok()) {
    inst = *existing;
    if (inst.kind != kind) {
      return Status::AlreadyExists("lab instance '" + name + "' already exists as a " +
                                   KindName(inst.kind));
    }
    InstanceStatus st = Probe(inst);
    if (st.state == RunState::kRunning) {
      if (inst.backend != backend_name) {
        return Status::FailedPrecondition("router '" + name + "' is running in front of '" +
                                          inst.backend + "'; stop it to move it to '" +
                                          backend_name + "'");
      }
      return inst;
    }
    if (port != 0 && port != inst.port) {
      return Status::InvalidArgument("router '" + name + "' uses port " +
                                     std::to_string(inst.port));
    }
    if (st.state == RunState::kCrashed) {
      LogWarn("router had crashed (stale pid " + std::to_string(st.pid) + "); restarting",
              {{"name", name}});
      ::unlink(RouterPidFile(inst).c_str());
    }
    if (!PortFree(inst.host, inst.port)) {
      return Status::FailedPrecondition("port " + std::to_string(inst.port) + " of router '" +
                                        name + "' is in use by another process");
    }
  } else {
    inst.name = name;
    inst.kind = kind;
    PGSHIFT_ASSIGN_OR_RETURN(inst.port, ChoosePort(port, inst.host, name));
    inst.dir = dir_ + "/" + name;
    inst.config_file = inst.dir + (kind == Kind::kPgBouncer ? "/pgbouncer.ini" : "/nginx.conf");
    inst.log_file = inst.dir + "/" + KindName(kind) + ".log";
    PGSHIFT_RETURN_IF_ERROR(MakeDirs(inst.dir, 0700));
  }
  inst.backend = backend_name;
  inst.version = backend->version;
  inst.user = backend->user;
  inst.password = backend->password;
  PGSHIFT_RETURN_IF_ERROR(WriteRouterConfig(inst, *backend));
  PGSHIFT_RETURN_IF_ERROR(Save(inst));
  PGSHIFT_RETURN_IF_ERROR(LaunchRouter(inst));
  LogInfo("lab router started", {{"name", name},
                                 {"kind", KindName(kind)},
                                 {"backend", backend_name},
                                 {"port", std::to_string(inst.port)}});
  return inst;
}

Status Lab::StopPid(const Instance& inst, int pid) const {
  if (inst.kind == Kind::kPostgres) {
    PGSHIFT_ASSIGN_OR_RETURN(std::string bin, paths_.ServerBin(inst.version));
    ProcessOptions stop;
    stop.argv = {bin + "/pg_ctl", "-D", inst.data_dir, "-m", "fast", "-w", "-t", "60", "stop"};
    stop.env["LD_LIBRARY_PATH"] = paths_.ServerLib(inst.version);
    stop.run_as = ServerOsUser();
    stop.timeout_ms = 90000;
    auto r = RunProcess(stop);
    if (!r.ok()) return r.status().WithContext("pg_ctl stop");
    if (!r->ok() && ProcessAlive(pid)) {
      return Status::Unavailable("cannot stop '" + inst.name + "': " + r->Describe());
    }
    return Status::Ok();
  }
  // PgBouncer: SIGTERM closes at once; nginx: SIGTERM is its fast shutdown.
  ::kill(pid, SIGTERM);
  int64_t deadline = MonotonicMillis() + 10000;
  while (ProcessAlive(pid) && MonotonicMillis() < deadline) SleepMillis(20);
  if (ProcessAlive(pid)) {
    ::kill(pid, SIGKILL);
    SleepMillis(100);
  }
  ::unlink(RouterPidFile(inst).c_str());
  return Status::Ok();
}

Status Lab::Stop(const std::string& name) {
  PGSHIFT_ASSIGN_OR_RETURN(Instance inst, Get(name));
  InstanceStatus st = Probe(inst);
  if (st.state == RunState::kStopped) return Status::Ok();
  if (st.state == RunState::kCrashed) {
    if (inst.kind != Kind::kPostgres) {
      ::unlink(RouterPidFile(inst).c_str());
    }
    return Status::Ok();
  }
  return StopPid(inst, st.pid);
}

Status Lab::Destroy(const std::string& name) {
  PGSHIFT_ASSIGN_OR_RETURN(Instance inst, Get(name));
  if (inst.kind == Kind::kPostgres) {
    auto all = List();
    if (all.ok()) {
      for (const auto& st : *all) {
        if (st.instance.backend == name && st.state == RunState::kRunning) {
          return Status::FailedPrecondition("router '" + st.instance.name + "' runs in front of '" +
                                            name + "'; stop or destroy it first");
        }
      }
    }
  }
  PGSHIFT_RETURN_IF_ERROR(Stop(name));
  PGSHIFT_RETURN_IF_ERROR(RemoveAll(inst.dir));
  return WritePgpass();
}

Status Lab::Down() {
  PGSHIFT_ASSIGN_OR_RETURN(auto all, List());
  Status first = Status::Ok();
  for (int pass = 0; pass < 2; ++pass) {  // routers first, then servers
    for (const auto& st : all) {
      bool is_router = st.instance.kind != Kind::kPostgres;
      if (is_router != (pass == 0)) continue;
      Status s = Stop(st.instance.name);
      if (!s.ok() && first.ok()) first = s;
    }
  }
  return first;
}

}  // namespace pgshift::lab
