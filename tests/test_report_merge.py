"""``rig report merge``: runs of two controllers become one run (pure: no devices, no lab).

The run folders are written by the rig's own report writer (rig.reports.report.RunReport / DeviceReport /
write_summary), as the plugin writes them on each controller; nothing here hand-writes report JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.device.monitor import Verdict
from rig.errors import ConfigError
from rig.inventory import Device, load_device
from rig.reports.cli import report
from rig.reports.merge import merge_runs, plan_merge
from rig.reports.report import RunReport, write_summary
from rig.reports.results import diff_runs, load_run
from rig.runs.regress import cells_of_run
from rig.vocab import VerdictKind

DEVICE = """
name = "{name}"
[ssh]
host = "192.0.2.{n}"
key_file = "id"
known_hosts = "known_hosts"
"""


def _device(tmp_path: Path, name: str, n: int) -> Device:
    p = tmp_path / "inv" / f"{name}.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(DEVICE.format(name=name, n=n))
    return load_device(p)


def write_run(
    root: Path, run_id: str, results: list[tuple[Device, list[tuple[str, str, Verdict]]]], *, build: str | None = None,
    finish: bool = True,
) -> Path:  # fmt: skip
    """One controller's run folder: per device, (test, outcome, verdict) rows, then the summary."""
    run = RunReport(root, run_id, build=build)
    for dev, rows in results:
        rep = run.device(dev)
        (rep.dir / "console.log").write_text(f"2026-12-01T08:00:00.000Z console of {dev.name}\n")
        for name, outcome, verdict in rows:
            rep.test_result(nodeid=f"suites/t.py::{name}[{dev.name}]", name=name, outcome=outcome, duration=1.0,
                            verdict=verdict)  # fmt: skip
    if finish:
        run.close()
        write_summary(run.dir)
    return run.dir


OK = Verdict(VerdictKind.OK)
HANG = Verdict(VerdictKind.HANG, reason="no heartbeat for 3 s and SSH does not answer")


@pytest.fixture
def devs(tmp_path: Path) -> dict[str, Device]:
    return {n: _device(tmp_path, n, i) for i, n in enumerate(("bench1-x1", "bench2-t14", "bench2-t480"), 1)}


def test_two_controllers_runs_become_one_matrix(tmp_path: Path, devs: dict[str, Device]) -> None:
    a = write_run(tmp_path / "ctl-a", "night-a", [(devs["bench1-x1"], [("test_deploy", "passed", OK)])])
    b = write_run(
        tmp_path / "ctl-b",
        "night-b",
        [
            (devs["bench2-t14"], [("test_deploy", "passed", OK), ("test_nmi_soak", "failed", HANG)]),
            (devs["bench2-t480"], [("test_deploy", "passed", OK)]),
        ],
    )
    summary = merge_runs([a, b], tmp_path / "merged" / "night")
    assert [d["device"] for d in summary["devices"]] == ["bench1-x1", "bench2-t14", "bench2-t480"]
    assert summary["devices"][1]["tests"]["test_nmi_soak"] == {"outcome": "failed", "verdict": "hang"}
    # An ordinary run folder: the one reader sees all three devices, complete, with their consoles.
    view = load_run(tmp_path / "merged" / "night")
    assert not view.incomplete
    assert view.test_names() == ["test_deploy", "test_nmi_soak"]
    assert (view.dir / "bench2-t14" / "console.log").read_text().endswith("console of bench2-t14\n")
    meta = json.loads((view.dir / "run.json").read_text())
    assert meta["kind"] == "merged"
    assert {m["run_id"]: m["devices"] for m in meta["merged_from"]} == {
        "night-a": ["bench1-x1"],
        "night-b": ["bench2-t14", "bench2-t480"],
    }
    # rig regress reads it as any run: a hang on t14, passes elsewhere.
    cells = cells_of_run(view.dir, ["bench1-x1", "bench2-t14", "bench2-t480"])
    assert {n: c.outcome for n, c in cells.items()} == {
        "bench1-x1": "pass",
        "bench2-t14": "hang",
        "bench2-t480": "pass",
    }


