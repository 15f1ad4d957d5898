"""pgshift check: read-only preflight of a source/target pair, against real servers.

Contract: `pgshift check --source DSN --target DSN [--databases a,b]
[--tables-without-pk full|refuse] [--rollback-replication on|off] [--json]` prints the findings
table (or JSON), exits 0 when there is no error, 3 when a check fails, and 2 (with a message on
stderr naming the side) when a server refuses the login.
"""
import json
import re

import pytest

from conftest import on_db, pgshift_objects, sql


@pytest.fixture(scope="module")
def pair(lab):
    return lab.start("pf-src15", 15), lab.start("pf-dst17", 17)


def check(lab, source, target, *extra):
    return lab.run("check", "--source", source, "--target", target, *extra, check=False)


def rows(output, check_id):
    """Table rows of one check: (severity, subject, message)."""
    found = []
    for line in output.splitlines():
        m = re.match(r"^(OK|INFO|WARN|ERROR)\s+(\S+)\s+(\S+)\s+(.*)$", line)
        if m and m.group(2) == check_id:
            found.append((m.group(1), m.group(3), m.group(4)))
    return found


def test_clean_upgrade_pair_passes_and_changes_nothing(lab, pair):
    # A source of its own: the other tests leave failing databases on the shared one.
    src, dst = lab.start("pf-clean15", 15), pair[1]
    sql(src, "CREATE DATABASE app")
    sql(on_db(src, "app"), "CREATE TABLE orders (id bigserial PRIMARY KEY, note text); "
                           "INSERT INTO orders (note) SELECT 'n' FROM generate_series(1, 100)")
    slots_before = sql(src, "SELECT count(*) FROM pg_replication_slots")

    p = check(lab, src, dst)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PostgreSQL 15 -> 17 (upgrade)" in p.stdout
    assert not [line for line in p.stdout.splitlines() if line.startswith("ERROR")], p.stdout
    assert "ready to migrate" in p.stdout
    # Every non-template database is checked, postgres included.
    assert {r[1] for r in rows(p.stdout, "tables-identity")} == {"app", "postgres"}
    assert rows(p.stdout, "wal-level") == [("OK", "source", "wal_level = logical")]
    assert [r[0] for r in rows(p.stdout, "privileges")] == ["OK", "OK"]
    assert rows(p.stdout, "sequences")[0][:2] == ("INFO", "app")

    j = json.loads(check(lab, src, dst, "--databases", "app", "--json").stdout)
    assert (j["source_major"], j["target_major"], j["direction"]) == (15, 17, "upgrade")
    assert j["ok"] is True and j["databases"] == ["app"]
    assert {r["id"] for r in j["results"]} >= {
        "version", "wal-level", "rollback-wal-level", "replication-slots", "wal-senders",
        "logical-workers", "privileges", "client-tools", "tables-identity", "large-objects",
        "extensions", "target-database", "leftovers", "upgrade-objects", "schema-load"}
    assert j["tables"]["app"][0]["name"] == "orders"
    assert j["tables"]["app"][0]["has_primary_key"] is True

    # Read-only: no pgshift objects, no slot, no database made on either side.
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []
    assert sql(src, "SELECT count(*) FROM pg_replication_slots") == slots_before
    assert sql(dst, "SELECT count(*) FROM pg_database WHERE datname = 'app'") == "0"


def test_wal_level_replica_is_an_error_with_the_exact_fix(lab, pair):
    src, dst = pair
    replica = lab.start("pf-replica15", 15, "--set", "wal_level = replica")
    assert sql(replica, "SHOW wal_level") == "replica"

    p = check(lab, replica, dst, "--databases", "postgres")
    assert p.returncode == 3, p.stdout + p.stderr
    assert rows(p.stdout, "wal-level")[0][:2] == ("ERROR", "source")
    assert "ALTER SYSTEM SET wal_level = logical;" in p.stdout
    assert "restart" in p.stdout

    # As the target of a downgrade, it blocks only reverse (rollback) replication.
    p = check(lab, dst, replica, "--databases", "postgres")
    assert p.returncode == 3, p.stdout
    assert rows(p.stdout, "rollback-wal-level")[0][:2] == ("ERROR", "target")
    assert "--rollback-replication off" in p.stdout
    p = check(lab, dst, replica, "--databases", "postgres", "--rollback-replication", "off")
    assert p.returncode == 0, p.stdout
    assert rows(p.stdout, "rollback-wal-level") == []
    assert rows(p.stdout, "version")[0][0] == "WARN"  # a downgrade


