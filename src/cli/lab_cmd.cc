// `pgshift lab ...`: local servers and routers for tests, benchmarks and the demo.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "lab/lab.h"

namespace pgshift::cli {

namespace {

struct LabArgs {
  std::string name;
  int version = 0;
  int port = 0;
  std::string host = "127.0.0.1";
  std::vector<std::string> settings;
  std::string backend;
  std::string kind = "pgbouncer";
  bool json = false;
};

void PrintList(const lab::Lab& l, const std::vector<lab::InstanceStatus>& all, bool json) {
  if (json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& st : all) {
      const lab::Instance& i = st.instance;
      nlohmann::json j = {{"name", i.name},
                          {"kind", lab::KindName(i.kind)},
                          {"version", i.version},
                          {"host", i.host},
                          {"port", i.port},
                          {"dsn", l.Dsn(i)},
                          {"config_file", i.config_file},
                          {"log_file", i.log_file},
                          {"pid", st.pid},
                          {"state", lab::RunStateName(st.state)},
                          {"running", st.state == lab::RunState::kRunning}};
      j["admin_dsn"] = i.kind == lab::Kind::kPgBouncer ? nlohmann::json(l.AdminDsn(i)) : nullptr;
      j["data_dir"] = i.data_dir.empty() ? nlohmann::json(nullptr) : nlohmann::json(i.data_dir);
      j["backend"] = i.backend.empty() ? nlohmann::json(nullptr) : nlohmann::json(i.backend);
      arr.push_back(j);
    }
    printf("%s\n", arr.dump(2).c_str());
    return;
  }
  printf("%-16s %-10s %-7s %-6s %-8s %-8s %s\n", "NAME", "KIND", "VERSION", "PORT", "STATE",
         "PID", "DSN");
  for (const auto& st : all) {
    const lab::Instance& i = st.instance;
    printf("%-16s %-10s %-7d %-6d %-8s %-8d %s\n", i.name.c_str(), lab::KindName(i.kind).c_str(),
           i.version, i.port, lab::RunStateName(st.state).c_str(), st.pid, l.Dsn(i).c_str());
    if (i.kind != lab::Kind::kPostgres) {
      printf("%-16s backend=%s config=%s\n", "", i.backend.c_str(), i.config_file.c_str());
      if (i.kind == lab::Kind::kPgBouncer) printf("%-16s admin=%s\n", "", l.AdminDsn(i).c_str());
    } else {
      printf("%-16s data=%s config=%s\n", "", i.data_dir.c_str(), i.config_file.c_str());
    }
  }
}

}  // namespace

void AddLabCommands(CLI::App& app, GlobalOptions& global, Status* status) {
  auto args = std::make_shared<LabArgs>();
  CLI::App* labc = app.add_subcommand("lab", "local PostgreSQL servers and routers");
  labc->require_subcommand(1);
  auto open = [&global]() { return lab::Lab::Open(global.lab_dir); };

  CLI::App* start = labc->add_subcommand("start", "initdb once, start, print the DSN last");
  start->add_option("name", args->name, "instance name")->required();
  start->add_option("--version", args->version, "PostgreSQL major version (12 to 18)")->required();
  start->add_option("--port", args->port, "TCP port (default: a free one)");
  start->add_option("--host", args->host, "listen address (loopback)");
  start->add_option("--set", args->settings, "extra postgresql.conf line, e.g. 'work_mem = 8MB'");
  start->callback([=]() {
    auto l = open();
    if (!l.ok()) return void(*status = l.status());
    lab::ServerOptions opts;
    opts.port = args->port;
    opts.host = args->host;
    opts.settings = args->settings;
    auto inst = l->StartServer(args->name, args->version, opts);
    if (!inst.ok()) return void(*status = inst.status());
    printf("%s\n", l->Dsn(*inst).c_str());
  });

  CLI::App* router = labc->add_subcommand("router", "a PgBouncer or nginx stream proxy in front of a lab server");
  router->add_option("name", args->name, "router name")->required();
  router->add_option("--backend", args->backend, "lab server the router leads to")->required();
  router->add_option("--kind", args->kind, "pgbouncer (transaction pooling) or nginx (TCP)")
      ->check(CLI::IsMember({"pgbouncer", "nginx"}));
  router->add_option("--port", args->port, "TCP port (default: a free one)");
  router->callback([=]() {
    auto l = open();
    if (!l.ok()) return void(*status = l.status());
    auto kind = lab::ParseKind(args->kind);
    if (!kind.ok()) return void(*status = kind.status());
    auto inst = l->StartRouter(args->name, args->backend, *kind, args->port);
    if (!inst.ok()) return void(*status = inst.status());
    if (*kind == lab::Kind::kPgBouncer) printf("admin: %s\n", l->AdminDsn(*inst).c_str());
    printf("%s\n", l->Dsn(*inst).c_str());
  });

  CLI::App* stop = labc->add_subcommand("stop", "stop an instance (data kept)");
  stop->add_option("name", args->name)->required();
  stop->callback([=]() {
    auto l = open();
    if (!l.ok()) return void(*status = l.status());
    *status = l->Stop(args->name);
  });

  CLI::App* destroy = labc->add_subcommand("destroy", "stop an instance and delete its files");
  destroy->add_option("name", args->name)->required();
  destroy->callback([=]() {
    auto l = open();
    if (!l.ok()) return void(*status = l.status());
    *status = l->Destroy(args->name);
  });

  CLI::App* down = labc->add_subcommand("down", "stop every instance of the lab");
  down->callback([=]() {
    auto l = open();
    if (!l.ok()) return void(*status = l.status());
    *status = l->Down();
  });

  CLI::App* list = labc->add_subcommand("list", "instances with state, port, DSN and files");
  list->add_flag("--json", args->json, "machine-readable output");
  list->callback([=]() {
    auto l = open();
    if (!l.ok()) return void(*status = l.status());
    auto all = l->List();
    if (!all.ok()) return void(*status = all.status());
    PrintList(*l, *all, args->json);
  });
}

}  // namespace pgshift::cli
