"""Metrics of a real upgrade under load: `pgshift upgrade --metrics-addr` scraped while it runs,
the Grafana dashboard's queries checked against that real scrape, a real Prometheus (Debian's
package) scraping the running upgrade and answering PromQL on the lag series, and the history
file the run leaves behind."""
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT, psql_bin, sql

APP_SCHEMA = ROOT / "scripts" / "demo" / "app-schema.sql"
DASHBOARD = ROOT / "deploy" / "grafana" / "pgshift-dashboard.json"

# Every family pgshift serves, with its type (docs/observability.md).
FAMILIES = {
    "pgshift_phase": "gauge",
    "pgshift_phase_entered_timestamp_seconds": "gauge",
    "pgshift_ready_for_cutover": "gauge",
    "pgshift_cutover_max_lag_bytes": "gauge",
    "pgshift_cutover_max_pause_seconds": "gauge",
    "pgshift_replication_lag_bytes": "gauge",
    "pgshift_replication_lag_seconds": "gauge",
    "pgshift_replication_lag_drain_bytes_per_second": "gauge",
    "pgshift_cutover_ready_in_seconds": "gauge",
    "pgshift_tables": "gauge",
    "pgshift_tables_synced": "gauge",
    "pgshift_copy_size_bytes": "gauge",
    "pgshift_copied_bytes": "gauge",
    "pgshift_copied_rows": "gauge",
    "pgshift_replication_worker_errors_total": "counter",
    "pgshift_replication_conflicts_total": "counter",
    "pgshift_subscription_enabled": "gauge",
    "pgshift_source_retained_wal_bytes": "gauge",
    "pgshift_reverse_replication_lag_bytes": "gauge",
    "pgshift_tables_retrying": "gauge",
    "pgshift_copy_ranges": "gauge",
    "pgshift_copy_ranges_done": "gauge",
    "pgshift_verify_tables": "gauge",
    "pgshift_verify_tables_done": "gauge",
    "pgshift_verify_mismatches": "gauge",
    "pgshift_cutover_attempts_total": "counter",
    "pgshift_cutover_failures_total": "counter",
    "pgshift_cutover_last_pause_seconds": "gauge",
    "pgshift_ddl_events_total": "counter",
    "pgshift_errors_total": "counter",
}
PER_DATABASE = {"pgshift_replication_lag_bytes", "pgshift_replication_lag_seconds", "pgshift_tables",
                "pgshift_tables_synced", "pgshift_copy_size_bytes", "pgshift_copied_bytes",
                "pgshift_copied_rows", "pgshift_replication_worker_errors_total",
                "pgshift_tables_retrying", "pgshift_copy_ranges", "pgshift_copy_ranges_done",
                "pgshift_subscription_enabled", "pgshift_source_retained_wal_bytes"}
# Per database and per worker kind (table_sync, apply).
WORKER_LABELLED = {"pgshift_replication_worker_errors_total"}
# Families without a sample in this run: no cutover has finished while pgshift waits for the
# manual confirmation (so no reverse lag either), and no step failed; a PostgreSQL 17 target counts no conflicts
# (test_apply_errors.py scrapes them from an 18 one); the catch-up is shorter than the 3 s of samples the
# lag's trend needs (test_catchup.py scrapes both from a real backlog).
UNSAMPLED_HERE = {"pgshift_cutover_last_pause_seconds", "pgshift_errors_total",
                  "pgshift_replication_conflicts_total", "pgshift_reverse_replication_lag_bytes",
                  "pgshift_replication_lag_drain_bytes_per_second",
                  "pgshift_cutover_ready_in_seconds"}

