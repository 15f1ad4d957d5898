"""PgBouncer's pool mode decides whether PAUSE can hold clients for a moment.

In transaction (or statement) mode PAUSE returns once every server connection is between
transactions; in session mode it waits until every client disconnects, which a connection pool
in the application never does, so a cutover through it would wait --max-pause and be undone.
pgshift reads the mode from the admin console (the [pgbouncer] default, each database's and each
user's override, and the ini's own entries) and refuses session mode before it changes anything
on the source, saying why and what to do; `check --router pgbouncer` says the same up front.
The same source then moves under load once the pool is in transaction mode.
"""
import re

from conftest import pgshift_objects, sql
from test_upgrade import RATE, load_schema, parse_kv, stop_load_and_verify


def set_pool_mode(router, default, star=None):
    """pool_mode in [pgbouncer], and on the `*` entry when `star` is given; RELOAD."""
    ini_path = router["config_file"]
    ini = open(ini_path).read()
    ini = re.sub(r"(?m)^pool_mode = \w+$", f"pool_mode = {default}", ini)
    ini = re.sub(r"(?m)^(\* = .*?)( pool_mode=\w+)?$",
                 lambda m: m.group(1) + (f" pool_mode={star}" if star else ""), ini)
    with open(ini_path, "w") as f:
        f.write(ini)
    sql(router["admin_dsn"], "RELOAD")
    shown = sql(router["admin_dsn"], "SHOW CONFIG")
    assert f"pool_mode|{default}|" in shown, shown


def test_session_mode_is_refused_before_anything_changes_then_transaction_mode_moves(lab):
    src = lab.start("pm-src", 13)
    dst = lab.start("pm-dst", 18)
    app = lab.router("pm-pb", "pm-src", "pgbouncer")
    router = lab.list()["pm-pb"]
    load_schema(src)
    state = lab.dir / "pm-state"
    ledger = lab.dir / "pm.ledger"
    router_args = ("--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                   "--router-config", router["config_file"])
    upgrade = ("upgrade", "--source", src, "--target", dst, "--state", str(state), *router_args)

    # The application writes through PgBouncer the whole time, whatever its mode.
    set_pool_mode(router, "session")
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "300",
                     "--ledger", str(ledger))

    # `check` names the session pool and the fix.
    check = lab.run("check", "--source", src, "--target", dst, *router_args, check=False)
    assert check.returncode == 3, check.stdout + check.stderr
    line = next(l for l in check.stdout.splitlines() if " router " in f" {l} ")
    assert line.startswith("ERROR") and "session mode" in line, check.stdout
    assert "default pool_mode of [pgbouncer]" in check.stdout, check.stdout
    assert "set pool_mode = transaction" in check.stdout and "--router manual" in check.stdout

    # upgrade refuses it before preflight: nothing on the source, no state left behind.
    up = lab.run(*upgrade, check=False)
    assert up.returncode == 3, up.stderr
    assert "PgBouncer pools in session mode" in up.stderr, up.stderr
    assert "PAUSE there waits until every client disconnects" in up.stderr
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []
    assert not (state / "state.json").exists()

    # A database entry that overrides a transaction default is found too (the ini's `*`, which
    # SHOW DATABASES does not list as a pool of its own).
    set_pool_mode(router, "transaction", star="session")
    up = lab.run(*upgrade, check=False)
    assert up.returncode == 3 and "database *" in up.stderr, up.stderr
    assert pgshift_objects(src) == []

    # Transaction mode: check says so, and the upgrade moves everything under load.
    set_pool_mode(router, "transaction")
    check = lab.run("check", "--source", src, "--target", dst, *router_args)
    line = next(l for l in check.stdout.splitlines() if " router " in f" {l} ")
    assert line.startswith("OK") and "pool_mode transaction" in line, check.stdout
    up = lab.run(*upgrade, timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    pause_ms = float(parse_kv(up.stdout.splitlines()[-1])["cutover_pause_ms"])
    print(f"pool mode: transaction-mode cutover paused clients {pause_ms} ms")
    s = stop_load_and_verify(lab, load, dst, ledger)
    assert int(s["acknowledged"]) > 1000, s
    assert sql(app, "SHOW server_version_num").startswith("18")
