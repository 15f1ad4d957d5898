"""The fake kubelet runs PgBouncer Pods (image edoburu/pgbouncer:TAG, configuration from a
Secret mounted at /etc/pgbouncer) as real PgBouncer processes (docs/k8s-testing.md).

A PostgreSQL 17 StatefulSet behind a Service, a Secret with pgbouncer.ini (transaction
pooling, SCRAM with the server's own secret in the userlist, a plain-text admin user) whose
[databases] entry names the Service by its cluster DNS name, a Deployment of two PgBouncer
replicas and a Service in front: queries go through the pooler's Service, each replica's
admin console answers, PAUSE holds a query until RESUME, and images fakelet cannot run are
marked Failed. It also measures how soon the Service proxy sends new connections to the new
endpoints after a Service's selector changes.
"""
import base64
import os
import subprocess
import time
import uuid

from conftest import wait_for
from test_operator import PSQL, pod_address, psql, service_address

IMAGE = "edoburu/pgbouncer:v1.24.1-p1"
ADMIN_PASSWORD = uuid.uuid4().hex


def pods_ready(k, selector, n):
    pods = k.json("get", "pods", "-l", selector)["items"]
    ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                    for c in p.get("status", {}).get("conditions", []))]
    return ready if len(ready) == n else None


def run_psql(address, user, password, db, *commands, timeout=30):
    host, port = address.rsplit(":", 1)
    args = [PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1",
            "-d", f"host={host} port={port} user={user} dbname={db} connect_timeout=5"]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args, env=dict(os.environ, PGPASSWORD=password), capture_output=True,
                          text=True, timeout=timeout)


def postgres_17(k):
    """A postgres:17 StatefulSet with Service `db`; returns (pod address, superuser password)."""
    password = uuid.uuid4().hex
    labels = {"app": "db"}
    k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-admin"},
             "stringData": {"password": password}})
    k.apply({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
             "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                          "name": "postgres", "image": "postgres:17",
                          "env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                              "name": "db-admin", "key": "password"}}}]}]}},
                      "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                          "accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": "1Gi"}}}}]}})
    k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
             "spec": {"selector": labels, "ports": [{"name": "postgres", "port": 5432}]}})
    wait_for(lambda: pods_ready(k, "app=db", 1), timeout=120, what="db-0 ready")
    address = wait_for(lambda: pod_address(k.namespace, "db-0"), what="db-0 address")
    wait_for(lambda: psql(address, password, "SELECT 1", check=False).returncode == 0,
             timeout=60, what="db-0 accepts connections")
    return address, password


def pgbouncer_files(databases, scram_secret, admin_password, default_pool_size=5):
    """pgbouncer.ini and userlist.txt of a PgBouncer as a shop writes one: `databases` its
    [databases] lines, transaction pooling, SCRAM pass-through for role app (its secret from
    pg_authid), admin user pgbadmin."""
    ini = f"""\
;; written by the e2e tests
[databases]
{databases}

[pgbouncer]
listen_addr = *
listen_port = 5432
unix_socket_dir = /tmp
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
admin_users = pgbadmin
pool_mode = transaction
max_client_conn = 200
default_pool_size = {default_pool_size}
ignore_startup_parameters = extra_float_digits,options
"""
    userlist = f'"app" "{scram_secret}"\n"pgbadmin" "{admin_password}"\n'
    return {"pgbouncer.ini": ini, "userlist.txt": userlist}


def pooler_secret(namespace, scram_secret):
    files = pgbouncer_files(f"appdb = host=db.{namespace}.svc port=5432 dbname=postgres",
                            scram_secret, ADMIN_PASSWORD)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pool-pooler"},
            "stringData": files}


def pooler_pod_spec(image=IMAGE, mount=True, secret="pool-pooler"):
    c = {"name": "pgbouncer", "image": image,
         "ports": [{"name": "pgbouncer", "containerPort": 5432}],
         "readinessProbe": {"tcpSocket": {"port": 5432}}}
    spec = {"containers": [c]}
    if mount:
        c["volumeMounts"] = [{"name": "config", "mountPath": "/etc/pgbouncer", "readOnly": True}]
        spec["volumes"] = [{"name": "config", "secret": {"secretName": secret}}]
    return spec


