"""pgshift-operator end to end on the test control plane (real etcd, kube-apiserver,
kube-controller-manager; the fake kubelet runs real PostgreSQL for postgres:N Pods).

The operator binary runs outside the cluster, as the pgshift-operator ServiceAccount of
`make deploy` (a token kubeconfig), so the RBAC of deploy/rbac is what it has. It reaches the
servers through EndpointSlice addresses translated by the harness's pods.json
(--connect endpoints --pod-address-map); clients reach them through the fake kubelet's Service
proxy, as Pods in a cluster would through a ClusterIP.
"""
import datetime
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import (CACHE, K8S_DIR, OPERATOR_BIN, PGSHIFT_BIN, ROOT, sa_kubeconfig, wait_for)

PSQL = str(CACHE / "pgclient" / "bin" / "psql")
APP_SCHEMA = ROOT / "scripts" / "demo" / "app-schema.sql"
RATE = 250  # operations per second, 20% reads


def parse_kv(line):
    return dict(p.split("=", 1) for p in line.split() if "=" in p)


def http_get(url):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def harness_map(name):
    path = K8S_DIR / name
    return json.loads(path.read_text()) if path.exists() else {}


def pod_address(ns, pod):
    entry = harness_map("pods.json").get(f"{ns}/{pod}")
    return entry["address"] if entry else None


def service_address(ns, service, port=5432):
    return harness_map("services.json").get(f"{ns}/{service}/{port}")


def dsn(address, db="postgres"):
    host, port = address.rsplit(":", 1)
    return f"host={host} port={port} user=postgres dbname={db} connect_timeout=5"


def psql(address, password, query, db="postgres", check=True):
    p = subprocess.run([PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn(address, db), "-c", query],
                       env=dict(os.environ, PGPASSWORD=password), capture_output=True, text=True,
                       timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"psql on {address}: {p.stderr}")
    return p


def pgshift_leftovers(address, password):
    """Names of every pgshift object on the server: slots, publications, subscriptions,
    event triggers and the _pgshift schema, in every database."""
    out = psql(address, password,
               "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgshift%' "
               "UNION ALL SELECT subname FROM pg_subscription WHERE subname LIKE 'pgshift%'").stdout.split()
    dbs = psql(address, password,
               "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate").stdout.split()
    for db in dbs:
        out += psql(address, password,
                    "SELECT pubname FROM pg_publication WHERE pubname LIKE 'pgshift%' "
                    "UNION ALL SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'pgshift%' "
                    "UNION ALL SELECT nspname FROM pg_namespace WHERE nspname LIKE '_pgshift%'",
                    db=db).stdout.split()
    return out


class Source:
    """A PostgreSQL StatefulSet (one replica) with its own Service and the Service the
    application uses (`app-db`), both selecting it."""

    def __init__(self, k, ns, version):
        self.k, self.ns, self.version = k, ns, version
        self.name = f"pg{version}"
        self.password = uuid.uuid4().hex
        labels = {"app": self.name}
        k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{self.name}-admin"},
                 "stringData": {"username": "postgres", "password": self.password}})
        k.apply({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": self.name},
                 "spec": {"replicas": 1, "serviceName": self.name,
                          "selector": {"matchLabels": labels},
                          "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                              "name": "postgres", "image": f"postgres:{version}",
                              "args": ["-c", "wal_level=logical"],
                              "env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                                  "name": f"{self.name}-admin", "key": "password"}}}]}]}},
                          "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                              "accessModes": ["ReadWriteOnce"],
                              "resources": {"requests": {"storage": "1Gi"}}}}]}})
        for svc in (self.name, "app-db"):
            k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc},
                     "spec": {"selector": labels, "ports": [{"name": "postgres", "port": 5432,
                                                             "targetPort": 5432}]}})
        wait_for(lambda: self.ready(), timeout=120, what=f"{self.name}-0 ready")
        self.address = wait_for(lambda: pod_address(ns, f"{self.name}-0"), timeout=30,
                                what="pod address")
        self.app = wait_for(lambda: service_address(ns, "app-db"), timeout=30,
                            what="app-db proxy port")
        wait_for(lambda: psql(self.address, self.password, "SELECT 1", check=False).returncode == 0,
                 timeout=60, what="source accepts connections")
        subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn(self.address),
                        "-f", str(APP_SCHEMA)], env=dict(os.environ, PGPASSWORD=self.password),
                       check=True, capture_output=True, timeout=120)
        # The application's own role (pgshift carries it, password hash included, to the
        # target; the superuser pgshift connects as keeps each server's own password).
        self.app_password = uuid.uuid4().hex
        psql(self.address, self.password,
             f"CREATE ROLE app LOGIN PASSWORD '{self.app_password}'; "
             "GRANT CREATE ON DATABASE postgres TO app")

    def ready(self):
        pod = self.k.get("pod", f"{self.name}-0")
        if not pod:
            return False
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in pod.get("status", {}).get("conditions", []))


