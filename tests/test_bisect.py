"""``rig bisect``: the statistics of a 'good' verdict, git bisect in a clone, and the lab oracle.

Without a lab: the exponential fit (censored soaks), the soak a 'good' needs, the confidence a
capped soak reached, the step verdicts, and real ``git bisect`` in a clone of a generated history
(the user's repository is only read).

On the lab (``@pytest.mark.lab``): a small generated git history of sbsim in which one commit makes
the NMI handler hang after a few NMIs; ``rig bisect`` on lab-1 must name that commit, with the
evidence of every step in bisect.json.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rig.errors import ConfigError
from rig.runs.bisect import (
    EXIT_FOUND,
    Attempt,
    GitBisect,
    fit_rate,
    judge_soak,
    required_soak,
    survival_confidence,
)
from tests.helpers import commit_all, git, restore_guests, sbsim_variant

# ---------------------------------------------------------------------------------------------
# statistics


def test_rate_is_failures_over_total_exposure_with_survivors_censored() -> None:
    assert fit_rate([(100.0, True), (300.0, True)]) == pytest.approx(2 / 400)
    # a soak that survived 600 s adds exposure, not a failure: the rate goes down
    assert fit_rate([(100.0, True), (300.0, True), (600.0, False)]) == pytest.approx(2 / 1000)
    assert fit_rate([(600.0, False)]) is None  # no failure, no rate
    assert fit_rate([(0.0, True)]) == 1.0  # crashed while loading: at least one second of exposure


def test_the_soak_for_good_and_its_confidence() -> None:
    rate = 1 / 1200  # the original hang: about 20 minutes
    t = required_soak(rate, 0.95)
    assert t == pytest.approx(1200 * math.log(20))  # about 60 minutes
    assert math.exp(-rate * t) == pytest.approx(0.05)
    assert survival_confidence(rate, t) == pytest.approx(0.95)
    assert survival_confidence(rate, 1200) == pytest.approx(1 - math.exp(-1))
    assert survival_confidence(rate, 0) == 0.0
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="--confidence"):
            required_soak(rate, bad)


def test_step_verdicts_carry_their_evidence() -> None:
    rate = 0.1  # mean time to failure 10 s
    target = required_soak(rate, 0.95)  # ~30 s
    survived = judge_soak(Attempt("c1", target, exposure=target), rate, target, 0.95)
    assert survived.verdict == "good" and survived.confidence == pytest.approx(0.95)
    assert "survived 30 s" in survived.evidence and "confidence 0.950" in survived.evidence and not survived.note
    capped = judge_soak(Attempt("c1", 10, exposure=10), rate, target, 0.95)
    assert capped.verdict == "good" and capped.confidence == pytest.approx(1 - math.exp(-1))
    assert "below the asked 0.95" in capped.evidence
    hung = judge_soak(Attempt("c2", target, exposure=7.6, failed=True, verdict="hang"), rate, target, 0.95)
    assert hung.verdict == "bad" and hung.evidence == "hang after 8 s of NMIs" and hung.confidence is None
    broken = judge_soak(
        Attempt("c3", target, untestable=True, reason="deploy failed: build-failed"), rate, target, 0.95
    )
    assert broken.verdict == "skip" and "build-failed" in broken.evidence
    assert json.dumps(hung.to_json())  # bisect.json material


def test_crash_title_only_that_crash_decides_a_step() -> None:
    """rig bisect --crash-title: an unrelated crash during the soak is recorded, the step skipped."""
    rate, target = 0.1, 30.0
    kasan = Attempt(
        "c1", target, exposure=5, failed=True, verdict="crash(bug)", title="KASAN: use-after-free Read in sb_walk"
    )
    other = Attempt(
        "c2",
        target,
        exposure=9,
        failed=True,
        verdict="crash(oops)",
        title="BUG: kernel NULL pointer dereference in e1000_clean",
    )
    hang = Attempt("c3", target, exposure=9, failed=True, verdict="hang")
    want = "use-after-free read in SB_WALK"  # case does not matter
    assert judge_soak(kasan, rate, target, 0.95, want).verdict == "bad"
    step = judge_soak(other, rate, target, 0.95, want)
    assert step.verdict == "skip" and "e1000_clean" in step.evidence and "crash(oops) after 9 s" in step.evidence
    assert judge_soak(hang, rate, target, 0.95, want).verdict == "skip"
    assert judge_soak(other, rate, target, 0.95).verdict == "bad"  # without the option: any failure
    assert json.loads(json.dumps(kasan.to_json()))["title"] == kasan.title


# ---------------------------------------------------------------------------------------------
# git bisect in a clone


def make_history(repo: Path, bad_index: int, n: int, files: dict[str, str] | None = None) -> list[str]:
    """n commits; from commit ``bad_index`` on, ``bug.txt`` says "bug". Returns the commit ids."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(n):
        (repo / "bug.txt").write_text("bug\n" if i >= bad_index else "fine\n")
        (repo / "n.txt").write_text(f"{i}\n")
        commits.append(commit_all(repo, f"commit {i}" + (" (introduces the bug)" if i == bad_index else "")))
    return commits


