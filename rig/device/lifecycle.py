"""The device lifecycle: the states one device goes through in a run and the steps between them.

Why one object (labgrid calls it a *strategy*): the plugin (recover or watch afresh before a test),
``rig regress`` (a fresh boot of every device before a build), ``rig bisect`` (a fresh boot before
every attempt) and the Dut itself (a reboot before a second deploy) all drive the same device
through the same steps. Written in four places, the rules drifted (bisect rebooted when Shadow-box
was loaded, the plugin only when a test had failed). Here they are written once: the front ends
*ask for a state* (``dut.lifecycle.transition(DeviceState.WATCHED)``) and the lifecycle knows the
way there; the Dut does the work of each step and records it here.

States (:class:`DeviceState`)::

    off       not held by this rig: before Dut.open, after Dut.close (its power is not known)
    booting   power-cycled or reset by the rig, not ready yet
    ready     answers SSH (console connected where there is one); nobody watches it
    watched   the hang monitor runs: heartbeat, SSH probe, detector
    deployed  Shadow-box (or sbsim) started on this boot (watched if it was watched before)
    failed    crashed, hung, rebooted, powered off, or a recovery that did not come back:
              only a fresh boot leaves this state

Steps (:class:`Step`), each legal only from the states in :data:`RULES`::

    connect      off -> ready                   SSH answered at open
    power-cycle  any held state -> booting      warm reset or power cut (Dut.recover), also from off
    ready        booting -> ready               ready line on the console, then SSH
    watch        ready/watched -> watched       (a fresh monitor; deployed stays deployed)
    deploy       ready/watched -> deployed      once per boot: a loaded boot is power-cycled first
    unload       ready/watched/deployed -> watched (ready if unwatched)
                                                only a module that unloads (sbsim, the lab's stand-in;
                                                Dut.unload_shadowbox): the boot is clean again
    fail         booting/ready/watched/deployed -> failed
    close        any -> off

A step from a state that does not allow it raises :class:`LifecycleError` naming the device, the
state, the step and what to do -- a front end that forgot a recovery gets told, instead of
deploying on a hung laptop.

The pure part (:class:`Lifecycle`: the state, the rules, :meth:`Lifecycle.plan`) needs no device and
is tested alone (tests/test_lifecycle.py); :meth:`Lifecycle.transition` runs a plan through a
:class:`LifecycleDriver`, which :class:`rig.device.dut.Dut` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rig.errors import RigError

if TYPE_CHECKING:
    from rich.console import Console

    from rig.inventory import Device


class DeviceState(StrEnum):
    OFF = "off"
    BOOTING = "booting"
    READY = "ready"
    WATCHED = "watched"
    DEPLOYED = "deployed"
    FAILED = "failed"


class Step(StrEnum):
    CONNECT = "connect"
    POWER_CYCLE = "power-cycle"
    READY = "ready"
    WATCH = "watch"
    DEPLOY = "deploy"
    UNLOAD = "unload"
    FAIL = "fail"
    CLOSE = "close"


_HELD = frozenset(DeviceState) - {DeviceState.OFF}

#: step -> (the states it may start from, the state it leads to).
RULES: dict[Step, tuple[frozenset[DeviceState], DeviceState]] = {
    Step.CONNECT: (frozenset({DeviceState.OFF}), DeviceState.READY),
    Step.POWER_CYCLE: (frozenset(DeviceState), DeviceState.BOOTING),
    Step.READY: (frozenset({DeviceState.BOOTING}), DeviceState.READY),
    Step.WATCH: (frozenset({DeviceState.READY, DeviceState.WATCHED, DeviceState.DEPLOYED}), DeviceState.WATCHED),
    Step.DEPLOY: (frozenset({DeviceState.READY, DeviceState.WATCHED}), DeviceState.DEPLOYED),
    Step.UNLOAD: (frozenset({DeviceState.READY, DeviceState.WATCHED, DeviceState.DEPLOYED}), DeviceState.WATCHED),
    Step.FAIL: (_HELD, DeviceState.FAILED),
    Step.CLOSE: (frozenset(DeviceState), DeviceState.OFF),
}

#: What to do about a step refused in a state (the error's last words).
_ADVICE: dict[DeviceState, str] = {
    DeviceState.OFF: "open the device first (Dut.open)",
    DeviceState.FAILED: "recover it first: dut.lifecycle.transition(DeviceState.WATCHED) power-cycles a failed device",
    DeviceState.BOOTING: "wait until it is ready (the recovery is still under way)",
    DeviceState.DEPLOYED: "Shadow-box cannot be unloaded: a fresh boot comes first (Dut.deploy_shadowbox does it)",
}


class LifecycleError(RigError):
    """A step asked of a device in a state that does not allow it (a bug of the caller, named)."""


@dataclass(frozen=True)
class Change:
    """One recorded step: what, from where to where, and why (the lifecycle's own short history)."""

    step: Step
    before: DeviceState
    after: DeviceState
    why: str = ""


class LifecycleDriver(Protocol):
    """What the lifecycle needs of a device to carry out a plan (rig.device.dut.Dut)."""

    def recover(self, *, timeout: float | None = None, start_monitor: bool = True) -> float: ...

    def watch(self) -> None: ...


class Lifecycle:
    """One device's state and the rules between states; :meth:`transition` asks for a state."""

    #: How many changes :attr:`history` keeps (the newest).
    HISTORY = 50

    def __init__(self, device: str, driver: LifecycleDriver | None = None) -> None:
        self.device = device
        self.driver = driver
        self.state = DeviceState.OFF
        #: Something of Shadow-box was insmod-ed since the last boot (a refused or failed deploy may
        #: have loaded a module too): the next deploy needs a fresh boot first.
        self.loaded = False
        #: The hang monitor runs (watched, or deployed while watched).
        self.watching = False
        #: Why the device is failed (the verdict's text), when it is.
        self.failure = ""
        self.history: list[Change] = []

    # -- the rules (pure) --------------------------------------------------------------------

    def can(self, step: Step) -> bool:
        return self.state in RULES[step][0]

    def apply(self, step: Step, why: str = "") -> DeviceState:
        """Record that ``step`` was done; the new state. A step the current state does not allow is refused."""
        allowed, after = RULES[step]
        before = self.state
        if before not in allowed:
            what = f" ({self.failure})" if before is DeviceState.FAILED and self.failure else ""
            legal = ", ".join(sorted(s.value for s in allowed))
            advice = _ADVICE.get(before, "") if (before is not DeviceState.DEPLOYED or step is Step.DEPLOY) else ""
            advice = advice or f"'{step}' is allowed from: {legal}"
            raise LifecycleError(
                f"device {self.device}: cannot {step} while it is {before}{what}; {advice}"
            )
        if step is Step.WATCH and before is DeviceState.DEPLOYED:
            after = DeviceState.DEPLOYED  # a fresh watch does not unload Shadow-box
        if step is Step.UNLOAD and not self.watching:
            after = DeviceState.READY
        if step is Step.FAIL and before is DeviceState.FAILED:
            why = self.failure or why  # the first failure is the one to tell
        self.state = after
        if step is Step.POWER_CYCLE:
            self.loaded = False
            self.watching = False
            self.failure = ""
        elif step is Step.WATCH:
            self.watching = True
        elif step is Step.DEPLOY:
            self.loaded = True
        elif step is Step.UNLOAD:
            self.loaded = False
        elif step is Step.FAIL:
            self.failure = why
        elif step is Step.CLOSE:
            self.watching = False
        self.history.append(Change(step, before, after, why))
        del self.history[: -self.HISTORY]
        return after

    def fail(self, why: str) -> None:
        """The device ended in a crash, hang, reboot or power-off: only a fresh boot leaves this."""
        self.apply(Step.FAIL, why)

    def note_loaded(self) -> None:
        """A deploy reached insmod and failed after it: something may be loaded, the boot is not clean."""
        self.loaded = True

    @property
    def needs_fresh_boot(self) -> bool:
        """Failed, or something of Shadow-box loaded on this boot: only a fresh boot gives a clean state."""
        return self.state is DeviceState.FAILED or self.loaded

    def plan(self, target: DeviceState, *, clean: bool = False) -> list[Step]:
        """The steps from the current state to ``target`` (pure: the strategy itself).

        ``clean`` asks for a boot on which nothing of Shadow-box was loaded (bisect: every attempt on its
        own boot). A watched device asked for ``watched`` gets a fresh watch (the next test must not
        inherit the last verdict). ``deployed`` is not planned here: a deploy needs a build
        (Dut.deploy_shadowbox), which does its own fresh boot when the boot is not clean.
        """
        if target is DeviceState.WATCHED:
            if self.state is DeviceState.OFF:
                raise LifecycleError(
                    f"device {self.device}: cannot reach watched while it is off; {_ADVICE[self.state]}"
                )
            if self.state is DeviceState.FAILED or self.state is DeviceState.BOOTING or (clean and self.loaded):
                return [Step.POWER_CYCLE, Step.READY, Step.WATCH]
            return [Step.WATCH]
        if target is DeviceState.READY:
            if self.state is DeviceState.READY and not (clean and self.loaded):
                return []
            if self.state is DeviceState.OFF:
                return [Step.CONNECT]
            return [Step.POWER_CYCLE, Step.READY]
        if target is DeviceState.OFF:
            return [Step.CLOSE]
        raise LifecycleError(
            f"device {self.device}: '{target}' is not a state to ask for (ask for ready or watched; "
            "deployed comes from Dut.deploy_shadowbox, booting and failed are passed through)"
        )

    # -- carrying a plan out -----------------------------------------------------------------

    def transition(self, target: DeviceState, *, clean: bool = False) -> DeviceState:
        """Bring the device to ``target`` (see :meth:`plan`) through the driver; the state reached.

        A power cycle in the plan is one :meth:`LifecycleDriver.recover` (warm reset first, power
        cut if that fails, ready, and the watch when ``target`` is watched); a watch alone is
        :meth:`LifecycleDriver.watch`. A recovery that fails leaves the device failed, so the next
        ask tries again.
        """
        steps = self.plan(target, clean=clean)
        if not steps:
            return self.state
        if self.driver is None:
            raise LifecycleError(f"device {self.device}: this lifecycle has no device to drive (no driver)")
        if steps[0] is Step.POWER_CYCLE:
            self.driver.recover(start_monitor=target is DeviceState.WATCHED)
        elif steps == [Step.WATCH]:
            self.driver.watch()
        else:
            raise LifecycleError(f"device {self.device}: no driver step for {[str(s) for s in steps]}")
        return self.state


def fresh_boot(devices: Sequence[Device], log_root: Path, console: Console) -> dict[str, str | None]:
    """A fresh boot of every device, side by side: device -> None, or why it was not reset.

    Why before every build (``rig regress``) and before a bisection: Shadow-box cannot be unloaded,
    so each build needs a fresh boot anyway, and the previous build may have left a device hung or
    panicked. Doing it for all devices at once gives every build the same clean start and keeps the
    reboot out of its first test. A device that answers SSH and runs no Shadow-box is left as it is
    (:meth:`rig.device.dut.Dut.fresh_boot`). A device that cannot be reset (manual power, a lab fault) is
    reported and left to the run, which says why.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rig.device.dut import Dut

    def one(dev: Device) -> str | None:
        dut = Dut(dev, log_root / dev.name, lock_wait=60)
        try:
            took = dut.fresh_boot()
        except RigError as exc:
            console.print(f"  [yellow]{dev.name}: not reset before the build: {exc}[/]", highlight=False)
            return str(exc)
        finally:
            dut.close()
        if took is None:
            console.print(f"  {dev.name}: answers SSH and runs no Shadow-box: no reset needed", highlight=False)
        else:
            console.print(f"  {dev.name}: power-cycled, ready in {took:.0f} s", highlight=False)
        return None

    with ThreadPoolExecutor(max_workers=max(1, len(devices))) as pool:
        return dict(zip([d.name for d in devices], pool.map(one, devices), strict=True))
