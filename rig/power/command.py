"""The site's own power commands: pdudaemon's ``pduclient``, ``usbrelay``, an AMT tool, a script.

Why argument lists and per-argument substitution: inventory values (a device name, an outlet label)
must never reach a shell. Each ``{field}`` is replaced inside one argument, so a value with spaces,
quotes or ``; rm -rf /`` stays one literal argument. The command runs without a shell, in its own
process group, under a deadline; a non-zero exit, a missing program or a hang is a
:class:`~rig.errors.LabFault` naming the device, the action and the program -- never the laptop's fault.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from rig.errors import LabFault
from rig.power.base import PowerState

_ON_OFF = re.compile(r"\b(on|off)\b", re.IGNORECASE)


def substitute(argv: Sequence[str], fields: Mapping[str, str]) -> list[str]:
    """``argv`` with ``{name}`` replaced per argument (``{{``/``}}`` are literal braces)."""
    return [arg.format_map(fields) for arg in argv]


def run_argv(argv: Sequence[str], *, timeout: float, device: str, what: str) -> str:
    """Run ``argv`` (no shell) and return its stdout; LabFault on a missing program, non-zero exit or hang.

    A command that overruns ``timeout`` is killed with its whole process group (a script's children too).
    """
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        raise LabFault(
            f"device {device}: power command {what} could not start {argv[0]!r}: {exc.strerror}; "
            "check the program path in [power]",
            component="power-command",
        ) from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise LabFault(
            f"device {device}: power command {what} ({argv[0]}) did not finish within {timeout:g} s "
            "(timeout in [power]); check that the program does not wait for input or for an unreachable "
            "PDU/relay",
            component="power-command",
        ) from None
    if proc.returncode != 0:
        tail = " ".join(err.decode(errors="replace").split()[-40:]) or "(no stderr)"
        raise LabFault(
            f"device {device}: power command {what} ({argv[0]}) exited with status {proc.returncode}: {tail}; "
            "run it by hand to see why",
            component="power-command",
        )
    return out.decode(errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)


def parse_on_off(text: str) -> PowerState | None:
    """'on'/'off' from a status command's output (one of the two words, alone); None if neither or both."""
    words = {m.lower() for m in _ON_OFF.findall(text)}
    if words == {"on"}:
        return PowerState.ON
    if words == {"off"}:
        return PowerState.OFF
    return None


class CommandPowerControl:
    """Power through the inventory's ``on``/``off``/``cycle``/``reset``/``status`` argument lists."""

    def __init__(
        self,
        device: str,
        commands: Mapping[str, Sequence[str] | None],
        fields: Mapping[str, str],
        *,
        timeout: float = 30.0,
        cycle_pause: float = 5.0,
    ) -> None:
        self.device = device
        self.commands = {k: list(v) for k, v in commands.items() if v is not None}
        self.fields = dict(fields)
        self.timeout = timeout
        self.cycle_pause = cycle_pause
        #: A warm reset only if the site gave a reset command (without one, reset is a cycle).
        self.warm_reset = "reset" in self.commands

    def _run(self, action: str) -> str:
        argv = substitute(self.commands[action], {**self.fields, "action": action})
        return run_argv(argv, timeout=self.timeout, device=self.device, what=repr(action))

    def status(self) -> PowerState:
        if "status" not in self.commands:
            return PowerState.UNKNOWN
        out = self._run("status")
        state = parse_on_off(out)
        if state is None:
            shown = " ".join(out.split())[:200] or "(nothing)"
            raise LabFault(
                f"device {self.device}: power command 'status' printed {shown!r}, not one of 'on' or 'off'; "
                "make it print on or off",
                component="power-command",
            )
        return state

    def on(self) -> None:
        self._run("on")

    def off(self) -> None:
        self._run("off")

    def cycle(self) -> None:
        if "cycle" in self.commands:
            self._run("cycle")
            return
        self.off()
        time.sleep(self.cycle_pause)
        self.on()

    def reset(self) -> None:
        if "reset" in self.commands:
            self._run("reset")
        else:
            self.cycle()

    def describe(self) -> str:
        return f"command: {' '.join(self.commands['on'][:1])} ... (on/off{'/reset' if self.warm_reset else ''})"
