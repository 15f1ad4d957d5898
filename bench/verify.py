#!/usr/bin/env python3
"""Verification benchmark: pgshift verify of pgbench_accounts (pgbench scale 100, 10 M rows),
both sides, against running `md5(string_agg(row::text ORDER BY pk))` on both sides.

One lab, one run of everything, same machine: a PostgreSQL source and target (16 and 18 by
default), each initialised with `pgbench -i -s 100` (identical data: pgbench's rows are a function
of the key), caches warmed, then per repetition:

  - baseline: `SELECT md5(string_agg(t::text, '' ORDER BY aid)) FROM pgbench_accounts t` on the
    source, then on the target (sequential, as the issue measured it), and on both at once;
  - pgshift: `pgshift verify --databases postgres --json` (both sides at once, key ranges, the
    hash method it chooses: hashextended here), and the same with `--hash md5`; wall time, the
    client's peak RSS and CPU time (wait4 rusage);
  - where the time goes, per side, one query each: a bare scan (`count(*)`), the typed hash of
    every row over a sequential scan, the md5 of every row's text; and pgshift with 1, 2 and 4
    jobs;
  - narrowing: 100 rows changed on the target, spread over the whole key space (one per 100,000
    keys): pgshift must name all 100 keys without reading whole tables into memory.

Targets (judged, exit code 0 only when all pass): pgshift both sides at least 6x faster than the
sequential baseline; client peak RSS under 100 MB; the 100 spread keys named.

Stdlib only.  Usage:  python3 bench/verify.py [--reps 3] [--scale 100]
"""
import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PGSHIFT_CACHE", ROOT / ".cache"))
CLIENT = CACHE / "pgclient" / "bin"

# pgbench_accounts (aid int4, bid int4, abalance int4, filler char(84)) hashed the way pgshift's
# hashextended method does (verify_plan.cc): per-column typed hashes, XORed.
TYPED_HASH = ("sum(hashint4extended(aid, 0) # hashint4extended(bid, 1) # "
              "hashint4extended(abalance, 2) # coalesce(hashbpcharextended(filler, 3), 0))")
MD5_HASH = ("sum(('x' || substr(md5(convert_to(ROW(t.aid, t.bid, t.abalance, t.filler)::text, "
            "'UTF8')), 1, 16))::bit(64)::int8)")
BASELINE = "SELECT md5(string_agg(t::text, '' ORDER BY aid)) FROM pgbench_accounts t"


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return list(os.getloadavg())


class Lab:
    def __init__(self, binary, path):
        self.bin = binary
        self.dir = path
        self.env = dict(os.environ, PGSHIFT_LAB_DIR=str(path))

    def run(self, *args, timeout=3600):
        p = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"pgshift {' '.join(args[:2])} failed: {p.stderr}")
        return p.stdout.strip().splitlines()[-1]


