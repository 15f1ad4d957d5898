"""One operator carries ten PostgresUpgrades at once, in ten namespaces, five upgrades
(15 -> 17) and five downgrades (17 -> 15), each with the application writing through its
Service the whole time. Each ends in RollbackReady with every acknowledged write on its
target. The test records the operator's resident memory idle and at its peak, and the API
requests per second it makes at steady state (its own count, pgshift_operator_kube_api_
requests_total), once every migration waits in RollbackReady."""
import threading
import time
import uuid

from conftest import sa_kubeconfig, wait_for
from test_operator import (Operator, Source, http_get, phase, start_load, stop_load, upgrade,
                           verify_on_target)

N = 10
RATE_EACH = 50  # operations per second per application, 20% reads


def api_requests(metrics_url):
    code, text = http_get(metrics_url)
    assert code == 200
    out = {}
    for line in text.splitlines():
        if line.startswith("pgshift_operator_kube_api_requests_total{"):
            method = line.split('method="', 1)[1].split('"', 1)[0]
            out[method] = float(line.rsplit(" ", 1)[1])
    return out


def in_parallel(fn, items):
    results, errors = [None] * len(items), []

    def run(i, item):
        try:
            results[i] = fn(item)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i, it)) for i, it in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_ten_upgrades_at_once_up_and_down_lose_nothing(kubectl, operator_deployed, tmp_path):
    batch = uuid.uuid4().hex[:6]
    namespaces = [f"e2e-many-{batch}-{i}" for i in range(N)]
    pairs = [(15, 17) if i % 2 == 0 else (17, 15) for i in range(N)]
    for ns in namespaces:
        kubectl.run("create", "namespace", ns)
    op = None
    try:
        ks = [kubectl.in_namespace(ns) for ns in namespaces]
        for k in ks:
            wait_for(lambda: k.get("serviceaccount", "default"), timeout=30,
                     what="ServiceAccount default")
        sources = in_parallel(lambda i: Source(ks[i], namespaces[i], pairs[i][0]), range(N))
        # Every namespace, only this batch's resources.
        op = Operator("", sa_kubeconfig(tmp_path / "operator.kubeconfig"), tmp_path / "work",
                      tmp_path / "operator.log")
        op.start("--selector", f"pgshift.dev/e2e-batch={batch}")
        metrics = op.metrics_url()
        time.sleep(3)
        idle_kb = op.memory_kb("VmRSS")
        ledgers = [tmp_path / f"app-{i}.ledger" for i in range(N)]
        loads = [start_load(sources[i], ledgers[i], rate=RATE_EACH) for i in range(N)]
        time.sleep(2)
        started = time.monotonic()
        for i, k in enumerate(ks):
            body = upgrade("shop", sources[i], pairs[i][1])
            body["metadata"]["labels"] = {"pgshift.dev/e2e-batch": batch}
            k.apply(body)

        def all_done():
            if op.proc.poll() is not None:
                raise AssertionError(f"operator exited:\n{op.log()[-4000:]}")
            phases = [phase(k, "shop") for k in ks]
            assert "Failed" not in phases, phases
            return all(p == "RollbackReady" for p in phases)
        wait_for(all_done, timeout=1200, interval=1, what="ten migrations in RollbackReady")
        took_s = time.monotonic() - started
        peak_kb = op.memory_kb("VmHWM")

        # Steady state: every resource idle in RollbackReady (reverse lag read every 4 s).
        time.sleep(5)
        before, t0 = api_requests(metrics), time.monotonic()
        time.sleep(30)
        after, t1 = api_requests(metrics), time.monotonic()
        per_s = {m: (after.get(m, 0) - before.get(m, 0)) / (t1 - t0) for m in after}
        total_per_s = sum(per_s.values())

        summaries = [stop_load(p) for p in loads]
        for i, k in enumerate(ks):
            st = k.get("postgresupgrade", "shop")["status"]
            assert (st["sourceVersion"], st["targetVersion"]) == pairs[i]
            assert st["lastCutover"]["succeeded"] is True, st["lastCutover"]
            assert int(summaries[i]["acknowledged"]) > 500, summaries[i]
            verify_on_target(k, namespaces[i], ledgers[i], summaries[i]["acknowledged"])
        pauses = sorted(k.get("postgresupgrade", "shop")["status"]["lastCutover"]["pauseMs"]
                        for k in ks)
        print(f"ten migrations (5 x 15->17, 5 x 17->15) in RollbackReady after {took_s:.0f} s; "
              f"operator RSS idle {idle_kb} kB, peak {peak_kb} kB; API requests at steady "
              f"state {total_per_s:.2f}/s ({', '.join(f'{m} {v:.2f}' for m, v in sorted(per_s.items()))}); "
              f"cutover pauses {pauses[0]:.0f}-{pauses[-1]:.0f} ms")
        assert peak_kb < 200 * 1024, peak_kb
        # Idle after cutover, each resource costs a few reads every few seconds, not a storm.
        assert total_per_s < 10 * N, per_s
    finally:
        if op is not None:
            op.stop()
            print("---- operator log (tail) ----\n" + "\n".join(op.log().splitlines()[-40:]))
        for ns in namespaces:
            kubectl.run("delete", "namespace", ns, "--wait=false", "--ignore-not-found",
                        check=False)
