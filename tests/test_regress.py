"""``rig regress``: builds lined up per device, resume after an interruption, refs checked out aside.

Without a lab: label parsing, git checkouts into the cache (a real git repository in tmp), the
classification of a device's report.json into a cell, regressions against the baseline, and the
resume logic (with a stand-in for the pytest run, so an interruption can be placed exactly).

On the lab (``@pytest.mark.lab``): the real command over three sbsim builds made from the shipped
source with one default changed -- fixed, hangs after N NMIs, panics after N NMIs -- on both lab
devices in parallel; the summary must line them up per device, and a rerun must run nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from rig.errors import ConfigError
from rig.inventory import device_toml, load_device
from rig.runs.regress import (
    EXIT_NOTHING_JUDGED,
    EXIT_OK,
    EXIT_REGRESSED,
    EXIT_UNJUDGED,
    BuildResult,
    BuildSpec,
    Cell,
    Regress,
    RegressState,
    Selection,
    checkout_commit,
    classify_device,
    detail_lines,
    exit_code,
    line_up,
    nothing_judged,
    parse_builds,
    pytest_command,
    render_table,
    resolve_ref,
    safe_label,
    summary_json,
)
from tests.helpers import commit_all, git, restore_guests, run_plugin, sbsim_variant, with_monitor

pytest_plugins = ("pytester",)

CHECKOUT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# helpers shared with test_bisect.py


@pytest.fixture
def small_repo(tmp_path: Path) -> tuple[Path, list[str]]:
    repo = tmp_path / "sb"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(3):
        (repo / "f.txt").write_text(f"version {i}\n")
        commits.append(commit_all(repo, f"v{i}"))
    git(repo, "tag", "v0", commits[0])
    return repo, commits


# ---------------------------------------------------------------------------------------------
# builds and refs


def test_labels_are_folder_names_and_unique(tmp_path: Path) -> None:
    assert safe_label("origin/fix nmi") == "origin_fix_nmi"
    assert safe_label("../..") == "build"
    specs = parse_builds(tmp_path, ["v2.2", "main", "tip=main", "main"], [])
    assert [s.label for s in specs] == ["v2.2", "main", "tip", "main-2"]
    assert [s.ref for s in specs] == ["v2.2", "main", "main", "main"]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    trees = parse_builds(None, [str(a)], [f"fixed={b}"])
    assert [(s.label, s.kind, s.source) for s in trees] == [("a", "tree", a), ("fixed", "tree", b)]


def test_bad_build_arguments_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"build tree .*nope.* is not a folder"):
        parse_builds(None, [str(tmp_path / "nope")], [])
    with pytest.raises(ConfigError, match="either --source-tree"):
        parse_builds(tmp_path, ["main"], [str(tmp_path)])
    with pytest.raises(ConfigError, match="no builds"):
        parse_builds(None, [], [])


def test_a_ref_is_checked_out_aside_and_the_users_tree_is_untouched(
    small_repo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, commits = small_repo
    (repo / "f.txt").write_text("uncommitted work\n")  # the user's work in progress must survive
    assert resolve_ref(repo, "v0") == commits[0]
    assert resolve_ref(repo, "main~1") == commits[1]
    cache = tmp_path / "cache"
    tree = checkout_commit(repo, commits[0], cache)
    assert tree == cache / commits[0]
    assert (tree / "f.txt").read_text() == "version 0\n"
    assert git(tree, "rev-parse", "HEAD") == commits[0]  # the deploy step records the commit
    # the user's checkout: same branch, same HEAD, same uncommitted change, no extra worktree
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(repo, "rev-parse", "HEAD") == commits[2]
    assert (repo / "f.txt").read_text() == "uncommitted work\n"
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    # reused, not cloned again; re-made if someone changed it
    marker = tree / ".git" / "rig-marker"
    marker.write_text("x")
    assert checkout_commit(repo, commits[0], cache) == tree and marker.exists()
    (tree / "f.txt").write_text("changed\n")
    checkout_commit(repo, commits[0], cache)
    assert (tree / "f.txt").read_text() == "version 0\n"


def test_unknown_ref_and_non_git_tree_are_named(small_repo: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, _ = small_repo
    with pytest.raises(ConfigError, match=r"git ref 'nope' not found in .*sb"):
        resolve_ref(repo, "nope")
    with pytest.raises(ConfigError, match="is not a git checkout"):
        resolve_ref(tmp_path, "main")


# ---------------------------------------------------------------------------------------------
# cells


def verdict(kind: str, detail: str | None = None, reason: str = "") -> dict[str, Any]:
    text = f"crash({detail})" if kind == "crash" else kind
    return {"verdict": text, "kind": kind, "detail": detail, "reason": reason}


def report(
    tests: list[tuple[str, str, dict[str, Any]]], timeline: list[dict[str, Any]] | None = None, status: str = "complete"
) -> dict[str, Any]:
    return {
        "status": status,
        "tests": [{"name": n, "outcome": o, "verdict": v} for n, o, v in tests],
        "timeline": timeline or [],
    }


OK = verdict("ok")


def _render(table: object) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_crashes_told_apart_by_title_across_builds() -> None:
    def crashed(title: str) -> Cell:
        v = {**verdict("crash", "bug"), "event": {"kind": "bug", "title": title}}
        return classify_device(report([("test_nmi_soak", "failed", v)]))

    kasan, lockdep = "KASAN: use-after-free Read in sb_walk", "possible deadlock in sb_cfg_write"
    results = [
        BuildResult("v1", {"lab-1": crashed(kasan), "lab-2": classify_device(report([("t", "passed", OK)]))}),
        BuildResult("v2", {"lab-1": crashed(lockdep), "lab-2": crashed(kasan)}),
    ]
    line_up(results)
    assert results[0].cells["lab-1"].first_seen == "v1"  # new in v1
    assert (results[1].cells["lab-1"].first_seen, results[1].cells["lab-2"].first_seen) == ("v2", "v1")
    assert results[1].cells["lab-2"].text == f"crash(bug) {kasan}"
    assert results[1].regressed_on == ["lab-2"]
    text = _render(render_table(results))
    assert "(same crash as in v1)" in text and "(new crash)" in text


def test_cells_from_reports() -> None:
    soak_end = {"kind": "soak-end", "time_to_failure": 12.34}
    assert classify_device(report([("test_deploy", "passed", OK), ("test_soak", "passed", OK)])).text == "pass"
    hang = classify_device(
        report(
            [("test_deploy", "passed", OK), ("test_nmi_soak", "failed", verdict("hang", reason="no hb"))], [soak_end]
        )
    )
    assert (hang.outcome, hang.time_to_failure, hang.test, hang.text) == (
        "hang",
        12.34,
        "test_nmi_soak",
        "hang after 12 s",
    )
    panic = classify_device(report([("test_nmi_soak", "failed", verdict("crash", "panic"))], [soak_end]))
    assert panic.text == "crash(panic) after 12 s" and panic.severity == 2
    # a crash a test provoked on purpose (and passed) is not the build's failure
    provoked = classify_device(report([("test_oops_is_an_oops", "passed", verdict("crash", "oops"))]))
    assert provoked.outcome == "pass"
    assertion = classify_device(report([("test_deploy", "failed", OK)]))
    assert assertion.outcome == "fail" and "test_deploy (assertion)" in assertion.text
    deploy = classify_device(report([], [{"kind": "deploy-failed", "text": "build-failed: make exited 2"}]))
    assert deploy.outcome == "deploy-failed" and deploy.text == "deploy-failed(build-failed)"
    assert "make exited 2" in deploy.detail
    lab = classify_device(report([("test_soak", "failed", verdict("lab-fault", reason="console server down"))]))
    assert lab.outcome == "lab-fault" and lab.severity is None and "console server" in lab.detail
    # a hang later in the run wins over an earlier lab fault: the build did hang the laptop
    both = report([("a", "failed", verdict("lab-fault")), ("b", "failed", verdict("hang"))])
    assert classify_device(both).outcome == "hang"
    assert classify_device(report([("a", "passed", OK)], status="incomplete")).outcome == "incomplete"
    assert classify_device(None).outcome == "missing"
    assert classify_device(report([("a", "skipped", OK)])).outcome == "no-tests"


def test_regressions_are_against_the_first_build() -> None:
    results = [
        BuildResult("fixed", {"lab-1": Cell("pass"), "lab-2": Cell("pass")}),
        BuildResult("hangs", {"lab-1": Cell("hang", time_to_failure=3), "lab-2": Cell("pass")}),
        BuildResult("lab", {"lab-1": Cell("lab-fault"), "lab-2": Cell("pass")}),
    ]
    assert line_up(results) == ["lab-1", "lab-2"]
    assert [r.regressed_on for r in results] == [[], ["lab-1"], []]
    assert exit_code(results) == EXIT_REGRESSED
    assert exit_code([results[0], results[2]]) == EXIT_UNJUDGED  # a lab fault: not judged, not a pass
    assert exit_code([results[0]]) == EXIT_OK
    # a baseline that already hangs: the same hang later is not a regression, a fix is not either
    base_bad = [BuildResult("old", {"d": Cell("hang")}), BuildResult("new", {"d": Cell("crash", "panic")})]
    line_up(base_bad)
    assert base_bad[1].regressed_on == []
    summary = summary_json(results, selection(["lab-1", "lab-2"]))
    assert summary["baseline"] == "fixed"
    assert summary["builds"][1]["cells"]["lab-1"]["text"] == "hang after 3 s"


def selection(devices: list[str], soak: float = 1.0) -> Selection:
    return Selection(["/inv"], [], [], ["/suites/test_x.py"], soak, devices)


def test_pytest_command_runs_the_build_on_every_selected_device(tmp_path: Path) -> None:
    spec = BuildSpec("hangs", "tree", tmp_path)
    sel = Selection(["/inv"], ["lab-1", "lab-2"], ["t"], ["/s/test_a.py"], 0.5, ["lab-1", "lab-2"])
    cmd = pytest_command(spec, tmp_path / "tree", tmp_path / "out", sel)
    joined = " ".join(cmd)
    for part in (
        "--rig-devices /inv", "--rig-device lab-1", "--rig-device lab-2", "--rig-tag t", "--rig-build hangs",
        f"--rig-shadowbox-source {tmp_path / 'tree'}", f"--rig-report-dir {tmp_path / 'out'}",
        "--rig-soak-minutes 0.5", "-n 2", "/s/test_a.py",
    ):  # fmt: skip
        assert part in joined, part
    one = pytest_command(spec, tmp_path, tmp_path, selection(["lab-1"]))
    assert "no:xdist" in one and "-n" not in one


# ---------------------------------------------------------------------------------------------
# resume


class FakeSuites:
    """Stands in for the pytest run (the lab test runs the real one): writes a finished run folder.

    ``interrupt_at`` raises KeyboardInterrupt half way through that build, leaving a partial run
    folder behind, as a ^C or a killed controller would.
    """

    def __init__(self, interrupt_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at

    def __call__(self, spec: BuildSpec, tree: Path, run_dir: Path, sel: Selection) -> int:
        self.calls.append(spec.label)
        for dev in sel.device_names:
            (run_dir / dev).mkdir(parents=True, exist_ok=True)
            outcome, v = ("failed", verdict("hang")) if "hang" in spec.label else ("passed", OK)
            rep = report([("test_nmi_soak", outcome, v)], status="incomplete")
            (run_dir / dev / "report.json").write_text(json.dumps(rep))
        if spec.label == self.interrupt_at:
            raise KeyboardInterrupt
        for dev in sel.device_names:
            rep = json.loads((run_dir / dev / "report.json").read_text())
            rep["status"] = "complete"
            (run_dir / dev / "report.json").write_text(json.dumps(rep))
        (run_dir / "summary.json").write_text("{}")
        return 0


def make_regress(tmp_path: Path, runner: FakeSuites, soak: float = 1.0) -> Regress:
    trees = []
    for name in ("fixed", "hang", "panic"):
        src = tmp_path / "trees" / name / "sbsim.c"
        if not src.exists():
            src.parent.mkdir(parents=True)
            src.write_text(name)
        trees.append(str(tmp_path / "trees" / name))
    builds = parse_builds(None, [], trees)
    out = tmp_path / "out"
    resets: list[BuildSpec] = []  # the lab test does the real power cycles
    return Regress(
        builds, out, selection(["lab-1", "lab-2"], soak), out / "trees", Console(quiet=True), runner, resets.append
    )


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    first = FakeSuites(interrupt_at="hang")
    with pytest.raises(KeyboardInterrupt):
        make_regress(tmp_path, first).run()
    assert first.calls == ["fixed", "hang"]
    state = RegressState(tmp_path / "out")
    assert state.entry("fixed")["status"] == "done"  # type: ignore[index]
    assert state.entry("hang")["status"] == "running"  # type: ignore[index]
    # rerun of the same command: the finished build is not run again, the interrupted one is, from scratch
    second = FakeSuites()
    results = make_regress(tmp_path, second).run()
    assert second.calls == ["hang", "panic"]
    (aside,) = (tmp_path / "out" / ".replaced").iterdir()
    assert aside.name.startswith("hang-") and (aside / "lab-1" / "report.json").exists()
    assert [r.cells["lab-1"].outcome for r in results] == ["pass", "hang", "pass"]
    assert results[1].regressed_on == ["lab-1", "lab-2"]
    # all done: nothing runs
    third = FakeSuites()
    make_regress(tmp_path, third).run()
    assert third.calls == []
    # a changed build (its tree's content) or a changed soak is a different run
    (tmp_path / "trees" / "panic" / "sbsim.c").write_text("panic, edited")
    fourth = FakeSuites()
    make_regress(tmp_path, fourth).run()
    assert fourth.calls == ["panic"]
    fifth = FakeSuites()
    make_regress(tmp_path, fifth, soak=2.0).run()
    assert fifth.calls == ["fixed", "hang", "panic"]


def test_a_run_that_leaves_no_summary_is_rerun(tmp_path: Path) -> None:
    def broken(spec: BuildSpec, tree: Path, run_dir: Path, sel: Selection) -> int:
        return 4  # pytest could not even start (usage error)

    reg = make_regress(tmp_path, FakeSuites())
    reg.runner = broken
    results = reg.run()
    assert RegressState(tmp_path / "out").entry("fixed")["status"] == "failed"  # type: ignore[index]
    assert all(c.outcome == "missing" for r in results for c in r.cells.values())
    assert exit_code(results) == EXIT_NOTHING_JUDGED  # no build could be judged at all
    again = FakeSuites()
    make_regress(tmp_path, again).run()
    assert again.calls == ["fixed", "hang", "panic"]


def test_a_foreign_state_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "regress.json").write_text('{"schema": "something-else"}')
    with pytest.raises(ConfigError, match="not a rig regress state file"):
        RegressState(tmp_path)


# ---------------------------------------------------------------------------------------------
# on the lab


@pytest.fixture
def lab_restored(lab: Any, tmp_path: Path) -> Any:
    """The shared lab; afterwards every guest answers SSH again (the builds leave them hung or panicked)."""
    yield lab
    restore_guests(lab, tmp_path / "restore")


def slow_heartbeat_inventory(lab: Any, dest: Path, heartbeat: float) -> Path:
    """Copies of the lab's inventory files with a longer heartbeat interval H.

    Why: under an NMI flood a panicking guest prints its panic only after ``smp_send_stop`` gave up
    on the other CPU (stuck in the NMI handler): seen here 4.7 s, and 9.3 s on a loaded machine, of
    silence under TCG (about 1 s on real hardware). With H = 1 s the monitor declares a hang first
    (2H of silence + a failed probe), and the first verdict wins. H = 6 s lets the panic text arrive first.
    """
    dest.mkdir(parents=True)
    for f in sorted(Path(lab.inventory_dir).glob("*.toml")):
        # crash_tail_seconds: how long the plugin keeps reading after a crash for the whole oops (default 10)
        dev = with_monitor(load_device(f), heartbeat_interval=heartbeat, crash_tail_seconds=3)
        (dest / f.name).write_text(device_toml(dev))
    return dest


@pytest.mark.lab
def test_regress_lines_up_fixed_hanging_and_panicking_builds(lab_restored: Any, tmp_path: Path) -> None:
    inventory = slow_heartbeat_inventory(lab_restored, tmp_path / "devices", heartbeat=6)
    trees = tmp_path / "builds"
    fixed = sbsim_variant(trees / "fixed")
    hangs = sbsim_variant(trees / "hangs", hang_after_nmi=40)
    panics = sbsim_variant(trees / "panics", panic_after_nmi=40)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "rig.cli", "--devices", str(inventory), "regress",
        "--build-tree", str(fixed), "--build-tree", str(hangs), "--build-tree", str(panics),
        "--suites", str(CHECKOUT / "suites" / "test_deploy.py"),
        "--suites", str(CHECKOUT / "suites" / "test_nmi_soak.py"),
        "--soak-minutes", "0.2", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    text = proc.stdout + proc.stderr
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(out.glob("*.log")))
    assert proc.returncode == EXIT_REGRESSED, text[-4000:] + logs
    summary = json.loads((out / "regress-summary.json").read_text())
    assert summary["baseline"] == "fixed" and summary["devices"] == ["lab-1", "lab-2"]
    builds = {b["label"]: b for b in summary["builds"]}
    for dev in ("lab-1", "lab-2"):
        assert builds["fixed"]["cells"][dev]["outcome"] == "pass", (dev, builds["fixed"], logs)
        hang = builds["hangs"]["cells"][dev]
        assert hang["outcome"] == "hang" and hang["time_to_failure"] is not None, (dev, hang, logs)
        assert hang["test"] == "test_nmi_soak"
        panic = builds["panics"]["cells"][dev]
        assert (panic["outcome"], panic["detail"]) == ("crash", "panic"), (dev, panic, logs)
    assert builds["hangs"]["regressed_on"] == ["lab-1", "lab-2"]
    assert builds["panics"]["regressed_on"] == ["lab-1", "lab-2"]
    # one ordinary report run per build, carrying the build's label; the tree that was deployed
    for label, tree in (("fixed", fixed), ("hangs", hangs), ("panics", panics)):
        run_summary = json.loads((out / label / "summary.json").read_text())
        assert run_summary["build"] == label
        rep = json.loads((out / label / "lab-1" / "report.json").read_text())
        assert rep["build"] == label and rep["deploy"]["tree"] == str(tree)
    # the table: one row per build, the verdicts side by side
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert "pass" in rows["fixed"] and "baseline" in rows["fixed"]
    assert rows["hangs"].count("hang after") == 2 and "REGRESSED on lab-1, lab-2" in rows["hangs"]
    assert rows["panics"].count("crash(panic)") == 2
    # every build started from a fresh boot of every device
    assert text.count("power-cycled, ready in") + text.count("no reset needed") == 6, text[-4000:]
    assert text.count("power-cycled, ready in") >= 4  # after the hanging and the panicking build at least
    # the same command again: everything finished, nothing runs, same answer
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == EXIT_REGRESSED, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("done in an earlier run, not run again") == 3


# ---------------------------------------------------------------------------------------------
# the plugin options regress drives (no device is contacted: the tests only read the inventory)


def test_plugin_deploys_one_tree_everywhere_and_records_the_build(pytester: pytest.Pytester) -> None:
    tmp_path = pytester.path  # the run's working folder: the relative --rig-shadowbox-source resolves there
    tree = tmp_path / "build-tree"
    tree.mkdir()
    proc = run_plugin(pytester, "--rig-shadowbox-source", "build-tree", "--rig-build", "v2.3-rc1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert {s["device"]: s["source"] for s in seen} == {"a": str(tree), "b": str(tree)}  # relative to the cwd
    for name in ("a", "b"):
        assert json.loads((tmp_path / "reports" / "run" / name / "report.json").read_text())["build"] == "v2.3-rc1"
    summary = json.loads((tmp_path / "reports" / "run" / "summary.json").read_text())
    assert summary["build"] == "v2.3-rc1" and {d["build"] for d in summary["devices"]} == {"v2.3-rc1"}
    assert json.loads((tmp_path / "reports" / "run" / "run.json").read_text())["build"] == "v2.3-rc1"
    # without the options: the inventory's own source, no build label
    (tmp_path / "seen.jsonl").unlink()
    shutil.rmtree(tmp_path / "reports")
    proc = run_plugin(pytester)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert {s["source"] for s in seen} == {"/nonexistent/original-a", "/nonexistent/original-b"}
    assert json.loads((tmp_path / "reports" / "run" / "summary.json").read_text())["build"] is None


def test_plugin_refuses_a_source_that_is_not_a_folder(pytester: pytest.Pytester) -> None:
    tmp_path = pytester.path
    proc = run_plugin(pytester, "--rig-shadowbox-source", "missing-tree")
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 1), out  # a usage error, not a test failure
    assert f"--rig-shadowbox-source missing-tree: {tmp_path / 'missing-tree'} is not a folder" in out
    assert not (tmp_path / "seen.jsonl").exists()


def test_ref_builds_run_on_their_commit_and_a_moved_ref_is_a_new_build(
    small_repo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, commits = small_repo
    trees: dict[str, Path] = {}

    class Recording(FakeSuites):
        def __call__(self, spec: BuildSpec, tree: Path, run_dir: Path, sel: Selection) -> int:
            trees[spec.label] = tree
            return super().__call__(spec, tree, run_dir, sel)

    def regress(runner: FakeSuites) -> list[BuildResult]:
        builds = parse_builds(repo, ["old=v0", "main"], [])
        out = tmp_path / "out"
        return Regress(builds, out, selection(["lab-1"]), out / "trees", Console(quiet=True), runner).run()

    first = Recording()
    results = regress(first)
    assert first.calls == ["old", "main"]
    assert trees == {"old": tmp_path / "out" / "trees" / commits[0], "main": tmp_path / "out" / "trees" / commits[2]}
    assert (trees["old"] / "f.txt").read_text() == "version 0\n"
    assert [r.spec["commit"] for r in results] == [commits[0], commits[2]]
    assert RegressState(tmp_path / "out").entry("main")["commit"] == commits[2]  # type: ignore[index]
    # a new commit on main: "main" is a different build now and runs again; "old" does not
    (repo / "f.txt").write_text("version 3\n")
    new = commit_all(repo, "v3")
    second = Recording()
    regress(second)
    assert second.calls == ["main"] and trees["main"] == tmp_path / "out" / "trees" / new


def test_builds_that_all_fail_to_deploy_judge_nothing_and_say_why_in_full() -> None:
    long_detail = "'make' exited 127 on lab-1: sh: make: not found -- 'make' is not installed on lab-1: " + "x" * 200
    deploy = {"ok": False, "reason": "build-failed", "detail": long_detail, "hint": "install make"}
    failed = {"status": "complete", "tests": [], "timeline": [], "deploy": deploy}
    cell = classify_device(failed)
    assert cell.text == "deploy-failed(build-failed)" and long_detail in cell.detail  # not cut at 120
    results = [BuildResult(label, {"lab-1": cell, "lab-2": cell}) for label in ("a", "b")]
    assert exit_code(results) == EXIT_NOTHING_JUDGED
    why = nothing_judged(results)
    assert why is not None and "deploy-failed(build-failed)" in why
    lines = detail_lines(results)
    assert len(lines) == 4 and all(long_detail in ln for ln in lines)
    # a build that deploys where another did not is judged: the one that failed to deploy regressed
    passed = classify_device(report([("test_deploy", "passed", OK)]))
    mixed = [BuildResult("a", {"lab-1": passed}), BuildResult("b", {"lab-1": cell})]
    line_up(mixed)
    assert nothing_judged(mixed) is None and exit_code(mixed) == EXIT_REGRESSED
