"""Laptop-like guests (no BMC) powered the way a laptop lab powers laptops -- with real peers:
Debian's snmpd as an APC PDU switched by labgrid's own ``apc`` back end (net-snmp's snmpset/snmpget),
and a power-button relay. A power cut ends the guest's QEMU process (its RAM is gone) and power-on
starts a new one (rig.lab.vpower); tests check that by the QEMU pid.

All tests share the session's ``laptop_lab`` (tests/conftest.py) and leave both guests up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.device.dut import READY_PATTERN, Dut
from rig.errors import LabFault
from rig.inventory import CommandPower, Device
from rig.lab import guest as lab_guest
from rig.lab import vpdu
from rig.lab.manager import GuestInfo, Lab
from rig.power import PowerState, power_for
from rig.transports.ssh import SshClient
from tests.conftest import wait_lab_guest_ready
from tests.consolepeers import wait_for

pytestmark = pytest.mark.lab

CHECKOUT = Path(__file__).resolve().parent.parent


def _events(g: GuestInfo) -> list[str]:
    p = g.dir / "power-events.log"
    return [line.split(" ", 1)[1] for line in p.read_text().splitlines()] if p.exists() else []


def _new_qemu(lab: Lab, name: str, old: int | None, timeout: float = 60) -> int:
    wait_for(lambda: lab.guest(name).qemu_pid not in (None, old), timeout, f"a new QEMU process for {name}")
    pid = lab.guest(name).qemu_pid
    assert pid is not None
    return pid


def test_virtual_pdu_power_cycles_a_laptop_like_guest_through_labgrid_apc(
    laptop_lab: Lab, laptop_devices: dict[str, Device], tmp_path: Path
) -> None:
    dev = laptop_devices["laptop-1"]
    g = laptop_lab.guest("laptop-1")
    assert dev.power.kind == "pdu" and dev.qmp_socket() is None and "ipmi" not in dev.nmi_sources  # no BMC at all
    before = g.qemu_pid
    n_events = len(_events(g))
    with Dut(dev, tmp_path / "laptop-1").open(monitor=False) as dut:
        assert dut.power.status() is PowerState.ON
        assert dut.console is not None
        mark = dut.console.mark()
        dut.power.cycle()  # labgrid.driver.power.apc -> snmpset -> snmpd -> pass script -> outlet file
        after = _new_qemu(laptop_lab, "laptop-1", before)
        dut.console.expect(READY_PATTERN, timeout=dev.monitor.boot_timeout, since=mark)
        dut.ssh.wait_ready(timeout=dev.monitor.boot_timeout)
        assert dut.ssh.run("echo back", timeout=10).out.strip() == "back"
        assert dut.power.status() is PowerState.ON
    assert after != before  # the QEMU process ended: the power cut lost the guest's RAM
    new = _events(laptop_lab.guest("laptop-1"))[n_events:]
    assert new[0] == "cut outlet off" and new[1].startswith("start outlet on"), new
    assert vpdu.read_outlet(g.pdu_dir, g.pdu_outlet or 1) == 1


def test_stalled_pdu_is_a_lab_fault_within_its_deadline(laptop_lab: Lab, laptop_devices: dict[str, Device]) -> None:
    dev = laptop_devices["laptop-1"]
    power = power_for(dev)
    laptop_lab.stall_pdu("laptop-1")  # snmpd keeps its port and never answers (SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(LabFault) as ei:
            power.status()
        took = time.monotonic() - t0
    finally:
        laptop_lab.unstall_pdu("laptop-1")
    assert took < dev.power.timeout + 3, took  # type: ignore[union-attr]
    text = str(ei.value)
    assert "device laptop-1" in text and "PDU apc at 127.0.0.1" in text and "outlet 1" in text and "check" in text
    assert ei.value.component == "pdu"
    assert power.status() is PowerState.ON  # answering again


NASTY = "bench 3; touch PWNED $(touch PWNED2) `touch PWNED3` 'q\" | rm -rf ~ &"

SITE_SCRIPT = """\
import json, subprocess, sys
log, action, label, device, agent, oid = sys.argv[1:7]
with open(log, "a") as f:
    f.write(json.dumps([action, label, device]) + "\\n")
out = subprocess.run(["snmpget", "-v1", "-c", "private", "-O", "qv", agent, oid],
                     capture_output=True, text=True, check=True).stdout.strip()