class Operator:
    """pgshift-operator as a child process, with the ServiceAccount's kubeconfig."""

    def __init__(self, ns, kubeconfig, work_dir, log_path):
        self.ns, self.kubeconfig, self.work_dir, self.log_path = ns, kubeconfig, work_dir, log_path
        self.proc = None

    def start(self, *extra):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [OPERATOR_BIN, *extra, "--kubeconfig", str(self.kubeconfig), "--namespace", self.ns,
             "--connect", "endpoints", "--pod-address-map", str(K8S_DIR / "pods.json"),
             "--pg-bin-dir", str(CACHE / "pgclient" / "bin"), "--work-dir", str(self.work_dir),
             "--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
        return self

    def metrics_url(self):
        def find():
            for line in self.log().splitlines():
                if " metrics url=" in line:
                    return line.split(" metrics url=", 1)[1].split()[0]
            return None
        return wait_for(find, timeout=20, what="the operator's metrics URL in its log")

    def health_url(self):
        def find():
            for line in self.log().splitlines():
                if " health probes url=" in line:
                    return line.split(" health probes url=", 1)[1].split()[0].rsplit("/", 1)[0]
            return None
        return wait_for(find, timeout=20, what="the operator's health URL in its log")

    def memory_kb(self, field):
        """VmRSS (now) or VmHWM (peak) of the operator process, in kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        return Path(self.log_path).read_text(errors="replace")


@pytest.fixture
def operator(operator_deployed, namespace, tmp_path):
    kubeconfig = sa_kubeconfig(tmp_path / "operator.kubeconfig")
    op = Operator(namespace, kubeconfig, tmp_path / "work", tmp_path / "operator.log")
    yield op
    op.stop()
    print("---- operator log (tail) ----\n" + "\n".join(op.log().splitlines()[-60:]))


def upgrade(name, source, version, **spec):
    body = {"apiVersion": "pgshift.dev/v1alpha1", "kind": "PostgresUpgrade",
            "metadata": {"name": name},
            "spec": {"source": {"service": source.name,
                                "credentialsSecret": {"name": f"{source.name}-admin"}},
                     "target": {"version": version},
                     "traffic": {"service": "app-db"},
                     "cutover": {"maxPauseMs": 5000}}}
    for key, value in spec.items():
        body["spec"][key] = value
    return body


def phase(k, name):
    pu = k.get("postgresupgrade", name) or {}
    return pu.get("status", {}).get("phase", "")


def wait_phase(k, name, wanted, timeout, operator=None):
    def check():
        p = phase(k, name)
        if operator is not None and operator.proc.poll() is not None:
            raise AssertionError(f"operator exited ({operator.proc.returncode}):\n{operator.log()[-4000:]}")
        return p in wanted and p
    try:
        return wait_for(check, timeout=timeout, interval=0.5, what=f"phase in {wanted}")
    except AssertionError:
        pu = k.get("postgresupgrade", name)
        raise AssertionError(f"phase {phase(k, name)!r}, status:\n"
                             f"{json.dumps((pu or {}).get('status', {}), indent=1)[:4000]}")


def start_load(source, ledger, duration=600, rate=RATE):
    app_dsn = dsn(source.app).replace("user=postgres", "user=app")
    return subprocess.Popen([PGSHIFT_BIN, "load", "run", "--dsn", app_dsn, "--rate", str(rate),
                             "--duration", str(duration), "--ledger", str(ledger), "--clients", "4"],
                            env=dict(os.environ, PGPASSWORD=source.app_password),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_load(proc, log_path=None):
    """Stops the load client; its log goes to `log_path`, else (the tail) to the test output."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    if log_path is not None:
        Path(log_path).write_text(err)
    else:
        print("load client:", err[-2000:])
    lines = out.strip().splitlines()
    return {**parse_kv(lines[0]), **parse_kv(lines[1])}


def target_password(k, name):
    import base64
    secret = k.get("secret", f"{name}-target")
    return base64.b64decode(secret["data"]["password"]).decode()


def error_seconds_outside_cutover(ledger, cutover_at, pause_ms, slack_s=3.0):
    """Seconds of the load run with client errors that are not within `slack_s` of the
    cutover's window (fence .. switch)."""
    summary = json.loads(Path(f"{ledger}.summary.json").read_text())
    t0 = summary["started_unix_ms"] / 1000.0
    start = datetime.datetime.fromisoformat(cutover_at.replace("Z", "+00:00")).timestamp()
    end = start + pause_ms / 1000.0
    bad = []
    for row in Path(f"{ledger}.series.csv").read_text().splitlines()[1:]:
        second, _ops, _w, _r, errors, _lat = row.split(",")
        t = t0 + int(second)
        if int(errors) > 0 and not (start - slack_s <= t <= end + slack_s):
            bad.append((int(second), int(errors)))
    return bad


@pytest.mark.parametrize("src_version,dst_version", [(15, 17), (17, 15)])
def test_upgrade_under_load_reaches_rollback_ready_and_moves_the_service(
        k, namespace, operator, tmp_path, src_version, dst_version):
    source = Source(k, namespace, src_version)
    operator.start()
    health = operator.health_url()
    wait_for(lambda: http_get(health + "/readyz")[0] == 200, timeout=20, what="/readyz 200")
    assert http_get(health + "/healthz") == (200, "ok\n")
    metrics = operator.metrics_url()
    time.sleep(1)
    idle_kb = operator.memory_kb("VmRSS")
    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    time.sleep(2)
    k.apply(upgrade("shop", source, dst_version))
    # Scrapes while it works: the resource's phase, and its live figures while it copies.
    series = set()
    key = f'migration="{namespace}/shop"'

    def scraped_rollback_ready():
        code, text = http_get(metrics)
        assert code == 200
        for line in text.splitlines():
            if key in line and not line.startswith("#"):
                series.add(line.split("{")[0])
        return f'pgshift_phase{{{key},phase="RollbackReady"}} 1' in text
    wait_for(scraped_rollback_ready, timeout=240, interval=0.3, what="RollbackReady in /metrics")
    wait_phase(k, "shop", {"RollbackReady"}, timeout=30, operator=operator)
    assert {"pgshift_phase", "pgshift_replication_lag_bytes", "pgshift_tables",
            "pgshift_tables_synced", "pgshift_source_retained_wal_bytes"} <= series, series
    peak_kb = operator.memory_kb("VmHWM")
    print(f"operator memory: idle RSS {idle_kb} kB, peak RSS during the migration {peak_kb} kB")
    time.sleep(2)  # clients go on writing on the target
    s = stop_load(load)

    pu = k.get("postgresupgrade", "shop")
    st = pu["status"]
    assert st["sourceVersion"] == src_version and st["targetVersion"] == dst_version
    cut = st["lastCutover"]
    assert cut["succeeded"] and cut["direction"] == "forward"
    print(f"{src_version}->{dst_version}: cutover pause {cut['pauseMs']:.1f} ms; load {s}")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Degraded"]["status"] == "False"
    assert st["observedGeneration"] == pu["metadata"]["generation"]
    for p in ("Preflight", "Schema", "InitialCopy", "CatchingUp", "CuttingOver", "RollbackReady"):
        assert st["phaseTimes"][p]["started"], p

    # After cutover the lag shown is the reverse one (what a rollback would wait for), in the
    # status and in `kubectl get pgu`.
    wait_for(lambda: "reverseLagBytes" in k.get("postgresupgrade", "shop")["status"],
             timeout=30, interval=0.5, what="status.reverseLagBytes after cutover")
    reverse = k.get("postgresupgrade", "shop")["status"]["reverseLagBytes"]
    assert reverse >= 0, reverse
    table = k.run("get", "postgresupgrade", "shop").stdout.splitlines()
    assert "REVERSE-LAG" in table[0].split(), table
    print(f"{src_version}->{dst_version}: reverse replication lag after cutover {reverse} bytes")
    # The operator's metrics carry it too, while it is idle after the cutover.
    def reverse_scraped():
        code, text = http_get(metrics)
        return code == 200 and any(l.startswith("pgshift_reverse_replication_lag_bytes{") and key in l
                                   for l in text.splitlines())
    wait_for(reverse_scraped, timeout=30, interval=0.5, what="reverse lag in /metrics")

    # The Service clients use now leads to the target, whose Pod the operator made.
    svc = k.get("service", "app-db")
    assert svc["spec"]["selector"] == {"pgshift.dev/upgrade": "shop", "pgshift.dev/role": "target"}
    sts = k.get("statefulset", "shop-target")
    assert sts["metadata"]["ownerReferences"][0]["name"] == "shop"
    version = psql(source.app, target_password(k, "shop"), "SHOW server_version_num").stdout.strip()
    assert version.startswith(str(dst_version)), version

    # Every acknowledged write reached the target.
    assert int(s["acknowledged"]) > 1000
    verify_on_target(k, namespace, ledger, s["acknowledged"])
    # Clients may fail only while the Service flips (docs/kubernetes.md): never elsewhere.
    assert error_seconds_outside_cutover(ledger, cut["at"], cut["pauseMs"]) == []
    # The source is fenced: a direct write fails.
    p = psql(source.address, source.password,
             "INSERT INTO shop.products (sku, title, price_cents) VALUES ('x', 'y', 1)",
             check=False)
    assert p.returncode != 0 and "read-only" in p.stderr
    events = k.json("get", "events", "--field-selector", "involvedObject.name=shop")["items"]
    reasons = {e["reason"] for e in events}
    assert "PhaseChanged" in reasons, reasons


def big_table(source, rows):
    """A table large enough that the initial copy takes a few seconds."""
    psql(source.address, source.password,
         "CREATE TABLE public.bulk (id bigint PRIMARY KEY, pad text NOT NULL); "
         f"INSERT INTO public.bulk SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, {rows}) g")


def verify_on_target(k, namespace, ledger, acknowledged):
    target = pod_address(namespace, "shop-target-0")
    v = subprocess.run([PGSHIFT_BIN, "load", "verify", "--dsn", dsn(target), "--ledger", str(ledger)],
                       env=dict(os.environ, PGPASSWORD=target_password(k, "shop")),
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr
    vr = parse_kv(v.stdout.replace("\n", " "))
    assert vr["missing"] == "0" and vr["mismatched"] == "0", v.stdout
    assert int(vr["acknowledged"]) == int(acknowledged)


def test_operator_killed_during_copy_and_catch_up_resumes_and_loses_nothing(
        k, namespace, operator, tmp_path):
    source = Source(k, namespace, 15)
    big_table(source, 1_500_000)
    operator.start()
    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    time.sleep(1)
    # maxLagBytes 0 keeps it catching up while the load writes, so it can be killed there too.
    k.apply(upgrade("shop", source, 17, cutover={"maxPauseMs": 5000, "maxLagBytes": 0}))
    wait_phase(k, "shop", {"InitialCopy"}, timeout=120, operator=operator)
    time.sleep(1)
    operator.kill9()
    assert phase(k, "shop") == "InitialCopy"
    operator.start()
    wait_phase(k, "shop", {"CatchingUp"}, timeout=240, operator=operator)
    time.sleep(2)
    operator.kill9()
    assert phase(k, "shop") == "CatchingUp"
    operator.start()
    time.sleep(3)
    assert phase(k, "shop") == "CatchingUp"
    # A spec change reaches the running step: it restarts with the new threshold.
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"maxLagBytes": 8 << 20}}}))
    wait_phase(k, "shop", {"RollbackReady"}, timeout=240, operator=operator)
    time.sleep(2)
    s = stop_load(load)
    assert "resuming" in operator.log() or operator.log().count("starting step") >= 3
    verify_on_target(k, namespace, ledger, s["acknowledged"])
    st = k.get("postgresupgrade", "shop")["status"]
    assert error_seconds_outside_cutover(ledger, st["lastCutover"]["at"], st["lastCutover"]["pauseMs"]) == []
    target = pod_address(namespace, "shop-target-0")
    assert psql(target, target_password(k, "shop"), "SELECT count(*) FROM public.bulk").stdout.strip() == "1500000"


