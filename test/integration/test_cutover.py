"""The cutover as a table of steps, under faults (docs/engine.md, "The cutover table").

Real servers, real PgBouncer, the load client writing through it the whole time and every
acknowledged write checked at the end; a probe tries a write every 5 ms on both servers through
every path (direct and through PgBouncer; plain, SET default_transaction_read_only = off,
BEGIN READ WRITE, SET TRANSACTION READ WRITE; as superuser and as the application role) and its
successes on the two servers must never interleave in time: at no instant both take a write.

- kill -9 before and after every step of the cutover and of the rollback (and inside the
  recovery's undo), each time running the same command again;
- PgBouncer's RELOAD failing after the ini was rewritten; PgBouncer killed during the pause,
  before and after the switch; the target stopped during the pause;
- the fence against every path; the state folder's lock; SIGTERM during the pause and SIGINT
  while the manual router waits.
"""
import json
import os
import pwd
import re
import signal
import subprocess
import time

import pytest

from conftest import BIN, parse_kv, psql_bin, sql, wait_for
from test_upgrade import finish_load

RATE = 200
MODES = ["plain", "readonly-off", "begin-rw", "set-tx-rw"]
# Rows of the cutover table (src/engine/cutover.h); the drain runs after the outcome is saved.
ROWS = ["prepare", "pause", "fence", "catch-up", "consistent-point", "sequences", "replication",
        "switch", "open", "resume", "reverse-subscription"]
WITH_UNDO = {"prepare", "pause", "fence", "consistent-point", "replication", "switch"}

PROBE_SCHEMA = """
CREATE SCHEMA pgshift_probe;
CREATE TABLE pgshift_probe.writes (
  id bigserial PRIMARY KEY, path text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE pgshift_probe.events (id bigint NOT NULL, day date NOT NULL, note text,
  PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE pgshift_probe.events_a PARTITION OF pgshift_probe.events
  FOR VALUES FROM ('2000-01-01') TO ('2050-01-01');
CREATE TABLE pgshift_probe.events_b PARTITION OF pgshift_probe.events
  FOR VALUES FROM ('2050-01-01') TO ('2100-01-01');
INSERT INTO pgshift_probe.events SELECT g, DATE '2020-01-01' + g, 'e' FROM generate_series(1, 100) g;
CREATE ROLE app LOGIN PASSWORD 'app';
GRANT USAGE ON SCHEMA pgshift_probe TO app;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA pgshift_probe TO app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgshift_probe TO app;
-- The application owns a table: as its owner it could drop or disable triggers on it.
ALTER TABLE pgshift_probe.events OWNER TO app;
ALTER TABLE pgshift_probe.events_a OWNER TO app;
"""


def as_app(dsn):
    """The lab DSN `dsn` for the application role."""
    rest = dsn.split("//", 1)[1].split("@", 1)[1]
    return "postgresql://app:app@" + rest.split("?", 1)[0]


