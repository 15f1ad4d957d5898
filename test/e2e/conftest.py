"""Shared fixtures for the Kubernetes end-to-end tests (test/e2e).

They run against the test control plane of docs/k8s-testing.md (real etcd, kube-apiserver,
kube-controller-manager, the fake kubelet), which must be up: `make k8s-up`, or
`make test-k8s`, which runs them. Nothing is skipped when it is down: the tests fail, saying
so.

Environment (set by scripts/k8s/test.sh; the defaults suit a checkout with `make k8s-up`):
  PGSHIFT_K8S_DIR        the control plane's folder (kubeconfig, bin/kubectl)  .cache/k8s
  KUBECONFIG             cluster to use                        $PGSHIFT_K8S_DIR/kubeconfig
  PGSHIFT_BIN            the pgshift CLI                                      build/pgshift
  PGSHIFT_OPERATOR_BIN   the operator                                build/pgshift-operator

Every test gets a fresh namespace (`namespace` fixture, `e2e-<test>-<random>`), deleted
afterwards. The CRD and the operator's namespace, RBAC and Deployment are cluster-wide: the
`crd_installed` and `operator_deployed` fixtures apply them and leave them in place (the
Deployment scaled to 0: the fake kubelet would run its Pod, test_incluster.py does).
test_deploy.py's last test runs `make undeploy`, which invalidates the ServiceAccount's tokens:
do not run it beside another process's operator tests.
"""
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PGSHIFT_CACHE", ROOT / ".cache"))
K8S_DIR = Path(os.environ.get("PGSHIFT_K8S_DIR", CACHE / "k8s"))
KUBECONFIG = os.environ.get("KUBECONFIG") or str(K8S_DIR / "kubeconfig")
KUBECTL = str(K8S_DIR / "bin" / "kubectl")
PGSHIFT_BIN = os.environ.get("PGSHIFT_BIN", str(ROOT / "build" / "pgshift"))
OPERATOR_BIN = os.environ.get("PGSHIFT_OPERATOR_BIN", str(ROOT / "build" / "pgshift-operator"))

CRD_NAME = "postgresupgrades.pgshift.dev"
OPERATOR_NAMESPACE = "pgshift-system"
OPERATOR_SA = "pgshift-operator"


def wait_for(predicate, timeout=30, interval=0.2, what="condition"):
    """Calls `predicate` until it returns something truthy, and returns that."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Kubectl:
    """kubectl bound to one kubeconfig (and optionally a namespace)."""

    def __init__(self, kubeconfig=KUBECONFIG, namespace=None, binary=KUBECTL):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.binary = binary
        self.env = dict(os.environ, KUBECONFIG=kubeconfig)

    def in_namespace(self, namespace):
        return Kubectl(self.kubeconfig, namespace, self.binary)

    def run(self, *args, input=None, check=True, timeout=60):
        """Runs kubectl; `input` (str, dict or list of dicts) goes to stdin as JSON/YAML."""
        if isinstance(input, (dict, list)):
            input = json.dumps(input)
        cmd = [self.binary, *args]
        if self.namespace:
            cmd += ["-n", self.namespace]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, input=input,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n"
                                 f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def json(self, *args, check=True):
        """`kubectl <args> -o json`, parsed (None when not found and check is False)."""
        p = self.run(*args, "-o", "json", check=check)
        return json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None

    def get(self, kind, name=None):
        """The object, or None when it does not exist."""
        args = ["get", kind] + ([name] if name else [])
        p = self.run(*args, "-o", "json", "--ignore-not-found", check=False)
        if p.returncode != 0:
            raise AssertionError(f"kubectl get {kind} {name or ''}: {p.stderr}")
        return json.loads(p.stdout) if p.stdout.strip() else None

    def apply(self, obj, check=True):
        return self.run("apply", "-f", "-", input=obj, check=check)

    def create(self, obj, check=True):
        return self.run("create", "-f", "-", input=obj, check=check)


def make(target, *variables, kubectl=None, timeout=300):
    """Runs `make <target>` in the checkout with kubectl and KUBECONFIG of the tests."""
    k = kubectl or Kubectl()
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), target,
                           f"KUBECTL={k.binary}", *variables],
                          env=k.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def kubectl():
    """kubectl for the test control plane; fails at once, with the fix, when it is down."""
    if not Path(KUBECTL).exists():
        pytest.fail(f"{KUBECTL} missing: run `make k8s-tools` (or scripts/k8s/build.sh kubectl)")
    if not Path(KUBECONFIG).exists():
        pytest.fail(f"{KUBECONFIG} missing: start the test control plane with `make k8s-up`")
    k = Kubectl()
    p = k.run("get", "--raw", "/readyz", check=False, timeout=20)
    if p.returncode != 0 or p.stdout.strip() != "ok":
        pytest.fail(f"the API server of {KUBECONFIG} is not ready (`make k8s-up`): {p.stderr}")
    return k


def _namespace_name(request):
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"e2e-{test[:40].rstrip('-')}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(kubectl, request):
    """A fresh namespace for one test, deleted (without waiting) when it ends."""
    name = _namespace_name(request)
    kubectl.run("create", "namespace", name)
    # The default ServiceAccount appears asynchronously; Pods need it.
    wait_for(lambda: kubectl.in_namespace(name).get("serviceaccount", "default"),
             timeout=30, what=f"ServiceAccount default in {name}")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def k(kubectl, namespace):
    """kubectl bound to the test's namespace."""
    return kubectl.in_namespace(namespace)


@pytest.fixture(scope="session")
def crd_installed(kubectl):
    """`make install`: the PostgresUpgrade CRD, Established."""
    p = make("install", kubectl=kubectl)
    assert p.returncode == 0, f"make install failed:\n{p.stdout}\n{p.stderr}"
    return CRD_NAME


OPERATOR_LABEL = "app.kubernetes.io/name=pgshift-operator"


def stop_operator_pods(kubectl):
    """The fake kubelet runs the Deployment's Pod (the build's operator binary, in cluster
    mode: test_incluster.py). Tests that run their own operator outside the cluster, or that
    must not have one acting at all, scale the Deployment to 0 and wait until its Pods are
    gone (the Deployment and ReplicaSet stay real)."""
    k = kubectl.in_namespace(OPERATOR_NAMESPACE)
    k.run("scale", "deployment", "pgshift-operator", "--replicas=0")
    wait_for(lambda: not k.json("get", "pods", "-l", OPERATOR_LABEL)["items"], timeout=120,
             what="the operator Deployment's Pods gone")


@pytest.fixture
def operator_deployed(kubectl):
    """`make deploy` (CRD, namespace, RBAC, Deployment), then the Deployment scaled to 0
    (stop_operator_pods): the tests that use this run the operator themselves. Left in
    place: later tests (and runs) reuse it."""
    p = make("deploy", kubectl=kubectl)
    assert p.returncode == 0, f"make deploy failed:\n{p.stdout}\n{p.stderr}"
    stop_operator_pods(kubectl)
    return OPERATOR_NAMESPACE


def sa_kubeconfig(path, namespace=OPERATOR_NAMESPACE, service_account=OPERATOR_SA):
    """Writes a kubeconfig acting as the ServiceAccount (scripts/k8s/sa-kubeconfig.sh) and
    returns its path."""
    p = subprocess.run([str(ROOT / "scripts" / "k8s" / "sa-kubeconfig.sh"), namespace,
                        service_account, str(path)],
                       env=dict(os.environ, KUBECONFIG=KUBECONFIG, KUBECTL=KUBECTL), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, f"sa-kubeconfig.sh failed:\n{p.stdout}\n{p.stderr}"
    return Path(path)