def test_deleting_the_resource_mid_way_leaves_nothing_on_the_source(k, namespace, operator, tmp_path):
    source = Source(k, namespace, 15)
    operator.start()
    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    k.apply(upgrade("shop", source, 17, cutover={"maxPauseMs": 5000, "maxLagBytes": 0}))
    wait_phase(k, "shop", {"CatchingUp"}, timeout=180, operator=operator)
    assert pgshift_leftovers(source.address, source.password)  # there was something to clean
    k.run("delete", "postgresupgrade", "shop", "--wait=false")
    wait_for(lambda: k.get("postgresupgrade", "shop") is None, timeout=120, what="resource gone")
    assert pgshift_leftovers(source.address, source.password) == []
    s = stop_load(load)
    # The application never left the source, which takes writes as before.
    assert int(s["errors"]) == 0, s
    v = subprocess.run([PGSHIFT_BIN, "load", "verify", "--dsn", dsn(source.address), "--ledger", str(ledger)],
                       env=dict(os.environ, PGPASSWORD=source.password), capture_output=True, text=True)
    assert v.returncode == 0 and " missing=0" in " " + v.stdout.replace("\n", " "), v.stdout
    svc = k.get("service", "app-db")
    assert svc["spec"]["selector"] == {"app": "pg15"}
    assert "pgshift.dev/source-selector" not in svc["metadata"].get("annotations", {})
    # The target went with the resource (owner references).
    wait_for(lambda: k.get("statefulset", "shop-target") is None, timeout=60, what="target gone")