print("Outlet is " + {"1": "ON", "2": "OFF"}[out])
"""


def test_command_back_end_runs_a_site_script_with_metacharacters_literally(
    laptop_lab: Lab, laptop_devices: dict[str, Device], tmp_path: Path
) -> None:
    g = laptop_lab.guest("laptop-1")
    script, log = tmp_path / "site-power.py", tmp_path / "calls.jsonl"
    script.write_text(SITE_SCRIPT)
    argv = [sys.executable, str(script), str(log), "{action}", "{label}", "{device}", f"127.0.0.1:{g.pdu_port}",
            f"{vpdu.APC_OUTLET_OID}.{g.pdu_outlet}"]
    cfg = CommandPower(kind="command", on=argv, off=argv, status=argv, fields={"label": NASTY})
    dev = laptop_devices["laptop-1"].model_copy(update={"power": cfg})
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert power_for(dev).status() is PowerState.ON  # the real PDU's answer, through the site's script
    finally:
        os.chdir(cwd)
    assert [json.loads(x) for x in log.read_text().splitlines()] == [["status", NASTY, "laptop-1"]]
    assert not list(tmp_path.glob("PWNED*")) and not list(Path(cwd).glob("PWNED*"))


def test_pdu_says_on_but_the_laptop_stays_silent_is_said_exactly_not_hang(
    laptop_lab: Lab, laptop_devices: dict[str, Device], tmp_path: Path
) -> None:
    """A laptop whose battery is in does not boot when the PDU restores AC: after the boot timeout
    the rig says the PDU says on and the laptop stayed silent -- a lab fault, not a hang."""
    dev = laptop_devices["laptop-1"]
    g = laptop_lab.guest("laptop-1")
    dut = Dut(dev, tmp_path / "laptop-1").open()
    laptop_lab.set_ac_power_on("laptop-1", False)
    try:
        with pytest.raises(LabFault) as ei:
            dut.recover(timeout=20)
        text = str(ei.value)
        assert "device laptop-1" in text and "PDU apc" in text and "says the power is ON" in text, text
        assert "stayed silent for 20 s" in text and "battery" in text and "Not a hang" in text, text
        assert ei.value.component == "power"
        assert "stays-off outlet on, but this laptop does not power on with AC" in _events(laptop_lab.guest("laptop-1"))
    finally:
        laptop_lab.set_ac_power_on("laptop-1", True)
        dut.close()
        laptop_lab.press_button("laptop-1", 0.5)  # what a person would do: press its power button
        wait_lab_guest_ready(laptop_lab.guest("laptop-1"))
    assert laptop_lab.guest("laptop-1").qemu_pid != g.qemu_pid


HANG_SUITE = """
from rig.lab import guest as lab_guest

def test_hangs(dut):
    # the laptop's kernel stops dead: no console line, no SSH (every vCPU frozen)
    lab_guest.qmp_command({qmp!r}, "stop")
    assert dut.wait_verdict(timeout=120) is not None

def test_next(dut):
    assert dut.ssh.run("echo back", timeout=10).out.strip() == "back"