def test_pgbouncer_pods_pool_through_their_service(k, namespace):
    db, db_password = postgres_17(k)
    app_password = uuid.uuid4().hex
    psql(db, db_password, f"CREATE ROLE app LOGIN PASSWORD '{app_password}'; "
                          "CREATE TABLE items (id int PRIMARY KEY); GRANT ALL ON items TO app")
    scram = psql(db, db_password, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").stdout.strip()
    assert scram.startswith("SCRAM-SHA-256$"), scram

    labels = {"app": "pool"}
    # The Deployment first: its Pods wait for the Secret, as with a kubelet's FailedMount.
    k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pool"},
             "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels}, "spec": pooler_pod_spec()}}})
    k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pool"},
             "spec": {"selector": labels, "ports": [{"name": "pgbouncer", "port": 5432,
                                                     "targetPort": "pgbouncer"}]}})
    time.sleep(2)
    waiting = k.json("get", "pods", "-l", "app=pool")["items"]
    assert len(waiting) == 2 and all(p["status"].get("phase") == "Pending" for p in waiting), waiting
    k.apply(pooler_secret(namespace, scram))
    pods = wait_for(lambda: pods_ready(k, "app=pool", 2), timeout=60, what="two PgBouncer Pods ready")
    for p in pods:
        assert p["status"]["phase"] == "Running"
        assert p["status"]["podIP"].startswith("10.88.0.")
        assert p["status"]["containerStatuses"][0]["ready"] is True

    # Queries through the pooler's Service: SCRAM with the server's secret, both ways.
    pool = wait_for(lambda: service_address(namespace, "pool"), what="pool proxy port")
    for i in range(20):
        r = run_psql(pool, "app", app_password, "appdb", f"INSERT INTO items VALUES ({i})")
        assert r.returncode == 0, r.stderr
    r = run_psql(pool, "app", app_password, "appdb", "SELECT count(*), current_user, version() FROM items")
    assert r.returncode == 0, r.stderr
    count, user, version = r.stdout.strip().split("|")
    assert (count, user) == ("20", "app") and "PostgreSQL 17" in version, r.stdout
    assert run_psql(pool, "app", "wrong", "appdb", "SELECT 1").returncode != 0

    # Each replica's admin console, on its own Pod address (pods.json).
    addresses = [pod_address(namespace, p["metadata"]["name"]) for p in pods]
    assert len(set(addresses)) == 2 and all(a.endswith(":5432") for a in addresses), addresses
    for a in addresses:
        r = run_psql(a, "pgbadmin", ADMIN_PASSWORD, "pgbouncer", "SHOW VERSION")
        assert r.returncode == 0 and "PgBouncer" in r.stdout, r.stderr
        r = run_psql(a, "pgbadmin", ADMIN_PASSWORD, "pgbouncer", "SHOW DATABASES")
        assert r.returncode == 0, r.stderr
        rows = {line.split("|")[0]: line.split("|") for line in r.stdout.splitlines()}
        # host= names the Service; fakelet (as root) keeps its qualified name, which the
        # process resolves through the cluster hosts file to the proxy of db:5432.
        assert rows["appdb"][1:3] == [f"db.{namespace}.svc", "5432"], rows
        r = run_psql(a, "app", app_password, "appdb", "SELECT count(*) FROM items")
        assert r.stdout.strip() == "20", r.stderr

    # PAUSE holds a new query until RESUME.
    a = addresses[0]
    assert run_psql(a, "pgbadmin", ADMIN_PASSWORD, "pgbouncer", "PAUSE appdb").returncode == 0
    host, port = a.rsplit(":", 1)
    held = subprocess.Popen([PSQL, "-X", "-At", "-d", f"host={host} port={port} user=app dbname=appdb",
                             "-c", "SELECT count(*) FROM items"],
                            env=dict(os.environ, PGPASSWORD=app_password),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert held.poll() is None, "the query went through a paused pool"
    resumed_at = time.monotonic()
    assert run_psql(a, "pgbadmin", ADMIN_PASSWORD, "pgbouncer", "RESUME appdb").returncode == 0
    out, err = held.communicate(timeout=20)
    assert held.returncode == 0 and out.strip() == "20", err
    print(f"held query answered {time.monotonic() - resumed_at:.3f} s after RESUME")

    # Deleting a Pod stops its PgBouncer; the Deployment's replacement runs and is used.
    old = pods[0]["metadata"]["name"]
    k.run("delete", "pod", old, "--wait=true", timeout=60)
    with socket_refused(a):
        pass
    wait_for(lambda: pods_ready(k, "app=pool", 2), timeout=60, what="the replacement PgBouncer ready")
    r = run_psql(pool, "app", app_password, "appdb", "SELECT count(*) FROM items")
    assert r.returncode == 0 and r.stdout.strip() == "20", r.stderr


class socket_refused:
    """Asserts (on entry) that nothing listens on the address any more."""

    def __init__(self, address):
        import socket
        host, port = address.rsplit(":", 1)
        s = socket.socket()
        s.settimeout(2)
        try:
            refused = s.connect_ex((host, int(port))) != 0
        finally:
            s.close()
        assert refused, f"{address} still accepts connections after its Pod was deleted"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def pod_status(k, name):
    return (k.get("pod", name) or {}).get("status", {})


def test_pgbouncer_images_fakelet_cannot_run_are_failed(k):
    # Another PgBouncer image, and edoburu's image without a mounted configuration (its
    # generation from environment variables is not reproduced).
    k.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other"},
             "spec": {"restartPolicy": "Never", **pooler_pod_spec("bitnami/pgbouncer:1.24.1", mount=False)}})
    k.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "env-config"},
             "spec": {"restartPolicy": "Never", **pooler_pod_spec(mount=False)}})
    st = wait_for(lambda: pod_status(k, "other").get("phase") == "Failed" and pod_status(k, "other"),
                  what="bitnami/pgbouncer Failed")
    assert st["reason"] == "UnsupportedImage" and "bitnami/pgbouncer:1.24.1" in st["message"], st
    assert "podIP" not in st
    st = wait_for(lambda: pod_status(k, "env-config").get("phase") == "Failed" and pod_status(k, "env-config"),
                  what="edoburu/pgbouncer without its ini Failed")
    assert st["reason"] == "Unsupported" and "/etc/pgbouncer/pgbouncer.ini" in st["message"], st


