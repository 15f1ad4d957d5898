"""pgshift lab: servers of several majors side by side, routers, lifecycle, bad input."""
import os
import signal
import socket

from conftest import sql, wait_for


def test_two_majors_side_by_side_with_both_routers(lab):
    dsn13 = lab.start("old", 13)
    dsn17 = lab.start("new", 17)
    assert sql(dsn13, "SHOW server_version_num").startswith("13")
    assert sql(dsn17, "SHOW server_version_num").startswith("17")
    # Ready for logical replication out of the box.
    assert sql(dsn17, "SHOW wal_level") == "logical"
    assert int(sql(dsn13, "SHOW max_replication_slots")) >= 10
    # scram-sha-256: the password is generated and stored as a SCRAM secret.
    assert sql(dsn17, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'postgres'") \
        == "SCRAM-SHA-256$"
    assert "password" not in dsn17

    pb = lab.router("pb", "old", "pgbouncer")
    ng = lab.router("ng", "new", "nginx")
    assert sql(pb, "SHOW server_version_num").startswith("13")
    assert sql(ng, "SHOW server_version_num").startswith("17")

    listing = lab.list()
    assert {n: listing[n]["state"] for n in ("old", "new", "pb", "ng")} == \
        dict.fromkeys(("old", "new", "pb", "ng"), "running")
    assert listing["pb"]["admin_dsn"].split("?")[0].endswith("/pgbouncer")
    assert listing["ng"]["admin_dsn"] is None
    assert listing["old"]["data_dir"].endswith("/old/data")
    assert listing["pb"]["backend"] == "old"
    # The PgBouncer admin console answers SHOW and is in transaction pooling mode.
    assert "transaction" in sql(listing["pb"]["admin_dsn"], "SHOW CONFIG").split("pool_mode")[1][:40]


def test_start_is_idempotent_and_a_crash_is_reported(lab):
    dsn = lab.start("idem", 15)
    pid = lab.list()["idem"]["pid"]
    assert lab.start("idem", 15) == dsn
    assert lab.list()["idem"]["pid"] == pid  # a running server is left alone

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: lab.list()["idem"]["state"] == "crashed", what="crash to be seen")
    p = lab.run("lab", "list")
    assert "crashed" in p.stdout
    lab.start("idem", 15)
    assert lab.list()["idem"]["state"] == "running"
    assert sql(dsn, "SELECT 1") == "1"

    lab.run("lab", "stop", "idem")
    assert lab.list()["idem"]["state"] == "stopped"
    lab.run("lab", "destroy", "idem")
    assert "idem" not in lab.list()


def test_down_stops_everything(lab):
    lab.start("d1", 16)
    lab.router("d1-pb", "d1")
    lab.run("lab", "down")
    states = {n: i["state"] for n, i in lab.list().items() if n.startswith("d1")}
    assert states == {"d1": "stopped", "d1-pb": "stopped"}


def test_bad_input_gets_a_clear_message_and_nonzero_exit(lab):
    p = lab.run("lab", "start", "v", "--version", "11", check=False)
    assert p.returncode == 2 and "unknown PostgreSQL major version 11" in p.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = lab.run("lab", "start", "busy", "--version", "15", "--port", str(port), check=False)
    assert p.returncode == 3 and f"port {port}" in p.stderr and "in use" in p.stderr
    assert "busy" not in lab.list()

    p = lab.run("lab", "stop", "nosuch", check=False)
    assert p.returncode == 4 and "no lab instance named 'nosuch'" in p.stderr
    p = lab.run("lab", "router", "r", "--backend", "nosuch", check=False)
    assert p.returncode == 4 and "nosuch" in p.stderr
    p = lab.run("lab", "start", "Bad/Name", "--version", "15", check=False)
    assert p.returncode == 2 and "bad lab instance name" in p.stderr

    p = lab.run("load", "run", "--dsn", "host=127.0.0.1 port", "--rate", "10", "--duration", "1",
                "--ledger", str(lab.dir / "x.ledger"), check=False)
    assert p.returncode == 2 and "bad connection string" in p.stderr
    p = lab.run("load", "verify", "--dsn", "postgresql://u@127.0.0.1:1/db",
                "--ledger", str(lab.dir / "none.ledger"), check=False)
    assert p.returncode == 4 and "cannot read ledger" in p.stderr
