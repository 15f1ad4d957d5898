"""A source with a physical standby: on 17+ pgshift's slots are failover slots, which the standby
keeps a synced copy of (sync_replication_slots = on), so a failover does not lose the
migration; before 17 the preflight warns that it would. Real servers: a 17 primary with a
standby made by pg_basebackup, a 15 one likewise, an 18 target."""
import json
import subprocess
import time

from conftest import CACHE, sql, wait_for

STANDBY_CONF = """
port = {port}
primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres password={password} dbname=postgres'
primary_slot_name = '{slot}'
hot_standby_feedback = on
"""


def start_standby(lab, primary, dsn, name, version):
    """A streaming standby of lab server `primary` (reached at `dsn`) on its own port;
    returns its DSN and the physical slot it streams from."""
    info = lab.list()[primary]
    password = (lab.dir / "superuser.password").read_text().strip()
    bin_dir = CACHE / "postgres" / str(version) / "native" / "bin"
    # The client tools' pg_basebackup (18) copies older servers too.
    basebackup = CACHE / "pgclient" / "bin" / "pg_basebackup"
    base = lab.dir / name
    data = base / "data"
    base.mkdir()
    slot = name.replace("-", "_") + "_slot"
    sql(dsn, f"SELECT pg_create_physical_replication_slot('{slot}')")
    p = subprocess.run([str(basebackup), "-d", dsn, "-D", str(data), "-X", "stream"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    port = info["port"] + 1000
    conf = STANDBY_CONF.format(port=port, primary_port=info["port"], password=password, slot=slot)
    if version >= 17:
        conf += "sync_replication_slots = on\n"
    with open(data / "postgresql.conf", "a") as f:
        f.write(conf)
    (data / "standby.signal").touch()
    subprocess.run(["chown", "-R", "pgshift:", str(base)], check=True)
    subprocess.run(["chmod", "700", str(data)], check=True)
    subprocess.run(["runuser", "-u", "pgshift", "--", str(bin_dir / "pg_ctl"), "-D", str(data),
                    "-l", str(base / "server.log"), "-w", "-t", "60", "start"],
                   check=True, capture_output=True, timeout=90)
    lab.cleanup.append(lambda: subprocess.run(
        ["runuser", "-u", "pgshift", "--", str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
         "immediate", "-w", "stop"], capture_output=True, timeout=60))
    standby = dsn.replace(f":{info['port']}/", f":{port}/")
    with open(lab.dir / "pgpass", "a") as f:  # the lab's passfile, for the standby's port too
        f.write(f"127.0.0.1:{port}:*:postgres:{password}\n")
    wait_for(lambda: sql(dsn, "SELECT count(*) FROM pg_stat_replication") == "1",
             timeout=60, what="the standby streaming")
    return standby, slot


def failover_finding(lab, src, dst):
    p = lab.run("check", "--source", src, "--target", dst, "--json", check=False)
    return [r for r in json.loads(p.stdout)["results"] if r["id"] == "failover-slots"]


def test_a_17_source_with_a_standby_gets_slots_the_standby_keeps(lab):
    src = lab.start("fo17-src", 17)
    dst = lab.start("fo17-dst", 18)
    sql(src, "CREATE TABLE t (id int PRIMARY KEY, v text); "
             "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g")
    standby, slot = start_standby(lab, "fo17-src", src, "fo17-sb", 17)

    # Without synchronized_standby_slots the target could get changes the standby lacks.
    [f] = failover_finding(lab, src, dst)
    assert f["severity"] == "warning" and "synchronized_standby_slots" in f["remedy"], f
    sql(src, f"ALTER SYSTEM SET synchronized_standby_slots = '{slot}'")
    sql(src, "SELECT pg_reload_conf()")
    time.sleep(0.5)
    [f] = failover_finding(lab, src, dst)
    assert f["severity"] == "info" and f"waits for {slot}" in f["message"], f

    state = lab.dir / "fo17-state"
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 "--router", "manual", "--cutover", "manual", timeout=300)
    assert "ReadyForCutover" in up.stdout + up.stderr, up.stderr
    slots = sql(src, "SELECT slot_name || ' ' || failover FROM pg_replication_slots "
                     "WHERE slot_type = 'logical' ORDER BY 1").splitlines()
    assert slots and all(s.endswith(" true") for s in slots), slots
    # The standby's slot sync worker keeps a copy of each.
    names = {s.split()[0] for s in slots}

    def synced():
        got = sql(standby, "SELECT slot_name FROM pg_replication_slots "
                           "WHERE synced AND failover AND NOT temporary")
        return names <= set(got.splitlines())
    wait_for(synced, timeout=90, interval=1, what=f"{names} synced on the standby")
    # Changes still flow while the source waits for the standby.
    sql(src, "INSERT INTO t VALUES (1001, 'after')")
    wait_for(lambda: sql(dst, "SELECT count(*) FROM t") == "1001", timeout=30,
             what="a change reaching the target")

    # The failover: the primary dies, the standby is promoted, and the target's subscription
    # is pointed at it (what a stable name for the source, a VIP or a Service, does by itself).
    # The synced slot carries on from where the target stood: nothing lost, nothing twice.
    wait_for(lambda: sql(standby, "SELECT count(*) FROM t") == "1001", timeout=30,
             what="the standby replaying the last change")
    bin_dir = CACHE / "postgres" / "17" / "native" / "bin"
    info = lab.list()
    pg_ctl = lambda data, *a: subprocess.run(  # noqa: E731
        ["runuser", "-u", "pgshift", "--", str(bin_dir / "pg_ctl"), "-D", data, "-w", *a],
        check=True, capture_output=True, timeout=60)
    pg_ctl(info["fo17-src"]["data_dir"], "-m", "immediate", "stop")
    pg_ctl(str(lab.dir / "fo17-sb" / "data"), "promote")
    wait_for(lambda: sql(standby, "SELECT pg_is_in_recovery()") == "f", timeout=30,
             what="the standby promoted")
    assert names <= set(sql(standby, "SELECT slot_name FROM pg_replication_slots "
                                     "WHERE slot_type = 'logical'").splitlines())
    password = (lab.dir / "superuser.password").read_text().strip()
    port = standby.split("@127.0.0.1:")[1].split("/")[0]
    for sub in sql(dst, "SELECT subname FROM pg_subscription").splitlines():
        # The target is fenced (read-only, no DDL) until cutover: a superuser's transaction in
        # replica mode passes both.
        sql(dst, f"BEGIN READ WRITE; SET LOCAL session_replication_role = replica; "
                 f"ALTER SUBSCRIPTION \"{sub}\" CONNECTION 'host=127.0.0.1 "
                 f"port={port} user=postgres password={password} dbname=postgres'; COMMIT")
    sql(standby, "INSERT INTO t VALUES (1002, 'after the failover')")
    wait_for(lambda: sql(dst, "SELECT count(*) FROM t") == "1002", timeout=60,
             what="a change on the promoted standby reaching the target")
    assert sql(dst, "SELECT count(DISTINCT id) FROM t") == "1002"


def test_a_15_source_with_a_standby_is_warned_that_a_failover_restarts_the_migration(lab):
    src = lab.start("fo15-src", 15)
    dst = lab.start("fo15-dst", 17)
    start_standby(lab, "fo15-src", src, "fo15-sb", 15)
    [f] = failover_finding(lab, src, dst)
    assert f["severity"] == "warning" and "before PostgreSQL 17" in f["message"], f
