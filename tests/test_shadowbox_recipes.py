"""Deploy recipes and preflight judgement, on facts read from a real Linux (this machine).

The full deploy (upload, insmod, markers) runs against lab guests in test_deploy_lab.py.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from rig.device.shadowbox import (
    PREFLIGHT_SCRIPT,
    RECIPES,
    Deployer,
    DeployFailed,
    _match_code,
    _match_failure,
    judge_preflight,
    parse_facts,
    recipe_for,
    tree_mismatch,
)
from rig.errors import ConfigError
from tests.sbtrees import TREES, gooroom_tree, upstream_tree


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


#: A 5.10 laptop with everything a build needs, bar what a test takes away.
GOOD = {
    "uname": "5.10.0-99-amd64",
    "uname_v": "#1 SMP Debian 5.10.999-1 (2099-01-01)",
    "vmx": "yes",
    "cmdline": "intremap=off",
    "jump_label": "n",
    "free_kb": "999999",
    "systemmap": "yes",
    "headers": "yes",
    "tool_make": "yes",
    "tool_gcc": "yes",
    "tool_nasm": "yes",
    "tool_python3": "yes",
    "python_major": "2",
}


def test_no_vmx_is_named() -> None:
    facts = {**GOOD, "uname": "6.1.0-99-amd64", "vmx": "no"}
    bad = [c for c in judge_preflight(RECIPES["gooroom-3.0"], facts) if c.ok is False]
    assert [c.name for c in bad] == ["vt-x", "kernel"], bad
    assert "no 'vmx'" in bad[0].detail


def test_gooroom_master_is_4x_only_and_3_0_lists_5_10() -> None:
    bad = {c.name for c in judge_preflight(RECIPES["gooroom"], GOOD) if c.ok is False}
    assert bad == {"kernel"}, bad
    assert all(c.ok is not False for c in judge_preflight(RECIPES["gooroom-3.0"], GOOD))


def test_missing_build_tools_are_named_with_their_fix() -> None:
    facts = {**GOOD, "uname": "4.19.0-99-amd64", "tool_make": "no", "tool_nasm": "no", "python_major": "3"}
    checks = {c.name: c for c in judge_preflight(RECIPES["upstream"], facts)}
    assert checks["tool:make"].ok is False and "apt install make" in checks["tool:make"].detail
    assert checks["tool:nasm"].ok is False and ".asm" in checks["tool:nasm"].detail
    py = checks["tool:python2"]
    assert py.ok is False and "'python' is Python 3" in py.detail and "make_symtable.py is Python 2" in py.detail
    assert checks["tool:gcc"].ok is True
    facts = {**facts, "headers": "no"}
    headers = {c.name: c for c in judge_preflight(RECIPES["upstream"], facts)}["kernel-headers"]
    assert headers.ok is False and f"linux-headers-{facts['uname']}" in headers.detail


def test_the_system_map_goes_into_the_tree_not_boot() -> None:
    def check(**facts: str) -> object:
        return {c.name: c for c in judge_preflight(RECIPES["upstream"], {**GOOD, **facts})}["system-map"]

    assert "system.map/<uname -v>.map in the tree" in check().detail  # type: ignore[attr-defined]
    from_kallsyms = check(systemmap="no", kallsyms="yes")
    assert from_kallsyms.ok is True and "/proc/kallsyms" in from_kallsyms.detail  # type: ignore[attr-defined]
    missing = check(systemmap="no", kallsyms="no")
    assert missing.ok is False and "system.map/<uname -v>.map" in missing.detail  # type: ignore[attr-defined]
    gooroom = {c.name: c for c in judge_preflight(RECIPES["gooroom"], {**GOOD, "uname": "4.19.0-1-amd64"})}
    assert "Source/shadow_box/system.map/<uname -v>.map" in gooroom["system-map"].detail
    assert "system-map" not in {c.name for c in judge_preflight(RECIPES["gooroom-3.0"], GOOD)}


def test_a_tree_that_builds_for_uname_is_refused_on_another_controller_kernel() -> None:
    controller = {**GOOD, "build_uname": "6.18.0-other"}
    checks = {
        c.name: c for c in judge_preflight(RECIPES["upstream"], GOOD, build_facts=controller, build_on="controller")
    }
    assert checks["build-host"].ok is False and "KDIR is ignored" in checks["build-host"].detail
    assert "6.18.0-other" in checks["build-host"].detail and GOOD["uname"] in checks["build-host"].detail
    sbsim = judge_preflight(RECIPES["sbsim"], GOOD, build_facts=controller, build_on="controller")
    assert "build-host" not in {c.name for c in sbsim}  # kbuild with KDIR: any controller kernel


def test_no_python3_means_no_start_logging_and_says_so() -> None:
    checks = {c.name: c for c in judge_preflight(RECIPES["gooroom-3.0"], {**GOOD, "tool_python3": "no"})}
    assert checks["start-logging"].ok is None and "/dev/sb-helper" in checks["start-logging"].detail


def test_lockdown_and_secure_boot_block() -> None:
    facts = {**GOOD, "lockdown": "none [integrity] confidentiality", "secureboot": "1"}
    bad = {c.name for c in judge_preflight(RECIPES["gooroom-3.0"], facts) if c.ok is False}
    assert bad == {"lockdown", "secure-boot"}


def test_unknown_recipe() -> None:
    with pytest.raises(ConfigError, match="known: upstream, gooroom, gooroom-3.0, sbsim"):
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


# --- trees the project writes itself (tests/sbtrees.py): how each real tree behaves at build time


@pytest.mark.parametrize("flavour", sorted(TREES))
def test_each_tree_matches_its_recipe_and_no_other(tmp_path: Path, flavour: str) -> None:
    tree = TREES[flavour](tmp_path / flavour)
    assert tree_mismatch(RECIPES[flavour], tree) is None
    for other in ("upstream", "gooroom", "gooroom-3.0"):
        if other != flavour:
            why = tree_mismatch(RECIPES[other], tree)
            assert why is not None and f"it looks like a '{flavour}' tree" in why, why
            assert f'recipe = "{flavour}"' in why


def test_a_gooroom_source_folder_is_pointed_at_its_repository(tmp_path: Path) -> None:
    gooroom_tree(tmp_path / "gop", "gooroom-3.0")
    why = tree_mismatch(RECIPES["gooroom-3.0"], tmp_path / "gop" / "Source" / "shadow_box")
    assert why is not None and f"point [shadowbox] source at {tmp_path / 'gop'}" in why, why


def test_a_tree_mismatch_is_refused_before_anything_is_uploaded(tmp_path: Path) -> None:
    class NoDevice:  # the check must not reach the device at all
        def run(self, *a: object, **k: object) -> None:
            raise AssertionError("the device was asked something")

        def upload_tree(self, *a: object) -> None:
            raise AssertionError("something was uploaded")

    tree = gooroom_tree(tmp_path / "gop", "master")
    d = Deployer(NoDevice(), None, RECIPES["upstream"], tree, device="t")  # type: ignore[arg-type]
    with pytest.raises(DeployFailed) as exc:
        d.deploy()
    assert exc.value.reason == "tree-mismatch" and "'gooroom' tree" in exc.value.detail
    assert exc.value.to_json()["recipe"] == "upstream" and exc.value.hint


def _controller(recipe: str, tree: Path, tmp_path: Path) -> Deployer:
    headers = tmp_path / "headers"
    headers.mkdir(exist_ok=True)
    return Deployer(None, None, RECIPES[recipe], tree, device="t", build_on="controller", kernel_headers=headers)  # type: ignore[arg-type]


def test_a_oneshell_makefile_that_exits_0_having_built_nothing_is_build_failed(tmp_path: Path) -> None:
    """gooroom's Source/Makefile: .ONESHELL without -e, so make exits 0 although every step failed."""
    tree = gooroom_tree(tmp_path / "gop", "gooroom-3.0")
    with pytest.raises(DeployFailed) as exc:
        _controller("gooroom-3.0", tree, tmp_path).build_on_controller("6.1.0-test")
    e = exc.value
    assert e.reason == "build-failed"
    assert "exited 0 on the controller but built no Source/shadow_box_helper/shadow_box_helper.ko" in e.detail
    # make's own words about what failed reach the message and the report's output tail
    assert "/lib/modules/" in e.detail and any("/lib/modules/" in ln for ln in e.output_tail())
    assert not (tree / "Source" / "shadow_box" / "shadow_box.o").exists()  # the user's tree is not built in


