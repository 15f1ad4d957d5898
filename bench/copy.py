#!/usr/bin/env python3
"""Initial copy benchmark: pgshift's own copy against its peers, one run, same source, same
machine, each tool into a freshly emptied target database.

Source (PostgreSQL 15 by default) database `bench`: pgbench scale 100 (`pgbench -i -s 100`,
10 M rows in pgbench_accounts), a TOAST-heavy table `docs` (about 300 MB of 10-100 kB values that
do not compress) and 1,000 small tables (`small_1` .. `small_1000`, 100 rows each). Target
(PostgreSQL 17 by default): an empty server. Both servers run with the lab's settings plus
`max_wal_size = 4GB`. Tools, in this order:

  pgcopydb   `pgcopydb clone --table-jobs J --index-jobs J` (Debian's 0.10)
  dump       `pg_dump -Fd -j J` then `pg_restore -j J` (client tools 18)
  native     the schema (`pg_dump --schema-only | psql`), then a subscription with
             copy_data = true, until every table is ready (max_sync_workers_per_subscription 4)
  pgshift    `pgshift upgrade --verify none --cutover manual --jobs J` until ReadyForCutover
             (preflight, roles, schema, the copy, indexes, the subscription, catch-up)

Before each tool the target database is dropped and made again, both servers CHECKPOINT, and the
source's tables were read once before the first tool (a warm cache for every tool). Recorded per
tool: wall time, its own phases, the CPU seconds of the client processes and of each server, and
a check that the target holds every row. Ratios are judged against the targets of issue 12:
pgshift at least 1.3x faster than pgcopydb and 2.4x faster than native copy_data.

With --impact, pgshift is run again with the load client (`pgshift load run`, 200 operations/s
on the source's `bench` database): p50/p99/max latency for 10 s before the copy, during the copy
(until pgshift reports it done), and 10 s after, once with the default jobs and once with
`--jobs 1 --copy-rate 30MB`.

Stdlib only.  Usage:  python3 bench/copy.py [--jobs 2] [--impact] [--keep]
"""
import os
import sys

# This file is named like the standard library's `copy`: keep its folder off the import path,
# so that `import copy` anywhere (argparse does it) means the standard one.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

# bench/cutover.py: the lab wrapper and small helpers, loaded by path (see above).
_spec = importlib.util.spec_from_file_location("cutover", os.path.join(_HERE, "cutover.py"))
cutover = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cutover)
loadavg, num, parse_kv = cutover.loadavg, cutover.num, cutover.parse_kv

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PGSHIFT_CACHE", ROOT / ".cache"))
CLIENT_BIN = CACHE / "pgclient" / "bin"
TICK = os.sysconf("SC_CLK_TCK")
DB = "bench"
TARGETS = {"pgcopydb": 1.3, "native": 2.4}

DOCS_SQL = """
CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO docs
SELECT g, 'doc ' || g,
       (SELECT string_agg(md5(g::text || ':' || i), '')
          FROM generate_series(1, (10000 + (g * 7919) % 90000) / 32) i)
FROM generate_series(1, {rows}) g;
"""

SMALL_SQL = """
DO $$
BEGIN
  FOR i IN 1..{n} LOOP
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, name text NOT NULL, '
                   'at timestamptz NOT NULL DEFAULT now())', 'small_' || i);
    EXECUTE format('INSERT INTO %I (id, name) SELECT g, md5(g::text) '
                   'FROM generate_series(1, 100) g', 'small_' || i);
  END LOOP;
END $$;
"""

# What every tool must have copied.
CHECK_SQL = ("SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM "
             "pgbench_accounts), (SELECT count(*) FROM docs), (SELECT sum(length(body)) FROM docs), "
             "(SELECT count(*) FROM pg_class WHERE relname LIKE 'small\\_%' AND relkind = 'r'), "
             "(SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
             "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
             "AND i.indisvalid)")


def now_utc():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M")


