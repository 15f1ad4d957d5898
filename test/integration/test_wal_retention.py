"""WAL the source keeps for pgshift's slots is shown up front and guarded while migrating.

`check` shows the source's own limit (max_slot_wal_keep_size), what pg_wal holds and the free
space of the data directory's file system (the lab's servers are on this host), warns when
nothing limits the WAL kept, and names idle_replication_slot_timeout on 18. During a migration a
target that stops applying (an apply worker blocked by a lock, not failing) makes the slot keep
WAL: past --max-retained-wal pgshift stops with the figures and the way out, before the source
is in danger; given a larger limit on the resume and with the target unblocked, the same
migration goes on and loses nothing (the load client writes through PgBouncer throughout).
"""
import re
import subprocess
import time

from conftest import BIN, psql_bin, sql, wait_for
from test_upgrade import RATE, shop_behind_pgbouncer, stop_load_and_verify


def check_lines(lab, src, dst, *extra):
    out = lab.run("check", "--source", src, "--target", dst, *extra, check=False).stdout
    return [l for l in out.splitlines() if "wal-retention" in l], out


def test_check_shows_the_wal_the_source_may_keep_on_13_and_18(lab):
    src13 = lab.start("wr-src13", 13)
    src18 = lab.start("wr-src18", 18)
    dst = lab.start("wr-dst", 17)
    for src in (src13, src18):
        lines, out = check_lines(lab, src, dst)
        assert lines and lines[0].startswith("WARN"), out
        assert "nothing limits the WAL" in lines[0] and "max_slot_wal_keep_size = -1" in lines[0], out
        assert re.search(r"free on the data directory's file system: \d", lines[0]), out
        assert re.search(r"pg_wal holds \d", lines[0]), out
        assert "--max-retained-wal SIZE" in out and "ALTER SYSTEM SET max_slot_wal_keep_size" in out
        lines, out = check_lines(lab, src, dst, "--max-retained-wal", "2GB")
        assert lines[0].startswith("OK") and "--max-retained-wal 2.0 GB" in lines[0], out
    # The server's own limit counts as one.
    sql(src13, "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'")
    sql(src13, "SELECT pg_reload_conf()")
    lines, out = check_lines(lab, src13, dst)
    assert lines[0].startswith("OK") and "max_slot_wal_keep_size = 10.0 GB" in lines[0], out
    # 18: a slot idle for idle_replication_slot_timeout is invalidated.
    sql(src18, "ALTER SYSTEM SET idle_replication_slot_timeout = '1h'")
    sql(src18, "SELECT pg_reload_conf()")
    lines, out = check_lines(lab, src18, dst, "--max-retained-wal", "2GB")
    assert any(l.startswith("WARN") and "idle_replication_slot_timeout = 3600 s" in l for l in lines), out
    lines, out = check_lines(lab, src13, dst)
    assert not any("idle_replication_slot_timeout" in l for l in lines), out


def test_a_stalled_target_stops_pgshift_before_the_source_fills_then_it_goes_on(lab):
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, "wg", 13, 18)
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "300",
                     "--ledger", str(ledger))
    time.sleep(1)
    env = dict(lab.env, PGSHIFT_FAULT_KILL_AT="CatchingUp")
    p = subprocess.run([BIN, "upgrade", "--source", src, "--target", dst, "--state", str(state),
                        "--cutover", "manual", "--max-retained-wal", "48MB",
                        "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                        "--router-config", router["config_file"]],
                       env=lab.env | env, capture_output=True, text=True, timeout=300)
    assert "killed at CatchingUp" in p.stderr, p.stderr

    # The target stops applying: a lock its apply worker waits for, held open, and a change on
    # the source that needs it. Only once the worker waits is the WAL written: a worker with
    # nothing to apply would confirm it at once.
    holder = subprocess.Popen([psql_bin(), "-X", "-q", "-At", "-d", dst], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder.stdin.write("BEGIN; LOCK TABLE shop.products IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "locked"
    sql(src, "INSERT INTO shop.products (sku, title, price_cents) VALUES ('wal-guard', 'blocked', 1)")
    wait_for(lambda: sql(dst, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                              "WHERE c.relname = 'products' AND NOT l.granted") != "0",
             timeout=60, what="the apply worker waiting for the lock")
    # 64 MB of WAL on the source (messages in no table: nothing else changes).
    sql(src, "SELECT count(pg_logical_emit_message(false, 'filler', repeat('x', 1048576))) "
             "FROM generate_series(1, 64)")

    started = time.monotonic()
    up = lab.run("upgrade", "--state", str(state), check=False, timeout=300)
    took = time.monotonic() - started
    print(f"wal guard: stopped {took:.1f} s after the resume; {up.stderr.strip().splitlines()[-1]}")
    assert up.returncode == 3, up.stderr
    m = re.search(r"the source keeps ([\d.]+ MB) of WAL for replication slot \S+ \(database postgres\), "
                  r"more than --max-retained-wal 48\.0 MB", up.stderr)
    assert m, up.stderr
    assert "`pgshift abort` to drop the slot" in up.stderr
    assert took < 30, took
    st = lab.run("status", "--state", str(state), "--json").stdout
    assert "more than --max-retained-wal" in st and '"phase": "CatchingUp"' in st

    # The DBA made room and unblocked the target: a larger limit on the resume, and on it goes.
    holder.stdin.write("COMMIT;\n")
    holder.stdin.close()
    holder.wait(timeout=30)
    up = lab.run("upgrade", "--state", str(state), "--max-retained-wal", "1GB", timeout=300)
    assert "phase ReadyForCutover" in up.stdout, up.stderr
    assert "--max-retained-wal changes from 50331648 to 1073741824 bytes" in up.stderr, up.stderr
    cut = lab.run("cutover", "--state", str(state), timeout=300)
    assert "phase RollbackReady" in cut.stdout, cut.stderr
    stop_load_and_verify(lab, load, dst, ledger)
