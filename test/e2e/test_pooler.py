"""spec.traffic.pooler end to end: the operator runs a PgBouncer Deployment (two replicas,
edoburu/pgbouncer, which the fake kubelet runs as Debian's PgBouncer) in front of the source; the
application writes through the pooler's Service at 500 writes/s for the whole run; the cutover
PAUSEs every replica, moves the backend Service, proves through each replica that a new server
connection reaches the target, and RESUMEs. Clients see no error, only a stall, and every
acknowledged write reaches the target; a rollback through the pooler brings every write back
to the source. Both directions (15 -> 17, 17 -> 15). Then the same with a PgBouncer the
application already runs (spec.traffic.pooler.existing): the operator adopts it, makes
nothing, and moves the Service its ini names (app-db) while clients are held.

The operator runs outside the cluster as in test_operator.py (the ServiceAccount's token,
--connect endpoints, Pod IPs through the harness's pods.json)."""
import json
import os
import select
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import PGSHIFT_BIN, wait_for
from test_fakelet_pgbouncer import pgbouncer_files, pooler_pod_spec
from test_operator import (PSQL, Source, dsn, operator, parse_kv, pod_address, psql,  # noqa: F401
                           service_address, stop_load, target_password, upgrade, wait_phase)

WRITES_PER_S = 500
RATE = WRITES_PER_S * 5 // 4  # the load client reads 20% of its operations


def start_load(address, source, ledger):
    app_dsn = dsn(address).replace("user=postgres", "user=app")
    return subprocess.Popen([PGSHIFT_BIN, "load", "run", "--dsn", app_dsn, "--rate", str(RATE),
                             "--duration", "600", "--ledger", str(ledger), "--clients", "8",
                             "--slow-ms", str(SLOW_MS)],
                            env=dict(os.environ, PGPASSWORD=source.app_password),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def app_psql(address, source, query):
    """psql as the application's role (its password hash came from the source)."""
    return subprocess.run([PSQL, "-X", "-At", "-d", dsn(address).replace("user=postgres", "user=app"),
                           "-c", query], env=dict(os.environ, PGPASSWORD=source.app_password),
                          capture_output=True, text=True, timeout=30)


def verify(address, password, ledger, acknowledged):
    v = subprocess.run([PGSHIFT_BIN, "load", "verify", "--dsn", dsn(address), "--ledger", str(ledger)],
                       env=dict(os.environ, PGPASSWORD=password), capture_output=True, text=True,
                       timeout=120)
    assert v.returncode == 0, v.stderr
    vr = parse_kv(v.stdout.replace("\n", " "))
    assert vr["missing"] == "0" and vr["mismatched"] == "0", v.stdout
    assert int(vr["acknowledged"]) == int(acknowledged)


def stall_ms(ledger):
    """The longest client operation of the run (the clients held by PAUSE)."""
    return json.loads(Path(f"{ledger}.summary.json").read_text())["max_latency_ms"]


# The load client writes every operation at least this slow to LEDGER.slow.csv.
SLOW_MS = 10


def unix_ms(rfc3339):
    from datetime import datetime
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000


def cutover_stall_ms(ledger, status, done_phase):
    """The clients' longest stall at the cutover (or rollback) `status` recorded: the longest
    operation scheduled from the attempt's start (lastCutover.at) until the phase it ends in
    (`done_phase`) began; that holds every operation the pause held. Not the run's longest
    (stall_ms), which also counts the load client's own start and the machine's noise. Below
    SLOW_MS when no operation in that window was that slow."""
    start = unix_ms(status["lastCutover"]["at"])
    end = unix_ms(status["phaseTimes"][done_phase]["started"])
    assert end > start, (status["lastCutover"], status["phaseTimes"][done_phase])
    rows = Path(f"{ledger}.slow.csv").read_text().splitlines()[1:]
    held = [float(r.split(",")[2]) for r in rows if start <= float(r.split(",")[0]) <= end]
    return max(held, default=0.0)


def watch_phase(k, name, wanted, timeout, operator):
    """wait_phase with one `kubectl get -w` stream instead of a kubectl process every 0.5 s:
    these tests measure client stalls of tens of ms on a 2-core machine, where each kubectl
    start costs ~50 ms of CPU that would compete with the pause being measured."""
    cmd = [k.binary, "get", "postgresupgrade", name, "-w", "-o",
           'jsonpath={.status.phase}{"\\n"}']
    if k.namespace:
        cmd += ["-n", k.namespace]
    p = subprocess.Popen(cmd, env=k.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    buf = b""
    try:
        while time.time() < deadline:
            if operator.proc.poll() is not None:
                raise AssertionError(f"operator exited ({operator.proc.returncode}):\n"
                                     f"{operator.log()[-4000:]}")
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break  # the watch ended: poll for the rest
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.decode().strip() in wanted:
                    return line.decode().strip()
    finally:
        p.kill()
        p.wait()
    return wait_phase(k, name, wanted, timeout=max(1, deadline - time.time()), operator=operator)


def other_seconds_ms(ledger, at):
    """The load client's worst operation in the seconds of the run that do not hold the step
    started at `at` (RFC 3339, its first 1.5 s): the machine's own noise, beside the stall."""
    from datetime import datetime
    started = json.loads(Path(f"{ledger}.summary.json").read_text())["started_unix_ms"] / 1000
    t = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() - started
    rows = Path(f"{ledger}.series.csv").read_text().splitlines()[1:]
    worst = [float(r.split(",")[5]) for r in rows
             if not (t - 1 < int(r.split(",")[0]) < t + 1.5)]
    return max(worst, default=0.0)


def ready_replicas(k, name):
    d = k.get("deployment", name) or {}
    return d.get("status", {}).get("readyReplicas", 0)


def load_and_approve(k, operator, source, pooler, ledger):
    """The application writing through `pooler` into `ledger` from before the migration is
    ready until after it; once ReadyForCutover, the cutover approved. Returns the load."""
    wait_for(lambda: app_psql(pooler, source, "SELECT 1").returncode == 0, timeout=30,
             what="the application's role logs in through the pooler")
    load = start_load(pooler, source, ledger)
    watch_phase(k, "shop", {"ReadyForCutover"}, timeout=240, operator=operator)
    time.sleep(3)
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"approved": True}}}))
    return load


