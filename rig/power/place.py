"""The power outlet of a device whose ``[power] from_place = true``, before its place is acquired.

Why a stand-in: the outlet is the labgrid place's ``NetworkPowerPort``, which only the place's
holder may use and which the rig reads when it acquires the place (``Dut.open``). Until then there
is no outlet to switch; anything that asks gets a lab-side error saying so (never a verdict), and
the Dut replaces this with the real back end (:mod:`rig.power.pdu`) at open.
"""

from __future__ import annotations

from rig.errors import ConfigError
from rig.inventory import Device
from rig.power.base import PowerState


class PlacePowerPending:
    """Every button says the outlet is the place's and not known yet."""

    def __init__(self, device: Device) -> None:
        self.device = device.name
        self.place = device.lab.place

    def _pending(self) -> ConfigError:
        return ConfigError(
            f"device {self.device}: [power] from_place: the outlet is labgrid place {self.place}'s NetworkPowerPort, "
            "known once this run acquires the place (Dut.open); by hand: labgrid-client -p PLACE power cycle"
        )

    def status(self) -> PowerState:
        raise self._pending()

    def on(self) -> None:
        raise self._pending()

    def off(self) -> None:
        raise self._pending()

    def cycle(self) -> None:
        raise self._pending()

    def reset(self) -> None:
        raise self._pending()

    def describe(self) -> str:
        return f"pdu: place {self.place}'s NetworkPowerPort (not acquired yet)"
