"""DDL during a migration is carried to the target at its point of the change stream.

A "deploy" runs on the source while the migration replicates, with the load client writing
through PgBouncer the whole time: a column added and filled, an index built CONCURRENTLY, a
table made by the application's own role and filled, a sequence, a comment and a grant. The
cutover then runs without a hand on the target: both servers have the same schema, the new
table's rows and owner, and every acknowledged write; a rollback carries a row written to the
new table after the cutover back to the source."""
import json
import re
import subprocess
import time

import pytest

from conftest import BIN, psql_bin, sql, wait_for
from test_upgrade import RATE, shop_behind_pgbouncer, stop_load_and_verify

# Sent one statement per query, as migration tools send them.
DEPLOY_WHILE_CATCHING_UP = [
    "ALTER TABLE shop.products ADD COLUMN discontinued boolean NOT NULL DEFAULT false",
    # The load client's own table, 500 writes/s going on: rows before the column and after it.
    "ALTER TABLE pgshift_load.items ADD COLUMN region text NOT NULL DEFAULT 'eu'",
    "CREATE INDEX CONCURRENTLY items_region ON pgshift_load.items (region)",
    "UPDATE shop.products SET discontinued = true WHERE id % 7 = 0",
]
DEPLOY_LATER = [
    "CREATE INDEX CONCURRENTLY products_discontinued ON shop.products (sku) WHERE discontinued",
    "CREATE SEQUENCE shop.invoice_no START 1000",
    "SELECT nextval('shop.invoice_no') FROM generate_series(1, 5)",
    "COMMENT ON COLUMN shop.products.discontinued IS 'no longer sold'",
    "GRANT SELECT ON shop.products TO shop_reader",
    "ALTER TABLE shop.products ALTER COLUMN title SET DEFAULT 'untitled'",
]
# Made by the application's role (not the superuser pgshift connects as).
AS_OWNER = [
    "CREATE TABLE shop.reviews (id bigserial PRIMARY KEY, product_id int NOT NULL "
    "REFERENCES shop.products, stars int NOT NULL CHECK (stars BETWEEN 1 AND 5), body text)",
    "INSERT INTO shop.reviews (product_id, stars, body) "
    "SELECT id, 1 + id % 5, 'review of ' || sku FROM shop.products",
]


