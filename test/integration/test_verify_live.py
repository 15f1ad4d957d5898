"""Verification during a real migration: busy tables cut over, real differences do not.

- pgbench (scale 20, 4 clients, -j 2, no rate limit) through PgBouncer while `pgshift upgrade
  --router pgbouncer --cutover auto --tables-without-pk full` moves 16 -> 18 and 18 -> 16
  (issue 17): the hot rows of pgbench_branches and the key-less, appended pgbench_history are
  "still being written" before cutover, not differences; the cutover happens within 4 minutes
  with 0 failed transactions; the exact comparison at the switch point is clean; balances and
  history are equal on both sides afterwards. One run per direction; PGSHIFT_PGBENCH_RUNS=5 runs
  each direction 5 times.
- A row changed on the target of a keyed table before verification blocks the cutover, named
  by its key; a row added to a key-less table on the target is caught at the switch point and
  rolled back (nothing lost: the load client's writes are all on the source afterwards); with
  --on-difference stop the clients stay on the target and the key is named.
- A key-less table under steady DELETEs never blocks.
"""
import json
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import BIN, CACHE, ROOT, parse_kv, sql

PGBENCH = str(CACHE / "pgclient" / "bin" / "pgbench")
PSQL = str(CACHE / "pgclient" / "bin" / "psql")
RUNS = int(os.environ.get("PGSHIFT_PGBENCH_RUNS", "1"))
APP_SCHEMA = ROOT / "scripts" / "demo" / "app-schema.sql"


class PgbenchLoop:
    """pgbench through the router in back-to-back segments of `segment` seconds until stopped:
    each segment reports its transactions and failures, so the whole run is counted without
    killing pgbench mid-way."""

    def __init__(self, dsn, *extra, segment=5):
        self.dsn, self.extra, self.segment = dsn, extra, segment
        self.stop_flag = threading.Event()
        self.segments = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        while not self.stop_flag.is_set():
            p = subprocess.run([PGBENCH, "-n", "-T", str(self.segment), *self.extra, self.dsn],
                               capture_output=True, text=True, timeout=self.segment + 120)
            done = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
            failed = re.search(r"number of failed transactions: (\d+)", p.stdout)
            self.segments.append({"rc": p.returncode, "done": int(done.group(1)) if done else 0,
                                  "failed": int(failed.group(1)) if failed else None,
                                  "aborted": "aborted" in p.stderr, "stderr": p.stderr[-2000:]})

    def stop(self):
        self.stop_flag.set()
        self.thread.join(timeout=180)

    def check(self):
        bad = [s for s in self.segments
               if s["rc"] != 0 or s["failed"] != 0 or s["aborted"]]
        assert not bad, bad[:3]
        total = sum(s["done"] for s in self.segments)
        assert total > 0
        return total


def pgbench_totals(dsn):
    """The balances and the history: what every pgbench transaction leaves behind."""
    return sql(dsn, "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || '/' || "
                    "(SELECT sum(bbalance) FROM pgbench_branches) || '/' || "
                    "(SELECT sum(tbalance) FROM pgbench_tellers) || '/' || "
                    "(SELECT count(*) || ':' || coalesce(sum(delta), 0) FROM pgbench_history)")


def router_args(lab, name):
    r = lab.list()[name]
    return ["--router", "pgbouncer", "--router-admin", r["admin_dsn"],
            "--router-config", r["config_file"]]


def tamper(dsn, statement):
    """A write that goes around the target's fence (on from ReadyForCutover): a superuser's
    session in replica mode, as a rogue tool or a hand fix would do."""
    sql(dsn, f"BEGIN READ WRITE; SET LOCAL session_replication_role = replica; {statement}; COMMIT")


def status(lab, state):
    return json.loads(lab.run("status", "--state", str(state), "--json").stdout)


