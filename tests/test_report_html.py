"""HTML reports, matrix page and ``rig report diff``, on real run folders from the virtual lab.

The folders in tests/data/reports/ were written by the rig's plugin on two lab guests (see the
README there): ``hangrun`` (lab-2 hangs in the soak, lab-1 passes) and ``okrun`` (both pass, run
later). Every test renders a copy in tmp_path. The Chromium test loads pages from file:// in the
real browser (Debian's chromium); it is skipped only when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.errors import ConfigError
from rig.reports.cli import report
from rig.reports.html import render_run
from rig.reports.results import DeviceRun, RunView, diff_runs, diff_views, load_run, previous_run

DATA = Path(__file__).parent / "data" / "reports"
CHROMIUM = Path("/usr/bin/chromium")
#: How Chromium 156 with --enable-logging=stderr --v=0 logs a page's console message or uncaught
#: error: ``[pid:tid:time:INFO:CONSOLE:1] "message", source: file:///... (1)`` (older: ``CONSOLE(1)``).
CONSOLE_MSG = re.compile(r":CONSOLE[:(]\d+")


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """A reports folder with copies of both real runs."""
    root = tmp_path / "reports"
    for run in ("hangrun", "okrun"):
        shutil.copytree(DATA / run, root / run)
    return root


class Cells(HTMLParser):
    """The matrix's verdict cells (``data-device``/``data-test``), with their class, link and text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], dict[str, str]] = {}
        self._cell: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-test" in a:
            self._cell = {"class": a.get("class", ""), "href": "", "text": ""}
            self.cells[(a["data-device"], a["data-test"])] = self._cell
        elif tag == "a" and self._cell is not None:
            self._cell["href"] = a.get("href", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data


def matrix_cells(html: str) -> dict[tuple[str, str], dict[str, str]]:
    """(device, test) -> cell, in page order."""
    p = Cells()
    p.feed(html)
    return p.cells


def console_block(html: str) -> str:
    m = re.search(r'<pre class="console">(.*?)</pre>', html, re.S)
    assert m, "no console excerpt on the page"
    return m.group(1)


# ---------------------------------------------------------------------------------------------
# device pages


def test_hanging_device_page_shows_verdict_heartbeat_and_console_up_to_the_verdict(reports: Path) -> None:
    render_run(reports / "hangrun")
    html = (reports / "hangrun" / "lab-2" / "index.html").read_text()
    rep = json.loads((reports / "hangrun" / "lab-2" / "report.json").read_text())
    soak = next(t for t in rep["tests"] if t["name"] == "test_nmi_soak")
    assert soak["verdict"]["kind"] == "hang"  # the data is what the test thinks it is
    assert "FAIL: test_nmi_soak: hang" in html
    assert 'id="t-test_nmi_soak"' in html
    assert "no heartbeat for 3.2 s and SSH does not answer within 2 s" in html
    assert "<b>3.2 s</b> from the last heartbeat to the verdict" in html
    assert "time to failure 12 s of NMIs" in html
    assert 'href="console.log"' in html
    assert 'class="banner incomplete"' not in html
    # The excerpt: ends at the verdict, reaches back to the last heartbeat, and nothing after it.
    block = console_block(html)
    assert "rig-heartbeat c1726d5c 10" in block and 'class="heartbeat"' in block
    assert "Dazed and confused" in block
    assert "=== verdict hang at" in block and "3.2 s after the last heartbeat" in block
    verdict_clock = datetime.fromtimestamp(soak["verdict"]["at"], UTC).strftime("%H:%M:%S.%f")[:12]
    stamps = re.findall(r"\b(\d\d:\d\d:\d\d\.\d{3})\b", block)
    assert stamps and max(stamps) <= verdict_clock, (max(stamps), verdict_clock)
    # The recovery boot after the hang is in console.log, but not in the excerpt.
    assert "Linux version" in (reports / "hangrun" / "lab-2" / "console.log").read_text()
    assert "Linux version" not in block


def test_device_page_identity_nmi_evidence_and_timeline(reports: Path) -> None:
    render_run(reports / "hangrun")
    html = (reports / "hangrun" / "lab-2" / "index.html").read_text()
    for text in (
        "QEMU TCG CPU version 2.5+",
        "0x1000065",
        "6.1.0-56-amd64",
        "console=ttyS0,115200 apic_extnmi=all panic=0",
        "recipe <b>sbsim</b>",
        "4352f79ca5b42da7c1ddcbe709804217ad1df377-dirty",
        "lab, virtual, kernel-6.1",
        "0.1.0 (report schema shadowbox-rig/device-report v1)",
    ):
        assert text in html, text
    # per-test NMI/PMI before/after: an SVG chart and the numbers (qmp: 4,5 -> 7,8)
    qmp = html.split('id="t-test_nmi_reaches_every_cpu-qmp"', 1)[1].split('<div class="test', 1)[0]
    assert "<svg" in qmp and "cpu0 NMI after: 7" in qmp and "cpu1 NMI after: 8" in qmp
    # per-source raised vs counted
    deliveries = html.split("NMI deliveries", 1)[1].split("<h2>", 1)[0]
    assert deliveries.count("<svg") == 3 and "cpu0: 1, cpu1: 2" in deliveries  # sysrq
    # Shadow-box host callbacks per CPU (report.json: cpu0 7, cpu1 8)
    callbacks = html.split("Shadow-box host NMI callbacks", 1)[1].split("<h2>", 1)[0]
    assert "cpu0 host callbacks: 7" in callbacks and "cpu1 host callbacks: 8" in callbacks
    # timeline: deploy, soak start/end, recovery, NMIs, tests
    tl = html.split("<h2>Timeline</h2>", 1)[1]
    for kind in ("deploy", "soak-start", "soak-end", "recovery", "nmi", "test"):
        assert f"<td>{kind}</td>" in tl, kind
    assert "power cycle and ready in 13.3 s" in tl


def test_pages_are_self_contained(reports: Path) -> None:
    render_run(reports / "hangrun")
    for page in (reports / "hangrun").rglob("index.html"):
        html = page.read_text()
        assert "<script" not in html.lower(), page
        assert not re.search(r'(src|href)="(https?:)?//', html), page  # nothing from the network
        assert "@import" not in html and "@font-face" not in html
        assert "<style>" in html


# ---------------------------------------------------------------------------------------------
# matrix


def test_matrix_cells_are_colour_coded_and_link_to_device_pages(reports: Path) -> None:
    page = render_run(reports / "hangrun")
    assert page == reports / "hangrun" / "index.html"
    cells = matrix_cells(page.read_text())
    soak = cells[("lab-2", "test_nmi_soak")]
    assert soak["class"] == "v c-bad" and soak["text"] == "hang"
    assert soak["href"] == "lab-2/index.html#t-test_nmi_soak"
    assert 'id="t-test_nmi_soak"' in (reports / "hangrun" / "lab-2" / "index.html").read_text()
    assert cells[("lab-1", "test_nmi_soak")]["class"] == "v c-ok"
    assert cells[("lab-1", "test_nmi_soak")]["href"] == "lab-1/index.html#t-test_nmi_soak"
    perf = cells[("lab-1", "test_nmi_reaches_every_cpu[perf]")]
    assert perf["class"] == "v c-skip" and perf["text"] == "skipped"
    assert {c["class"] for k, c in cells.items() if k[0] == "lab-1"} == {"v c-ok", "v c-skip"}
    # columns grouped by test file (deploy, delivery, soak), whatever order each device ran them in
    names = [k[1] for k in cells if k[0] == "lab-1"]
    assert names[0] == "test_preflight_and_start" and names[-1] == "test_nmi_soak"
    assert "no earlier run with a summary.json" in page.read_text()


def test_matrix_since_last_run_lists_newly_passing_and_time_to_hang(reports: Path) -> None:
    assert previous_run(reports / "okrun") == reports / "hangrun"
    html = render_run(reports / "okrun").read_text()
    since = html.split("<h2>Since last run</h2>", 1)[1]
    assert "compared with" in since and "hangrun" in since
    assert "newly passes: test_nmi_soak: hang -&gt; passed" in since
    assert "time to failure 12 s -&gt; no failure" in since
    assert "<b>lab-1</b>" not in since  # nothing changed on lab-1


def test_matrix_since_last_run_names_a_regression(reports: Path) -> None:
    # Make hangrun the newer run (run.json "started" an hour after okrun's): the same data seen
    # the other way round, i.e. a device that used to pass and now hangs.
    ok_started = json.loads((reports / "okrun" / "run.json").read_text())["started"]
    meta_path = reports / "hangrun" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["started"] = ok_started + 3600
    meta_path.write_text(json.dumps(meta))
    html = render_run(reports / "hangrun").read_text()
    since = html.split("<h2>Since last run</h2>", 1)[1]
    assert '<li class="regression">newly fails: test_nmi_soak: passed -&gt; hang (time to hang 12 s)</li>' in since
    assert "time to failure no failure -&gt; 12 s" in since


# ---------------------------------------------------------------------------------------------
# incomplete runs and bad input


def test_incomplete_run_without_summary_is_marked_and_built_from_device_reports(reports: Path) -> None:
    run = reports / "hangrun"
    (run / "summary.json").unlink()
    rep_path = run / "lab-2" / "report.json"
    rep = json.loads(rep_path.read_text())
    rep["status"] = "incomplete"
    rep["tests"] = rep["tests"][:2]  # killed after the soak: the later tests never ran
    rep_path.write_text(json.dumps(rep))
    html = render_run(run).read_text()
    assert 'class="banner incomplete"' in html and "no summary.json" in html
    assert "device reports not complete: lab-2" in html
    cells = matrix_cells(html)
    assert cells[("lab-2", "test_nmi_soak")]["class"] == "v c-bad"
    assert cells[("lab-2", "test_nmi_reaches_every_cpu[qmp]")]["class"] == "v c-none"
    assert cells[("lab-2", "test_nmi_reaches_every_cpu[qmp]")]["text"] == "not run"
    dev2 = (run / "lab-2" / "index.html").read_text()
    assert 'class="banner incomplete"' in dev2 and '"status": "incomplete"' in dev2
    assert "INCOMPLETE" in dev2.split("</title>")[0]
    assert 'class="banner incomplete"' not in (run / "lab-1" / "index.html").read_text()
    # Nothing was written but pages: the run can still be finished (summary.json) later.
    assert not (run / "summary.json").exists()


def test_a_device_report_from_a_newer_rig_is_named_not_fatal(reports: Path) -> None:
    rep_path = reports / "hangrun" / "lab-1" / "report.json"
    rep = json.loads(rep_path.read_text())
    rep["version"] = 99
    rep_path.write_text(json.dumps(rep))
    html = render_run(reports / "hangrun").read_text()
    assert f"{rep_path}: report version 99 is newer than this rig understands" in html
    assert matrix_cells(html)[("lab-2", "test_nmi_soak")]["text"] == "hang"


def test_not_a_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope")) + ": no such run folder"):
        render_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no <device>/report.json and no summary.json"):
        load_run(tmp_path / "empty")


def test_console_text_is_escaped(reports: Path) -> None:
    """Console lines are the device's: a line with markup must appear as text, never as markup."""
    log = reports / "hangrun" / "lab-2" / "console.log"
    lines = log.read_text().splitlines(keepends=True)
    idx = max(i for i, ln in enumerate(lines) if "rig-heartbeat c1726d5c 10" in ln)
    stamp = lines[idx].split(" ", 1)[0]
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'
    lines.insert(idx + 1, f"{stamp} {evil}\n")
    log.write_text("".join(lines))
    render_run(reports / "hangrun")
    html = (reports / "hangrun" / "lab-2" / "index.html").read_text()
    block = console_block(html)
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; &#34;quotes&#34;"
        in block
    )
    assert "<script" not in html and "<img" not in html


