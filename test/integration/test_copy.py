"""The initial copy, both ways: pgshift's own (default: parallel COPY under the slot's exported
snapshot, tables cut into ranges, indexes built after) up and down across the oldest and newest
majors, and the subscription's native copy_data (--copy native). The load client writes through
PgBouncer during each migration; every acknowledged write must reach the target.

The kill -9 mid-copy test is in test_faults.py; the schema coverage (partitions, TOAST,
generated and identity columns, every type) in test_schema.py, which runs on the own copy.
"""
import json
import time

import pytest

from conftest import parse_kv, pgshift_objects, sql
from test_upgrade import RATE, finish_load, load_schema

# About 30 MB with a one-column key: four ranges at --jobs 2.
EVENTS_SQL = (
    "CREATE TABLE public.events (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
    "body text NOT NULL, amount numeric(12,2)); "
    "INSERT INTO public.events SELECT g, timestamptz '2024-01-01 00:00+00' + g * interval '1 s', "
    "repeat(md5(g::text), 2), g / 100.0 FROM generate_series(1, 250000) g; "
    "CREATE INDEX events_at ON public.events (at); "
    # A dropped column stays in the source's catalog: COPY must leave it out.
    "ALTER TABLE public.events ADD COLUMN junk int; ALTER TABLE public.events DROP COLUMN junk")
EVENTS_CHECK = "SELECT count(*), sum(id), md5(string_agg(body || amount::text || at::text, ',' ORDER BY id)) FROM public.events"


def migrate_under_load(lab, name, src_version, dst_version, *extra):
    src = lab.start(f"{name}-src", src_version)
    dst = lab.start(f"{name}-dst", dst_version)
    app = lab.router(f"{name}-pb", f"{name}-src", "pgbouncer")
    router = lab.list()[f"{name}-pb"]
    load_schema(src)
    sql(src, EVENTS_SQL)
    state = lab.dir / f"{name}-state"
    ledger = lab.dir / f"{name}.ledger"
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "14",
                     "--ledger", str(ledger))
    try:
        time.sleep(1)
        up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                     "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                     "--router-config", router["config_file"], *extra, timeout=300)
    finally:
        s = finish_load(load)
    assert "phase RollbackReady" in up.stdout, up.stderr
    assert int(s["errors"]) == 0, s
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert v["acknowledged"] == s["acknowledged"]
    assert sql(app, "SHOW server_version_num").startswith(str(dst_version))
    status = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert status["phase"] == "RollbackReady"
    assert status["verification"]["clean"] is True
    assert sql(dst, EVENTS_CHECK) == sql(src, EVENTS_CHECK)
    return src, dst, state, up, status


@pytest.mark.parametrize("src_version,dst_version", [(13, 18), (18, 14)])
def test_own_copy_up_and_down_under_load(lab, src_version, dst_version):
    name = f"c{src_version}-{dst_version}"
    src, dst, state, up, status = migrate_under_load(lab, name, src_version, dst_version,
                                                     "--jobs", "2")
    assert status["options"]["copy"] == "snapshot"
    # The keyed table was cut into ranges: by key before PostgreSQL 14 (no TID range scans),
    # by pages from 14 on; every range is done.
    kinds = sql(dst, "SELECT kind, count(*), bool_and(done) FROM _pgshift.copy_range "
                     "WHERE table_name = 'events' GROUP BY kind")
    want = "key" if src_version < 14 else "pages"
    kind, n, done = kinds.split("|")
    assert kind == want and int(n) >= 3 and done == "t", kinds
    assert "binary for" in up.stderr
    # The copy's figures reached the history (and so the report): ranges done of all.
    samples = [json.loads(l) for l in (state / "history.jsonl").read_text().splitlines()
               if '"sample"' in l]
    ranges = [x for x in samples if x.get("ranges_total")]
    assert ranges and ranges[-1]["ranges_done"] == ranges[-1]["ranges_total"] >= 4, ranges[-1:]
    assert any(0 < x["rows_copied"] for x in ranges), ranges
    # Indexes and constraints were built after the copy, and are valid.
    assert sql(dst, "SELECT count(*) FROM pg_index WHERE indrelid = 'public.events'::regclass "
                    "AND indisvalid") == "2"
    q = ("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
         "WHERE n.nspname = 'shop' AND c.contype IN ('p', 'f', 'u', 'c')")
    assert sql(dst, q) == sql(src, q)
    lab.run("finish", "--state", str(state))
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []


def test_native_copy_data_still_works(lab):
    src, dst, state, up, status = migrate_under_load(lab, "nat", 15, 16, "--copy", "native")
    assert status["options"]["copy"] == "native"
    # No own copy ran: no plan on the target, the schema came whole before the copy.
    assert "exported snapshot" not in up.stderr
    assert sql(dst, "SELECT to_regclass('_pgshift.copy_range') IS NULL") == "t"
    lab.run("finish", "--state", str(state))
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []
