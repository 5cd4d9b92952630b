"""Stalls that leave evidence: make the kernel panic on a detected stall for the length of a soak.

Why: Debian's kernel keeps only kmsg *dumps* in pstore (``CONFIG_PSTORE_CONSOLE`` is off), and a
dump is written on a panic or an oops -- not on a soft lockup, an RCU stall or a hung task, which
only print a warning and go on (and then, often, the machine dies silently). With these sysctls a
detected stall panics, so pstore holds the stall's backtrace after the recovery, and a console that
died with the network (netconsole) is no longer the only witness. A pure hang that no detector
notices still leaves nothing: say so, do not promise more.

The previous values are read first and written back after the soak (a device that hung is rebooted
by the recovery, which resets them anyway).
"""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING

from rig.errors import RigError

if TYPE_CHECKING:
    from rig.protocols import CommandRunner

log = logging.getLogger(__name__)

#: The detectors' "panic instead of warn" switches (a file missing on a kernel is skipped and said).
STALL_SYSCTLS = (
    "kernel/softlockup_panic",
    "kernel/hardlockup_panic",  # the hard-lockup detector runs on perf NMIs: absent without a PMU
    "kernel/panic_on_rcu_stall",
    "kernel/hung_task_panic",
)


class StallPanic:
    """Set the panic-on-stall sysctls (and optionally ``kernel.panic``) on the device; restore them later."""

    def __init__(self, ssh: CommandRunner, device: str, *, sudo: bool = False,
                 reboot_seconds: int | None = None) -> None:
        self.ssh = ssh
        self.device = device
        self.sudo = sudo
        self.reboot_seconds = reboot_seconds
        #: sysctl path (under /proc/sys) -> the value it had before apply().
        self.saved: dict[str, str] = {}
        #: sysctls this kernel does not have.
        self.missing: list[str] = []

    def _wanted(self) -> dict[str, str]:
        want = dict.fromkeys(STALL_SYSCTLS, "1")
        if self.reboot_seconds is not None:
            want["kernel/panic"] = str(self.reboot_seconds)
        return want

    def apply(self) -> str:
        """Set them; returns a sentence for the report. RigError from SSH goes to the caller."""
        want = self._wanted()
        script = "; ".join(
            f"f=/proc/sys/{k}; if [ -w $f ]; then echo \"{k}=$(cat $f)\"; echo {shlex.quote(v)} > $f; "
            f"else echo \"{k}=missing\"; fi"
            for k, v in want.items()
        )
        out = self.ssh.run(["sh", "-c", script], timeout=15, sudo=self.sudo).out
        for line in out.splitlines():
            k, _, v = line.partition("=")
            if k not in want:
                continue
            if v == "missing":
                self.missing.append(k)
            else:
                self.saved[k] = v.strip()
        said = ", ".join(f"{k.replace('/', '.')}={want[k]}" for k in self.saved)
        gone = f"; not in this kernel: {', '.join(m.replace('/', '.') for m in self.missing)}" if self.missing else ""
        return f"panic on stall for the soak: {said or 'nothing could be set'}{gone}"

    def restore(self) -> None:
        """Write the saved values back (best effort: the device may have hung or been rebooted)."""
        if not self.saved:
            return
        script = "; ".join(f"echo {shlex.quote(v)} > /proc/sys/{k}" for k, v in self.saved.items())
        try:
            self.ssh.run(["sh", "-c", script], timeout=15, sudo=self.sudo)
        except RigError as exc:
            log.info("%s: stall sysctls not restored (%s); a reboot resets them", self.device, exc)
        self.saved = {}
