"""A relay across the laptop's power-button pins: hold to force off, press to boot.

Why a back end of its own: with the battery in, cutting AC does nothing to a laptop; its power
button always works. A relay cannot read the power state back, so :meth:`RelayPowerControl.status`
is an inference -- off after the rig itself forced the laptop off, on while it answers (SSH) --
and says so (``status_inferred``). A press on a running laptop asks its OS to shut down (ACPI
power button), so ``on`` does not press when the laptop already answers.

The contact is driven by something that can close and open it: the site's commands (usbrelay,
a GPIO tool: :class:`CommandContact`) or a labgrid power back end whose output switches the relay
(:class:`PduContact`). Whatever happens, the contact is opened again: a relay left closed holds
the laptop off for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from rig.errors import LabFault, RigError
from rig.power.base import PowerState
from rig.power.command import run_argv, substitute
from rig.power.pdu import PduPowerControl

#: Seconds the button stays released between two presses: a press that follows a release at once
#: reads as one long hold to the laptop's embedded controller (and to the lab's virtual button).
RELEASE_GAP = 1.0


class Contact(Protocol):
    """A relay contact."""

    def close(self) -> None: ...
    def open(self) -> None: ...
    def describe(self) -> str: ...


class CommandContact:
    """A contact closed and opened by two argument lists (no shell; fields substituted per argument)."""

    def __init__(self, device: str, close: Sequence[str], open_: Sequence[str], fields: Mapping[str, str],
                 timeout: float) -> None:
        self.device = device
        self._close = substitute(close, {**fields, "action": "close"})
        self._open = substitute(open_, {**fields, "action": "open"})
        self.timeout = timeout

    def close(self) -> None:
        run_argv(self._close, timeout=self.timeout, device=self.device, what="'relay close'")

    def open(self) -> None:
        run_argv(self._open, timeout=self.timeout, device=self.device, what="'relay open'")

    def describe(self) -> str:
        return f"command {self._close[0]}"


class PduContact:
    """A relay board behind a labgrid power back end: outlet on = contact closed."""

    def __init__(self, outlet: PduPowerControl) -> None:
        self.outlet = outlet

    def close(self) -> None:
        self.outlet.set_contact(True)

    def open(self) -> None:
        self.outlet.set_contact(False)

    def describe(self) -> str:
        return self.outlet.label


class RelayPowerControl:
    """Power-button relay: off = hold ``force_off_seconds``, on = press ``press_seconds``."""

    warm_reset = False
    status_inferred = True

    def __init__(
        self,
        device: str,
        contact: Contact,
        *,
        force_off_seconds: float = 6.0,
        press_seconds: float = 0.5,
        cycle_pause: float = 2.0,
        probe: Callable[[], bool] | None = None,
    ) -> None:
        self.device = device
        self.contact = contact
        self.force_off_seconds = force_off_seconds
        self.press_seconds = press_seconds
        self.cycle_pause = cycle_pause
        #: Whether the laptop answers now (the Dut gives an SSH liveness probe); None: no probe.
        self.probe = probe
        #: The rig forced the laptop off and has not pressed since: the one state it knows.
        self.forced_off = False
        #: How the last status() was inferred (shown by `rig power` and `rig check`).
        self.last_inference = "not asked yet"
        self._released_at = -RELEASE_GAP

    def _hold(self, seconds: float) -> None:
        gap = RELEASE_GAP - (time.monotonic() - self._released_at)
        if gap > 0:
            time.sleep(gap)
        self.contact.close()
        try:
            time.sleep(seconds)
        finally:
            try:
                self.contact.open()
                self._released_at = time.monotonic()
            except RigError as exc:
                raise LabFault(
                    f"device {self.device}: relay ({self.contact.describe()}) could not be opened again: {exc}; "
                    "the power button may still be held -- check the relay now",
                    component="relay",
                ) from None

    def _answers(self) -> bool:
        if self.probe is None:
            return False
        try:
            return bool(self.probe())
        except Exception:  # noqa: BLE001 - a failing probe means "does not answer"
            return False

    def status(self) -> PowerState:
        """Inferred: off after the rig's forced off; on if the laptop answers; else unknown."""
        if self.forced_off:
            self.last_inference = "inferred: silent since the rig forced it off"
            return PowerState.OFF
        if self._answers():
            self.last_inference = "inferred: it answers SSH"
            return PowerState.ON
        self.last_inference = "inferred: it does not answer, and a relay cannot read the power state"
        return PowerState.UNKNOWN

    def off(self) -> None:
        """Force off: hold the button ``force_off_seconds`` (works whatever state the laptop is in)."""
        self._hold(self.force_off_seconds)
        self.forced_off = True

    def on(self) -> None:
        """Press to boot -- unless the laptop answers (a press would ask a running OS to shut down)."""
        if not self.forced_off and self._answers():
            return
        self._hold(self.press_seconds)
        self.forced_off = False

    def cycle(self) -> None:
        self.off()
        time.sleep(self.cycle_pause)
        self._hold(self.press_seconds)
        self.forced_off = False

    def reset(self) -> None:
        """A power button has no reset: a reset is a forced-off cycle (RAM is lost)."""
        self.cycle()

    def describe(self) -> str:
        return (f"relay: power button via {self.contact.describe()} (hold {self.force_off_seconds:g} s = off, "
                f"press {self.press_seconds:g} s = on; state inferred)")
