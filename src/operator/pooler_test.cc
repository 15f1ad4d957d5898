#include "operator/pooler.h"

#include <gtest/gtest.h>

#include "common/strings.h"
#include "engine/fence.h"

namespace pgshift::op {
namespace {

Json Resource() {
  return Json::parse(R"({
    "apiVersion": "pgshift.dev/v1alpha1", "kind": "PostgresUpgrade",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"},
    "spec": {"source": {"service": "orders-db", "credentialsSecret": {"name": "admin"}},
             "target": {"version": 17}, "traffic": {"pooler": {}}}})");
}

PoolerConfig Config() {
  PoolerConfig c;
  c.ns = "shop";
  c.upgrade = "orders";
  c.databases = {"orders", "app-2"};
  c.source_user = "dba";
  c.source_password = "it's \"secret\"";
  c.target_password = "abc123";
  c.admin_password = "adm";
  c.roles = {{"app", "SCRAM-SHA-256$4096:c2FsdA==$a:b"}, {"we\"ird", "md5abc"}, {"nopw", ""}};
  return c;
}

TEST(PoolerIni, EveryDatabaseAndBothProbesGoThroughTheBackendService) {
  auto ini = PoolerIni(Config());
  ASSERT_TRUE(ini.ok()) << ini.status().message();
  const std::string server = "host=orders-pooler-backend.shop.svc port=5432";
  // The application's entries hold their new server connections at a fenced database.
  const std::string hold =
      " application_name=pgshift-pooler connect_query='SET statement_timeout = 0; DO "
      "$pgshift$BEGIN IF pg_catalog.to_regprocedure(''_pgshift.hold()'') IS NOT NULL THEN "
      "PERFORM _pgshift.hold(); END IF; END$pgshift$; RESET statement_timeout'\n";
  EXPECT_NE(ini->find("orders = " + server + " dbname='orders'" + hold), std::string::npos) << *ini;
  EXPECT_NE(ini->find("app-2 = " + server + " dbname='app-2'" + hold), std::string::npos);
  // Each probe logs in with its own server's credentials; quotes are doubled.
  EXPECT_NE(ini->find("pgshift_probe_source = " + server +
                      " dbname='orders' user='dba' password='it''s \"secret\"' pool_size=1"),
            std::string::npos)
      << *ini;
  EXPECT_NE(ini->find("pgshift_probe_target = " + server +
                      " dbname='orders' user=postgres password='abc123' pool_size=1"),
            std::string::npos);
  EXPECT_NE(ini->find("pool_mode = transaction\n"), std::string::npos);
  EXPECT_NE(ini->find("admin_users = pgshift_pooler_admin\n"), std::string::npos);
  EXPECT_NE(ini->find("auth_file = /etc/pgbouncer/userlist.txt\n"), std::string::npos);
  EXPECT_NE(ini->find("server_login_retry = 1\n"), std::string::npos);
}

TEST(PoolerIni, OnlyTheApplicationsEntriesHoldAndTheHoldFitsPgBouncersPacket) {
  auto ini = PoolerIni(Config());
  ASSERT_TRUE(ini.ok());
  EXPECT_TRUE(PoolerIniHolds(*ini));
  // An ini an older operator wrote: its cutover resumes clients at the end.
  EXPECT_FALSE(PoolerIniHolds("[databases]\norders = host=b port=5432 dbname='orders'\n"));
  // The probes log in to a fenced side at once: they must not wait there.
  for (const auto& line : Split(*ini, '\n', true)) {
    if (line.rfind("pgshift_probe_", 0) == 0) {
      EXPECT_EQ(line.find("connect_query"), std::string::npos) << line;
    }
  }
  // PgBouncer 1.18 sends the connect_query in a packet of 512 bytes (SEND_generic); a longer
  // one fails every login.
  EXPECT_LT(engine::PoolerHoldQuery().size(), 500u);
}

TEST(PoolerIni, ItsDatabasesAreReadBackWithoutTheProbes) {
  auto ini = PoolerIni(Config());
  ASSERT_TRUE(ini.ok());
  EXPECT_EQ(PoolerIniDatabases(*ini), (std::vector<std::string>{"orders", "app-2"}));
}

TEST(PoolerIni, RefusesWhatPgBouncerCannotCarry) {
  PoolerConfig c = Config();
  c.databases = {"my db"};
  auto ini = PoolerIni(c);
  ASSERT_FALSE(ini.ok());
  EXPECT_NE(ini.status().message().find("traffic.service"), std::string::npos);
  c = Config();
  c.source_password = "a\nb";
  EXPECT_FALSE(PoolerIni(c).ok());
  c = Config();
  c.databases.clear();
  EXPECT_FALSE(PoolerIni(c).ok());
}

TEST(PoolerUserlist, AdminInPlainTextAndEachRoleWithItsHash) {
  EXPECT_EQ(PoolerUserlist(Config()),
            "\"pgshift_pooler_admin\" \"adm\"\n"
            "\"app\" \"SCRAM-SHA-256$4096:c2FsdA==$a:b\"\n"
            "\"we\"\"ird\" \"md5abc\"\n");
}

TEST(PoolerObjects, NotOwnedByTheResourceAndWiredTogether) {
  Json cr = Resource();
  auto secret = PoolerSecret(cr, Config());
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ((*secret)["metadata"]["name"], "orders-pooler");
  EXPECT_FALSE((*secret)["metadata"].contains("ownerReferences"));
  EXPECT_EQ((*secret)["stringData"]["admin-password"], "adm");

  PoolerSpec spec;
  spec.replicas = 3;
  Json d = PoolerDeployment(cr, spec);
  EXPECT_FALSE(d["metadata"].contains("ownerReferences"));
  EXPECT_EQ(d["spec"]["replicas"], 3);
  const Json& pod = d["spec"]["template"]["spec"];
  EXPECT_EQ(pod["containers"][0]["image"], "edoburu/pgbouncer:v1.24.1-p1");
  EXPECT_EQ(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/etc/pgbouncer");
  EXPECT_EQ(pod["volumes"][0]["secret"]["secretName"], "orders-pooler");
  EXPECT_EQ(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]);
  EXPECT_EQ(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);

  Json svc = PoolerService(cr);
  EXPECT_EQ(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]);
  EXPECT_EQ(svc["spec"]["ports"][0]["targetPort"], "pgbouncer");
  // The pooler's Pods are not the target's.
  EXPECT_NE(svc["spec"]["selector"], TargetSelector("orders"));
}

