"""pgshift upgrade end to end: real servers, PgBouncer, and the load client writing at 500
writes/s through the router during the whole migration, its cutover and its rollback."""
import json
import signal
import time

import pytest

from conftest import ROOT, parse_kv, pgshift_objects, psql_bin, sql
import subprocess

APP_SCHEMA = ROOT / "scripts" / "demo" / "app-schema.sql"
RATE = 625  # 20% reads: 500 writes/s


def load_schema(dsn):
    subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(APP_SCHEMA)],
                   check=True, capture_output=True)


def stop_load(proc):
    """Stops a load client before its --duration ends (SIGTERM: it stops writing, then reports)."""
    proc.send_signal(signal.SIGTERM)
    return finish_load(proc)


def stop_load_and_verify(lab, proc, dst, ledger):
    """Stops the load client, then proves it saw no error and every write it had acknowledged
    is on `dst`; returns its summary."""
    s = stop_load(proc)
    assert int(s["errors"]) == 0, s
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert v["acknowledged"] == s["acknowledged"]
    return s


def finish_load(proc):
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    return {**parse_kv(lines[0]), **parse_kv(lines[1])}


def shop_behind_pgbouncer(lab, name, src_version, dst_version):
    """A source with the shop schema behind PgBouncer, an empty target, and the paths of the
    migration's state folder and the load client's ledger."""
    src = lab.start(f"{name}-src", src_version)
    dst = lab.start(f"{name}-dst", dst_version)
    app = lab.router(f"{name}-pb", f"{name}-src", "pgbouncer")
    router = lab.list()[f"{name}-pb"]
    load_schema(src)
    return src, dst, app, router, lab.dir / f"{name}-state", lab.dir / f"{name}.ledger"


