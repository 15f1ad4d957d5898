#include "engine/post_data.h"

#include <gtest/gtest.h>

namespace pgshift::engine {
namespace {

using Wave = PostDataStatement::Wave;

// The shape of `pg_dump --section=post-data --quote-all-identifiers` output.
constexpr const char* kScript = R"SQL(\restrict abc123

SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: Sales; Owner: postgres
--

ALTER TABLE ONLY "Sales"."orders"
    ADD CONSTRAINT "orders_pkey" PRIMARY KEY ("id");

SET default_tablespace = '';

CREATE INDEX "items; odd" ON ONLY "inventory"."movements" USING "btree" ("at");
CREATE UNIQUE INDEX "u" ON "public"."t" USING "btree" ("a") WHERE ("b" <> ';');
ALTER INDEX "inventory"."movements_pkey" ATTACH PARTITION "inventory"."movements_2025_pkey";
ALTER TABLE ONLY "Sales"."Order Lines"
    ADD CONSTRAINT "Order Lines_order_id_fkey" FOREIGN KEY ("order_id") REFERENCES "Sales"."orders"("id") ON DELETE CASCADE;
ALTER TABLE "public"."t" ADD CONSTRAINT "c" CHECK (("a" > 0)) NOT VALID;
COMMENT ON INDEX "public"."u" IS 'has a ; and a ''quote''
-- and a line that looks like a comment;';
CREATE RULE "r" AS ON INSERT TO "public"."t" DO INSTEAD (INSERT INTO "public"."log" VALUES (1); INSERT INTO "public"."log" VALUES (2));
CREATE TRIGGER "tr" AFTER INSERT ON "public"."t" FOR EACH ROW EXECUTE FUNCTION "public"."f"();
ALTER TABLE "public"."t" ADD CONSTRAINT "ex" EXCLUDE USING "gist" ("r" WITH &&);
DO $body$ BEGIN PERFORM 1; END $body$;

\unrestrict abc123
)SQL";

TEST(PostData, SplitsStatementsAndSortsThemIntoWaves) {
  auto st = SplitPostData(kScript);
  ASSERT_EQ(st.size(), 11u);
  EXPECT_EQ(st[0].wave, Wave::kIndex);
  EXPECT_EQ(st[0].table, "\"Sales\".\"orders\"");
  EXPECT_EQ(st[0].sql.rfind("ALTER TABLE ONLY \"Sales\".\"orders\"", 0), 0u) << st[0].sql;
  EXPECT_EQ(st[1].wave, Wave::kIndex);
  EXPECT_EQ(st[1].table, "\"inventory\".\"movements\"");
  EXPECT_EQ(st[2].wave, Wave::kIndex);
  EXPECT_EQ(st[2].table, "\"public\".\"t\"");
  EXPECT_NE(st[2].sql.find("<> ';')"), std::string::npos) << st[2].sql;
  EXPECT_EQ(st[3].wave, Wave::kAttach);
  EXPECT_EQ(st[4].wave, Wave::kForeignKey);
  EXPECT_EQ(st[4].table, "\"Sales\".\"Order Lines\"");
  EXPECT_EQ(st[5].wave, Wave::kOther);  // NOT VALID check: cheap, in the last wave
  EXPECT_EQ(st[6].wave, Wave::kOther);
  EXPECT_NE(st[6].sql.find("looks like a comment;'"), std::string::npos) << st[6].sql;
  EXPECT_EQ(st[7].wave, Wave::kOther);
  EXPECT_NE(st[7].sql.find("VALUES (2))"), std::string::npos) << st[7].sql;
  EXPECT_EQ(st[8].wave, Wave::kOther);
  EXPECT_EQ(st[9].wave, Wave::kIndex);  // EXCLUDE builds an index
  EXPECT_EQ(st[10].sql, "DO $body$ BEGIN PERFORM 1; END $body$");
}

TEST(PostData, StatementsCarryTheSettingsInForceWhereTheyStood) {
  auto st = SplitPostData(kScript);
  ASSERT_GE(st.size(), 2u);
  EXPECT_EQ(st[0].settings,
            "SET statement_timeout = 0; SET client_encoding = 'UTF8'; "
            "SELECT pg_catalog.set_config('search_path', '', false); ");
  EXPECT_NE(st[1].settings.find("SET default_tablespace = ''; "), std::string::npos);
  EXPECT_EQ(st[0].settings.find("default_tablespace"), std::string::npos);
  for (const auto& s : st) EXPECT_EQ(s.sql.find("\\"), std::string::npos) << s.sql;
}

TEST(PostData, KeysAreStableAndDistinct) {
  auto a = SplitPostData(kScript);
  auto b = SplitPostData(kScript);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].key, b[i].key);
    for (size_t k = 0; k < i; ++k) EXPECT_NE(a[i].key, a[k].key);
  }
  // The same statement twice still has two keys.
  auto twice = SplitPostData("CREATE INDEX \"i\" ON \"t\" (\"a\");\nCREATE INDEX \"i\" ON \"t\" (\"a\");");
  ASSERT_EQ(twice.size(), 2u);
  EXPECT_NE(twice[0].key, twice[1].key);
}

TEST(PostData, EscapeStringsAndNestedCommentsDoNotEndAStatement) {
  auto st = SplitPostData(
      "COMMENT ON TABLE \"t\" IS E'it\\'s; fine';\n"
      "/* a /* nested; */ comment */ CREATE INDEX \"i\" ON \"s\".\"t\" (\"a\");");
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].sql, "COMMENT ON TABLE \"t\" IS E'it\\'s; fine'");
  EXPECT_EQ(st[1].wave, Wave::kIndex);
  EXPECT_EQ(st[1].table, "\"s\".\"t\"");
}

TEST(PostData, EmptyScriptHasNoStatements) {
  EXPECT_TRUE(SplitPostData("").empty());
  EXPECT_TRUE(SplitPostData("-- nothing\nSET x = 1;\n").empty());
}

}  // namespace
}  // namespace pgshift::engine
