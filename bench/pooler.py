#!/usr/bin/env python3
"""How long clients stall at a Kubernetes cutover through the operator's PgBouncer pooler.

Runs the e2e test test/e2e/test_pooler.py::test_cutover_and_rollback_through_the_pooler_... on
the test cluster `--runs` times. Each run is both directions (15 -> 17 and 17 -> 15), each a
cutover and a rollback under the load client (500 writes/s plus reads, 8 clients, through the
pooler's Service): 4 switches per run. Per switch it records what the test prints: the engine's
pause (status.lastCutover.pauseMs), the clients' stall (the longest operation scheduled inside
the attempt, from the load's LEDGER.slow.csv), the run's longest operation and the load's worst
operation in the seconds away from the switch (the machine's noise); and from the operator's
log the pooler switch line (EndpointSlice write, watch, probes per replica).

Target: clients' stall <= 50 ms in every switch, zero failed client operations (the test itself
fails on any error or lost write). Needs `make build k8s-tools k8s-up`. Python 3 stdlib only.

  python3 bench/pooler.py --runs 3            # 12 switches, about 4 minutes
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = ("test/e2e/test_pooler.py::"
        "test_cutover_and_rollback_through_the_pooler_lose_nothing_and_fail_no_client")
TARGET_MS = 50.0

LINE = re.compile(
    r"^(?P<src>\d+)->(?P<dst>\d+) (?P<kind>rollback )?through the pooler: pause (?P<pause>[\d.]+) ms, "
    r"clients' stall (?P<stall>[\d.]+) ms, longest client operation (?P<longest>[\d.]+) ms "
    r"\(other seconds: (?P<noise>[\d.]+) ms\); load (?P<load>\{.*\})$")
SWITCH = re.compile(r"pooler switch to the (target|source): (.*)$")


def environment():
    cache = ROOT / ".cache"
    env = dict(os.environ)
    env.update(PGSHIFT_K8S_DIR=str(cache / "k8s"), KUBECONFIG=str(cache / "k8s" / "kubeconfig"),
               PGSHIFT_BIN=str(ROOT / "build" / "pgshift"),
               PGSHIFT_OPERATOR_BIN=str(ROOT / "build" / "pgshift-operator"),
               PYTHONPATH=str(cache / "python"))
    return env


def one_run(env, basetemp):
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                        f"--basetemp={basetemp}", TEST],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    switches = []
    for line in p.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            switches.append({
                "direction": f"{m['src']}->{m['dst']}",
                "kind": "rollback" if m["kind"] else "cutover",
                "pause_ms": float(m["pause"]), "stall_ms": float(m["stall"]),
                "longest_ms": float(m["longest"]), "noise_ms": float(m["noise"]),
                "errors": int(json.loads(m["load"].replace("'", '"'))["errors"]),
            })
    moves = []
    for log in sorted(Path(basetemp).glob("*/operator.log")):
        if log.parent.is_symlink():  # pytest's "...current" link to the last test's folder
            continue
        moves += [m.group(2) for m in map(SWITCH.search, log.read_text().splitlines()) if m]
    return p.returncode, switches, moves, p.stdout[-3000:] + p.stderr[-3000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" /
                                         time.strftime("pooler-%Y-%m-%dT%H%M.json", time.gmtime())))
    args = ap.parse_args()
    env = environment()
    if not Path(env["KUBECONFIG"]).exists():
        sys.exit("no test cluster: run `make k8s-tools k8s-up` first")
    runs, failed = [], 0
    for i in range(args.runs):
        basetemp = ROOT / ".cache" / "bench" / f"pooler-{i}"
        basetemp.parent.mkdir(parents=True, exist_ok=True)
        rc, switches, moves, tail = one_run(env, basetemp)
        runs.append({"rc": rc, "switches": switches, "pooler_switch_lines": moves})
        for s in switches:
            print(f"run {i + 1}: {s['direction']} {s['kind']:8} pause {s['pause_ms']:6.1f} ms, "
                  f"stall {s['stall_ms']:6.1f} ms, longest {s['longest_ms']:6.1f} ms, "
                  f"noise {s['noise_ms']:6.1f} ms, errors {s['errors']}")
        if rc != 0 or len(switches) != 4:
            failed += 1
            print(f"run {i + 1}: the test failed (rc {rc}, {len(switches)} switches seen):\n{tail}")
    every = [s for r in runs for s in r["switches"]]
    if not every:
        sys.exit("no switch measured")
    stalls = [s["stall_ms"] for s in every]
    summary = {
        "switches": len(every),
        "stall_ms": {"min": min(stalls), "median": statistics.median(stalls), "max": max(stalls)},
        "pause_ms_median": statistics.median(s["pause_ms"] for s in every),
        "noise_ms_median": statistics.median(s["noise_ms"] for s in every),
        "within_target": sum(1 for v in stalls if v <= TARGET_MS),
        "errors": sum(s["errors"] for s in every),
        "failed_runs": failed,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    ok = failed == 0 and summary["errors"] == 0 and summary["within_target"] == len(every)
    print(f"{len(every)} switches: clients' stall {summary['stall_ms']['min']:.1f}-"
          f"{summary['stall_ms']['max']:.1f} ms, median {summary['stall_ms']['median']:.1f}; "
          f"engine pause median {summary['pause_ms_median']:.1f} ms; noise median "
          f"{summary['noise_ms_median']:.1f} ms; {summary['within_target']} within "
          f"{TARGET_MS:.0f} ms; {summary['errors']} failed client operations")
    print(f"clients' stall <= {TARGET_MS:.0f} ms in every switch, zero errors: "
          f"{'PASS' if ok else 'FAIL'} ({args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