# May be negative: the lag's fall per second is negative while it grows.
SIGNED = {"pgshift_replication_lag_drain_bytes_per_second"}
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """Prometheus text format -> ({family: type}, [(name, labels, value)])."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
        elif line and not line.startswith("#"):
            m = SAMPLE_RE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(LABEL_RE.findall(m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def check_scrape(types, samples, migration_id):
    """Sanity of one scrape; returns a list of problems."""
    problems = []
    by = {}
    for name, labels, value in samples:
        by.setdefault(name, []).append((labels, value))
        if not name.startswith("pgshift_"):
            continue
        if labels.get("migration") != migration_id:
            problems.append(f"{name} {labels}: migration label")
        if name in PER_DATABASE and not labels.get("database"):
            problems.append(f"{name} {labels}: no database label")
        if (value < 0 and name not in SIGNED) or value != value:
            problems.append(f"{name} {labels} = {value}")
    current = [l["phase"] for l, v in by.get("pgshift_phase", []) if v == 1]
    if len(current) != 1:
        problems.append(f"phases at 1: {current}")
    if {v for _, v in by.get("pgshift_phase", [])} - {0.0, 1.0}:
        problems.append("pgshift_phase not 0/1")

    def per_db(name):
        return {l["database"]: v for l, v in by.get(name, [])}
    total, synced = per_db("pgshift_tables"), per_db("pgshift_tables_synced")
    for db, n in synced.items():
        if db in total and n > total[db]:
            problems.append(f"{db}: {n} tables synced of {total[db]}")
    size, copied = per_db("pgshift_copy_size_bytes"), per_db("pgshift_copied_bytes")
    for db, n in copied.items():
        if db in size and n > size[db]:
            problems.append(f"{db}: copied {n} of {size[db]} bytes")
    ranges, ranges_done = per_db("pgshift_copy_ranges"), per_db("pgshift_copy_ranges_done")
    for db, n in ranges_done.items():
        if db in ranges and n > ranges[db]:
            problems.append(f"{db}: {n} copy ranges done of {ranges[db]}")
    vt = [v for _, v in by.get("pgshift_verify_tables", [])]
    vd = [v for _, v in by.get("pgshift_verify_tables_done", [])]
    if vt and vd and vd[0] > vt[0]:
        problems.append(f"verified {vd[0]} of {vt[0]} tables")
    for name, typ in types.items():
        if name.startswith("pgshift_") and FAMILIES.get(name) != typ:
            problems.append(f"{name}: TYPE {typ}, expected {FAMILIES.get(name)}")
    return problems


def dashboard_metric_names():
    board = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                    exprs.append(v["query"])
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(board)
    names = set()
    for e in exprs:
        names.update(re.findall(r"\bpgshift_[a-z_]+\b", e))
    return board, exprs, names


def test_dashboard_is_importable_json():
    board, exprs, names = dashboard_metric_names()
    assert board["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    assert any(v["name"] == "migration" for v in board["templating"]["list"])
    titles = " | ".join(p.get("title", "") for p in board["panels"]).lower()
    for want in ("lag", "tables synced", "phase", "ready for cutover", "copy rate", "cutover pause"):
        assert want in titles, (want, titles)
    types = {p["type"] for p in board["panels"]}
    assert "state-timeline" in types and "stat" in types and "timeseries" in types
    # Every panel's datasource is the input, so import asks for it.
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    assert "pgshift_cutover_max_lag_bytes" in names  # the threshold line
    assert len(exprs) >= 6 and names


class Scraper(threading.Thread):
    """Scrapes /metrics every 50 ms (CatchingUp can last well under a second), checking each
    answer and keeping what it saw."""

    def __init__(self, url, migration_id):
        super().__init__(daemon=True)
        self.url, self.id = url, migration_id
        self.stop = threading.Event()
        self.types, self.sampled, self.labels = {}, set(), {}
        self.problems, self.phases, self.count, self.errors = [], set(), 0, []
        self.content_types = set()

    def run(self):
        while not self.stop.is_set():
            try:
                status, ctype, text = http_get(self.url)
            except OSError as e:  # the process may be busy exiting at the very end
                self.errors.append(str(e))
                time.sleep(0.05)
                continue
            assert status == 200
            self.content_types.add(ctype)
            types, samples = parse_exposition(text)
            self.types.update(types)
            self.problems += check_scrape(types, samples, self.id)
            for name, labels, value in samples:
                self.sampled.add(name)
                self.labels.setdefault(name, set()).add(tuple(sorted(labels)))
                if name == "pgshift_phase" and value == 1:
                    self.phases.add(labels["phase"])
            self.count += 1
            time.sleep(0.05)


def start_prometheus(workdir, port, target):
    cfg = workdir / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: pgshift\n    static_configs:\n"
        f"      - targets: ['{target}']\n")
    data = workdir / "prometheus-data"
    data.mkdir()
    log = open(workdir / "prometheus.log", "w")
    proc = subprocess.Popen(
        [shutil.which("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if http_get(base + "/-/ready", timeout=1)[0] == 200:
                return proc, base
        except OSError:
            pass
        assert proc.poll() is None, (workdir / "prometheus.log").read_text()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("prometheus did not become ready")


def promql(base, path, **params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    body = json.loads(http_get(url)[2])
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package (scripts/setup.sh)")
def test_metrics_of_a_real_upgrade_under_load_scraped_by_prometheus(lab):
    src = lab.start("mx-src", 15)
    dst = lab.start("mx-dst", 17)
    subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-f", str(APP_SCHEMA)],
                   check=True, capture_output=True)
    state = lab.dir / "mx-state"
    ledger = lab.dir / "mx.ledger"
    load = lab.popen("load", "run", "--dsn", src, "--rate", "300", "--duration", "120",
                     "--ledger", str(ledger))
    prom = up = None
    try:
        # Prometheus first: it takes up to 5 s to start scraping a new target, and the whole
        # upgrade takes about as long.
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        prom, base = start_prometheus(lab.dir, free_port(), f"127.0.0.1:{port}")
        deadline = time.time() + 30
        while not promql(base, "query", query='up{job="pgshift"}'):
            assert time.time() < deadline, "prometheus never scraped its target"
            time.sleep(0.2)
        up = lab.popen("upgrade", "--source", src, "--target", dst, "--state", str(state),
                       "--router", "manual", "--max-lag", "8388608", "--progress", "plain",
                       "--metrics-addr", f"127.0.0.1:{port}")
        err_lines = []
        first = up.stderr.readline()
        assert f"metrics at {url}" in first, first
        drain = threading.Thread(target=lambda: err_lines.extend(up.stderr), daemon=True)
        drain.start()
        deadline = time.time() + 60
        while not (state / "state.json").exists():
            assert time.time() < deadline and up.poll() is None, "".join(err_lines)
            time.sleep(0.1)
        migration_id = json.loads((state / "state.json").read_text())["id"]
        scraper = Scraper(url, migration_id)
        scraper.start()

        # Health probes of the same server.
        assert http_get(url.replace("/metrics", "/healthz"))[0] == 200
        assert http_get(url.replace("/metrics", "/readyz"))[0] == 200

        waiting = state / "cutover.waiting"
        deadline = time.time() + 240
        while not waiting.exists():
            assert time.time() < deadline and up.poll() is None, "".join(err_lines)
            time.sleep(0.2)
        # pgshift now holds in CuttingOver until confirmed: Prometheus gets a few more scrapes.
        time.sleep(3)
        scraper.stop.set()
        scraper.join(timeout=10)

        assert scraper.count >= 50, scraper.count
        assert not scraper.problems, scraper.problems[:20]
        assert scraper.content_types == {"text/plain; version=0.0.4; charset=utf-8"}
        for name, typ in FAMILIES.items():
            assert scraper.types.get(name) == typ, (name, scraper.types.get(name))
            if name not in UNSAMPLED_HERE:
                assert name in scraper.sampled, f"{name}: never had a sample"
        for name in PER_DATABASE:
            want = ("database", "migration", "worker") if name in WORKER_LABELLED else \
                ("database", "migration")
            assert scraper.labels[name] == {want}, (name, scraper.labels[name])
        assert scraper.labels["pgshift_phase"] == {("migration", "phase")}
        assert {"InitialCopy", "CatchingUp", "CuttingOver"} <= scraper.phases, scraper.phases

        # Every metric the dashboard queries exists in this real scrape.
        _, _, names = dashboard_metric_names()
        missing = names - set(scraper.types)
        assert not missing, missing
        assert names - UNSAMPLED_HERE <= scraper.sampled, (names - UNSAMPLED_HERE) - scraper.sampled

        # Prometheus scraped the running upgrade: PromQL over its HTTP API.
        target = promql(base, "query", query='up{job="pgshift"}')
        assert target and target[0]["value"][1] == "1", target
        now = time.time()
        lag = promql(base, "query_range",
                     query=f'pgshift_replication_lag_bytes{{migration="{migration_id}"}}',
                     start=now - 600, end=now, step="1")
        assert lag, "no lag series in Prometheus"
        dbs = {s["metric"]["database"] for s in lag}
        assert "postgres" in dbs, dbs
        for s in lag:
            assert s["metric"]["migration"] == migration_id
            assert s["metric"]["job"] == "pgshift"
            assert len(s["values"]) >= 2, s
            assert all(float(v) >= 0 for _, v in s["values"])
        phase = promql(base, "query", query=f'pgshift_phase{{migration="{migration_id}"}} == 1')
        assert [s["metric"]["phase"] for s in phase] == ["CuttingOver"], phase
        threshold = promql(base, "query", query=f'pgshift_cutover_max_lag_bytes{{migration="{migration_id}"}}')
        assert threshold and threshold[0]["value"][1] == "8388608", threshold

        confirm = lab.run("cutover", "--state", str(state), "--confirm")
        assert "confirmed" in confirm.stdout
        out, _ = up.communicate(timeout=120)
        drain.join(timeout=10)
        assert up.returncode == 0, "".join(err_lines)
        assert "phase RollbackReady" in out
    finally:
        for p in (up, prom):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        load.kill()
        load.communicate()

    # The history file: every phase, samples while replicating, verification, the cutover.
    records = [json.loads(l) for l in (state / "history.jsonl").read_text().splitlines()]
    assert all(isinstance(r["ts"], int) for r in records)
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    phases = [r["phase"] for r in records if r["kind"] == "phase"]
    assert phases[:3] == ["Preflight", "Provisioning", "Roles"], phases
    for p in ("InitialCopy", "CatchingUp", "ReadyForCutover", "CuttingOver", "RollbackReady"):
        assert p in phases, phases
    samples = [r for r in records if r["kind"] == "sample"]
    assert len(samples) >= 2, samples  # the end of the copy, the end of the catch-up
    for s in samples:
        assert set(s) >= {"ts", "phase", "lag_bytes", "lag_seconds", "tables_total", "tables_synced",
                          "bytes_copied", "bytes_total", "rows_copied"}
        assert 0 <= s["tables_synced"] <= s["tables_total"]
    tables = int(sql(src, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
                          "('pg_catalog', 'information_schema', '_pgshift')"))
    assert tables >= 4  # the shop's, and the load client's
    last = samples[-1]
    assert last["tables_total"] == tables and last["tables_synced"] == tables, last
    assert last["bytes_total"] > 0 and last["bytes_copied"] == last["bytes_total"], last
    # At most about one per second, plus one at the end of the copy and one of the catch-up.
    span_s = (samples[-1]["ts"] - samples[0]["ts"]) / 1000
    assert len(samples) <= span_s + 3, (len(samples), span_s)
    verify = [r for r in records if r["kind"] == "verify"]
    assert verify and verify[-1]["tables_done"] == verify[-1]["tables_total"] == tables, verify
    assert verify[-1]["mismatches"] == 0
    cut = [r for r in records if r["kind"] == "cutover"]
    assert len(cut) == 1 and cut[0]["direction"] == "forward" and cut[0]["succeeded"], cut
    assert cut[0]["pause_ms"] > 0 and "fence" in cut[0]["steps_ms"]
    assert "password" not in (state / "history.jsonl").read_text()


def test_metrics_address_port_zero_and_bad_addresses(lab):
    state = lab.dir / "bad-metrics"
    dsn = f"host=127.0.0.1 port={free_port()} dbname=postgres connect_timeout=2"
    # Port 0: a free port, printed before any work starts (here the source does not answer).
    p = lab.run("upgrade", "--source", dsn, "--target", dsn, "--state", str(state), "--router",
                "manual", "--metrics-addr", "127.0.0.1:0", check=False)
    m = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", p.stderr)
    assert m and int(m.group(1)) > 0, p.stderr
    assert p.returncode == 5, p.stderr
    p = lab.run("upgrade", "--source", dsn, "--target", dsn, "--state", str(state), "--router",
                "manual", "--metrics-addr", "no-port-here", check=False)
    assert p.returncode == 2, p.stderr
    assert "HOST:PORT" in p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        p = lab.run("upgrade", "--source", dsn, "--target", dsn, "--state", str(state), "--router",
                    "manual", "--metrics-addr", f"127.0.0.1:{busy}", check=False)
    assert p.returncode == 5, p.stderr
    assert f"cannot listen on 127.0.0.1:{busy}" in p.stderr
    assert not (state / "state.json").exists()
    assert not (state / "history.jsonl").exists()