HOLD_LOCK = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885828968 "
             "AND objid = 1752132708 AND objsubid = 2 AND pid = pg_backend_pid()")


def assert_held_at_the_fence(operator, pooler, source, times):
    """The pooler's server connection ran the hold (its advisory lock marks it), and the
    cutover let clients go before its probes, to wait at the fenced new side (docs/engine.md,
    "The pooler's hold"), `times` times so far."""
    got = app_psql(pooler, source, HOLD_LOCK)
    assert got.returncode == 0 and got.stdout.strip() == "1", got
    assert operator.log().count("clients let go after") == times, operator.log()[-4000:]


def cutover_and_rollback(k, namespace, operator, source, tmp_path, pooler, backend,
                         src_version, dst_version, holds):
    """With the application writing through `pooler` (a Service's proxy address) the whole
    time: the approved cutover, then a rollback. Asserts no client error, every acknowledged
    write where it belongs, and Service `backend` leading to the target, then back. `holds`:
    the pooler is the operator's own, which holds clients at the fenced new side."""
    ledger = tmp_path / "forward.ledger"
    load = load_and_approve(k, operator, source, pooler, ledger)
    watch_phase(k, "shop", {"RollbackReady"}, timeout=120, operator=operator)
    time.sleep(3)  # clients go on writing, now on the target
    s = stop_load(load)
    st = k.get("postgresupgrade", "shop")["status"]
    cut = st["lastCutover"]
    assert cut["succeeded"] and cut["direction"] == "forward"
    print(f"{src_version}->{dst_version} through the pooler: pause {cut['pauseMs']:.1f} ms, "
          f"clients' stall {cutover_stall_ms(ledger, st, 'RollbackReady'):.1f} ms, "
          f"longest client operation {stall_ms(ledger):.1f} ms (other seconds: "
          f"{other_seconds_ms(ledger, cut['at']):.1f} ms); load {s}")
    # No client saw an error: PAUSE held them, RESUME let them go on the target.
    assert int(s["errors"]) == 0, s
    assert int(s["acknowledged"]) > 1000
    verify(pod_address(namespace, "shop-target-0"), target_password(k, "shop"), ledger,
           s["acknowledged"])
    assert k.get("service", backend)["spec"]["selector"] == {
        "pgshift.dev/upgrade": "shop", "pgshift.dev/role": "target"}
    # Through the pooler, the application's role is on the new server.
    got = app_psql(pooler, source, "SHOW server_version_num")
    assert got.returncode == 0 and got.stdout.strip().startswith(str(dst_version)), got
    if holds:
        assert_held_at_the_fence(operator, pooler, source, 1)
    # The source is fenced.
    p = psql(source.address, source.password,
             "INSERT INTO shop.products (sku, title, price_cents) VALUES ('x', 'y', 1)",
             check=False)
    assert p.returncode != 0 and "read-only" in p.stderr

    # Rollback through the pooler, under load again.
    back = tmp_path / "rollback.ledger"
    load = start_load(pooler, source, back)
    time.sleep(3)
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"action": "Rollback"}}))
    watch_phase(k, "shop", {"RolledBack"}, timeout=120, operator=operator)
    time.sleep(3)
    s2 = stop_load(load)
    st = k.get("postgresupgrade", "shop")["status"]
    assert st["lastCutover"]["direction"] == "rollback" and st["lastCutover"]["succeeded"]
    print(f"{dst_version}->{src_version} rollback through the pooler: pause "
          f"{st['lastCutover']['pauseMs']:.1f} ms, clients' stall "
          f"{cutover_stall_ms(back, st, 'RolledBack'):.1f} ms, longest client operation "
          f"{stall_ms(back):.1f} ms (other seconds: "
          f"{other_seconds_ms(back, st['lastCutover']['at']):.1f} ms); load {s2}")
    assert int(s2["errors"]) == 0, s2
    assert k.get("service", backend)["spec"]["selector"] == {"app": source.name}
    if holds:
        assert_held_at_the_fence(operator, pooler, source, 2)
    # Every write of both runs is on the source: the ones made on the target came back.
    verify(source.address, source.password, ledger, s["acknowledged"])
    verify(source.address, source.password, back, s2["acknowledged"])