def test_git_bisect_runs_in_a_clone_and_finds_the_commit(tmp_path: Path) -> None:
    repo = tmp_path / "sb"
    commits = make_history(repo, bad_index=5, n=9)
    gb = GitBisect(repo, tmp_path / "clone")
    done = gb.start(commits[-1], commits[0])
    tested = []
    while not done:
        head = gb.head()
        tested.append(head)
        verdict = "bad" if (gb.clone / "bug.txt").read_text() == "bug\n" else "good"
        done = gb.mark(verdict, head)
    assert gb.first_bad == commits[5]
    assert gb.subject(commits[5]) == "commit 5 (introduces the bug)"
    assert len(tested) <= 3  # log2(8) steps
    assert "git bisect good" in gb.log() and "# first bad commit" in gb.log()
    # the user's repository: still on main, clean, no bisection running there
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not git(repo, "status", "--porcelain")
    assert subprocess.run(["git", "-C", str(repo), "bisect", "log"], capture_output=True).returncode != 0


def test_skipped_commits_leave_candidates(tmp_path: Path) -> None:
    repo = tmp_path / "sb"
    commits = make_history(repo, bad_index=2, n=4)
    gb = GitBisect(repo, tmp_path / "clone")
    done = gb.start(commits[-1], commits[0])
    while not done:
        head = gb.head()
        done = gb.mark("skip" if head in commits[1:3] else "bad", head)
    assert gb.first_bad is None and set(gb.candidates) >= {commits[1], commits[2]}


def _unreachable_device(tmp_path: Path) -> Any:
    from rig.inventory import load_device

    p = tmp_path / "lap-9.toml"
    p.write_text('name = "lap-9"\n[ssh]\nhost = "192.0.2.9"\nkey_file = "id"\nknown_hosts = "kh"\n')
    return load_device(p)


def test_a_finished_bisection_is_not_run_again_and_another_ones_folder_is_refused(tmp_path: Path) -> None:
    """Resume bookkeeping without a device: the device here does not exist (TEST-NET address), so
    any attempt to boot or soak it would fail the test."""
    from rig.runs.bisect import RESULT_FILE, BisectRun

    repo = tmp_path / "sb"
    commits = make_history(repo, bad_index=2, n=4)
    out = tmp_path / "out"
    dev = _unreachable_device(tmp_path)

    def run(**kw: Any) -> BisectRun:
        return BisectRun(repo, commits[0], commits[-1], dev, out, **kw)

    first = run(confidence=0.9)
    finished = {**first.result, "status": "done", "first_bad": {"commit": commits[2], "subject": "commit 2"}}
    out.mkdir()
    (out / RESULT_FILE).write_text(json.dumps(finished))
    assert run(confidence=0.9).run()["first_bad"]["commit"] == commits[2]  # read back; the device is never touched
    with pytest.raises(ConfigError, match=r"holds another bisection \(confidence was 0.9, now 0.95\)"):
        run(confidence=0.95).run()
    other = BisectRun(repo, commits[1], commits[-1], dev, out, confidence=0.9)
    with pytest.raises(ConfigError, match="good commit was"):
        other.run()


