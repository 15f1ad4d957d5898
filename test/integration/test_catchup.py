""""When can sync end?": while the target works through a backlog, pgshift measures how fast the
lag falls and says when it will be under the cutover threshold, on every surface: the progress
lines, `pgshift status`, the history file (and so the report) and the metrics.

The backlog is the common one: a batch job writes on the source while pgshift copies the rows
(its own copy starts the subscription only once the copy is done), so the target begins
catching up hundreds of MB behind."""
import json
import re
import subprocess
import threading
import time
import urllib.request

from conftest import sql, wait_for

MB = 1 << 20


def history(state):
    path = state / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def phase_of(lab, state):
    p = lab.run("status", "--state", str(state), "--json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else {}


def test_a_backlog_drains_with_an_estimate_of_when_sync_can_end(lab):
    src = lab.start("eta-src", 15)
    dst = lab.start("eta-dst", 17)
    # A table big enough that the copy lasts the batch job, and the table the job fills.
    sql(src, "CREATE TABLE public.bulk (id bigint PRIMARY KEY, pad text NOT NULL); "
             "INSERT INTO public.bulk SELECT g, repeat(md5(g::text), 8) "
             "FROM generate_series(1, 1500000) g; "
             "CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL, body text NOT NULL)")
    state = lab.dir / "eta-state"
    up = lab.popen("upgrade", "--source", src, "--target", dst, "--state", str(state),
                   "--router", "manual", "--cutover", "manual", "--max-lag", str(1 * MB),
                   "--jobs", "1", "--metrics-addr", "127.0.0.1:0")
    stderr_lines = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(up.stderr), daemon=True)
    reader.start()
    wait_for(lambda: phase_of(lab, state).get("phase") == "InitialCopy" or up.poll() is not None,
             timeout=120, what="InitialCopy")
    assert up.poll() is None, "".join(stderr_lines)
    # The batch job: about 500 MB of WAL while the rows are being copied, committed in 25
    # chunks as batch jobs do. (One transaction of it is applied at its commit: the lag would
    # stay flat until it drops at once, and there would be no pace to estimate from.)
    sql(src, "DO $$ BEGIN FOR c IN 0..24 LOOP "
             "INSERT INTO public.events SELECT g, 'batch', repeat(md5(g::text), 4) "
             "FROM generate_series(c * 100000 + 1, (c + 1) * 100000) g; COMMIT; "
             "END LOOP; END $$")

    metrics_url = None
    for line in list(stderr_lines):
        m = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line)
        if m:
            metrics_url = m.group(1)
    seen = {"status": None, "metric": None, "drain": None}

    def watch():
        st = phase_of(lab, state)
        live = st.get("live", {})
        if "ready_in_s" in live and live["ready_in_s"] > 0 and seen["status"] is None:
            seen["status"] = (live["ready_in_s"], live.get("drain_bytes_per_s"))
        if metrics_url and (seen["metric"] is None or not (seen["drain"] or 0) > 0):
            try:
                text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
            except OSError:
                text = ""
            m = re.search(r"^pgshift_cutover_ready_in_seconds\{[^}]*\} (\S+)$", text, re.M)
            if m and float(m.group(1)) > 0 and seen["metric"] is None:
                seen["metric"] = float(m.group(1))
            # Negative while the batch still writes faster than the target applies.
            m = re.search(r"^pgshift_replication_lag_drain_bytes_per_second\{[^}]*\} (\S+)$", text, re.M)
            if m and not (seen["drain"] or 0) > 0:
                seen["drain"] = float(m.group(1))
        return st.get("phase") in ("ReadyForCutover", "Failed") or up.poll() is not None

    wait_for(watch, timeout=600, interval=0.5, what="ReadyForCutover")
    up.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(stderr_lines)
    assert up.returncode == 0, err[-4000:]
    assert phase_of(lab, state)["phase"] == "ReadyForCutover"

    # The progress lines said it, from the measured pace.
    eta_lines = [l for l in err.splitlines() if "catching up: lag" in l and "ready in ~" in l]
    assert eta_lines, "\n".join(l for l in err.splitlines() if "catching up" in l)[-3000:]
    assert re.search(r"ready in ~\d+ (s|min) \(lag falls [\d.]+ [kMG]?B/s\)", eta_lines[0]), eta_lines[0]
    # The history file (the report's source) has the series, and the estimates come down to 0.
    samples = [e for e in history(state) if e.get("kind") == "sample" and e.get("phase") == "CatchingUp"]
    with_eta = [e for e in samples if e.get("ready_in_s", 0) > 0]
    assert with_eta, samples[-5:]
    assert all(e["drain_bytes_per_s"] > 0 for e in with_eta)
    assert any(e.get("ready_in_s") == 0 for e in history(state) if e.get("kind") == "sample")
    # `pgshift status` and /metrics showed it while it drained.
    assert seen["status"] is not None, "pgshift status never showed ready_in_s"
    assert seen["metric"] is not None, f"/metrics ({metrics_url}) never showed the estimate"
    assert seen["drain"] is not None and seen["drain"] > 0, seen

    # How good was the first estimate? Printed for the record (not asserted: it depends on the
    # machine's load), against when the lag really went under the threshold.
    first = with_eta[0]
    done = next(e for e in samples if e["ts"] > first["ts"] and (e.get("lag_bytes") or 0) <= 1 * MB) \
        if any((e.get("lag_bytes") or 0) <= 1 * MB for e in samples) else None
    actual = (done["ts"] - first["ts"]) / 1000 if done else None
    print(f"backlog: first estimate {first['ready_in_s']:.1f} s at lag {first['lag_bytes'] / MB:.0f} MB "
          f"(falling {first['drain_bytes_per_s'] / MB:.1f} MB/s); actual {actual} s; "
          f"{len(with_eta)} samples with an estimate")
    assert sql(dst, "SELECT count(*) FROM public.events") == "2500000"
