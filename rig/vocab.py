"""The rig's two vocabularies, defined once: event kinds (from the console) and verdicts (per device).

Monitor, reports, CLI, plugin and triage all use these names; nothing else spells them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

#: The NMI sources the rig knows, by the name inventories, the CLI and reports use. rig.device.nmi.SOURCES
#: maps each to the class that raises it (tests/test_nmi_counts.py checks the two agree).
NmiSourceName = Literal["ipmi", "sysrq", "perf", "qmp"]
NMI_SOURCE_NAMES: tuple[str, ...] = get_args(NmiSourceName)


class EventKind(StrEnum):
    """What a console line (or a run of lines) means. Names are part of the stable JSON shape."""

    PANIC = "panic"
    OOPS = "oops"
    BUG = "bug"
    GPF = "gpf"
    SOFT_LOCKUP = "soft_lockup"
    HARD_LOCKUP = "hard_lockup"
    RCU_STALL = "rcu_stall"
    HUNG_TASK = "hung_task"
    WARNING = "warning"
    REBOOT = "reboot"
    SHADOWBOX_START = "shadowbox_start"  # "Execution Complete": informational
    SHADOWBOX_FAIL = "shadowbox_fail"
    SHADOWBOX_ALERT = "shadowbox_alert"
    SHADOWBOX_HANG = "shadowbox_hang"
    NMI = "nmi"  # an NMI was received/handled: evidence of delivery, not a failure


#: Kinds that mean the device crashed (verdict ``crash(<kind>)``).
CRASH_KINDS: frozenset[EventKind] = frozenset(
    {
        EventKind.PANIC,
        EventKind.OOPS,
        EventKind.BUG,
        EventKind.GPF,
        EventKind.SOFT_LOCKUP,
        EventKind.HARD_LOCKUP,
        EventKind.RCU_STALL,
        EventKind.HUNG_TASK,
        EventKind.SHADOWBOX_HANG,
    }
)

#: Kinds that are worth reporting but do not by themselves fail a device. A Shadow-box start
#: failure is here, not a crash: the laptop is fine, the deploy step reports it by name.
NOTICE_KINDS: frozenset[EventKind] = frozenset(
    {EventKind.WARNING, EventKind.SHADOWBOX_ALERT, EventKind.SHADOWBOX_START, EventKind.SHADOWBOX_FAIL, EventKind.NMI}
)


class VerdictKind(StrEnum):
    """One device's state as the rig judges it.

    ``powered-off``: the device went silent *and* its power control says it is off, though the rig
    did not switch it off (a person, a power strip, a BMC policy, a flat battery). It is not the
    device's failure: nothing Shadow-box does powers a laptop off cleanly (its failures are hangs,
    panics and triple-fault resets, which read as ``hang``/``crash``/``reboot``), so the plugin and
    the reports treat it like a lab fault -- the test fails as "not a device failure", its cell is
    the lab colour -- and the device is powered on again before its next test.
    """

    OK = "ok"
    CRASH = "crash"
    HANG = "hang"
    REBOOT = "reboot"
    LOST_CONNECTION = "lost-connection"
    LAB_FAULT = "lab-fault"
    POWERED_OFF = "powered-off"
    #: Shadow-box was not deployed (preflight refused, build failed, it refused to start): rendered
    #: ``deploy-failed(<reason>)``. Neither the laptop's failure nor the lab's: the build's.
    DEPLOY_FAILED = "deploy-failed"


#: Verdicts that say the lab (or someone in it), not the device under test, failed.
NOT_DEVICE_KINDS: frozenset[VerdictKind] = frozenset({VerdictKind.LAB_FAULT, VerdictKind.POWERED_OFF})


def verdict_text(kind: VerdictKind, detail: str | None = None) -> str:
    """Render a verdict the one way reports and the CLI show it: ``crash(panic)``, ``hang``, ..."""
    if kind is VerdictKind.CRASH:
        return f"crash({detail or 'unknown'})"
    if kind is VerdictKind.DEPLOY_FAILED:
        return f"deploy-failed({detail or 'unknown'})"
    return kind.value
