"""Large objects are carried: copied before the cutover is ready, those written since copied
again before each attempt, and the last ones inside the cutover's pause; a rollback carries the
ones written on the target back.

Two thousand objects (1-16 kB, some owned by the application's role with a grant) on the
source; a writer rewrites, extends, truncates, creates and unlinks them through PgBouncer the
whole time (each acknowledged operation recorded with the object's md5 read in the same
transaction), next to the load client. After the cutover the target holds exactly the objects
the writer's acknowledgements say, owners and ACLs included; after the rollback, the source
does."""
import json
import random
import subprocess
import threading
import time

import pytest

from conftest import psql_bin, sql
from test_upgrade import RATE, shop_behind_pgbouncer, stop_load_and_verify

OBJECTS = 2000


def objects(dsn):
    """oid -> md5 of its contents, owner and ACL, for every large object of `dsn`."""
    out = {}
    rows = sql(dsn, "SELECT oid, md5(lo_get(oid)), pg_get_userbyid(lomowner), "
                    "coalesce(lomacl::text, '') FROM pg_largeobject_metadata")
    for line in rows.splitlines():
        oid, digest, owner, acl = line.split("|")
        out[int(oid)] = (digest, owner, acl)
    return out


class Writer:
    """Writes large objects through `dsn` (PgBouncer) until stopped, one psql per operation, each
    in one transaction that returns the object's md5 after the write. `known` (oid -> md5 or
    None when unlinked) is what the acknowledged operations left."""

    def __init__(self, dsn, known, seed):
        self.dsn, self.known, self.rng = dsn, known, random.Random(seed)
        self.ops = self.errors = 0
        self.log = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def run(self):
        while not self.stop.is_set():
            live = [o for o, d in self.known.items() if d is not None]
            pick = self.rng.choice(live)
            kind = self.rng.choice(["put", "put", "put", "extend", "truncate", "create", "unlink"])
            data = f"decode(repeat(md5('{self.rng.random()}'), {self.rng.randint(1, 200)}), 'hex')"
            if kind == "put":
                q = (f"SELECT lo_put({pick}, {self.rng.randint(0, 8000)}, {data}); "
                     f"SELECT {pick}, md5(lo_get({pick}))")
            elif kind == "extend":  # past the end, leaving a hole of pages
                q = (f"SELECT lo_put({pick}, {self.rng.randint(40000, 90000)}, {data}); "
                     f"SELECT {pick}, md5(lo_get({pick}))")
            elif kind == "truncate":  # to a page boundary at times: pages deleted, none written
                n = self.rng.choice([0, 2048, 4096, self.rng.randint(1, 6000)])
                q = (f"SELECT lo_truncate(lo_open({pick}, 131072), {n}); "
                     f"SELECT {pick}, md5(lo_get({pick}))")
            elif kind == "create":
                # An OID of its own: lo_get in the statement that made the object would not see it.
                new = self.rng.randint(10**8, 4 * 10**9)
                while new in self.known:
                    new = self.rng.randint(10**8, 4 * 10**9)
                q = f"SELECT lo_from_bytea({new}, {data}); SELECT {new}, md5(lo_get({new}))"
            else:
                q = f"SELECT lo_unlink({pick}); SELECT {pick}, NULL"
            p = subprocess.run([psql_bin(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.dsn,
                                "-c", q], capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                self.errors += 1
                print(time.strftime("%H:%M:%S"), "large object writer:", kind, pick, p.stderr.strip())
                continue
            oid, digest = p.stdout.strip().splitlines()[-1].split("|")
            self.known[int(oid)] = digest or None
            self.log.append((time.strftime("%H:%M:%S"), kind, int(oid), digest))
            self.ops += 1

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=120)
        return self.ops


def expected(initial, known):
    out = {o: v[0] for o, v in initial.items()}
    for o, digest in known.items():
        if digest is None:
            out.pop(o, None)
        else:
            out[o] = digest
    return out


def contents(found):
    return {o: v[0] for o, v in found.items()}


@pytest.mark.parametrize("src_version,dst_version", [(13, 18), (18, 13)])
def test_large_objects_written_under_load_are_carried_both_ways(lab, src_version, dst_version):
    name = f"lo{src_version}-{dst_version}"
    src, dst, app, router, state, ledger = shop_behind_pgbouncer(lab, name, src_version, dst_version)
    sql(src, "CREATE ROLE lo_reader; CREATE ROLE lo_owner; "
             "CREATE TABLE shop.documents (id serial PRIMARY KEY, body oid NOT NULL); "
             "INSERT INTO shop.documents (body) SELECT lo_from_bytea(0, "
             f"decode(repeat(md5(g::text), 32 + g % 480), 'hex')) FROM generate_series(1, {OBJECTS}) g")
    # Some belong to the application's role, with a grant to another.
    sql(src, "DO $$DECLARE o oid; BEGIN FOR o IN SELECT body FROM shop.documents WHERE id % 100 = 0 "
             "LOOP EXECUTE format('ALTER LARGE OBJECT %s OWNER TO lo_owner', o); "
             "EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO lo_reader', o); END LOOP; END$$")
    initial = objects(src)
    assert len(initial) == OBJECTS
    known = {}
    for o, v in initial.items():
        known[o] = v[0]

    check = lab.run("check", "--source", src, "--target", dst, "--json", check=False)
    found = [r for r in json.loads(check.stdout)["results"] if r["id"] == "large-objects"]
    assert found and found[0]["severity"] == "info", found
    assert f"{OBJECTS} large objects" in found[0]["message"]

    load = lab.popen("load", "run", "--dsn", app, "--rate", str(RATE), "--duration", "600",
                     "--ledger", str(ledger))
    writer = Writer(app, known, seed=src_version).start()
    time.sleep(2)
    up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                 "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                 "--router-config", router["config_file"], timeout=300)
    assert "phase RollbackReady" in up.stdout, up.stderr
    time.sleep(2)  # the writer goes on, on the target
    ops = writer.finish()
    stop_load_and_verify(lab, load, dst, ledger)
    assert writer.errors == 0
    assert ops > 50, ops
    want = expected(initial, known)
    on_target = objects(dst)
    if contents(on_target) != want:
        on_source = contents(objects(src))
        bad = [o for o in set(want) | set(on_target) if want.get(o) != on_target.get(o, (None,))[0]]
        for o in bad[:5]:
            print("differs:", o, "want", want.get(o), "target", on_target.get(o), "source",
                  on_source.get(o), [e for e in writer.log if e[2] == o])
        print(up.stderr[-3000:])
    assert contents(on_target) == want
    # Owners and grants came with them.
    for o, (_, owner, acl) in initial.items():
        if o in on_target and known.get(o) == initial[o][0]:
            assert on_target[o][1:] == (owner, acl), (o, on_target[o], owner, acl)
    assert sum(1 for v in on_target.values() if v[1] == "lo_owner") >= 1
    status = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    cut = status["cutovers"][-1]
    in_pause = [n for n in cut.get("notes", []) if "large object" in n]
    print(f"{name}: {ops} large object operations during the run; cutover pause "
          f"{cut['pause_ms']:.1f} ms; {in_pause or 'none left for the pause'}; "
          f"passes: {[l for l in up.stderr.splitlines() if 'large objects' in l]}")

    # Back: what was written on the target comes to the source.
    writer = Writer(app, known, seed=dst_version).start()
    time.sleep(3)
    rb = lab.run("rollback", "--state", str(state))
    assert "phase RolledBack" in rb.stdout, rb.stderr
    time.sleep(1)
    ops = writer.finish()
    assert writer.errors == 0
    assert contents(objects(src)) == expected(initial, known)
    print(f"{name}: rollback with {ops} more operations; "
          f"passes: {[l for l in rb.stderr.splitlines() if 'large objects' in l]}")
