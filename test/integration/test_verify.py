"""pgshift verify: the same data loaded into a PostgreSQL 15 and a 17 compares equal at count
and checksum level, with each hash method; changed, deleted and missing rows and tables are
found and named, in small tables and in big ones cut into key ranges; unlogged tables are
skipped, a user schema named _pgshift_archive is compared, pgshift's own _pgshift is not.

Contract: `pgshift verify --source DSN --target DSN [--level count|checksum]
[--databases a,b] [--jobs N] [--hash auto|hashextended|md5|sha256] [--json]` prints the report
and exits 0 when clean, 3 when not.
"""
import json

import pytest

from conftest import on_db, sql

# Rich data, loaded by the same statements on both servers. Every value is computed the same way
# on any major (no random(), no now()).
SCHEMA = r"""
CREATE SCHEMA sales;
CREATE SCHEMA "Odd Schema";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);

CREATE TABLE public.kitchen_sink (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  doc jsonb, plain_json json, tags text[], grid int[], docs jsonb[], blob bytea,
  price numeric(14,4), big numeric, f4 real, f8 double precision,
  happened timestamptz, local_ts timestamp, day date, clock time, clock_tz timetz, dur interval,
  feeling mood, qty posint, flag boolean, addr inet, net cidr, mac macaddr, uid uuid,
  cash money, pt point, bits varbit, rng int4range, trange tstzrange, tsv tsvector, pr pair,
  body text, label varchar(20), fixed char(5),
  total numeric GENERATED ALWAYS AS (price * qty) STORED
);
INSERT INTO public.kitchen_sink (doc, plain_json, tags, grid, docs, blob, price, big, f4, f8,
  happened, local_ts, day, clock, clock_tz, dur, feeling, qty, flag, addr, net, mac, uid, cash,
  pt, bits, rng, trange, tsv, pr, body, label, fixed)
SELECT jsonb_build_object('id', i, 'name', 'n' || i, 'nested',
         jsonb_build_array(1.50, 'x', NULL, true, jsonb_build_object('z', 1e-7 * i)),
         'uni', 'caf' || chr(233) || ' ' || chr(8364)),
       ('{"b": 1,  "a": [1, 2.0]   , "i": ' || i || '}')::json,
       ARRAY['a b', 'c,d', NULL, '"q"', 'back\slash', 'x' || i],
       ARRAY[[i, i + 1], [NULL, -i]],
       ARRAY[jsonb_build_object('k', i), '[]'::jsonb],
       decode(md5(i::text), 'hex') || '\x00ff5c27'::bytea,
       i * 12.3456, 123456789012345678901234567890.123456789 * i - 0.5,
       (i * 0.1)::real, i * 0.1::float8 + 1e-300,
       timestamptz '2024-03-10 02:30:00.123456+05:30' + i * interval '7 hours 3 seconds',
       timestamp '1999-12-31 23:59:59.5' + i * interval '1 day',
       date '2024-02-28' + i, time '23:59:59.999999' - i * interval '1 minute',
       timetz '12:00:00+03', interval '1 year 2 months 3 days 04:05:06.789' * i,
       (ARRAY['sad', 'ok', 'happy']::mood[])[1 + i % 3], 1 + i % 50, i % 2 = 0,
       ('10.0.' || (i % 256) || '.' || (i % 7) || '/24')::inet, '192.168.0.0/16',
       '08:00:2b:01:02:03', md5(i::text)::uuid, i * 1.25, point(i * 0.5, -i),
       (i % 64)::bit(6)::varbit, int4range(i, i * 2 + 1), tstzrange(
         timestamptz '2024-01-01 00:00+00' + i * interval '1 hour',
         timestamptz '2024-01-01 00:00+00' + i * interval '2 hours'),
       to_tsvector('simple', 'the quick brown fox ' || i), ROW(i, 'p' || i)::pair,
       CASE WHEN i <= 10
         THEN (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 3500) g)
         ELSE 'short ' || i || E' with ''quotes'', "dq", tab\t, newline\n, nul-free' END,
       'label ' || i, 'fx' || (i % 10)
FROM generate_series(1, 2000) i;
INSERT INTO public.kitchen_sink (doc, big, f8, body)
VALUES ('{}', 'NaN', 'Infinity', ''), ('null', 'Infinity', '-0', NULL),
       ('[]', '-Infinity', '1e-310', repeat('x', 200000));

CREATE TABLE sales."Orders" (
  order_id serial, "Line No" int, "SKU" text, amount numeric(10,2),
  PRIMARY KEY (order_id, "Line No"));
INSERT INTO sales."Orders" ("Line No", "SKU", amount)
SELECT 1 + i % 4, 'SKU-' || (i % 97), i * 1.01 FROM generate_series(1, 5000) i;

CREATE TABLE "Odd Schema"."we""ird Table" ("col.1" text PRIMARY KEY, "Select" int, "UPPER" text);
INSERT INTO "Odd Schema"."we""ird Table"
SELECT 'k-' || i, i, 'it''s ' || i FROM generate_series(1, 50) i;

CREATE TABLE public.events (id int, at date NOT NULL, payload text, PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_2025 PARTITION OF public.events
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO public.events SELECT i, date '2024-01-01' + i % 700, 'e' || i
FROM generate_series(1, 1000) i;

CREATE TABLE public.no_pk (a int, b text);
INSERT INTO public.no_pk SELECT i % 10, 'dup' FROM generate_series(1, 100) i;

CREATE TABLE public.empty_one (x int PRIMARY KEY);

-- Big enough to be cut into key ranges (about 64k rows each), with a composite text key and
-- a key order unlike the column order.
CREATE TABLE public.big (payload text, region text NOT NULL, n int NOT NULL, ts timestamptz,
                         PRIMARY KEY (region, n));
INSERT INTO public.big SELECT md5(i::text), 'r' || (i % 7), i,
  timestamptz '2024-01-01 00:00+00' + i * interval '1 second'
FROM generate_series(1, 300000) i;

-- Logical replication does not carry unlogged tables: never compared (their rows differ here).
CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY, v text);

-- A user schema whose name starts like pgshift's own is data.
CREATE SCHEMA _pgshift_archive;
CREATE TABLE _pgshift_archive.old_orders (id int PRIMARY KEY, total int);
INSERT INTO _pgshift_archive.old_orders SELECT i, i * 10 FROM generate_series(1, 100) i;
"""