class Pair:
    """A source and a target server, PgBouncer in front of the source, the probe schema, and a
    migration brought to ReadyForCutover (its state folder in `state`)."""

    def __init__(self, lab, name, src_version, dst_version):
        self.lab, self.name = lab, name
        self.src = lab.start(f"{name}-src", src_version)
        self.dst = lab.start(f"{name}-dst", dst_version)
        self.app = lab.router(f"{name}-pb", f"{name}-src", "pgbouncer")
        info = lab.list()
        self.router = info[f"{name}-pb"]
        self.ports = {str(info[f"{name}-src"]["port"]): "source", str(info[f"{name}-dst"]["port"]): "target"}
        sql(self.src, PROBE_SCHEMA)
        # PgBouncer lets the application role in too (plain password in its auth_file).
        userlist = os.path.join(os.path.dirname(self.router["config_file"]), "userlist.txt")
        with open(userlist, "a") as f:
            f.write('"app" "app"\n')
        sql(self.router["admin_dsn"], "RELOAD")
        self.state = lab.dir / f"{name}-state"
        self.ledger = lab.dir / f"{name}.ledger"
        self.probe_out = lab.dir / f"{name}.probe.csv"
        self.load = lab.popen("load", "run", "--dsn", self.app, "--rate", str(RATE),
                              "--duration", "900", "--ledger", str(self.ledger))
        time.sleep(1)
        up = lab.run(*self.upgrade_args("--cutover", "manual"), timeout=300)
        assert "phase ReadyForCutover" in up.stdout, up.stderr
        # What the role copy did is said in figures: the app role made, postgres already there.
        assert re.search(r"roles copied created=[1-9]\d* already_on_target=[1-9]\d* statements=\d+ not_carried=0",
                         up.stderr), up.stderr
        self.probe = None

    def upgrade_args(self, *extra):
        return ["upgrade", "--source", self.src, "--target", self.dst, "--state", str(self.state),
                "--router", "pgbouncer", "--router-admin", self.router["admin_dsn"],
                "--router-config", self.router["config_file"], *extra]

    def start_probe(self):
        paths = []
        for side, dsn in (("src", self.src), ("dst", self.dst)):
            for role, d in (("super", dsn), ("app", as_app(dsn))):
                paths += [f"{side}-{role}-{m}={m}={d}" for m in MODES]
        for role, d in (("super", self.app), ("app", as_app(self.app))):
            paths += [f"router-{role}-{m}={m}={d}" for m in ("plain", "begin-rw")]
        args = ["load", "probe", "--interval-ms", "5", "--duration", "900", "--out", str(self.probe_out)]
        for p in paths:
            args += ["--path", p]
        self.probe = self.lab.popen(*args)

    def stop_probe(self):
        self.probe.send_signal(signal.SIGTERM)
        self.probe.wait(timeout=30)

    def probe_successes(self):
        rows = []
        for line in self.probe_out.read_text().splitlines():
            ms, port, path = line.split(",", 2)
            rows.append((int(ms), self.ports[port], path))
        return sorted(rows)

    def check_never_both(self, transitions):
        """The probe's successes, in server time, change sides exactly once per completed
        cutover or rollback: never both servers taking writes at once."""
        rows = self.probe_successes()
        changes = [(a, b) for a, b in zip(rows, rows[1:]) if a[1] != b[1]]
        assert len(changes) == transitions, f"writes on both sides interleave: {changes[:6]}"
        # Every direct path wrote on the open side: the probe can succeed, so its silence on the
        # fenced side means something.
        paths = {p for _, _, p in rows}
        for side in ("src", "dst") if transitions else ("src",):
            for role in ("super", "app"):
                for m in MODES:
                    assert f"{side}-{role}-{m}" in paths, f"{side}-{role}-{m} never wrote"
        gaps = [b[0] - a[0] for a, b in changes]
        print(f"{self.name}: {len(rows)} probe writes; no-write gaps at the switches: {gaps} ms")
        return gaps

    def paused(self):
        """PgBouncer holds clients: a query through it does not come back (1.18 has no SHOW STATE).
        Not coming back means 30 s: with the probe and the load on 2 cores a connection and a
        SELECT 1 through PgBouncer took up to 3 s here."""
        try:
            subprocess.run([psql_bin(), "-X", "-At", "-d", self.app, "-c", "SELECT 1"],
                           capture_output=True, timeout=30, check=True)
            return False
        except subprocess.TimeoutExpired:
            return True

    def leads_to(self):
        return sql(self.app, "SELECT current_setting('port')")

    def finish_and_verify(self, on):
        self.load.send_signal(signal.SIGTERM)
        s = finish_load(self.load)
        v = parse_kv(self.lab.run("load", "verify", "--dsn", on, "--ledger", str(self.ledger)).stdout)
        assert v["missing"] == "0" and v["mismatched"] == "0", v
        assert v["acknowledged"] == s["acknowledged"]
        return s


def run_chain(lab, args, direction, points):
    """Runs `pgshift <args>` killed at each point in turn (each run first recovers what the kill
    before it left), then once more to the end; returns the last run."""
    for point in points:
        env = dict(lab.env, PGSHIFT_FAULT_KILL_AT=f"{direction}:{point}")
        p = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == -signal.SIGKILL, f"{direction}:{point} not reached ({p.returncode}):\n{p.stderr}"
    return lab.run(*args, timeout=180)


def chain_points():
    points = []
    for row in ROWS:
        points += [f"before-{row}", f"after-{row}"]
        # Killed after a row that has an undo, the next run rolls back from it: kill that run in
        # the undo too (the switch's undo is reached only from a crash at the switch).
        if row in WITH_UNDO and row != "switch":
            points.append(f"undo-{row}")
        if row == "switch":
            points.insert(len(points) - 1, "undo-switch")
    return points + ["before-drain"]


