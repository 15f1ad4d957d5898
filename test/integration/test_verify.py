"""pgshift verify: the same data loaded into a PostgreSQL 15 and a 17 compares equal at count
and checksum level; changed, deleted and missing rows and tables are found and named.

Contract: `pgshift verify --source DSN --target DSN [--level count|checksum]
[--databases a,b] [--json]` prints the report and exits 0 when clean, 3 when not.
"""
import json

import pytest

from conftest import sql

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
"""

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
        "CREATE SCHEMA _pgshift_meta; CREATE TABLE _pgshift_meta.state (x int);"
        "INSERT INTO _pgshift_meta.state VALUES (1)")
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
        # Leaf partitions are compared, not the partitioned parent; _pgshift* is skipped.
        assert app == {("public", "kitchen_sink"), ("sales", "Orders"),
                       ("Odd Schema", 'we"ird Table'), ("public", "events_2024"),
                       ("public", "events_2025"), ("public", "no_pk"), ("public", "empty_one")}
        sink = tables[("app", "public", "kitchen_sink")]
        assert sink["source_rows"] == sink["target_rows"] == 2003
        assert sink["match"] and sink["rounds"] == 1
        if level == "checksum":
            assert sink["source_checksum"] == sink["target_checksum"] != ""
        else:
            assert sink["source_checksum"] == ""
        assert tables[("app", "public", "empty_one")]["source_rows"] == 0

    # The text report, default level: one line per table and a summary.
    p = verify(lab, src, tgt, "--databases", "app", check_rc=(0,))
    assert 'Odd Schema.we"ird Table' in p.stdout
    assert "MISMATCH" not in p.stdout
    assert "7 tables verified (checksum): all match" in p.stdout


def test_a_changed_row_is_reported_with_its_key(lab, pair):
    src, tgt = pair
    t = app_dsn(tgt)
    sql(t, "UPDATE public.kitchen_sink SET flag = NOT flag WHERE id = 42;"
           "UPDATE sales.\"Orders\" SET amount = amount + 1 WHERE order_id = 7;"
           "UPDATE \"Odd Schema\".\"we\"\"ird Table\" SET \"UPPER\" = 'changed' "
           "WHERE \"col.1\" = 'k-9';"
           "UPDATE public.no_pk SET b = 'other' WHERE ctid = (SELECT min(ctid) FROM public.no_pk)")
    try:
        rc, tables = verify_json(lab, src, tgt, "--databases", "app")
        assert rc == 3
        bad = {k[2]: v for k, v in tables.items() if not v["match"]}
        assert set(bad) == {"kitchen_sink", "Orders", 'we"ird Table', "no_pk"}
        assert bad["kitchen_sink"]["differing_keys"] == ["(42)"]
        assert bad["Orders"]["differing_keys"] == ["(7,4)"]
        assert bad["we\"ird Table"]["differing_keys"] == ["('k-9')"]
        assert bad["no_pk"]["differing_keys"] == []
        assert "no primary key" in bad["no_pk"]["note"]
        for name, v in bad.items():
            # Re-checked after settling before being reported: a table without a key as a
            # whole (3 rounds); a table with one by buckets, rows, then 3 rounds of its
            # differing keys.
            assert v["rounds"] == (3 if name == "no_pk" else 6)
            assert v["source_rows"] == v["target_rows"]
            assert v["source_checksum"] != v["target_checksum"]

        # Count level cannot see a changed value.
        rc, _ = verify_json(lab, src, tgt, "--databases", "app", "--level", "count")
        assert rc == 0

        p = verify(lab, src, tgt, "--databases", "app", check_rc=(3,))
        line = next(l for l in p.stdout.splitlines() if "public.kitchen_sink" in l)
        assert "MISMATCH" in line and "(42)" in line
        assert "4 mismatches" in p.stdout
    finally:
        sql(t, "UPDATE public.kitchen_sink SET flag = NOT flag WHERE id = 42;"
               "UPDATE sales.\"Orders\" SET amount = amount - 1 WHERE order_id = 7;"
               "UPDATE \"Odd Schema\".\"we\"\"ird Table\" SET \"UPPER\" = 'it''s 9' "
               "WHERE \"col.1\" = 'k-9';"
               "UPDATE public.no_pk SET b = 'dup'")
    rc, _ = verify_json(lab, src, tgt, "--databases", "app")
    assert rc == 0


def test_deleted_rows_and_missing_tables(lab, pair):
    src, tgt = pair
    sql(app_dsn(tgt), "DELETE FROM public.events WHERE id = 5")
    sql(app_dsn(src), "CREATE TABLE public.only_on_source (x int)")
    sql(app_dsn(tgt), "CREATE TABLE sales.only_on_target (x int)")

    rc, tables = verify_json(lab, src, tgt, "--level", "count")
    assert rc == 3
    bad = {k[1:]: v for k, v in tables.items() if not v["match"]}
    assert set(bad) == {("public", "events_2024"), ("public", "only_on_source"),
                        ("sales", "only_on_target")}
    ev = bad[("public", "events_2024")]
    assert ev["source_rows"] == ev["target_rows"] + 1
    assert "row count differs" in ev["note"]
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
