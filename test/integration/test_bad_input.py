"""Bad input to `pgshift upgrade` and `pgshift check`: every case ends with a clear message, a
non-zero exit code (2 bad input, 3 failed precondition, 5 unavailable), and nothing made on the
source: no pgshift_* publication, subscription, slot or event trigger, no _pgshift schema, no
fence (per-database settings).
"""
import json
import re
import socket
import subprocess

import pytest

from conftest import BIN, on_db, pgshift_objects, sql


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_password(dsn, password):
    """The lab DSN with an inline password instead of the lab's passfile."""
    return re.sub(r"\?passfile=[^&]*", f"?password={password}", dsn)


@pytest.fixture(scope="module")
def env(lab):
    """A 15 source (with a table) behind PgBouncer, and an empty 17 target."""
    src = lab.start("bi-src", 15)
    dst = lab.start("bi-dst", 17)
    sql(src, "CREATE TABLE orders (id bigserial PRIMARY KEY, note text); "
             "INSERT INTO orders (note) SELECT 'n' FROM generate_series(1, 50)")
    lab.router("bi-pb", "bi-src", "pgbouncer")
    router = lab.list()["bi-pb"]
    return {"src": src, "dst": dst, "router": router}


def upgrade(lab, source, target, state, router, *extra, env=None):
    args = ["upgrade", "--source", source, "--target", target, "--state", str(state),
            "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
            "--router-config", router["config_file"], *extra]
    if env is None:
        return lab.run(*args, check=False)
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)


def check(lab, source, target, *extra, env=None):
    args = ["check", "--source", source, "--target", target, *extra]
    if env is None:
        return lab.run(*args, check=False)
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)


def assert_untouched(*dsns):
    for dsn in dsns:
        assert pgshift_objects(dsn, fence=True) == [], dsn


def test_wrong_password(lab, env):
    bad = with_password(env["src"], "wrong")
    assert "passfile" not in bad and "password=wrong" in bad
    port = re.search(r":(\d+)/", bad).group(1)
    for p in (check(lab, bad, env["dst"]),
              upgrade(lab, bad, env["dst"], lab.dir / "pw-state", env["router"])):
        assert p.returncode == 2, p.stdout + p.stderr
        assert f"cannot connect to the source server (127.0.0.1:{port}/postgres)" in p.stderr
        assert "password authentication failed" in p.stderr
        assert "wrong" not in p.stdout + p.stderr  # the password is not echoed
    # The same for the target side.
    p = check(lab, env["src"], with_password(env["dst"], "wrong"))
    assert p.returncode == 2 and "cannot connect to the target server" in p.stderr, p.stderr
    assert_untouched(env["src"], env["dst"])


def test_unreachable_host(lab, env):
    port = closed_port()
    dead = re.sub(r":\d+/", f":{port}/", env["src"])
    for p in (check(lab, dead, env["dst"]),
              upgrade(lab, dead, env["dst"], lab.dir / "dead-state", env["router"])):
        assert p.returncode == 5, p.stdout + p.stderr
        assert f"cannot connect to the source server (127.0.0.1:{port}/postgres)" in p.stderr
        assert "refused" in p.stderr.lower(), p.stderr
    p = upgrade(lab, env["src"], re.sub(r":\d+/", f":{port}/", env["dst"]),
                lab.dir / "dead-target-state", env["router"])
    assert p.returncode == 5, p.stdout + p.stderr
    assert f"cannot connect to the target server (127.0.0.1:{port}/postgres)" in p.stderr
    assert_untouched(env["src"], env["dst"])


def test_wal_level_replica(lab, env):
    src = lab.start("bi-replica", 15, "--set", "wal_level = replica")
    assert sql(src, "SHOW wal_level") == "replica"
    fix = "on the source server: ALTER SYSTEM SET wal_level = logical; then restart it"
    p = check(lab, src, env["dst"])
    assert p.returncode == 3, p.stdout + p.stderr
    assert re.search(r"ERROR\s+wal-level\s+source\s+wal_level = replica on the source; "
                     r"logical replication needs wal_level = logical", p.stdout), p.stdout
    assert fix in p.stdout
    p = upgrade(lab, src, env["dst"], lab.dir / "walrep-state", env["router"])
    assert p.returncode == 3, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert "wal_level = replica on the source" in out and fix in out, out
    assert "preflight failed; nothing was changed on either server" in p.stderr
    assert_untouched(src, env["dst"])


def test_target_not_empty(lab, env):
    dst = lab.start("bi-full", 17)
    sql(dst, "CREATE TABLE public.leftover (id int); INSERT INTO public.leftover VALUES (1)")
    p = upgrade(lab, env["src"], dst, lab.dir / "full-state", env["router"])
    assert p.returncode == 3, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert "exists on the target and holds 1 user table: public.leftover" in out, out
    assert "DROP DATABASE \"postgres\"" in out, out
    assert "preflight failed; nothing was changed on either server" in p.stderr
    assert_untouched(env["src"], dst)
    assert sql(dst, "SELECT count(*) FROM public.leftover") == "1"
    assert sql(dst, "SELECT count(*) FROM pg_class WHERE relname = 'orders'") == "0"