@pytest.mark.parametrize("src_version,dst_version", [(15, 18), (18, 14)])
def test_kill_9_at_every_step_of_cutover_and_rollback(lab, src_version, dst_version):
    t0 = time.time()
    pair = Pair(lab, f"k{src_version}-{dst_version}", src_version, dst_version)
    pair.start_probe()
    time.sleep(0.5)
    points = chain_points()
    last = run_chain(lab, ["cutover", "--state", str(pair.state)], "forward", points)
    assert "phase RollbackReady" in last.stdout, last.stderr
    assert not pair.paused()
    assert pair.leads_to() == [p for p, s in pair.ports.items() if s == "target"][0]
    st = json.loads(lab.run("status", "--state", str(pair.state), "--json").stdout)
    assert st["cutover_in_flight"] == ""
    # Every attempt before the switch was undone; the one killed after it was finished.
    assert st["cutovers"][-1]["succeeded"] and st["cutovers"][-1]["recovered"]
    assert sum(1 for c in st["cutovers"] if not c["succeeded"]) >= 10
    time.sleep(0.5)

    last = run_chain(lab, ["rollback", "--state", str(pair.state)], "rollback", points)
    assert "phase RolledBack" in last.stdout, last.stderr
    assert not pair.paused()
    assert pair.leads_to() == [p for p, s in pair.ports.items() if s == "source"][0]
    time.sleep(0.5)
    pair.stop_probe()
    pair.check_never_both(transitions=2)
    s = pair.finish_and_verify(pair.src)
    print(f"{pair.name}: {2 * len(points) + 2} runs, load {s}, {time.time() - t0:.0f} s")
    lab.run("finish", "--state", str(pair.state))


def pgbouncer_pid(router):
    return int(open(os.path.join(os.path.dirname(router["config_file"]), "pgbouncer.pid")).read())