ALL_TABLES = {("public", "kitchen_sink"), ("sales", "Orders"), ("Odd Schema", 'we"ird Table'),
              ("public", "events_2024"), ("public", "events_2025"), ("public", "no_pk"),
              ("public", "empty_one"), ("public", "big"), ("_pgshift_archive", "old_orders")}

# Every session default that changes a value's text form, set differently on the two servers:
# verify must pin them on its own sessions.
SESSION_DEFAULTS = {
    "source": "ALTER DATABASE app SET timezone = 'America/New_York';"
              "ALTER DATABASE app SET datestyle = 'SQL, DMY';"
              "ALTER DATABASE app SET extra_float_digits = 0;"
              "ALTER DATABASE app SET bytea_output = 'escape';",
    "target": "ALTER DATABASE app SET timezone = 'Asia/Kolkata';"
              "ALTER DATABASE app SET datestyle = 'German, MDY';"
              "ALTER DATABASE app SET intervalstyle = 'iso_8601';",
}


def app_dsn(dsn):
    return dsn.replace("/postgres?", "/app?")


@pytest.fixture(scope="module")
def pair(lab):
    dsns = {"source": lab.start("v15", 15), "target": lab.start("v17", 17)}
    for side, dsn in dsns.items():
        sql(dsn, "CREATE DATABASE app")
        sql(app_dsn(dsn), SCHEMA)
        sql(dsn, SESSION_DEFAULTS[side])
    # pgshift's own schema is never compared, even when only one side has it.
    sql(app_dsn(dsns["target"]),
        "CREATE SCHEMA _pgshift; CREATE TABLE _pgshift.state (x int);"
        "INSERT INTO _pgshift.state VALUES (1)")
    sql(app_dsn(dsns["source"]), "INSERT INTO public.scratch VALUES (1, 'only here')")
    for dsn in dsns.values():
        sql(app_dsn(dsn), "ANALYZE")
    return dsns["source"], dsns["target"]