def test_missing_secret_key_is_reported_in_status(k, namespace, operator):
    source = Source(k, namespace, 15)
    operator.start()
    body = upgrade("shop", source, 17)
    body["spec"]["source"]["credentialsSecret"]["passwordKey"] = "pw"
    k.apply(body)

    def degraded():
        st = (k.get("postgresupgrade", "shop") or {}).get("status", {})
        c = {c["type"]: c for c in st.get("conditions", [])}.get("Degraded")
        return c if c and c["status"] == "True" else None
    c = wait_for(degraded, timeout=60, what="Degraded condition")
    assert c["reason"] == "CredentialsProblem"
    assert 'has no key "pw"' in c["message"], c
    events = k.json("get", "events", "--field-selector", "involvedObject.name=shop")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "CredentialsProblem" for e in events), events
    assert pgshift_leftovers(source.address, source.password) == []
    # Fixed: the operator notices (Secrets are looked at again every 10 s), migrates, and
    # Degraded clears once the migration moves on.
    k.run("patch", "secret", f"{source.name}-admin", "--type", "merge", "-p",
          json.dumps({"stringData": {"pw": source.password}}))
    wait_phase(k, "shop", {"RollbackReady"}, timeout=180, operator=operator)
    assert degraded() is None


def test_corrupt_engine_status_is_degraded_not_a_new_migration(k, namespace, operator):
    """A status.engine that cannot be read (a bad hand patch, a truncated write) must stop the
    resource with Degraded, never be taken for "no migration yet": a new migration would start
    against servers a previous one has changed."""
    source = Source(k, namespace, 15)
    k.apply(upgrade("shop", source, 17))
    k.run("patch", "pgu", "shop", "--subresource=status", "--type=merge", "-p",
          json.dumps({"status": {"phase": "InitialCopy",
                                 "engine": {"version": 1, "id": "0badc0de", "phase": 7}}}))
    operator.start()

    def degraded():
        st = (k.get("postgresupgrade", "shop") or {}).get("status", {})
        c = {c["type"]: c for c in st.get("conditions", [])}.get("Degraded")
        return c if c and c["status"] == "True" else None
    c = wait_for(degraded, timeout=60, what="Degraded condition")
    assert c["reason"] == "CorruptStatus", c
    assert "status.engine cannot be read" in c["message"], c
    events = k.json("get", "events", "--field-selector", "involvedObject.name=shop")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "CorruptStatus" for e in events), events
    # Nothing was started: the engine's memory is as the patch left it, the source untouched.
    time.sleep(3)
    st = k.get("postgresupgrade", "shop")["status"]
    assert st["engine"] == {"version": 1, "id": "0badc0de", "phase": 7}, st
    assert st["phase"] == "InitialCopy", st
    assert pgshift_leftovers(source.address, source.password) == []


def manual_shop_ready_for_cutover(k, namespace, operator, tmp_path):
    """A PostgreSQL 15 shop under load, and a manual PostgresUpgrade to 17 waiting at
    ReadyForCutover; returns (source, ledger, load client)."""
    source = Source(k, namespace, 15)
    operator.start()
    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    k.apply(upgrade("shop", source, 17, cutover={"mode": "manual", "maxPauseMs": 5000}))
    wait_phase(k, "shop", {"ReadyForCutover"}, timeout=180, operator=operator)
    return source, ledger, load


