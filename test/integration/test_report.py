"""`pgshift report` from a real run: a short upgrade 15 -> 17 under load through PgBouncer, the
report written with --load, then opened in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium from .cache/python, both installed by scripts/setup.sh):
no console errors, every chart drawn with data, and a screenshot kept as an artifact
($PGSHIFT_ARTIFACTS, default .cache/artifacts/report.png)."""
import json
import os
import re
import subprocess
import sys
import time

from conftest import BIN, CACHE, ROOT, parse_kv, psql_bin, sql

sys.path.insert(0, str(CACHE / "python"))

APP_SCHEMA = ROOT / "scripts" / "demo" / "app-schema.sql"
ARTIFACTS = os.environ.get("PGSHIFT_ARTIFACTS", str(CACHE / "artifacts"))
# A table name that is markup: the page must show it as text.
NASTY = '</script><img src=x onerror="window.pwned=1">'
CHARTS = ["chart-lag", "chart-copy", "chart-throughput", "chart-latency"]

# Runs in the page: for each chart, the data points per series and the canvas pixels drawn in
# one of the series' colours (axes and grid are grey, so they do not count).
CHART_PROBE = """
const out = {};
for (const c of (window.pgshiftCharts || [])) {
  const cv = c.plot.ctx.canvas;
  const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
  const cols = c.colors.map(h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)));
  let hits = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] < 200) continue;
    if (cols.some(k => Math.abs(px[i] - k[0]) < 30 && Math.abs(px[i + 1] - k[1]) < 30 &&
                       Math.abs(px[i + 2] - k[2]) < 30)) hits++;
  }
  out[c.id] = {hits: hits, width: cv.width, height: cv.height,
               points: c.plot.data.slice(1).map(s => s.filter(v => v != null).length)};
}
return out;
"""


