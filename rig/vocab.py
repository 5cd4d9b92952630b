"""The rig's two vocabularies, defined once: event kinds (from the console) and verdicts (per device).

Monitor, reports, CLI, plugin and triage all use these names; nothing else spells them.
"""

from __future__ import annotations

from enum import StrEnum


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
    OK = "ok"
    CRASH = "crash"
    HANG = "hang"
    REBOOT = "reboot"
    LOST_CONNECTION = "lost-connection"
    LAB_FAULT = "lab-fault"


def verdict_text(kind: VerdictKind, detail: str | None = None) -> str:
    """Render a verdict the one way reports and the CLI show it: ``crash(panic)``, ``hang``, ..."""
    if kind is VerdictKind.CRASH:
        return f"crash({detail or 'unknown'})"
    return kind.value
