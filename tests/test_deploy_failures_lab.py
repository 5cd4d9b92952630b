"""Deploying Shadow-box-shaped trees to the lab, as a user would: what the rig says when it cannot.

The trees are the project's own imitations (tests/sbtrees.py) of upstream, gooroom master and
gooroom-3.0 at build time. The lab's guests are TCG (no VT-x) and carry no compiler, so every deploy
must end in a *named* failure: refused by preflight, or -- forced past it with --rig-force-deploy --
a build failure in the tool's own words. What is checked is what a lab engineer reads: report.json,
the terminal summary, the JUnit properties, and that a refused device is not power-cycled again.
VT-x itself cannot be exercised here (TCG); a real insmod of Shadow-box is not exercised.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from rig.lab.manager import Lab
from tests.helpers import CHECKOUT
from tests.sbtrees import TREES

pytestmark = pytest.mark.lab

SUITE = """\
def test_a_needs_shadowbox(shadowbox):
    pass


def test_b_needs_shadowbox_too(shadowbox):
    pass


def test_c_needs_only_the_device(dut):
    assert dut.verdict().ok
"""


def inventory_with(lab: Lab, dest: Path, recipes: dict[str, tuple[str, Path]]) -> Path:
    """A copy of the lab's inventory whose [shadowbox] sections deploy ``recipe`` from ``tree`` per device."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, (recipe, tree) in recipes.items():
        text = (lab.inventory_dir / f"{name}.toml").read_text()
        head = text[: text.index("[shadowbox]")]
        section = f'[shadowbox]\nrecipe = "{recipe}"\nsource = {json.dumps(str(tree))}\nbuild_on = "device"\n'
        (dest / f"{name}.toml").write_text(head + section)
    return dest


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def run_with(lab: Lab, tmp_path: Path, run_id: str, inventory: Path, *args: str) -> tuple[str, int]:
    suite = tmp_path / "test_needs_shadowbox.py"
    suite.write_text(SUITE)
    junit = tmp_path / f"{run_id}.xml"
    cmd = [
        sys.executable, "-m", "pytest", str(suite), "--rig-devices", str(inventory),
        "--rig-report-dir", str(tmp_path), "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs",
        f"--junitxml={junit}", *args,
    ]  # fmt: skip
    env = {**os.environ, "RIG_RUN_ID": run_id}
    proc = subprocess.run(cmd, cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=900)
    return proc.stdout + proc.stderr, proc.returncode


def test_a_refused_deploy_is_named_skips_the_rest_and_does_not_power_cycle(lab: Lab, tmp_path: Path) -> None:
    tree = TREES["upstream"](tmp_path / "shadow-box-for-x86")
    inv = inventory_with(lab, tmp_path / "inv", {"lab-1": ("upstream", tree)})
    out, rc = run_with(lab, tmp_path, "refused", inv, "--rig-device", "lab-1")
    assert rc == 1, out[-4000:]
    # no traceback for a named refusal: the fixture's code is not shown, the reason and the fix are
    assert "Traceback" not in out and "raise PreflightFailed" not in out and "def shadowbox" not in out, out[-4000:]
    assert "DEPLOY FAILED on lab-1: preflight: vt-x: no 'vmx' in /proc/cpuinfo" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("lab-1") and " FAIL " in ln)
    assert "test_a_needs_shadowbox: deploy-failed(preflight)" in line, line
    assert "do: fix the failed checks" in out and "--rig-force-deploy" in out

    report = load(tmp_path / "refused" / "lab-1" / "report.json")
    deploy = report["deploy"]
    assert deploy["ok"] is False and deploy["reason"] == "preflight" and deploy["recipe"] == "upstream"
    failed = {c["name"] for c in deploy["failed_checks"]}
    assert {"vt-x", "kernel", "intremap"} <= failed, deploy["failed_checks"]
    tests = {t["name"]: t for t in report["tests"]}
    assert tests["test_a_needs_shadowbox"]["verdict"]["verdict"] == "deploy-failed(preflight)"
    b = tests["test_b_needs_shadowbox_too"]
    assert b["outcome"] == "skipped" and "Shadow-box deploy failed earlier on lab-1: preflight" in b["failure"], b
    assert tests["test_c_needs_only_the_device"]["outcome"] == "passed"
    # not power-cycled for nothing: no recovery, no reboot before a deploy, no boot banner in the capture
    kinds = [e["kind"] for e in report["timeline"]]
    assert "recovery" not in kinds and "reboot-before-deploy" not in kinds, report["timeline"]
    assert kinds.count("deploy-failed") == 1, kinds
    console = (tmp_path / "refused" / "lab-1" / "console.log").read_text()
    assert not re.search(r"rig-lab: lab-1 ready|Linux version", console), "the device was rebooted"
    props = {(p.get("name"), p.get("value")) for p in ET.parse(tmp_path / "refused.xml").iter("property")}
    assert ("rig_verdict", "deploy-failed(preflight)") in props, props
    # the HTML page says it too
    page = (tmp_path / "refused" / "lab-1" / "index.html").read_text()
    assert "deploy-failed(preflight)" in page and "what to do" in page