def restart_pgbouncer(router):
    """Starts the killed PgBouncer again with its ini as it is now (a supervisor would)."""
    ini = router["config_file"]
    user = pwd.getpwuid(os.stat(ini).st_uid).pw_name
    pidfile = os.path.join(os.path.dirname(ini), "pgbouncer.pid")
    if os.path.exists(pidfile):
        os.unlink(pidfile)  # left by the kill
    p = subprocess.run(["runuser", "-u", user, "--", "pgbouncer", "-d", ini], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    wait_for(lambda: subprocess.run([psql_bin(), "-X", "-At", "-d", router["admin_dsn"], "-c", "SHOW VERSION"],
                                    capture_output=True).returncode == 0, what="PgBouncer")


def held(lab, args, point, env_extra=None):
    """Starts `pgshift <args>` held at fault point `point`; returns (process, hold file)."""
    hold = lab.dir / f"hold-{time.time_ns()}"
    env = dict(lab.env, PGSHIFT_FAULT_HOLD_AT=point, PGSHIFT_FAULT_HOLD_FILE=str(hold), **(env_extra or {}))
    p = subprocess.Popen([BIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: hold.exists() or p.poll() is not None, timeout=120, what=f"hold at {point}")
    assert hold.exists(), p.communicate()[1]
    return p, hold


def ini_target(router):
    return [l for l in open(router["config_file"]).read().splitlines() if l.startswith("* =")][0]


def test_router_and_server_faults_end_whole_and_say_which(lab):
    """Each fault ends with clients fully on one side, never in between, and the output says which."""
    t0 = time.time()
    pair = Pair(lab, "rf", 14, 16)
    print(f"rf: ready for cutover after {time.time() - t0:.0f} s")
    src_port = [p for p, s in pair.ports.items() if s == "source"][0]
    dst_port = [p for p, s in pair.ports.items() if s == "target"][0]
    pair.start_probe()
    cutover = ["cutover", "--state", str(pair.state)]

    # 1. The target stops inside the pause: undone; every later attempt fails at prepare.
    p, hold = held(lab, cutover, "forward:after-fence")
    lab.run("lab", "stop", "rf-dst")
    hold.unlink()
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "cutover undone: clients are back on the source" in err, err
    assert not pair.paused() and pair.leads_to() == src_port and f"port={src_port}" in ini_target(pair.router)
    sql(as_app(pair.src), "INSERT INTO pgshift_probe.writes (path) VALUES ('check')")  # open again
    lab.start("rf-dst", 16)

    print(f"rf: 2. at {time.time() - t0:.0f} s")
    # 2. PgBouncer killed inside the pause, before the switch: undone (its ini never changed).
    p, hold = held(lab, cutover, "forward:after-fence")
    os.kill(pgbouncer_pid(pair.router), signal.SIGKILL)
    hold.unlink()
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "clients are back on the source" in err, err
    assert f"port={src_port}" in ini_target(pair.router)
    assert sql(pair.dst, "SELECT bool_and(subenabled) FROM pg_subscription") == "t"
    restart_pgbouncer(pair.router)
    assert pair.leads_to() == src_port

    print(f"rf: 3. at {time.time() - t0:.0f} s")
    # 3. SIGTERM inside the pause: the attempt runs to its end (never clients held, never a
    # fence half set), then the command stops.
    p, hold = held(lab, cutover, "forward:after-catch-up")
    p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    hold.unlink()
    out, err = p.communicate(timeout=120)
    assert "terminated: stopping at the next safe point" in err, err
    assert p.returncode == 0 and "phase RollbackReady" in out, err
    # The comparison after the switch is what the stop gives up, and the command says so.
    assert "stopped on request before the exact comparison at the switch point finished" in err, err
    assert pair.leads_to() == dst_port and not pair.paused()

    print(f"rf: 4. at {time.time() - t0:.0f} s")
    # 4. RELOAD fails after the ini was rewritten (rollback): PgBouncer still leads to the
    # target, so the attempt is undone, the ini put back too; the next attempt goes through.
    p, hold = held(lab, ["rollback", "--state", str(pair.state)], "rollback:undone",
                   {"PGSHIFT_FAULT_FAIL_AT": "pgbouncer-reload"})
    assert f"port={dst_port}" in ini_target(pair.router), "the undo must restore the ini"
    assert pair.leads_to() == dst_port and not pair.paused()
    assert sql(pair.src, "SELECT bool_and(subenabled) FROM pg_subscription") == "t"
    hold.unlink()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "phase RolledBack" in out, err
    assert "injected failure at pgbouncer-reload" in err and "rollback undone: clients are back on the target" in err
    assert pair.leads_to() == src_port and not pair.paused()

    pair.stop_probe()
    pair.check_never_both(transitions=2)
    s = pair.finish_and_verify(pair.src)
    print(f"rf: load {s}")
    lab.run("finish", "--state", str(pair.state))


FENCE_ATTEMPTS = [
    "INSERT INTO pgshift_probe.writes (path) VALUES ('x')",
    "INSERT INTO pgshift_probe.events VALUES (1000, DATE '2060-01-01', 'via the parent')",
    "UPDATE pgshift_probe.events SET note = 'u' WHERE id = 1",
    "DELETE FROM pgshift_probe.events_a WHERE id = 2",
    "TRUNCATE pgshift_probe.events",
    "INSERT INTO pgshift_probe.writes (path) VALUES ('x') ON CONFLICT DO NOTHING",
    "COPY pgshift_probe.writes (path) FROM PROGRAM 'echo x'",
    "ALTER TABLE pgshift_probe.events_a DISABLE TRIGGER ALL",
    "DROP TRIGGER IF EXISTS {trigger} ON pgshift_probe.events_a",
    "CREATE TABLE pgshift_probe.sneaky (id int)",
    "CREATE OR REPLACE FUNCTION _pgshift.fence_dml() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
]


def assert_fenced(dsn, trigger):
    for role_dsn in (dsn, as_app(dsn)):
        for attempt in FENCE_ATTEMPTS:
            if attempt.startswith("COPY") and role_dsn != dsn:
                continue  # COPY FROM PROGRAM is a superuser's
            for pre in ("", "SET default_transaction_read_only = off;", "BEGIN READ WRITE;",
                        "BEGIN; SET TRANSACTION READ WRITE;"):
                q = pre + attempt.format(trigger=trigger) + (";COMMIT" if pre.startswith("BEGIN") else "")
                p = subprocess.run([psql_bin(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", role_dsn, "-c", q],
                                   capture_output=True, text=True)
                assert p.returncode != 0, f"fenced, yet this went through: {q}"
                assert "read-only transaction" in p.stderr or "fenced by pgshift" in p.stderr \
                    or "permission denied" in p.stderr or "must be owner" in p.stderr, (q, p.stderr)


def test_the_fence_holds_against_every_path_and_role(lab):
    pair = Pair(lab, "fe", 13, 17)
    st = json.loads(lab.run("status", "--state", str(pair.state), "--json").stdout)
    trigger = f"pgshift_{st['id']}_fence"
    dst_port = [p for p, s in pair.ports.items() if s == "target"][0]
    # ReadyForCutover: the target takes no client write yet.
    assert_fenced(pair.dst, trigger)
    sql(as_app(pair.src), "SET default_transaction_read_only = off; INSERT INTO pgshift_probe.writes (path) VALUES ('open')")
    # PgBouncer killed inside the pause, after the switch: only forward. It ends switched, and
    # PgBouncer, started again, reads the ini that leads to the target.
    p, hold = held(lab, ["cutover", "--state", str(pair.state)], "forward:after-switch")
    os.kill(pgbouncer_pid(pair.router), signal.SIGKILL)
    hold.unlink()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "phase RollbackReady" in out, err
    assert "cutover done" in err
    restart_pgbouncer(pair.router)
    assert pair.leads_to() == dst_port and not pair.paused()
    assert_fenced(pair.src, trigger)
    # Replication still writes into the fenced source (reverse subscription), and pgshift's
    # own marker does too: a write on the target arrives.
    sql(pair.dst, "INSERT INTO pgshift_probe.writes (path) VALUES ('after cutover')")
    wait_for(lambda: sql(pair.src, "SELECT count(*) FROM pgshift_probe.writes WHERE path = 'after cutover'") == "1",
             what="reverse replication into the fenced source")
    # What a superuser can still do on purpose (docs/engine.md): replica mode passes the triggers.
    out = sql(pair.src, "BEGIN READ WRITE; SET LOCAL session_replication_role = replica; "
                        "INSERT INTO pgshift_probe.writes (id, path) VALUES (-1, 'superuser, on purpose') RETURNING 1; ROLLBACK")
    assert "1" in out.splitlines()
    rb = lab.run("rollback", "--state", str(pair.state))
    assert "phase RolledBack" in rb.stdout
    # Run again, its goal already holds: it says so and succeeds (automation reruns commands).
    again = lab.run("rollback", "--state", str(pair.state))
    assert "is rolled back" in again.stderr + again.stdout and "phase RolledBack" in again.stdout
    assert_fenced(pair.dst, trigger)
    sql(as_app(pair.src), "INSERT INTO pgshift_probe.writes (path) VALUES ('open again')")
    pair.finish_and_verify(pair.src)
    lab.run("finish", "--state", str(pair.state))
    again = lab.run("finish", "--state", str(pair.state))
    assert "already finished" in again.stderr + again.stdout and "phase Completed" in again.stdout
    # Finish drops the triggers; the target keeps only its read-only default, on purpose.
    assert sql(pair.dst, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'") == "0"
    assert sql(pair.src, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'") == "0"


def test_lock_signals_and_the_manual_router(lab):
    src = lab.start("ls-src", 16)
    dst = lab.start("ls-dst", 17)
    sql(src, PROBE_SCHEMA)
    state = lab.dir / "ls-state"
    args = ["upgrade", "--source", src, "--target", dst, "--state", str(state), "--router", "manual"]
    # A second command on the same folder names the holder; a dead holder's lock is taken over.
    p, hold = held(lab, args, "Roles")
    second = lab.run("abort", "--state", str(state), check=False)
    assert second.returncode == 3, second.stderr
    assert f"is in use by pid {p.pid} (pgshift upgrade, since " in second.stderr, second.stderr
    p.kill()
    p.wait()
    hold.unlink()
    # SIGINT while the manual router waits for the application: stops, nothing half done.
    up = lab.popen(*args)
    waiting = state / "cutover.waiting"
    wait_for(lambda: waiting.exists() or up.poll() is not None, timeout=180, what="cutover.waiting")
    up.send_signal(signal.SIGINT)
    out, err = up.communicate(timeout=60)
    assert up.returncode != 0 and "stopped on request at a safe point" in err, err
    assert f"took over the lock of pid {p.pid}" in err
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    assert st["cutover_in_flight"] == "forward" and st["cutover_step"]["name"] == "switch"
    assert "in flight: forward interrupted at step switch" in lab.run("status", "--state", str(state)).stdout
    # The source is fenced, the target too (the application is asked to move, not yet told it
    # may write): nothing was undone behind its back.
    assert sql(src, "SHOW default_transaction_read_only") == "on"
    # Run again: it goes on waiting (the application may already have moved: only forward).
    up = lab.popen("cutover", "--state", str(state))
    lab.run("cutover", "--state", str(state), "--confirm")
    out, err = up.communicate(timeout=120)
    assert up.returncode == 0 and "phase RollbackReady" in out, err
    assert "resuming after a crash inside the cutover" in err
    sql(as_app(dst), "INSERT INTO pgshift_probe.writes (path) VALUES ('the application moved')")
    lab.run("finish", "--state", str(state))