@pytest.mark.parametrize("src_version,dst_version", [(15, 17), (17, 15)])
def test_cutover_and_rollback_through_the_pooler_lose_nothing_and_fail_no_client(
        k, namespace, operator, tmp_path, src_version, dst_version):  # noqa: F811
    source = Source(k, namespace, src_version)
    operator.start()
    k.apply(upgrade("shop", source, dst_version, traffic={"pooler": {"replicas": 2}},
                    cutover={"mode": "manual", "maxPauseMs": 5000}))
    # The operator makes the pooler; the application moves to it before anything else.
    wait_for(lambda: ready_replicas(k, "shop-pooler") == 2, timeout=120, interval=0.5,
             what="two ready PgBouncer replicas")
    backend = k.get("service", "shop-pooler-backend")
    assert backend["spec"]["selector"] == {"app": source.name}
    assert "ownerReferences" not in backend["metadata"]
    pooler = wait_for(lambda: service_address(namespace, "shop-pooler"), timeout=30,
                      what="the pooler Service's proxy port")
    cutover_and_rollback(k, namespace, operator, source, tmp_path, pooler,
                         "shop-pooler-backend", src_version, dst_version, holds=True)
    # The application's own Services were never touched.
    assert k.get("service", "app-db")["spec"]["selector"] == {"app": source.name}


def own_pgbouncer(k, namespace, source):
    """The application's own PgBouncer, as a shop runs it before pgshift: two replicas behind
    Service app-pgbouncer, transaction pooling, SCRAM pass-through with the app role's secret,
    server connections through Service app-db; its admin user in Secret app-pgbouncer-admin."""
    scram = psql(source.address, source.password,
                 "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").stdout.strip()
    assert scram.startswith("SCRAM-SHA-256$"), scram
    admin_password = uuid.uuid4().hex
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-pgbouncer-config"},
             "stringData": pgbouncer_files("postgres = host=app-db port=5432 dbname=postgres",
                                           scram, admin_password, default_pool_size=10)})
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-pgbouncer-admin"},
             "stringData": {"username": "pgbadmin", "password": admin_password}})
    labels = {"app": "app-pgbouncer"}
    k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app-pgbouncer"},
             "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels},
                                   "spec": pooler_pod_spec(secret="app-pgbouncer-config")}}})
    k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app-pgbouncer"},
             "spec": {"selector": labels, "ports": [{"name": "pgbouncer", "port": 5432,
                                                     "targetPort": "pgbouncer"}]}})
    wait_for(lambda: ready_replicas(k, "app-pgbouncer") == 2, timeout=120, interval=0.5,
             what="the application's two PgBouncer replicas ready")
    return wait_for(lambda: service_address(namespace, "app-pgbouncer"), timeout=30,
                    what="app-pgbouncer's proxy port")


