#!/usr/bin/env python3
"""Metrics endpoint benchmark: does /metrics answer under load, and does scraping it slow the
migration?

Each run builds a fresh lab like bench/cutover.py (PostgreSQL 15 source with the demo shop data,
an empty PostgreSQL 17 target, PgBouncer in front of the source), starts the load client through
PgBouncer (500 writes/s, 4 clients), and runs `pgshift upgrade --router pgbouncer --cutover auto`
in one of two modes, alternated run by run:

  off      no --metrics-addr, nobody scrapes (the baseline);
  scraped  --metrics-addr 127.0.0.1:PORT and a client scraping /metrics --scrape-rate times a
           second (default 25) over one keep-alive connection for the whole upgrade;
  served   (with --modes off,scraped,served) --metrics-addr but nobody scrapes: tells the
           server's presence from the scrapes' load.

Recorded per run: the upgrade's wall time, the initial copy and catch-up (+ verification) phase
durations and the cutover pause (from `status --json`), the load client's max / p99 latency and
errors, and in scraped mode every scrape's latency (request sent -> body read), the scrape count
and failures. Output: a table of medians per mode, and the full data in
bench/results/metrics-DATE.json (--out to change). Stdlib only.

  python3 bench/metrics.py --runs 3                  # 3 runs per mode, the shop data (5 MB)
  python3 bench/metrics.py --runs 3 --bulk-mb 200    # plus a 200 MB table: a longer copy
"""
import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cutover import (APP_SCHEMA, CACHE, ROOT, Lab, loadavg, num, parse_kv, psql_bin,  # noqa: E402
                     utc_ms)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


class Scraper(threading.Thread):
    """GET /metrics at a fixed rate over one keep-alive connection (reconnecting if needed)."""

    def __init__(self, port, rate):
        super().__init__(daemon=True)
        self.port, self.interval = port, 1.0 / rate
        self.stop = threading.Event()
        self.latencies_ms, self.failures, self.bytes = [], 0, 0
        self.first_ok = None

    def run(self):
        conn = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise OSError(f"status {r.status}")
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                self.bytes = len(body)
                if self.first_ok is None:
                    self.first_ok = time.monotonic()
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                if self.first_ok is not None:  # before the server is up is not a failure
                    self.failures += 1
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()


def phase_seconds(phase_times, name):
    t = (phase_times or {}).get(name) or {}
    a, b = utc_ms(t.get("started_at")), utc_ms(t.get("finished_at"))
    return round((b - a) / 1000, 3) if a is not None and b is not None else None


