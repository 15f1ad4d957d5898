#include "engine/schema.h"

#include <gtest/gtest.h>

namespace pgshift::engine {
namespace {

// pg_restore -l of a small schema (PostgreSQL 18 tools), as printed.
const char kToc[] =
    ";\n"
    "; Archive created at 2026-12-01 06:30:00 UTC\n"
    ";     dbname: nv\n"
    ";\n"
    "; Selected TOC Entries:\n"
    ";\n"
    "843; 1247 16386 DOMAIN public posint postgres\n"
    "215; 1259 16392 TABLE public c postgres\n"
    "214; 1259 16387 TABLE public p postgres\n"
    "3150; 2606 16396 CONSTRAINT public c c_pkey postgres\n"
    "3146; 2606 16397 CHECK CONSTRAINT public p p_v_pos postgres\n"
    "844; 2606 16403 CHECK CONSTRAINT public posint posint_check postgres\n"
    "3151; 2606 16398 FK CONSTRAINT public c c_pid_fk postgres\n"
    "3160; 3466 16500 EVENT TRIGGER - pgshift_ab12cd34_ddl postgres\n"
    "3161; 6104 16501 PUBLICATION - app_pub postgres\n";

TEST(SelectTocEntries, KeepsOrderAndSplitsNotValidConstraintsByCatalogId) {
  const std::set<std::string> not_valid = {"2606 16397", "2606 16403", "2606 16398"};
  const std::set<std::string> own = {"3466 16500"};

  std::string all = SelectTocEntries(kToc, SchemaSection::kAll, not_valid, own);
  EXPECT_EQ(all,
            "843; 1247 16386 DOMAIN public posint postgres\n"
            "215; 1259 16392 TABLE public c postgres\n"
            "214; 1259 16387 TABLE public p postgres\n"
            "3150; 2606 16396 CONSTRAINT public c c_pkey postgres\n"
            "3146; 2606 16397 CHECK CONSTRAINT public p p_v_pos postgres\n"
            "844; 2606 16403 CHECK CONSTRAINT public posint posint_check postgres\n"
            "3151; 2606 16398 FK CONSTRAINT public c c_pid_fk postgres\n"
            "3161; 6104 16501 PUBLICATION - app_pub postgres\n");

  // Before a subscription's copy: the primary key yes, the three NOT VALID ones no.
  EXPECT_EQ(SelectTocEntries(kToc, SchemaSection::kAllButNotValid, not_valid, own),
            "843; 1247 16386 DOMAIN public posint postgres\n"
            "215; 1259 16392 TABLE public c postgres\n"
            "214; 1259 16387 TABLE public p postgres\n"
            "3150; 2606 16396 CONSTRAINT public c c_pkey postgres\n"
            "3161; 6104 16501 PUBLICATION - app_pub postgres\n");
  // After it: exactly those, in pg_dump's order (the domain's among them).
  EXPECT_EQ(SelectTocEntries(kToc, SchemaSection::kNotValid, not_valid, own),
            "3146; 2606 16397 CHECK CONSTRAINT public p p_v_pos postgres\n"
            "844; 2606 16403 CHECK CONSTRAINT public posint posint_check postgres\n"
            "3151; 2606 16398 FK CONSTRAINT public c c_pid_fk postgres\n");
  // Sections are pg_restore's business: the list is the same as kAll's.
  EXPECT_EQ(SelectTocEntries(kToc, SchemaSection::kPostData, not_valid, own), all);
  // Nothing NOT VALID on the source: nothing to apply after the copy.
  EXPECT_EQ(SelectTocEntries(kToc, SchemaSection::kNotValid, {}, own), "");
}

// A script as pg_restore writes it (shortened), with pgshift's preamble line on top.
const char kScript[] =
    "SET session_replication_role = replica;\n"                             // 1
    "\\restrict abc\n"                                                      // 2
    "SET statement_timeout = 0;\n"                                          // 3
    "--\n"                                                                  // 4
    "-- Name: my_file_write(text); Type: FUNCTION; Schema: public; Owner: postgres\n"  // 5
    "--\n"                                                                  // 6
    "\n"                                                                    // 7
    "CREATE FUNCTION \"public\".\"my_file_write\"(\"text\") RETURNS bigint\n"  // 8
    "    LANGUAGE \"c\"\n"                                                  // 9
    "    AS '$libdir/adminpack', 'pg_file_write';\n"                        // 10
    "\n"                                                                    // 11
    "--\n"                                                                  // 12
    "-- Name: nc; Type: TABLE; Schema: public; Owner: app\n"                // 13
    "--\n"                                                                  // 14
    "\n"                                                                    // 15
    "CREATE TABLE \"public\".\"nc\" (\n"                                    // 16
    "    \"b\" integer GENERATED ALWAYS AS ((\"a\" * 3)) STORED\n"          // 17
    ")\n"                                                                   // 18
    "INHERITS (\"public\".\"np\");\n"                                       // 19
    "ALTER TABLE \"public\".\"nc\" OWNER TO \"app\";\n"                     // 20
    "\\unrestrict abc\n";                                                   // 21

TEST(ParsePsqlErrors, NamesTheObjectAndStatementOfEachRefusal) {
  const std::string err =
      "psql:<stdin>:10: ERROR:  58P01: could not access file \"$libdir/adminpack\": No such "
      "file or directory\n"
      "LOCATION:  internal_load_library, dfmgr.c:215\n"
      "psql:<stdin>:8: NOTICE:  00000: something harmless\n"
      "DETAIL:  not part of any refusal\n"
      "psql:<stdin>:19: ERROR:  42P16: child column \"b\" specifies generation expression\n"
      "HINT:  A child table column cannot be generated unless its parent column is.\n"
      "LOCATION:  MergeAttributes, tablecmds.c:2995\n"
      "psql:<stdin>:20: ERROR:  42P01: relation \"public.nc\" does not exist\n";
  auto refusals = ParsePsqlErrors(err, kScript);
  ASSERT_EQ(refusals.size(), 3u);

  EXPECT_EQ(refusals[0].object, "FUNCTION public.my_file_write(text)");
  EXPECT_EQ(refusals[0].type, "FUNCTION");
  EXPECT_EQ(refusals[0].sqlstate, "58P01");
  EXPECT_EQ(refusals[0].line, 10);
  EXPECT_EQ(refusals[0].error,
            "ERROR: could not access file \"$libdir/adminpack\": No such file or directory");
  EXPECT_EQ(refusals[0].statement,
            "CREATE FUNCTION \"public\".\"my_file_write\"(\"text\") RETURNS bigint\n"
            "    LANGUAGE \"c\"\n"
            "    AS '$libdir/adminpack', 'pg_file_write';");
  EXPECT_FALSE(refusals[0].follows_earlier);

  EXPECT_EQ(refusals[1].object, "TABLE public.nc");
  EXPECT_EQ(refusals[1].error,
            "ERROR: child column \"b\" specifies generation expression\n"
            "HINT:  A child table column cannot be generated unless its parent column is.");
  EXPECT_FALSE(refusals[1].follows_earlier);  // a refusal of its own, not "does not exist"

  // The owner change of the table that was refused: a consequence.
  EXPECT_EQ(refusals[2].object, "TABLE public.nc");
  EXPECT_EQ(refusals[2].sqlstate, "42P01");
  EXPECT_TRUE(refusals[2].follows_earlier);
}

TEST(ParsePsqlErrors, LinesAboveEveryHeaderHaveNoObjectAndSecretsAreHidden) {
  const std::string script =
      "BEGIN;\n"
      "ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:salt$key:server';\n";
  const std::string err =
      "psql:<stdin>:2: ERROR:  42601: syntax error at or near \"x\"\n"
      "LINE 1: ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:salt$key:server';\n";
  auto refusals = ParsePsqlErrors(err, script);
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_EQ(refusals[0].object, "");
  EXPECT_EQ(refusals[0].line, 2);
  EXPECT_EQ(refusals[0].error.find("SCRAM"), std::string::npos);
  // No error line at all (psql could not connect): nothing to name.
  EXPECT_TRUE(ParsePsqlErrors("psql: error: connection to server failed\n", script).empty());
}

TEST(AdaptDump, DropsWhatTheTargetCannotRead) {
  const std::string dump =
      "SET transaction_timeout = 0;\n"
      "SET statement_timeout = 0;\n"
      "CREATE EVENT TRIGGER \"pgshift_ab12cd34_ddl\" ON ddl_command_end\n"
      "   EXECUTE FUNCTION \"_pgshift\".\"log_ddl\"();\n"
      "ALTER SCHEMA public OWNER TO pg_database_owner;\n"
      "CREATE TABLE t (id int);\n";
  EXPECT_EQ(AdaptDump(dump, {"statement_timeout"}, 13),
            "SET statement_timeout = 0;\nCREATE TABLE t (id int);\n\n");
  std::string kept = AdaptDump(dump, {"statement_timeout", "transaction_timeout"}, 17);
  EXPECT_NE(kept.find("SET transaction_timeout = 0;"), std::string::npos);
  EXPECT_NE(kept.find("OWNER TO pg_database_owner;"), std::string::npos);
  EXPECT_EQ(kept.find("pgshift_ab12cd34_ddl"), std::string::npos);
}

TEST(AdaptDump, InheritedNotNullTableConstraintsBecomeAlterTableBefore18) {
  const std::string dump =
      "CREATE TABLE \"public\".\"amphibian\" (\n"
      "    NOT NULL \"id\",\n"
      "    \"draft\" numeric\n"
      ")\n"
      "INHERITS (\"public\".\"vehicle\", \"public\".\"tagged\");\n"
      "CREATE TABLE \"public\".\"car\" (\n"
      "    \"seats\" integer,\n"
      "    CONSTRAINT \"car_id_nn\" NOT NULL \"id\"\n"
      ")\n"
      "INHERITS (\"public\".\"vehicle\");\n";
  EXPECT_EQ(AdaptDump(dump, {}, 15),
            "CREATE TABLE \"public\".\"amphibian\" (\n"
            "    \"draft\" numeric\n"
            ")\n"
            "INHERITS (\"public\".\"vehicle\", \"public\".\"tagged\");\n"
            "ALTER TABLE ONLY \"public\".\"amphibian\" ALTER COLUMN \"id\" SET NOT NULL;\n"
            "CREATE TABLE \"public\".\"car\" (\n"
            "    \"seats\" integer\n"
            ")\n"
            "INHERITS (\"public\".\"vehicle\");\n"
            "ALTER TABLE ONLY \"public\".\"car\" ALTER COLUMN \"id\" SET NOT NULL;\n\n");
  // 18 reads its own syntax.
  EXPECT_EQ(AdaptDump(dump, {}, 18), dump + "\n");
}

TEST(RoleStatements, SplitsAndDowngradesGrants) {
  const std::string script =
      "--\n-- Roles\n--\n\\restrict k\nSET default_transaction_read_only = off;\n"
      "CREATE ROLE app;\nALTER ROLE app WITH LOGIN\n  PASSWORD 'x';\n"
      "GRANT reader TO app WITH INHERIT TRUE, SET FALSE GRANTED BY postgres;\n";
  auto st = SplitRoleStatements(script);
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st[0], "CREATE ROLE app;");
  EXPECT_EQ(st[1], "ALTER ROLE app WITH LOGIN\n  PASSWORD 'x';");
  EXPECT_EQ(DowngradeGrant(st[2]), "GRANT reader TO app GRANTED BY postgres;");
  EXPECT_EQ(DowngradeGrant("GRANT a TO b WITH ADMIN OPTION, INHERIT TRUE;"),
            "GRANT a TO b WITH ADMIN OPTION;");
}

}  // namespace
}  // namespace pgshift::engine
