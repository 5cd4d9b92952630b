"""``rig regress``: the suites over a list of Shadow-box builds, lined up per device.

A *build* is a Shadow-box source tree: a git ref of the user's tree (``--source-tree DIR REF...``)
or a folder as it is (``--build-tree DIR``). Every build gets one ordinary report run (the pytest
plugin over the suites, one xdist worker per device, ``--rig-shadowbox-source`` pointing at the
build) in ``<out>/<label>/``; the summary lines the builds up per device -- pass, fail, hang,
crash(kind), lab-fault, and the time to failure of the NMI soak -- and says which build regressed
against the first one (the baseline).

Why a state file (``<out>/regress.json``, rewritten atomically): a night of soaks gets interrupted
(a power cut, a ^C, a controller reboot). Rerunning the same command resumes: a build whose run
finished is not run again; a build that was running is run again from scratch (its partial run is
kept under ``<out>/.replaced/``). A build is "the same" when its fingerprint matches: its label,
its commit (or its folder's content), the suites, the soak length and the device selection.

Before each build every selected device is power-cycled (side by side): Shadow-box cannot be
unloaded, so a build needs a fresh boot anyway, and the previous build may have left a device hung.

Why a clone per commit: a ref is checked out into ``<cache>/<commit>/`` (a ``git clone --shared``
of the user's repository, then a detached checkout), so the user's checkout, index and refs are
never touched, and the deploy step still records the commit it built.

Exit status: 0 no regression; 1 a build regressed against the first on some device; 2 no build
could be judged at all (every cell a deploy failure, a lab fault or a run that did not finish: the
reason is printed); 3 no regression seen but some cells could not be judged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rig.device.lifecycle import fresh_boot
from rig.errors import ConfigError, RigError
from rig.inventory import Device, load_inventory
from rig.reports.board import BOARD_FILE, live_board
from rig.reports.board import wanted as board_wanted
from rig.reports.report import write_json_atomic
from rig.reports.results import DeviceOutcome as Cell
from rig.reports.results import classify_device, load_run, regressed
from rig.runs.gitrepo import checkout_commit, resolve_ref

STATE_FILE = "regress.json"
SUMMARY_FILE = "regress-summary.json"
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_SUITES = ("suites/test_deploy.py", "suites/test_nmi_delivery.py", "suites/test_nmi_soak.py")

EXIT_OK = 0
EXIT_REGRESSED = 1
EXIT_NOTHING_JUDGED = 2
EXIT_UNJUDGED = 3


# ---------------------------------------------------------------------------------------------
# builds


@dataclass(frozen=True)
class BuildSpec:
    """One build to test: a git ref of ``source`` (kind ``ref``) or the folder ``source`` (kind ``tree``)."""

    label: str
    kind: Literal["ref", "tree"]
    source: Path
    ref: str | None = None


_LABEL_OK = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_label(text: str) -> str:
    """A build label usable as a folder name and a run id: ``origin/fix-nmi`` -> ``origin_fix-nmi``."""
    label = _LABEL_OK.sub("_", text).strip("._") or "build"
    return label[:80]


def parse_builds(source_tree: Path | None, builds: Sequence[str], build_trees: Sequence[str]) -> list[BuildSpec]:
    """Turn the command line into build specs, in order; ``LABEL=REF`` / ``LABEL=DIR`` name a build.

    Labels are unique (a second ``main`` becomes ``main-2``) because each one is a report folder.
    """
    if source_tree is not None and build_trees:
        raise ConfigError("give either --source-tree with refs, or --build-tree folders, not both")
    specs: list[BuildSpec] = []
    if source_tree is not None:
        for arg in builds:
            name, sep, ref = arg.partition("=")
            if not sep:
                name, ref = arg, arg
            if not ref:
                raise ConfigError(f"build {arg!r}: empty git ref (use LABEL=REF or REF)")
            specs.append(BuildSpec(safe_label(name), "ref", source_tree, ref))
    else:
        for arg in [*builds, *build_trees]:
            name, sep, folder = arg.partition("=")
            if not sep or not folder:
                name, folder = "", arg
            path = Path(folder).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"build tree {folder}: {path} is not a folder (give a Shadow-box source tree)")
            specs.append(BuildSpec(safe_label(name or path.name), "tree", path))
    if not specs:
        raise ConfigError("no builds: give git refs with --source-tree DIR, or --build-tree folders")
    seen: dict[str, int] = {}
    out: list[BuildSpec] = []
    for s in specs:
        n = seen.get(s.label, 0) + 1
        seen[s.label] = n
        out.append(s if n == 1 else BuildSpec(f"{s.label}-{n}", s.kind, s.source, s.ref))
    return out


def tree_digest(path: Path) -> str:
    """A content hash of a folder (paths + bytes, ``.git`` left out): a changed prebuilt tree is a new build."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.relative_to(path).parts):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class BuildResult:
    label: str
    cells: dict[str, Cell]
    spec: dict[str, Any] = field(default_factory=dict)
    regressed_on: list[str] = field(default_factory=list)


