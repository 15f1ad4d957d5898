"""Replication that breaks on purpose is loud within seconds, on every surface, and the cutover
never starts over it.

A row put on the target by hand makes the source's next insert of the same key fail there
(insert_exists): the apply worker stops and restarts for ever, the server's message goes to its
log only. pgshift must end the catch-up within seconds with the target's own text, show it in
`status` (text and JSON), the HTML report and the state's last error (which the operator's Degraded condition carries); once the
row is repaired the same command goes on. At ReadyForCutover a disabled subscription keeps the
cutover from holding clients at all. The load client writes through PgBouncer the whole time
and every acknowledged write must be on the target at the end.

Versions: an 18 target counts conflicts (pg_stat_subscription_stats.confl_*) and errors; a 13
target has neither, and pgshift sees the apply worker's restarts instead.
"""
import json
import re
import subprocess
import time

import pytest

from conftest import BIN, psql_bin, sql
from test_upgrade import RATE, shop_behind_pgbouncer, stop_load_and_verify

KEY = 900001


def past_fence(dsn, statement):
    """A superuser's statement on the fenced target (read-only by default from ReadyForCutover)."""
    p = subprocess.run([psql_bin(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                        "-c", "SET default_transaction_read_only = off",
                        "-c", "SET session_replication_role = replica", "-c", statement],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("src_version,dst_version", [(13, 18), (18, 13)])
def test_broken_apply_is_loud_everywhere_and_blocks_the_cutover(lab, src_version, dst_version):
    name = f"ae{src_version}-{dst_version}"
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, name, src_version, dst_version)
    router_args = ("--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                   "--router-config", router["config_file"])
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "300",
                     "--ledger", str(ledger))
    time.sleep(1)
    # To the start of the catch-up: the subscription applies the load's changes.
    env = dict(lab.env, PGSHIFT_FAULT_KILL_AT="CatchingUp")
    p = subprocess.run([BIN, "upgrade", "--source", src, "--target", dst, "--state", str(state),
                        "--cutover", "manual", *router_args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert "killed at CatchingUp" in p.stderr, p.stderr

    # A row on the target the source is about to insert too.
    sql(dst, f"INSERT INTO shop.products (id, sku, title, price_cents) VALUES ({KEY}, 'hand-{KEY}', 'by hand', 1)")
    sql(src, f"INSERT INTO shop.products (id, sku, title, price_cents) VALUES ({KEY}, 'src-{KEY}', 'from the source', 2)")

    started = time.monotonic()
    run = subprocess.run([BIN, "upgrade", "--state", str(state)], env=lab.env,
                         capture_output=True, text=True, timeout=300)
    err = run.stderr
    took = time.monotonic() - started
    print(f"{name}: the catch-up stopped {took:.1f} s after it resumed with the apply worker failing")
    assert run.returncode == 3, err
    assert took < 60, took
    if dst_version >= 18:
        # The conflict counters say it first, with the server's own conflict line.
        assert "met conflicts" in err and "insert_exists 1" in err, err
        assert "conflict detected on relation" in err, err
        fix = re.search(r"SELECT pg_stat_reset_subscription_stats\(oid\) FROM pg_subscription "
                        r"WHERE subname = '[^']+'", err)
        assert fix, err
    else:
        # No counters before 15: the apply worker's restarts, and the text from the log.
        assert "the apply worker of subscription" in err and "is stalled" in err, err
        assert "duplicate key value violates unique constraint" in err, err
        fix = None

    # status: the state's last error, the workers' counters and the log's text.
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert st["phase"] == "CatchingUp", st["phase"]
    assert "products" in st["last_error"] or "insert_exists" in st["last_error"], st["last_error"]
    workers = next(d for d in st["live"]["databases"] if d["name"] == "postgres")["workers"]
    text = lab.run("status", "--state", str(state)).stdout
    if dst_version >= 18:
        assert workers["apply_errors"] >= 1 and workers["conflicts"]["insert_exists"] >= 1, workers
        assert "replication conflicts: insert_exists" in text, text
    else:
        assert "apply_errors" not in workers and workers["conflicts"] == {}, workers
    assert workers["enabled"] is True
    # The report: the error recorded, in the page.
    html = lab.dir / f"{name}.html"
    lab.run("report", "--state", str(state), "-o", str(html))
    page = html.read_text()
    assert "Errors recorded" in page and ("insert_exists" in page or "duplicate key" in page), page[:2000]

    # Repaired on the target (and, on 18, the counters cleared as the message says): the same
    # command goes on to ReadyForCutover.
    sql(dst, f"DELETE FROM shop.products WHERE id = {KEY}")
    if fix:
        sql(dst, fix.group(0))
    up = lab.run("upgrade", "--state", str(state), timeout=300)
    assert "phase ReadyForCutover" in up.stdout, up.stderr

    # A subscription disabled while pgshift waits: the cutover refuses before it holds anyone.
    sub = sql(dst, "SELECT subname FROM pg_subscription")
    past_fence(dst, f'ALTER SUBSCRIPTION "{sub}" DISABLE')
    cut = lab.run("cutover", "--state", str(state), check=False, timeout=120)
    assert cut.returncode == 3, cut.stdout + cut.stderr
    assert "is disabled, so nothing replicates" in cut.stderr, cut.stderr
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert st["phase"] == "ReadyForCutover" and st.get("last_cutover_pause_ms") is None, st
    assert "disabled" in st["last_error"]
    assert "subscription DISABLED" in lab.run("status", "--state", str(state)).stdout
    assert sql(app, "SHOW server_version_num").startswith(str(src_version)), "clients moved"

    past_fence(dst, f'ALTER SUBSCRIPTION "{sub}" ENABLE')
    cut = lab.run("cutover", "--state", str(state), timeout=300)
    assert "phase RollbackReady" in cut.stdout, cut.stderr
    stop_load_and_verify(lab, load, dst, ledger)
    # The row the source inserted is there as the source has it.
    assert sql(dst, f"SELECT sku FROM shop.products WHERE id = {KEY}") == f"src-{KEY}"