def test_replay_of_recorded_steps_continues_the_same_git_bisection(tmp_path: Path) -> None:
    from rig.runs.bisect import BisectRun

    repo = tmp_path / "sb"
    commits = make_history(repo, bad_index=5, n=9)
    dev = _unreachable_device(tmp_path)
    # an uninterrupted bisection, judging from bug.txt, for reference
    gb = GitBisect(repo, tmp_path / "ref")
    done, order = gb.start(commits[-1], commits[0]), []
    while not done:
        head = gb.head()
        verdict = "bad" if (gb.clone / "bug.txt").read_text() == "bug\n" else "good"
        order.append((head, verdict))
        done = gb.mark(verdict, head)
    assert len(order) >= 2
    # a run interrupted after its first step: replaying it leaves git asking for the reference's second commit
    run = BisectRun(repo, commits[0], commits[-1], dev, tmp_path / "out")
    run.result["steps"] = [{"commit": order[0][0], "verdict": order[0][1]}]
    resumed = GitBisect(repo, tmp_path / "resumed")
    assert run._replay(resumed) is False and resumed.head() == order[1][0]
    # a recorded step that is not what git asks for (the history changed): refused, not guessed
    run.result["steps"] = [{"commit": commits[1], "verdict": "good"}]
    with pytest.raises(ConfigError, match="step 1 judged"):
        run._replay(GitBisect(repo, tmp_path / "changed"))


# ---------------------------------------------------------------------------------------------
# the oracle's clean start and the build cache


class _Device:
    """What Oracle._fresh_start asks of a Dut: its lifecycle (the real one), unload, recover, watch."""

    def __init__(self, *, loaded: bool, needs_recovery: bool, unloads: bool) -> None:
        from rig.device.lifecycle import Lifecycle, Step

        self.unloads = unloads
        self.calls: list[str] = []
        self.lifecycle = Lifecycle("t14", self)
        self.lifecycle.apply(Step.CONNECT)
        self.lifecycle.apply(Step.WATCH)
        if loaded:
            self.lifecycle.apply(Step.DEPLOY)
        if needs_recovery:
            self.lifecycle.fail("hang")
        self.device = self.monitor = self
        self.hang_bound = 2.0

    @property
    def shadowbox_loaded(self) -> bool:
        return self.lifecycle.loaded

    @property
    def needs_recovery(self) -> bool:
        return self.lifecycle.state == "failed"

    def unload_shadowbox(self) -> str | None:
        from rig.device.lifecycle import Step

        self.calls.append("unload")
        if not self.unloads:
            return "recipe upstream cannot be unloaded"
        self.lifecycle.apply(Step.UNLOAD)
        return None

    def recover(self, *, timeout: float | None = None, start_monitor: bool = True) -> float:
        from rig.device.lifecycle import Step

        self.calls.append("recover")
        self.lifecycle.apply(Step.POWER_CYCLE)
        self.lifecycle.apply(Step.READY)
        if start_monitor:
            self.lifecycle.apply(Step.WATCH)
        return 1.0

    def watch(self) -> None:
        from rig.device.lifecycle import Step

        self.calls.append("monitor")
        self.lifecycle.apply(Step.WATCH)


@pytest.mark.parametrize(
    ("loaded", "needs_recovery", "unloads", "start", "calls"),
    [
        (True, False, True, "unloaded", ["unload"]),  # sbsim after a pass: no boot
        (True, False, False, "fresh boot", ["unload", "recover"]),  # Shadow-box: it cannot be unloaded
        (True, True, True, "fresh boot", ["recover"]),  # after a hang: always a boot, no unload tried
        (False, True, True, "fresh boot", ["recover"]),  # a deploy that hung in insmod
        (False, False, True, "clean", []),  # the first attempt on a clean device
    ],
)
def test_each_attempt_starts_clean_and_boots_unless_sbsim_unloaded_after_a_pass(
    loaded: bool, needs_recovery: bool, unloads: bool, start: str, calls: list[str]
) -> None:
    from rig.runs.bisect import Oracle

    d = _Device(loaded=loaded, needs_recovery=needs_recovery, unloads=unloads)
    assert Oracle(d)._fresh_start() == start
    assert [c for c in d.calls if c != "monitor"] == calls
    assert not d.shadowbox_loaded and not d.needs_recovery