def test_manual_cutover_then_rollback_then_finish(k, namespace, operator, tmp_path):
    """Manual mode waits at ReadyForCutover until approved; after cutover, action Rollback
    brings clients back to the source with every write made on the target (reverse
    replication); Finish then removes every pgshift object from both servers."""
    source, ledger, load = manual_shop_ready_for_cutover(k, namespace, operator, tmp_path)
    time.sleep(3)
    st = k.get("postgresupgrade", "shop")["status"]
    assert st["phase"] == "ReadyForCutover"  # it waits
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["CutoverReady"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "WaitingForApproval"
    assert k.get("service", "app-db")["spec"]["selector"] == {"app": "pg15"}
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"approved": True}}}))
    wait_phase(k, "shop", {"RollbackReady"}, timeout=120, operator=operator)
    time.sleep(3)  # writes land on the target
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"action": "Rollback"}}))
    wait_phase(k, "shop", {"RolledBack"}, timeout=120, operator=operator)
    time.sleep(2)
    s = stop_load(load)
    st = k.get("postgresupgrade", "shop")["status"]
    assert st["lastCutover"]["direction"] == "rollback" and st["lastCutover"]["succeeded"]
    assert k.get("service", "app-db")["spec"]["selector"] == {"app": "pg15"}
    # Every acknowledged write, before, during and after the stay on the target, is on the source.
    v = subprocess.run([PGSHIFT_BIN, "load", "verify", "--dsn", dsn(source.address), "--ledger", str(ledger)],
                       env=dict(os.environ, PGPASSWORD=source.password), capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    vr = parse_kv(v.stdout.replace("\n", " "))
    assert vr["missing"] == "0" and vr["mismatched"] == "0", v.stdout
    assert int(vr["acknowledged"]) == int(s["acknowledged"])
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"action": "Finish"}}))
    wait_phase(k, "shop", {"Completed"}, timeout=120, operator=operator)
    assert pgshift_leftovers(source.address, source.password) == []
    target = pod_address(namespace, "shop-target-0")
    assert pgshift_leftovers(target, target_password(k, "shop")) == []
    # The source is the database in use and takes writes.
    psql(source.address, source.password,
         "INSERT INTO shop.products (sku, title, price_cents) VALUES ('after', 'finish', 1)")


def past_fence(address, password, statement):
    """A superuser's statement on a fenced server (read-only by default, triggers on)."""
    p = subprocess.run([PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn(address),
                        "-c", "SET default_transaction_read_only = off",
                        "-c", "SET session_replication_role = replica", "-c", statement],
                       env=dict(os.environ, PGPASSWORD=password), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr


def test_replication_broken_on_purpose_is_degraded_and_never_cut_over(k, namespace, operator, tmp_path):
    """A row put on the target that the source then inserts too: the apply worker fails over
    and over. Approved, the cutover never holds a client: the resource turns Degraded with the
    engine's account of the failing worker, the Service stays on the source. Once the row is
    repaired the operator's next try cuts over, and nothing the client wrote is lost."""
    source, ledger, load = manual_shop_ready_for_cutover(k, namespace, operator, tmp_path)
    target = pod_address(namespace, "shop-target-0")
    password = target_password(k, "shop")
    key = 900001
    past_fence(target, password, "INSERT INTO shop.products (id, sku, title, price_cents) "
                                 f"VALUES ({key}, 'by-hand', 'by hand', 1)")
    psql(source.address, source.password, "INSERT INTO shop.products (id, sku, title, price_cents) "
                                          f"VALUES ({key}, 'from-source', 'from the source', 2)")
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"approved": True}}}))

    def degraded():
        st = k.get("postgresupgrade", "shop")["status"]
        d = {c["type"]: c for c in st.get("conditions", [])}.get("Degraded", {})
        return d.get("status") == "True" and "apply worker" in d.get("message", "") and d
    started = time.monotonic()
    d = wait_for(degraded, timeout=120, interval=0.5, what="Degraded naming the failing apply worker")
    print(f"Degraded {time.monotonic() - started:.1f} s after the approval: {d['message'][:600]}")
    assert "is stalled" in d["message"], d
    st = k.get("postgresupgrade", "shop")["status"]
    assert st["phase"] == "ReadyForCutover" and "lastCutover" not in st, st
    assert k.get("service", "app-db")["spec"]["selector"] == {"app": "pg15"}

    # Repaired on the target: the operator's next try cuts over.
    past_fence(target, password, f"DELETE FROM shop.products WHERE id = {key}")
    wait_phase(k, "shop", {"RollbackReady"}, timeout=240, operator=operator)
    time.sleep(2)
    s = stop_load(load)
    verify_on_target(k, namespace, ledger, s["acknowledged"])
    assert psql(target, password, f"SELECT sku FROM shop.products WHERE id = {key}").stdout.strip() == "from-source"
    conds = {c["type"]: c for c in k.get("postgresupgrade", "shop")["status"]["conditions"]}
    assert conds["Degraded"]["status"] == "False", conds["Degraded"]


AUDIT_DIGEST = "SELECT count(*) || ' ' || md5(string_agg(a::text, ',' ORDER BY a::text)) FROM public.audit_log a"


