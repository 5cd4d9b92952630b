"""HTML pages for a run folder, and the difference between two runs.

Pages: ``reports/<run>/index.html`` (the matrix: devices by tests, one verdict per cell, and what
changed since the previous run in the same reports folder) and ``reports/<run>/<device>/index.html``
(identity, tests, crash/hang evidence with the console excerpt, NMI evidence as inline SVG, timeline).

Why it is built this way:

* Pages are built **only** from ``run.json``, ``summary.json``, ``<device>/report.json`` and
  ``<device>/console.log`` -- files that never hold a secret (report.py writes the device section
  from an allow-list). Nothing here reads an inventory.
* A run killed by SIGKILL has no ``summary.json`` and ``report.json`` files that still say
  ``"status": "incomplete"``: the matrix is built from the device reports, never from the summary
  alone, and an incomplete run or device is marked as such on every page.
* Console text is the device's, hence untrusted: every template is rendered with autoescape on,
  and charts are drawn from numbers computed here, never from markup.
* Pages open from disk on a lab PC with no network: CSS and SVG are inline, no JavaScript, no fonts.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from rig import __version__
from rig.console import parse_log_line
from rig.errors import ConfigError
from rig.report import write_atomic
from rig.ttf import analyse
from rig.vocab import VerdictKind

log = logging.getLogger(__name__)

DEVICE_SCHEMA = "shadowbox-rig/device-report"
SUMMARY_SCHEMA = "shadowbox-rig/run-summary"
#: The newest report.json version this module understands.
MAX_VERSION = 1
#: Console lines shown before a crash/hang verdict (the page links the whole console.log).
EXCERPT_LINES = 40
#: ... extended back to the last heartbeat line if it is within this many lines of the verdict,
#: so the reader sees where the device went quiet.
EXCERPT_MAX_LINES = 160
#: For a crash, lines after the verdict (the rest of the oops) within this many seconds.
CRASH_TAIL_SECONDS = 10.0
CRASH_TAIL_LINES = 25

_FAILING_KINDS = {VerdictKind.CRASH, VerdictKind.HANG, VerdictKind.REBOOT, VerdictKind.LOST_CONNECTION}


# ---------------------------------------------------------------------------------------------
# the model read from disk


@dataclass(frozen=True)
class Cell:
    """One test on one device, as the matrix and the diff see it.

    ``css`` is the colour class: ``ok`` (passed), ``bad`` (the device crashed, hung, rebooted or
    was lost), ``failed`` (the test failed on a healthy device), ``lab`` (lab fault, or the device
    was powered off from outside: not the device's result), ``skip`` (skipped), ``none`` (not run on this device).
    """

    outcome: str
    verdict: str
    kind: str
    css: str
    label: str
    #: The crash's title (rig.detect: ``<report type> in <guilty function>``), "" if none: two runs'
    #: crashes with the same title are the same crash.
    title: str = ""

    @property
    def failed(self) -> bool:
        return self.css in ("bad", "failed")

    @property
    def passed(self) -> bool:
        return self.css == "ok"


NOT_RUN = Cell(outcome="", verdict="", kind="", css="none", label="not run")


def cell_of(outcome: str, verdict: str, kind: str | None = None) -> Cell:
    """Classify a test's outcome and verdict (``summary.json`` cells carry only these two)."""
    kind = kind or verdict.split("(", 1)[0]
    if kind == VerdictKind.LAB_FAULT:
        return Cell(outcome, verdict, kind, "lab", "lab-fault")
    if kind == VerdictKind.POWERED_OFF:  # switched off from outside: not the device's result (rig.vocab)
        return Cell(outcome, verdict, kind, "lab", "powered-off")
    if kind in {k.value for k in _FAILING_KINDS}:
        return Cell(outcome, verdict, kind, "bad", verdict)
    if kind == VerdictKind.DEPLOY_FAILED:  # the build was not deployed: the test failed, the laptop is fine
        return Cell(outcome, verdict, kind, "failed", verdict)
    if outcome == "skipped":
        return Cell(outcome, verdict, kind, "skip", "skipped")
    if outcome == "passed":
        return Cell(outcome, verdict, kind, "ok", "ok")
    return Cell(outcome, verdict, kind, "failed", "failed")


def cell_of_test(t: dict[str, Any]) -> Cell:
    """One ``tests[]`` entry of a report.json -> its cell, with the crash's title when it crashed."""
    v = t.get("verdict") or {}
    cell = cell_of(t.get("outcome", ""), str(v.get("verdict", "")), v.get("kind"))
    title = str((v.get("event") or {}).get("title") or "") if cell.css == "bad" else ""
    return replace(cell, title=title) if title else cell


@dataclass
class DeviceRun:
    """One device's ``report.json`` (or, when it is missing, its row of ``summary.json``)."""

    name: str
    dir: Path
    data: dict[str, Any]
    from_summary: bool = False
    problem: str = ""  # why report.json could not be used, named for the reader

    @property
    def status(self) -> str:
        return str(self.data.get("status", "incomplete"))

    @property
    def incomplete(self) -> bool:
        return self.status != "complete"

    @property
    def tests(self) -> list[dict[str, Any]]:
        return list(self.data.get("tests", []))

    @property
    def timeline(self) -> list[dict[str, Any]]:
        return sorted(self.data.get("timeline", []), key=lambda e: float(e.get("t", 0)))

    def cells(self) -> dict[str, Cell]:
        """Test name -> cell; a test that ran twice (a rerun) shows its last result."""
        if self.from_summary:
            return {n: cell_of(c["outcome"], c["verdict"]) for n, c in self.data.get("tests", {}).items()}
        out: dict[str, Cell] = {}
        for t in self.tests:
            out[t["name"]] = cell_of_test(t)
        return out

    def time_to_failure(self) -> float | None:
        """From the last soak-end timeline event: seconds of NMIs until the crash/hang (None: none)."""
        ends = [e for e in self.timeline if e.get("kind") == "soak-end"]
        if not ends:
            return None
        ttf = ends[-1].get("time_to_failure")
        return None if ttf is None else float(ttf)

    def soak_attempts(self) -> list[tuple[float, bool]]:
        """Every soak-end event as ``(seconds of NMIs, failed)``: the input of the time-to-hang statistics."""
        out: list[tuple[float, bool]] = []
        for e in self.timeline:
            if e.get("kind") != "soak-end":
                continue
            try:
                ttf = e.get("time_to_failure")
                out.append((float(ttf), True) if ttf is not None else (float(e.get("seconds") or 0.0), False))
            except (TypeError, ValueError):
                continue  # a hand-edited or damaged event: the statistics skip it, the page still renders
        return out

    def test_events(self) -> dict[str, list[dict[str, Any]]]:
        """Test name -> the timeline events recorded while it ran.

        report.py appends a ``test`` event each time it records a test, in the same order as
        ``tests``; the events since the previous ``test`` event belong to this one.
        """
        out: dict[str, list[dict[str, Any]]] = {}
        names = [t["name"] for t in self.tests]
        pending: list[dict[str, Any]] = []
        i = 0
        for e in self.data.get("timeline", []):
            if e.get("kind") == "test":
                if i < len(names):
                    out.setdefault(names[i], []).extend(pending)
                i += 1
                pending = []
            else:
                pending.append(e)
        return out


@dataclass
class RunView:
    """A run folder as read from disk, complete or not."""

    dir: Path
    meta: dict[str, Any]
    summary: dict[str, Any] | None
    devices: list[DeviceRun]
    problem: str = ""  # an unusable run.json / summary.json, named for the reader (a banner)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.dir.name)

    @property
    def incomplete(self) -> bool:
        return self.summary is None or any(d.incomplete for d in self.devices)

    @property
    def started(self) -> float:
        """When the run started: run.json, else the earliest timeline event, else the folder's mtime."""
        if "started" in self.meta:
            return float(self.meta["started"])
        times = [float(e["t"]) for d in self.devices for e in d.timeline if "t" in e]
        return min(times) if times else self.dir.stat().st_mtime

    def test_names(self) -> list[str]:
        """Every test that ran on any device (columns of the matrix): grouped by test file, then
        in the order first seen -- devices run tests in different orders under xdist."""
        seen: dict[str, tuple[str, int]] = {}
        for d in self.devices:
            files = {t["name"]: str(t.get("nodeid", "")).split("::", 1)[0] for t in d.tests}
            for name in d.cells():
                seen.setdefault(name, (files.get(name, ""), len(seen)))
        return sorted(seen, key=lambda n: seen[n])

    def device(self, name: str) -> DeviceRun | None:
        return next((d for d in self.devices if d.name == name), None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); was it written by the rig?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); was it written by the rig?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _shape_problem(path: Path, data: dict[str, Any]) -> str:
    """What in a report.json the pages could not show (a hand-edited or foreign file), or ''."""
    tests = data.get("tests", [])
    if not isinstance(tests, list):
        return f"{path}: 'tests' is not a list"
    for i, t in enumerate(tests):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            return f"{path}: test #{i + 1} has no name"
        if not isinstance(t.get("verdict") or {}, dict):
            return f"{path}: test {t['name']!r} has a verdict that is not an object"
    for key in ("timeline", "nmi_deliveries"):
        items = data.get(key, [])
        if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
            return f"{path}: {key!r} is not a list of objects"
    for e in data.get("timeline", []):
        if not isinstance(e.get("t", 0), int | float):
            return f"{path}: timeline event {str(e.get('kind'))[:40]!r} has a time that is not a number"
    callbacks = data.get("shadowbox_callbacks") or {}
    if not isinstance(callbacks, dict):
        return f"{path}: 'shadowbox_callbacks' is not an object"
    for cpu, n in callbacks.items():
        if not str(cpu).isdigit() or not isinstance(n, int):
            return f"{path}: shadowbox_callbacks key {str(cpu)[:20]!r} is not a CPU number with a count"
    if not isinstance(data.get("device", {}), dict):
        return f"{path}: 'device' is not an object"
    return ""