def test_a_stale_module_is_not_taken_for_a_build(tmp_path: Path) -> None:
    tree = gooroom_tree(tmp_path / "gop", "gooroom-3.0")
    for m in RECIPES["gooroom-3.0"].modules:
        (tree / m).write_bytes(b"old")
        os.utime(tree / m, (1_000_000_000, 1_000_000_000))
    with pytest.raises(DeployFailed) as exc:
        _controller("gooroom-3.0", tree, tmp_path).build_on_controller("6.1.0-test")
    assert "older than the build's start (not rebuilt)" in exc.value.detail


def test_the_python2_script_fails_in_its_own_words(tmp_path: Path) -> None:
    """upstream's make runs 'python make_symtable.py' first: whatever 'python' is here, its words are kept."""
    tree = upstream_tree(tmp_path / "sb")
    with pytest.raises(DeployFailed) as exc:
        _controller("upstream", tree, tmp_path).build_on_controller("6.1.0-test")
    e = exc.value
    assert e.reason == "build-failed" and "exited 2 on the controller" in e.detail
    assert any("make_symtable.py" in ln for ln in e.output_tail()), e.output_tail()
    assert "Error" in e.detail  # make's own last line, in the message itself


def test_a_missing_build_tool_shows_the_shells_words_and_the_fix(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    d = _controller("sbsim", tree, tmp_path)
    d.recipe = replace(d.recipe, build="nosuchtool-rig modules")
    with pytest.raises(DeployFailed) as exc:
        d.build_on_controller("6.1.0-test")
    assert "exited 127" in exc.value.detail and "nosuchtool-rig: not found" in exc.value.detail
    assert "'nosuchtool-rig' is not installed on the controller" in exc.value.detail


@pytest.mark.parametrize(
    ("recipe", "kernel_lines", "reason"),
    [
        ("upstream", "shadow-box: Kernel version is not supported, [#1 SMP Debian]shadow-box: errorcode=5",
         "unsupported-kernel"),
        ("upstream", "shadow-box: errorcode=7", "out-of-memory"),
        ("upstream", "shadow-box:     [*] VMX inside SMX is disabled by BIOS\nshadow-box: errorcode=2", "vmx-disabled"),
        ("upstream", "shadow-box: VMXON Fail", "vmxon-failed"),
        ("upstream", "shadow-box: VM [0] Launch Valid Fail", "launch-failed"),
        ("upstream", "shadow-box: Execution Fail [3]\nshadow-box: errorcode=1", "start-failed"),
        ("gooroom-3.0", "shadow-box: Intel CPU is not found\nshadow-box: GRMCODE=020010", "no-intel-cpu"),
        ("gooroom-3.0", "shadow-box: sb_get_symbol_address [module_mutex] is NULL", "missing-symbol"),
        ("gooroom-3.0", "shadow-box: Failed to get kallsyms_lookup_name()", "missing-symbol"),
        ("gooroom-3.0", "shadow-box: GRMCODE=020013", "unsupported-kernel"),
        ("gooroom-3.0", "shadow-box: GRMCODE=020015", "out-of-memory"),
        ("gooroom", "shadow-box: GRMCODE=020011", "launch-failed"),
        ("gooroom", "shadow-box: GRMCODE=020009", "not-started"),
    ],
)  # fmt: skip
def test_every_marker_and_result_code_is_named(recipe: str, kernel_lines: str, reason: str) -> None:
    r = RECIPES[recipe]
    found = _match_failure(r, kernel_lines) or _match_code(r, kernel_lines)
    assert found is not None and found.split(": ", 1)[0] == reason, found


def test_a_deploy_failure_as_data_keeps_the_last_40_lines() -> None:
    out = "\n".join(f"line {i}" for i in range(100))
    e = DeployFailed("build-failed", "'make' exited 2 on lab-1", out, kernel_lines=["shadow-box: x"])
    data = e.to_json()
    assert data["ok"] is False and data["reason"] == "build-failed" and data["hint"]
    assert data["build_output_tail"] == [f"line {i}" for i in range(60, 100)]
    assert data["kernel_lines"] == ["shadow-box: x"]


def test_loaded_modules_are_found_by_name_not_by_the_recipes_path() -> None:
    from rig.device.dut import module_names

    assert module_names(RECIPES["gooroom-3.0"].modules) == {"shadow_box_helper", "shadow_box"}
    assert module_names(("sub/dir/my-module.ko",)) == {"my_module"}