class Lab(cutover.Lab):
    def instances(self):
        return {i["name"]: i for i in json.loads(self.run("lab", "list", "--json").stdout)}

    def password(self, name):
        return json.loads((Path(self.dir) / name / "instance.json").read_text())["password"]


def on_db(dsn, db):
    return dsn.replace("/postgres?", f"/{db}?")


def psql(dsn, query, timeout=3600):
    p = subprocess.run([str(CLIENT_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                        "-c", query], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"psql failed: {p.stderr[-2000:]}")
    return p.stdout.strip()


def server_cpu(pid):
    """CPU seconds a server used so far: the postmaster with its ended children (cutime) and
    the children still running."""
    def stat(p):
        try:
            f = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            return None
        return f[f.rfind(")") + 2:].split()

    s = stat(pid)
    if s is None:
        return None
    ticks = sum(int(x) for x in s[11:15])  # utime stime cutime cstime
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        c = stat(child)
        if c is not None:
            ticks += int(c[11]) + int(c[12])
    return ticks / TICK


class Meter:
    """Wall time, client CPU (our children) and each server's CPU over a block."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self.t0 = time.monotonic()
        self.ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu0 = {k: server_cpu(p) for k, p in self.pids.items()}
        return self

    def __exit__(self, *exc):
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.wall = time.monotonic() - self.t0
        self.client_cpu = (ru.ru_utime - self.ru0.ru_utime) + (ru.ru_stime - self.ru0.ru_stime)
        self.server_cpu = {k: round(server_cpu(p) - self.cpu0[k], 2) for k, p in self.pids.items()}
        return False

    def record(self):
        return {"seconds": round(self.wall, 2), "client_cpu_s": round(self.client_cpu, 2),
                "server_cpu_s": self.server_cpu}


def build_source(lab, src, args):
    app = on_db(src, DB)
    if psql(src, f"SELECT count(*) FROM pg_database WHERE datname = '{DB}'") == "1":
        if psql(app, "SELECT to_regclass('small_1000') IS NOT NULL") == "t":
            print("source data already there", file=sys.stderr)
            return
        psql(src, f"DROP DATABASE {DB}")
    psql(src, f"CREATE DATABASE {DB}")
    t = time.monotonic()
    env = dict(os.environ, PGPASSWORD=lab.password("src"))
    subprocess.run([str(CLIENT_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-d", app],
                   check=True, capture_output=True, env=env, timeout=3600)
    psql(app, DOCS_SQL.format(rows=args.docs_rows))
    psql(app, SMALL_SQL.format(n=args.small_tables))
    psql(app, "VACUUM ANALYZE")
    print(f"source data built in {time.monotonic() - t:.0f} s", file=sys.stderr)


def source_facts(src):
    app = on_db(src, DB)
    return {
        "database_size": int(psql(app, "SELECT pg_database_size(current_database())")),
        "pgbench_accounts_size": int(psql(app, "SELECT pg_total_relation_size('pgbench_accounts')")),
        "docs_size": int(psql(app, "SELECT pg_total_relation_size('docs')")),
        "docs_rows": int(psql(app, "SELECT count(*) FROM docs")),
        "small_tables": int(psql(app, "SELECT count(*) FROM pg_class WHERE relname LIKE 'small\\_%' AND relkind = 'r'")),
        "check": psql(app, CHECK_SQL),
    }


def fresh_target(lab, src, dst):
    # Leftovers of an earlier tool: subscriptions (native) hold a slot on the source.
    for db in psql(dst, "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate").split():
        for sub in psql(on_db(dst, db), "SELECT subname FROM pg_subscription WHERE subdbid = "
                                        "(SELECT oid FROM pg_database WHERE datname = current_database())").split():
            psql(on_db(dst, db), f'ALTER SUBSCRIPTION "{sub}" DISABLE')
            psql(on_db(dst, db), f'ALTER SUBSCRIPTION "{sub}" SET (slot_name = NONE)')
            psql(on_db(dst, db), f'DROP SUBSCRIPTION "{sub}"')
    psql(dst, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(dst, f"CREATE DATABASE {DB}")
    app = on_db(src, DB)
    psql(src, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
    for pub in psql(app, "SELECT pubname FROM pg_publication").split():
        psql(app, f'DROP PUBLICATION "{pub}"')
    psql(src, "CHECKPOINT")
    psql(dst, "CHECKPOINT")


def run_pgcopydb(lab, src, dst, args, work):
    d = work / "pgcopydb"
    shutil.rmtree(d, ignore_errors=True)
    # pgcopydb runs pg_dump and pg_restore from PATH: the 15 ones of postgresql-client-15 (the
    # source is 15; pgcopydb 0.10 was built against 15).
    env = dict(os.environ, PATH=f"/usr/lib/postgresql/15/bin:{os.environ['PATH']}")
    inst = lab.instances()

    def uri(name):  # pgcopydb takes URIs; each server has its own password
        pw = urllib.parse.quote(lab.password(name), safe="")
        return f"postgresql://postgres:{pw}@127.0.0.1:{inst[name]['port']}/{DB}"

    cmd = ["pgcopydb", "clone", "--source", uri("src"), "--target", uri("dst"),
           "--dir", str(d), "--table-jobs", str(args.jobs), "--index-jobs", str(args.jobs)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    cmd[3] = cmd[5] = "..."  # the record holds no password
    if p.returncode != 0:
        raise RuntimeError(f"pgcopydb failed: {p.stderr[-3000:]}")
    # Its closing summary: one line per step with its duration.
    summary = [ln for ln in p.stderr.splitlines() if re.search(r"\d+(ms|s)\s", ln)][-20:]
    return {"command": " ".join(cmd), "summary": summary}


def run_dump_restore(lab, src, dst, args, work):
    d = work / "dump"
    shutil.rmtree(d, ignore_errors=True)
    env = dict(os.environ, PGPASSWORD=lab.password("src"))
    t = time.monotonic()
    subprocess.run([str(CLIENT_BIN / "pg_dump"), "-Fd", "-j", str(args.jobs), "-f", str(d),
                    "-d", on_db(src, DB)], check=True, capture_output=True, env=env, timeout=7200)
    dump_s = time.monotonic() - t
    env = dict(os.environ, PGPASSWORD=lab.password("dst"))
    t = time.monotonic()
    subprocess.run([str(CLIENT_BIN / "pg_restore"), "-j", str(args.jobs), "-d", on_db(dst, DB),
                    str(d)], check=True, capture_output=True, env=env, timeout=7200)
    restore_s = time.monotonic() - t
    shutil.rmtree(d, ignore_errors=True)
    return {"phases_s": {"pg_dump": round(dump_s, 2), "pg_restore": round(restore_s, 2)}}


def run_native(lab, src, dst, args, work):
    inst = lab.instances()
    env = dict(os.environ, PGPASSWORD=lab.password("src"))
    t = time.monotonic()
    dump = subprocess.run([str(CLIENT_BIN / "pg_dump"), "--schema-only", "-d", on_db(src, DB)],
                          check=True, capture_output=True, text=True, env=env, timeout=600).stdout
    subprocess.run([str(CLIENT_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                    on_db(dst, DB)], input=dump, check=True, capture_output=True, text=True,
                   timeout=600)
    schema_s = time.monotonic() - t
    psql(on_db(src, DB), "CREATE PUBLICATION bench_pub FOR ALL TABLES")
    conninfo = (f"host=127.0.0.1 port={inst['src']['port']} dbname={DB} user=postgres "
                f"password={lab.password('src')}")
    psql(on_db(dst, DB), f"CREATE SUBSCRIPTION bench_sub CONNECTION '{conninfo}' "
                         "PUBLICATION bench_pub WITH (copy_data = true)")
    while True:
        left = psql(on_db(dst, DB), "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'")
        total = psql(on_db(dst, DB), "SELECT count(*) FROM pg_subscription_rel")
        if left == "0" and total != "0":
            break
        time.sleep(0.2)
    copy_s = time.monotonic() - t - schema_s
    return {"phases_s": {"schema": round(schema_s, 2), "copy_until_all_ready": round(copy_s, 2)}}


def pgshift_upgrade(lab, src, dst, args, work, extra=(), on_line=None):
    state = work / f"pgshift-{uuid.uuid4().hex[:6]}"
    cmd = [lab.bin, "upgrade", "--source", src, "--target", dst, "--state", str(state),
           "--databases", DB, "--router", "manual", "--cutover", "manual", "--verify", "none",
           "--tables-without-pk", "full", "--progress", "plain", *extra]
    p = subprocess.Popen(cmd, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stderr:
        lines.append(line.rstrip("\n"))
        if on_line:
            on_line(line)
    out = p.stdout.read()
    p.wait()
    if p.returncode != 0 or "phase ReadyForCutover" not in out:
        raise RuntimeError(f"pgshift failed ({p.returncode}):\n" + "\n".join(lines[-40:]))
    st = json.loads(lab.run("status", "--state", str(state), "--json").stdout)
    phases = {}
    for name, t in st["phase_times"].items():
        a, b = t.get("started_at"), t.get("finished_at")
        if a and b:
            phases[name] = round((dt.datetime.fromisoformat(b.replace("Z", "+00:00")) -
                                  dt.datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds(), 2)
    res = {"command": " ".join(cmd[1:]), "phases_s": phases}
    for ln in lines:
        m = re.search(r"copy \S+ done: (\d+) rows, ([\d.]+ \S+) streamed in ([\d.]+) ms", ln)
        if m:
            res["copy_s"] = round(float(m.group(3)) / 1000, 2)
            res["copy_streamed"] = m.group(2)
        m = re.search(r"indexes and constraints of \S+ built in ([\d.]+) ms", ln)
        if m:
            res["post_data_s"] = round(float(m.group(1)) / 1000, 2)
        m = re.search(r"statistics \S+: (\d+) tables analyzed on the target in ([\d.]+) ms \((\d+) at once\)", ln)
        if m:
            res["analyze_s"] = round(float(m.group(2)) / 1000, 2)
            res["analyzed_tables"] = int(m.group(1))
            res["analyze_jobs"] = int(m.group(3))
        m = re.search(r"statistics \S+: the source's statistics of (\d+) relations copied to the "
                      r"target \(pg_dump --statistics-only\) in ([\d.]+) ms", ln)
        if m:
            res["statistics_copy_s"] = round(float(m.group(2)) / 1000, 2)
            res["statistics_copied_relations"] = int(m.group(1))
        m = re.search(r"copy \S+: (\d+) tables in (\d+) ranges, .*?, (\d+) jobs, binary for (\d+) of", ln)
        if m:
            res["plan"] = {"tables": int(m.group(1)), "ranges": int(m.group(2)),
                           "jobs": int(m.group(3)), "binary_tables": int(m.group(4))}
    res["log_tail"] = lines[-25:]
    lab.run("abort", "--state", str(state), check=False)
    return res


def run_pgshift(lab, src, dst, args, work, extra=()):
    return pgshift_upgrade(lab, src, dst, args, work, ("--jobs", str(args.jobs), *extra))


def load_summary(out):
    ll = out.strip().splitlines()
    return {k: num(v) for k, v in {**parse_kv(ll[0]), **parse_kv(ll[1] if len(ll) > 1 else "")}.items()}


def impact_run(lab, src, dst, args, work, extra, label):
    """p50/p99/max of the load client before, during and after pgshift's copy."""
    fresh_target(lab, src, dst)
    app = on_db(src, DB)
    ledger = work / f"impact-{uuid.uuid4().hex[:6]}"

    def load(duration, suffix):
        return subprocess.Popen([lab.bin, "load", "run", "--dsn", app, "--rate", str(args.load_rate),
                                 "--duration", str(duration), "--ledger", f"{ledger}-{suffix}"],
                                env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    res = {"label": label, "options": list(extra)}
    p = load(10, "before")
    res["before"] = load_summary(p.communicate(timeout=120)[0])
    during = load(3600, "during")
    stopped = threading.Event()

    def on_line(line):
        if not stopped.is_set() and re.search(r"copy \S+ done:", line):
            stopped.set()
            during.send_signal(signal.SIGINT)

    time.sleep(1)
    t = time.monotonic()
    res["pgshift"] = pgshift_upgrade(lab, src, dst, args, work, extra, on_line)
    if not stopped.is_set():
        during.send_signal(signal.SIGINT)
    res["during"] = load_summary(during.communicate(timeout=120)[0])
    res["during_s"] = round(time.monotonic() - t, 1)
    p = load(10, "after")
    res["after"] = load_summary(p.communicate(timeout=120)[0])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("PGSHIFT_BIN", str(ROOT / "build" / "pgshift")))
    ap.add_argument("--jobs", type=int, default=2, help="jobs for every tool (default 2: the cores)")
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--docs-rows", type=int, default=5500, help="rows of the TOAST table (~55 kB each)")
    ap.add_argument("--small-tables", type=int, default=1000)
    ap.add_argument("--tools", default="pgcopydb,dump,native,pgshift")
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of every tool, in alternating order (default 2)")
    ap.add_argument("--source-version", type=int, default=15)
    ap.add_argument("--target-version", type=int, default=17)
    ap.add_argument("--impact", action="store_true", help="also measure the load client's latency")
    ap.add_argument("--load-rate", type=int, default=200)
    ap.add_argument("--lab", default=None, help="reuse this lab folder (its source data is kept)")
    ap.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/copy-DATE.json)")
    args = ap.parse_args()

    path = Path(args.lab) if args.lab else CACHE / "bench" / f"copy-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    binary = path / "pgshift"
    if not binary.exists() or binary.stat().st_mtime < Path(args.bin).stat().st_mtime:
        shutil.copy2(args.bin, binary)  # a rebuild while this runs changes nothing here
    lab = Lab(str(binary), path)
    settings = ["--set", "max_wal_size = 4GB"]
    src = lab.run("lab", "start", "src", "--version", str(args.source_version), *settings).stdout.strip().splitlines()[-1]
    dst = lab.run("lab", "start", "dst", "--version", str(args.target_version), *settings).stdout.strip().splitlines()[-1]
    work = path / "work"
    work.mkdir(exist_ok=True)
    result = {"started_at": now_utc(), "command": " ".join(["python3", "bench/copy.py", *sys.argv[1:]]),
              "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_before": loadavg()},
              "pgshift_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True).stdout.strip(),
              "versions": {"source": args.source_version, "target": args.target_version},
              "jobs": args.jobs, "runs": []}
    try:
        build_source(lab, src, args)
        result["source"] = source_facts(src)
        # A warm cache for every tool: read every table once.
        psql(on_db(src, DB), "SELECT count(*) FROM pgbench_accounts; SELECT sum(length(body)) FROM docs")
        inst = lab.instances()
        pids = {"source": inst["src"]["pid"], "target": inst["dst"]["pid"]}
        runners = {"pgcopydb": run_pgcopydb, "dump": run_dump_restore, "native": run_native,
                   "pgshift": run_pgshift,
                   "pgshift-native": lambda *a: run_pgshift(*a, extra=("--copy", "native"))}
        # Rounds alternate the order (A B C D, D C B A, ...), so a machine that gets busier or
        # quieter during the run does not favour whichever tool runs first.
        names = args.tools.split(",")
        for rnd in range(args.rounds):
            for tool in names if rnd % 2 == 0 else list(reversed(names)):
                fresh_target(lab, src, dst)
                rec = {"round": rnd + 1, "loadavg_before": loadavg()}
                print(f"{tool} (round {rnd + 1}) ...", file=sys.stderr, flush=True)
                try:
                    with Meter(pids) as m:
                        rec.update(runners[tool](lab, src, dst, args, work))
                    rec.update(m.record())
                    rec["check"] = psql(on_db(dst, DB), CHECK_SQL)
                    rec["complete"] = rec["check"] == result["source"]["check"]
                except Exception as e:  # a failed tool is data too
                    rec["error"] = str(e)[-4000:]
                rec["loadavg_after"] = loadavg()
                result["runs"].append({"tool": tool, **rec})
                print(f"{tool}: {rec.get('seconds', 'FAILED')} s  client cpu {rec.get('client_cpu_s')} s  "
                      f"server cpu {rec.get('server_cpu_s')}  complete={rec.get('complete')}",
                      file=sys.stderr, flush=True)
        if args.impact:
            result["impact"] = [
                impact_run(lab, src, dst, args, work, ("--jobs", str(args.jobs)), f"--jobs {args.jobs}"),
                impact_run(lab, src, dst, args, work, ("--jobs", "1", "--copy-rate", "30MB"),
                           "--jobs 1 --copy-rate 30MB"),
            ]
    finally:
        result["machine"]["loadavg_after"] = loadavg()
        if not args.keep:
            lab.run("lab", "down", check=False)
            if not args.lab:
                shutil.rmtree(path, ignore_errors=True)

    # Per tool: the mean over rounds of wall time and CPU (every run kept in "runs").
    tools = {}
    for name in args.tools.split(","):
        runs = [r for r in result["runs"] if r["tool"] == name]
        good = [r for r in runs if "seconds" in r]
        t = {"runs": len(runs), "complete": bool(runs) and all(r.get("complete") for r in runs)}
        if good:
            mean = lambda f: round(sum(f(r) for r in good) / len(good), 2)  # noqa: E731
            t["seconds"] = mean(lambda r: r["seconds"])
            t["seconds_each"] = [r["seconds"] for r in good]
            t["client_cpu_s"] = mean(lambda r: r["client_cpu_s"])
            t["server_cpu_s"] = {k: mean(lambda r: r["server_cpu_s"][k]) for k in ("source", "target")}
            t["cpu_s"] = round(t["client_cpu_s"] + sum(t["server_cpu_s"].values()), 2)
        tools[name] = t
    result["tools"] = tools
    ours = tools.get("pgshift", {})
    verdicts = {}
    for peer, want in TARGETS.items():
        theirs = tools.get(peer, {})
        if ours.get("seconds") and theirs.get("seconds"):
            ratio = theirs["seconds"] / ours["seconds"]
            verdicts[peer] = {"ratio": round(ratio, 2), "target": want,
                              "cpu_ratio": round(theirs["cpu_s"] / ours["cpu_s"], 2),
                              "verdict": "PASS" if ratio >= want else "FAIL"}
    result["ratios"] = verdicts
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"copy-{result['started_at']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'tool':16} {'seconds':>8} {'client cpu':>11} {'source cpu':>11} {'target cpu':>11}  complete  (mean of rounds)")
    for tool, r in tools.items():
        sc = r.get("server_cpu_s", {})
        print(f"{tool:16} {r.get('seconds', '-'):>8} {r.get('client_cpu_s', '-'):>11} "
              f"{sc.get('source', '-'):>11} {sc.get('target', '-'):>11}  {r.get('complete')}")
    for peer, v in verdicts.items():
        print(f"pgshift vs {peer}: {v['ratio']}x (target {v['target']}x): {v['verdict']}; "
              f"CPU seconds {v['cpu_ratio']}x")
    for imp in result.get("impact", []):
        print(f"impact {imp['label']}: p99 ms before {imp['before'].get('p99_ms')} during "
              f"{imp['during'].get('p99_ms')} after {imp['after'].get('p99_ms')} "
              f"(copy {imp['pgshift'].get('copy_s')} s)")
    print(f"results: {out}")
    # A run of pgshift alone (--tools pgshift) has no peer to be judged against.
    ok = all(v["verdict"] == "PASS" for v in verdicts.values()) and \
        all(r.get("complete") for r in tools.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
