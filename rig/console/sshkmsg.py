"""The last-resort console: the device's kernel log read over SSH (``url = "ssh://kmsg"``).

Why: a laptop with neither a serial port nor a NIC that can do netpoll (Wi-Fi only) still has SSH.
Following its kernel log over SSH (syzkaller does this for VMs it cannot attach a console to) gives
the crash detector the oops and warning lines, and the heartbeat, *while SSH lives*. It cannot tell
more than that: when the machine hangs or panics, SSH dies with it and so does this console, usually
before the panic text is sent. So a device watched this way can be judged ``hang`` where a real
console would have said ``crash(panic)`` -- reports say which console it was (``console_transport``
``"transport": "ssh-kmsg"`` with a note), and pstore after the recovery is what recovers the panic.

How: ``cat /dev/kmsg`` in the background of the rig's SSH connection. Each record comes in the same
extended format as netconsole's (``<level>,<seq>,<usec>,<flag>;text`` then `` KEY=value`` lines), so
it goes through :class:`rig.console.netconsole.NetconsoleStream` (sequence gaps counted: ``/dev/kmsg`` skips
records that were overwritten before they were read). Opening ``/dev/kmsg`` replays the whole ring
buffer; records older than the device's uptime at the start of the follow are kept on disk but not
shown (the boot banner and an old crash of the buffer would otherwise read as new events). The
follow restarts after an SSH drop, with the same rule.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rig.console.capture import ConsoleCapture
from rig.console.netconsole import NetconsoleStream
from rig.errors import RigError, Unavailable

if TYPE_CHECKING:
    from rig.transports.ssh import RemoteProcess, SshClient

log = logging.getLogger(__name__)

URL = "ssh://kmsg"
FOLLOW = "cat /proc/uptime; exec cat /dev/kmsg"
NOTE = ("last-resort console: the kernel log followed over SSH; it stops when the device hangs or panics, "
        "so a panic may be judged hang (pstore after the recovery holds the panic, when there is a backend)")
_USEC = re.compile(rb"^\d{1,3},\d{1,20},(\d{1,20}),")


class SshKmsgCapture(ConsoleCapture):
    """A console fed by ``cat /dev/kmsg`` over the device's SSH connection."""

    def __init__(self, ssh: SshClient, log_dir: str | Path, *, name: str, sudo: bool = False) -> None:
        super().__init__(URL, log_dir, name=name)
        self.ssh = ssh
        self.sudo = sudo
        self.stream = NetconsoleStream()
        #: Records from before the follow started (the ring buffer's replay): on disk, not shown.
        self.replayed = 0
        self._proc: RemoteProcess | None = None
        self._pending = bytearray()
        self._since_usec: int | None = None
        self._first_line = True

    def write(self, data: bytes) -> None:
        raise Unavailable("console input", f"{self.name}'s console is its kernel log over SSH (no input)")

    def lab_fault(self, min_down: float = 0.0) -> str | None:
        """Never a lab fault: this console dies with SSH, which is the device's (or its network's) doing."""
        return None

    def stats(self) -> dict[str, object]:
        return {**super().stats(), "transport": "ssh-kmsg", "note": NOTE, "replayed_skipped": self.replayed,
                **self.stream.to_json()}

    def _run(self) -> None:
        backoff = self.backoff_min
        while not self._stop.is_set():
            self._pending.clear()
            self._first_line = True
            self._since_usec = None
            try:
                proc = self.ssh.start(FOLLOW, sudo=self.sudo, on_stdout=self._on_chunk, timeout=10)
            except RigError as exc:
                self.last_error = str(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            self._proc = proc
            with self._cond:
                self.connected = True
                self.disconnected_since = None
                self._cond.notify_all()
            if self._connects:
                self.reconnects += 1
            self._connects += 1
            backoff = self.backoff_min
            while proc.alive and not self._stop.is_set():
                self._stop.wait(0.2)
            with self._cond:
                self.connected = False
                self.disconnected_since = time.monotonic()
                self._cond.notify_all()
            try:
                proc.stop(timeout=2)
            except Exception as exc:  # noqa: BLE001 - the device may be gone; the follow restarts
                log.debug("console %s: stopping the follow: %s", self.name, exc)
            self._proc = None

    def _on_chunk(self, data: bytes) -> None:
        """From the SSH reader thread: raw bytes first, then whole records through the stream."""
        wall, mono = time.time(), time.monotonic()
        try:
            self._write_raw(data, wall, mono)
            self._pending += data
            *lines, rest = bytes(self._pending).split(b"\n")
            self._pending[:] = rest
            out = bytearray()
            for line in lines:
                if self._first_line:
                    self._first_line = False
                    try:
                        self._since_usec = int(float(line.split()[0]) * 1_000_000)
                        continue
                    except (ValueError, IndexError):
                        pass  # no uptime line: show everything
                if line.startswith(b" ") or not line:
                    continue  # a record's KEY=value dictionary line
                m = _USEC.match(line)
                if m is not None and self._since_usec is not None and int(m.group(1)) < self._since_usec:
                    self.replayed += 1
                    continue
                out += self.stream.feed(line + b"\n", wall)
            if out:
                self._feed_text(bytes(out), wall, mono)
        except Exception:  # a bug of ours must not stop the follow; the bytes are on disk
            log.exception("console %s: handling kmsg output failed (kept going)", self.name)