def psql(dsn, query, timeout=3600):
    p = subprocess.run([str(CLIENT / "psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                        "-c", "SET max_parallel_workers_per_gather = 0; " + query],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr}")
    return p.stdout.strip()


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def both_at_once(*calls):
    """Runs psql calls at the same time; returns the wall time and their outputs."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([str(CLIENT / "psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1",
                               "-d", dsn, "-c", "SET max_parallel_workers_per_gather = 0; " + q],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for dsn, q in calls]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"psql: {err}")
        outs.append(out.strip())
    return time.monotonic() - t0, outs


def pgshift_verify(binary, env, src, dst, *extra):
    """Wall seconds, the JSON report, and the client's rusage (peak RSS in MB, CPU seconds)."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.monotonic()
        p = subprocess.Popen([binary, "verify", "--source", src, "--target", dst,
                              "--databases", "postgres", "--json", *extra],
                             env=env, stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)  # its own rusage: peak RSS of this process only
        wall = time.monotonic() - t0
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if rc not in (0, 3):
        raise RuntimeError(f"pgshift verify failed ({rc}): {err}")
    return {"seconds": wall, "report": json.loads(out), "exit": rc,
            "peak_rss_mb": ru.ru_maxrss / 1024.0, "cpu_s": ru.ru_utime + ru.ru_stime}


def table(report, name):
    return next(t for t in report["tables"] if t["table"] == name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("PGSHIFT_BIN", str(ROOT / "build" / "pgshift")))
    ap.add_argument("--source-version", type=int, default=16)
    ap.add_argument("--target-version", type=int, default=18)
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true",
                    help="leave the lab running in .cache/bench/verify-lab; a later run with "
                         "--keep reuses it (skips pgbench -i)")
    args = ap.parse_args()

    stamp = dt.datetime.utcnow().strftime("%Y-%m-%dT%H%M")
    out = Path(args.out or ROOT / "bench" / "results" / f"verify-{stamp}.json")
    path = CACHE / "bench" / ("verify-lab" if args.keep else f"verify-{uuid.uuid4().hex[:6]}")
    reuse = args.keep and (path / "src").exists()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    lab = Lab(args.bin, path)
    res = {"started": stamp, "host": platform.node(), "cpus": os.cpu_count(),
           "scale": args.scale, "source_version": args.source_version,
           "target_version": args.target_version, "loadavg_before": loadavg(),
           "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()}
    try:
        src = lab.run("lab", "start", "src", "--version", str(args.source_version))
        dst = lab.run("lab", "start", "dst", "--version", str(args.target_version))
        for side, dsn in (() if reuse else (("source", src), ("target", dst))):
            t, _ = timed(lambda: subprocess.run(
                [str(CLIENT / "pgbench"), "-i", "-s", str(args.scale), "-I", "dtGvp", "-q", dsn],
                check=True, capture_output=True, timeout=3600))
            res[f"init_{side}_s"] = round(t, 1)
            print(f"pgbench -i -s {args.scale} on the {side}: {t:.1f} s", flush=True)
        rows = int(psql(src, "SELECT count(*) FROM pgbench_accounts"))
        res["rows"] = rows
        # Warm both caches the same way for everyone.
        both_at_once((src, "SELECT count(*) FROM pgbench_accounts"),
                     (dst, "SELECT count(*) FROM pgbench_accounts"))

        reps = []
        for rep in range(args.reps):
            r = {}
            t_src, h_src = timed(lambda: psql(src, BASELINE))
            t_dst, h_dst = timed(lambda: psql(dst, BASELINE))
            assert h_src == h_dst, "the baseline's two hashes differ: the data is not identical"
            r["baseline_source_s"], r["baseline_target_s"] = t_src, t_dst
            r["baseline_sequential_s"] = t_src + t_dst
            r["baseline_concurrent_s"], _ = both_at_once((src, BASELINE), (dst, BASELINE))
            v = pgshift_verify(args.bin, lab.env, src, dst)
            assert v["exit"] == 0 and v["report"]["clean"], v["report"]["summary"]
            r["pgshift"] = {"seconds": v["seconds"], "peak_rss_mb": v["peak_rss_mb"],
                            "cpu_s": v["cpu_s"], "hash": v["report"]["hash"],
                            "accounts_s": table(v["report"], "pgbench_accounts")["seconds"],
                            "worker_seconds": v["report"]["worker_seconds"],
                            "ranges": table(v["report"], "pgbench_accounts")["ranges"]}
            m = pgshift_verify(args.bin, lab.env, src, dst, "--hash", "md5")
            assert m["exit"] == 0, m["report"]["summary"]
            r["pgshift_md5"] = {"seconds": m["seconds"], "peak_rss_mb": m["peak_rss_mb"],
                                "cpu_s": m["cpu_s"]}
            r["ratio_sequential"] = r["baseline_sequential_s"] / v["seconds"]
            r["ratio_concurrent"] = r["baseline_concurrent_s"] / v["seconds"]
            print(f"rep {rep + 1}: baseline {t_src:.1f} + {t_dst:.1f} s (at once "
                  f"{r['baseline_concurrent_s']:.1f} s); pgshift {v['seconds']:.2f} s, "
                  f"{v['peak_rss_mb']:.0f} MB ({r['ratio_sequential']:.1f}x / "
                  f"{r['ratio_concurrent']:.1f}x); md5 {m['seconds']:.2f} s", flush=True)
            reps.append(r)
        res["reps"] = reps

        # Where the time goes: one query per side (source), and pgshift by jobs.
        where = {}
        for name, q in (("scan_count", "SELECT count(*) FROM pgbench_accounts"),
                        ("typed_hash_seqscan", f"SELECT {TYPED_HASH} FROM pgbench_accounts"),
                        ("md5_rowtext_seqscan", f"SELECT {MD5_HASH} FROM pgbench_accounts t"),
                        ("typed_hash_by_key_ranges",
                         f"SELECT {TYPED_HASH} FROM pgbench_accounts WHERE aid >= 1 AND "
                         f"aid < 100001")):
            t, _ = timed(lambda q=q: psql(src, q))
            where[name + "_source_s"] = t
        where["typed_hash_by_key_ranges_source_s"] *= rows / 100000  # 1 of rows/100k ranges
        for jobs in (1, 2, 4):
            v = pgshift_verify(args.bin, lab.env, src, dst, "--jobs", str(jobs))
            where[f"pgshift_jobs{jobs}_s"] = v["seconds"]
        res["where"] = where
        print("where the time goes (source side, one query): " +
              ", ".join(f"{k} {v:.2f}" for k, v in where.items()), flush=True)

        # Narrowing: 100 changed rows spread over the whole key space.
        keys = [k * (rows // 100) + 7 for k in range(100)]
        psql(dst, f"UPDATE pgbench_accounts SET abalance = abalance + 1 "
                  f"WHERE aid = ANY('{{{','.join(map(str, keys))}}}'::int[])")
        n = pgshift_verify(args.bin, lab.env, src, dst)
        acc = table(n["report"], "pgbench_accounts")
        named = sorted(int(k.strip("()")) for k in acc["differing_keys"])
        res["narrowing"] = {"seconds": n["seconds"], "peak_rss_mb": n["peak_rss_mb"],
                            "differing_rows": acc["differing_rows"], "ranges": acc["ranges"],
                            "keys_shown": len(acc["differing_keys"]),
                            "shown_keys_are_changed": set(named) <= set(keys)}
        print(f"narrowing: {acc['differing_rows']} differing rows found in {n['seconds']:.2f} s, "
              f"{acc['ranges']} ranges, {n['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        res["loadavg_after"] = loadavg()
        if not args.keep:
            subprocess.run([args.bin, "lab", "down"], env=lab.env, capture_output=True)
            shutil.rmtree(path, ignore_errors=True)

    reps = res.get("reps", [])
    med = lambda f: statistics.median(f(r) for r in reps) if reps else float("nan")  # noqa: E731
    summary = {
        "baseline_sequential_s": med(lambda r: r["baseline_sequential_s"]),
        "baseline_concurrent_s": med(lambda r: r["baseline_concurrent_s"]),
        "pgshift_s": med(lambda r: r["pgshift"]["seconds"]),
        "pgshift_md5_s": med(lambda r: r["pgshift_md5"]["seconds"]),
        "peak_rss_mb_max": max((r["pgshift"]["peak_rss_mb"] for r in reps), default=float("nan")),
        "ratio_sequential": med(lambda r: r["ratio_sequential"]),
        "ratio_concurrent": med(lambda r: r["ratio_concurrent"]),
    }
    res["summary"] = summary
    narrowing = res.get("narrowing", {})
    targets = {
        "6x faster than the sequential baseline": summary["ratio_sequential"] >= 6,
        "client peak RSS under 100 MB": summary["peak_rss_mb_max"] < 100 and
                                        narrowing.get("peak_rss_mb", 1e9) < 100,
        "100 spread differences named": narrowing.get("differing_rows") == 100 and
                                        narrowing.get("shown_keys_are_changed", False),
    }
    res["targets"] = targets
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nmedians: baseline {summary['baseline_sequential_s']:.1f} s sequential, "
          f"{summary['baseline_concurrent_s']:.1f} s at once; pgshift {summary['pgshift_s']:.2f} s "
          f"(md5 {summary['pgshift_md5_s']:.2f} s); ratio {summary['ratio_sequential']:.1f}x "
          f"sequential, {summary['ratio_concurrent']:.1f}x at once; peak RSS "
          f"{summary['peak_rss_mb_max']:.0f} MB")
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"results: {out}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
