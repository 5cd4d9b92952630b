"""Deploy recipes and preflight judgement, on facts read from a real Linux (this machine).

The full deploy (upload, insmod, markers) runs against lab guests in test_deploy_lab.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rig.errors import ConfigError
from rig.shadowbox import PREFLIGHT_SCRIPT, RECIPES, Deployer, DeployFailed, judge_preflight, parse_facts, recipe_for


@pytest.fixture(scope="module")
def local_facts() -> dict[str, str]:
    out = subprocess.run(["sh", "-c", PREFLIGHT_SCRIPT], capture_output=True, text=True, timeout=30, check=True)
    return parse_facts(out.stdout)


def test_preflight_script_reports_every_fact(local_facts: dict[str, str]) -> None:
    for key in ("uname", "vmx", "cmdline", "jump_label", "systemmap", "free_kb"):
        assert key in local_facts, f"preflight script did not report {key}: {local_facts}"
    assert local_facts["vmx"] in ("yes", "no")
    assert int(local_facts["free_kb"]) > 0


def test_upstream_refuses_a_6x_kernel_by_name(local_facts: dict[str, str]) -> None:
    checks = {c.name: c for c in judge_preflight(RECIPES["upstream"], local_facts)}
    assert {"vt-x", "kernel", "jump-label", "intremap", "system-map", "free-space"} <= set(checks)
    if not local_facts["uname"].startswith("4."):
        assert checks["kernel"].ok is False and local_facts["uname"] in checks["kernel"].detail
    if "intremap=off" not in local_facts["cmdline"]:
        assert checks["intremap"].ok is False and "intremap=off" in checks["intremap"].detail


def test_sbsim_needs_no_vmx(local_facts: dict[str, str]) -> None:
    names = {c.name for c in judge_preflight(RECIPES["sbsim"], local_facts)}
    assert "vt-x" not in names and "intremap" not in names


def test_no_vmx_is_named() -> None:
    facts = {"uname": "6.1.0-56-amd64", "vmx": "no", "cmdline": "intremap=off", "jump_label": "n", "free_kb": "999999"}
    bad = [c for c in judge_preflight(RECIPES["gooroom"], facts) if c.ok is False]
    assert [c.name for c in bad] == ["vt-x", "kernel"], bad
    assert "no 'vmx'" in bad[0].detail


def test_lockdown_and_secure_boot_block() -> None:
    facts = {
        "uname": "5.10.0",
        "vmx": "yes",
        "cmdline": "intremap=off",
        "jump_label": "n",
        "free_kb": "999999",
        "lockdown": "none [integrity] confidentiality",
        "secureboot": "1",
    }
    bad = {c.name for c in judge_preflight(RECIPES["gooroom"], facts) if c.ok is False}
    assert bad == {"lockdown", "secure-boot"}


def test_unknown_recipe() -> None:
    with pytest.raises(ConfigError, match="known: upstream, gooroom, sbsim"):
        recipe_for("nope")


def test_a_tree_whose_make_fails_gives_build_failed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Makefile").write_text(
        "modules:\n\t@echo 'shadow_box.c:12: error: totalram_pages undeclared' >&2; exit 2\n"
    )
    headers = tmp_path / "headers"
    headers.mkdir()
    d = Deployer(None, None, RECIPES["sbsim"], tree, device="t", kernel_headers=headers)  # type: ignore[arg-type]
    d.recipe = type(d.recipe)(**{**d.recipe.__dict__, "build": "make modules"})
    with pytest.raises(DeployFailed) as exc:
        d.build_on_controller("6.1.0-test")  # builds a copy: the tree stays clean
    assert exc.value.reason == "build-failed"
    assert "totalram_pages undeclared" in exc.value.log