def load_schema(dsn):
    subprocess.run([psql_bin(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(APP_SCHEMA)],
                   check=True, capture_output=True)
    # Enough data that the initial copy spans several history samples.
    sql(dsn, "CREATE TABLE shop.filler (id bigint PRIMARY KEY, pad text NOT NULL); "
             "INSERT INTO shop.filler SELECT g, repeat(md5(g::text), 6) "
             "FROM generate_series(1, 600000) g")
    quoted = '"' + NASTY.replace('"', '""') + '"'
    sql(dsn, f"CREATE TABLE shop.{quoted} (id int PRIMARY KEY, v text); "
             f"INSERT INTO shop.{quoted} SELECT g, 'v' || g FROM generate_series(1, 50) g")


ROWS, COLS = 40, 110
BAR_LINES = 4 + min(10, ROWS // 3)  # header, copy, tables, verify + detail (src/cli/progress.cc)


def run_on_terminal(lab, *args):
    """Runs pgshift with stderr on a pseudo-terminal of ROWS x COLS, feeding what it draws to
    a terminal emulator (pyte). Returns the exit code, stdout, a list of screen snapshots
    (one per read, as lists of lines) and the final screen."""
    try:
        import pyte
    except ImportError as e:
        raise AssertionError(f"pyte is missing ({e}): run scripts/setup.sh") from e
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = dict(lab.env, TERM="xterm", LANG="C.UTF-8")
    p = subprocess.Popen([BIN, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=slave, text=True)
    os.close(slave)
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    screens = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        stream.feed(chunk)
        screens.append(list(screen.display))
    os.close(master)
    stdout = p.stdout.read()
    rc = p.wait(timeout=300)
    return rc, stdout, screens, list(screen.display)


def check_bars(screens, final):
    top = ROWS - BAR_LINES
    drawn = [s for s in screens if s[top].startswith("pgshift ") and s[top + 1].startswith("copy ")]
    assert drawn, "no bars drawn:\n" + "\n".join(final)
    # The block keeps its shape at the bottom, whatever the log does above it.
    for s in drawn:
        assert s[top + 2].startswith("tables ") and s[top + 3].startswith("verify "), s[top:]
    phases = {s[top].split()[2] for s in drawn}
    assert {"InitialCopy", "CatchingUp"} <= phases, phases
    assert any(" 100%" in s[top + 1] and "done" in s[top + 1] for s in drawn)
    assert any("%" in s[top + 1] and "ETA" in s[top + 1] for s in drawn), "no copy in flight seen"
    # Verification drew its bar (it may end within one frame of the cutover, so its last
    # figures are not always on screen before the bars go away).
    assert any(s[top + 3].startswith("verify  [") and " of " in s[top + 3] for s in drawn)
    # Detail: the big table was seen copying.
    assert any("shop.filler" in line for s in drawn for line in s[top + 4:]), "no detail line"
    # Log lines scroll above the bars without tearing them.
    assert any(any("initial copy done" in line for line in s[:top]) for s in drawn)
    # One screen mid-copy, kept beside the screenshot for people to look at.
    mid = max(drawn, key=lambda s: sum(1 for line in s[top + 4:] if line.strip()))
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(os.path.join(ARTIFACTS, "progress.txt"), "w") as f:
        f.write("\n".join(line.rstrip() for line in mid) + "\n")
    print("terminal:", os.path.join(ARTIFACTS, "progress.txt"))
    # At the end the bars are gone and the log is intact.
    assert not any(line.startswith(("copy    [", "tables  [")) for line in final), final
    assert any("cutover done" in line for line in final), final


def chromium(profile="chromium-profile"):
    """Headless Chromium; each caller that may run at the same time as another (pytest-xdist
    runs test files two at a time) names its own profile folder, which Chromium locks."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:  # a missing dependency fails the test; it must not pass silently
        raise AssertionError(f"selenium is missing ({e}): run scripts/setup.sh") from e
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert os.path.exists(exe), f"{exe} is missing: run scripts/setup.sh"
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--hide-scrollbars", "--window-size=1280,1000",
              f"--user-data-dir={CACHE / profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def test_report_of_a_real_run_renders_in_chromium(lab):
    src = lab.start("rp-src", 15)
    dst = lab.start("rp-dst", 17)
    app = lab.router("rp-pb", "rp-src", "pgbouncer")
    router = lab.list()["rp-pb"]
    load_schema(src)
    state = lab.dir / "rp-state"
    ledger = lab.dir / "rp.ledger"

    load = lab.popen("load", "run", "--dsn", app, "--rate", "300", "--duration", "24",
                     "--ledger", str(ledger))
    time.sleep(2)
    # stderr on a terminal: the live bars, checked on an emulated screen.
    rc, stdout, screens, final = run_on_terminal(
        lab, "upgrade", "--source", src, "--target", dst, "--state", str(state),
        "--router", "pgbouncer", "--router-admin", router["admin_dsn"],
        "--router-config", router["config_file"], "--progress", "detail",
        # A fixed pace, so the copy spans several detail polls (one a second) on any
        # machine: unthrottled, a fast one copies the 120 MB in about a second.
        "--copy-rate", "30MB")
    assert rc == 0 and "phase RollbackReady" in stdout, (rc, stdout, final)
    check_bars(screens, final)
    out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    summary = parse_kv(out.strip().splitlines()[0])
    assert int(summary["errors"]) == 0, out

    # Not a terminal: no escape sequences, whatever --progress asks for.
    v = lab.run("verify", "--source", src, "--target", dst, "--level", "count",
                "--progress", "bars", check=False)
    assert "shop.filler" in v.stdout and "\x1b" not in v.stderr + v.stdout, v
    # On a terminal, verify shows its count in the bottom lines, then gives them back.
    rc, out, screens, final = run_on_terminal(lab, "verify", "--source", src, "--target", dst,
                                              "--level", "count")
    assert "shop.filler" in out, (rc, out, final)
    assert any(s[ROWS - 4] == "pgshift verify".ljust(COLS) and s[ROWS - 3].startswith("verify  ")
               for s in screens), final
    assert not any(line.startswith("pgshift verify") for line in final), final

    history = [json.loads(l) for l in (state / "history.jsonl").read_text().splitlines()]
    kinds = {h["kind"] for h in history}
    assert {"phase", "sample", "cutover"} <= kinds, kinds

    html_path = lab.dir / "report.html"
    rep = lab.run("report", "--state", str(state), "--load", str(ledger), "-o", str(html_path))
    assert str(html_path) in rep.stdout
    html = html_path.read_text()
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=", html, re.I)
    assert "url(http" not in html and "@import" not in html
    # The nasty table name is escaped text, never markup.
    assert NASTY not in html
    assert "&lt;/script&gt;&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt;" in html
    assert "password" not in html.lower()

    driver = chromium()
    try:
        driver.get(html_path.as_uri())
        deadline = time.time() + 20
        while time.time() < deadline and driver.execute_script(
                "return (window.pgshiftCharts || []).length") < len(CHARTS):
            time.sleep(0.2)
        logs = driver.get_log("browser")
        errors = [l for l in logs if l["level"] == "SEVERE"]
        assert errors == [], errors
        assert driver.execute_script("return window.pwned === undefined")

        probe = driver.execute_script(CHART_PROBE)
        print("charts:", json.dumps(probe))
        for cid in CHARTS:
            assert cid in probe, f"{cid} not drawn: {probe}"
            c = probe[cid]
            assert max(c["points"]) >= 2, (cid, c)
            assert c["hits"] > 100, (cid, c)  # data lines really painted, not just axes
        # The phase timeline: a bar per phase, and the cutover marked.
        bars = driver.execute_script(
            "return [...document.querySelectorAll('#timeline rect.phase-bar')]"
            ".map(r => [r.dataset.phase, r.getBBox().width])")
        phases = [b[0] for b in bars]
        for p in ("Preflight", "Schema", "InitialCopy", "CatchingUp", "CuttingOver"):
            assert p in phases, phases
        assert all(w > 0 for _, w in bars), bars
        assert driver.execute_script(
            "return document.querySelectorAll('#timeline line.cutover-mark.ok').length") >= 1
        # Verification table: every table matched, the nasty name shown as text.
        cells = driver.execute_script(
            "return [...document.querySelectorAll('#verification + p + table.verification tr')]"
            ".slice(1).map(r => [r.cells[1].textContent, r.cells[5].textContent])")
        assert ["shop." + NASTY, "match"] in cells, cells
        assert len(cells) >= 6 and all(c[1] == "match" for c in cells), cells
        # The seconds around the cutover are listed, the cutover second marked.
        assert driver.execute_script("return document.querySelectorAll('tr.cut').length") >= 1

        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "report.png")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(height + 40, 8000))
        time.sleep(0.5)
        assert driver.save_screenshot(shot)
        print(f"report: {html_path}\nscreenshot: {shot}")
    finally:
        driver.quit()


def test_report_refuses_a_missing_state(lab, tmp_path):
    p = lab.run("report", "--state", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html"),
                check=False)
    assert p.returncode != 0 and "nothing" in p.stderr, p.stderr
    assert not (tmp_path / "r.html").exists()
