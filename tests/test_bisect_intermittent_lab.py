"""``rig bisect`` on an intermittent hang: sbsim's host-NMI hang strikes at a random time, not at a count.

The history (rig.lab.sbsim_history): the good ref turns host residency on, a decoy commit changes
only the host sections' timing, the culprit makes a host NMI never return, the rest touch notes.
The bisection must measure the bad ref's random times to failure, soak the other commits as long
as the asked confidence needs, and name the culprit -- the decoy judged good if git asks for it.
One bisection is one sample of a random process: BENCHMARKS.md ("Bisect validation") has the
correct-commit rate over several; this test checks the whole path works and names the culprit.

Kept short without weakening it: 1 % host residency (a mean time to failure of about 10 s instead
of 20: the soak a 'good' needs is computed from the measured rate, so the statistics are the same,
only scaled), sbsim unloaded after an attempt that passed instead of a boot (the test checks each
attempt's start: a boot after every failure), and one build per tree (the bad ref's second attempt
reuses its first build). Confidence 0.95 with the rig's planning rate (rig.runs.ttf.planning_rate):
two quick failures of the bad ref make the measured rate high, and a soak planned from that rate
alone let the culprit survive (seen at 0.9, and at 0.99 in a clean-clone run: bad-ref MTTF 2.1 s
measured, 9.7 s soak, the culprit called good); the planning rate includes that uncertainty, so a
commit as bad survives the planned soak with probability 0.05 whatever the two failures said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from rig.inventory import load_inventory
from rig.lab.sbsim import sbsim_source_dir
from rig.lab.sbsim_history import intermittent_history, with_defaults
from rig.runs.bisect import BisectRun
from tests.helpers import restore_guests, with_monitor


def test_history_rewrites_one_default_per_interesting_commit(tmp_path: Path) -> None:
    h = intermittent_history(tmp_path / "repo", n=6, culprit=3, decoy=2, residency_pct="0.5")
    assert len(h.commits) == 6 and h.culprit == h.commits[3] and h.decoy == h.commits[2]
    import subprocess

    def show(commit: str) -> str:
        return subprocess.run(["git", "-C", str(h.repo), "show", f"{commit}:sbsim.c"], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip

    assert 'static char *host_residency_pct = "0.5";' in show(h.good)
    assert "static int hang_on_host_nmi;" in show(h.decoy) and "static int host_window_us = 400;" in show(h.decoy)
    assert "static int hang_on_host_nmi = 1;" in show(h.culprit) and "static int hang_on_host_nmi = 1;" in show(h.bad)
    with pytest.raises(ValueError, match="no_such_param"):
        with_defaults((sbsim_source_dir() / "sbsim.c").read_text(), no_such_param=1)
    with pytest.raises(ValueError, match="decoy"):
        intermittent_history(tmp_path / "other", n=4, culprit=1, decoy=2)


@pytest.mark.lab
def test_bisect_names_the_commit_with_the_intermittent_host_nmi_hang(lab: Any, tmp_path: Path) -> None:
    h = intermittent_history(tmp_path / "repo", n=6, culprit=3, decoy=2, residency_pct="1.0")
    (device,) = load_inventory([lab.inventory_dir], names=["lab-1"])
    # 'lost-connection' (SSH dead, console alive) only after 15 s, not 3 s + 2 H: on a loaded machine a
    # guest's SSH can stay unanswered that long while it deploys, and the bisection would stop though
    # nothing hung. The hang rule (heartbeat silence and a short probe) is unchanged.
    device = with_monitor(device, ssh_probe_timeout=15.0)
    run = BisectRun(h.repo, h.good, h.bad, device, tmp_path / "bisect", confidence=0.95, max_soak=90.0,
                    bad_attempts=2, console=Console(quiet=True))  # fmt: skip
    try:
        result = run.run()
    finally:
        restore_guests(lab, tmp_path / "restore")
    attempts = result["bad_ref_attempts"]
    assert len(attempts) == 2 and all(a["verdict"] == "hang" for a in attempts if a["failed"]), attempts
    ttf = result["rate"]["time_to_failure"]
    assert ttf["failures"] >= 1 and ttf["rate_interval"][0] < ttf["rate_per_second"] < ttf["rate_interval"][1]
    assert result["status"] == "done", result
    assert result["first_bad"]["commit"] == h.culprit, (result["steps"], h.commits)
    for step in result["steps"]:
        if step["commit"] == h.decoy:
            assert step["verdict"] == "good", step
    # a boot after every failure, an unload after every pass; one build per commit tested
    order = attempts + [a for s in result["steps"] for a in s["attempts"]]
    for before, after in zip(order, order[1:], strict=False):
        assert after["start"] == ("fresh boot" if before["failed"] or before["untestable"] else "unloaded"), order
    builds = [p for p in (tmp_path / "bisect" / "builds").iterdir() if not p.name.startswith(".")]
    assert len(builds) == len({a["commit"] for a in order}), (builds, order)