"""


def test_hang_on_a_laptop_like_guest_is_recovered_unattended_and_the_next_test_runs(
    laptop_lab: Lab, tmp_path: Path
) -> None:
    g = laptop_lab.guest("laptop-1")
    suite = tmp_path / "test_laptop_hang.py"
    suite.write_text(HANG_SUITE.format(qmp=str(lab_guest.GuestPaths(g.dir).lab_qmp_socket)))
    cmd = [sys.executable, "-m", "pytest", str(suite), "--rig-devices", str(laptop_lab.inventory_dir),
           "--rig-device", "laptop-1", "--rig-report-dir", str(tmp_path), "-p", "no:cacheprovider", "-q"]
    try:
        proc = subprocess.run(cmd, cwd=CHECKOUT, env={**os.environ, "RIG_RUN_ID": "hang"}, capture_output=True,
                              text=True, timeout=900)
    finally:
        if lab_guest.run_state(lab_guest.GuestPaths(laptop_lab.guest("laptop-1").dir)) != "running":
            power_for(_load(laptop_lab, "laptop-1")).cycle()
        wait_lab_guest_ready(laptop_lab.guest("laptop-1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    report = json.loads((tmp_path / "hang" / "laptop-1" / "report.json").read_text())
    first, second = report["tests"]
    assert first["verdict"]["kind"] == "hang", first  # not powered-off (the PDU says on), not a lab fault
    assert second["outcome"] == "passed" and second["verdict"]["kind"] == "ok", second
    recovery = [e for e in report["timeline"] if e["kind"] == "recovery"]
    assert len(recovery) == 1 and recovery[0]["method"] == "power-cut", recovery
    assert "pdu offers no warm reset" in recovery[0]["text"] and "PDU apc" in recovery[0]["power"], recovery


def _load(lab: Lab, name: str) -> Device:
    from rig.inventory import load_device

    return load_device(lab.inventory_dir / f"{name}.toml")


def test_relay_forces_off_and_boots_a_laptop_like_guest(
    laptop_lab: Lab, laptop_devices: dict[str, Device]
) -> None:
    dev = laptop_devices["laptop-2"]
    assert dev.power.kind == "relay"
    g = laptop_lab.guest("laptop-2")
    ssh = SshClient(dev.ssh, device=dev.name)
    try:
        power = power_for(dev, probe=lambda: ssh.alive(timeout=3.0))
        assert power.status() is PowerState.ON and "inferred" in power.describe()
        t0 = time.monotonic()
        power.off()  # button held 6 s: the guest forces itself off at 4 s
        assert time.monotonic() - t0 >= 6.0
        assert laptop_lab.guest("laptop-2").qemu_pid is None  # QEMU ended: a forced off loses RAM too
        assert power.status() is PowerState.OFF
        power.on()  # a 0.5 s press boots it
        after = _new_qemu(laptop_lab, "laptop-2", g.qemu_pid)
        wait_lab_guest_ready(laptop_lab.guest("laptop-2"))
        assert power.status() is PowerState.ON
    finally:
        ssh.close()
        if laptop_lab.guest("laptop-2").qemu_pid is None:
            laptop_lab.press_button("laptop-2", 0.5)
            wait_lab_guest_ready(laptop_lab.guest("laptop-2"))
    assert after != g.qemu_pid
    assert [e.split(" (")[0] for e in _events(laptop_lab.guest("laptop-2"))][-2:] == [
        "cut power button held 4 s", "start power button pressed"]


def test_recovery_tries_a_warm_reset_first_and_cuts_power_only_when_it_fails(
    laptop_lab: Lab, laptop_devices: dict[str, Device], tmp_path: Path
) -> None:
    """Power order that keeps evidence: a site whose power has a reset (here the lab's QMP
    system_reset, which keeps the guest's RAM: same QEMU process) is reset first; a reset that
    does not bring the laptop back (here one that does nothing) is followed by a power cut through
    the PDU (a new QEMU process). Dut.last_recovery says which, and why."""
    g = laptop_lab.guest("laptop-1")
    qmp = str(lab_guest.GuestPaths(g.dir).lab_qmp_socket)
    agent, oid = f"127.0.0.1:{g.pdu_port}", f"{vpdu.APC_OUTLET_OID}.{g.pdu_outlet}"
    snmpset = ["snmpset", "-v1", "-c", "private", agent, oid, "i"]
    warm = [sys.executable, "-c", "import sys; from rig.lab.guest import qmp_command; "
            "qmp_command(sys.argv[1], 'system_reset')", qmp]
    base = laptop_devices["laptop-1"]
    monitor = base.monitor.model_copy(update={"reset_timeout": 60.0})
    for reset, method in ((warm, "warm-reset"), (["true"], "power-cut")):
        cfg = CommandPower(kind="command", on=[*snmpset, "1"], off=[*snmpset, "2"], reset=reset, cycle_pause=1.0)
        dev = base.model_copy(update={"power": cfg, "monitor": monitor if method == "warm-reset" else
                                      monitor.model_copy(update={"reset_timeout": 15.0})})
        before = laptop_lab.guest("laptop-1").qemu_pid
        with Dut(dev, tmp_path / method).open(monitor=False) as dut:
            dut.recover()
            assert dut.last_recovery is not None and dut.last_recovery["method"] == method, dut.last_recovery
            assert dut.ssh.run("echo back", timeout=10).out.strip() == "back"
        after = laptop_lab.guest("laptop-1").qemu_pid
        if method == "warm-reset":
            assert after == before  # the same QEMU process: RAM kept across the reset
        else:
            assert after != before  # cut: a new process, RAM lost
            assert "warm reset did not bring it back within 15 s" in str(dut.last_recovery["why"])