def verify(lab, src, tgt, *extra, check_rc=(0, 3)):
    p = lab.run("verify", "--source", src, "--target", tgt, *extra, check=False)
    assert p.returncode in check_rc, f"rc={p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def verify_json(lab, src, tgt, *extra):
    p = verify(lab, src, tgt, "--json", *extra)
    report = json.loads(p.stdout)
    assert report["clean"] == (p.returncode == 0)
    return p.returncode, {(t["database"], t["schema"], t["table"]): t for t in report["tables"]}


def test_same_data_on_15_and_17_is_clean_at_both_levels(lab, pair):
    src, tgt = pair
    assert sql(src, "SHOW server_version_num").startswith("15")
    assert sql(tgt, "SHOW server_version_num").startswith("17")
    # The big values really are out of line.
    assert int(sql(app_dsn(src), "SELECT pg_total_relation_size(reltoastrelid) FROM pg_class "
                                 "WHERE oid = 'public.kitchen_sink'::regclass")) > 1_000_000

    for level in ("count", "checksum"):
        rc, tables = verify_json(lab, src, tgt, "--level", level)
        assert rc == 0, tables
        app = {(s, t) for (db, s, t) in tables if db == "app"}
        # Leaf partitions are compared, not the partitioned parent; _pgshift is not listed,
        # _pgshift_archive is; the unlogged table is listed as skipped.
        assert app == ALL_TABLES | {("public", "scratch")}
        assert tables[("app", "public", "scratch")]["result"] == "skipped"
        assert "unlogged" in tables[("app", "public", "scratch")]["note"]
        for key, t in tables.items():
            if key[0] == "app" and key[1:] != ("public", "scratch"):
                assert t["result"] == "match", t
        sink = tables[("app", "public", "kitchen_sink")]
        assert sink["source_rows"] == sink["target_rows"] == 2003
        assert sink["match"] and sink["key"] == "(id)"
        if level == "checksum":
            assert sink["source_checksum"] == sink["target_checksum"] != ""
        else:
            assert sink["source_checksum"] == ""
        assert tables[("app", "public", "empty_one")]["source_rows"] == 0
        big = tables[("app", "public", "big")]
        assert big["source_rows"] == 300000 and big["key"] == "(region, n)"
        # Cut into key ranges from a sample: a few, not one.
        assert big["ranges"] >= 3, big
        assert tables[("app", "_pgshift_archive", "old_orders")]["source_rows"] == 100

    # The text report, default level: one line per table and a summary that says how.
    p = verify(lab, src, tgt, "--databases", "app", check_rc=(0,))
    assert 'Odd Schema.we"ird Table' in p.stdout
    assert "DIFFERENT" not in p.stdout
    assert ("9 tables compared (checksum, pre-cutover convergence, hashextended): all match; "
            "1 skipped") in p.stdout, p.stdout


@pytest.mark.parametrize("method", ["md5", "sha256"])
def test_the_digest_methods_agree_and_find_a_changed_row(lab, pair, method):
    src, tgt = pair
    rc, tables = verify_json(lab, src, tgt, "--databases", "app", "--hash", method)
    assert rc == 0, {k: v for k, v in tables.items() if not v["match"]}
    t = app_dsn(tgt)
    sql(t, "UPDATE public.kitchen_sink SET body = body || '!' WHERE id = 1")
    try:
        p = verify(lab, src, tgt, "--databases", "app", "--hash", method, "--json")
        report = json.loads(p.stdout)
        assert report["hash"] == method
        bad = [x for x in report["tables"] if x["result"] == "different"]
        assert [(x["table"], x["differing_keys"]) for x in bad] == [("kitchen_sink", ["(1)"])]
    finally:
        sql(t, "UPDATE public.kitchen_sink SET body = left(body, -1) WHERE id = 1")


