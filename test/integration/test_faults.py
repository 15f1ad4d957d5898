"""Crash and fault tests: kill -9 of `pgshift upgrade` at every phase boundary (and inside the
cutover's pause, and while the copy's jobs are busy), a target that stops during catch-up, and
DDL that blocks cutover (DDL pgshift cannot carry). The load client writes through PgBouncer the whole time; every
acknowledged write must reach the target."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import BIN, parse_kv, pgshift_objects, sql, wait_for
from test_upgrade import RATE, finish_load, load_schema

KILL_POINTS = ["Preflight", "Provisioning", "Roles", "Schema", "InitialCopy", "after-subscription",
               "CatchingUp", "ReadyForCutover", "CuttingOver", "forward:after-fence"]


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
        if point == "forward:after-fence":
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
    # DDL pgshift carries does not block (test_ddl_carry.py); this kind is not carried.
    sql(src, "CREATE TABLE shop.products_copy AS SELECT * FROM shop.products")
    p = lab.run("cutover", "--state", str(state), check=False)
    assert p.returncode == 3
    assert "DDL ran on the source after the schema copy" in p.stderr
    assert "pgshift does not carry CREATE TABLE AS" in p.stderr
    assert "CREATE TABLE shop.products_copy AS SELECT" in p.stderr
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


def copy_ranges(dst):
    """(done, total) ranges of pgshift's own copy on the target's postgres database."""
    done, total = sql(dst, "SELECT count(*) FILTER (WHERE done), count(*) FROM _pgshift.copy_range").split("|")
    return int(done), int(total)


def test_kill_9_mid_copy_resumes_under_the_same_snapshot_or_starts_over_without_it(lab):
    """kill -9 while the own copy's jobs are busy: the resumed run imports the same exported
    snapshot (its keeper outlived pgshift) and copies only the ranges not done; once the keeper
    is gone too, the copy starts over under a new snapshot. Every row arrives exactly once (the
    table has no key, so a range copied twice would show), and every acknowledged write of the
    load client too."""
    src, dst, app, router = setup_pair(lab, "kc")
    # About 70 MB: cut into ranges of pages (source 15); no key.
    sql(src, "CREATE TABLE public.wide (n bigint NOT NULL, pad text NOT NULL); "
             "INSERT INTO public.wide SELECT g, repeat(md5(g::text), 3) "
             "FROM generate_series(1, 400000) g")
    state = lab.dir / "kc-state"
    ledger = lab.dir / "kc.ledger"
    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "60",
                     "--ledger", str(ledger))
    time.sleep(1)
    args = upgrade_args(src, dst, router, state, "--jobs", "2", "--tables-without-pk", "full")
    env = dict(lab.env, PGSHIFT_FAULT_KILL_AT="copy-in-flight")

    # 1. Killed while ranges are copying.
    p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert "killed at copy-in-flight" in p.stderr
    done1, total = copy_ranges(dst)
    assert 0 < done1 < total, (done1, total)
    snapshot = sql(dst, "SELECT snapshot FROM _pgshift.copy_run")
    keepers = list(state.glob("keeper-*.json"))
    assert len(keepers) == 1
    keeper = json.loads(keepers[0].read_text())
    assert keeper["snapshot"] == snapshot
    assert (Path("/proc") / str(keeper["pid"])).exists(), "the keeper died with pgshift"

    # 2. Resumed under the same snapshot: only the ranges not done; killed again.
    p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert f"resuming: {done1} ranges were done" in p.stderr, p.stderr
    done2, total2 = copy_ranges(dst)
    assert total2 == total and done1 < done2 < total, (done1, done2, total)
    assert sql(dst, "SELECT snapshot FROM _pgshift.copy_run") == snapshot

    # 3. The keeper dies too: the snapshot is gone, the copy starts over under a new one.
    os.kill(keeper["pid"], signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{keeper['pid']}").exists(), what="the keeper to end")
    up = lab.run(*args, timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    assert "the snapshot of the interrupted copy is gone" in up.stderr, up.stderr
    assert sql(dst, "SELECT snapshot FROM _pgshift.copy_run") != snapshot
    assert copy_ranges(dst)[0] == copy_ranges(dst)[1]

    s = finish_load(load)
    assert int(s["errors"]) == 0, s
    v = parse_kv(lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert v["acknowledged"] == s["acknowledged"]
    # Every row once: the table takes no writes, so both sides must agree exactly.
    q = "SELECT count(*), sum(n), sum(length(pad)) FROM public.wide"
    assert sql(dst, q) == sql(src, q) == "400000|80000200000|38400000"
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert any("started over" in n for n in st["notes"]), st["notes"]
    new_keeper = [k for k in state.glob("keeper-*.json")]
    assert new_keeper == [], "the keeper of a finished copy is stopped and its file removed"
    lab.run("finish", "--state", str(state))
    assert pgshift_objects(src) == [] and pgshift_objects(dst) == []
