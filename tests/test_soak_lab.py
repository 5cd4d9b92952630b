"""The NMI soak on the lab with a real fault injected: the virtual BMC killed mid-soak.

Before rig.device.soak, the soak loop caught the BMC's LabFault and went on with sysrq alone: a 1-minute
soak whose BMC died 20 s in PASSED ("all ok"). Now the soak ends at the fault as ``lab-fault``
naming the source, when and why, and report.json shows the NMIs raised per source per minute.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rig.lab.manager import Lab
from tests.helpers import run_suites

pytestmark = pytest.mark.lab


def _timeline(report: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(report.read_text())["timeline"])
    except (OSError, ValueError, KeyError):
        return []  # not written yet


def test_soak_whose_bmc_dies_mid_soak_is_a_lab_fault_naming_ipmi(lab: Lab, tmp_path: Path) -> None:
    report = tmp_path / "bmc" / "lab-1" / "report.json"
    killed: dict[str, float] = {}

    def kill_when_soaking() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(e["kind"] == "soak-start" for e in _timeline(report)):
                time.sleep(3.0)  # a few seconds of NMIs from every source first
                killed["at"] = time.time()
                lab.kill_bmc("lab-1")
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_soaking, daemon=True)
    killer.start()
    try:
        proc = run_suites(lab, tmp_path, "bmc", "suites/test_nmi_soak.py", "--rig-device", "lab-1",
                          "--rig-soak-minutes", "0.5")  # fmt: skip
    finally:
        killer.join(timeout=5)
        lab.start_bmc("lab-1")  # the lab is shared: put the BMC back
    out = proc.stdout + proc.stderr
    assert "at" in killed, f"the soak never started: {out[-3000:]}"
    assert proc.returncode != 0, f"a soak without its NMI source passed: {out[-3000:]}"
    data = json.loads(report.read_text())
    (row,) = [t for t in data["tests"] if t["name"] == "test_nmi_soak"]
    assert row["outcome"] == "failed"
    assert row["verdict"]["kind"] == "lab-fault", row
    assert "NMI source ipmi stopped" in row["verdict"]["reason"] and "into the soak" in row["verdict"]["reason"]
    assert "LAB FAULT" in row["failure"]
    (end,) = [e for e in data["timeline"] if e["kind"] == "soak-end"]
    # when: after the kill, within one bounded BMC call (10 s) and a margin for a loaded machine
    assert end["stopped"]["source"] == "ipmi"
    assert killed["at"] <= end["stopped"]["at"] <= killed["at"] + 30
    assert end["stopped"]["why"]  # the BMC client's own words
    # per source per minute: IPMI NMIs before the kill, sysrq's first round, and the asked rates
    assert end["per_minute"]["ipmi"][0] > 0 and sum(end["per_minute"]["sysrq"]) >= 1
    assert end["rates"]["ipmi"]["asked_per_s"] == 10.0 and end["rates"]["ipmi"]["errors"] == 1
    # the soak ended at the fault, not at the end of its 30 s
    assert end["seconds"] < 30
