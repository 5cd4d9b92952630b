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

import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from rig import __version__
from rig.console.capture import parse_log_line
from rig.errors import ConfigError
from rig.reports.report import write_atomic
from rig.reports.results import (  # the run model (rig.reports.results): the pages only render it
    NOT_RUN,
    DeviceRun,
    RunDiff,
    RunView,
    cell_of,
    cell_of_test,
    diff_views,
    load_run,
    previous_run,
    time_to_failure_of,
)
from rig.runs.ttf import analyse
from rig.vocab import VerdictKind

log = logging.getLogger(__name__)

#: Console lines shown before a crash/hang verdict (the page links the whole console.log).
EXCERPT_LINES = 40
#: ... extended back to the last heartbeat line if it is within this many lines of the verdict,
#: so the reader sees where the device went quiet.
EXCERPT_MAX_LINES = 160
#: For a crash, lines after the verdict (the rest of the oops) within this many seconds.
CRASH_TAIL_SECONDS = 10.0
CRASH_TAIL_LINES = 25


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
                "ttf": time_to_failure_of(dev, t["name"]),
            }
        )
    deliveries = [{"d": d, "chart": delivery_chart(d)} for d in dev.data.get("nmi_deliveries", [])]
    callbacks = dev.data.get("shadowbox_callbacks") or {}
    soaks = dev.soak_attempts()
    # time to hang across this device's soaks (rig.runs.ttf): shown once there is a failure or several soaks
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
        "liveness": dev.data.get("liveness"),
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