def side(address, db_password):
    """Where a new connection to `address` lands: "pgbouncer" (its admin console answers),
    "postgres" (the server's superuser logs in) or None."""
    if run_psql(address, "pgbadmin", ADMIN_PASSWORD, "pgbouncer", "SHOW VERSION", timeout=10).returncode == 0:
        return "pgbouncer"
    if run_psql(address, "postgres", db_password, "postgres", "SELECT 1", timeout=10).returncode == 0:
        return "postgres"
    return None


def test_service_proxy_follows_a_selector_change(k, namespace):
    """A Service flipped from a PostgreSQL Pod to PgBouncer Pods and back: the time from the
    selector patch to the first new connection that lands on the new side (the proxy picks
    an endpoint from the EndpointSlices for each new connection; the EndpointSlice controller
    of kube-controller-manager rewrites them on the selector change)."""
    db, db_password = postgres_17(k)
    k.apply(pooler_secret(namespace, "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA"))
    labels = {"app": "pool"}
    k.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pool"},
             "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": labels}, "spec": pooler_pod_spec()}}})
    wait_for(lambda: pods_ready(k, "app=pool", 2), timeout=60, what="PgBouncer Pods ready")
    k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flip"},
             "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432, "targetPort": 5432}]}})
    flip = wait_for(lambda: service_address(namespace, "flip"), what="flip proxy port")
    wait_for(lambda: side(flip, db_password) == "postgres", what="flip leads to db")
    delays, stale = [], 0
    for _ in range(3):
        for wanted in ("pgbouncer", "postgres"):
            before = time.monotonic()
            k.run("patch", "service", "flip", "--type=merge", "-p",
                  '{"spec":{"selector":{"app":"%s"}}}' % ("pool" if wanted == "pgbouncer" else "db"))
            patched = time.monotonic()
            while (got := side(flip, db_password)) != wanted:
                stale += 1
                assert time.monotonic() - patched < 30, f"still {got} 30 s after the patch"
            delays.append((time.monotonic() - patched, patched - before))
            # Every later connection lands there too (no stale endpoint left in rotation).
            for _ in range(4):
                assert side(flip, db_password) == wanted
    cost = probe_cost(flip, db_password)
    print("selector switch -> first new connection on the new endpoints, after kubectl patch "
          "returned: " + ", ".join(f"{d * 1000:.0f} ms" for d, _ in delays) +
          f" (one probe connection costs ~{cost:.0f} ms; kubectl patch itself took "
          f"{max(p for _, p in delays) * 1000:.0f} ms at most; {stale} probes saw the old side)")
    assert max(d for d, _ in delays) < 5, delays


def probe_cost(address, db_password):
    t = time.monotonic()
    side(address, db_password)
    return (time.monotonic() - t) * 1000