def test_client_tools_older_than_source(lab, env):
    """Every client tool pgshift runs comes from one folder, and each is checked against the
    source's major: an old folder is refused by name, tool by tool, with the fix."""
    old = "/usr/lib/postgresql/15/bin"
    version = subprocess.run([old + "/pg_dump", "--version"], capture_output=True, text=True).stdout
    assert " 15." in version, version
    src = lab.start("bi-src17", 17)
    dst = lab.start("bi-dst18", 18)
    run_env = dict(lab.env, PGSHIFT_PG_BIN=old)
    p = check(lab, src, dst, env=run_env)
    assert p.returncode == 3, p.stdout + p.stderr
    for tool in ("pg_dump", "pg_dumpall", "pg_restore", "psql"):
        assert re.search(r"ERROR\s+client-tools\s+" + tool + r"\s+" + re.escape(f"{old}/{tool}") +
                         r" is " + tool + r" \(PostgreSQL\) 15\.\S+.*: it cannot work with a "
                         r"PostgreSQL 17 server", p.stdout), p.stdout
    assert (f"--pg-bin DIR or PGSHIFT_PG_BIN=DIR (now: {old})") in p.stdout
    p = upgrade(lab, src, dst, lab.dir / "olddump-state", env["router"], env=run_env)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "it cannot work with a PostgreSQL 17 server" in p.stdout + p.stderr
    # --pg-bin wins over the environment; a folder that is not there at all.
    p = check(lab, src, dst, "--pg-bin", "/nonexistent", env=run_env)
    assert p.returncode == 3, p.stdout + p.stderr
    assert re.search(r"ERROR\s+client-tools\s+pg_dump\s+cannot run /nonexistent/pg_dump",
                     p.stdout), p.stdout
    # The setup's folder (PostgreSQL 18) passes for a 17 source.
    p = check(lab, src, dst)
    assert not re.search(r"ERROR\s+client-tools", p.stdout), p.stdout
    assert re.search(r"OK\s+client-tools\s+psql\s+\S+ is psql \(PostgreSQL\) 18\.", p.stdout), p.stdout
    assert_untouched(src, dst)


@pytest.mark.parametrize("extra,message", [
    (["--max-pause", "-5"], "--max-pause: Value -5 not in range 10 to 600000"),
    (["--max-pause", "5"], "--max-pause: Value 5 not in range"),
    (["--max-lag", "-1"], "--max-lag: Value -1 not in range 0"),
    (["--cutover", "sometimes"], "--cutover: unknown cutover mode 'sometimes' (want auto, manual)"),
    (["--tables-without-pk", "maybe"],
     "--tables-without-pk: unknown tables-without-pk choice 'maybe' (want refuse, full)"),
    (["--router", "haproxy"], "--router: unknown router 'haproxy' (want pgbouncer, nginx or manual)"),
    (["--router", "kubernetes-service"], "--router: unknown router 'kubernetes-service'"),
])
def test_bad_option_values(lab, env, extra, message):
    state = lab.dir / "opts-state"
    p = upgrade(lab, env["src"], env["dst"], state, env["router"], *extra)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr, p.stderr
    assert not (state / "state.json").exists()
    assert_untouched(env["src"], env["dst"])


@pytest.mark.parametrize("args,message", [
    (["--router", "nginx"], "--router nginx needs --router-config FILE (nginx.conf)"),
    (["--router", "pgbouncer", "--router-config", "/tmp/x.ini"],
     "--router pgbouncer needs --router-admin DSN"),
])
def test_router_without_its_config(lab, env, args, message):
    state = lab.dir / "router-state"
    p = lab.run("upgrade", "--source", env["src"], "--target", env["dst"], "--state", str(state),
                *args, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr, p.stderr
    assert not (state / "state.json").exists()
    assert_untouched(env["src"], env["dst"])


def test_state_folder_of_another_migration(lab, env):
    # A real migration, stopped before cutover, between two other servers.
    other_src = lab.start("bi-other-src", 15)
    other_dst = lab.start("bi-other-dst", 17)
    sql(other_src, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    lab.router("bi-other-pb", "bi-other-src", "pgbouncer")
    other_router = lab.list()["bi-other-pb"]
    state = lab.dir / "other-state"
    p = upgrade(lab, other_src, other_dst, state, other_router, "--cutover", "manual")
    assert p.returncode == 0, p.stdout + p.stderr
    before = json.loads((state / "state.json").read_text())
    assert before["phase"] == "ReadyForCutover"

    for source, target in ((env["src"], env["dst"]), (env["src"], other_dst),
                           (other_src, env["dst"])):
        p = upgrade(lab, source, target, state, env["router"])
        assert p.returncode == 2, p.stdout + p.stderr
        assert (f"the state folder {state} holds migration {before['id']} between other servers"
                in p.stderr), p.stderr
        assert "use another --state folder" in p.stderr
    after = json.loads((state / "state.json").read_text())
    assert (after["id"], after["phase"], after["source_dsn"], after["target_dsn"]) == \
        (before["id"], before["phase"], before["source_dsn"], before["target_dsn"])
    assert_untouched(env["src"], env["dst"])

    # The other migration is intact and can be aborted cleanly.
    assert lab.run("status", "--state", str(state), "--json").returncode == 0
    assert "phase Aborted" in lab.run("abort", "--state", str(state)).stdout
    again = lab.run("abort", "--state", str(state))
    assert "already aborted" in again.stderr + again.stdout and "phase Aborted" in again.stdout
    assert_untouched(other_src)


# Preflight failing means nothing was made on either server, so `upgrade` forgets the attempt
# (deletes state.json): the user fixes the setup and runs the same command again.
@pytest.mark.parametrize("case", ["wal-level", "wrong-password"])
def test_failed_preflight_leaves_no_state(lab, env, case):
    state = lab.dir / f"forget-{case}"
    if case == "wal-level":
        src = lab.start("bi-forget", 15, "--set", "wal_level = replica")
        expected = 3
    else:
        src = with_password(env["src"], "wrong")
        expected = 2
    p = upgrade(lab, src, env["dst"], state, env["router"])
    assert p.returncode == expected, p.stdout + p.stderr
    assert not (state / "state.json").exists(), (state / "state.json").read_text()