TEST(PoolerObjects, BackendSelectsTheSourceAndRemembersIt) {
  Json src = Json::parse(R"({"metadata": {"name": "orders-db"},
    "spec": {"selector": {"app": "orders-db"}, "ports": [{"port": 5432, "targetPort": 5432}]}})");
  auto b = PoolerBackendService(Resource(), src);
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ((*b)["metadata"]["name"], "orders-pooler-backend");
  EXPECT_EQ((*b)["spec"]["selector"], src["spec"]["selector"]);
  EXPECT_EQ((*b)["metadata"]["annotations"][kSourceSelectorAnnotation], R"({"app":"orders-db"})");

  src["spec"]["ports"][0]["targetPort"] = "postgres";
  EXPECT_TRUE(PoolerBackendService(Resource(), src).ok());
  src["spec"]["ports"][0].erase("targetPort");  // defaults to the port
  EXPECT_TRUE(PoolerBackendService(Resource(), src).ok());
  src["spec"]["ports"][0]["targetPort"] = 6432;
  auto bad = PoolerBackendService(Resource(), src);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("Fix:"), std::string::npos);
  src["spec"].erase("selector");
  src["spec"]["ports"][0]["targetPort"] = 5432;
  EXPECT_FALSE(PoolerBackendService(Resource(), src).ok());
}

TEST(PoolerSpecParse, ExactlyOneWayToMoveTrafficAndASourceService) {
  Json cr = Resource();
  cr["spec"]["source"]["credentialsSecret"] = {{"name", "admin"}};
  auto s = ParseSpec(cr);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_TRUE(s->pooler.enabled);
  EXPECT_EQ(s->pooler.replicas, 2);
  EXPECT_EQ(s->pooler.pool_mode, "transaction");

  Json both = cr;
  both["spec"]["traffic"]["service"] = "orders";
  EXPECT_FALSE(ParseSpec(both).ok());
  Json none = cr;
  none["spec"]["traffic"] = Json::object();
  EXPECT_FALSE(ParseSpec(none).ok());
  Json session = cr;
  session["spec"]["traffic"]["pooler"]["poolMode"] = "session";
  auto refused = ParseSpec(session);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("PAUSE"), std::string::npos);
  Json by_host = cr;
  by_host["spec"]["source"].erase("service");
  by_host["spec"]["source"]["host"] = "db.example";
  auto host = ParseSpec(by_host);
  ASSERT_FALSE(host.ok());
  EXPECT_NE(host.status().message().find("source.service"), std::string::npos);
}