def line_up(results: list[BuildResult]) -> list[str]:
    """Mark each build's regressions against the first build (the baseline) and where each crash was
    first seen (by title: the same crash in several builds is one bug); return all device names."""
    devices = sorted({d for r in results for d in r.cells})
    if not results:
        return devices
    first: dict[str, str] = {}
    for r in results:
        for d in devices:
            c = r.cells.get(d)
            if c is not None and c.outcome == "crash" and c.title:
                c.first_seen = first.setdefault(c.title, r.label)
    base = results[0]
    for r in results:
        r.regressed_on = [
            d
            for d in devices
            if r is not base and d in base.cells and d in r.cells
            and regressed(base.cells[d].severity, r.cells[d].severity)
        ]
    return devices


def cells_of_run(run_dir: Path, devices: Sequence[str]) -> dict[str, Cell]:
    """Every expected device's cell in a run folder (rig.reports.results reads it; missing devices are cells too)."""
    found: dict[str, dict[str, Any] | None] = {}
    if run_dir.is_dir():
        try:
            view = load_run(run_dir)
        except ConfigError:
            view = None  # a folder the run never wrote into
        for dev in view.devices if view is not None else []:
            if not dev.from_summary:  # a row of summary.json only: its report.json is missing
                found[dev.dir.name] = dev.raw if dev.problem and dev.raw is not None else dev.data
    cells = {name: classify_device(found.get(name)) for name in devices}
    for name in sorted(found):
        if name not in cells:
            cells[name] = classify_device(found[name])
    return cells


# ---------------------------------------------------------------------------------------------
# resume state