def test_a_schema_larger_than_the_lock_table_is_one_error_with_the_setting(lab, pair):
    """Loading a schema in one transaction takes a lock per relation; past the target's lock
    table PostgreSQL fails with "out of shared memory" on whichever statement comes next. The
    check says so once, with the setting, and does not try the scratch load."""
    src, _ = pair
    small = lab.start("pf-locks17", 17, "--set", "max_locks_per_transaction = 10")
    sql(src, "CREATE DATABASE many")
    many = on_db(src, "many")
    sql(many, "DO $$ BEGIN FOR i IN 1..700 LOOP "
              "EXECUTE format('CREATE TABLE public.t%s (id int PRIMARY KEY, v text)', i); "
              "END LOOP; END $$")
    backends = int(sql(small, "SELECT current_setting('max_connections')::int + "
                              "current_setting('autovacuum_max_workers')::int + 1 + "
                              "current_setting('max_worker_processes')::int + "
                              "current_setting('max_wal_senders')::int + "
                              "current_setting('max_prepared_transactions')::int"))
    p = check(lab, src, small, "--databases", "many")
    assert p.returncode == 3, p.stdout + p.stderr
    target = [r for r in rows(p.stdout, "locks") if r[1] == "target"]
    assert target and target[0][0] == "ERROR", p.stdout
    assert "takes about 2800 locks" in target[0][2]  # table, key, TOAST table and index
    assert f"holds {10 * backends} (max_locks_per_transaction 10 x {backends} backends)" in target[0][2]
    wanted = (2800 * 5 // 4 + backends - 1) // backends
    wanted = max((wanted + 63) // 64 * 64, 10 + 64)
    assert f"ALTER SYSTEM SET max_locks_per_transaction = {wanted}, then restart it" in p.stdout
    assert [r[0] for r in rows(p.stdout, "locks") if r[1] == "source"] == ["OK"]
    assert rows(p.stdout, "schema-load") == [
        ("ERROR", "many", "not tried: the target's lock table is too small for it (see locks)")]
    assert "out of shared memory" in target[0][2]
    sql(src, "DROP DATABASE many")


def test_table_without_primary_key_is_named(lab, pair):
    src, dst = pair
    sql(src, "CREATE DATABASE nopk")
    sql(on_db(src, "nopk"), "CREATE TABLE public.keyed (id int PRIMARY KEY); "
                            "CREATE TABLE public.events_no_pk (at timestamptz, what text); "
                            "CREATE TABLE public.full_ident (x int); "
                            "ALTER TABLE public.full_ident REPLICA IDENTITY FULL")
    p = check(lab, src, dst, "--databases", "nopk")
    assert p.returncode == 3, p.stdout
    [(severity, subject, message)] = rows(p.stdout, "tables-identity")
    assert (severity, subject) == ("ERROR", "nopk")
    assert "public.events_no_pk" in message
    assert "public.keyed" not in message and "public.full_ident" not in message
    assert "--tables-without-pk full" in p.stdout

    p = check(lab, src, dst, "--databases", "nopk", "--tables-without-pk", "full")
    assert p.returncode == 0, p.stdout
    assert rows(p.stdout, "tables-identity")[0][0] == "WARN"


def test_non_empty_target_database_is_an_error(lab, pair):
    src, dst = pair
    sql(src, "CREATE DATABASE shop")
    sql(on_db(src, "shop"), "CREATE TABLE items (id int PRIMARY KEY)")
    sql(dst, "CREATE DATABASE shop")
    p = check(lab, src, dst, "--databases", "shop")
    assert p.returncode == 0, p.stdout  # exists but empty: fine
    assert rows(p.stdout, "target-database") == [("OK", "shop", "exists on the target and is empty")]

    sql(on_db(dst, "shop"), "CREATE TABLE stale_rows (x int)")
    p = check(lab, src, dst, "--databases", "shop")
    assert p.returncode == 3, p.stdout
    [(severity, subject, message)] = rows(p.stdout, "target-database")
    assert (severity, subject) == ("ERROR", "shop")
    assert "1 user table" in message and "public.stale_rows" in message


def test_other_rules_large_objects_unlogged_matviews_leftovers(lab, pair):
    src, dst = pair
    sql(src, "CREATE DATABASE misc")
    sql(on_db(src, "misc"), "CREATE TABLE t (id serial PRIMARY KEY); "
                            "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); "
                            "CREATE MATERIALIZED VIEW t_count AS SELECT count(*) FROM t; "
                            "CREATE TABLE docs (id int PRIMARY KEY, body oid); "
                            "INSERT INTO docs SELECT 1, lo_from_bytea(0, 'hello large object'); "
                            "CREATE PUBLICATION pgshift_stale_misc FOR TABLE t")
    p = check(lab, src, dst, "--databases", "misc")
    assert p.returncode == 3, p.stdout
    # The count and the size; as a superuser pgshift carries them (test_large_objects.py).
    [(severity, subject, message)] = rows(p.stdout, "large-objects")
    assert (severity, subject) == ("INFO", "misc")
    assert message.startswith("1 large object (18 B): logical replication does not carry them; "
                              "pgshift copies them all before the cutover is ready"), message
    assert rows(p.stdout, "unlogged-tables")[0][0] == "WARN"
    assert "public.scratch" in rows(p.stdout, "unlogged-tables")[0][2]
    assert rows(p.stdout, "materialized-views")[0][0] == "INFO"
    assert "public.t_count" in rows(p.stdout, "materialized-views")[0][2]
    leftovers = dict((r[1], r) for r in rows(p.stdout, "leftovers"))
    assert leftovers["source"][0] == "ERROR" and "pgshift_stale_misc" in leftovers["source"][2]
    assert leftovers["target"][0] == "OK"
    assert 'DROP PUBLICATION "pgshift_stale_misc";' in p.stdout
    assert "pgshift abort --state DIR" in p.stdout


def test_downgrade_names_objects_the_older_major_cannot_hold(lab, pair):
    src, dst = pair
    sql(dst, "CREATE DATABASE newer")
    sql(on_db(dst, "newer"), "CREATE TABLE t (id int PRIMARY KEY, code text); "
                             "CREATE UNIQUE INDEX t_code ON t (code) NULLS NOT DISTINCT; "
                             "CREATE ROLE pf_maint; GRANT MAINTAIN ON t TO pf_maint")
    # 17 -> 15: NULLS NOT DISTINCT exists in 15, the MAINTAIN privilege does not.
    p = check(lab, dst, src, "--databases", "newer")
    assert p.returncode == 3, p.stdout
    assert "PostgreSQL 17 -> 15 (downgrade)" in p.stdout
    found = rows(p.stdout, "downgrade-objects")
    assert len(found) == 1 and found[0][0] == "ERROR", found
    assert "MAINTAIN" in found[0][2] and "public.t to pf_maint" in found[0][2]
    assert "REVOKE MAINTAIN" in p.stdout


def test_wrong_password_is_a_clear_error_and_changes_nothing(lab, pair):
    src, dst = pair
    bad = re.sub(r"passfile=[^&]*", "password=wrong", src)
    assert bad != src
    p = check(lab, bad, dst)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "source" in p.stderr and "password authentication failed" in p.stderr
    assert "wrong" not in p.stderr  # the password is never echoed
    assert p.stdout.strip() == ""

    p = check(lab, src, re.sub(r"passfile=[^&]*", "password=wrong", dst))
    assert p.returncode == 2 and "target" in p.stderr

    # Nothing pgshift-made appeared: only the publication a test above created itself.
    assert {n.split(": ")[-1] for n in pgshift_objects(src)} <= {"pgshift_stale_misc"}
    assert pgshift_objects(dst) == []


# ---- The schema must load: each class of refusal, named with its object and a remedy ----

def test_schema_the_target_refuses_is_named_statement_by_statement(lab, pair):
    src, dst = pair  # 15 -> 17
    sql(src, "CREATE DATABASE refuse")
    sql(src, "CREATE ROLE pf_owner")
    sql(on_db(src, "refuse"), """
        CREATE TABLE kept (id int PRIMARY KEY);
        ALTER TABLE kept OWNER TO pf_owner;
        -- A C function whose library PostgreSQL 17 no longer ships (adminpack left in 17).
        CREATE FUNCTION public.file_write(text, text, bool) RETURNS bigint
          AS '$libdir/adminpack', 'pg_file_write' LANGUAGE c;
        -- A generated column in an inheritance child of a plain column: 16+ refuses it.
        CREATE TABLE np (id int PRIMARY KEY, a int, b int);
        CREATE TABLE nc (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 3) STORED)
          INHERITS (np);
        CREATE VIEW nc_view AS SELECT b FROM nc;
    """)
    p = check(lab, src, dst, "--databases", "refuse")
    assert p.returncode == 3, p.stdout + p.stderr
    [c_fn] = rows(p.stdout, "c-functions")
    assert c_fn[:2] == ("ERROR", "refuse"), c_fn
    assert "FUNCTION public.file_write" in c_fn[2] and "adminpack" in c_fn[2], c_fn
    assert "install the library built for PostgreSQL 17" in p.stdout
    [named] = rows(p.stdout, "upgrade-objects")
    assert named[0] == "ERROR" and "public.nc.b" in named[2], named
    assert "ALTER TABLE child NO INHERIT parent" in p.stdout
    loads = rows(p.stdout, "schema-load")
    assert ("ERROR", "refuse", 'TABLE public.nc is refused by PostgreSQL 17: ERROR: child column '
            '"b" specifies generation expression') in loads, loads
    # The view on the refused table fails as a consequence, said once, not as a cause.
    assert any("more statements fail because the objects refused above are missing" in r[2]
               and "VIEW public.nc_view" in r[2] for r in loads), loads
    # The statement itself is shown, with the server's hint.
    assert 'CREATE TABLE "public"."nc" (' in p.stdout
    assert "A child table column cannot be generated unless its parent column is" in p.stdout
    # The owner role only existed inside the rolled-back transaction; the scratch is gone.
    assert sql(dst, "SELECT count(*) FROM pg_roles WHERE rolname = 'pf_owner'") == "0"
    assert pgshift_objects(dst) == []
    assert sql(dst, "SELECT count(*) FROM pg_database WHERE datname = 'refuse'") == "0"

    # Fixed on the source as the remedies say: the same check passes.
    sql(on_db(src, "refuse"), "DROP FUNCTION public.file_write(text, text, bool); "
                              "ALTER TABLE nc NO INHERIT np")
    p = check(lab, src, dst, "--databases", "refuse")
    assert p.returncode == 0, p.stdout
    [ok] = rows(p.stdout, "schema-load")
    assert ok[0] == "OK" and "load into PostgreSQL 17" in ok[2], ok


def test_what_newer_targets_copy_differently(lab, pair):
    src = pair[0]  # 15
    dst18 = lab.start("pf-dst18", 18)
    sql(src, "CREATE DATABASE newer_rules")
    sql(src, "CREATE ROLE pf_rls_owner")
    sql(on_db(src, "newer_rules"), """
        -- 18 makes an inheritance child's column NOT NULL when its parent's is: the copy of
        -- the child's NULLs would fail.
        CREATE TABLE nnp (id int PRIMARY KEY, a int NOT NULL);
        CREATE TABLE nnc (id int PRIMARY KEY) INHERITS (nnp);
        ALTER TABLE nnc ALTER COLUMN a DROP NOT NULL;
        INSERT INTO nnc VALUES (1, NULL);
        -- 16+ copies as the table's owner: forced row security on it, or no USAGE on the schema.
        CREATE TABLE secrets (id int PRIMARY KEY, v text);
        ALTER TABLE secrets OWNER TO pf_rls_owner;
        ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
        ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
        CREATE SCHEMA hidden;
        CREATE TABLE hidden.t (id int PRIMARY KEY);
        ALTER TABLE hidden.t OWNER TO pf_rls_owner;
        -- Fires in replication: a warning, not an error.
        CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
        CREATE TRIGGER always_noop BEFORE INSERT ON nnp FOR EACH ROW EXECUTE FUNCTION noop();
        ALTER TABLE nnp ENABLE ALWAYS TRIGGER always_noop;
    """)
    p = check(lab, src, dst18, "--databases", "newer_rules")
    assert p.returncode == 3, p.stdout
    [nn] = rows(p.stdout, "upgrade-objects")
    assert nn[0] == "ERROR" and "public.nnc.a" in nn[2] and "PostgreSQL 18" in nn[2], nn
    assert "ALTER TABLE child ALTER COLUMN col SET NOT NULL" in p.stdout
    [rls] = rows(p.stdout, "forced-rls")
    assert rls[0] == "ERROR" and "public.secrets (owner pf_rls_owner)" in rls[2], rls
    [usage] = rows(p.stdout, "owner-schema-usage")
    assert usage[0] == "ERROR" and "hidden.t (owner pf_rls_owner)" in usage[2], usage
    assert "GRANT USAGE ON SCHEMA <schema> TO <owner>;" in p.stdout
    [trig] = rows(p.stdout, "replica-triggers")
    assert trig[0] == "WARN" and "always_noop on public.nnp (ENABLE ALWAYS)" in trig[2], trig
    # The schema itself loads: those are about the rows and the copy, which preflight names.
    assert rows(p.stdout, "schema-load")[0][0] == "OK"


def test_downgrade_refusal_found_by_loading_the_schema(lab, pair):
    src, dst = pair
    sql(dst, "CREATE DATABASE jsonviews")
    # SQL/JSON's JSON_TABLE is PostgreSQL 17: no named rule knows it, the scratch load does.
    sql(on_db(dst, "jsonviews"), """
        CREATE TABLE docs (id int PRIMARY KEY, body jsonb);
        CREATE VIEW doc_items AS SELECT d.id, j.x FROM docs d,
          JSON_TABLE(d.body, '$[*]' COLUMNS (x int PATH '$')) j;
    """)
    p = check(lab, dst, src, "--databases", "jsonviews")
    assert p.returncode == 3, p.stdout
    loads = rows(p.stdout, "schema-load")
    assert loads[0][0] == "ERROR" and "VIEW public.doc_items is refused by PostgreSQL 15" in loads[0][2], loads
    assert 'CREATE VIEW "public"."doc_items"' in p.stdout
    # Nothing made on the target (the shared source holds another test's stale publication).
    assert [o for o in pgshift_objects(src) if "pgshift_stale_misc" not in o] == []


def test_scratch_database_left_by_a_crash_is_dropped(lab, pair):
    src, dst = pair
    sql(dst, "CREATE DATABASE pgshift_scratch_0badf00d")
    p = check(lab, src, dst, "--databases", "postgres")
    assert p.returncode == 0, p.stdout
    assert ("INFO", "target", "dropped pgshift_scratch_0badf00d, a scratch database an earlier "
            "check left behind") in rows(p.stdout, "schema-load")
    assert sql(dst, "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgshift%'") == "0"
