"""pgshift-operator running in the cluster as `make deploy` installs it.

The fake kubelet runs the manager Pod's image as the build's operator binary in a container
of its own (docs/k8s-testing.md): the Pod's ServiceAccount token from the TokenRequest API
(bound to the Pod) with ca.crt and namespace at /var/run/secrets/kubernetes.io/serviceaccount,
KUBERNETES_SERVICE_HOST/PORT, the Pod's name as hostname, Services by their cluster DNS names
(`--connect service-dns`, the default) and PostgreSQL 18's client tools on PATH. Nothing is
passed to it but what the Deployment says.

A PostgresUpgrade 15 -> 17 of a StatefulSet under load, its initial copy slowed by
spec.copy.rate: the operator's process is killed (kill -9) mid-copy, then its Pod is deleted
(--grace-period=0 --force) mid-catch-up; the container restarted, then the Deployment's new
Pod, resume; the migration reaches RollbackReady with every acknowledged write on the target
and the servers' subscriptions connected by Service names.
The API server's audit log shows the operator's requests were made as the ServiceAccount
with tokens bound to those Pods.
"""
import json
import os
import signal
import time

import pytest

from conftest import K8S_DIR, OPERATOR_NAMESPACE, OPERATOR_SA, make, wait_for
from test_operator import (Source, big_table, phase, pod_address, psql, start_load, stop_load,
                           target_password, upgrade, verify_on_target, wait_phase)

LABEL = "app.kubernetes.io/name=pgshift-operator"
AUDIT_LOG = K8S_DIR / "logs" / "audit.log"


def operator_pods(kubectl):
    k = kubectl.in_namespace(OPERATOR_NAMESPACE)
    return [p for p in k.json("get", "pods", "-l", LABEL)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def ready_operator_pod(kubectl, other_than=()):
    """The one Ready operator Pod (not one of `other_than`), or None."""
    for p in operator_pods(kubectl):
        if p["metadata"]["name"] in other_than:
            continue
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in p.get("status", {}).get("conditions", [])):
            return p
    return None


def pod_entry(pod):
    return json.loads((K8S_DIR / "pods.json").read_text()).get(
        f"{OPERATOR_NAMESPACE}/{pod['metadata']['name']}", {})


def container_log(pod):
    folder = (K8S_DIR / "state" / "fakelet" / "pods" /
              f"{OPERATOR_NAMESPACE}_{pod['metadata']['name']}_{pod['metadata']['uid']}")
    path = folder / "container.log"
    return path.read_text(errors="replace") if path.exists() else ""


def audit_events(pod_name):
    """The audit log's events for requests made with a token bound to Pod `pod_name`."""
    out = []
    if not AUDIT_LOG.exists():
        return out
    for line in AUDIT_LOG.read_text(errors="replace").splitlines():
        e = json.loads(line)
        extra = e.get("user", {}).get("extra", {})
        if extra.get("authentication.kubernetes.io/pod-name") == [pod_name]:
            out.append(e)
    return out


@pytest.fixture
def in_cluster_operator(kubectl):
    """`make deploy` with the default IMG, its Pod Ready; scaled to 0 afterwards, so that the
    tests that run their own operator outside the cluster are alone."""
    k = kubectl.in_namespace(OPERATOR_NAMESPACE)
    p = make("deploy", kubectl=kubectl)
    assert p.returncode == 0, f"make deploy:\n{p.stdout}\n{p.stderr}"
    k.run("scale", "deployment", "pgshift-operator", "--replicas=1")
    pod = wait_for(lambda: ready_operator_pod(kubectl), timeout=90, interval=0.5,
                   what="the operator Pod Ready")
    yield pod
    for p in operator_pods(kubectl):
        print(f"---- {p['metadata']['name']} log (tail) ----\n" +
              "\n".join(container_log(p).splitlines()[-40:]))
    k.run("scale", "deployment", "pgshift-operator", "--replicas=0")
    wait_for(lambda: not k.json("get", "pods", "-l", LABEL)["items"], timeout=120,
             what="operator Pods gone")


