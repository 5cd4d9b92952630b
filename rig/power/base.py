"""What every power back end shares: the states, the :class:`PowerControl` protocol, and a deadline.

Why a deadline of the rig's own: the libraries behind the back ends (labgrid's PDU modules, a
user's relay script, an AMT web server) have no timeouts or unbounded ones; a PDU that accepts a
connection and never answers would block recovery -- and with it the night's run -- forever.
:func:`run_bounded` runs one call in a daemon thread and gives up on it at the deadline (the
thread is abandoned, never joined, so it cannot hold the process at exit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

_T = TypeVar("_T")


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


class DeadlineExceeded(Exception):
    """A bounded call did not return in time (the caller turns it into a LabFault naming the device)."""


def run_bounded(fn: Callable[[], _T], timeout: float, name: str) -> _T:
    """Run ``fn()`` in a daemon thread and return its result, or raise :class:`DeadlineExceeded`.

    Exceptions of ``fn`` are re-raised in the caller's thread as they are. A call that overruns is
    abandoned: it may still finish later, and its result is dropped.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise DeadlineExceeded(f"{name}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
