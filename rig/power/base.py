"""What every power back end shares: the states, the :class:`PowerControl` protocol, and a deadline.

Each back end's calls run under a deadline of the rig's own (:func:`rig.deadline.run_bounded`,
re-exported here): a PDU that accepts a connection and never answers must not block recovery.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from rig.deadline import DeadlineExceeded, run_bounded

__all__ = ["DeadlineExceeded", "PowerControl", "PowerState", "offers_warm_reset", "run_bounded", "status_is_inferred"]


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@runtime_checkable
class PowerControl(Protocol):
    """What the rig needs of a device's power: a state and four buttons, and a name for reports.

    Back ends may also carry two class attributes the rig reads with ``getattr`` (defaults below):
    ``warm_reset`` -- ``reset()`` restarts the machine without cutting its power, so RAM (ramoops,
    the last words of a hang) survives -- and ``status_inferred`` -- ``status()`` is a guess from
    SSH/console, not read from the hardware (a power-button relay cannot read anything back).
    """

    def status(self) -> PowerState: ...
    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self) -> None: ...
    def reset(self) -> None: ...
    def describe(self) -> str: ...


def offers_warm_reset(power: PowerControl) -> bool:
    """Whether ``power.reset()`` keeps the machine's RAM (see :class:`PowerControl`)."""
    return bool(getattr(power, "warm_reset", False))


def status_is_inferred(power: PowerControl) -> bool:
    """Whether ``power.status()`` is inferred rather than read back (see :class:`PowerControl`)."""
    return bool(getattr(power, "status_inferred", False))
