"""Crash and fault tests: kill -9 of `pgshift upgrade` at every phase boundary (and inside the
cutover's pause), a target that stops during catch-up, and DDL that blocks cutover. The load
client writes through PgBouncer the whole time; every acknowledged write must reach the target."""
import json
import signal
import subprocess
import time

from conftest import BIN, parse_kv, pgshift_objects, sql
from test_upgrade import RATE, finish_load, load_schema

KILL_POINTS = ["Preflight", "Provisioning", "Roles", "Schema", "InitialCopy", "after-subscription",
               "CatchingUp", "ReadyForCutover", "CuttingOver", "cutover-fenced"]


def setup_pair(lab, name, src_version=15, dst_version=17):
    src = lab.start(f"{name}-src", src_version)
    dst = lab.start(f"{name}-dst", dst_version)
    app = lab.router(f"{name}-pb", f"{name}-src", "pgbouncer")
    router = lab.list()[f"{name}-pb"]
    load_schema(src)
    return src, dst, app, router


def upgrade_args(src, dst, router, state, *extra):
    return ["upgrade", "--source", src, "--target", dst, "--state", str(state), "--router", "pgbouncer",
            "--router-admin", router["admin_dsn"], "--router-config", router["config_file"], *extra]


def test_kill_9_at_every_phase_boundary_then_resume_loses_nothing(lab):
    src, dst, app, router = setup_pair(lab, "k9")
    state = lab.dir / "k9-state"
    ledger = lab.dir / "k9.ledger"
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "40",
                     "--ledger", str(ledger))
    time.sleep(1)
    args = upgrade_args(src, dst, router, state)
    for point in KILL_POINTS:
        env = dict(lab.env, PGSHIFT_FAULT_KILL_AT=point)
        p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, f"{point}: {p.returncode}\n{p.stderr}"
        assert f"killed at {point}" in p.stderr
        if point == "cutover-fenced":
            # Killed inside the pause: clients are held and the source is fenced until resumed.
            assert json.loads((state / "state.json").read_text())["cutover_in_flight"] == "forward"
    up = lab.run(*args, timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    assert "resuming after a crash inside the cutover" in up.stderr
    s = finish_load(load)
    assert int(s["errors"]) == 0, s
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert v["acknowledged"] == s["acknowledged"]
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert st["phase"] == "RollbackReady" and st["verification"]["clean"] is True
    # The attempt interrupted by the kill is recorded as undone only by its recovery.
    assert st["cutovers"][-1]["succeeded"] is True
    lab.run("finish", "--state", str(state))
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []


def test_target_stopped_during_catch_up_then_resume(lab):
    src, dst, app, router = setup_pair(lab, "ts")
    state = lab.dir / "ts-state"
    ledger = lab.dir / "ts.ledger"
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "20",
                     "--ledger", str(ledger))
    time.sleep(1)
    args = upgrade_args(src, dst, router, state)
    env = dict(lab.env, PGSHIFT_FAULT_KILL_AT="CatchingUp")
    p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    lab.run("lab", "stop", "ts-dst")
    # While the target is down the source keeps taking writes; upgrade says what is wrong.
    time.sleep(3)
    p = lab.run(*args, check=False, timeout=120)
    assert p.returncode != 0 and "target" in p.stderr
    lab.start("ts-dst", 17)
    up = lab.run(*args, timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    s = finish_load(load)
    assert int(s["errors"]) == 0, s
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v


def test_ddl_on_the_source_blocks_cutover_and_is_shown(lab):
    src, dst, app, router = setup_pair(lab, "dd")
    state = lab.dir / "dd-state"
    up = lab.run(*upgrade_args(src, dst, router, state, "--cutover", "manual"), timeout=300)
    assert "phase ReadyForCutover" in up.stdout, up.stderr
    sql(src, "ALTER TABLE shop.products ADD COLUMN discontinued boolean")
    p = lab.run("cutover", "--state", str(state), check=False)
    assert p.returncode == 3
    assert "DDL ran on the source after the schema copy" in p.stderr
    assert "ADD COLUMN discontinued" in p.stderr
    # Traffic never moved.
    assert sql(app, "SHOW server_version_num").startswith("15")
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert st["phase"] == "ReadyForCutover"
    # Abort removes every pgshift object; the source keeps its data and takes writes.
    lab.run("abort", "--state", str(state))
    assert pgshift_objects(src) == []
    assert pgshift_objects(dst) == []
    sql(src, "INSERT INTO shop.products (sku, title, price_cents) VALUES ('after-abort', 'x', 1)")
    assert int(sql(src, "SELECT count(*) FROM shop.orders")) == 20000
