"""No remote power: a person presses the button."""

from __future__ import annotations

from rig.errors import Unavailable
from rig.power.base import PowerState


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
