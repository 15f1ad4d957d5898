"""Shared fixtures for integration tests: a pgshift lab of real servers and routers.

Tests run the pgshift binary named by $PGSHIFT_BIN (default build/pgshift) against real
PostgreSQL servers, PgBouncer and nginx. Every test module gets its own lab folder under
.cache/test/ (readable by the unprivileged server user, unlike pytest's 0700 tmp folders).
"""
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("PGSHIFT_BIN", str(ROOT / "build" / "pgshift"))
CACHE = Path(os.environ.get("PGSHIFT_CACHE", ROOT / ".cache"))


def psql_bin():
    ours = CACHE / "pgclient" / "bin" / "psql"
    return str(ours) if ours.exists() else "psql"


class Lab:
    def __init__(self, path: Path):
        self.dir = path
        self.env = dict(os.environ, PGSHIFT_LAB_DIR=str(path))
        # ASan reports leaks at exit; a leak must fail the command, not just print.
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        # Run at teardown before `lab down`: servers a test started outside the lab (a standby).
        self.cleanup = []

    def run(self, *args, check=True, timeout=300, input=None):
        p = subprocess.run([BIN, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"pgshift {' '.join(args)} failed ({p.returncode}):\n"
                                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def popen(self, *args):
        return subprocess.Popen([BIN, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def start(self, name, version, *extra):
        out = self.run("lab", "start", name, "--version", str(version), *extra).stdout
        return out.strip().splitlines()[-1]

    def router(self, name, backend, kind="pgbouncer", *extra):
        out = self.run("lab", "router", name, "--backend", backend, "--kind", kind, *extra).stdout
        return out.strip().splitlines()[-1]

    def list(self):
        return {i["name"]: i for i in json.loads(self.run("lab", "list", "--json").stdout)}

    def dsn(self, name, db="postgres"):
        return on_db(self.list()[name]["dsn"], db)


def sql(dsn, query, check=True):
    """Runs SQL with psql and returns the unaligned output."""
    p = subprocess.run([psql_bin(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", query],
                       capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"psql failed: {p.stderr}")
    return p.stdout.strip()


def on_db(dsn, db):
    """The lab DSN `dsn` for database `db` (percent-encoded: psql 18 refuses spaces in URIs)."""
    return dsn.replace("/postgres?", f"/{urllib.parse.quote(db, safe='')}?")


def pgshift_objects(dsn, fence=False):
    """Every pgshift object on the server of `dsn`, in every database (and, with `fence`, any
    per-database setting such as the cutover's read-only fence)."""
    cluster = ("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgshift%' "
               "UNION ALL SELECT subname FROM pg_subscription WHERE subname LIKE 'pgshift%' "
               "UNION ALL SELECT 'database ' || datname FROM pg_database "
               "WHERE datname LIKE 'pgshift%'")
    if fence:
        cluster += (" UNION ALL SELECT 'setting ' || array_to_string(setconfig, ',') "
                    "FROM pg_db_role_setting WHERE setdatabase <> 0")
    names = sql(dsn, cluster).splitlines()
    for db in sql(dsn, "SELECT datname FROM pg_database WHERE datallowconn").splitlines():
        names += [f"{db}: {n}" for n in sql(
            on_db(dsn, db),
            "SELECT pubname FROM pg_publication WHERE pubname LIKE 'pgshift%' "
            "UNION ALL SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'pgshift%' "
            "UNION ALL SELECT nspname FROM pg_namespace WHERE nspname = '_pgshift'"
        ).splitlines()]
    return names


def parse_kv(line):
    return {k: v for k, v in (part.split("=", 1) for part in line.split() if "=" in part)}


@pytest.fixture(scope="module")
def lab(request):
    path = CACHE / "test" / f"{request.module.__name__.split('.')[-1]}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    os.chmod(path, 0o755)
    lab = Lab(path)
    yield lab
    for fn in lab.cleanup:
        fn()
    lab.run("lab", "down", check=False)
    shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate, timeout=30, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