def one_run(args, mode, idx):
    path = Path(args.lab_root) / f"metrics-{mode}-{idx}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    os.chmod(path, 0o755)
    lab = Lab(args.bin, path)
    res = {"mode": mode, "run": idx, "loadavg_before": loadavg()}
    load = scraper = None
    settings = [] if args.sync_commit == "on" else ["--set", "synchronous_commit = off"]
    try:
        src = lab.last_line("lab", "start", "src", "--version", "15", *settings)
        dst = lab.last_line("lab", "start", "dst", "--version", "17", *settings)
        app = lab.last_line("lab", "router", "pb", "--backend", "src", "--kind", "pgbouncer")
        router = {i["name"]: i for i in json.loads(lab.run("lab", "list", "--json").stdout)}["pb"]
        subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-f",
                        str(APP_SCHEMA)], check=True, capture_output=True, timeout=120)
        if args.bulk_mb:
            # About 1 kB a row: a table big enough that the initial copy takes a while.
            subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-c",
                            "CREATE TABLE bench_bulk (id bigint PRIMARY KEY, payload text); "
                            "INSERT INTO bench_bulk SELECT g, repeat(md5(g::text), 30) "
                            f"FROM generate_series(1, {args.bulk_mb * 1000}) g"],
                           check=True, capture_output=True, timeout=600)
        state, ledger = path / "state", path / "load.ledger"
        load = lab.popen("load", "run", "--dsn", app, "--rate", str(args.rate), "--reads", "0",
                         "--clients", "4", "--duration", str(args.load_duration), "--ledger", str(ledger))
        time.sleep(args.pre)
        extra = []
        if mode in ("scraped", "served"):
            port = free_port()
            extra = ["--metrics-addr", f"127.0.0.1:{port}"]
        if mode == "scraped":
            scraper = Scraper(port, args.scrape_rate)
            scraper.start()
        t1 = time.monotonic()
        up = lab.run("upgrade", "--source", src, "--target", dst, "--state", str(state),
                     "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
                     "--router-config", router["config_file"], "--cutover", "auto",
                     "--verify", "count", "--progress", "plain", *extra, check=False, timeout=600)
        res["upgrade_s"] = round(time.monotonic() - t1, 2)
        if scraper is not None:
            scraper.stop.set()
            scraper.join(timeout=10)
            lat = scraper.latencies_ms
            window = (time.monotonic() - scraper.first_ok) if scraper.first_ok else None
            res["scrape"] = {"count": len(lat), "failures": scraper.failures,
                             "per_second": round(len(lat) / window, 1) if window else None,
                             "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                             "max_ms": max(lat) if lat else None, "body_bytes": scraper.bytes}
        res["load_covered_upgrade"] = load.poll() is None
        out, err = load.communicate(timeout=args.load_duration + 120)
        if up.returncode != 0:
            raise RuntimeError(f"upgrade failed ({up.returncode}): {up.stderr[-3000:]}")
        if load.returncode != 0:
            raise RuntimeError(f"load client failed: {err[-2000:]}")
        load = None
        ll = out.strip().splitlines()
        s = {k: num(v) for k, v in {**parse_kv(ll[0]), **parse_kv(ll[1] if len(ll) > 1 else "")}.items()}
        res["load"] = {k: s.get(k) for k in ("acknowledged", "errors", "max_latency_ms", "p99_ms", "p50_ms")}
        st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
        res["phase"] = st.get("phase")
        res["pause_ms"] = st.get("last_cutover_pause_ms")
        ok_cuts = [c for c in st.get("cutovers", []) if c.get("succeeded")]
        if ok_cuts:
            steps = ok_cuts[-1].get("steps_ms") or ok_cuts[-1].get("steps") or []
            res["steps_ms"] = ({k: round(v, 2) for k, v in steps.items()} if isinstance(steps, dict) else
                               {x["step"]: round(x["ms"], 2) for x in steps})
        for name, key in (("InitialCopy", "initial_copy_s"), ("CatchingUp", "catch_up_s")):
            res[key] = phase_seconds(st.get("phase_times"), name)
        v = lab.run("load", "verify", "--dsn", dst, "--ledger", str(ledger), check=False)
        vv = parse_kv(v.stdout.strip().splitlines()[-1] if v.stdout.strip() else "")
        res["verify_ok"] = v.returncode == 0 and vv.get("missing") == "0" and vv.get("mismatched") == "0"
        res["ok"] = bool(res["verify_ok"] and res["phase"] == "RollbackReady" and res["load_covered_upgrade"])
    except Exception as e:  # a failed run is data too
        res["ok"] = False
        res["error"] = str(e)[-4000:]
    finally:
        if scraper is not None:
            scraper.stop.set()
        if load is not None and load.poll() is None:
            load.kill()
            load.communicate()
        res["loadavg_after"] = loadavg()
        lab.run("lab", "down", check=False, timeout=180)
        shutil.rmtree(path, ignore_errors=True)
    return res


def med(runs, *keys):
    vals = []
    for r in runs:
        v = r
        for k in keys:
            v = (v or {}).get(k)
        if v is not None:
            vals.append(v)
    return round(statistics.median(vals), 2) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    ap.add_argument("--rate", type=int, default=500, help="writes/s of the load client (default 500)")
    ap.add_argument("--scrape-rate", type=float, default=25.0, help="scrapes per second (default 25)")
    ap.add_argument("--modes", default="off,scraped", help="off,scraped[,served] (see above)")
    ap.add_argument("--load-duration", type=int, default=30)
    ap.add_argument("--bulk-mb", type=int, default=0,
                    help="add a table of about this many MB to the source, for a longer copy")
    ap.add_argument("--pre", type=float, default=3.0, help="seconds of load before the upgrade")
    ap.add_argument("--sync-commit", choices=["on", "off"], default="off")
    ap.add_argument("--bin", default=os.environ.get("PGSHIFT_BIN", str(ROOT / "build" / "pgshift")))
    ap.add_argument("--lab-root", default=str(CACHE / "bench"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    started = dt.datetime.now(dt.timezone.utc)
    runs = []
    modes = args.modes.split(",")
    for i in range(args.runs):
        # Rotate the order so that no mode always runs first (or after the same one).
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
            r = one_run(args, mode, i)
            runs.append(r)
            sc = r.get("scrape") or {}
            print(f"{mode:8s} run {i}: ok={r['ok']} upgrade={r.get('upgrade_s')}s "
                  f"copy={r.get('initial_copy_s')}s catch-up={r.get('catch_up_s')}s "
                  f"pause={r.get('pause_ms')}ms {r.get('steps_ms')} load max={(r.get('load') or {}).get('max_latency_ms')}ms "
                  f"p99={(r.get('load') or {}).get('p99_ms')}ms errors={(r.get('load') or {}).get('errors')} "
                  + (f"scrapes={sc.get('count')} ({sc.get('per_second')}/s) p50={sc.get('p50_ms'):.2f}ms "
                     f"p99={sc.get('p99_ms'):.2f}ms max={sc.get('max_ms'):.2f}ms failures={sc.get('failures')}"
                     if sc.get("count") else "")
                  + (f" error={r.get('error', '')[:300]}" if not r["ok"] else ""), flush=True)

    print("\nmedians per mode")
    print("| mode | runs ok | upgrade s | initial copy s | catch-up + verify s | cutover pause ms (all runs) | "
          "load max ms | load p99 ms | load errors | scrape p50 / p99 / max ms | scrapes/s | scrape failures |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for mode in modes:
        rs = [r for r in runs if r["mode"] == mode and r["ok"]]
        summary[mode] = {
            "runs_ok": len(rs), "runs": len([r for r in runs if r["mode"] == mode]),
            "upgrade_s": med(rs, "upgrade_s"), "initial_copy_s": med(rs, "initial_copy_s"),
            "catch_up_s": med(rs, "catch_up_s"), "pause_ms": med(rs, "pause_ms"),
            "pause_ms_all": sorted(round(r["pause_ms"], 1) for r in rs if r.get("pause_ms") is not None),
            "load_max_ms": med(rs, "load", "max_latency_ms"), "load_p99_ms": med(rs, "load", "p99_ms"),
            "load_errors": sum((r.get("load") or {}).get("errors") or 0 for r in rs),
            "scrape_p50_ms": med(rs, "scrape", "p50_ms"), "scrape_p99_ms": med(rs, "scrape", "p99_ms"),
            "scrape_max_ms": max([r["scrape"]["max_ms"] for r in rs if r.get("scrape")], default=None),
            "scrape_per_s": med(rs, "scrape", "per_second"),
            "scrape_failures": sum((r.get("scrape") or {}).get("failures") or 0 for r in rs)}
        m = summary[mode]
        scr = (f"{m['scrape_p50_ms']} / {m['scrape_p99_ms']} / {m['scrape_max_ms'] and round(m['scrape_max_ms'], 2)}"
               if m["scrape_p50_ms"] is not None else "-")
        print(f"| {mode} | {m['runs_ok']}/{m['runs']} | {m['upgrade_s']} | {m['initial_copy_s']} | "
              f"{m['catch_up_s']} | {m['pause_ms']} ({', '.join(map(str, m['pause_ms_all']))}) | {m['load_max_ms']} | {m['load_p99_ms']} | "
              f"{m['load_errors']} | {scr} | {m['scrape_per_s'] or '-'} | "
              f"{m['scrape_failures'] if mode == 'scraped' else '-'} |")

    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"metrics-{started:%Y-%m-%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started.isoformat(), "args": vars(args),
                               "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
                               "summary": summary, "runs": runs}, indent=2) + "\n")
    print(f"\nfull data: {out}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