# ---------------------------------------------------------------------------------------------
# diff


def test_diff_runs_names_the_regression(reports: Path) -> None:
    diff = diff_runs(reports / "okrun", reports / "hangrun")
    assert [c.text() for c in diff.regressions] == ["lab-2: test_nmi_soak: passed -> hang (time to hang 12 s)"]
    assert [t.text() for t in diff.times] == ["lab-2: time to failure no failure -> 12 s"]
    back = diff_runs(reports / "hangrun", reports / "okrun")
    assert back.regressions == [] and [c.text() for c in back.of_kind("fixed")] == [
        "lab-2: test_nmi_soak: hang -> passed"
    ]
    same = diff_runs(reports / "okrun", reports / "okrun")
    assert same.changes == [] and "no changes" in same.text()


def _crash_run(run_id: str, crashes: dict[str, str]) -> RunView:
    """A run whose devices each failed test_nmi_soak with crash(bug) of the given title ("" = passed)."""
    devices = []
    for dev, title in crashes.items():
        verdict = (
            {"verdict": "crash(bug)", "kind": "crash", "detail": "bug", "event": {"kind": "bug", "title": title}}
            if title
            else {"verdict": "ok", "kind": "ok"}
        )
        test = {"name": "test_nmi_soak", "outcome": "failed" if title else "passed", "verdict": verdict}
        devices.append(DeviceRun(dev, Path(run_id) / dev, {"status": "complete", "tests": [test], "timeline": []}))
    return RunView(Path(run_id), {"run_id": run_id}, {}, devices)