def load_run(run_dir: Path) -> RunView:
    """Read a run folder. A device whose report.json cannot be used is kept, with the reason; an
    unusable run.json or summary.json becomes the run's problem (shown as a banner), not an error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder (expected reports/<run-id>/ with <device>/report.json)")
    problems: list[str] = []
    meta: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        try:
            meta = _read_json(run_dir / "run.json")
            if not isinstance(meta.get("started", 0), int | float):
                problems.append(f"{run_dir / 'run.json'}: 'started' is not a time")
                meta = {}
        except ConfigError as exc:
            problems.append(str(exc))
    summary: dict[str, Any] | None = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = _read_json(run_dir / "summary.json")
            if summary.get("schema") != SUMMARY_SCHEMA:
                problems.append(
                    f"{run_dir / 'summary.json'}: schema is {summary.get('schema')!r}, not {SUMMARY_SCHEMA!r}"
                )
                summary = None
            elif not isinstance(summary.get("devices", []), list) or not all(
                isinstance(r, dict) and isinstance(r.get("device"), str) and isinstance(r.get("tests", {}), dict)
                for r in summary.get("devices", [])
            ):
                problems.append(f"{run_dir / 'summary.json'}: 'devices' is not a list of device rows")
                summary = None
        except ConfigError as exc:
            problems.append(str(exc))
    devices: list[DeviceRun] = []
    for rep in sorted(run_dir.glob("*/report.json")):
        name = rep.parent.name
        try:
            data = _read_json(rep)
            problem = ""
            if data.get("schema") != DEVICE_SCHEMA:
                problem = f"{rep}: schema is {data.get('schema')!r}, not {DEVICE_SCHEMA!r}"
            elif not isinstance(data.get("version", 0), int):
                problem = f"{rep}: report version {str(data.get('version'))[:20]!r} is not a number"
            elif int(data.get("version", 0)) > MAX_VERSION:
                problem = (
                    f"{rep}: report version {data.get('version')} is newer than this rig understands "
                    f"({MAX_VERSION}); re-render with a newer rig"
                )
            else:
                problem = _shape_problem(rep, data)
        except ConfigError as exc:
            data, problem = {}, str(exc)
        if problem:
            devices.append(DeviceRun(name, rep.parent, {"status": "unreadable"}, problem=problem))
        else:
            devices.append(DeviceRun(str(data.get("device", {}).get("name") or name), rep.parent, data))
    known = {d.dir.name for d in devices}
    for row in (summary or {}).get("devices", []):
        if row.get("device") not in known:
            devices.append(DeviceRun(str(row["device"]), run_dir / str(row["device"]), row, from_summary=True))
    if not devices:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise ConfigError(
            f"{run_dir}: no <device>/report.json and no summary.json: not a run folder (or the run wrote nothing yet)"
            + why
        )
    return RunView(run_dir, meta, summary, devices, problem="; ".join(problems))


def previous_run(run_dir: Path) -> Path | None:
    """The newest run folder next to ``run_dir`` that started before it and has a summary.json."""
    run_dir = Path(run_dir)
    this = load_run(run_dir).started
    best: tuple[float, Path] | None = None
    for sib in run_dir.parent.iterdir():
        if sib == run_dir or not (sib / "summary.json").is_file():
            continue
        try:
            started = load_run(sib).started
        except (ConfigError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # One broken sibling must not stop every later run in the folder from rendering.
            log.info("previous run: skipping %s (%s)", sib, exc)
            continue
        if started < this and (best is None or started > best[0]):
            best = (started, sib)
    return best[1] if best else None


# ---------------------------------------------------------------------------------------------
# diff


@dataclass(frozen=True)
class Change:
    """One test on one device whose result differs between two runs."""

    device: str
    test: str
    before: Cell
    after: Cell
    #: ``regression`` (newly fails), ``fixed`` (newly passes), ``changed`` (fails differently),
    #: ``lab`` (a lab fault on either side: not the device's result), ``other`` (skips, not run).
    kind: str
    time_to_failure: float | None = None
    #: For a crash with a title: "same crash as in <run> on <device>" or "new crash".
    crash_note: str = ""

    def text(self) -> str:
        return f"{self.device}: {self.short()}"

    def short(self) -> str:
        """Without the device name (the matrix page lists changes under each device)."""
        b = self.before.label if self.before.css in ("ok", "none", "skip", "lab") else self.before.verdict
        a = self.after.label if self.after.css in ("ok", "none", "skip", "lab") else self.after.verdict
        b = "passed" if b == "ok" else b
        a = "passed" if a == "ok" else a
        note = ""
        if self.time_to_failure is not None and self.after.failed:
            what = "hang" if self.after.kind == VerdictKind.HANG else "failure"
            note = f" (time to {what} {self.time_to_failure:.0f} s)"
        if self.after.title:
            note += f": {self.after.title} ({self.crash_note})" if self.crash_note else f": {self.after.title}"
        return f"{self.test}: {b} -> {a}{note}"


@dataclass(frozen=True)
class TimeToFailure:
    """A device's time-to-hang (soak-end ``time_to_failure``) in both runs; None = no failure."""

    device: str
    before: float | None
    after: float | None

    def text(self) -> str:
        return f"{self.device}: {self.short()}"

    def short(self) -> str:
        def fmt(v: float | None) -> str:
            return "no failure" if v is None else f"{v:.0f} s"

        return f"time to failure {fmt(self.before)} -> {fmt(self.after)}"