def test_a_table_without_a_primary_key_is_refused_then_moved_with_full(k, namespace, operator, tmp_path):
    """A new user's database with one table without a primary key (an audit log), the
    application writing: with the default (refuse) the preflight stops, changes nothing and
    says in the status which table and which spec field to set; with
    tablesWithoutPrimaryKey: full the same resource moves it, its updates and deletes too."""
    source = Source(k, namespace, 15)
    psql(source.address, source.password,
         "CREATE TABLE public.audit_log (at timestamptz NOT NULL DEFAULT now(), who text, what text); "
         "INSERT INTO public.audit_log (who, what) SELECT 'user' || g, 'login' FROM generate_series(1, 500) g")
    operator.start()
    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    # The copy's settings and onDifference reach the engine as the CLI's --jobs, --copy-rate
    # and --on-difference do.
    k.apply(upgrade("shop", source, 17, copy={"jobs": 2, "rate": "50Mi"},
                    cutover={"mode": "manual", "maxPauseMs": 5000, "onDifference": "stop"}))

    def refused():
        st = (k.get("postgresupgrade", "shop") or {}).get("status", {})
        c = {c["type"]: c for c in st.get("conditions", [])}.get("Degraded")
        return st if c and c["status"] == "True" and st.get("preflight") else None
    st = wait_for(refused, timeout=120, what="Degraded with the preflight's findings")
    assert st["phase"] == "Preflight", st
    degraded = {c["type"]: c for c in st["conditions"]}["Degraded"]
    assert "preflight failed" in degraded["message"] and "status.preflight" in degraded["message"]
    findings = "\n".join(st["preflight"])
    print(f"Degraded: {degraded['message']}\nstatus.preflight:\n{findings}")
    assert "public.audit_log" in findings, findings
    assert "set spec.tablesWithoutPrimaryKey: full" in findings, findings
    assert "--tables-without-pk" not in findings, findings
    assert pgshift_leftovers(source.address, source.password) == []
    identity = "SELECT relreplident FROM pg_class WHERE oid = 'public.audit_log'::regclass"
    assert psql(source.address, source.password, identity).stdout.strip() == "d"

    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"tablesWithoutPrimaryKey": "full"}}))
    wait_phase(k, "shop", {"ReadyForCutover"}, timeout=180, operator=operator)
    st = k.get("postgresupgrade", "shop")["status"]
    assert "preflight" not in st, st["preflight"]  # the refused try's findings are gone
    options = st["engine"]["options"]
    assert options["tables_without_pk_full"] is True
    assert (options["copy"], options["copy_jobs"], options["copy_rate"]) == ("snapshot", 2, 50 << 20)
    assert options["on_difference"] == "stop"
    assert any("public.audit_log set to REPLICA IDENTITY FULL" in n for n in st["engine"]["notes"])
    assert psql(source.address, source.password, identity).stdout.strip() == "f"
    # Updates and deletes on the audit log replicate (without a replica identity the source
    # would refuse them once the table is published).
    psql(source.address, source.password,
         "UPDATE public.audit_log SET what = 'logout' WHERE who IN ('user1', 'user2', 'user3'); "
         "DELETE FROM public.audit_log WHERE who = 'user20'; "
         "INSERT INTO public.audit_log (who, what) VALUES ('user501', 'login')")
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"approved": True}}}))
    wait_phase(k, "shop", {"RollbackReady"}, timeout=120, operator=operator)
    time.sleep(2)  # clients go on writing on the target
    s = stop_load(load)
    verify_on_target(k, namespace, ledger, s["acknowledged"])

    target, target_pw = pod_address(namespace, "shop-target-0"), target_password(k, "shop")
    on_source = psql(source.address, source.password, AUDIT_DIGEST).stdout.strip()
    assert on_source.startswith("500 "), on_source  # 500 + 1 - 1
    assert psql(target, target_pw, AUDIT_DIGEST).stdout.strip() == on_source
    # The target has it too, for reverse replication: an update there reaches the source.
    assert psql(target, target_pw, identity).stdout.strip() == "f"
    psql(target, target_pw, "UPDATE public.audit_log SET what = 'audited' WHERE who = 'user501'")
    wait_for(lambda: psql(source.address, source.password,
                          "SELECT what FROM public.audit_log WHERE who = 'user501'").stdout.strip()
             == "audited", timeout=30, what="the target's update on the source")