@pytest.mark.parametrize("src_version,dst_version", [(15, 17), (17, 15)])
def test_an_adopted_pgbouncer_holds_clients_at_cutover_and_rollback(
        k, namespace, operator, tmp_path, src_version, dst_version):  # noqa: F811
    source = Source(k, namespace, src_version)
    pooler = own_pgbouncer(k, namespace, source)
    operator.start()
    k.apply(upgrade("shop", source, dst_version,
                    traffic={"pooler": {"existing": {
                        "service": "app-pgbouncer", "backendService": "app-db",
                        "adminSecret": {"name": "app-pgbouncer-admin"}}}},
                    cutover={"mode": "manual", "maxPauseMs": 5000}))
    cutover_and_rollback(k, namespace, operator, source, tmp_path, pooler, "app-db",
                         src_version, dst_version, holds=False)
    # Adopted, not made: no PgBouncer of the operator's own, and app-db keeps no annotation
    # of pgshift once the resource is deleted.
    assert not k.get("deployment", "shop-pooler")
    assert not k.get("service", "shop-pooler-backend")
    k.run("delete", "postgresupgrade", "shop", "--wait=true", "--timeout=120s")
    ann = k.get("service", "app-db")["metadata"].get("annotations", {})
    assert "pgshift.dev/source-selector" not in ann, ann


@pytest.mark.parametrize("point", ["forward:after-switch", "forward:after-sequences"])
def test_an_operator_killed_inside_the_pause_resumes_an_adopted_pgbouncer(
        k, namespace, operator, tmp_path, monkeypatch, point):  # noqa: F811
    """The operator dies with clients held in the application's own PgBouncer: past the
    switch (the backend already on the target), or before it (the sequences synced, the
    backend still on the source). A new operator process knows nothing of that PAUSE: its
    recovery finds the held entries itself, reads where the backend Service leads (the journal
    says only that the switch may have happened: nothing is written to the resource inside
    the pause) and finishes the cutover, or undoes it and runs it again. Clients see a stall
    of the restart's length, not an error."""
    past_switch = point.endswith("after-switch")
    source = Source(k, namespace, 15)
    pooler = own_pgbouncer(k, namespace, source)
    monkeypatch.setenv("PGSHIFT_FAULT_KILL_AT", point)
    operator.start()
    monkeypatch.delenv("PGSHIFT_FAULT_KILL_AT")
    k.apply(upgrade("shop", source, 17,
                    traffic={"pooler": {"existing": {
                        "service": "app-pgbouncer", "backendService": "app-db",
                        "adminSecret": {"name": "app-pgbouncer-admin"}, "settleMs": 200}}},
                    cutover={"mode": "manual", "maxPauseMs": 5000}))
    ledger = tmp_path / "app.ledger"
    load = load_and_approve(k, operator, source, pooler, ledger)
    operator.proc.wait(timeout=120)
    assert f"fault injection: killed at {point}" in operator.log()
    time.sleep(1)  # clients held meanwhile, with no operator at all
    on_target = {"pgshift.dev/upgrade": "shop", "pgshift.dev/role": "target"}
    selector = k.get("service", "app-db")["spec"]["selector"]
    assert selector == (on_target if past_switch else {"app": source.name}), selector
    operator.start()
    wait_phase(k, "shop", {"RollbackReady"}, timeout=120, operator=operator)
    time.sleep(2)
    s = stop_load(load)
    print(f"killed at {point}: longest client operation {stall_ms(ledger):.1f} ms; load {s}")
    # The recovery decided from the router, forward past the switch and back before it.
    assert ("rolling forward" if past_switch else "rolling back") in operator.log(), \
        operator.log()[-3000:]
    assert int(s["errors"]) == 0, s
    verify(pod_address(namespace, "shop-target-0"), target_password(k, "shop"), ledger,
           s["acknowledged"])
    got = app_psql(pooler, source, "SHOW server_version_num")
    assert got.returncode == 0 and got.stdout.strip().startswith("17"), got


