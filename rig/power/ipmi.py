"""Power through a BMC (IPMI chassis control, pyghmi); errors are those of :class:`rig.transports.bmc.BmcClient`."""

from __future__ import annotations

from rig.power.base import PowerState
from rig.transports.bmc import BmcClient


class IpmiPowerControl:
    """IPMI chassis power. ``reset`` is chassis control 3 (hard reset): the reset line, not a power
    cut, so the machine's RAM survives -- the warm reset the rig tries first when recovering."""

    warm_reset = True

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
