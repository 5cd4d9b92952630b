"""Security checks on the virtual lab: loopback only, inventory values never executed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rig.device.dut import Dut
from rig.inventory import Device
from rig.lab.manager import Lab

pytestmark = pytest.mark.lab


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _inet_sockets() -> dict[str, tuple[str, str]]:
    """inode -> (protocol, local address in hex) for every TCP/UDP socket on the machine."""
    out: dict[str, tuple[str, str]] = {}
    for proto in ("tcp", "udp", "tcp6", "udp6"):
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            f = line.split()
            out[f[9]] = (proto, f[1].split(":")[0])
    return out


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1 as /proc/net shows them


def test_every_lab_process_listens_on_loopback_only(lab: Lab) -> None:
    sockets = _inet_sockets()
    checked = 0
    for g in lab.status():
        for pid in (g.qemu_pid, g.console_server_pid, g.bmc_pid):
            assert pid, f"{g.name}: a lab process is not running"
            for inode in _socket_inodes(pid):
                if inode in sockets:
                    proto, addr = sockets[inode]
                    checked += 1
                    assert addr in LOOPBACK, f"{g.name}: pid {pid} has a {proto} socket on {addr} (not loopback)"
    assert checked >= 6  # ssh hostfwd, ser2net, BMC for each of the two guests


def test_inventory_values_with_shell_metacharacters_are_not_executed(lab_devices: list[Device], tmp_path: Path) -> None:
    """A module parameter from an inventory goes to insmod quoted: the device prints it, never runs it."""
    # no spaces: the kernel's own module-parameter parser splits at them, which is not what is tested
    evil = "x$(touch${IFS}/tmp/rig-pwned);`touch${IFS}/tmp/rig-pwned2`"
    dev = next(d for d in lab_devices if d.name == "lab-1")
    with Dut(dev, tmp_path / "lab-1").open(monitor=False) as dut:
        dut.ssh.run("rm -f /tmp/rig-pwned /tmp/rig-pwned2", timeout=10)
        result = dut.deploy_shadowbox(module_params={"version": evil})
        assert any(evil in m for m in result.markers), result.markers
        res = dut.ssh.run("ls /tmp/rig-pwned /tmp/rig-pwned2 2>&1; true", timeout=10)
        assert "No such file" in res.out and res.out.count("No such file") == 2, res.out
        dut.recover()  # leave the shared guest without the odd build