def test_only_sbsim_says_it_unloads() -> None:
    from rig.device.shadowbox import RECIPES

    assert {name for name, r in RECIPES.items() if r.unloads} == {"sbsim"}


def test_controller_builds_are_kept_by_tree_content(tmp_path: Path) -> None:
    """The real kbuild against the lab kernel's headers: the same tree in another folder (a commit
    that changed nothing) reuses the first build; one changed byte builds anew."""
    import shutil

    from rig.device.shadowbox import Deployer, recipe_for
    from rig.lab import image
    from rig.lab.sbsim import default_headers_dir

    try:
        release = image.kernel_version()
    except Exception as exc:  # noqa: BLE001 - no lab kernel: nothing to build against
        pytest.skip(f"no lab kernel installed: {exc}")
    headers = default_headers_dir(release)
    if not (headers / "Makefile").is_file() or shutil.which("make") is None:
        pytest.skip(f"no kernel headers at {headers} or no make")
    cache = tmp_path / "builds"

    def build(tree: Path) -> tuple[bytes, str, str]:
        d = Deployer(None, None, recipe_for("sbsim"), tree, device="lab-9", kernel_headers=headers,  # type: ignore[arg-type]
                     build_cache=cache)  # fmt: skip
        try:
            key = d.build_key(d._stage(), headers, release)  # of the tree as staged, before it is built
            built = d.build_on_controller(release)
            return (built / "sbsim.ko").read_bytes(), d.reused_build, key
        finally:
            d.cleanup()

    first, reused, key = build(sbsim_variant(tmp_path / "c1"))
    assert not reused and (cache / key / "sbsim.ko").read_bytes() == first
    (tmp_path / "c1" / "NOTES").write_text("a commit that only adds a file is another tree\n")
    again, reused_again, key_again = build(sbsim_variant(tmp_path / "c2"))
    assert reused_again == str(cache / key) and again == first and key_again == key
    changed, reused_changed, key_changed = build(sbsim_variant(tmp_path / "c3", hang_after_nmi=40))
    assert not reused_changed and key_changed != key and changed != first
    _, _, key_notes = build(tmp_path / "c1")
    assert key_notes not in (key, key_changed)


# ---------------------------------------------------------------------------------------------
# on the lab


@pytest.fixture
def sbsim_history(tmp_path: Path) -> tuple[Path, list[str]]:
    """Five commits of sbsim; the third makes the NMI handler never return after 40 NMIs."""
    repo = tmp_path / "sbsim-repo"
    sbsim_variant(repo)
    git(repo, "init", "-q", "-b", "main")
    commits = [commit_all(repo, "sbsim as shipped")]
    (repo / "NOTES").write_text("lab stand-in for Shadow-box\n")
    commits.append(commit_all(repo, "notes"))
    sbsim_variant(tmp_path / "hang", hang_after_nmi=40)
    (repo / "sbsim.c").write_text((tmp_path / "hang" / "sbsim.c").read_text())
    commits.append(commit_all(repo, "NMI path: do not return after 40 NMIs"))
    (repo / "NOTES").write_text("lab stand-in for Shadow-box\nsee README.md\n")
    commits.append(commit_all(repo, "notes: point at the README"))
    (repo / "NOTES").write_text("lab stand-in for Shadow-box (not Shadow-box)\nsee README.md\n")
    commits.append(commit_all(repo, "notes: say it plainly"))
    git(repo, "tag", "known-good", commits[0])
    return repo, commits