TEST(HostNamesService, ShortQualifiedAndClusterDomainNames) {
  for (const char* h : {"db-rw", "db-rw.shop", "db-rw.shop.svc", "db-rw.shop.svc.cluster.local",
                        "db-rw.shop.svc.corp.example"}) {
    EXPECT_TRUE(HostNamesService(h, "db-rw", "shop")) << h;
  }
  for (const char* h : {"", "db-rw.other", "db-rw.shop.svc.", "db-rw-2", "10.0.0.5",
                        "db-rw.shopping.svc", "x.db-rw.shop.svc"}) {
    EXPECT_FALSE(HostNamesService(h, "db-rw", "shop")) << h;
  }
}

TEST(AdoptedPoolerDatabases, HoldsTheEntriesThatGoThroughTheBackend) {
  std::vector<PoolerDatabaseRow> rows = {
      {"pgbouncer", "pgbouncer", "", "statement"},  // the admin console
      {"orders", "orders", "db-rw.shop.svc.cluster.local", ""},
      {"orders_ro", "orders", "db-ro", "statement"},  // another Service: left running
      {"app", "app", "db-rw", "transaction"},
  };
  auto got = AdoptedPoolerDatabases(rows, "transaction", "db-rw", "shop", {});
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(*got, (std::vector<std::string>{"app", "orders"}));
  // Every served database must be migrated when the migrated list is given.
  got = AdoptedPoolerDatabases(rows, "transaction", "db-rw", "shop", {"orders"});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("app is not migrated"), std::string::npos)
      << got.status().message();
}

TEST(AdoptedPoolerDatabases, RefusesSessionPoolingAndAnIniThatDoesNotUseTheBackend) {
  std::vector<PoolerDatabaseRow> rows = {{"orders", "orders", "db-rw", ""}};
  auto got = AdoptedPoolerDatabases(rows, "session", "db-rw", "shop", {});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(got.status().message().find("session mode"), std::string::npos);
  rows[0].pool_mode = "transaction";  // the entry's own mode wins over the default
  EXPECT_TRUE(AdoptedPoolerDatabases(rows, "session", "db-rw", "shop", {}).ok());
  got = AdoptedPoolerDatabases(rows, "transaction", "orders-db", "shop", {});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("host=orders-db"), std::string::npos)
      << got.status().message();
}

TEST(BackendSlice, IsTheBackendServicesOnlyReadyEndpointsOnItsPortName) {
  Json slice = BackendSlice("shop", "db-pooler-backend", "db",
                            {{"10.88.0.7", 5433}, {"10.88.0.9", 5433}});
  EXPECT_EQ(slice["metadata"]["name"], "db-pooler-backend-pgshift");
  EXPECT_EQ(slice["metadata"]["labels"]["kubernetes.io/service-name"], "db-pooler-backend");
  // Not the controller's name: it must not take this slice for one of its own.
  EXPECT_EQ(slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "pgshift-operator");
  EXPECT_EQ(slice["addressType"], "IPv4");
  ASSERT_EQ(slice["endpoints"].size(), 2u);
  EXPECT_EQ(slice["endpoints"][1]["addresses"][0], "10.88.0.9");
  EXPECT_TRUE(slice["endpoints"][0]["conditions"]["ready"].get<bool>());
  // The Service's port name (a proxy pairs them by name) and the Pods' port number.
  EXPECT_EQ(slice["ports"][0]["name"], "postgres");
  EXPECT_EQ(slice["ports"][0]["port"], 5433);
  EXPECT_EQ(BackendSlice("shop", "b", "db", {{"fd00::5", 5432}})["addressType"], "IPv6");
}

TEST(SideOfEndpoints, NamesAServerOnlyWhenTheEndpointsAreExactlyItsOwn) {
  const std::vector<SliceEndpoint> src = {{"10.0.0.1", 5432}}, tgt = {{"10.0.0.2", 5432}};
  EXPECT_EQ(SideOfEndpoints({{"10.0.0.2", 5432}}, src, tgt), "target");
  EXPECT_EQ(SideOfEndpoints({{"10.0.0.1", 5432}}, src, tgt), "source");
  EXPECT_EQ(SideOfEndpoints({}, src, tgt), "");
  EXPECT_EQ(SideOfEndpoints({{"10.0.0.1", 5432}, {"10.0.0.2", 5432}}, src, tgt), "");
  EXPECT_EQ(SideOfEndpoints({{"10.0.0.3", 5432}}, src, tgt), "");  // a Pod that restarted
}

}  // namespace
}  // namespace pgshift::op
