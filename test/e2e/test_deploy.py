"""`make deploy` / `make undeploy` (deploy/default) and the operator's RBAC: everything the
operator needs is granted and nothing else, checked with the API server's own authorizer
(`kubectl auth can-i`, SelfSubjectRulesReview) and with a token of the ServiceAccount
(scripts/k8s/sa-kubeconfig.sh).

The fake kubelet runs the manager Pod (the build's operator binary in a container of its own,
docs/k8s-testing.md): the first test checks that it becomes Ready; the others check objects
and scale the Deployment to 0 (conftest.stop_operator_pods) where a running operator would
act on what they create. test_incluster.py migrates with it."""
import json
import os
import stat

import pytest

from conftest import (CRD_NAME, OPERATOR_LABEL, OPERATOR_NAMESPACE, OPERATOR_SA, Kubectl, make,
                      sa_kubeconfig, stop_operator_pods, wait_for)

SA_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"

# The contract of deploy/rbac, written out again: (api group, resource, verbs).
CLUSTER_RULES = {
    ("pgshift.dev", "postgresupgrades", frozenset({"get", "list", "watch", "update", "patch"})),
    ("pgshift.dev", "postgresupgrades/status", frozenset({"get", "update", "patch"})),
    ("pgshift.dev", "postgresupgrades/finalizers", frozenset({"update"})),
    ("apps", "statefulsets",
     frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})),
    ("apps", "deployments", frozenset({"get", "create", "patch"})),
    ("", "services", frozenset({"get", "list", "watch", "create", "update", "patch"})),
    ("", "secrets", frozenset({"get", "list", "watch", "create"})),
    ("", "configmaps", frozenset({"get", "create", "patch"})),
    # The pooler's backend Service is led by an EndpointSlice of pgshift's during a cutover,
    # its Endpoints deleted meanwhile (docs/kubernetes.md, "The pooler").
    ("discovery.k8s.io", "endpointslices",
     frozenset({"get", "list", "watch", "create", "patch", "delete"})),
    ("", "endpoints", frozenset({"delete"})),
    ("", "events", frozenset({"create", "patch"})),
}
# Granted to every authenticated user by the cluster's default roles.
DEFAULT_RULES = {
    ("authorization.k8s.io", "selfsubjectaccessreviews", frozenset({"create"})),
    ("authorization.k8s.io", "selfsubjectrulesreviews", frozenset({"create"})),
    ("authentication.k8s.io", "selfsubjectreviews", frozenset({"create"})),
}
# Leader election, in pgshift-system only: (group, resource, verbs, resourceNames).
LEASE_RULES = {
    ("coordination.k8s.io", "leases", frozenset({"create"}), frozenset()),
    ("coordination.k8s.io", "leases", frozenset({"get", "update"}),
     frozenset({"pgshift-operator"})),
}


def can_i(kubectl, verb, resource, *where):
    p = kubectl.run("auth", "can-i", verb, resource, f"--as={SA_USER}", *where, check=False)
    answer = p.stdout.strip()
    assert answer in ("yes", "no"), f"can-i {verb} {resource}: {p.stdout} {p.stderr}"
    return answer == "yes"


