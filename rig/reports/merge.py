"""``rig report merge``: runs made on several controllers, joined into one run folder.

A lab with several benches has one controller per bench; each writes its own run folder with the
devices it drove. The lab engineer wants one matrix. Merging copies every device folder
(``report.json``, consoles, pages) into a new run folder, writes one ``run.json`` naming where each
device came from, and one ``summary.json`` through the same writer the plugin uses
(:func:`rig.reports.report.write_summary`), so the merged folder is an ordinary run folder: ``rig report
html``, ``rig report diff`` and ``rig regress``'s reader (:func:`rig.runs.regress.cells_of_run`) take it
as they take any other.

Why a conflict stops the merge instead of "last one wins": the same device in two runs means two
controllers drove one laptop (or one run was merged twice); which result stands is a decision for a
person, and a silently dropped hang is exactly the result a nightly must not lose. The same goes for
runs of different builds: one matrix is one build. Both are named, with the runs involved.

Runs are read with :func:`rig.reports.results.load_run` (the one reader of run folders); a device
whose report could not be used, or a run still going, is carried over and stays marked as such.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig import __version__
from rig.errors import ConfigError
from rig.reports.report import write_json_atomic, write_summary
from rig.reports.results import RunView, load_run

MERGED_KIND = "merged"


@dataclass
class MergePlan:
    """What a merge would do: device -> the run it comes from, and every conflict found."""

    runs: list[RunView]
    sources: dict[str, RunView] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_merge(run_dirs: list[Path]) -> MergePlan:
    """Read the runs and decide, without writing anything. Pure apart from reading the folders."""
    if len(run_dirs) < 2:
        raise ConfigError("rig report merge needs at least two run folders")
    runs = [load_run(Path(p)) for p in run_dirs]
    plan = MergePlan(runs)
    seen_dirs: dict[Path, Path] = {}
    for run, given in zip(runs, run_dirs, strict=True):
        real = run.dir.resolve()
        if real in seen_dirs:
            plan.conflicts.append(f"{given} is given twice (also as {seen_dirs[real]})")
        seen_dirs[real] = Path(given)
    holders: dict[str, list[RunView]] = {}
    for run in runs:
        for dev in run.devices:
            holders.setdefault(dev.name, []).append(run)
            if dev.problem:
                plan.notes.append(f"{dev.name} in {run.dir}: carried over unreadable ({dev.problem})")
            elif dev.incomplete:
                plan.notes.append(f"{dev.name} in {run.dir}: report is incomplete (that run did not finish)")
    for name, where in sorted(holders.items()):
        if len(where) > 1:
            plan.conflicts.append(
                f"device {name} is in {len(where)} runs: "
                + ", ".join(f"{r.dir} (run {r.run_id}, controller {r.meta.get('controller', '?')})" for r in where)
                + "; merge only one of them (two controllers drove one laptop, or a run is given twice)"
            )
        else:
            plan.sources[name] = where[0]
    builds = {_build_of(r) for r in runs}
    if len(builds) > 1:
        plan.conflicts.append(
            "the runs are of different builds: "
            + ", ".join(f"{r.dir}: {_build_of(r) or '(no --rig-build)'}" for r in runs)
            + "; one matrix is one build (line builds up with rig regress or rig report diff)"
        )
    return plan


def _build_of(run: RunView) -> str | None:
    if run.meta.get("build"):
        return str(run.meta["build"])
    return next((str(d.data["build"]) for d in run.devices if d.data.get("build")), None)


def merge_runs(run_dirs: list[Path], out: Path, run_id: str | None = None) -> dict[str, Any]:
    """Write the merged run folder ``out``; returns its summary. Refuses on any conflict.

    ``out`` must not exist yet (or be empty): a merge never overwrites a run.
    """
    plan = plan_merge(run_dirs)
    if plan.conflicts:
        raise ConfigError("cannot merge: " + "; ".join(plan.conflicts))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not empty; a merge writes a new run folder (choose --out)")
    for run in plan.runs:
        if out.resolve() == run.dir.resolve() or out.resolve().is_relative_to(run.dir.resolve()):
            raise ConfigError(f"--out {out} is inside run {run.dir}; write the merged run beside the runs")
    out.mkdir(parents=True, exist_ok=True)
    summary_rows: list[dict[str, Any]] = []
    for name, run in sorted(plan.sources.items()):
        dev = run.device(name)
        assert dev is not None
        if dev.from_summary:  # the run has this device's summary row but no folder: keep the row
            summary_rows.append(dict(dev.data))
            continue
        shutil.copytree(dev.dir, out / dev.dir.name, symlinks=True)
    meta = {
        "run_id": run_id or out.name,
        "kind": MERGED_KIND,
        "build": _build_of(plan.runs[0]),
        "started": min(r.started for r in plan.runs),
        "controller": socket.gethostname(),
        "rig_version": __version__,
        "status": "incomplete",
        "merged": time.time(),
        "merged_from": [
            {
                "dir": str(r.dir.resolve()),
                "run_id": r.run_id,
                "controller": r.meta.get("controller"),
                "incomplete": r.incomplete,
                "devices": sorted(n for n, src in plan.sources.items() if src is r),
            }
            for r in plan.runs
        ],
        "notes": plan.notes,
    }
    write_json_atomic(out / "run.json", meta)
    summary = write_summary(out)
    if summary_rows:
        summary["devices"] = sorted([*summary["devices"], *summary_rows], key=lambda d: str(d["device"]))
        write_json_atomic(out / "summary.json", summary)
    if any(r.incomplete for r in plan.runs):
        # write_summary marks the run complete; a merge of an unfinished run is not.
        meta = {**meta, "status": "incomplete", "finished": summary["finished"]}
        write_json_atomic(out / "run.json", meta)
    return summary
