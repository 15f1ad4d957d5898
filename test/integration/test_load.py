"""pgshift load: traffic through real routers, and verify catches every lost or changed write."""
import os
import signal
import time

from conftest import parse_kv, sql, wait_for


def run_load(lab, dsn, ledger, rate=300, duration=4, clients=4):
    p = lab.run("load", "run", "--dsn", dsn, "--rate", str(rate), "--duration", str(duration),
                "--ledger", str(ledger), "--clients", str(clients))
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("acknowledged=")
    return {**parse_kv(lines[0]), **parse_kv(lines[1])}


def verify(lab, dsn, ledger, check=True):
    p = lab.run("load", "verify", "--dsn", dsn, "--ledger", str(ledger), check=check)
    return p, parse_kv(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}


def test_load_through_pgbouncer_and_nginx_loses_nothing(lab):
    for version, kind in ((13, "pgbouncer"), (17, "nginx")):
        server = f"s{version}"
        lab.start(server, version)
        router_dsn = lab.router(f"{server}-{kind}", server, kind)
        ledger = lab.dir / f"{server}.ledger"
        s = run_load(lab, router_dsn, ledger, rate=400, duration=4)
        assert int(s["errors"]) == 0 and int(s["stale_reads"]) == 0
        assert int(s["acknowledged"]) > 800  # ~80% of 1600 operations are writes
        # Verify against the server itself, not through the router.
        p, v = verify(lab, lab.dsn(server), ledger)
        assert v["acknowledged"] == s["acknowledged"]
        assert v["missing"] == "0" and v["mismatched"] == "0"
        assert int(v["present"]) > 0 and int(v["deleted"]) > 0
        series = (lab.dir / f"{server}.ledger.series.csv").read_text().splitlines()
        assert series[0] == "second,ops,writes,reads,errors,max_latency_ms"
        assert len(series) >= 5


def test_router_killed_mid_run_client_reconnects_and_nothing_is_lost(lab):
    lab.start("kr", 15)
    dsn = lab.router("kr-pb", "kr", "pgbouncer")
    ledger = lab.dir / "kill.ledger"
    load = lab.popen("load", "run", "--dsn", dsn, "--rate", "300", "--duration", "8",
                     "--ledger", str(ledger))
    time.sleep(2.5)
    pid = lab.list()["kr-pb"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: lab.list()["kr-pb"]["state"] == "crashed", what="router crash to be seen")
    time.sleep(1.0)
    lab.router("kr-pb", "kr", "pgbouncer")  # restart on the same port
    out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    lines = out.strip().splitlines()
    s = {**parse_kv(lines[0]), **parse_kv(lines[1])}
    assert int(s["errors"]) > 0, "the client should have counted failures while the router was down"
    assert int(s["reconnects"]) >= 1
    # It went on after the restart: writes were acknowledged in the last seconds.
    series = [l.split(",") for l in (lab.dir / "kill.ledger.series.csv").read_text().splitlines()[1:]]
    assert sum(int(r[2]) for r in series[-3:]) > 0
    p, v = verify(lab, lab.dsn("kr"), ledger)
    assert v["missing"] == "0" and v["mismatched"] == "0"
    assert v["acknowledged"] == s["acknowledged"]


def test_verify_reports_a_row_changed_or_removed_behind_the_clients_back(lab):
    lab.start("cr", 16)
    ledger = lab.dir / "corrupt.ledger"
    run_load(lab, lab.dsn("cr"), ledger, rate=200, duration=2)
    dsn = lab.dsn("cr")
    p, v = verify(lab, dsn, ledger)
    assert v["mismatched"] == "0"
    keys = sql(dsn, "SELECT id FROM pgshift_load.items ORDER BY id LIMIT 2").split()
    sql(dsn, f"UPDATE pgshift_load.items SET payload = 'tampered' WHERE id = {keys[0]}")
    p, v = verify(lab, dsn, ledger, check=False)
    assert p.returncode != 0
    assert v["mismatched"] == "1" and v["missing"] == "0"
    assert f"key {keys[0]}" in p.stderr
    sql(dsn, f"DELETE FROM pgshift_load.items WHERE id = {keys[1]}")
    p, v = verify(lab, dsn, ledger, check=False)
    assert p.returncode != 0
    assert v["mismatched"] == "1" and v["missing"] == "1"
    assert f"key {keys[1]}: missing" in p.stderr


def test_slow_operations_are_traced_with_wall_clock_times(lab):
    """--slow-ms: a table lock held 400 ms stalls the clients' writes; LEDGER.slow.csv lists
    those operations, late by about the lock's length, at the wall-clock time the lock began,
    and nothing faster than the threshold."""
    lab.start("sl", 16)
    dsn = lab.dsn("sl")
    run_load(lab, dsn, lab.dir / "warm.ledger", rate=50, duration=1)  # makes pgshift_load.items
    ledger = lab.dir / "slow.ledger"
    load = lab.popen("load", "run", "--dsn", dsn, "--rate", "200", "--duration", "4",
                     "--ledger", str(ledger), "--slow-ms", "150")
    time.sleep(1.5)
    locked_at = time.time() * 1000
    sql(dsn, "BEGIN; LOCK TABLE pgshift_load.items; SELECT pg_sleep(0.4); COMMIT")
    unlocked_at = time.time() * 1000
    out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    rows = [r.split(",") for r in (lab.dir / "slow.ledger.slow.csv").read_text().splitlines()]
    assert rows[0] == ["scheduled_unix_ms", "done_unix_ms", "latency_ms", "client", "op", "ok"]
    rows = rows[1:]
    assert rows, "the lock stalled no operation past 150 ms"
    for scheduled, done, latency, client, op, ok in rows:
        assert float(latency) >= 150 and ok == "1" and op in ("insert", "update", "delete", "read")
        assert abs(float(done) - float(scheduled) - float(latency)) < 0.01
        # Held by the lock: scheduled while it was held, done once it was released.
        assert locked_at - 100 <= float(scheduled) <= unlocked_at, (scheduled, locked_at)
        assert float(done) >= locked_at + 150
    assert max(float(r[2]) for r in rows) >= 300