def rules_of_sa(kubectl, namespace):
    """The ServiceAccount's resource rules in `namespace`, flattened to one
    (group, resource, verbs, resourceNames) per group x resource."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    # --validate=false: client-side validation would list CRDs as the ServiceAccount.
    p = kubectl.run("create", "-f", "-", "-o", "json", "--validate=false", f"--as={SA_USER}",
                    input=review)
    status = json.loads(p.stdout)["status"]
    assert not status.get("incomplete"), status
    rules = set()
    for r in status["resourceRules"]:
        for group in r["apiGroups"]:
            for resource in r["resources"]:
                rules.add((group, resource, frozenset(r["verbs"]),
                           frozenset(r.get("resourceNames", []))))
    return rules


def plain(rules):
    return {(g, r, v, frozenset()) for g, r, v in rules}


def ready_pods(k):
    return [p for p in k.json("get", "pods", "-l", OPERATOR_LABEL)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in p.get("status", {}).get("conditions", []))]


def test_make_deploy_creates_the_operator_objects(kubectl):
    # Left at 0 replicas by an earlier test: make deploy applies the manifest's 1 again.
    p = make("deploy", kubectl=kubectl)
    assert p.returncode == 0, f"make deploy:\n{p.stdout}\n{p.stderr}"
    k = kubectl.in_namespace(OPERATOR_NAMESPACE)

    assert kubectl.get("crd", CRD_NAME) is not None
    assert k.get("serviceaccount", OPERATOR_SA) is not None
    crb = kubectl.json("get", "clusterrolebinding", "pgshift-operator")
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": "pgshift-operator"}
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR_SA,
                                "namespace": OPERATOR_NAMESPACE}]
    assert k.get("rolebinding", "pgshift-operator-leader-election")["roleRef"]["name"] == \
        "pgshift-operator-leader-election"

    dep = k.json("get", "deployment", "pgshift-operator")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR_SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    [c] = pod["containers"]
    assert c["image"] == "ghcr.io/pgshift/pgshift-operator:v0.1.0"
    assert c["args"] == ["--leader-elect", "--metrics-addr=:8080", "--health-addr=:8081",
                         "--log-format=json"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health",
                                             "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health",
                                              "scheme": "HTTP"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/pgshift-operator"]]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    svc = k.json("get", "service", "pgshift-operator-metrics")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "metrics")]

    # The Deployment is reconciled by the real controllers, and its Pod runs and is Ready
    # (its /readyz probe answers): the operator in cluster mode.
    wait_for(lambda: k.json("get", "replicaset", "-l", OPERATOR_LABEL)["items"],
             what="the operator's ReplicaSet")
    [pod] = wait_for(lambda: ready_pods(k), timeout=90, interval=0.5, what="the operator Pod Ready")
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/pgshift/pgshift-operator:v0.1.0"
    assert pod["status"]["phase"] == "Running"
    stop_operator_pods(kubectl)


def test_make_deploy_with_another_image(kubectl):
    p = make("deploy", "IMG=registry.local:5000/team/pgshift-operator:dev-1", kubectl=kubectl)
    assert p.returncode == 0, f"make deploy IMG=...:\n{p.stdout}\n{p.stderr}"
    dep = kubectl.in_namespace(OPERATOR_NAMESPACE).json("get", "deployment", "pgshift-operator")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.local:5000/team/pgshift-operator:dev-1"
    p = make("deploy", kubectl=kubectl)
    assert p.returncode == 0, p.stderr
    dep = kubectl.in_namespace(OPERATOR_NAMESPACE).json("get", "deployment", "pgshift-operator")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "ghcr.io/pgshift/pgshift-operator:v0.1.0"
    stop_operator_pods(kubectl)


ALLOWED = [  # (verb, resource) in every namespace (-A: the ClusterRoleBinding)
    ("get", "postgresupgrades.pgshift.dev"), ("list", "postgresupgrades.pgshift.dev"),
    ("watch", "postgresupgrades.pgshift.dev"), ("update", "postgresupgrades.pgshift.dev"),
    ("patch", "postgresupgrades.pgshift.dev"),
    ("get", "postgresupgrades.pgshift.dev/status"),
    ("update", "postgresupgrades.pgshift.dev/status"),
    ("patch", "postgresupgrades.pgshift.dev/status"),
    ("update", "postgresupgrades.pgshift.dev/finalizers"),
    *[(v, "statefulsets.apps") for v in
      ("get", "list", "watch", "create", "update", "patch", "delete")],
    *[(v, "services") for v in ("get", "list", "watch", "create", "update", "patch")],
    *[(v, "secrets") for v in ("get", "list", "watch", "create")],
    *[(v, "configmaps") for v in ("get", "create", "patch")],
    *[(v, "endpointslices.discovery.k8s.io") for v in
      ("get", "list", "watch", "create", "patch", "delete")],
    ("delete", "endpoints"),
    ("create", "events"), ("patch", "events"),
]
DENIED = [  # (verb, resource, where...)
    ("delete", "secrets", "-A"), ("update", "secrets", "-A"), ("patch", "secrets", "-A"),
    ("delete", "services", "-A"), ("delete", "postgresupgrades.pgshift.dev", "-A"),
    ("create", "postgresupgrades.pgshift.dev", "-A"),
    ("get", "pods", "-A"), ("list", "pods", "-A"), ("create", "pods", "-A"),
    ("delete", "pods", "-A"), ("create", "pods/exec", "-A"),
    ("list", "configmaps", "-A"), ("delete", "configmaps", "-A"),
    ("create", "persistentvolumeclaims", "-A"),
    ("delete", "persistentvolumeclaims", "-A"), ("create", "serviceaccounts/token", "-A"),
    ("list", "events", "-A"), ("create", "events.events.k8s.io", "-A"),
    ("update", "endpointslices.discovery.k8s.io", "-A"),
    ("create", "endpoints", "-A"), ("update", "endpoints", "-A"), ("patch", "endpoints", "-A"),
    ("get", "nodes"), ("list", "namespaces"), ("create", "namespaces"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "-A"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "users"), ("impersonate", "serviceaccounts", "-A"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("*", "*", "-A"),
    # Leases only in the operator's namespace, and only its own one for reads and renewals.
    ("get", "leases.coordination.k8s.io", "-n", "default"),
    ("create", "leases.coordination.k8s.io", "-n", "kube-system"),
    ("get", "leases.coordination.k8s.io/some-other-lease", "-n", OPERATOR_NAMESPACE),
    ("update", "leases.coordination.k8s.io/some-other-lease", "-n", OPERATOR_NAMESPACE),
    ("list", "leases.coordination.k8s.io", "-n", OPERATOR_NAMESPACE),
    ("delete", "leases.coordination.k8s.io/pgshift-operator", "-n", OPERATOR_NAMESPACE),
]


def test_rbac_grants_what_the_operator_needs(kubectl):
    assert make("deploy", kubectl=kubectl).returncode == 0
    stop_operator_pods(kubectl)
    missing = [f"{v} {r}" for v, r in ALLOWED if not can_i(kubectl, v, r, "-A")]
    for v in ("create", "get", "update"):
        name = "" if v == "create" else "/pgshift-operator"
        if not can_i(kubectl, v, f"leases.coordination.k8s.io{name}", "-n", OPERATOR_NAMESPACE):
            missing.append(f"{v} leases{name} in {OPERATOR_NAMESPACE}")
    assert missing == []


def test_rbac_grants_nothing_else(kubectl, namespace):
    assert make("deploy", kubectl=kubectl).returncode == 0
    stop_operator_pods(kubectl)
    granted = [" ".join(d) for d in DENIED if can_i(kubectl, *d)]
    assert granted == []
    # The authorizer's whole list of the ServiceAccount's rules, in some namespace and in its
    # own: exactly the contract, plus what every authenticated user may do.
    assert rules_of_sa(kubectl, namespace) == plain(CLUSTER_RULES | DEFAULT_RULES)
    assert rules_of_sa(kubectl, OPERATOR_NAMESPACE) == \
        plain(CLUSTER_RULES | DEFAULT_RULES) | LEASE_RULES


def test_service_account_kubeconfig(kubectl, namespace, tmp_path):
    assert make("deploy", kubectl=kubectl).returncode == 0
    stop_operator_pods(kubectl)
    path = sa_kubeconfig(tmp_path / "operator.kubeconfig")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    as_sa = Kubectl(kubeconfig=str(path))
    who = as_sa.json("auth", "whoami")
    assert who["status"]["userInfo"]["username"] == SA_USER

    # What the operator does, for real where it leaves nothing behind in shared places,
    # as a server-side dry run elsewhere.
    mine = as_sa.in_namespace(namespace)
    assert mine.json("get", "postgresupgrades")["items"] == []
    assert as_sa.run("get", "postgresupgrades", "-A").returncode == 0
    assert as_sa.run("get", "endpointslices", "-A").returncode == 0
    mine.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "target-secret"},
                 "stringData": {"password": "x"}})
    mine.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "target"},
                 "spec": {"selector": {"app": "t"}, "ports": [{"port": 5432}]}})
    mine.run("patch", "service", "target", "--type=merge",
             "-p", json.dumps({"spec": {"selector": {"app": "flipped"}}}))
    # A Lease left by an operator run (the leader election test) would make the create fail.
    kubectl.run("-n", OPERATOR_NAMESPACE, "delete", "lease", "pgshift-operator", "--ignore-not-found")
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "pgshift-operator", "namespace": OPERATOR_NAMESPACE},
             "spec": {"holderIdentity": "e2e-dry-run"}}
    assert as_sa.run("create", "--dry-run=server", "-f", "-", input=lease).returncode == 0

    # And what it must not do is refused by the API server.
    for args in (["delete", "secret", "target-secret"], ["delete", "service", "target"],
                 ["get", "pods"], ["get", "configmaps"]):
        p = mine.run(*args, check=False)
        assert p.returncode != 0 and "Forbidden" in p.stderr, f"{args}: {p.stdout} {p.stderr}"
    p = as_sa.run("get", "nodes", check=False)
    assert p.returncode != 0 and "forbidden" in p.stderr.lower()


def test_make_undeploy_removes_them_and_keeps_the_crd(kubectl, namespace):
    # Deletes pgshift-system and with it the ServiceAccount: tokens made for it stop working.
    # In one pytest run that is harmless (operator_deployed deploys again, each operator test
    # gets a new token), but an operator test running at the same time in another process fails.
    assert make("deploy", kubectl=kubectl).returncode == 0
    stop_operator_pods(kubectl)  # no operator puts its finalizer on the resource below
    k = kubectl.in_namespace(namespace)
    k.apply({"apiVersion": "pgshift.dev/v1alpha1", "kind": "PostgresUpgrade",
             "metadata": {"name": "kept"},
             "spec": {"source": {"service": "db", "credentialsSecret": {"name": "s"}},
                      "target": {"version": 17}, "traffic": {"service": "app"}}})

    p = make("undeploy", kubectl=kubectl)
    assert p.returncode == 0, f"make undeploy:\n{p.stdout}\n{p.stderr}"
    assert kubectl.get("namespace", OPERATOR_NAMESPACE) is None  # kubectl waited for it
    assert kubectl.get("clusterrole", "pgshift-operator") is None
    assert kubectl.get("clusterrolebinding", "pgshift-operator") is None
    assert not can_i(kubectl, "list", "postgresupgrades.pgshift.dev", "-A")
    # Users' resources stay: only `make uninstall` removes the CRD.
    assert kubectl.get("crd", CRD_NAME) is not None
    assert k.get("postgresupgrade", "kept") is not None

    p = make("undeploy", kubectl=kubectl)  # nothing left to remove: still fine
    assert p.returncode == 0, p.stderr