@pytest.mark.parametrize("forced", [False, True], ids=["preflight", "forced"])
def test_every_tree_on_both_kernels_ends_in_a_named_deploy_failure(lab: Lab, tmp_path: Path, forced: bool) -> None:
    """upstream, gooroom master and gooroom-3.0, each on lab-1 (6.1) and lab-2 (5.10): three runs of both."""
    trees = {name: make(tmp_path / name) for name, make in TREES.items()}
    pairs = [("upstream", "gooroom"), ("gooroom-3.0", "upstream"), ("gooroom", "gooroom-3.0")]
    seen: set[tuple[str, str]] = set()
    for i, (r1, r2) in enumerate(pairs):
        inv = inventory_with(lab, tmp_path / f"inv{i}", {"lab-1": (r1, trees[r1]), "lab-2": (r2, trees[r2])})
        run_id = f"run{i}"
        extra = ["--rig-force-deploy"] if forced else []
        out, rc = run_with(lab, tmp_path, run_id, inv, "--rig-device", "lab-1", "--rig-device", "lab-2", *extra)
        assert rc == 1, out[-4000:]
        assert "Traceback" not in out, out[-4000:]
        for name, recipe in (("lab-1", r1), ("lab-2", r2)):
            report = load(tmp_path / run_id / name / "report.json")
            deploy = report["deploy"]
            kernel = lab.guest(name).kernel_version
            assert deploy["ok"] is False and deploy["recipe"] == recipe and deploy["hint"], deploy
            summary_line = f"deploy-failed({deploy['reason']}): {deploy['detail']}"
            assert summary_line[:200] in out, (summary_line, out[-3000:])
            if not forced:
                assert deploy["reason"] == "preflight"
                failed = {c["name"] for c in deploy["failed_checks"]}
                assert "vt-x" in failed, failed  # TCG: no VT-x
                # no tree lists 6.1; upstream and gooroom master stop at 4.x; gooroom-3.0 lists 5.10
                supported = recipe == "gooroom-3.0" and lab.guest(name).kernel_series == "5.10"
                assert ("kernel" in failed) is not supported, (recipe, kernel, failed)
                assert "tool:make" in failed  # the guests carry no compiler: named with its fix
                kernel_check = next(c for c in deploy["checks"] if c["name"] == "kernel")
                assert kernel in kernel_check["detail"]
            else:
                # past preflight, the build on the device fails in the shell's own words, and says what to do
                assert deploy["forced"] is True and deploy["reason"] == "build-failed", deploy
                assert deploy["build_output_tail"], deploy
                last = deploy["build_output_tail"][-1]
                assert last in deploy["detail"], (last, deploy["detail"])
                assert "make: not found" in deploy["detail"] and "install make" in deploy["detail"]
                assert any(e["kind"] == "deploy-forced" for e in report["timeline"])
            seen.add((recipe, kernel))
    assert len(seen) == 6, seen


def test_regress_over_builds_that_all_fail_to_deploy_exits_2_with_full_reasons(lab: Lab, tmp_path: Path) -> None:
    """Two upstream-shaped builds; lab-1 deploys them with the upstream recipe (forced: the build fails
    in the shell's words), lab-2 with gooroom-3.0 (a recipe/tree mismatch, named before anything runs)."""
    builds = [TREES["upstream"](tmp_path / "builds" / label) for label in ("v2.2", "v2.3")]
    inv = inventory_with(lab, tmp_path / "inv", {"lab-1": ("upstream", builds[0]), "lab-2": ("gooroom-3.0", builds[0])})
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "rig.cli", "--devices", str(inv), "regress",
        "--build-tree", str(builds[0]), "--build-tree", str(builds[1]),
        "--suites", str(CHECKOUT / "suites" / "test_deploy.py"), "--force-deploy", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-4000:]
    assert "no build could be judged" in text, text[-3000:]
    assert "recipe 'gooroom-3.0' of lab-2:" in text and "it looks like a 'upstream' tree" in text, text[-3000:]
    summary = load(out / "regress-summary.json")
    for b in summary["builds"]:
        one, two = b["cells"]["lab-1"], b["cells"]["lab-2"]
        assert one["text"] == "deploy-failed(build-failed)" and "make: not found" in one["detail"], one
        assert two["text"] == "deploy-failed(tree-mismatch)", two
        # the full reason reaches the detail lines below the table, uncut
        assert len(one["detail"]) > 120 and one["detail"] in text.replace("\n", ""), one["detail"]
    reports = [load(p) for p in sorted(out.glob("*/lab-1/report.json"))]
    assert len(reports) == 2 and all(r["deploy"]["forced"] for r in reports)


def test_rig_check_deploy_runs_the_preflight_and_names_a_mismatch(lab: Lab, tmp_path: Path) -> None:
    inv = inventory_with(
        lab,
        tmp_path / "inv",
        {"lab-1": ("upstream", TREES["upstream"](tmp_path / "sb")), "lab-2": ("gooroom", tmp_path / "sb")},
    )
    cmd = [sys.executable, "-m", "rig.cli", "--devices", str(inv), "check", "--deploy"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "lab-1 deploy:vt-x: FAIL no 'vmx' in /proc/cpuinfo" in text, text[-3000:]
    assert "lab-1 deploy:tool:make: FAIL make not found on the device: install make" in text, text[-3000:]
    assert "lab-1 deploy:tool:python2: FAIL there is no 'python' on the device" in text, text[-3000:]
    assert "lab-2 deploy:tree: FAIL" in text and "it looks like a 'upstream' tree" in text, text[-3000:]