def wait_equal(a, b, what, timeout=90):
    deadline = time.time() + timeout
    while True:
        va, vb = a(), b()
        if va == vb:
            return va
        assert time.time() < deadline, f"{what}: {va} != {vb}"
        time.sleep(0.5)


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("src_version,dst_version", [(16, 18), (18, 16)])
def test_pgbench_unthrottled_through_pgbouncer_cuts_over(lab, src_version, dst_version, run):
    name = f"pb{src_version}-{dst_version}-{run}"
    src = lab.start(f"{name}-src", src_version)
    dst = lab.start(f"{name}-dst", dst_version)
    app = lab.router(f"{name}-pb", f"{name}-src", "pgbouncer")
    subprocess.run([PGBENCH, "-i", "-s", "20", "-I", "dtGvp", "-q", src], check=True,
                   capture_output=True, timeout=600)
    state = lab.dir / f"{name}-state"
    with PgbenchLoop(app, "-c", "4", "-j", "2") as bench:
        time.sleep(3)
        started = time.time()
        up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                     *router_args(lab, f"{name}-pb"), "--cutover", "auto",
                     "--tables-without-pk", "full", timeout=600)
        took = time.time() - started
        time.sleep(3)  # clients go on writing, on the target
    transactions = bench.check()
    assert "phase RollbackReady" in up.stdout, up.stderr
    st = status(lab, state)
    cut = [c for c in st["cutovers"] if c["succeeded"]]
    assert cut, st["cutovers"]
    print(f"{name}: upgrade {took:.1f} s, pause {cut[-1]['pause_ms']:.1f} ms, "
          f"{transactions} pgbench transactions, 0 failed")
    assert took < 240, f"the cutover took {took:.0f} s from the start"
    # Before cutover: nothing blocked; busy tables were followed, not called different.
    pre = st["verification"]
    assert pre["clean"] and pre["mismatches"] == 0, pre["summary"]
    # At the switch point: exact, every table equal.
    sp = st["switch_point_verification"]
    assert sp["clean"] and sp["mode"] == "snapshot", sp
    assert {t["table"] for t in sp["tables"]} == {
        "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}
    assert all(t["result"] == "match" for t in sp["tables"]), sp["tables"]
    assert sql(app, "SHOW server_version_num").startswith(str(dst_version))

    # Afterwards, reverse replication brings every write back: both sides hold the same
    # balances and history, and they are consistent with each other.
    totals = wait_equal(lambda: pgbench_totals(dst), lambda: pgbench_totals(src),
                        "balances and history on target / source")
    a, b, t, h = totals.split("/")
    assert a == b == t == h.split(":")[1], totals
    assert int(h.split(":")[0]) >= transactions
    p = lab.run("verify", "--source", src, "--target", dst, "--databases", "postgres",
                "--snapshot", check=False)
    assert p.returncode == 0, p.stdout


def start_load(lab, app, ledger, duration):
    return lab.popen("load", "run", "--dsn", app, "--rate", "200", "--duration", str(duration),
                     "--ledger", str(ledger), "--clients", "2")


def finish_load(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    s = {**parse_kv(lines[0]), **parse_kv(lines[1])}
    assert int(s["errors"]) == 0, s
    return s


def load_verified(lab, dsn, ledger, acknowledged):
    v = parse_kv(lab.run("load", "verify", "--dsn", dsn, "--ledger", str(ledger)).stdout)
    assert v["missing"] == "0" and v["mismatched"] == "0", v
    assert v["acknowledged"] == acknowledged
    return v


def shop(lab, name, src_version=16, dst_version=18):
    src = lab.start(f"{name}-src", src_version)
    dst = lab.start(f"{name}-dst", dst_version)
    app = lab.router(f"{name}-pb", f"{name}-src", "pgbouncer")
    subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-f", str(APP_SCHEMA)],
                   check=True, capture_output=True)
    sql(src, "CREATE TABLE shop.audit (at timestamptz NOT NULL, msg text);"
             "INSERT INTO shop.audit SELECT timestamptz '2026-01-01 00:00+00' + g * interval '1 s',"
             " 'event ' || g FROM generate_series(1, 5000) g")
    return src, dst, app


def shop_under_load(lab, name, duration):
    """The shop with the load client writing through PgBouncer: (src, dst, app, state folder,
    ledger, load process)."""
    src, dst, app = shop(lab, name)
    ledger = lab.dir / f"{name}.ledger"
    load = start_load(lab, app, ledger, duration)
    time.sleep(2)
    return src, dst, app, lab.dir / f"{name}-state", ledger, load


def test_a_row_changed_on_the_target_blocks_the_cutover_and_is_named(lab):
    src, dst, app, state, ledger, load = shop_under_load(lab, "tk", 45)
    args = ["upgrade", "--source", src, "--target", dst, "--state", str(state),
            *router_args(lab, "tk-pb"), "--tables-without-pk", "full"]
    # Stop right after the copy (the state says CatchingUp), change a row on the target.
    killed = subprocess.run([BIN, *args],
                            env=dict(lab.env, PGSHIFT_FAULT_KILL_AT="CatchingUp"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    sql(dst, "UPDATE shop.products SET title = 'tampered' WHERE id = 42")
    p = lab.run(*args, check=False, timeout=600)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "cutover is blocked" in p.stderr and "shop.products" in p.stderr
    assert "(42)" in p.stderr, p.stderr
    st = status(lab, state)
    assert st["phase"] == "CatchingUp"
    bad = [t for t in st["verification"]["tables"] if t["result"] == "different"]
    assert [(t["table"], t["differing_keys"]) for t in bad] == [("products", ["(42)"])]
    # The hot table of the load client and the key-less audit table did not block.
    assert sql(app, "SHOW server_version_num").startswith("16")
    shown = lab.run("status", "--state", str(state)).stdout
    assert "verification before cutover: DIFFERENCES" in shown and "(42)" in shown, shown

    # Repaired, the same command resumes and cuts over.
    title = sql(src, "SELECT title FROM shop.products WHERE id = 42")
    sql(dst, f"UPDATE shop.products SET title = '{title}' WHERE id = 42")
    p = lab.run(*args, timeout=600)
    assert "phase RollbackReady" in p.stdout
    s = finish_load(load)
    load_verified(lab, dst, ledger, s["acknowledged"])
    st = status(lab, state)
    assert st["verification"]["clean"] and st["switch_point_verification"]["clean"]


def test_a_row_added_to_a_keyless_table_is_caught_at_the_switch_point_and_rolled_back(lab):
    src, dst, app, state, ledger, load = shop_under_load(lab, "kl", 40)
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 *router_args(lab, "kl-pb"), "--tables-without-pk", "full", "--cutover", "manual",
                 "--report", str(lab.dir / "kl.json"), timeout=600)
    assert "phase ReadyForCutover" in up.stdout, up.stderr
    assert status(lab, state)["verification"]["clean"]
    # A key-less table cannot be followed row by row before cutover: this row is only found
    # by the exact comparison at the switch point.
    tamper(dst, "INSERT INTO shop.audit VALUES ('2030-01-01 00:00+00', 'only on the target')")
    p = lab.run("cutover", "--state", str(state), check=False, timeout=600)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "switch point" in p.stderr and "rolled back" in p.stderr, p.stderr
    assert "only on the target" in p.stderr
    st = status(lab, state)
    assert st["phase"] == "RolledBack"
    sp = st["switch_point_verification"]
    assert not sp["clean"] and sp["action"].startswith("rolled back"), sp
    audit = next(t for t in sp["tables"] if t["table"] == "audit")
    assert audit["result"] == "different" and audit["key"] == ""
    assert any("only on the target" in r for r in audit["differing_rows_text"]), audit
    assert [t["table"] for t in sp["tables"] if t["result"] != "match"] == ["audit"]
    # Clients are back on the source, and every write they made on the target came back too.
    assert sql(app, "SHOW server_version_num").startswith("16")
    s = finish_load(load)
    load_verified(lab, src, ledger, s["acknowledged"])
    shown = lab.run("status", "--state", str(state)).stdout
    assert "verification at the switch point: DIFFERENCES" in shown, shown
    report = json.loads((lab.dir / "kl.json").read_text())
    assert report["switch_point_verification"]["clean"] is False
    html = lab.dir / "kl.html"
    lab.run("report", "--state", str(state), "--output", str(html))
    assert "At the switch point: exact" in html.read_text()
    history = [json.loads(l) for l in (state / "history.jsonl").read_text().splitlines()]
    assert any(h["kind"] == "verify" and h.get("mode") == "switch-point" and h.get("summary")
               for h in history)


def test_with_on_difference_stop_the_clients_stay_and_the_key_is_named(lab):
    src, dst, app = shop(lab, "st")
    state = lab.dir / "st-state"
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 *router_args(lab, "st-pb"), "--tables-without-pk", "full", "--cutover", "manual",
                 "--on-difference", "stop", timeout=600)
    assert "phase ReadyForCutover" in up.stdout, up.stderr
    tamper(dst, "UPDATE shop.customers SET name = 'tampered' WHERE id = 7")
    p = lab.run("cutover", "--state", str(state), check=False, timeout=600)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "(7)" in p.stderr and "pgshift rollback" in p.stderr, p.stderr
    st = status(lab, state)
    assert st["phase"] == "RollbackReady"
    sp = st["switch_point_verification"]
    bad = [(t["table"], t["differing_keys"]) for t in sp["tables"] if t["result"] == "different"]
    assert bad == [("customers", ["(7)"])]
    assert sql(app, "SHOW server_version_num").startswith("18")
    # The person decides: back to the source.
    lab.run("rollback", "--state", str(state))
    assert sql(app, "SHOW server_version_num").startswith("16")


def test_a_keyless_table_under_steady_deletes_never_blocks(lab):
    src = lab.start("sd-src", 16)
    dst = lab.start("sd-dst", 18)
    app = lab.router("sd-pb", "sd-src", "pgbouncer")
    sql(src, "CREATE TABLE queue (payload text, n int);"
             "INSERT INTO queue SELECT md5(g::text), g FROM generate_series(1, 20000) g")
    script = lab.dir / "queue.sql"
    script.write_text("DELETE FROM queue WHERE ctid = (SELECT ctid FROM queue LIMIT 1);\n"
                      "INSERT INTO queue VALUES (md5(random()::text), 1);\n")
    state = lab.dir / "sd-state"
    with PgbenchLoop(app, "-c", "2", "-R", "200", "-f", str(script)) as bench:
        time.sleep(2)
        up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                     *router_args(lab, "sd-pb"), "--tables-without-pk", "full", timeout=600)
        time.sleep(2)
    bench.check()
    assert "phase RollbackReady" in up.stdout, up.stderr
    st = status(lab, state)
    queue = next(t for t in st["verification"]["tables"] if t["table"] == "queue")
    assert queue["result"] in ("match", "changing") and not queue["blocking"], queue
    assert st["switch_point_verification"]["clean"], st["switch_point_verification"]