def test_five_thousand_tables_keep_the_status_small_and_every_result_in_a_configmap(
        k, namespace, operator, tmp_path):
    """A database of 5,000 tables, the application writing the whole time. Its schema takes
    more locks in one transaction than a default target has: the preflight says which setting
    to raise, in the spec's words (before, it reported 6,331 "out of shared memory" errors,
    each blaming a statement). With it set, the resource stays far under the API server's
    object limit (its verification reports were 2.1 MB each in status.engine before), keeps
    what resuming needs, and every table's result is in the database's ConfigMap, owned by
    the resource."""
    source = Source(k, namespace, 15)
    for first in range(1, 5001, 500):  # 500 a transaction: each takes locks till its end
        psql(source.address, source.password,
             f"DO $$ BEGIN FOR i IN {first}..{first + 499} LOOP "
             "EXECUTE format('CREATE TABLE public.t%s (id int PRIMARY KEY, v text)', i); "
             "EXECUTE format('INSERT INTO public.t%s VALUES (1, ''x'')', i); END LOOP; END $$")
    operator.start()
    k.apply(upgrade("probe", source, 17, checkOnly=True))

    def findings():
        return (k.get("postgresupgrade", "probe") or {}).get("status", {}).get("preflight")
    found = "\n".join(wait_for(findings, timeout=300, what="the check's findings"))
    print(found)
    assert 'set spec.target.parameters.max_locks_per_transaction: "256"' in found, found
    assert "ERROR locks (target): postgres: loading the schema in one transaction" in found
    assert "out of shared memory" in found
    assert "ERROR schema-load (postgres): not tried: the target's lock table is too small" in found
    assert "change or drop" not in found  # no statement is blamed
    k.run("delete", "postgresupgrade", "probe", "--wait=false")

    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    k.apply(upgrade("shop", source, 17, cutover={"mode": "manual", "maxPauseMs": 5000},
                    target={"version": 17,
                            "parameters": {"max_locks_per_transaction": "256"}}))
    started = time.monotonic()
    wait_phase(k, "shop", {"ReadyForCutover"}, timeout=900, operator=operator)
    ready_s = time.monotonic() - started
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"approved": True}}}))
    wait_phase(k, "shop", {"RollbackReady"}, timeout=300, operator=operator)
    s = stop_load(load)
    verify_on_target(k, namespace, ledger, s["acknowledged"])

    # The exact comparison at the switch point runs once clients are on the target.
    def compared():
        pu = k.get("postgresupgrade", "shop")
        v = pu["status"]["engine"].get("switch_point_verification", {})
        return pu if "summary" in v else None
    pu = wait_for(compared, timeout=120, what="the switch point's verification")
    size = len(json.dumps(pu))
    engine = pu["status"]["engine"]
    tables = sum(len(db["tables"]) for db in engine["databases"])
    print(f"5,000 tables: ReadyForCutover after {ready_s:.0f} s; resource {size} bytes "
          f"(status.engine {len(json.dumps(engine))}, its table list {tables} names); cutover "
          f"pause {pu['status']['lastCutover']['pauseMs']:.0f} ms")
    assert size < 256 * 1024, size
    assert tables >= 5004  # what a resumed run needs: the published tables
    cm = k.get("configmap", "shop-verification-0")
    assert cm["metadata"]["annotations"]["pgshift.dev/database"] == "postgres"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == pu["metadata"]["uid"]
    for key, file in (("verification", "before-cutover.tsv"),
                      ("switch_point_verification", "switch-point.tsv")):
        report = engine[key]
        assert "tables" not in report, key
        assert "shop-verification-<n>" in report["detail"], report
        rows = [line.split("\t") for line in cm["data"][file].splitlines()[1:]]
        assert len(rows) == report["tables_not_listed"] + len(report["tables_listed"]), key
        assert len(rows) >= 5004, (key, len(rows))
        assert {r[1] for r in rows} >= {f"t{i}" for i in range(1, 5001)}
        assert all(r[2] in ("match", "changing") for r in rows), key
        print(f"{key}: {report['summary']}; {len(cm['data'][file])} bytes in the ConfigMap")


def handover_under_load(k, namespace, operator, tmp_path, take_leader_away, leader_kubeconfig=None):
    """Two operators with --leader-elect and the load client writing: the first leads and
    migrates up to CatchingUp, then `take_leader_away(standby)` interrupts it (and waits until
    the standby leads); the standby must finish the migration with every write on the target.
    `leader_kubeconfig`: the first operator's own way to the API server."""
    source = Source(k, namespace, 15)
    standby = Operator(namespace, operator.kubeconfig, tmp_path / "work2", tmp_path / "operator2.log")
    lease = ["--leader-elect", "--lease-duration", "3"]
    if leader_kubeconfig is not None:
        operator.kubeconfig = leader_kubeconfig
    operator.start(*lease)
    wait_for(lambda: "leading: reconciling" in operator.log(), timeout=30, what="first operator leads")
    standby.start(*lease)
    try:
        ledger = tmp_path / "app.ledger"
        load = start_load(source, ledger)
        k.apply(upgrade("shop", source, 17, cutover={"maxPauseMs": 5000, "maxLagBytes": 0}))
        wait_phase(k, "shop", {"CatchingUp"}, timeout=180, operator=operator)
        take_leader_away(standby)
        k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
              json.dumps({"spec": {"cutover": {"maxLagBytes": 8 << 20}}}))
        wait_phase(k, "shop", {"RollbackReady"}, timeout=180, operator=standby)
        s = stop_load(load)
        verify_on_target(k, namespace, ledger, s["acknowledged"])
        lease_obj = k.in_namespace("pgshift-system").get("lease", "pgshift-operator")
        assert lease_obj["spec"]["holderIdentity"] in standby.log()
    finally:
        standby.stop()
        operator.stop()
        k.in_namespace("pgshift-system").run("delete", "lease", "pgshift-operator", "--ignore-not-found")
        print("---- standby log (tail) ----\n" + "\n".join(standby.log().splitlines()[-30:]))


def test_a_frozen_leader_that_wakes_after_its_lease_was_taken_writes_nothing_and_exits(
        k, namespace, operator, tmp_path):
    """The leader is frozen (SIGSTOP: a stalled node, a paused VM), not killed: the standby takes
    the Lease and carries on. When the old leader runs again it must not act on its stale
    view: its status writes are refused on its own clock (the renew deadline passed) and it
    exits at once; the standby's migration loses nothing."""
    def freeze_then_wake(standby):
        operator.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: "leading: reconciling" in standby.log(), timeout=30, what="standby leads")
        time.sleep(2)
        operator.proc.send_signal(signal.SIGCONT)
        assert operator.proc.wait(timeout=30) == 1
        assert "lost the leader Lease" in operator.log()
    handover_under_load(k, namespace, operator, tmp_path, freeze_then_wake)


def test_leader_election_one_operator_works_and_a_standby_takes_over(
        k, namespace, operator, tmp_path):
    """Two operators with --leader-elect: only the Lease holder reconciles; kill -9 it mid-way
    and the standby takes the Lease and finishes the migration."""
    def kill(standby):
        assert "starting step" not in standby.log()  # the standby does nothing
        operator.kill9()
        wait_for(lambda: "leading: reconciling" in standby.log(), timeout=30, what="standby leads")
    handover_under_load(k, namespace, operator, tmp_path, kill)