@dataclass
class Selection:
    """What the suites run on and how: part of every build's fingerprint."""

    inventory: list[str]
    devices: list[str]
    tags: list[str]
    suites: list[str]
    soak_minutes: float
    device_names: list[str]  # the devices the selection resolved to
    force_deploy: bool = False  # --force-deploy: past a failed preflight (--rig-force-deploy)

    def key(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(spec: BuildSpec, identity: str, selection: Selection) -> str:
    """Same build, same suites, same devices, same soak -> same fingerprint (a finished run is reused)."""
    blob = json.dumps({"label": spec.label, "identity": identity, "selection": selection.key()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RegressState:
    """``<out>/regress.json``: which builds finished, rewritten atomically after every change."""

    def __init__(self, out: Path) -> None:
        self.path = out / STATE_FILE
        self.data: dict[str, Any] = {"schema": "shadowbox-rig/regress-state", "version": 1, "builds": {}}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{self.path} is not valid JSON ({exc}); delete it to start over") from None
            if loaded.get("schema") != self.data["schema"]:
                raise ConfigError(f"{self.path} is not a rig regress state file; use another --out folder")
            self.data = loaded

    def entry(self, label: str) -> dict[str, Any] | None:
        builds: dict[str, Any] = self.data["builds"]
        return builds.get(label)

    def is_done(self, label: str, fp: str, run_dir: Path) -> bool:
        e = self.entry(label)
        return bool(
            e and e.get("status") == "done" and e.get("fingerprint") == fp and (run_dir / "summary.json").exists()
        )

    def update(self, label: str, **fields: Any) -> None:
        self.data["builds"].setdefault(label, {}).update(fields)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


# ---------------------------------------------------------------------------------------------
# running


#: (spec, tree, run_dir, selection) -> pytest exit code. The real one runs pytest; tests may pass another.
Runner = Callable[[BuildSpec, Path, Path, Selection], int]
#: Called before each build's run (the real one power-cycles every selected device).
Reset = Callable[[BuildSpec], None]


def pytest_command(spec: BuildSpec, tree: Path, out: Path, selection: Selection) -> list[str]:
    """The pytest run of one build: the plugin, one worker per device, the build's tree on every device."""
    cmd = [sys.executable, "-m", "pytest", *selection.suites]
    for inv in selection.inventory:
        cmd += ["--rig-devices", inv]
    for name in selection.devices:
        cmd += ["--rig-device", name]
    for tag in selection.tags:
        cmd += ["--rig-tag", tag]
    cmd += [
        "--rig-shadowbox-source", str(tree), "--rig-build", spec.label,
        "--rig-report-dir", str(out), "--rig-soak-minutes", f"{selection.soak_minutes:g}",
        "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short",
    ]  # fmt: skip
    if selection.force_deploy:
        cmd.append("--rig-force-deploy")
    n = len(selection.device_names)
    cmd += ["-n", str(n)] if n > 1 else ["-p", "no:xdist"]
    if _has_pytest_timeout():
        # The checkout's ini sets a per-test timeout for the rig's own tests; a soak is longer by design.
        cmd += ["--timeout", str(int(selection.soak_minutes * 60 + 1200))]
    return cmd


def _has_pytest_timeout() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest_timeout") is not None


def run_pytest(spec: BuildSpec, tree: Path, run_dir: Path, selection: Selection) -> int:
    """Run the suites for one build; pytest's output goes to ``<out>/<label>.log``."""
    cmd = pytest_command(spec, tree, run_dir.parent, selection)
    env = {**os.environ, "RIG_RUN_ID": spec.label}
    log_path = run_dir.parent / f"{spec.label}.log"
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=CHECKOUT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    return proc.returncode


@dataclass
class Regress:
    """One regression run over ``builds`` into ``out`` (resumable)."""

    builds: list[BuildSpec]
    out: Path
    selection: Selection
    cache: Path
    console: Console = field(default_factory=Console)
    runner: Runner = run_pytest
    reset: Reset | None = None
    #: Draw the live board (rig.reports.board) of each build's run while it runs: on a terminal, unless --no-live.
    live: bool = False

    def prepare(self, spec: BuildSpec) -> tuple[Path, str, str | None]:
        """(tree to deploy, identity for the fingerprint, commit or None)."""
        if spec.kind == "ref":
            assert spec.ref is not None
            commit = resolve_ref(spec.source, spec.ref)
            return checkout_commit(spec.source, commit, self.cache), commit, commit
        return spec.source, "tree:" + tree_digest(spec.source), None

    def run(self) -> list[BuildResult]:
        self.out.mkdir(parents=True, exist_ok=True)
        state = RegressState(self.out)
        state.data["order"] = [b.label for b in self.builds]
        state.data["selection"] = self.selection.key()
        state.save()
        results: list[BuildResult] = []
        for i, spec in enumerate(self.builds, 1):
            run_dir = self.out / spec.label
            tree, identity, commit = self.prepare(spec)
            fp = fingerprint(spec, identity, self.selection)
            what = f"[{i}/{len(self.builds)}] {spec.label}" + (f" ({spec.ref} = {commit[:12]})" if commit else "")
            info = {"kind": spec.kind, "ref": spec.ref, "commit": commit, "tree": str(tree), "fingerprint": fp}
            if state.is_done(spec.label, fp, run_dir):
                self.console.print(f"{what}: done in an earlier run, not run again ({run_dir})", highlight=False)
            else:
                if run_dir.exists():
                    prev = state.entry(spec.label) or {}
                    why = "did not finish" if prev.get("status") != "done" else "was of another build or selection"
                    aside = _aside(self.out / ".replaced", spec.label)
                    os.replace(run_dir, aside)
                    self.console.print(f"{what}: the earlier run {why}; kept in {aside}", highlight=False)
                state.update(spec.label, status="running", started=time.time(), **info)
                if self.reset is not None:
                    self.console.print(f"{what}: a fresh boot of every device", highlight=False)
                    self.reset(spec)
                self.console.print(f"{what}: running the suites (log {self.out / (spec.label + '.log')})",
                                   highlight=False)  # fmt: skip
                with live_board(run_dir / BOARD_FILE, self.console, enabled=self.live, title=f"rig regress: {what}"):
                    rc = self.runner(spec, tree, run_dir, self.selection)
                finished = (run_dir / "summary.json").exists()
                state.update(spec.label, status="done" if finished else "failed", pytest_exit=rc, finished=time.time())
                if not finished:
                    self.console.print(
                        f"[red]{what}: the run left no summary.json (pytest exit {rc}); see "
                        f"{self.out / (spec.label + '.log')}[/]"
                    )
            cells = cells_of_run(run_dir, self.selection.device_names)
            results.append(BuildResult(spec.label, cells, {"label": spec.label, **info, "run_dir": str(run_dir)}))
        line_up(results)
        return results


def _mismatch(device: Device, tree: Path) -> str | None:
    from rig.device.shadowbox import recipe_for, tree_mismatch

    why = tree_mismatch(recipe_for(device.shadowbox.recipe), tree)
    return None if why is None else f"recipe '{device.shadowbox.recipe}' of {device.name}: {why}"


def _aside(folder: Path, label: str) -> Path:
    """A fresh folder name for a run that is being replaced (its evidence is kept, never deleted)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while (folder / f"{label}-{stamp}-{n}").exists():
        n += 1
    return folder / f"{label}-{stamp}-{n}"


def summary_json(results: list[BuildResult], selection: Selection) -> dict[str, Any]:
    devices = line_up(results)
    return {
        "schema": "shadowbox-rig/regress-summary",
        "version": 1,
        "finished": time.time(),
        "baseline": results[0].label if results else None,
        "devices": devices,
        "selection": selection.key(),
        "builds": [
            {**r.spec, "cells": {d: c.to_json() for d, c in r.cells.items()}, "regressed_on": r.regressed_on}
            for r in results
        ],
    }


def nothing_judged(results: list[BuildResult]) -> str | None:
    """Why no build could be judged (None if one could): every cell failed to deploy or is unjudged."""
    cells = [c for r in results for c in r.cells.values()]
    if not cells:
        return "no build produced a result on any device"
    if any(c.severity is not None and c.outcome != "deploy-failed" for c in cells):
        return None
    reasons = sorted({c.text for c in cells})
    return "no build could be judged: every cell is " + ", ".join(reasons) + " (see the lines below the table)"


def exit_code(results: list[BuildResult]) -> int:
    if any(r.regressed_on for r in results):
        return EXIT_REGRESSED
    if nothing_judged(results) is not None:
        return EXIT_NOTHING_JUDGED
    if any(c.severity is None for r in results for c in r.cells.values()):
        return EXIT_UNJUDGED
    return EXIT_OK


_STYLE = {
    "pass": "green",
    "fail": "yellow",
    "deploy-failed": "yellow",
    "hang": "red",
    "crash": "red",
    "lab-fault": "magenta",
}


def render_table(results: list[BuildResult]) -> Table:
    devices = line_up(results)
    table = Table(title="rig regress: builds x devices (baseline: first build)")
    table.add_column("build")
    for d in devices:
        table.add_column(d)
    table.add_column("vs baseline")
    for r in results:
        row = [r.label]
        for d in devices:
            c = r.cells.get(d)
            if c is None:
                row.append("-")
            else:
                style = _STYLE.get(c.outcome, "dim")
                seen = ""
                if c.first_seen:
                    seen = " (new crash)" if c.first_seen == r.label else f" (same crash as in {c.first_seen})"
                row.append(f"[{style}]{escape(c.text)}[/]{seen}")
        if r is results[0]:
            row.append("baseline")
        elif r.regressed_on:
            row.append(f"[red]REGRESSED on {', '.join(r.regressed_on)}[/]")
        else:
            row.append("no regression")
        table.add_row(*row)
    return table


def detail_lines(results: list[BuildResult]) -> list[str]:
    """The full reason of every cell that is not a pass (the table shows only the short verdict)."""
    lines = []
    for r in results:
        for d, c in sorted(r.cells.items()):
            if c.outcome != "pass" and c.detail:
                lines.append(f"{r.label} on {d}: {c.text}: {c.detail}")
    return lines


# ---------------------------------------------------------------------------------------------
# the command


@click.command("regress")
@click.argument("builds", nargs=-1, metavar="[LABEL=]REF... | [LABEL=]DIR...")
@click.option(
    "--source-tree", type=click.Path(path_type=Path, file_okay=False), help="Shadow-box git tree; BUILDS are refs."
)
@click.option(
    "--build-tree", "build_trees", multiple=True, metavar="[LABEL=]DIR", help="A prebuilt/source tree (repeatable)."
)
@click.option("--device", "names", multiple=True, help="Only this device (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag (repeatable).")
@click.option(
    "--suites",
    "suites",
    multiple=True,
    metavar="PATH",
    help=f"Suite file/folder (repeatable; default {' '.join(DEFAULT_SUITES)}).",
)
@click.option("--soak-minutes", type=float, default=20.0, show_default=True, help="Length of the NMI soak per build.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder (default <report-dir>/regress-<date>); reuse it to resume.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Checked-out refs (default <out>/trees).",
)
@click.option("--force-deploy", is_flag=True, help="Deploy past a failed preflight (each report records it as forced).")
@click.option("--no-live", is_flag=True, help="No live device board (it is drawn only on a terminal anyway).")
@click.pass_context
def regress_cmd(
    ctx: click.Context,
    builds: tuple[str, ...],
    source_tree: Path | None,
    build_trees: tuple[str, ...],
    names: tuple[str, ...],
    tags: tuple[str, ...],
    suites: tuple[str, ...],
    soak_minutes: float,
    out: Path | None,
    cache: Path | None,
    force_deploy: bool,
    no_live: bool,
) -> None:
    """Run the suites for several Shadow-box builds and line them up per device.

    \b
    rig regress --source-tree ~/shadow-box v2.2 v2.3 main --out reports/nightly
    rig regress --build-tree fixed=/srv/sb-fixed --build-tree /srv/sb-candidate
    Rerun the same command with the same --out to resume an interrupted run.
    """  # noqa: D301
    console = Console()
    root = ctx.find_root().obj or {}
    inventory = [str(Path(p).resolve()) for p in root.get("devices", [Path("devices")])]
    try:
        specs = parse_builds(source_tree.resolve() if source_tree else None, builds, build_trees)
        devices = load_inventory(inventory, names=names, tags=tags)
    except RigError as exc:
        raise click.ClickException(str(exc)) from None
    if not devices:
        raise click.ClickException(f"no devices selected in {', '.join(inventory)} (--device/--tag)")
    suite_paths = [str(Path(s).resolve()) for s in suites] or [str(CHECKOUT / s) for s in DEFAULT_SUITES]
    for s in suite_paths:
        if not Path(s).exists():
            raise click.ClickException(f"--suites {s}: no such file or folder")
    out = (out or Path(root.get("report_dir", "reports")) / f"regress-{time.strftime('%Y%m%d')}").resolve()
    selection = Selection(
        inventory, list(names), list(tags), suite_paths, soak_minutes, [d.name for d in devices], force_deploy
    )
    for spec in specs:  # a folder is known now: a recipe/tree mismatch is named before anything runs
        if spec.kind == "tree":
            for warning in sorted({w for d in devices if (w := _mismatch(d, spec.source))}):
                console.print(f"[yellow]{escape(spec.label)}: {escape(warning)}[/]", highlight=False, soft_wrap=True)
    reg = Regress(specs, out, selection, (cache or out / "trees").resolve(), console, live=board_wanted(None, no_live))

    def reset(spec: BuildSpec) -> None:
        fresh_boot(devices, out / "resets" / spec.label, console)

    reg.reset = reset
    try:
        results = reg.run()
    except RigError as exc:
        raise click.ClickException(str(exc)) from None
    summary = summary_json(results, selection)
    write_json_atomic(out / SUMMARY_FILE, summary)
    console.print(render_table(results))
    for line in detail_lines(results):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    why = nothing_judged(results)
    if why is not None and not any(r.regressed_on for r in results):
        console.print(f"[red]{escape(why)}[/]", highlight=False, soft_wrap=True)
    console.print(f"per build: {out}/<build>/ (summary.json, <device>/report.json); lined up: {out / SUMMARY_FILE}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    sys.exit(exit_code(results))