@dataclass
class RunDiff:
    """What changed from run ``a`` to run ``b`` (b is the newer one)."""

    a: str
    b: str
    changes: list[Change] = field(default_factory=list)
    times: list[TimeToFailure] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # runs that did not finish

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def regressions(self) -> list[Change]:
        return self.of_kind("regression")

    def by_device(self) -> dict[str, list[Change]]:
        out: dict[str, list[Change]] = {}
        for c in self.changes:
            out.setdefault(c.device, []).append(c)
        return out

    def text(self) -> str:
        """The plain-text rendering ``rig report diff`` prints."""
        lines = [f"rig report diff: {self.a} -> {self.b}"]
        for run in self.incomplete:
            lines.append(f"note: run {run} is INCOMPLETE (no summary.json or a device report not complete)")
        sections = (
            ("regression", "REGRESSIONS (newly failing)"),
            ("changed", "still failing, differently"),
            ("fixed", "newly passing"),
            ("lab", "lab faults (not a device result)"),
            ("other", "other changes (skips, tests not run)"),
        )
        for kind, title in sections:
            items = self.of_kind(kind)
            if items:
                lines.append(f"{title}:")
                lines += [f"  {c.text()}" for c in items]
        if self.times:
            lines.append("time to failure:")
            lines += [f"  {t.text()}" for t in self.times]
        if self.only_in_a:
            lines.append(f"devices only in {self.a}: {', '.join(self.only_in_a)}")
        if self.only_in_b:
            lines.append(f"devices only in {self.b}: {', '.join(self.only_in_b)}")
        if len(lines) == 1 + len(self.incomplete):
            lines.append("no changes: every device has the same result for every test")
        return "\n".join(lines)


