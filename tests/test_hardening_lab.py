"""Issue 17's findings that need a real device: on the shared lab (lab-1), each fails on a66d3c1.

* item 4: ``rig check`` on a device whose SSH does not answer must not power-cycle it (a66d3c1 did,
  through the device's BMC: the check rebooted the laptop).
* item 10: the rig's files on the device live in fresh ``mktemp -d`` folders, never at fixed
  ``/tmp`` names that another user of the device could plant (a66d3c1 ran ``kill $(cat
  /tmp/rig-heartbeat.pid)`` as root, and removed whatever was at ``/tmp/rig-shadowbox``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.cli import main
from rig.device.dut import Dut
from rig.inventory import Device, device_toml, load_device
from rig.lab.manager import Lab
from rig.transports.ssh import SshClient
from tests.conftest import wait_lab_guest_ready
from tests.helpers import with_monitor
from tests.sshpeers import free_port

pytestmark = pytest.mark.lab


def _boot_id(dev: Device) -> str:
    with SshClient(dev.ssh, device=dev.name) as ssh:
        return ssh.run("cat /proc/sys/kernel/random/boot_id", timeout=15).out.strip()


def test_rig_check_does_not_power_cycle_a_device_whose_ssh_does_not_answer(lab: Lab, tmp_path: Path) -> None:
    g = lab.guest("lab-1")
    dev = load_device(g.inventory_file)
    before = _boot_id(dev)
    # lab-1 as an inventory whose SSH port answers nothing (a hung sshd, a wrong port), same BMC
    nossh = with_monitor(dev, boot_timeout=40).model_copy(
        update={"name": "lab-1-nossh", "ssh": dev.ssh.model_copy(update={"port": free_port()})}
    )
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "lab-1-nossh.toml").write_text(device_toml(nossh))
    try:
        res = CliRunner().invoke(
            main, ["--devices", str(tmp_path / "inv"), "--report-dir", str(tmp_path / "r"), "check"],
            catch_exceptions=False,
        )  # fmt: skip
        out = " ".join(res.output.split())
        assert res.exit_code == 1, out
        assert "lab-1-nossh ssh: FAIL SshUnreachable" in out
        assert "not power-cycled: rig check does not change a device's state; rig check --recover" in out
        assert "lab-1-nossh power: " not in out.replace("lab-1-nossh power: ok", "")  # the BMC itself answered
        assert _boot_id(dev) == before, "rig check power-cycled the device"
        # rig nmi likewise: it says SSH does not answer, and leaves the device as it is
        res = CliRunner().invoke(
            main, ["--devices", str(tmp_path / "inv"), "--report-dir", str(tmp_path / "r"), "nmi", "lab-1-nossh",
                   "--via", "qmp"],
            catch_exceptions=False,
        )  # fmt: skip
        assert res.exit_code == 1 and "SshUnreachable" in res.output, res.output
        assert _boot_id(dev) == before, "rig nmi power-cycled the device"
    finally:
        if _boot_id_or_none(dev) != before:
            wait_lab_guest_ready(g)  # a66d3c1 rebooted it: let it come back for the next test


def _boot_id_or_none(dev: Device) -> str | None:
    try:
        return _boot_id(dev)
    except Exception:  # noqa: BLE001 - rebooting
        return None


def test_device_paths_are_fresh_mktemp_folders_and_planted_fixed_paths_are_left_alone(
    lab: Lab, lab_devices: list[Device], tmp_path: Path
) -> None:
    dev = next(d for d in lab_devices if d.name == "lab-1")
    # An earlier test on the shared guest may have left sbsim loaded: the deploy below would then reboot
    # first and wipe the plants with /tmp. Start from a clean boot, so the deploy loads without one.
    with Dut(dev, tmp_path / "fresh").open(monitor=False) as fresh:
        if fresh.runs_shadowbox():
            fresh.recover(start_monitor=False)
    with SshClient(dev.ssh, device=dev.name) as root:
        # another user's plants: a pid file naming a process of theirs, a folder at the old upload path
        victim = root.run("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!", timeout=15).out.strip()
        root.run(f"echo {victim} > /tmp/rig-heartbeat.pid; mkdir -p /tmp/rig-shadowbox; "
                 "echo mine > /tmp/rig-shadowbox/planted", timeout=15)  # fmt: skip
        # Folders earlier tests left on the shared guest (a refused insmod keeps its upload for a look by
        # hand): only this test's own must be gone at its end.
        listing = "ls -d /tmp/rig-heartbeat.* /tmp/rig-shadowbox.* 2>/dev/null; true"
        earlier = set(root.run(listing, timeout=15).out.split())
        try:
            with Dut(dev, tmp_path / "lab-1").open() as dut:  # starts the heartbeat
                dut.monitor.stop()
                dut.monitor.resume()
                dut.monitor.start()  # a second start stops the first loop (by its own pid file)
                result = dut.deploy_shadowbox()
                deadline = time.monotonic() + 30
                while dut.monitor.heartbeats < 2 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert dut.monitor.heartbeats >= 2, "no heartbeat from the mktemp'd loop"
                assert dut.verdict().ok
                loops = root.run("ps -o pid,args | grep -c '[r]ig-heartbeat'", timeout=15).out.strip()
                assert loops == "1", f"{loops} heartbeat loops run (the first was not stopped)"
            state = root.run(
                f"kill -0 {victim} && echo victim-alive; cat /tmp/rig-shadowbox/planted; "
                "ls -d /tmp/rig-heartbeat.* /tmp/rig-shadowbox.* 2>/dev/null; true",
                timeout=15,
            ).out.split()
            assert "victim-alive" in state, "the rig killed the pid of a planted /tmp/rig-heartbeat.pid"
            assert "mine" in state, "the rig removed a planted /tmp/rig-shadowbox"
            remote = getattr(result, "remote_dir", "")
            assert re.fullmatch(r"/tmp/rig-shadowbox\.\w{8}", remote), remote
            # the module is loaded: its upload folder is gone; the heartbeat stopped: its folder too
            left = [s for s in state if re.fullmatch(r"/tmp/rig-(heartbeat|shadowbox)\.\w{8}", s) and s not in earlier]
            assert not left, state
        finally:
            root.run(f"kill {victim} 2>/dev/null; rm -rf /tmp/rig-heartbeat.pid /tmp/rig-shadowbox", timeout=15)