def test_servers_with_different_encodings_compare_through_utf8(lab, pair):
    """A LATIN1 database on one side, UTF8 on the other: the same text is stored as other
    bytes, so the hash method falls back to md5 of the UTF-8 form, and still matches."""
    src, tgt = pair
    sql(src, "CREATE DATABASE enc ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
             "TEMPLATE template0")
    sql(tgt, "CREATE DATABASE enc ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
             "TEMPLATE template0")
    for dsn in (src, tgt):
        sql(on_db(dsn, "enc"), "CREATE TABLE t (id int PRIMARY KEY, name text);"
                               "INSERT INTO t VALUES (1, 'caf' || chr(233)), (2, 'na' || chr(239) || 've')")
    p = verify(lab, src, tgt, "--databases", "enc", "--json", check_rc=(0,))
    report = json.loads(p.stdout)
    assert report["hash"] == "md5" and report["clean"]
    sql(on_db(tgt, "enc"), "UPDATE t SET name = 'cafe' WHERE id = 1")
    p = verify(lab, src, tgt, "--databases", "enc", "--json", check_rc=(3,))
    assert json.loads(p.stdout)["tables"][0]["differing_keys"] == ["(1)"]


def test_a_changed_row_is_reported_with_its_key(lab, pair):
    src, tgt = pair
    t = app_dsn(tgt)
    sql(t, "UPDATE public.kitchen_sink SET flag = NOT flag WHERE id = 42;"
           "UPDATE sales.\"Orders\" SET amount = amount + 1 WHERE order_id = 7;"
           "UPDATE \"Odd Schema\".\"we\"\"ird Table\" SET \"UPPER\" = 'changed' "
           "WHERE \"col.1\" = 'k-9';"
           "UPDATE public.no_pk SET b = 'other' WHERE ctid = (SELECT min(ctid) FROM public.no_pk);"
           "UPDATE public.big SET payload = 'changed' WHERE region = 'r4' AND n = 150000")
    try:
        rc, tables = verify_json(lab, src, tgt, "--databases", "app")
        assert rc == 3
        bad = {k[2]: v for k, v in tables.items() if not v["match"] and v["result"] != "skipped"}
        assert set(bad) == {"kitchen_sink", "Orders", 'we"ird Table', "no_pk", "big"}
        assert all(v["result"] == "different" and v["blocking"] for v in bad.values()), bad
        assert bad["kitchen_sink"]["differing_keys"] == ["(42)"]
        assert bad["Orders"]["differing_keys"] == ["(7,4)"]
        assert bad["we\"ird Table"]["differing_keys"] == ["('k-9')"]
        # In a 300,000-row table, narrowed down range by range.
        assert bad["big"]["differing_keys"] == ["('r4',150000)"]
        assert bad["big"]["ranges"] > 3
        assert bad["no_pk"]["differing_keys"] == []
        assert "no key" in bad["no_pk"]["note"]
        for name, v in bad.items():
            # Re-read before being reported: a table without a key as a whole (the source
            # stood still while the target differed); a table with one by key.
            assert v["rounds"] >= 1
            assert v["source_rows"] == v["target_rows"]
            assert v["source_checksum"] != v["target_checksum"]

        # Count level cannot see a changed value.
        rc, _ = verify_json(lab, src, tgt, "--databases", "app", "--level", "count")
        assert rc == 0

        p = verify(lab, src, tgt, "--databases", "app", check_rc=(3,))
        line = next(l for l in p.stdout.splitlines() if "public.kitchen_sink" in l)
        assert "DIFFERENT" in line and "(42)" in line
        assert "4 match, 5 different; 1 skipped" in p.stdout, p.stdout
    finally:
        sql(t, "UPDATE public.kitchen_sink SET flag = NOT flag WHERE id = 42;"
               "UPDATE sales.\"Orders\" SET amount = amount - 1 WHERE order_id = 7;"
               "UPDATE \"Odd Schema\".\"we\"\"ird Table\" SET \"UPPER\" = 'it''s 9' "
               "WHERE \"col.1\" = 'k-9';"
               "UPDATE public.no_pk SET b = 'dup';"
               "UPDATE public.big SET payload = md5(n::text) WHERE region = 'r4' AND n = 150000")
    rc, _ = verify_json(lab, src, tgt, "--databases", "app")
    assert rc == 0


