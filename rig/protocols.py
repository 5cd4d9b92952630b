"""The small interfaces capabilities need from transports, defined once.

Why structural types: ``nmi``, ``shadowbox`` and ``monitor`` sit above the transports but should not
care whether commands go over paramiko (``rig.transports.ssh.SshClient``) or anything else that behaves the
same, and the console may be any line source (``rig.console.capture.ConsoleCapture``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class CommandOutput(Protocol):
    """A finished remote command (``rig.transports.ssh.CommandResult``)."""

    @property
    def exit_status(self) -> int: ...
    @property
    def out(self) -> str: ...
    @property
    def err(self) -> str: ...


class CommandRunner(Protocol):
    """Runs a shell command on the device with a deadline (``rig.transports.ssh.SshClient``)."""

    def run(self, command: str | Sequence[str], *, timeout: float, sudo: bool = False) -> CommandOutput: ...


class Shell(CommandRunner, Protocol):
    """A command runner that can also copy a folder to the device."""

    def upload_tree(self, local_dir: Path, remote_dir: str, *, sudo: bool = False) -> None: ...


class LivenessProbe(CommandRunner, Protocol):
    """A command runner with a cheap liveness probe that never raises for a dead device."""

    def alive(self, timeout: float = 3.0) -> bool: ...


class ConsoleLine(Protocol):
    """One console line as the capture delivers it (``rig.console.capture.ConsoleLine``)."""

    @property
    def number(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def monotonic(self) -> float: ...
    @property
    def text(self) -> str: ...


class LineSource(Protocol):
    """A console: mark a position, wait for a pattern after it, say when the console path is broken."""

    def mark(self) -> int: ...
    def expect(self, pattern: str | re.Pattern[str], timeout: float, *, since: int | None = None) -> object: ...
    def lab_fault(self, min_down: float = 0.0) -> str | None: ...