def test_same_device_in_two_runs_is_named_and_nothing_is_written(tmp_path: Path, devs: dict[str, Device]) -> None:
    x1 = devs["bench1-x1"]
    a = write_run(tmp_path / "ctl-a", "run-a", [(x1, [("test_deploy", "passed", OK)])])
    b = write_run(tmp_path / "ctl-b", "run-b", [(x1, [("test_deploy", "failed", HANG)])])
    plan = plan_merge([a, b])
    assert len(plan.conflicts) == 1
    assert "device bench1-x1 is in 2 runs" in plan.conflicts[0]
    assert str(a) in plan.conflicts[0] and str(b) in plan.conflicts[0]
    with pytest.raises(ConfigError, match="cannot merge: device bench1-x1 is in 2 runs"):
        merge_runs([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_runs_of_different_builds_do_not_merge(tmp_path: Path, devs: dict[str, Device]) -> None:
    a = write_run(tmp_path / "a", "r1", [(devs["bench1-x1"], [("test_deploy", "passed", OK)])], build="v2.2")
    b = write_run(tmp_path / "b", "r2", [(devs["bench2-t14"], [("test_deploy", "passed", OK)])], build="v2.3")
    with pytest.raises(ConfigError, match=r"different builds: .*v2\.2.*v2\.3"):
        merge_runs([a, b], tmp_path / "out")


def test_merge_never_overwrites_and_needs_two_runs(tmp_path: Path, devs: dict[str, Device]) -> None:
    a = write_run(tmp_path / "a", "r1", [(devs["bench1-x1"], [("test_deploy", "passed", OK)])])
    b = write_run(tmp_path / "b", "r2", [(devs["bench2-t14"], [("test_deploy", "passed", OK)])])
    with pytest.raises(ConfigError, match="at least two"):
        merge_runs([a], tmp_path / "out")
    with pytest.raises(ConfigError, match="given twice"):
        merge_runs([a, a], tmp_path / "out")
    with pytest.raises(ConfigError, match="not empty"):
        merge_runs([a, b], b)
    with pytest.raises(ConfigError, match="inside run"):
        merge_runs([a, b], a / "merged")


def test_an_unfinished_run_stays_marked_incomplete(tmp_path: Path, devs: dict[str, Device]) -> None:
    a = write_run(tmp_path / "a", "r1", [(devs["bench1-x1"], [("test_deploy", "passed", OK)])])
    b = write_run(tmp_path / "b", "r2", [(devs["bench2-t14"], [("test_deploy", "passed", OK)])], finish=False)
    merge_runs([a, b], tmp_path / "m")
    view = load_run(tmp_path / "m")
    assert view.incomplete
    assert [d.name for d in view.devices if d.incomplete] == ["bench2-t14"]
    assert json.loads((tmp_path / "m" / "run.json").read_text())["status"] == "incomplete"


def test_diff_of_two_merged_nights_names_the_regression(tmp_path: Path, devs: dict[str, Device]) -> None:
    x1, t14 = devs["bench1-x1"], devs["bench2-t14"]
    nights = []
    for night, t14_soak in (("mon", ("passed", OK)), ("tue", ("failed", HANG))):
        a = write_run(tmp_path / night / "a", f"{night}-a", [(x1, [("test_nmi_soak", "passed", OK)])])
        b = write_run(tmp_path / night / "b", f"{night}-b", [(t14, [("test_nmi_soak", *t14_soak)])])
        nights.append(tmp_path / "merged" / night)
        merge_runs([a, b], nights[-1])
    diff = diff_runs(nights[0], nights[1])
    assert [(c.device, c.test) for c in diff.regressions] == [("bench2-t14", "test_nmi_soak")]


def test_rig_report_merge_command_writes_one_matrix_page(tmp_path: Path, devs: dict[str, Device]) -> None:
    a = write_run(tmp_path / "a", "r1", [(devs["bench1-x1"], [("test_deploy", "passed", OK)])])
    b = write_run(tmp_path / "b", "r2", [(devs["bench2-t14"], [("test_deploy", "failed", HANG)])])
    res = CliRunner().invoke(report, ["merge", str(a), str(b), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "m" / "index.html").read_text()
    assert 'data-device="bench1-x1"' in html and 'data-device="bench2-t14"' in html
    assert (tmp_path / "m" / "bench2-t14" / "index.html").is_file()
    res = CliRunner().invoke(report, ["merge", str(a), str(a), "--out", str(tmp_path / "m2")])
    assert res.exit_code != 0 and "given twice" in res.output