def _change_kind(before: Cell, after: Cell) -> str | None:
    if before.label == after.label and before.css == after.css and before.title == after.title:
        return None
    if before.css == "lab" or after.css == "lab":
        return "lab"
    if after.failed and not before.failed:
        return "regression"
    if before.failed and after.passed:
        return "fixed"
    if before.failed and after.failed:
        return "changed"
    return "other"


def _test_ttf(dev: DeviceRun, test: str) -> float | None:
    """The time_to_failure a soak-end event recorded while ``test`` ran (None if it recorded none)."""
    for e in dev.test_events().get(test, []):
        if e.get("kind") == "soak-end" and e.get("time_to_failure") is not None:
            return float(e["time_to_failure"])
    return None


def diff_views(a: RunView, b: RunView) -> RunDiff:
    """Compare two loaded runs device by device and test by test."""
    diff = RunDiff(a.run_id, b.run_id)
    diff.incomplete = [r.run_id for r in (a, b) if r.incomplete]
    names_a = [d.name for d in a.devices]
    names_b = [d.name for d in b.devices]
    diff.only_in_a = [n for n in names_a if n not in names_b]
    diff.only_in_b = [n for n in names_b if n not in names_a]
    crashes_a: dict[str, str] = {}  # title -> the device of run a it crashed
    for d in a.devices:
        for cell in d.cells().values():
            if cell.title:
                crashes_a.setdefault(cell.title, d.name)
    for name in names_b:
        da, db = a.device(name), b.device(name)
        if da is None or db is None:
            continue
        ca, cb = da.cells(), db.cells()
        for test in list(cb) + [t for t in ca if t not in cb]:
            before, after = ca.get(test, NOT_RUN), cb.get(test, NOT_RUN)
            kind = _change_kind(before, after)
            if kind is not None:
                note = ""
                if after.title:
                    where = crashes_a.get(after.title)
                    note = "new crash" if where is None else f"same crash as in {a.run_id} on {where}"
                diff.changes.append(Change(name, test, before, after, kind, _test_ttf(db, test), note))
        ta, tb = da.time_to_failure(), db.time_to_failure()
        if ta != tb and not (ta is not None and tb is not None and round(ta) == round(tb)):
            diff.times.append(TimeToFailure(name, ta, tb))
    return diff


