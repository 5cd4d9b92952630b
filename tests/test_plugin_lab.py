"""The pytest plugin and the device suites, run as a lab engineer runs them, on the shared lab.

``pytest suites/ --rig-devices <lab> -n 2`` runs in a subprocess (the real entry point: the
plugin is found through the ``pytest11`` entry point), and the test reads what it left behind:
the run's summary.json, each device's report.json and the JUnit XML.
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

from rig.inventory import load_device
from rig.lab.manager import Lab
from tests.helpers import CHECKOUT, assert_contiguous_in_serial_log, run_suites

pytestmark = pytest.mark.lab


def load(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.timeout(1200)  # 8 recoveries on two devices; 207 s on a quiet machine, 600 s was hit on a loaded one
def test_suites_on_two_devices_in_parallel(lab: Lab, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    proc = run_suites(
        lab, tmp_path, "par",
        "suites/test_deploy.py", "suites/test_nmi_delivery.py", "suites/test_fault_detection.py",
        "-n", "2", f"--junitxml={junit}",
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "rig: device verdicts" in out
    summary = load(tmp_path / "par" / "summary.json")
    assert {d["device"] for d in summary["devices"]} == {"lab-1", "lab-2"}
    spans = {}
    for dev in summary["devices"]:
        cells = dev["tests"]
        assert dev["status"] == "complete"
        assert cells["test_preflight_and_start"]["outcome"] == "passed"
        for src in ("ipmi", "qmp", "sysrq"):
            assert cells[f"test_nmi_reaches_every_cpu[{src}]"]["outcome"] == "passed", cells
        # perf cannot work under TCG: skipped with its reason, not failed
        assert cells["test_nmi_reaches_every_cpu[perf]"]["outcome"] == "skipped"
        assert cells["test_hang_after_nmis_is_a_hang"]["verdict"] == "hang"
        assert cells["test_panic_after_nmi_is_a_panic"]["verdict"] == "crash(panic)"
        assert cells["test_oops_is_an_oops"]["verdict"] == "crash(oops)"
        assert cells["test_gpf_is_a_gpf"]["verdict"] == "crash(gpf)"
        assert cells["test_refusal_to_start_is_named"]["verdict"] == "ok"
        report = load(tmp_path / "par" / dev["device"] / "report.json")
        # the session lab is a kernel matrix (lab-1 6.1, lab-2 5.10): each report names its guest's kernel
        assert report["identity"]["kernel"] == lab.guest(dev["device"]).kernel_version
        assert report["deploy"]["recipe"] == "sbsim" and report["deploy"]["result_code"] == "0"
        deliveries = {x["source"]: x for x in report["nmi_deliveries"]}
        assert set(deliveries) == {"ipmi", "qmp", "sysrq"} and all(x["ok"] for x in deliveries.values())
        assert any(e["kind"] == "recovery" for e in report["timeline"]), "crashed device was not recovered"
        # the margin to a false hang, from the device's own monitor: its H, heartbeats seen, a gap measured
        live = report["liveness"]
        h = load_device(lab.guest(dev["device"]).inventory_file).monitor.heartbeat_interval
        assert live["heartbeat_interval"] == h and live["hang_needs_silence"] == 2 * h, live
        assert live["heartbeats"] > 2 and live["longest_heartbeat_gap"] > 0, live
        times = [e["t"] for e in report["timeline"]]
        spans[dev["device"]] = (min(times), max(times))
    # side by side: each device's tests ran while the other's did
    (a0, a1), (b0, b1) = spans["lab-1"], spans["lab-2"]
    assert a0 < b1 and b0 < a1, spans
    # the run's build cache (--rig-build-cache's default): one sbsim build per kernel, though every test
    # of the suites deployed again (module parameters are insmod's, not the build's)
    builds = [p for p in (tmp_path / "par" / "builds").iterdir() if not p.name.startswith(".")]
    assert len(builds) == 2 and all((p / "sbsim.ko").is_file() for p in builds), builds
    reused = [n for dev in ("lab-1", "lab-2") for n in load(tmp_path / "par" / dev / "report.json")["deploy"]["notes"]
              if n.startswith("build reused")]
    assert reused, "the last deploy of each device reused the run's build"
    # no BMC password in any report file, console log, JUnit XML or the run's output
    for name in ("lab-1", "lab-2"):
        secret = lab.guest(name).bmc_password_file.read_text().strip()
        assert secret and secret not in out
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f"{name}'s BMC password leaked into {f}"
    # JUnit carries the device and verdict as properties, for Jenkins/GitLab
    props = {(p.get("name"), p.get("value")) for p in ET.parse(junit).iter("property")}
    assert ("rig_device", "lab-1") in props and ("rig_verdict", "hang") in props


def test_a_lab_fault_is_reported_as_such(lab: Lab, tmp_path: Path) -> None:
    lab.kill_console_server("lab-2")
    try:
        proc = run_suites(lab, tmp_path, "fault", "suites/test_nmi_delivery.py", "--rig-device", "lab-2", "-k", "qmp")
    finally:
        lab.start_console_server("lab-2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "LAB FAULT on lab-2 (not a device failure)" in out
    report = load(tmp_path / "fault" / "lab-2" / "report.json")
    (test,) = report["tests"]
    assert test["verdict"]["verdict"] == "lab-fault" and "console server" in test["verdict"]["reason"], test
    # found when the device is opened, however short the test: it never ran unwatched
    assert test["failure"].startswith("error in set-up:") and "console_connect_timeout" in test["failure"], test


def test_missing_capability_is_a_skip_with_the_reason(lab: Lab, tmp_path: Path) -> None:
    suite = tmp_path / "test_needs_vmx.py"
    suite.write_text("import pytest\n\n@pytest.mark.rig_requires('vmx')\ndef test_vmx(dut):\n    pass\n")
    proc = run_suites(lab, tmp_path, "caps", str(suite), "--rig-device", "lab-1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "lab-1 lacks vmx: the CPU shows no 'vmx' flag (no VT-x)" in out


def test_a_deploy_that_fails_in_set_up_still_gets_its_row(lab: Lab, tmp_path: Path) -> None:
    """A build Shadow-box refuses to start on fails every test that needs it *in set-up* (the
    ``shadowbox`` fixture). Those tests must still be rows of the device's report, or the report
    of the most important failure of all shows a device with no tests."""
    from tests.helpers import sbsim_variant

    refuses = sbsim_variant(tmp_path / "refuses", fail_start=1)
    suite = tmp_path / "test_needs_shadowbox.py"
    suite.write_text("def test_needs_shadowbox(shadowbox):\n    pass\n")
    proc = run_suites(
        lab, tmp_path, "setup", str(suite), "--rig-device", "lab-1", "--rig-shadowbox-source", str(refuses)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    (test,) = load(tmp_path / "setup" / "lab-1" / "report.json")["tests"]
    assert test["name"] == "test_needs_shadowbox" and test["outcome"] == "failed", test
    assert test["failure"].startswith("error in set-up: DEPLOY FAILED on lab-1: no-vmx:"), test
    assert "Traceback" not in out  # a named refusal, not a crash of the rig
    # the build refused to start: its own verdict, with the kernel lines Shadow-box printed during insmod
    assert test["verdict"]["verdict"] == "deploy-failed(no-vmx)"
    deploy = load(tmp_path / "setup" / "lab-1" / "report.json")["deploy"]
    assert deploy["ok"] is False and deploy["reason"] == "no-vmx"
    assert any("VMX not support" in ln for ln in deploy["kernel_lines"]), deploy
    assert any("errorcode=2" in ln for ln in deploy["kernel_lines"]), deploy
    summary = load(tmp_path / "setup" / "summary.json")
    assert summary["devices"][0]["tests"]["test_needs_shadowbox"]["outcome"] == "failed"


def test_a_killed_run_leaves_a_readable_incomplete_report(lab: Lab, tmp_path: Path) -> None:
    """SIGKILL the whole pytest mid-soak: report.json stays valid JSON marked incomplete, console on disk."""
    import signal
    import time

    cmd = [
        sys.executable, "-m", "pytest", "suites/test_nmi_soak.py", "--rig-device", "lab-1",
        "--rig-devices", str(lab.inventory_dir), "--rig-report-dir", str(tmp_path),
        "--rig-soak-minutes", "5", "-p", "no:cacheprovider", "-q",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=CHECKOUT, env={**os.environ, "RIG_RUN_ID": "killed"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    report_path = tmp_path / "killed" / "lab-1" / "report.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if report_path.exists() and any(e["kind"] == "soak-start" for e in load(report_path)["timeline"]):
                break
            time.sleep(1)
        else:
            pytest.fail("the soak never started")
        time.sleep(5)  # a few seconds of NMIs and console output
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    report = load(report_path)  # still valid JSON: written atomically
    assert report["status"] == "incomplete"
    assert report["deploy"]["result_code"] == "0"
    console_log = (tmp_path / "killed" / "lab-1" / "console.log").read_text()
    assert "Execution Complete" in console_log and "rig-heartbeat" in console_log
    raw = (tmp_path / "killed" / "lab-1" / "console.raw").read_bytes()
    assert raw
    # Nothing captured is lost: console.raw is one unbroken piece of QEMU's own serial log, and every
    # heartbeat in it reached console.log (bar, at most, the line being written at the SIGKILL).
    assert_contiguous_in_serial_log(raw, lab.guest("lab-1").serial_log.read_bytes())
    beats_raw = [b.decode() for b in re.findall(rb"rig-heartbeat [0-9a-f]{8} \d+", raw)]
    beats_log = re.findall(r"rig-heartbeat [0-9a-f]{8} \d+", console_log)
    assert beats_log == beats_raw[: len(beats_log)] and len(beats_raw) - len(beats_log) <= 1, (
        len(beats_raw),
        len(beats_log),
    )
    # the device is left running Shadow-box and heartbeat: the next run recovers it by itself
