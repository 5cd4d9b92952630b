"""rig.reports.results: one severity scale and one regression rule for a test's cell and a device's outcome."""

from __future__ import annotations

from pathlib import Path

from rig.reports.results import (
    CELL_SEVERITY,
    SEVERITY,
    DeviceRun,
    RunView,
    classify_device,
    diff_views,
    regressed,
)
from rig.runs.regress import cells_of_run


def test_one_rule_judged_on_both_sides_and_worse() -> None:
    assert regressed(0, 1) and regressed(0, 2) and regressed(1, 2)
    assert not regressed(2, 2) and not regressed(2, 0) and not regressed(1, 1)
    assert not regressed(None, 2) and not regressed(0, None)  # a lab fault on either side never counts
    # a test's cell and a device's outcome sit on the same scale
    assert CELL_SEVERITY["bad"] == SEVERITY["hang"] == SEVERITY["crash"] == 2
    assert CELL_SEVERITY["failed"] == SEVERITY["fail"] == SEVERITY["deploy-failed"] == 1
    assert CELL_SEVERITY["ok"] == SEVERITY["pass"] == 0
    assert CELL_SEVERITY["lab"] is None and SEVERITY["lab-fault"] is None


def _run(run_id: str, tests: dict[str, tuple[str, str]]) -> RunView:
    rows = [
        {"name": n, "outcome": o, "verdict": {"verdict": v, "kind": v.split("(")[0]}} for n, (o, v) in tests.items()
    ]
    dev = DeviceRun("lab-1", Path(run_id) / "lab-1", {"status": "complete", "tests": rows, "timeline": []})
    return RunView(Path(run_id), {"run_id": run_id}, {}, [dev])


def test_diff_kinds_follow_the_one_rule() -> None:
    a = _run("a", {"t_assert": ("failed", "ok"), "t_new": ("skipped", "ok"), "t_lab": ("passed", "ok"),
                   "t_fixed": ("failed", "hang"), "t_same": ("failed", "crash(oops)")})  # fmt: skip
    b = _run("b", {"t_assert": ("failed", "hang"), "t_new": ("failed", "ok"), "t_lab": ("failed", "lab-fault"),
                   "t_fixed": ("passed", "ok"), "t_same": ("failed", "crash(panic)")})  # fmt: skip
    kinds = {c.test: c.kind for c in diff_views(a, b).changes}
    assert kinds == {
        "t_assert": "regression",  # it failed an assertion, now it takes the device down: worse
        "t_new": "regression",  # skipped before (nothing failed), fails now
        "t_lab": "lab",  # the lab's fault: not the build's
        "t_fixed": "fixed",
        "t_same": "changed",  # still a device failure, another one: not worse
    }


def test_regress_cells_read_through_the_one_reader(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{not json")
    cells = cells_of_run(tmp_path, ["bad", "gone"])
    assert cells["bad"].outcome == "incomplete"  # an unreadable report is not judged, and no traceback
    assert cells["gone"].outcome == "missing"
    assert cells_of_run(tmp_path / "never-ran", ["x"])["x"].outcome == "missing"
    assert classify_device({"status": "complete", "tests": [{"name": "t", "outcome": "passed"}]}).severity == 0
