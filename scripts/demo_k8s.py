#!/usr/bin/env python3
"""`make demo-k8s`: the Kubernetes story on the test cluster (real etcd, kube-apiserver,
kube-controller-manager; the fake kubelet runs real PostgreSQL for postgres:N Pods).

A shop runs on PostgreSQL 17 (a StatefulSet) behind the Service `app-db` its clients use; the
load client writes and reads through that Service the whole time. A batch job writes while the
operator copies, so the lag has something to drain. A PostgresUpgrade moves it to 18: the live
lines show the phase, the lag and the operator's estimate of when sync can end, then the
cutover; the verdict checks every acknowledged write on the new server, and an HTML report of
the run is written. The operator is the build's binary, run as the ServiceAccount `make deploy`
creates (its RBAC is all it has), as the e2e tests run it.

DEMO_SIZE (default 1GB) sizes the order history; DEMO_RATE the client's operations/s."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "e2e"))

from conftest import (CACHE, K8S_DIR, PGSHIFT_BIN, Kubectl,  # noqa: E402
                      make, sa_kubeconfig, stop_operator_pods, wait_for)
import test_operator as e2e  # noqa: E402

OUT = CACHE / "demo-k8s"
NS = "shop"


def size_bytes(text):
    units = {"": 1, "B": 1, "KB": 1 << 10, "K": 1 << 10, "MB": 1 << 20, "M": 1 << 20,
             "GB": 1 << 30, "G": 1 << 30}
    t = text.strip().upper()
    digits = "".join(c for c in t if c.isdigit())
    unit = t[len(digits):]
    if not digits or unit not in units:
        sys.exit(f"DEMO_SIZE must be a size such as 200MB or 2GB, not {text!r}")
    return int(digits) * units[unit]


def step(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main():
    size = os.environ.get("DEMO_SIZE", "1GB")
    rows = size_bytes(size) // 370  # one order_history row with its index, on disk
    e2e.RATE = int(os.environ.get("DEMO_RATE", "250"))
    started = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)

    kubectl = Kubectl()
    step("The operator's objects: make deploy (CRD, RBAC, Deployment; the demo runs the binary)")
    p = make("deploy", kubectl=kubectl)
    if p.returncode != 0:
        sys.exit(f"make deploy failed:\n{p.stdout}\n{p.stderr}")
    stop_operator_pods(kubectl)  # the demo runs the binary itself
    if kubectl.get("namespace", NS):
        # An earlier demo's: its resource keeps a finalizer that only a running operator
        # removes; this cluster is the demo's own, so drop it and the namespace.
        k_old = kubectl.in_namespace(NS)
        for pu in (k_old.get("postgresupgrades") or {}).get("items", []):
            k_old.run("patch", "pgu", pu["metadata"]["name"], "--type", "merge",
                      "-p", '{"metadata":{"finalizers":null}}', check=False)
        kubectl.run("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=300)
    kubectl.run("create", "namespace", NS)
    wait_for(lambda: kubectl.in_namespace(NS).get("serviceaccount", "default"), timeout=30,
             what="the namespace's default ServiceAccount")
    k = kubectl.in_namespace(NS)

    step("The shop: PostgreSQL 17 (StatefulSet pg17), Services pg17 and app-db")
    source = e2e.Source(k, NS, 17)
    print(f"pod pg17-0 at {source.address}; clients use Service app-db ({source.app})")
    step(f"Order history: {rows} rows (DEMO_SIZE={size})")
    t = time.time()
    e2e.psql(source.address, source.password,
             "CREATE TABLE shop.order_history (id bigint PRIMARY KEY, placed_at timestamptz NOT NULL, "
             "customer_id int NOT NULL, total_cents bigint NOT NULL, note text NOT NULL); "
             "INSERT INTO shop.order_history SELECT g, now() - g * interval '1 second', g % 5000, "
             f"g % 100000, repeat(md5(g::text), 8) FROM generate_series(1, {rows}) g")
    e2e.psql(source.address, source.password, "VACUUM ANALYZE shop.order_history")
    print(e2e.psql(source.address, source.password,
                   "SELECT pg_size_pretty(pg_database_size('postgres'))").stdout.strip(),
          f"loaded in {time.time() - t:.0f} s")

    step("pgshift-operator (as ServiceAccount pgshift-system/pgshift-operator)")
    operator = e2e.Operator(NS, sa_kubeconfig(OUT / "operator.kubeconfig"), OUT / "work",
                            OUT / "operator.log").start()
    print(f"log: {OUT / 'operator.log'}")

    step(f"Load client: {e2e.RATE} operations/s through Service app-db, 4 connections")
    ledger = OUT / "load.ledger"
    load = e2e.start_load(source, ledger, duration=7200)
    time.sleep(2)

    step("kubectl apply: PostgresUpgrade shop, PostgreSQL 17 -> 18")
    k.apply(e2e.upgrade("shop", source, 18, cutover={"maxPauseMs": 5000}))
    batch = None
    last = None
    print(f"{'TIME':>6}  {'PHASE':<16} {'TABLES':>7} {'COPIED':>9} {'LAG':>10} {'READY-IN':>8}  MESSAGE")
    t0 = time.time()
    while True:
        if operator.proc.poll() is not None:
            sys.exit(f"the operator exited:\n{operator.log()[-3000:]}")
        st = (k.get("postgresupgrade", "shop") or {}).get("status", {})
        ph = st.get("phase", "")
        if ph == "InitialCopy" and batch is None:
            # The nightly batch, while pgshift copies: its rows wait in the replication slot.
            batch = subprocess.Popen(
                [e2e.PSQL, "-X", "-q", "-d", e2e.dsn(source.address), "-c",
                 "INSERT INTO shop.order_history SELECT g, now(), g % 5000, g % 100000, "
                 f"repeat(md5(g::text), 8) FROM generate_series({rows + 1}, {rows + rows // 2}) g"],
                env=dict(os.environ, PGPASSWORD=source.password), stdout=subprocess.DEVNULL)
            print(f"        batch job: archiving {rows // 2} more orders on the source during the copy")
        mb = lambda v: f"{v / 1048576:.0f} MB" if isinstance(v, (int, float)) else "-"
        tables = f"{st.get('tablesSynced', '-')}/{st.get('tablesTotal', '-')}"
        ready_in = st.get("readyInSeconds")
        line = (f"{ph:<16} {tables:>7} {mb(st.get('bytesCopied')):>9} {mb(st.get('lagBytes')):>10} "
                f"{(str(ready_in) + ' s') if ready_in is not None else '-':>8}  "
                f"{(st.get('message') or '')[:70]}")
        if line != last:
            print(f"{time.time() - t0:5.0f}s  {line}", flush=True)
            last = line
        if ph in ("RollbackReady", "Failed"):
            break
        if time.time() - t0 > 1800:
            sys.exit("no cutover within 30 minutes; see " + str(OUT / "operator.log"))
        time.sleep(1)
    if batch is not None:
        batch.wait(timeout=600)
    time.sleep(3)  # clients go on writing, on PostgreSQL 18 now
    s = e2e.stop_load(load, OUT / "load.err")
    st = k.get("postgresupgrade", "shop")["status"]
    if st.get("phase") != "RollbackReady":
        sys.exit(f"the upgrade failed: {st.get('message')}")

    step("Verdict")
    cut = st["lastCutover"]
    print(f"cutover: {cut['direction']}, {'succeeded' if cut['succeeded'] else 'undone'}, "
          f"clients held {cut['pauseMs']:.0f} ms (fence to the Service leading only to the target)")
    print(f"load client: {s.get('acknowledged')} writes acknowledged, {s.get('errors', '?')} failed "
          "operations (closed connections and read-only errors while the Service flips)")
    app = e2e.psql(source.app, e2e.target_password(k, "shop"), "SELECT version()").stdout.strip()
    print(f"app-db now leads to: {app[:60]}")
    target = e2e.pod_address(NS, "shop-target-0")
    v = subprocess.run([PGSHIFT_BIN, "load", "verify", "--dsn", e2e.dsn(target), "--ledger", str(ledger)],
                       env=dict(os.environ, PGPASSWORD=e2e.target_password(k, "shop")),
                       capture_output=True, text=True, timeout=300)
    print(v.stdout.strip())
    if v.returncode != 0:
        sys.exit(f"load verify failed: {v.stderr}")

    # The operator keeps the engine's memory in status.engine and its history in its work
    # folder: together they are what `pgshift report` reads.
    report_state = OUT / "state"
    report_state.mkdir()
    (report_state / "state.json").write_text(json.dumps(st["engine"], indent=1))
    hist = OUT / "work" / NS / "shop" / "history.jsonl"
    if hist.exists():
        shutil.copy(hist, report_state / "history.jsonl")
    r = subprocess.run([PGSHIFT_BIN, "report", "--state", str(report_state), "--load", str(ledger),
                        "-o", str(OUT / "report.html")], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"(no HTML report: {r.stderr.strip()})")

    print(f"\nThe whole story took {time.time() - started:.0f} s.")
    kc = f"KUBECONFIG={K8S_DIR / 'kubeconfig'} {K8S_DIR / 'bin' / 'kubectl'}"
    print(f"The operator keeps running (pid {operator.proc.pid}, log {OUT / 'operator.log'}).")
    print("Roll back (clients return to PostgreSQL 17 with every write made on 18):\n"
          f"  {kc} -n {NS} patch pgu shop --type merge -p '{{\"spec\":{{\"action\":\"Rollback\"}}}}'\n"
          f"  {kc} -n {NS} get pgu -w")
    print("Keep 18 and remove pgshift's replication objects:\n"
          f"  {kc} -n {NS} patch pgu shop --type merge -p '{{\"spec\":{{\"action\":\"Finish\"}}}}'")
    print(f"Tear down: kill {operator.proc.pid}; make k8s-down   (the cluster and everything in it)")
    if (OUT / "report.html").exists():
        print(f"\nReport (open it in a browser; it loads nothing from the network): {OUT / 'report.html'}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
