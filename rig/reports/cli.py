"""``rig report``: re-render a run's HTML pages, and say what changed between two runs.

Register in rig/cli.py with ``from rig.reports.cli import report`` and ``main.add_command(report)``.

Why a separate command to re-render: pages are derived from the JSON files only, so a run killed
half way, a run copied from another controller, or a run rendered by an older rig can always be
(re)rendered later with ``rig report html reports/<run-id>``.

``rig report diff A B`` exits 1 when B has a regression against A (a test that newly fails, or fails worse:
a crash or hang where it failed an assertion; rig.reports.results.regressed), so a
nightly job can gate on it; 0 otherwise.
"""

from __future__ import annotations

from pathlib import Path

import click

from rig.errors import RigError
from rig.reports.html import render_run
from rig.reports.results import diff_runs


def _resolve(ctx: click.Context, run: Path) -> Path:
    """A run folder as given, or a run id inside the root command's ``--report-dir``."""
    if run.is_dir():
        return run
    root = ctx.find_root().obj
    report_dir = root.get("report_dir") if isinstance(root, dict) else None
    if report_dir is not None and (Path(report_dir) / run).is_dir():
        return Path(report_dir) / run
    where = f" or {Path(report_dir) / run}" if report_dir is not None else ""
    raise click.ClickException(
        f"no run folder {run}{where}: give reports/<run-id> (a folder with <device>/report.json)"
    )


@click.group("report")
def report() -> None:
    """Run reports: HTML pages and run-to-run differences."""


@report.command("html")
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def html_cmd(ctx: click.Context, run_dirs: tuple[Path, ...]) -> None:
    """(Re)write index.html for the run and every device in it (works on an unfinished run too)."""
    for run in run_dirs:
        try:
            page = render_run(_resolve(ctx, run))
        except RigError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {page}")


@report.command("diff")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.pass_context
def diff_cmd(ctx: click.Context, run_a: Path, run_b: Path) -> None:
    """What changed from RUN_A (older) to RUN_B (newer), per device; exit 1 on a regression."""
    try:
        diff = diff_runs(_resolve(ctx, run_a), _resolve(ctx, run_b))
    except RigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(diff.text())
    ctx.exit(1 if diff.regressions else 0)


@report.command("merge")
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="The merged run folder (new).")
@click.pass_context
def merge_cmd(ctx: click.Context, run_dirs: tuple[Path, ...], out: Path) -> None:
    """Join runs made on several controllers into one run (one matrix, one summary.json).

    A device found in two runs, or runs of different builds, stop the merge with both named.
    """
    from rig.reports.merge import merge_runs

    try:
        summary = merge_runs([_resolve(ctx, r) for r in run_dirs], out)
        page = render_run(out)
    except RigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"merged {len(run_dirs)} runs, {len(summary['devices'])} devices: {page}")
