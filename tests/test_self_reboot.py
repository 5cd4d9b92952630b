"""Dut.recover() after a panic while kernel.panic is set: wait for the kernel's own warm reboot, no power action.

Pure: the Dut's SSH, monitor and power control are small stand-ins that answer as a device does (boot_id
changes with each boot), so the order of recovery is checked without a lab. The real thing -- a panicking
laptop-like guest on a virtual PDU, its ramoops record read after the self-reboot -- is what `make demo`
runs (rig.runs.demo, laptop-1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rig.device.dut import Dut
from rig.device.monitor import Verdict
from rig.errors import DeviceError
from rig.inventory import Device
from rig.transports.ssh import CommandResult
from rig.vocab import VerdictKind


class Machine:
    """What the device answers: its boot id (None while it is down)."""

    def __init__(self, boot: str | None) -> None:
        self.boot = boot


class FakeSsh:
    def __init__(self, dev: Machine) -> None:
        self.dev = dev

    def alive(self, timeout: float = 3.0) -> bool:
        return self.dev.boot is not None

    def wait_ready(self, timeout: float) -> float:
        if self.dev.boot is None:
            raise DeviceError("SSH did not come back")
        return 0.0

    def run(self, command: Any, *, timeout: float, sudo: bool = False, **_: Any) -> CommandResult:
        if self.dev.boot is None:
            raise DeviceError("SSH unreachable")
        out = self.dev.boot if "boot_id" in str(command) else ""
        status = 0 if "boot_id" in str(command) else 3  # the pstore script: "this kernel has no pstore"
        return CommandResult(str(command), status, out.encode(), b"", 0.0)

    def close(self) -> None: ...


class FakeMonitor:
    def __init__(self, kind: VerdictKind) -> None:
        self.kind = kind

    def verdict(self) -> Verdict:
        return Verdict(self.kind, "panic" if self.kind is VerdictKind.CRASH else None, "test")

    def stop(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def start(self) -> None: ...


class FakePdu:
    """A PDU outlet: no warm reset; a cycle boots the device anew (RAM lost)."""

    warm_reset = False

    def __init__(self, dev: Machine) -> None:
        self.dev = dev
        self.cycles = 0

    def describe(self) -> str:
        return "pdu: PDU apc at 127.0.0.1:161 outlet 1"

    def cycle(self) -> None:
        self.cycles += 1
        self.dev.boot = f"after-cut-{self.cycles}"


def make_dut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: VerdictKind) -> tuple[Dut, Machine, FakePdu]:
    monkeypatch.setenv("RIG_LOCK_DIR", str(tmp_path / "locks"))
    device = Device.model_validate({
        "name": "laptop-x", "ssh": {"host": "127.0.0.1", "host_key": "ssh-ed25519 AAAAC3Nza", "key_file": "/none"},
        "power": {"kind": "pdu", "model": "apc", "host": "127.0.0.1", "outlet": 1},
        "monitor": {"boot_timeout": 6, "panic_on_stall": True, "panic_reboot_seconds": 1},
    })  # fmt: skip
    d = Dut(device, tmp_path / "log")
    dev = Machine("boot-A")
    pdu = FakePdu(dev)
    d.ssh, d.monitor, d.power = FakeSsh(dev), FakeMonitor(kind), pdu  # type: ignore[assignment]
    return d, dev, pdu


def test_a_panic_with_kernel_panic_set_is_waited_for_not_power_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, dev, pdu = make_dut(tmp_path, monkeypatch, VerdictKind.CRASH)
    d.expect_self_reboot(1)
    dev.boot = "boot-B"  # the kernel rebooted itself after the panic
    d.recover()
    assert pdu.cycles == 0, "no power action: the warm reboot kept RAM (and the ramoops record)"
    assert d.last_recovery is not None and d.last_recovery["method"] == "self-reboot"
    assert d.pstore_harvests[-1].when == "after recovery"


def test_no_self_reboot_within_the_wait_is_a_power_cut_that_says_so(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    d, dev, pdu = make_dut(tmp_path, monkeypatch, VerdictKind.CRASH)
    d.expect_self_reboot(1)
    dev.boot = None  # still in the panic: never comes back by itself
    monkeypatch.setattr("rig.device.dut.time.sleep", lambda s: None)
    d.recover(timeout=0.5)
    assert pdu.cycles == 1
    assert d.last_recovery is not None and d.last_recovery["method"] == "power-cut"
    assert "did not reboot by itself" in str(d.last_recovery["why"])


@pytest.mark.parametrize("armed", [True, False])
def test_a_hang_or_an_unarmed_device_is_power_cut_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         armed: bool) -> None:
    kind = VerdictKind.HANG if armed else VerdictKind.CRASH
    d, dev, pdu = make_dut(tmp_path, monkeypatch, kind)
    if armed:
        d.expect_self_reboot(1)
    dev.boot = "boot-B"  # even if it answers: without a panic and kernel.panic, nothing says it rebooted by itself
    d.recover()
    assert pdu.cycles == 1 and d.last_recovery is not None and d.last_recovery["method"] == "power-cut"