def test_diff_tells_crashes_apart_by_title() -> None:
    """Same kind, another title: a different crash; a title seen in the older run: the same crash."""
    kasan, lockdep = "KASAN: use-after-free Read in sb_walk", "possible deadlock in sb_cfg_write"
    a = _crash_run("run-a", {"lab-1": kasan, "lab-2": "", "lab-3": kasan})
    b = _crash_run("run-b", {"lab-1": lockdep, "lab-2": kasan, "lab-3": kasan})
    diff = diff_views(a, b)
    assert [c.text() for c in diff.changes] == [
        f"lab-1: test_nmi_soak: crash(bug) -> crash(bug): {lockdep} (new crash)",
        f"lab-2: test_nmi_soak: passed -> crash(bug): {kasan} (same crash as in run-a on lab-1)",
    ]  # lab-3: the same crash in both runs is no change
    assert [c.kind for c in diff.changes] == ["changed", "regression"]


def test_rig_report_diff_command(reports: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(report, ["diff", str(reports / "okrun"), str(reports / "hangrun")])
    assert res.exit_code == 1, res.output
    assert "REGRESSIONS (newly failing):\n  lab-2: test_nmi_soak: passed -> hang (time to hang 12 s)" in res.output
    res = runner.invoke(report, ["diff", str(reports / "hangrun"), str(reports / "okrun")])
    assert res.exit_code == 0, res.output
    assert "newly passing:\n  lab-2: test_nmi_soak: hang -> passed" in res.output
    # run ids resolve inside the root command's --report-dir
    res = runner.invoke(report, ["diff", "okrun", "hangrun"], obj={"report_dir": reports})
    assert res.exit_code == 1 and "passed -> hang" in res.output
    res = runner.invoke(report, ["diff", "okrun", "nosuchrun"], obj={"report_dir": reports})
    assert res.exit_code == 1 and f"no run folder nosuchrun or {reports / 'nosuchrun'}" in res.output


def test_rig_report_html_command(reports: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(report, ["html", str(reports / "hangrun")])
    assert res.exit_code == 0, res.output
    assert f"wrote {reports / 'hangrun' / 'index.html'}" in res.output
    assert (reports / "hangrun" / "lab-2" / "index.html").is_file()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(report, ["html", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no <device>/report.json and no summary.json" in res.output
    assert "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------
# a real browser


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # running as root in a container: Chromium refuses its sandbox here
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium missing: apt-get install chromium (tools/bootstrap.sh)"
)
def test_pages_render_in_headless_chromium(reports: Path, tmp_path: Path) -> None:
    """The pages use no JavaScript at all; the browser must load them from disk, render the
    expected text (DOM dump) and log no page console message (Chromium logs those as CONSOLE(...))."""
    # First prove the detector: a page with a script error must show up in Chromium's log.
    canary = tmp_path / "canary.html"
    canary.write_text("<html><body>canary<script>console.error('canary-err'); no_such_fn();</script></body></html>")
    res = _chromium(tmp_path, canary.as_uri(), "--dump-dom")
    assert "canary" in res.stdout and CONSOLE_MSG.search(res.stderr), res.stderr[-2000:]
    assert "canary-err" in res.stderr and "Uncaught ReferenceError" in res.stderr

    render_run(reports / "hangrun")
    pages = {
        "matrix": reports / "hangrun" / "index.html",
        "lab-2": reports / "hangrun" / "lab-2" / "index.html",
    }
    expect = {
        "matrix": ["Run hangrun", ">hang</a>", "lab-1", "skipped"],
        "lab-2": ["FAIL: test_nmi_soak: hang", "rig-heartbeat"],
    }
    for name, page in pages.items():
        shot = tmp_path / f"{name}.png"
        res = _chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
        assert res.returncode == 0, res.stderr[-2000:]
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", res.stderr[-2000:]
        assert shot.stat().st_size > 20_000, "screenshot suspiciously small: blank page?"
        dom = _chromium(tmp_path, page.as_uri(), "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        for text in expect[name]:
            assert text in dom.stdout, (name, text)
        assert "<script" not in dom.stdout
        for out in (res.stderr, dom.stderr):
            assert not CONSOLE_MSG.search(out), out[-2000:]


def test_device_page_names_the_crash_by_its_title(reports: Path) -> None:
    """A crash verdict's event title (rig.detect.detector) is on the device page, escaped like all console text."""
    path = reports / "hangrun" / "lab-2" / "report.json"
    rep = json.loads(path.read_text())
    soak = next(t for t in rep["tests"] if t["name"] == "test_nmi_soak")
    title = "KASAN: use-after-free Read in sb_walk<script>"
    soak["verdict"].update(verdict="crash(bug)", kind="crash", detail="bug")
    soak["verdict"]["event"] = {"kind": "bug", "line": 1, "text": "BUG: KASAN: ...", "title": title}
    path.write_text(json.dumps(rep))
    render_run(reports / "hangrun")
    html = (reports / "hangrun" / "lab-2" / "index.html").read_text()
    assert "FAIL: test_nmi_soak: crash(bug) KASAN: use-after-free Read in sb_walk&lt;script&gt;" in html
    assert "<script>" not in html


# ---------------------------------------------------------------------------------------------
# issue 17 item 7: a bad file is a banner, never a traceback; item 11: file modes and temp files


def _html(reports: Path, run: str) -> tuple[int, str]:
    res = CliRunner().invoke(report, ["html", str(reports / run)], catch_exceptions=False)
    page = reports / run / "index.html"
    return res.exit_code, (page.read_text() if page.is_file() else res.output)


@pytest.mark.parametrize("breakage", ["not-utf8", "test-without-name", "callback-key-not-a-cpu"])
def test_report_html_bad_device_report_is_a_problem_banner(reports: Path, breakage: str) -> None:
    rep_path = reports / "hangrun" / "lab-1" / "report.json"
    rep = json.loads(rep_path.read_text())
    if breakage == "not-utf8":
        rep_path.write_bytes(rep_path.read_bytes().replace(b'"lab-1"', b'"lab-\xff1"', 1))
        want = "not UTF-8 text"
    elif breakage == "test-without-name":
        del rep["tests"][0]["name"]
        rep_path.write_text(json.dumps(rep))
        want = "test #1 has no name"
    else:
        rep["shadowbox_callbacks"] = {"cpu0": 3}
        rep_path.write_text(json.dumps(rep))
        want = "shadowbox_callbacks key &#39;cpu0&#39; is not a CPU number"
    code, html = _html(reports, "hangrun")
    assert code == 0, html
    assert f"{rep_path}: {want}" in html, html[:3000]
    assert matrix_cells(html)[("lab-2", "test_nmi_soak")]["text"] == "hang"  # the other device still shows


def test_report_html_a_corrupt_sibling_run_does_not_stop_later_runs(reports: Path) -> None:
    (reports / "hangrun" / "summary.json").write_bytes(b"\xff\xfe not json")
    (reports / "hangrun" / "run.json").write_bytes(b"\xff")
    code, html = _html(reports, "okrun")  # okrun's previous_run() reads hangrun
    assert code == 0, html
    assert "Run " in html
    code, html = _html(reports, "hangrun")  # and the corrupt run itself renders with a run banner
    assert code == 0, html
    assert 'id="run-problem"' in html and "summary.json: not UTF-8 text" in html


def test_report_files_follow_the_umask_and_leave_no_temp_file(reports: Path) -> None:
    from rig.reports.report import write_json_atomic

    old = os.umask(0o022)
    try:
        render_run(reports / "hangrun")
        target = reports / "hangrun" / "x.json"
        write_json_atomic(target, {"a": 1})
        for page in (reports / "hangrun" / "index.html", reports / "hangrun" / "lab-1" / "index.html", target):
            assert (page.stat().st_mode & 0o777) == 0o644, (page, oct(page.stat().st_mode))
        with pytest.raises(IsADirectoryError):  # fails after the temp file was made: at the rename
            write_json_atomic(reports / "hangrun" / "lab-1", {"a": 2})
    finally:
        os.umask(old)
    leftovers = [p.name for p in (reports / "hangrun").rglob(".*") if p.is_file()]
    assert leftovers == [], leftovers


def test_a_near_miss_is_on_the_timeline_once_and_the_margin_on_the_device_page(tmp_path: Path) -> None:
    """report.json ``liveness`` (HangMonitor.margin, written after each test): a heartbeat gap at 1.6 s of the
    2 s a hang needs is named once as a near miss with what to change; a comfortable margin is not."""
    from rig.inventory import Device
    from rig.reports.report import RunReport

    run = RunReport(tmp_path, "r1")
    ssh = {"host": "10.0.0.9", "host_key": "ssh-ed25519 AAAAC3Nza", "key_file": "/nonexistent"}
    tight, easy = (Device.model_validate({"name": n, "ssh": ssh}) for n in ("lap-tight", "lap-easy"))
    margin = {"heartbeat_interval": 1.0, "heartbeats": 300, "longest_heartbeat_gap": 1.6, "hang_needs_silence": 2.0,
              "slowest_probe_answer": 0.2, "silence_probe_deadline": 1.0}
    for _ in range(3):  # written after every test: said once
        run.device(tight).liveness(margin)
    run.device(easy).liveness({**margin, "longest_heartbeat_gap": 1.1})
    run.close()
    rep = json.loads((tmp_path / "r1" / "lap-tight" / "report.json").read_text())
    misses = [e["text"] for e in rep["timeline"] if e["kind"] == "near-miss"]
    assert rep["liveness"] == margin and len(misses) == 1, misses
    assert "1.6 s after the one before" in misses[0] and "raise [monitor] heartbeat_interval (now 1 s)" in misses[0]
    easy_rep = json.loads((tmp_path / "r1" / "lap-easy" / "report.json").read_text())
    assert not [e for e in easy_rep["timeline"] if e["kind"] == "near-miss"]
    render_run(tmp_path / "r1")
    page = (tmp_path / "r1" / "lap-tight" / "index.html").read_text()
    assert 'id="liveness"' in page and "longest gap <b>1.6 s</b> (a hang needs 2.0 s" in page