@pytest.mark.parametrize("src_version,dst_version", [(15, 17), (13, 16), (17, 15)])
def test_upgrade_under_load_cutover_and_rollback(lab, src_version, dst_version):
    name = f"u{src_version}-{dst_version}"
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, name, src_version, dst_version)

    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "14",
                     "--ledger", str(ledger))
    time.sleep(2)
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                 "--router-config", router["config_file"], "--report", str(lab.dir / f"{name}.json"),
                 timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    pause_ms = float(parse_kv(up.stdout.splitlines()[-1])["cutover_pause_ms"])
    print(f"{name}: cutover pause {pause_ms} ms")
    assert pause_ms < 2000
    s = finish_load(load)

    # Nothing lost, nothing failed: every acknowledged write is on the target.
    assert int(s["errors"]) == 0, s
    assert int(s["stale_reads"]) == 0, s
    assert int(s["acknowledged"]) > 4000
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0"
    assert v["acknowledged"] == s["acknowledged"]
    # The router leads to the target now.
    assert sql(app, "SHOW server_version_num").startswith(str(dst_version))

    status = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert status["phase"] == "RollbackReady"
    # After cutover the lag that matters is the reverse one (what a rollback would wait for).
    assert status["live"]["reverse_lag_bytes"] >= 0, status["live"]
    assert all(d["reverse_lag_bytes"] >= 0 for d in status["live"]["databases"]), status["live"]
    assert "reverse replication (target -> source, for rollback) lag" in \
        lab.run("status", "--state", str(state)).stdout
    assert status["verification"]["clean"] is True
    assert status["last_cutover_pause_ms"] == pytest.approx(pause_ms, abs=0.2)
    assert "password" not in json.dumps(status).lower() or "*****" in json.dumps(status)
    # The phases are listed in the order they happened.
    shown = lab.run("status", "--state", str(state)).stdout
    order = ["Pending", "Preflight", "Provisioning", "Roles", "Schema", "InitialCopy"]
    at = [shown.find(f"  {p} ") for p in order]
    assert all(i >= 0 for i in at) and at == sorted(at), shown

    # Sequences on the target are ahead of every value used on the source.
    for seq, table in (("shop.orders_id_seq", "shop.orders"), ("shop.products_id_seq", "shop.products")):
        assert int(sql(dst, f"SELECT last_value FROM {seq}")) >= int(sql(src, f"SELECT max(id) FROM {table}"))
    used = int(sql(src, "SELECT max(id) FROM shop.orders"))
    new_id = int(sql(app, "INSERT INTO shop.orders (customer_id, total_cents) VALUES (1, 100) RETURNING id").splitlines()[0])
    assert new_id > used

    # The source is fenced against every writer, whichever path: a direct write fails.
    p = subprocess.run([psql_bin(), "-X", "-At", "-d", src, "-c",
                        "INSERT INTO shop.products (sku, title, price_cents) VALUES ('direct', 'x', 1)"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "read-only transaction" in p.stderr

    # Rollback under load: writes made on the target since cutover come back to the source.
    ledger2 = lab.dir / f"{name}-rollback.ledger"
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "8",
                     "--ledger", str(ledger2))
    time.sleep(3)
    rb = lab.run("rollback", "--state", str(state))
    assert "phase RolledBack" in rb.stdout, rb.stderr
    s2 = finish_load(load)
    assert int(s2["errors"]) == 0, s2
    for led in (ledger, ledger2):
        v = parse_kv(lab.run("load", "verify", "--dsn", src, "--ledger", str(led)).stdout)
        assert v["missing"] == "0" and v["mismatched"] == "0", (led, v)
    assert sql(app, "SHOW server_version_num").startswith(str(src_version))
    assert sql(src, f"SELECT count(*) FROM shop.orders WHERE id = {new_id}") == "1"

    lab.run("finish", "--state", str(state))
    assert pgshift_objects(src) == []
    assert pgshift_objects(dst) == []
    # The source takes writes again after a rollback.
    sql(src, "INSERT INTO shop.products (sku, title, price_cents) VALUES ('after', 'x', 1)")


def test_upgrade_through_nginx_moves_clients_and_loses_nothing(lab):
    """nginx cannot hold traffic: clients see errors while the source is fenced and their
    sessions are ended, then reconnect to the target. Nothing acknowledged is lost."""
    src = lab.start("ng-src", 15)
    dst = lab.start("ng-dst", 17)
    app = lab.router("ng-proxy", "ng-src", "nginx")
    router = lab.list()["ng-proxy"]
    load_schema(src)
    ledger = lab.dir / "ng.ledger"
    # Long enough to outlast the upgrade on a busy machine (the test files run two at a time):
    # the clients must meet the switch and write on the target after it.
    load = lab.popen("load", "run", "--dsn", app, "--rate", "300", "--duration", "60",
                     "--ledger", str(ledger))
    time.sleep(2)
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(lab.dir / "ng-state"),
                 "--router", "nginx", "--router-config", router["config_file"], timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    s = finish_load(load)
    assert int(s["reconnects"]) >= 1
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert sql(app, "SHOW server_version_num").startswith("17")
    # The clients went on writing, on the target, after the switch.
    series = [l.split(",") for l in (lab.dir / "ng.ledger.series.csv").read_text().splitlines()[1:]]
    assert sum(int(r[2]) for r in series[-3:]) > 0


def test_manual_router_fences_waits_for_confirmation_then_finishes(lab):
    """--router manual: pgshift fences the source, catches up and waits; the application is
    switched by its owners, who then run `pgshift cutover --confirm`."""
    src = lab.start("mr-src", 15)
    dst = lab.start("mr-dst", 17)
    load_schema(src)
    state = lab.dir / "mr-state"
    up = lab.popen("upgrade", "--source", src, "--target", dst, "--state", str(state),
                   "--router", "manual")
    waiting = state / "cutover.waiting"
    deadline = time.time() + 120
    while not waiting.exists() and time.time() < deadline and up.poll() is None:
        time.sleep(0.2)
    assert waiting.exists(), up.communicate()[1]
    # While it waits: the source takes no writes from anyone, the target has every row.
    p = subprocess.run([psql_bin(), "-X", "-At", "-d", src, "-c",
                        "INSERT INTO shop.products (sku, title, price_cents) VALUES ('m', 'x', 1)"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "read-only transaction" in p.stderr
    assert sql(dst, "SELECT count(*) FROM shop.orders") == sql(src, "SELECT count(*) FROM shop.orders")
    confirm = lab.run("cutover", "--state", str(state), "--confirm")
    assert "confirmed" in confirm.stdout
    out, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    assert "phase RollbackReady" in out
    assert "Switch the application to" in err
    # The application (here: psql) now writes to the target; reverse replication carries it back.
    sql(dst, "INSERT INTO shop.products (sku, title, price_cents) VALUES ('after-manual', 'x', 1)")
    deadline = time.time() + 30
    while sql(src, "SELECT count(*) FROM shop.products WHERE sku = 'after-manual'") != "1":
        assert time.time() < deadline, "reverse replication did not bring the write back"
        time.sleep(0.2)
    p = lab.run("cutover", "--state", str(state), "--confirm", check=False)
    assert p.returncode == 3 and "no cutover waits" in p.stderr