def session(dsn, *queries):
    """`queries` in one session, each alone in its query string (its own transaction)."""
    args = [a for q in queries for a in ("-c", q)]
    p = subprocess.run([psql_bin(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def sql_as(dsn, role, query):
    return session(dsn, f"SET ROLE {role}", query)


def columns(dsn, table):
    return sql(dsn, "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' "
                    "|| attnotnull || ' ' || coalesce(pg_get_expr(adbin, adrelid), ''), ', ' "
                    "ORDER BY attnum) FROM pg_attribute LEFT JOIN pg_attrdef "
                    "ON adrelid = attrelid AND adnum = attnum "
                    f"WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped")


def schema_facts(dsn):
    return {
        "products": columns(dsn, "shop.products"),
        "reviews": columns(dsn, "shop.reviews"),
        "reviews_owner": sql(dsn, "SELECT pg_get_userbyid(relowner) FROM pg_class "
                                  "WHERE oid = 'shop.reviews'::regclass"),
        "index": sql(dsn, "SELECT pg_get_indexdef('shop.products_discontinued'::regclass)"),
        "sequence": sql(dsn, "SELECT start_value FROM pg_sequences WHERE schemaname = 'shop' "
                             "AND sequencename = 'invoice_no'"),
        "comment": sql(dsn, "SELECT col_description('shop.products'::regclass, "
                            "(SELECT attnum FROM pg_attribute WHERE attrelid = "
                            "'shop.products'::regclass AND attname = 'discontinued'))"),
        "grant": sql(dsn, "SELECT has_table_privilege('shop_reader', 'shop.products', 'SELECT')"),
    }


def phase(state):
    try:
        return json.loads((state / "state.json").read_text())["phase"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return ""


@pytest.mark.parametrize("src_version,dst_version", [(13, 18), (18, 13)])
def test_a_deploy_during_the_migration_is_carried_and_nothing_is_lost(lab, src_version, dst_version):
    name = f"dc{src_version}-{dst_version}"
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, name, src_version, dst_version)
    sql(src, "CREATE ROLE shop_owner; CREATE ROLE shop_reader; "
             "GRANT USAGE, CREATE ON SCHEMA shop TO shop_owner; "
             "GRANT SELECT, REFERENCES ON shop.products TO shop_owner")
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "600",
                     "--ledger", str(ledger))
    time.sleep(1)
    args = ["--state", str(state), "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
            "--router-config", router["config_file"]]
    up = subprocess.Popen([BIN, "upgrade", "--source", src, "--target", dst, "--cutover", "manual",
                           *args], env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    wait_for(lambda: phase(state) in ("CatchingUp", "ReadyForCutover"), timeout=240,
             what="the catch-up")
    wait_for(lambda: sql(src, "SELECT count(*) FROM _pgshift.ddl_log "
                              "WHERE tag = 'pgshift: carry from here'") == "1",
             timeout=60, what="the carry row")
    for stmt in DEPLOY_WHILE_CATCHING_UP:
        sql(src, stmt)
    out, err = up.communicate(timeout=300)
    assert up.returncode == 0, err
    assert "phase ReadyForCutover" in out, err
    # The column reached the target by replication alone (pgshift had stopped, or was waiting).
    wait_for(lambda: "discontinued" in columns(dst, "shop.products"), timeout=30,
             what="the carried column")

    for stmt in DEPLOY_LATER:
        sql(src, stmt)
    for stmt in AS_OWNER:
        sql_as(src, "shop_owner", stmt)
    # The application writes to its new table while nothing publishes it yet.
    sql_as(src, "shop_owner", "INSERT INTO shop.reviews (product_id, stars) SELECT min(id), 5 FROM shop.products")

    cut = lab.run("cutover", "--state", str(state), timeout=300)
    assert "phase RollbackReady" in cut.stdout, cut.stderr
    assert "DDL carried to the target" in cut.stderr
    assert "copying the tables made on the source during the migration" in cut.stderr
    assert schema_facts(dst) == schema_facts(src)
    facts = schema_facts(dst)
    assert "discontinued boolean true false" in facts["products"]
    assert facts["reviews_owner"] == "shop_owner" and facts["grant"] == "t"
    assert "WHERE discontinued" in facts["index"] and facts["sequence"] == "1000"
    assert "region text true 'eu'::text" in columns(dst, "pgshift_load.items")
    assert columns(dst, "pgshift_load.items") == columns(src, "pgshift_load.items")
    assert sql(dst, "SELECT to_regclass('pgshift_load.items_region') IS NOT NULL") == "t"
    for q in ["SELECT count(*), sum(stars) FROM shop.reviews",
              "SELECT count(*) FILTER (WHERE discontinued) FROM shop.products",
              "SELECT last_value FROM shop.invoice_no"]:
        assert sql(dst, q) == sql(src, q), q
    assert int(sql(dst, "SELECT count(*) FROM shop.reviews")) > 1
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert st["verification"]["clean"] is True
    # The target's clients (through PgBouncer) use the new table; a rollback carries it back.
    sql(app, "INSERT INTO shop.reviews (product_id, stars, body) "
             "SELECT min(id), 4, 'after cutover' FROM shop.products")
    back = lab.run("rollback", "--state", str(state), timeout=300)
    assert "phase RolledBack" in back.stdout, back.stderr
    assert sql(src, "SELECT count(*) FROM shop.reviews WHERE body = 'after cutover'") == "1"
    stop_load_and_verify(lab, load, src, ledger)


def test_ddl_pgshift_cannot_carry_blocks_the_cutover_with_the_reason(lab):
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, "dn", 13, 18)
    check = lab.run("check", "--source", src, "--target", dst)
    assert re.search(r"INFO\s+ddl\s+postgres\s+DDL on the source from the catch-up on is "
                     r"carried", check.stdout), check.stdout
    args = ["--state", str(state), "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
            "--router-config", router["config_file"]]
    up = lab.run("upgrade", "--source", src, "--target", dst, "--cutover", "manual", *args,
                 timeout=300)
    assert "phase ReadyForCutover" in up.stdout, up.stderr
    # A script in one query string, and a column whose existing rows each server would fill
    # itself: neither is carried. The carried one in between still is.
    sql(src, "ALTER TABLE shop.products ADD COLUMN a int; ALTER TABLE shop.products ADD COLUMN b int")
    sql(src, "ALTER TABLE shop.orders ADD COLUMN note text")
    sql(src, "ALTER TABLE shop.customers ADD COLUMN seen_at timestamptz DEFAULT now()")
    sql(src, "DO $$ BEGIN EXECUTE 'ALTER TABLE shop.orders ADD COLUMN x int'; END $$")
    p = lab.run("cutover", "--state", str(state), check=False, timeout=300)
    assert p.returncode == 3, p.stderr
    assert "DDL ran on the source after the schema copy" in p.stderr
    assert "sent in one query string with other statements" in p.stderr
    assert "non-constant DEFAULT" in p.stderr and "seen_at" in p.stderr
    assert "inside another statement (a function or a DO block)" in p.stderr
    blocked = p.stderr.split("cutover is blocked:")[1]
    assert "ADD COLUMN note text" not in blocked  # carried, so not listed
    assert "DDL carried to the target (postgres): ALTER TABLE shop.orders ADD COLUMN note text" in p.stderr
    assert "note" in columns(dst, "shop.orders")
    assert "seen_at" not in columns(dst, "shop.customers")
    assert sql(app, "SHOW server_version_num").startswith("13")
    # The documented way out: the same change on the target, the rows gone from the log.
    assert "SET default_transaction_read_only = off" in p.stderr
    sql(src, "UPDATE shop.customers SET seen_at = '2026-01-01'")
    session(dst, "SET session_replication_role = replica",
            "SET default_transaction_read_only = off",
            "ALTER TABLE shop.products ADD COLUMN a int, ADD COLUMN b int",
            "ALTER TABLE shop.orders ADD COLUMN x int",
            "ALTER TABLE shop.customers ADD COLUMN seen_at timestamptz DEFAULT now()",
            "UPDATE shop.customers SET seen_at = '2026-01-01'")
    sql(src, "DELETE FROM _pgshift.ddl_log WHERE statement IS NULL AND tag <> 'pgshift: carry from here'")
    cut = lab.run("cutover", "--state", str(state), timeout=300)
    assert "phase RollbackReady" in cut.stdout, cut.stderr


# (query string, the one statement pgshift would run again, or None: not one statement)
STATEMENTS = [
    ("ALTER TABLE t ADD c int;", "ALTER TABLE t ADD c int"),
    ("  ALTER TABLE t ADD c text DEFAULT 'a;b' ;  ", "ALTER TABLE t ADD c text DEFAULT 'a;b'"),
    ('ALTER TABLE "a;b" ADD "c;""d" int', 'ALTER TABLE "a;b" ADD "c;""d" int'),
    ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
     "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql"),
    ("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $x$ $body$ LANGUAGE sql; -- done",
     "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $x$ $body$ LANGUAGE sql"),
    ("COMMENT ON TABLE t IS E'it\\'s; fine'", "COMMENT ON TABLE t IS E'it\\'s; fine'"),
    ("COMMENT ON TABLE t IS 'it''s; fine'", "COMMENT ON TABLE t IS 'it''s; fine'"),
    ("/* a; /* nested; */ b; */ ALTER TABLE t ADD c int /* x; */",
     "/* a; /* nested; */ b; */ ALTER TABLE t ADD c int /* x; */"),
    ("ALTER TABLE t ADD c int -- trailing; comment", "ALTER TABLE t ADD c int -- trailing; comment"),
    ("ALTER TABLE t ADD c int; -- done\n/* and */ ;", "ALTER TABLE t ADD c int"),
    ("SELECT 1; SELECT 2", None),
    ("ALTER TABLE t ADD c int; ALTER TABLE t ADD d int", None),
    ("SELECT 'unterminated; x", None),
    ("SELECT $$ unterminated; x", None),
]


@pytest.mark.parametrize("version,other", [(13, 18), (18, 13)])
def test_the_single_statement_check_skips_quotes_comments_and_dollar_quotes(lab, version, other):
    src = lab.start(f"ss{version}", version)
    dst = lab.start(f"ss{version}-dst", other)
    sql(src, "CREATE TABLE t (id int PRIMARY KEY)")
    lab.run("upgrade", "--source", src, "--target", dst, "--cutover", "manual",
            "--state", str(lab.dir / f"ss{version}-state"), "--router", "manual", timeout=300)
    for query, want in STATEMENTS:
        got = sql(src, f"SELECT coalesce(_pgshift.single_statement($q${query}$q$), '<none>')")
        assert got == (want if want is not None else "<none>"), query
