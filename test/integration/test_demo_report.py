"""The report of a demo-sized run in a browser: `scripts/demo.sh` (what `make demo` runs) with
its default DEMO_SIZE of 1 GB, in a lab of its own, then its HTML report opened in headless
Chromium. A demo-sized run is a sample a second through the copy, the catch-up of the batch
job's backlog and the cutover, and a load series as long as the run: the page must
draw all of it with no console error, every chart painted, the lag chart carrying the catch-up
(lag and the "ready in" estimate) point by point."""
import json
import os
import re
import subprocess
import time

from conftest import CACHE, ROOT
from test_report import CHART_PROBE, CHARTS, chromium

# The release build, as `make demo` runs it (`make test` builds it before any test runs).
DEMO_BIN = ROOT / "build" / "pgshift"


def test_the_report_of_a_demo_sized_run_renders_every_sample(lab):
    out = lab.dir / "demo-out"
    env = dict(os.environ, PGSHIFT_LAB_DIR=str(lab.dir / "demo-lab"), DEMO_OUT=str(out),
               PGSHIFT_BIN=str(DEMO_BIN))
    env.pop("DEMO_SIZE", None)  # the default: what a user sees
    started = time.monotonic()
    p = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True,
                       text=True, timeout=1500)
    try:
        took = time.monotonic() - started
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
        assert "DEMO_SIZE=1GB" in p.stdout, p.stdout[:2000]
        m = re.search(r"Report \(open it in a browser; it loads nothing from the network\): (\S+)",
                      p.stdout)
        assert m, p.stdout[-2000:]
        html_path = m.group(1)
        # The client's verdict: every acknowledged write on the new server.
        verdict = re.search(r"acknowledged=(\d+).*missing=(\d+)", p.stdout)
        assert verdict and verdict.group(2) == "0" and int(verdict.group(1)) > 10000, p.stdout[-3000:]

        history = [json.loads(l) for l in (out / "state" / "history.jsonl").read_text().splitlines()]
        samples = [h for h in history if h["kind"] == "sample"]
        catching_up = [h for h in samples if h.get("phase") == "CatchingUp"]
        print(f"demo: {took:.0f} s, {len(samples)} samples ({len(catching_up)} catching up), "
              f"report {os.path.getsize(html_path) // 1024} kB")
        # A sample a second from the copy to the cutover: 32 in a 70 s demo on this machine,
        # 19 in a 47 s one. How many depends on the machine's speed; enough for a chart does not.
        assert len(samples) >= 10 and len(catching_up) >= 5, (len(samples), len(catching_up))

        driver = chromium("chromium-profile-demo")
        try:
            driver.get("file://" + html_path)
            deadline = time.time() + 60
            while time.time() < deadline and driver.execute_script(
                    "return (window.pgshiftCharts || []).length") < len(CHARTS):
                time.sleep(0.2)
            errors = [l for l in driver.get_log("browser") if l["level"] == "SEVERE"]
            assert errors == [], errors
            probe = driver.execute_script(CHART_PROBE)
            print("charts:", json.dumps(probe))
            for cid in CHARTS:
                assert cid in probe, f"{cid} not drawn: {probe}"
                assert probe[cid]["hits"] > 100, (cid, probe[cid])
            # Every sample is a point of the lag chart, and the load series covers the run.
            assert max(probe["chart-lag"]["points"]) >= len(samples) * 0.9, (probe["chart-lag"], len(samples))
            # (a point per second the client ran: 39 in a 49 s demo, 36 in a 45 s one)
            assert max(probe["chart-throughput"]["points"]) >= took * 0.6, (probe["chart-throughput"], took)
            # The catch-up told as a story: the "ready in" estimate is drawn while the lag drains.
            labels = driver.execute_script(
                "const c = (window.pgshiftCharts || []).find(c => c.id === 'chart-lag');"
                "return c ? c.plot.series.slice(1).map(s => s.label) : []")
            assert "ready in" in labels, labels
            ready_points = probe["chart-lag"]["points"][labels.index("ready in")]
            assert ready_points >= 3, (labels, probe["chart-lag"])
            os.makedirs(CACHE / "artifacts", exist_ok=True)
            driver.set_window_size(1280, min(driver.execute_script(
                "return document.documentElement.scrollHeight") + 40, 8000))
            time.sleep(0.5)
            assert driver.save_screenshot(str(CACHE / "artifacts" / "demo-report.png"))
        finally:
            driver.quit()
    finally:
        subprocess.run([str(DEMO_BIN), "lab", "down"], env=env, capture_output=True, timeout=120)
