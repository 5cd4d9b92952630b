"""Power control of a device: one small interface, three ways to do it (IPMI, QMP, a person).

Why one interface: recovery after a hang ("power-cycle it and wait for SSH") must read the same
for a laptop behind a BMC, a QEMU guest in the lab, and a laptop on a desk with nobody's finger
remote-controlled. The device layer picks the implementation from the inventory's ``[power]``
section with :func:`power_for` and never asks which one it got.

The QMP model of power (shared with the lab's virtual BMC, :mod:`rig.lab.vbmc`): lab guests run
with ``-no-shutdown``, so a guest that powers itself off stays in QMP state 'shutdown' instead of
exiting. "Off" is a paused VM (``stop``; 'paused', 'shutdown' and 'prelaunch' all read as off) and
"on" is ``system_reset`` + ``cont`` -- a fresh boot, as a real power-on would give.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Protocol, runtime_checkable

from rig.bmc import BmcClient
from rig.errors import Unavailable
from rig.inventory import Device, IpmiPower, ManualPower, QmpPower
from rig.qmp import QmpClient

#: How long a QMP power cycle stays "off" before the reset, seconds (a real cycle is off briefly).
QMP_CYCLE_PAUSE = 0.5

#: QMP run states that mean "the machine is powered" (running, or powered but stuck).
_QMP_ON = frozenset(
    {"running", "suspended", "guest-panicked", "internal-error", "io-error", "watchdog", "colo"}
)
#: QMP run states that mean "off" in the lab's model.
_QMP_OFF = frozenset({"paused", "shutdown", "prelaunch"})


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@runtime_checkable
class PowerControl(Protocol):
    """What the rig needs of a device's power: a state and four buttons, and a name for reports."""

    def status(self) -> PowerState: ...
    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self) -> None: ...
    def reset(self) -> None: ...
    def describe(self) -> str: ...


class IpmiPowerControl:
    """Power through a BMC (IPMI chassis control); errors are those of :class:`rig.bmc.BmcClient`."""

    def __init__(self, bmc: BmcClient) -> None:
        self.bmc = bmc

    def status(self) -> PowerState:
        return PowerState(self.bmc.power_state())

    def on(self) -> None:
        self.bmc.set_power("on")

    def off(self) -> None:
        self.bmc.set_power("off")

    def cycle(self) -> None:
        """Power cycle; from 'off' it powers on (the IPMI spec lets a BMC ignore or refuse a
        cycle of a chassis that is off, and recovery must not depend on which it does)."""
        if self.bmc.power_state() == "off":
            self.bmc.set_power("on")
        else:
            self.bmc.set_power("cycle")

    def reset(self) -> None:
        """Hard reset; from 'off' it powers on, as QmpPowerControl.reset boots an 'off' guest."""
        if self.bmc.power_state() == "off":
            self.bmc.set_power("on")
        else:
            self.bmc.set_power("reset")

    def describe(self) -> str:
        return f"ipmi: {self.bmc.label} as {self.bmc.user!r}"


class QmpPowerControl:
    """Power of a lab guest through QMP, in the model described in the module docstring."""

    def __init__(self, qmp: QmpClient, *, cycle_pause: float = QMP_CYCLE_PAUSE) -> None:
        self.qmp = qmp
        self.cycle_pause = cycle_pause

    @staticmethod
    def state_of(qmp_status: str) -> PowerState:
        """Map a QMP run state to a power state (unknown states are UNKNOWN, not guessed)."""
        if qmp_status in _QMP_ON:
            return PowerState.ON
        if qmp_status in _QMP_OFF:
            return PowerState.OFF
        return PowerState.UNKNOWN

    def status(self) -> PowerState:
        return self.state_of(self.qmp.status())

    def on(self) -> None:
        """Power on = fresh boot. Already on: nothing, as a real power button held 'on' does."""
        if self.status() is PowerState.ON:
            return
        self.qmp.system_reset()
        self.qmp.cont()

    def off(self) -> None:
        """Power off = pause every vCPU (idempotent: stopping a stopped VM is harmless)."""
        self.qmp.stop()

    def cycle(self) -> None:
        self.qmp.stop()
        time.sleep(self.cycle_pause)
        self.qmp.system_reset()
        self.qmp.cont()

    def reset(self) -> None:
        """Reset button; a paused ('off') guest is also resumed so the reset means a boot."""
        self.qmp.system_reset()
        if self.status() is not PowerState.ON:
            self.qmp.cont()

    def describe(self) -> str:
        return f"qmp: {self.qmp.socket_path}"


class ManualPowerControl:
    """No remote power: every button raises Unavailable with what a person has to do.

    The device fixture turns that into a prompt (interactive run) or a skip (unattended run).
    """

    def __init__(self, instructions: str = "power-cycle the laptop by hand") -> None:
        self.instructions = instructions

    def _ask(self) -> Unavailable:
        return Unavailable("power", f"manual power: {self.instructions}")

    def status(self) -> PowerState:
        return PowerState.UNKNOWN

    def on(self) -> None:
        raise self._ask()

    def off(self) -> None:
        raise self._ask()

    def cycle(self) -> None:
        raise self._ask()

    def reset(self) -> None:
        raise self._ask()

    def describe(self) -> str:
        return f"manual: {self.instructions}"


def power_for(device: Device) -> PowerControl:
    """Build the power control named by the device's ``[power]`` section (no I/O but reading the
    password file/variable; the BMC is contacted on first use)."""
    cfg = device.power
    if isinstance(cfg, IpmiPower):
        password = cfg.resolve_password(f"device {device.name} [power]")
        bmc = BmcClient(cfg.host, cfg.port, cfg.user, password, name=device.name)
        return IpmiPowerControl(bmc)
    if isinstance(cfg, QmpPower):
        return QmpPowerControl(QmpClient(cfg.socket))
    if isinstance(cfg, ManualPower):
        return ManualPowerControl(cfg.instructions)
    raise TypeError(f"device {device.name}: unknown [power] kind {type(cfg).__name__}")