@pytest.mark.lab
def test_bisect_names_the_commit_that_introduced_the_nmi_hang(
    lab: Any, sbsim_history: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Also the 2 a.m. case: the controller dies mid-bisection (SIGKILL once the first step is judged)
    and the same command resumes it, keeping what was judged instead of soaking it again.

    Boots only where a build failed or is still loaded: after the good ref's pass sbsim is unloaded,
    not rebooted (every step's attempt records how it started, checked below), and the finished
    bisection leaves sbsim unloaded, so the next test needs no boot either."""
    repo, commits = sbsim_history
    out = tmp_path / "bisect"
    cmd = [
        sys.executable, "-m", "rig.cli", "--devices", str(lab.inventory_dir), "bisect",
        "--source-tree", str(repo), "--good", "known-good", "--bad", "main", "--device", "lab-1",
        "--confidence", "0.9", "--max-soak-minutes", "1", "--bad-attempts", "1", "--verify-good", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    try:
        first = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and first.poll() is None:
                if (out / "bisect.json").exists() and json.loads((out / "bisect.json").read_text())["steps"]:
                    break
                time.sleep(0.5)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
        before = json.loads((out / "bisect.json").read_text())
        assert before["status"] == "running" and len(before["steps"]) == 1, before
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        restore_guests(lab, tmp_path / "restore")
    text = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_FOUND, text[-5000:]
    assert "resuming" in text and "1 bad-ref attempt(s) and 1 step(s) already judged" in text
    resumed = json.loads((out / "bisect.json").read_text())
    assert resumed["bad_ref_attempts"] == before["bad_ref_attempts"]  # not measured again
    assert resumed["steps"][0] == before["steps"][0] and len(resumed["resumed"]) == 1
    # --verify-good: the good ref survived a 'good'-length soak before the bisection, once
    good = before["good_ref_attempt"]
    assert good["commit"] == commits[0] and good["verdict_for_bisect"] == "good" and not good["failed"]
    assert resumed["good_ref_attempt"] == good and "(the good ref known-good)" in text
    assert f"first bad commit: {commits[2]} NMI path: do not return after 40 NMIs" in text
    result = json.loads((out / "bisect.json").read_text())
    assert result["status"] == "done" and result["first_bad"]["commit"] == commits[2]
    # the bad ref was measured: a hang, with its time to failure, and a fitted rate
    (bad,) = result["bad_ref_attempts"]
    assert bad["failed"] and bad["verdict"] == "hang" and bad["exposure"] > 0
    assert result["rate"]["failures"] == 1 and result["rate"]["per_second"] > 0
    # every step: the commit, its verdict, its evidence; a 'good' with the confidence it reached
    steps = {s["commit"]: s for s in result["steps"]}
    assert steps[commits[2]]["verdict"] == "bad" and "hang after" in steps[commits[2]]["evidence"]
    assert set(steps) <= set(commits[1:4])
    goods = [s for s in result["steps"] if s["verdict"] == "good"]
    assert goods, result["steps"]
    for s in goods:
        assert s["commit"] in commits[:2]
        assert s["confidence"] >= 0.9 - 1e-6 or "below the asked" in s["note"]
        (a,) = s["attempts"]
        assert a["failed"] is False and a["exposure"] >= min(s["target_seconds"], 60) - 1
    assert "# first bad commit: [" + commits[2] in result["git_bisect_log"]
    # a boot after the bad ref's hang; after the good ref's pass sbsim was unloaded instead
    assert good["start"] == "fresh boot" and result["steps"][0]["attempts"][0]["start"] == "unloaded", result
    assert (out / "console" / "console.log").read_text().count("Execution Complete") >= 1 + len(result["steps"])
    # the user's tree was only read
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main" and not git(repo, "status", "--porcelain")


@pytest.mark.lab
def test_verify_good_stops_when_the_good_ref_has_the_bug_too(
    lab: Any, sbsim_history: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """A 'good' ref that hangs as well (the bug was older than thought): no bisection, and why."""
    repo, commits = sbsim_history
    out = tmp_path / "bisect"
    cmd = [
        sys.executable, "-m", "rig.cli", "--devices", str(lab.inventory_dir), "bisect",
        "--source-tree", str(repo), "--good", commits[3], "--bad", "main", "--device", "lab-1",
        "--confidence", "0.9", "--max-soak-minutes", "1", "--bad-attempts", "1", "--verify-good", "--out", str(out),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=900
        )
    finally:
        restore_guests(lab, tmp_path / "restore")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]
    assert f"the good ref {commits[3]} ({commits[3][:12]}) fails too (hang after" in text, text[-4000:]
    assert "it is not good; give an older --good" in text
    result = json.loads((out / "bisect.json").read_text())
    assert result["status"] == "aborted" and result["steps"] == [] and result["first_bad"] is None
    assert result["good_ref_attempt"]["failed"] and result["good_ref_attempt"]["verdict_for_bisect"] == "bad"