def diff_runs(a: Path, b: Path) -> RunDiff:
    """What changed from run folder ``a`` to run folder ``b`` (``b`` the newer)."""
    return diff_views(load_run(a), load_run(b))


# ---------------------------------------------------------------------------------------------
# console excerpts


@dataclass(frozen=True)
class LogLine:
    number: int  # 1-based line number in console.log
    wall: float | None
    stamp: str
    text: str
    mark: str = ""  # css class: "heartbeat", "event", "after"


def iter_console(path: Path) -> Iterator[LogLine]:
    """``console.log`` lines with their wall time (``None`` for a line not in the rig's format)."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            parsed = parse_log_line(line)
            if parsed is not None:
                yield LogLine(n, *parsed)
            else:
                yield LogLine(n, None, "", line)


def console_excerpt(
    path: Path, at: float, *, lines: int = EXCERPT_LINES, tail_seconds: float = 0.0, event_text: str = ""
) -> list[LogLine]:
    """The last ``lines`` console lines up to the verdict time ``at`` (+ a crash's tail after it).

    Heartbeat lines and the line the verdict was judged from are marked, so a reader sees at a
    glance where the device went quiet.
    """
    if not path.is_file():
        return []
    before: deque[LogLine] = deque(maxlen=max(lines, EXCERPT_MAX_LINES))
    after: list[LogLine] = []
    last_wall: float | None = None
    for ln in iter_console(path):
        wall = ln.wall if ln.wall is not None else last_wall
        last_wall = wall
        if wall is None or wall <= at:
            before.append(ln)
        elif tail_seconds > 0 and wall <= at + tail_seconds and len(after) < CRASH_TAIL_LINES:
            after.append(ln)
        else:
            break
    kept = list(before)
    start = max(0, len(kept) - lines)
    beats = [i for i, ln in enumerate(kept) if "rig-heartbeat" in ln.text]
    if beats and beats[-1] < start:
        start = beats[-1]
    out: list[LogLine] = []
    for ln in kept[start:]:
        mark = "heartbeat" if "rig-heartbeat" in ln.text else ""
        if event_text and event_text in ln.text:
            mark = "event"
        out.append(LogLine(ln.number, ln.wall, ln.stamp, ln.text, mark))
    out += [LogLine(ln.number, ln.wall, ln.stamp, ln.text, "after") for ln in after]
    return out


# ---------------------------------------------------------------------------------------------
# charts: geometry computed here, drawn by the templates' SVG macros


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    css: str
    value: str
    title: str


@dataclass(frozen=True)
class BarChart:
    """A small grouped bar chart (groups left to right, bars within a group)."""

    width: float
    height: float
    bars: list[Bar]
    labels: list[tuple[float, str]]  # x centre, group label
    legend: list[tuple[str, str]]  # css, text
    base: float  # y of the axis


def bar_chart(
    groups: list[tuple[str, list[tuple[str, float, str]]]], *, bar_w: float = 22, height: float = 110
) -> BarChart:
    """``groups``: (label, [(series css, value, series name)]) -> geometry with a shared scale."""
    top, bottom, gap = 16.0, 18.0, 14.0
    peak = max((v for _, series in groups for _, v, _ in series), default=0) or 1
    plot_h = height - top - bottom
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    legend: dict[str, str] = {}
    x = 8.0
    for label, series in groups:
        start = x
        for css, value, name in series:
            h = plot_h * value / peak
            bars.append(Bar(x, top + plot_h - h, bar_w, max(h, 0.0), css, f"{value:g}", f"{label} {name}: {value:g}"))
            legend.setdefault(css, name)
            x += bar_w + 2
        labels.append(((start + x - 2) / 2, label))
        x += gap
    return BarChart(max(x, 130.0), height, bars, labels, list(legend.items()), top + plot_h)


def nmi_chart(nmi: dict[str, Any]) -> BarChart:
    """Per-CPU NMI and PMI counts before and after one test (cumulative /proc/interrupts rows)."""
    groups = []
    for i, cpu in enumerate(nmi.get("cpus", [])):
        series = []
        for row in ("NMI", "PMI"):
            vals = nmi.get(row) or {}
            b, a = vals.get("before", []), vals.get("after", [])
            if i < len(b) and i < len(a):
                series += [
                    (f"{row.lower()}-before", float(b[i]), f"{row} before"),
                    (f"{row.lower()}-after", float(a[i]), f"{row} after"),
                ]
        groups.append((f"cpu{cpu}", series))
    return bar_chart(groups, bar_w=14)


def delivery_chart(d: dict[str, Any]) -> BarChart:
    """One NMI source: how many were raised, and how many each CPU counted."""
    groups = [("raised", [("raised", float(d.get("raised", 0)), "raised")])]
    for cpu, n in zip(d.get("cpus", []), d.get("per_cpu", []), strict=False):
        css = "missing" if cpu in (d.get("missing_cpus") or []) else "counted"
        groups.append((f"cpu{cpu}", [(css, float(n), "counted" if css == "counted" else "missing")]))
    return bar_chart(groups, height=90)


def callbacks_chart(per_cpu: dict[str, int]) -> BarChart:
    groups = [
        (f"cpu{c}", [("callbacks", float(n), "host callbacks")])
        for c, n in sorted(per_cpu.items(), key=lambda kv: int(kv[0]))
    ]
    return bar_chart(groups, bar_w=28, height=100)


@dataclass(frozen=True)
class Mark:
    x: float
    w: float  # 0 for a point event
    lane: int
    css: str
    label: str
    title: str


@dataclass(frozen=True)
class Timeline:
    width: float
    height: float
    marks: list[Mark]
    ticks: list[tuple[float, str]]
    lanes: list[str]
    rows: list[dict[str, Any]]  # the table under the chart: +seconds, clock, kind, text


_LANES = ["tests", "soak", "deploy", "nmi", "recovery", "other"]
_LANE_OF = {
    "test": 0,
    "soak-start": 1,
    "soak-end": 1,
    "deploy": 2,
    "deploy-failed": 2,
    "connected": 2,
    "nmi": 3,
    "recovery": 4,
    "lab-fault": 5,
}


def timeline(dev: DeviceRun, width: float = 1000.0) -> Timeline:
    """The run of one device on one time axis: tests and the soak as spans, the rest as points."""
    events = dev.timeline
    tests = dev.tests
    spans: list[tuple[float, float, int, str, str, str]] = []  # start, end, lane, css, label, title
    test_events = [e for e in dev.data.get("timeline", []) if e.get("kind") == "test"]
    for t, e in zip(tests, test_events, strict=False):
        end = float(e["t"])
        start = end - float(t.get("duration") or 0)
        v = t.get("verdict") or {}
        cell = cell_of(t.get("outcome", ""), str(v.get("verdict", "")), v.get("kind"))
        spans.append((start, end, 0, f"c-{cell.css}", t["name"], f"{t['name']}: {cell.label}"))
    soak_start: float | None = None
    for e in events:
        if e.get("kind") == "soak-start":
            soak_start = float(e["t"])
        elif e.get("kind") == "soak-end" and soak_start is not None:
            bad = e.get("time_to_failure") is not None
            spans.append((soak_start, float(e["t"]), 1, "c-bad" if bad else "c-ok", "soak", str(e.get("text", ""))))
            soak_start = None
    if soak_start is not None:  # the run stopped during the soak
        last = max(float(e["t"]) for e in events)
        spans.append((soak_start, last, 1, "c-none", "soak (no end recorded)", "soak started, no end recorded"))
    times = [float(e["t"]) for e in events] + [s[0] for s in spans]
    if not times:
        return Timeline(width, 40, [], [], _LANES, [])
    t0, t1 = min(times), max(times + [s[1] for s in spans])
    span = max(t1 - t0, 1.0)
    left, right = 80.0, 16.0
    scale = (width - left - right) / span

    def xof(t: float) -> float:
        return left + (t - t0) * scale

    marks = [
        Mark(xof(s), max((e - s) * scale, 2.0), lane, css, label, title) for s, e, lane, css, label, title in spans
    ]
    for e in events:
        kind = str(e.get("kind", ""))
        if kind in ("test", "soak-start", "soak-end"):
            continue
        lane = _LANE_OF.get(kind, 5)
        css = "k-" + re.sub(r"[^a-z0-9-]", "", kind.lower())
        marks.append(
            Mark(xof(float(e["t"])), 0, lane, css, kind, f"+{float(e['t']) - t0:.1f} s {kind}: {e.get('text', '')}")
        )
    step = _nice_step(span)
    ticks = []
    k = 0.0
    while k <= span + 1e-9:
        ticks.append((xof(t0 + k), f"{k:g} s"))
        k += step
    rows = [
        {
            "rel": f"+{float(e['t']) - t0:.1f} s",
            "clock": datetime.fromtimestamp(float(e["t"]), UTC).strftime("%H:%M:%S"),
            "kind": e.get("kind", ""),
            "text": e.get("text", ""),
        }
        for e in events
    ]
    return Timeline(width, 30 + 22 * len(_LANES), marks, ticks, _LANES, rows)


def _nice_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if span / step <= 10:
            return float(step)
    return 3600.0 * 4


# ---------------------------------------------------------------------------------------------
# rendering


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("rig", "templates"),
        autoescape=True,  # console text and test names are untrusted: escape everything
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clock"] = lambda t: (
        "" if t is None else datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    env.filters["secs"] = lambda v: "" if v is None else f"{float(v):.1f} s"
    env.filters["anchor"] = anchor
    return env


def anchor(name: str) -> str:
    """An HTML id for a test name (``test_x[ipmi]`` -> ``t-test_x-ipmi``)."""
    return "t-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def _device_context(run: RunView, dev: DeviceRun) -> dict[str, Any]:
    console = dev.dir / "console.log"
    tests = []
    for t in dev.tests:
        v = t.get("verdict") or {}
        cell = cell_of_test(t)
        excerpt: list[LogLine] = []
        if cell.css in ("bad", "lab") and v.get("at") is not None:
            ev = v.get("event") or {}
            tail = CRASH_TAIL_SECONDS if v.get("kind") in (VerdictKind.CRASH, VerdictKind.REBOOT) else 0.0
            excerpt = console_excerpt(console, float(v["at"]), tail_seconds=tail, event_text=str(ev.get("text") or ""))
        tests.append(
            {
                "t": t,
                "v": v,
                "cell": cell,
                "excerpt": excerpt,
                "chart": nmi_chart(t["nmi"]) if t.get("nmi") else None,
                "ttf": _test_ttf(dev, t["name"]),
            }
        )
    deliveries = [{"d": d, "chart": delivery_chart(d)} for d in dev.data.get("nmi_deliveries", [])]
    callbacks = dev.data.get("shadowbox_callbacks") or {}
    soaks = dev.soak_attempts()
    # time to hang across this device's soaks (rig.ttf): shown once there is a failure or several soaks
    ttf_stats = analyse(soaks) if soaks and (len(soaks) > 1 or any(f for _, f in soaks)) else None
    return {
        "ttf_stats": ttf_stats,
        "run": run,
        "dev": dev,
        "data": dev.data,
        "device": dev.data.get("device", {}),
        "identity": dev.data.get("identity") or {},
        "deploy": dev.data.get("deploy"),
        "tests": tests,
        "deliveries": deliveries,
        "callbacks": callbacks,
        "callbacks_chart": callbacks_chart(callbacks) if callbacks else None,
        "timeline": timeline(dev),
        "has_console": console.is_file(),
        "console_transport": dev.data.get("console_transport"),
        "last_words": dev.data.get("last_words") or [],
        "ttf": dev.time_to_failure(),
        "generated": time.time(),
        "rig_version": __version__,
    }


def _matrix_context(run: RunView, diff: RunDiff | None, prev: Path | None) -> dict[str, Any]:
    tests = run.test_names()
    rows = []
    for d in run.devices:
        cells = d.cells()
        failed = [c for c in cells.values() if c.failed]
        labs = [c for c in cells.values() if c.css == "lab"]
        state = "FAIL" if failed else ("LAB FAULT" if labs else ("INCOMPLETE" if d.incomplete else "PASS"))
        rows.append(
            {
                "dev": d,
                "cells": [(t, cells.get(t, NOT_RUN)) for t in tests],
                "state": state,
                "page": (d.dir.name + "/index.html") if not d.from_summary and not d.problem else None,
                "ttf": d.time_to_failure() if not d.from_summary else None,
            }
        )
    # Header: a parametrized test is one group (``test_x`` over ``ipmi | sysrq | ...``), so the
    # matrix stays narrow enough to read at a glance on a laptop screen.
    groups: list[tuple[str, list[tuple[str, str | None]]]] = []
    for name in tests:
        base, _, param = name.partition("[")
        if groups and groups[-1][0] == base and param:
            groups[-1][1].append((name, param.rstrip("]")))
        else:
            groups.append((base, [(name, param.rstrip("]") if param else None)]))
    return {
        "run": run,
        "tests": tests,
        "groups": groups,
        "two_rows": any(param for _, members in groups for _, param in members),
        "rows": rows,
        "diff": diff,
        "prev": prev,
        "generated": time.time(),
        "rig_version": __version__,
    }


def render_device(run: RunView, dev: DeviceRun) -> Path:
    """Write ``<run>/<device>/index.html``."""
    html = _env().get_template("device.html.j2").render(**_device_context(run, dev))
    out = dev.dir / "index.html"
    _write(out, html)
    return out


def render_run(run_dir: Path) -> Path:
    """Write every page of a run folder (matrix + one page per device); returns the matrix page.

    Safe on a run that is still going or was killed: it reads what is on disk and marks what is
    incomplete. Re-rendering overwrites the pages and nothing else.
    """
    run = load_run(Path(run_dir))
    for dev in run.devices:
        if not dev.from_summary and not dev.problem:
            try:
                render_device(run, dev)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # A shape _shape_problem did not foresee: that device's banner, never a traceback.
                dev.problem = f"{dev.dir / 'report.json'}: cannot be shown ({type(exc).__name__}: {exc})"
    prev = previous_run(run.dir)
    diff = None
    if prev is not None:
        try:
            diff = diff_views(load_run(prev), run)
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
            run.problem = "; ".join(filter(None, [run.problem, f"no comparison with {prev}: {exc}"]))
            prev = None
    html = _env().get_template("matrix.html.j2").render(**_matrix_context(run, diff, prev))
    out = run.dir / "index.html"
    _write(out, html)
    return out


def _write(path: Path, text: str) -> None:
    write_atomic(path, text)  # unique temp name: two renders of one run never race on it


def render_all(paths: Iterable[Path]) -> list[Path]:
    """Render several run folders (the CLI's ``rig report html A B ...``)."""
    return [render_run(p) for p in paths]