# What the next process does: the operator's pooler begins moving its backend as soon as
# clients are held, while the engine fences, catches up and opens the target; only the target's
# fence says whether clients may have written there. After the sequences (or the replication
# step) the target is still fenced (back, whether the backend had moved yet or not); after open
# the move may or may not have been written (forward if it was, else back); after the switch,
# forward. "pooler-released-early": killed right after the pooler let clients go to wait at the
# fenced target, with the engine held before open: back, which holds them again first.
RECOVERY = {"forward:after-sequences": ("rolling back",),
            "forward:after-replication": ("rolling back", "rolling forward"),
            "pooler-released-early": ("rolling back",),
            "forward:after-open": ("rolling forward", "rolling back"),
            "forward:after-switch": ("rolling forward",)}


@pytest.mark.parametrize("point", list(RECOVERY))
def test_an_operator_killed_inside_the_pause_resumes_its_own_pooler(
        k, namespace, operator, tmp_path, monkeypatch, point):  # noqa: F811
    """The operator dies with clients held in the PgBouncer it runs, its backend Service
    without a selector (led by pgshift's EndpointSlice) and that slice on the target, or still
    on the source. The next process gives the Service its selector back (the side the slice
    leads to: nothing moves), then its recovery reads where the backend leads and finishes the
    cutover, or undoes it and runs it again. Clients see a stall, not an error; the backend
    ends on the target with its selector and no slice of pgshift's."""
    source = Source(k, namespace, 15)
    monkeypatch.setenv("PGSHIFT_FAULT_KILL_AT", point)
    if point == "pooler-released-early":
        # The engine waits before open (never let go: the process dies first), so the target
        # is still fenced when the pooler's thread lets clients go and the process is killed.
        monkeypatch.setenv("PGSHIFT_FAULT_HOLD_AT", "forward:before-open")
        monkeypatch.setenv("PGSHIFT_FAULT_HOLD_FILE", str(tmp_path / "held"))
    operator.start()
    for name in ("PGSHIFT_FAULT_KILL_AT", "PGSHIFT_FAULT_HOLD_AT", "PGSHIFT_FAULT_HOLD_FILE"):
        monkeypatch.delenv(name, raising=False)
    k.apply(upgrade("shop", source, 17, traffic={"pooler": {"replicas": 2}},
                    cutover={"mode": "manual", "maxPauseMs": 5000}))
    wait_for(lambda: ready_replicas(k, "shop-pooler") == 2, timeout=120, interval=0.5,
             what="two ready PgBouncer replicas")
    pooler = wait_for(lambda: service_address(namespace, "shop-pooler"), timeout=30,
                      what="the pooler Service's proxy port")
    ledger = tmp_path / "app.ledger"
    load = load_and_approve(k, operator, source, pooler, ledger)
    operator.proc.wait(timeout=120)
    assert f"fault injection: killed at {point}" in operator.log()
    backend = k.get("service", "shop-pooler-backend")
    assert "selector" not in backend["spec"], backend["spec"]
    slices = k.run("get", "endpointslices", "-l", "kubernetes.io/service-name=shop-pooler-backend",
                   "-o", "json")
    names = [s["metadata"]["name"] for s in json.loads(slices.stdout)["items"]]
    assert names == ["shop-pooler-backend-pgshift"], names
    time.sleep(1)  # clients held meanwhile, with no operator at all
    operator.start()
    wait_phase(k, "shop", {"RollbackReady"}, timeout=120, operator=operator)
    time.sleep(2)
    s = stop_load(load)
    log = operator.log()
    went = [w for w in ("rolling forward", "rolling back") if w in log]
    print(f"own pooler, killed at {point}: {went}, longest client operation "
          f"{stall_ms(ledger):.1f} ms; load {s}")
    assert len(went) == 1 and went[0] in RECOVERY[point], log[-3000:]
    assert int(s["errors"]) == 0, s
    verify(pod_address(namespace, "shop-target-0"), target_password(k, "shop"), ledger,
           s["acknowledged"])
    assert k.get("service", "shop-pooler-backend")["spec"]["selector"] == {
        "pgshift.dev/upgrade": "shop", "pgshift.dev/role": "target"}
    wait_for(lambda: "shop-pooler-backend-pgshift" not in k.run(
        "get", "endpointslices", "-o", "name").stdout, timeout=30, what="pgshift's slice deleted")
    got = app_psql(pooler, source, "SHOW server_version_num")
    assert got.returncode == 0 and got.stdout.strip().startswith("17"), got
