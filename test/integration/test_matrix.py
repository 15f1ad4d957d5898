"""The version matrix: an upgrade (or downgrade) under the load client through PgBouncer, with
reverse replication on, for ordered pairs of majors 13..18.

`make test` runs a subset in which every major is a source and a target at least once, in both
directions; `make test-matrix` (PGSHIFT_MATRIX=full) runs all 30 ordered pairs. Each pair checks:
every acknowledged write is on the target, zero client errors, every sequence on the target is
ahead of what the source used, and after the clients wrote to the target for a while, reverse
replication made both sides equal (`pgshift verify --level checksum`). With
PGSHIFT_MATRIX_OUT=FILE each pair appends one JSON line (pair, pause, writes, result), which
bench/matrix_table.py turns into the table in bench/RESULTS.md.
"""
import itertools
import json
import os
import time

import pytest

from conftest import parse_kv, pgshift_objects, sql
from test_upgrade import finish_load, shop_behind_pgbouncer

MAJORS = range(13, 19)
SUBSET = [(13, 18), (18, 13), (14, 16), (16, 14), (15, 17), (17, 15)]
FULL = [p for p in itertools.permutations(MAJORS, 2)]
PAIRS = FULL if os.environ.get("PGSHIFT_MATRIX") == "full" else SUBSET
RATE = 400  # operations/s, 80% writes

# Every major appears as a source and as a target, upgrading and downgrading.
assert {s for s, _ in SUBSET} == set(MAJORS) and {t for _, t in SUBSET} == set(MAJORS)


def record(row):
    out = os.environ.get("PGSHIFT_MATRIX_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("src_version,dst_version", PAIRS, ids=lambda v: str(v))
def test_matrix_pair(lab, src_version, dst_version):
    name = f"m{src_version}-{dst_version}"
    row = {"source": src_version, "target": dst_version, "result": "failed"}
    try:
        _run_pair(lab, name, src_version, dst_version, row)
        row["result"] = "passed"
    finally:
        record(row)
        lab.run("lab", "destroy", f"{name}-pb", check=False)
        lab.run("lab", "destroy", f"{name}-src", check=False)
        lab.run("lab", "destroy", f"{name}-dst", check=False)


def _run_pair(lab, name, src_version, dst_version, row):
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, name, src_version, dst_version)

    started = time.monotonic()
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "16",
                     "--ledger", str(ledger))
    time.sleep(2)
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                 "--router-config", router["config_file"], "--rollback-replication", "on",
                 "--max-lag", "0", timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stdout + up.stderr
    row["pause_ms"] = float(parse_kv(up.stdout.splitlines()[-1])["cutover_pause_ms"])
    row["upgrade_s"] = round(time.monotonic() - started - 2, 1)
    s = finish_load(load)
    row["acknowledged"] = int(s["acknowledged"])
    row["errors"] = int(s["errors"])

    # Zero client errors; every acknowledged write on the target.
    assert int(s["errors"]) == 0, s
    assert int(s["stale_reads"]) == 0, s
    assert int(s["acknowledged"]) > 2000, s
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert v["acknowledged"] == s["acknowledged"]
    assert sql(app, "SHOW server_version_num").startswith(str(dst_version))

    # Every sequence on the target is ahead of every value the source handed out.
    for seq, table in (("shop.orders_id_seq", "shop.orders"),
                       ("shop.products_id_seq", "shop.products"),
                       ("shop.customers_id_seq", "shop.customers")):
        assert int(sql(dst, f"SELECT last_value FROM {seq}")) >= int(
            sql(src, f"SELECT coalesce(max(id), 0) FROM {table}")), seq

    # The application keeps writing to the target; reverse replication brings it back, so
    # both sides end equal, table by table.
    sql(app, "INSERT INTO shop.orders (customer_id, total_cents) "
             "SELECT 1 + g % 100, g FROM generate_series(1, 500) g")
    sql(app, "UPDATE shop.products SET price_cents = price_cents + 1 WHERE id % 7 = 0")
    sql(app, "DELETE FROM shop.order_lines WHERE order_id % 11 = 0")
    deadline = time.monotonic() + 60
    while True:
        p = lab.run("verify", "--source", src, "--target", dst, "--level", "checksum", check=False)
        if p.returncode == 0:
            break
        assert time.monotonic() < deadline, p.stdout + p.stderr
        time.sleep(1)
    assert sql(src, "SELECT count(*) FROM shop.orders") == sql(dst, "SELECT count(*) FROM shop.orders")

    lab.run("finish", "--state", str(state))
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []
