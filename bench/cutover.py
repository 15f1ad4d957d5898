#!/usr/bin/env python3
"""Cutover benchmark: how long clients stall when pgshift switches a live database.

For each write rate and run it builds a fresh lab (PostgreSQL 15 source with the demo shop data,
an empty PostgreSQL 17 target, PgBouncer in front of the source), starts the load client through
PgBouncer, waits a few seconds, runs `pgshift upgrade --cutover auto --verify count`, lets the load
run on a few seconds after the upgrade, and records:

  - the cutover pause (ms) printed by `upgrade`, and its per-step breakdown from `status --json`;
  - the load client's max latency (open-loop: measured from each operation's due time, so the
    stall at cutover shows up in it), its percentiles and errors;
  - `load verify` against the target (must be missing=0 mismatched=0).

The lab is torn down (`pgshift lab down`, folder deleted) after every run.

Stdlib only.  Usage:  python3 bench/cutover.py --runs 5
"""
import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PGSHIFT_CACHE", ROOT / ".cache"))
APP_SCHEMA = ROOT / "scripts" / "demo" / "app-schema.sql"
CLIENTS = {500: 4, 2000: 8}
TARGETS_MS = {500: 50.0, 2000: 100.0}


def psql_bin():
    ours = CACHE / "pgclient" / "bin" / "psql"
    return str(ours) if ours.exists() else "psql"


def parse_kv(line):
    return {k: v for k, v in (p.split("=", 1) for p in line.split() if "=" in p)}


def num(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return list(os.getloadavg())


def uptime_line():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: %.2f, %.2f, %.2f" % tuple(loadavg())


def utc_ms(ts):
    """'2025-11-21T23:54:07.123Z' (or without fraction) -> unix ms, None when unparseable."""
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?", ts or "")
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    t = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=dt.timezone.utc)
    return t.timestamp() * 1000 + (float("0." + frac) * 1000 if frac else 0)


class Lab:
    def __init__(self, binary, path):
        self.bin = binary
        self.dir = path
        self.env = dict(os.environ, PGSHIFT_LAB_DIR=str(path), PGSHIFT_HOME=str(ROOT))

    def run(self, *args, check=True, timeout=300):
        p = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"pgshift {' '.join(args)} failed ({p.returncode}):\n"
                               f"stdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}")
        return p

    def popen(self, *args):
        return subprocess.Popen([self.bin, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def last_line(self, *args):
        return self.run(*args).stdout.strip().splitlines()[-1]


def series_split(series_csv, load_start_ms, cut_start_ms, pause_ms):
    """Max latency in the seconds around the cutover vs. everywhere else in the run."""
    rows = []
    try:
        lines = Path(series_csv).read_text().strip().splitlines()[1:]
        rows = [[num(x) for x in ln.split(",")] for ln in lines]
    except OSError:
        return None
    if not rows or load_start_ms is None or cut_start_ms is None:
        return None
    first = int((cut_start_ms - load_start_ms) // 1000)
    last = int((cut_start_ms + pause_ms - load_start_ms) // 1000) + 1
    window = [r for r in rows if first - 1 <= r[0] <= last]
    rest = [r for r in rows if not first - 1 <= r[0] <= last]
    return {"cutover_second": first,
            "window_seconds": [first - 1, last],
            "max_latency_ms_cutover_window": max((r[5] for r in window), default=None),
            "max_latency_ms_elsewhere": max((r[5] for r in rest), default=None),
            "worst_second": max(rows, key=lambda r: r[5])[0],
            "errors_by_second": {str(r[0]): r[4] for r in rows if r[4]}}


def one_run(args, rate, idx, load_duration):
    clients = CLIENTS.get(rate, 4)
    path = Path(args.lab_root) / f"r{rate}-{idx}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    os.chmod(path, 0o755)
    lab = Lab(args.bin, path)
    res = {"rate": rate, "run": idx, "clients": clients, "lab_dir": str(path),
           "loadavg_before": loadavg(), "load_duration_s": load_duration}
    load = None
    try:
        t0 = time.monotonic()
        src = lab.last_line("lab", "start", "src", "--version", str(args.source_version), *server_settings(args))
        dst = lab.last_line("lab", "start", "dst", "--version", str(args.target_version), *server_settings(args))
        app = lab.last_line("lab", "router", "pb", "--backend", "src", "--kind", "pgbouncer")
        router = {i["name"]: i for i in json.loads(lab.run("lab", "list", "--json").stdout)}["pb"]
        subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-f",
                        str(APP_SCHEMA)], check=True, capture_output=True, timeout=120)
        res["setup_s"] = round(time.monotonic() - t0, 2)

        state = path / "state"
        ledger = path / "load.ledger"
        load = lab.popen("load", "run", "--dsn", app, "--rate", str(rate), "--reads", "0",
                         "--clients", str(clients), "--duration", str(load_duration),
                         "--ledger", str(ledger))
        time.sleep(args.pre)
        if load.poll() is not None:
            raise RuntimeError(f"load client exited early: {load.communicate()[1][-2000:]}")
        t1 = time.monotonic()
        up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                     "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                     "--router-config", router["config_file"], "--cutover", "auto",
                     "--verify", "count", check=False, timeout=600)
        res["upgrade_s"] = round(time.monotonic() - t1, 2)
        res["upgrade_rc"] = up.returncode
        # The load must still be running when the upgrade returns, or it missed part of it.
        res["load_covered_upgrade"] = load.poll() is None
        remaining = load_duration - (time.monotonic() - t1) - args.pre
        res["load_tail_s"] = round(max(0.0, remaining), 2)
        out, err = load.communicate(timeout=load_duration + 120)
        load_rc = load.returncode
        load = None
        if up.returncode != 0:
            raise RuntimeError(f"upgrade failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-4000:]}")
        lines = up.stdout.strip().splitlines()
        res["upgrade_phase"] = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("phase ")), None)
        res["pause_ms"] = float(parse_kv(lines[-1])["cutover_pause_ms"])

        if load_rc != 0:
            raise RuntimeError(f"load client failed ({load_rc}): {err[-2000:]}")
        ll = out.strip().splitlines()
        s = {k: num(v) for k, v in {**parse_kv(ll[0]), **parse_kv(ll[1] if len(ll) > 1 else "")}.items()}
        res["load"] = s
        res["max_latency_ms"] = float(s["max_latency_ms"])
        res["errors"] = int(s["errors"])
        summary = json.loads(Path(str(ledger) + ".summary.json").read_text())

        st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
        cut = [c for c in st.get("cutovers", []) if c.get("succeeded")]
        res["cutover_attempts"] = len(st.get("cutovers", []))
        c = cut[-1] if cut else (st.get("cutovers") or [{}])[-1]
        res["steps_ms"] = {x["step"]: x["ms"] for x in c.get("steps", [])}
        res["steps_order"] = [x["step"] for x in c.get("steps", [])]
        res["status_pause_ms"] = c.get("pause_ms")
        res["cutover_started_at"] = c.get("started_at")
        res["phase"] = st.get("phase")
        res["verification_clean"] = (st.get("verification") or {}).get("clean")
        res["phase_times"] = st.get("phase_times")
        res["latency_split"] = series_split(str(ledger) + ".series.csv",
                                            summary.get("started_unix_ms"),
                                            utc_ms(c.get("started_at")), res["pause_ms"])

        v = lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger), check=False)
        vv = {k: num(x) for k, x in parse_kv(v.stdout.strip().splitlines()[-1] if v.stdout.strip() else "").items()}
        res["verify"] = vv
        res["verify_ok"] = (v.returncode == 0 and vv.get("missing") == 0 and vv.get("mismatched") == 0
                            and vv.get("acknowledged") == s.get("acknowledged"))
        res["ok"] = bool(res["verify_ok"] and res["load_covered_upgrade"] and res["phase"] == "RollbackReady")
    except Exception as e:  # a failed run is data too: record it and go on
        res["ok"] = False
        res["error"] = str(e)[-6000:]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.communicate()
        res["loadavg_after"] = loadavg()
        if args.keep:
            res["kept"] = True
        else:
            try:
                lab.run("lab", "down", check=False, timeout=180)
            except (OSError, subprocess.SubprocessError) as e:
                res["teardown_error"] = str(e)
            shutil.rmtree(path, ignore_errors=True)
    return res


def control_run(args, rate, duration):
    """The same load on the same kind of lab for the same time, without an upgrade: the client's
    max latency this machine gives with no cutover at all (its background noise)."""
    clients = CLIENTS.get(rate, 4)
    path = Path(args.lab_root) / f"control-r{rate}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    os.chmod(path, 0o755)
    lab = Lab(args.bin, path)
    res = {"rate": rate, "clients": clients, "load_duration_s": duration, "loadavg_before": loadavg()}
    try:
        src = lab.last_line("lab", "start", "src", "--version", str(args.source_version), *server_settings(args))
        app = lab.last_line("lab", "router", "pb", "--backend", "src", "--kind", "pgbouncer")
        subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-f",
                        str(APP_SCHEMA)], check=True, capture_output=True, timeout=120)
        ledger = path / "load.ledger"
        p = lab.run("load", "run", "--dsn", app, "--rate", str(rate), "--reads", "0", "--clients",
                    str(clients), "--duration", str(duration), "--ledger", str(ledger),
                    timeout=duration + 120)
        ll = p.stdout.strip().splitlines()
        s = {k: num(v) for k, v in {**parse_kv(ll[0]), **parse_kv(ll[1] if len(ll) > 1 else "")}.items()}
        res["load"] = s
        res["max_latency_ms"] = float(s["max_latency_ms"])
        res["errors"] = int(s["errors"])
        res["ok"] = True
    except Exception as e:
        res["ok"] = False
        res["error"] = str(e)[-4000:]
    finally:
        res["loadavg_after"] = loadavg()
        try:
            lab.run("lab", "down", check=False, timeout=180)
        except (OSError, subprocess.SubprocessError) as e:
            res["teardown_error"] = str(e)
        shutil.rmtree(path, ignore_errors=True)
    return res


def fmt(v, nd=1):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def run_line(r):
    if "pause_ms" not in r or "max_latency_ms" not in r:
        return f"rate={r['rate']} run={r['run']} FAILED: {r.get('error', '?').splitlines()[0] if r.get('error') else '?'}"
    steps = " ".join(f"{k}={v:.1f}" for k, v in sorted(r["steps_ms"].items(), key=lambda kv: -kv[1])[:4])
    ls = r.get("latency_split") or {}
    v = r.get("verify", {})
    return (f"rate={r['rate']} run={r['run']} pause_ms={r['pause_ms']:.1f} "
            f"client_max_ms={r['max_latency_ms']:.1f} "
            f"(cutover_window={fmt(ls.get('max_latency_ms_cutover_window'))} "
            f"elsewhere={fmt(ls.get('max_latency_ms_elsewhere'))}) "
            f"p99_ms={r['load'].get('p99_ms')} errors={r['errors']} "
            f"acknowledged={r['load'].get('acknowledged')} missing={v.get('missing')} "
            f"mismatched={v.get('mismatched')} upgrade_s={r.get('upgrade_s')} "
            f"loadavg={r['loadavg_before'][0]:.2f}->{r['loadavg_after'][0]:.2f} top_steps[{steps}]"
            + ("" if r["ok"] else f" NOT-OK:{r.get('error', '').splitlines()[0] if r.get('error') else 'checks'}"))


def aggregate(rate, runs):
    good = [r for r in runs if "pause_ms" in r and "max_latency_ms" in r]
    pauses = [r["pause_ms"] for r in good]
    lat = [r["max_latency_ms"] for r in good]
    errors = sum(r.get("errors", 0) for r in good)
    steps = {}
    for r in good:
        for k, v in r["steps_ms"].items():
            steps.setdefault(k, []).append(v)
    order = good[0]["steps_order"] if good else []
    target = TARGETS_MS.get(rate)
    all_ok = len(good) == len(runs) and all(r["ok"] for r in runs)
    passed = bool(good) and all_ok and errors == 0 and max(lat) <= target
    return {"rate": rate, "runs": len(runs), "runs_measured": len(good),
            "runs_ok": sum(1 for r in runs if r["ok"]),
            "pause_ms_median": statistics.median(pauses) if pauses else None,
            "pause_ms_max": max(pauses) if pauses else None,
            "client_max_latency_ms_median": statistics.median(lat) if lat else None,
            "client_max_latency_ms_max": max(lat) if lat else None,
            "runs_within_target": sum(1 for x in lat if x <= target),
            "errors_total": errors,
            "verify_all_clean": all(r.get("verify_ok") for r in runs),
            "steps_ms_median": {k: statistics.median(steps[k]) for k in order if k in steps},
            "steps_ms_max": {k: max(steps[k]) for k in order if k in steps},
            "target_max_stall_ms": target,
            "target": "PASS" if passed else "FAIL"}


def server_settings(args):
    """--sync-commit off (the default here) takes the VM's fsync stalls out of the clients'
    latency, so that what remains is the cutover; the cutover's marker commits with
    synchronous_commit = on whatever the server's default."""
    return [] if args.sync_commit == "on" else ["--set", "synchronous_commit = off"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rates", default="500,2000", help="writes/s, comma separated (default 500,2000)")
    ap.add_argument("--sync-commit", choices=["on", "off"], default="off",
                    help="synchronous_commit of the lab servers (default off: see server_settings)")
    ap.add_argument("--bin", default=os.environ.get("PGSHIFT_BIN", str(ROOT / "build" / "pgshift")))
    ap.add_argument("--lab-root", default=str(CACHE / "bench"))
    ap.add_argument("--source-version", type=int, default=15)
    ap.add_argument("--target-version", type=int, default=17)
    ap.add_argument("--pre", type=float, default=3.0, help="seconds of load before the upgrade")
    ap.add_argument("--post", type=float, default=3.0, help="seconds of load wanted after the upgrade")
    ap.add_argument("--upgrade-estimate", type=float, default=20.0,
                    help="first guess of the upgrade's duration (s); later runs use what was seen")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/cutover-DATE.json)")
    ap.add_argument("--keep", action="store_true", help="keep each lab (debugging)")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the per-rate control run (same load, no upgrade)")
    args = ap.parse_args()
    log = []

    def say(*a):
        line = " ".join(str(x) for x in a)
        log.append(line)
        print(line, flush=True)

    rates = [int(x) for x in args.rates.split(",") if x]
    Path(args.lab_root).mkdir(parents=True, exist_ok=True)
    os.chmod(args.lab_root, 0o755)
    started = dt.datetime.now(dt.timezone.utc)
    # Every run uses one snapshot of the binary: a rebuild during the benchmark must not change it.
    src_bin = Path(args.bin)
    snap = Path(args.lab_root) / "bin" / "pgshift"
    snap.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src_bin, snap)
    args.bin = str(snap)
    sha = hashlib.sha256(snap.read_bytes()).hexdigest()
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    build = {"binary": str(src_bin), "binary_mtime": dt.datetime.fromtimestamp(src_bin.stat().st_mtime,
             dt.timezone.utc).isoformat(), "binary_sha256": sha, "git_head": git("rev-parse", "HEAD"),
             "src_uncommitted": git("status", "--porcelain", "src", "CMakeLists.txt").splitlines()}
    say(f"# binary: {src_bin} sha256={sha[:16]} git={build['git_head'][:10]}"
          f"{' (+uncommitted src changes)' if build['src_uncommitted'] else ''}")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"cutover-{started:%Y-%m-%dT%H%M}.json"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    machine = {"nproc": os.cpu_count(), "uname_r": platform.release(), "cpu": cpu,
               "uptime_before": uptime_line()}
    say(f"# machine: nproc={machine['nproc']} uname -r={machine['uname_r']} cpu={cpu}")
    say(f"# before: {machine['uptime_before']}")
    
    results = {}
    upgrade_seen = []
    for rate in rates:
        runs = []
        idx = 1
        retries = 0
        while idx <= args.runs:
            est = max(upgrade_seen) * 1.5 + 3 if upgrade_seen else args.upgrade_estimate
            duration = round(args.pre + est + args.post, 1)
            r = one_run(args, rate, idx, duration)
            if r.get("upgrade_s"):
                upgrade_seen.append(r["upgrade_s"])
            if r.get("load_covered_upgrade") is False and retries < 3:
                # The load ended before the upgrade did: not a valid sample; again, with longer load.
                say(f"rate={rate} run={idx} load ended before the upgrade ({r.get('upgrade_s')} s > "
                    f"{duration} s of load): repeating with a longer load")
                retries += 1
                continue
            runs.append(r)
            say(run_line(r))
            idx += 1
        results[rate] = {"runs": runs, "summary": aggregate(rate, runs)}
        if args.control:
            dur = max(r.get("load_duration_s", 12) for r in runs)
            c = control_run(args, rate, dur)
            results[rate]["control"] = c
            l = c.get("load", {})
            say(f"rate={rate} control (same load, no upgrade, {dur} s): max_latency_ms={l.get('max_latency_ms')} "
                f"p99_ms={l.get('p99_ms')} p50_ms={l.get('p50_ms')} achieved_ops_per_s={l.get('achieved_ops_per_s')} "
                f"errors={l.get('errors')} loadavg={c['loadavg_before'][0]:.2f}->{c['loadavg_after'][0]:.2f}"
                + ("" if c["ok"] else f" FAILED: {c.get('error', '')[:300]}"))

    machine["uptime_after"] = uptime_line()
    finished = dt.datetime.now(dt.timezone.utc)
    say(f"# after: {machine['uptime_after']}")
    say()
    for rate in rates:
        a = results[rate]["summary"]
        say(f"rate={rate} writes/s clients={CLIENTS.get(rate, 4)} runs={a['runs']} ok={a['runs_ok']} "
            f"pause_ms median={fmt(a['pause_ms_median'])} max={fmt(a['pause_ms_max'])} "
            f"client_max_latency_ms median={fmt(a['client_max_latency_ms_median'])} "
            f"max={fmt(a['client_max_latency_ms_max'])} errors_total={a['errors_total']} "
            f"verify_clean={a['verify_all_clean']}")
        say("  pause steps (median ms): " +
            " ".join(f"{k}={v:.1f}" for k, v in a["steps_ms_median"].items()))
    say()
    for rate in rates:
        a = results[rate]["summary"]
        say(f"TARGET rate={rate}: clients' max stall <= {a['target_max_stall_ms']:.0f} ms with zero "
            f"failed requests: {a['target']} (worst {fmt(a['client_max_latency_ms_max'])} ms, "
            f"{a['runs_within_target']}/{a['runs_measured']} runs within, errors {a['errors_total']}, "
            f"runs ok {a['runs_ok']}/{a['runs']})")

    doc = {"benchmark": "cutover", "command": "python3 bench/cutover.py " + " ".join(sys.argv[1:]),
           "started_at": started.isoformat(), "finished_at": finished.isoformat(),
           "build": build, "source_version": args.source_version,
           "target_version": args.target_version, "pre_s": args.pre, "post_s": args.post,
           "machine": machine, "targets_ms": TARGETS_MS,
           "rates": {str(k): v for k, v in results.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"\nresults: {out} (printed output: {out.with_suffix('.txt')})")
    out.with_suffix(".txt").write_text("\n".join(log) + "\n")
    return 0 if all(results[r]["summary"]["target"] == "PASS" for r in rates) else 1


if __name__ == "__main__":
    sys.exit(main())
