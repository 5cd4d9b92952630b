"""Power of a lab guest through QMP.

The QMP model of power (shared with the lab's virtual BMC, :mod:`rig.lab.vbmc`): lab guests run
with ``-no-shutdown``, so a guest that powers itself off stays in QMP state 'shutdown' instead of
exiting. "Off" is a paused VM (``stop``; 'paused', 'shutdown' and 'prelaunch' all read as off) and
"on" is ``system_reset`` + ``cont`` -- a fresh boot, as a real power-on would give. Nothing here
loses the guest's RAM: ``reset`` is a warm reset. (A real power cut in the lab -- the QEMU process
ends -- is the virtual PDU's job, :mod:`rig.lab.vpower`.)
"""

from __future__ import annotations

import time

from rig.power.base import PowerState
from rig.transports.qmp import QmpClient

#: How long a QMP power cycle stays "off" before the reset, seconds (a real cycle is off briefly).
QMP_CYCLE_PAUSE = 0.5

#: QMP run states that mean "the machine is powered" (running, or powered but stuck).
_QMP_ON = frozenset(
    {"running", "suspended", "guest-panicked", "internal-error", "io-error", "watchdog", "colo"}
)
#: QMP run states that mean "off" in the lab's model.
_QMP_OFF = frozenset({"paused", "shutdown", "prelaunch"})


class QmpPowerControl:
    """Power of a lab guest through QMP, in the model described in the module docstring."""

    warm_reset = True

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