class Partition:
    """A TCP relay between one client and the API server that can drop the link the way a
    network partition does: from `cut()` on, nothing is forwarded either way and new
    connections are accepted but never answered (no RST, no FIN: the client only sees
    silence, as behind a dead switch)."""

    def __init__(self, upstream_host, upstream_port):
        import socket
        import threading
        self.upstream = (upstream_host, upstream_port)
        self.cut_event = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_event.is_set():
                self.held.append(conn)
                continue
            up = socket.create_connection(self.upstream)
            self.held += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        import select
        while True:
            if self.cut_event.is_set():
                time.sleep(0.05)  # hold both ends open, read nothing, send nothing
                continue
            ready, _, _ = select.select([a], [], [], 0.05)
            if not ready or self.cut_event.is_set():
                continue
            try:
                data = a.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    b.shutdown(1)
                except OSError:
                    pass
                return
            b.sendall(data)

    def cut(self):
        self.cut_event.set()

    def kubeconfig(self, original, path):
        import re
        text = Path(original).read_text()
        text, n = re.subn(r"(server:\s*https://)[^/\s]+", rf"\g<1>127.0.0.1:{self.port}", text)
        assert n == 1, text
        Path(path).write_text(text)
        return Path(path)


def log_time(line):
    """Seconds of the day of an operator log line (text format: HH:MM:SS.mmm first)."""
    h, m, sec = line.split()[0].split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def test_a_leader_partitioned_from_the_api_server_stops_before_the_standby_starts(
        k, namespace, operator, tmp_path):
    """The leader loses the API server (a partition: silence, not a closed connection) while
    it still reaches both PostgreSQL servers. It cannot renew its Lease, so it must stop acting
    before the standby may take over: it exits at its renew deadline (2 s of a 3 s Lease, on its
    own clock, whatever its election requests are waiting for), the standby leads only after
    that (both logs, one clock), and the standby's migration loses nothing. Only one engine
    ever acts."""
    import re
    api = re.search(r"server:\s*https://([^:/\s]+):(\d+)", Path(operator.kubeconfig).read_text())
    relay = Partition(api.group(1), int(api.group(2)))
    proxied = relay.kubeconfig(operator.kubeconfig, tmp_path / "partitioned.kubeconfig")

    def partition(standby):
        relay.cut()
        cut_at = time.monotonic()
        assert operator.proc.wait(timeout=30) == 1
        exited_after = time.monotonic() - cut_at
        wait_for(lambda: "leading: reconciling" in standby.log(), timeout=30, what="standby leads")
        print(f"partitioned leader exited {exited_after:.2f} s after the cut")
        lost = [l for l in operator.log().splitlines() if "lost the leader Lease" in l]
        assert lost, operator.log()[-3000:]
        leads = [l for l in standby.log().splitlines() if "leading: reconciling" in l]
        # The old leader was gone before the new one began (same machine, same clock).
        assert log_time(lost[-1]) < log_time(leads[0]), (lost[-1], leads[0])
    handover_under_load(k, namespace, operator, tmp_path, partition, leader_kubeconfig=proxied)


def test_service_endpoints_that_never_follow_the_selector_end_fully_switched(
        k, namespace, operator, tmp_path):
    """kube-controller-manager is frozen (SIGSTOP) just before the cutover, so the traffic
    Service's EndpointSlices never follow the selector pgshift patches. Once the selector leads
    to the target, clients may reach it at any moment: the cutover must go forward (the source
    stays fenced, the target opens), never back to a source that the Service may no longer
    lead to, and never stop in between; it says so in status.lastCutover.notes. When the
    controller runs again, clients land on the target and no acknowledged write is lost."""
    source, ledger, load = manual_shop_ready_for_cutover(k, namespace, operator, tmp_path)
    kcm = int((K8S_DIR / "run" / "kube-controller-manager.pid").read_text())
    os.kill(kcm, signal.SIGSTOP)
    try:
        k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
              json.dumps({"spec": {"cutover": {"approved": True}}}))
        wait_phase(k, "shop", {"RollbackReady"}, timeout=120, operator=operator)
        st = k.get("postgresupgrade", "shop")["status"]
        cut = st["lastCutover"]
        assert cut["succeeded"] and cut["direction"] == "forward", cut
        notes = " ".join(cut.get("notes", []))
        assert "live view had not followed" in notes, cut
        # Fully switched while the endpoints still lead to the source: the selector leads to
        # the target, the source refuses writes, the target takes them.
        svc = k.get("service", "app-db")
        assert svc["spec"]["selector"] == {"pgshift.dev/upgrade": "shop", "pgshift.dev/role": "target"}
        p = psql(source.address, source.password,
                 "INSERT INTO shop.products (sku, title, price_cents) VALUES ('x', 'y', 1)", check=False)
        assert p.returncode != 0 and "read-only" in p.stderr, p.stderr
        target = pod_address(namespace, "shop-target-0")
        psql(target, target_password(k, "shop"),
             "INSERT INTO shop.products (sku, title, price_cents) VALUES ('t', 'on target', 1)")
    finally:
        os.kill(kcm, signal.SIGCONT)
    # The controller catches up: clients through app-db reach the target and write again.
    version = wait_for(lambda: (psql(source.app, target_password(k, "shop"), "SHOW server_version_num",
                                     check=False).stdout.strip() or None), timeout=60,
                       what="app-db leads to the target")
    assert version.startswith("17"), version
    time.sleep(3)
    s = stop_load(load)
    verify_on_target(k, namespace, ledger, s["acknowledged"])