def test_snapshot_compares_one_moment_exactly_and_locates_rows_without_a_key(lab, pair):
    """--snapshot: one snapshot per side, no rounds; a table without a key that differs is
    narrowed by buckets of the row hash down to the rows themselves."""
    src, tgt = pair
    rc, tables = verify_json(lab, src, tgt, "--databases", "app", "--snapshot")
    assert rc == 0, {k: v for k, v in tables.items() if not v["match"]}
    t = app_dsn(tgt)
    sql(t, "INSERT INTO public.no_pk VALUES (77, 'extra');"
           "DELETE FROM public.no_pk WHERE ctid = (SELECT min(ctid) FROM public.no_pk WHERE a = 3);"
           "UPDATE public.big SET n = n WHERE region = 'r0' AND n = 7")
    try:
        p = verify(lab, src, tgt, "--databases", "app", "--snapshot", "--json", check_rc=(3,))
        report = json.loads(p.stdout)
        assert report["mode"] == "snapshot"
        assert "exact snapshot pair" in report["summary"]
        bad = {x["table"]: x for x in report["tables"] if x["result"] == "different"}
        assert set(bad) == {"no_pk"}, bad  # an update to the same values changes nothing
        nopk = bad["no_pk"]
        assert nopk["differing_rows"] == 2
        assert sorted(nopk["differing_rows_text"]) == ["+ only on source: (3,dup)",
                                                       "- only on target: (77,extra)"]
        assert nopk["source_rows"] == nopk["target_rows"] == 100
    finally:
        sql(t, "DELETE FROM public.no_pk WHERE a = 77; INSERT INTO public.no_pk VALUES (3, 'dup')")


def test_deleted_rows_and_missing_tables(lab, pair):
    src, tgt = pair
    sql(app_dsn(tgt), "DELETE FROM public.events WHERE id = 5")
    sql(app_dsn(src), "CREATE TABLE public.only_on_source (x int)")
    sql(app_dsn(tgt), "CREATE TABLE sales.only_on_target (x int)")

    rc, tables = verify_json(lab, src, tgt, "--level", "count")
    assert rc == 3
    bad = {k[1:]: v for k, v in tables.items() if v["result"] == "different"}
    assert set(bad) == {("public", "events_2024"), ("public", "only_on_source"),
                        ("sales", "only_on_target")}
    ev = bad[("public", "events_2024")]
    assert ev["source_rows"] == ev["target_rows"] + 1
    # Even counting only, the key says which row is missing.
    assert ev["differing_keys"] == ["(5,'2024-01-06')"]
    assert bad[("public", "only_on_source")]["note"] == "missing on target"
    assert bad[("sales", "only_on_target")]["note"] == "missing on source"

    # Checksum level also names the deleted row by its (id, at) key.
    rc, tables = verify_json(lab, src, tgt, "--databases", "app")
    assert rc == 3
    assert tables[("app", "public", "events_2024")]["differing_keys"] == ["(5,'2024-01-06')"]


def test_connection_failure_names_the_side(lab, pair):
    src, _ = pair
    p = lab.run("verify", "--source", src, "--target",
                "postgresql://postgres@127.0.0.1:1/postgres", "--databases", "app", check=False)
    assert p.returncode not in (0, 3)
    assert "target" in p.stderr + p.stdout