def test_the_deployed_operator_runs_in_cluster_and_survives_kills(kubectl, k, namespace, in_cluster_operator, tmp_path):
    pod = in_cluster_operator
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    assert spec["containers"][0]["image"] == "ghcr.io/pgshift/pgshift-operator:v0.1.0"
    st = pod["status"]
    assert st["phase"] == "Running" and st["podIP"].startswith("10.88.0."), st
    # The process: the build's binary, as the image's user, in a root of its own.
    pid = int(pod_entry(pod)["pid"])
    assert "/usr/local/bin/pgshift-operator" in os.readlink(f"/proc/{pid}/exe")  # bound there
    uid = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")][0]
    assert uid == "65532"
    root = f"/proc/{pid}/root"
    assert os.stat(root + "/").st_dev != os.stat("/").st_dev  # its root is a tmpfs of its own
    sa = root + "/var/run/secrets/kubernetes.io/serviceaccount"
    assert open(sa + "/namespace").read() == OPERATOR_NAMESPACE
    assert open(sa + "/ca.crt").read().startswith("-----BEGIN CERTIFICATE-----")
    assert not os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
    assert os.access(root + "/opt/pgclient/bin/pg_dump", os.X_OK)
    log = container_log(pod)
    assert "pgshift-operator starting" in log, log[-2000:]
    # In-cluster configuration: the API server's address from KUBERNETES_SERVICE_HOST/PORT.
    assert '"https://127.0.0.1:' in log, log[-2000:]

    # It leads, under its Pod's name (the hostname), with its bound token.
    lease = wait_for(lambda: (kubectl.in_namespace(OPERATOR_NAMESPACE).get("lease", "pgshift-operator") or {})
                     .get("spec", {}).get("holderIdentity", "").startswith(name + "_"),
                     timeout=60, what=f"the Lease held by {name}")
    assert lease
    events = wait_for(lambda: audit_events(name), timeout=30, what="audit events of the operator Pod")
    users = {e["user"]["username"] for e in events}
    assert users == {f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"}, users
    assert {e["user"]["extra"]["authentication.kubernetes.io/pod-uid"][0] for e in events} == {pod["metadata"]["uid"]}

    # A migration it carries through a kill -9 mid-copy and a forced Pod deletion mid-catch-up.
    source = Source(k, namespace, 15)
    big_table(source, 300_000)
    ledger = tmp_path / "app.ledger"
    load = start_load(source, ledger)
    time.sleep(1)
    # maxLagBytes 0 keeps it catching up while the load writes; the copy rate makes the copy
    # long enough to be interrupted.
    k.apply(upgrade("shop", source, 17, copy={"rate": "8Mi"},
                    cutover={"maxPauseMs": 5000, "maxLagBytes": 0}))
    wait_phase(k, "shop", {"InitialCopy"}, timeout=120)
    time.sleep(3)
    assert phase(k, "shop") == "InitialCopy"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def restarted():
        p = kubectl.in_namespace(OPERATOR_NAMESPACE).get("pod", name)
        cs = p["status"]["containerStatuses"][0]
        new_pid = pod_entry(p).get("pid")
        return cs["restartCount"] >= 1 and cs["ready"] and new_pid and int(new_pid) != pid and p
    pod = wait_for(restarted, timeout=60, interval=0.5, what="the container restarted and Ready")
    print(f"kill -9 mid-copy: container Ready again {time.monotonic() - killed_at:.1f} s later")
    assert phase(k, "shop") == "InitialCopy"

    wait_phase(k, "shop", {"CatchingUp"}, timeout=300)
    time.sleep(2)
    kubectl.in_namespace(OPERATOR_NAMESPACE).run("delete", "pod", name, "--grace-period=0", "--force")
    deleted_at = time.monotonic()
    new = wait_for(lambda: ready_operator_pod(kubectl, other_than=(name,)), timeout=120, interval=0.5,
                   what="the Deployment's new operator Pod Ready")
    print(f"forced deletion mid-catch-up: new Pod {new['metadata']['name']} Ready "
          f"{time.monotonic() - deleted_at:.1f} s later")
    assert phase(k, "shop") == "CatchingUp"
    wait_for(lambda: (kubectl.in_namespace(OPERATOR_NAMESPACE).get("lease", "pgshift-operator") or {})
             .get("spec", {}).get("holderIdentity", "").startswith(new["metadata"]["name"] + "_"),
             timeout=60, what="the new Pod leads")
    k.run("patch", "postgresupgrade", "shop", "--type", "merge", "-p",
          json.dumps({"spec": {"cutover": {"maxLagBytes": 8 << 20}}}))
    wait_phase(k, "shop", {"RollbackReady"}, timeout=300)
    time.sleep(2)
    s = stop_load(load)
    verify_on_target(k, namespace, ledger, s["acknowledged"])
    target = pod_address(namespace, "shop-target-0")
    assert psql(target, target_password(k, "shop"),
                "SELECT count(*) FROM public.bulk").stdout.strip() == "300000"
    # The servers reach each other by Service DNS names too (the operator's DSNs, which
    # subscriptions are given): the source's reverse subscription names the target's Service
    # and its worker is connected (fakelet's cluster hosts file, docs/k8s-testing.md).
    source_pod = pod_address(namespace, f"{source.name}-0")
    wait_for(lambda: psql(source_pod, source.password,
                          "SELECT count(*) FROM pg_stat_subscription s JOIN pg_subscription p "
                          "ON p.oid = s.subid WHERE s.pid IS NOT NULL "
                          "AND p.subconninfo ~ $$host='?[a-z0-9.-]+[.]svc\\M$$").stdout.strip() != "0",
             timeout=30, what="the source's subscription connected by the target's Service name")
    # The new Pod's requests too were its own bound token's.
    assert audit_events(new["metadata"]["name"])
    log = container_log(new)
    assert "resuming" in log or "starting step" in log, log[-3000:]
