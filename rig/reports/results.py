"""Run results read back: the one reader of ``run.json``, ``summary.json`` and ``<device>/report.json``,
and the one definition of severity and of a regression.

Why one module: the HTML pages, ``rig report diff``, ``rig report merge``, ``rig regress``, the demo's
result lines and the plugin's terminal summary each parsed these files, and ``rig report diff`` and
``rig regress`` each had their own idea of what "regressed" means. Here:

* :func:`load_run` reads a run folder (complete or not) into a :class:`RunView` of :class:`DeviceRun`;
  a file it cannot use becomes a named *problem*, never a traceback.
* A test's result is a :class:`Cell` (outcome, verdict, colour class); a device's result over a
  whole run (``rig regress``'s matrix cell) is a :class:`DeviceOutcome` (:func:`classify_device`).
* Both are placed on one scale, :data:`SEVERITY`: 0 passed, 1 failed on a healthy device (an assertion,
  a build Shadow-box refused), 2 the device failed (crash, hang, reboot, lost), ``None`` a result that
  says nothing about the build (a lab fault, a device switched off from outside, a run cut short).
  :func:`regressed` is the one rule: judged on both sides and worse than the baseline. For a single
  test a skip or a test not run counts as 0 (it showed no failure), so a test that newly fails is a
  regression (``rig report diff`` exits 1 on it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rig.errors import ConfigError
from rig.vocab import VerdictKind

log = logging.getLogger(__name__)

DEVICE_SCHEMA = "shadowbox-rig/device-report"
SUMMARY_SCHEMA = "shadowbox-rig/run-summary"
#: The newest report.json version this module understands.
MAX_VERSION = 1

_FAILING_KINDS = {VerdictKind.CRASH, VerdictKind.HANG, VerdictKind.REBOOT, VerdictKind.LOST_CONNECTION}


# ---------------------------------------------------------------------------------------------
# severity and regression: one scale, one rule

Outcome = Literal["pass", "fail", "deploy-failed", "hang", "crash", "lab-fault", "incomplete", "missing", "no-tests"]
#: How bad a device's outcome is; None = could not be judged (never a regression, on either side).
SEVERITY: dict[str, int | None] = {
    "pass": 0,
    "fail": 1,
    # A build that does not deploy where the baseline ran is worse than it; two that both fail to
    # deploy say nothing about Shadow-box (rig regress' exit code: a run of only those judged nothing).
    "deploy-failed": 1,
    "hang": 2,
    "crash": 2,
    "lab-fault": None,
    "incomplete": None,
    "missing": None,
    "no-tests": None,
}
#: The same scale for one test's cell (Cell.css): a skip or a test not run showed no failure (0).
CELL_SEVERITY: dict[str, int | None] = {"ok": 0, "skip": 0, "none": 0, "failed": 1, "bad": 2, "lab": None}


def regressed(before: int | None, after: int | None) -> bool:
    """Worse than the baseline; an unjudged result on either side never counts. The one definition."""
    return before is not None and after is not None and after > before


# ---------------------------------------------------------------------------------------------
# a test's cell, a device's run, a run folder


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
    #: The crash's title (rig.detect.detector: ``<report type> in <guilty function>``), "" if none: two runs'
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
    #: The JSON object of a report.json the pages cannot use (a foreign schema, a newer version), as read:
    #: ``rig regress`` still classifies what it holds (rig.runs.regress.cells_of_run).
    raw: dict[str, Any] | None = None

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


def read_json(path: Path) -> dict[str, Any]:
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
            meta = read_json(run_dir / "run.json")
            if not isinstance(meta.get("started", 0), int | float):
                problems.append(f"{run_dir / 'run.json'}: 'started' is not a time")
                meta = {}
        except ConfigError as exc:
            problems.append(str(exc))
    summary: dict[str, Any] | None = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = read_json(run_dir / "summary.json")
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
            data = read_json(rep)
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
            devices.append(DeviceRun(name, rep.parent, {"status": "unreadable"}, problem=problem, raw=data or None))
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
    if regressed(CELL_SEVERITY[before.css], CELL_SEVERITY[after.css]):
        return "regression"  # newly failing, or a test that failed now takes the device down
    if before.failed and after.passed:
        return "fixed"
    if before.failed and after.failed:
        return "changed"
    return "other"


def time_to_failure_of(dev: DeviceRun, test: str) -> float | None:
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
                diff.changes.append(Change(name, test, before, after, kind, time_to_failure_of(db, test), note))
        ta, tb = da.time_to_failure(), db.time_to_failure()
        if ta != tb and not (ta is not None and tb is not None and round(ta) == round(tb)):
            diff.times.append(TimeToFailure(name, ta, tb))
    return diff


def diff_runs(a: Path, b: Path) -> RunDiff:
    """What changed from run folder ``a`` to run folder ``b`` (``b`` the newer)."""
    return diff_views(load_run(a), load_run(b))


# ---------------------------------------------------------------------------------------------
# a device's outcome over a whole run (rig regress' matrix cell: what one build did on one device)

@dataclass
class DeviceOutcome:
    """What one run did on one device, in one word (``outcome``) and its detail; its severity is :data:`SEVERITY`."""

    outcome: Outcome
    detail: str = ""  # crash kind, or the failing test / reason
    time_to_failure: float | None = None  # seconds of NMI soak before the verdict
    test: str = ""  # the test where it happened
    #: A crash's title (rig.detect.detector: "<report type> in <guilty function>"), to tell crashes apart.
    title: str = ""
    #: For a crash with a title: the first build (this one included) with a crash of the same
    #: title, on any device -- this build's own label means "new crash" (set by line_up).
    first_seen: str = ""
    reason: str = ""  # deploy-failed: the named reason (build-failed, preflight, tree-mismatch, ...)

    @property
    def text(self) -> str:
        if self.outcome == "deploy-failed":
            return f"deploy-failed({self.reason or 'unknown'})"
        if self.outcome == "crash":
            base = f"crash({self.detail or 'unknown'})"
            if self.title:
                base += f" {self.title}"
        elif self.outcome == "fail":
            base = f"fail: {self.detail}" if self.detail else "fail"
        else:
            base = self.outcome
        if self.time_to_failure is not None and self.outcome in ("hang", "crash"):
            base += f" after {self.time_to_failure:.0f} s"
        return base

    @property
    def severity(self) -> int | None:
        return SEVERITY[self.outcome]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text, "time_to_failure": _round(self.time_to_failure)}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def classify_device(report: dict[str, Any] | None) -> DeviceOutcome:
    """One device's report.json -> its cell. Pure: the precedence is the point.

    A hang or crash anywhere wins (that is what the build did to the laptop); then a deploy that
    failed by name; then a plain failure (an assertion, a reboot nobody asked for); then a lab fault (the
    lab failed, not the build: never counted as a regression); a run cut short is ``incomplete``.
    Tests that provoke a crash on purpose pass, and are not failures here either.
    """
    if report is None:
        return DeviceOutcome("missing", "no report.json: the device never started")
    tests = report.get("tests", [])
    timeline = report.get("timeline", [])
    ttf = next((e.get("time_to_failure") for e in reversed(timeline) if e.get("kind") == "soak-end"), None)
    failed = [t for t in tests if t.get("outcome") == "failed"]
    for t in failed:
        v = t.get("verdict", {})
        if v.get("kind") == "hang":
            return DeviceOutcome("hang", v.get("reason", ""), ttf, t.get("name", ""))
        if v.get("kind") == "crash":
            title = str((v.get("event") or {}).get("title") or "")
            return DeviceOutcome("crash", v.get("detail") or "unknown", ttf, t.get("name", ""), title)
    deploy = report.get("deploy")
    if isinstance(deploy, dict) and deploy.get("ok") is False:  # the full reason: the detail lines show it
        what = f"{deploy.get('detail', '')}" + (f" -- do: {deploy['hint']}" if deploy.get("hint") else "")
        return DeviceOutcome("deploy-failed", what, reason=str(deploy.get("reason") or "unknown"))
    deploy_failed = [e for e in timeline if e.get("kind") == "deploy-failed"]
    if deploy_failed:  # before the tests' failures: the tests that needed the deploy fail in set-up with it
        text = str(deploy_failed[0].get("text", ""))
        return DeviceOutcome("deploy-failed", text, reason=str(deploy_failed[0].get("reason") or text.split(":", 1)[0]))
    for t in failed:
        kind = t.get("verdict", {}).get("kind")
        if kind != "lab-fault":
            what = t.get("verdict", {}).get("verdict") if kind not in (None, "ok") else "assertion"
            return DeviceOutcome("fail", f"{t.get('name', '?')} ({what})", None, t.get("name", ""))
    faults = failed + [e for e in timeline if e.get("kind") == "lab-fault"]  # the failed ones left are lab faults
    if faults:
        first = faults[0]
        reason = first.get("verdict", {}).get("reason") if "verdict" in first else first.get("text")
        return DeviceOutcome("lab-fault", str(reason or "")[:160])
    if report.get("status") != "complete":
        return DeviceOutcome("incomplete", "the run stopped before this device finished")
    if not any(t.get("outcome") == "passed" for t in tests):
        return DeviceOutcome("no-tests", "no test passed (all skipped?)")
    return DeviceOutcome("pass")


