#include "routers/routers.h"

#include <gtest/gtest.h>

namespace pgshift::routers {
namespace {

TEST(PgBouncerIni, RewritesEveryDatabaseEntryAndKeepsTheRest) {
  std::string ini =
      "[databases]\n"
      "* = host=127.0.0.1 port=5432\n"
      "shop = host=db1 port=6000 dbname=shop pool_size=5\n"
      "; a comment = host=x\n"
      "\n[pgbouncer]\nlisten_port = 6432\nauth_type = scram-sha-256\n";
  auto out = RewritePgBouncerIni(ini, {"10.0.0.9", 5433});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_NE(out->find("* = host=10.0.0.9 port=5433"), std::string::npos);
  EXPECT_NE(out->find("shop = host=10.0.0.9 port=5433 dbname=shop pool_size=5"), std::string::npos);
  EXPECT_NE(out->find("; a comment = host=x"), std::string::npos);
  EXPECT_NE(out->find("listen_port = 6432"), std::string::npos);
  auto where = PgBouncerIniTarget(*out);
  ASSERT_TRUE(where.ok());
  EXPECT_EQ(where->ToString(), "10.0.0.9:5433");
}

TEST(PgBouncerIni, AddsAMissingPortAndRefusesAnIniWithoutDatabases) {
  auto out = RewritePgBouncerIni("[databases]\napp = host=a dbname=app\n", {"b", 7});
  ASSERT_TRUE(out.ok());
  EXPECT_NE(out->find("app = host=b dbname=app port=7"), std::string::npos);
  EXPECT_FALSE(RewritePgBouncerIni("[pgbouncer]\nlisten_port = 1\n", {"b", 7}).ok());
}

TEST(NginxConf, RewritesUpstreamServersNotServerBlocks) {
  std::string conf =
      "stream {\n  upstream backend {\n    server 127.0.0.1:25433;\n  }\n"
      "  server {\n    listen 127.0.0.1:25435;\n    proxy_pass backend;\n  }\n}\n";
  auto out = RewriteNginxUpstream(conf, {"127.0.0.1", 26000});
  ASSERT_TRUE(out.ok());
  EXPECT_NE(out->find("server 127.0.0.1:26000;"), std::string::npos);
  EXPECT_NE(out->find("  server {\n    listen 127.0.0.1:25435;"), std::string::npos);
  auto where = NginxUpstreamTarget(*out);
  ASSERT_TRUE(where.ok());
  EXPECT_EQ(where->port, 26000);
}

TEST(PgBouncerPoolMode, SessionPoolsAreNamedByWhereTheModeComesFrom) {
  PgBouncerPoolModes transaction{"transaction", {{"database shop", ""}, {"database *", ""}}, {}};
  EXPECT_TRUE(SessionPools(transaction).empty());

  // PgBouncer's own default is session: a missing setting is session.
  PgBouncerPoolModes unset{"", {{"database shop", ""}}, {}};
  EXPECT_EQ(SessionPools(unset),
            std::vector<std::string>{"database shop (the default pool_mode of [pgbouncer])"});

  // A database that overrides a session default is fine; one that does not is not.
  PgBouncerPoolModes mixed{"session", {{"database shop", "transaction"}, {"database *", ""}}, {}};
  EXPECT_EQ(SessionPools(mixed),
            std::vector<std::string>{"database * (the default pool_mode of [pgbouncer])"});

  // Overrides to session under a transaction default, for a database or a user.
  PgBouncerPoolModes overrides{"transaction",
                               {{"database shop", "session"}, {"database crm", "statement"}},
                               {{"user app", ""}, {"user batch", "SESSION"}}};
  EXPECT_EQ(SessionPools(overrides),
            (std::vector<std::string>{"database shop", "user batch"}));
}

TEST(PgBouncerPoolMode, IniEntriesCarryTheirOwnPoolMode) {
  auto modes = PgBouncerIniPoolModes(
      "[databases]\n* = host=a port=1\nshop = host=a port=1 pool_mode=session\n"
      "; old = host=b pool_mode=session\n[pgbouncer]\npool_mode = transaction\n");
  EXPECT_EQ(modes, (std::vector<std::pair<std::string, std::string>>{{"*", ""}, {"shop", "session"}}));
}

}  // namespace
}  // namespace pgshift::routers
