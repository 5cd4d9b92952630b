"""Serial console capture: one reader thread per device, every byte on disk first.

Why it is built this way:

* The console is the only witness of a crash; a hung laptop cannot be asked later. So every
  chunk read goes to ``console.raw`` (exact bytes, unbuffered) *before* it is split into lines,
  and every line goes to ``console.log`` (``<ISO-8601 UTC with ms> <text>``, flushed per line)
  *before* any subscriber (detector, monitor) or :meth:`ConsoleCapture.expect` sees it.
  Files are opened for append, never truncated: a restarted capture (or a reconnect) continues
  them, and line numbers continue from the lines already in ``console.log``, so
  :attr:`ConsoleLine.number` is always the line's number in that file.
* Console servers drop us (ser2net restarted, network blip), and pyserial's ``rfc2217://`` and
  ``socket://`` handlers raise on EOF and never reconnect. The reader reconnects with backoff
  until :meth:`ConsoleCapture.stop`, and keeps the state the monitor needs to call it a *lab*
  fault (:meth:`ConsoleCapture.lab_fault`) rather than a silent device.
* Device output is hostile: non-UTF-8 bytes, ANSI escapes, ``\\r`` alone, lines that never end.
  Bytes are kept exact on disk; text is decoded with ``errors="replace"``, control characters
  (but tab) are dropped, and a line longer than ``max_line`` bytes is cut and marked
  (:attr:`ConsoleLine.split`; ``console.log`` gets :data:`SPLIT_MARK` at the end).

Line endings: ``\\r\\n``, ``\\n`` and ``\\r`` each end a line, also when a read boundary falls
between ``\\r`` and ``\\n``; a line end directly after a bare ``\\r`` adds no empty line (``\\r\\r\\n``).

What cannot be kept: bytes the device sends while no console server is reading it (ser2net down,
cable out) are lost or buffered at the server's discretion -- a pty, for instance, discards or
keeps them depending on who holds it open. Everything the server *delivered* is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO

import serial
import serial.rfc2217

from rig.errors import DeviceError, LabFault

__all__ = [
    "ConsoleCapture",
    "ConsoleLine",
    "console_for",
    "ExpectTimeout",
    "SPLIT_MARK",
    "format_log_line",
    "DEFAULT_TAIL_LINES",
    "DEFAULT_MAX_LINE",
]

log = logging.getLogger(__name__)

#: Default number of recent lines kept in memory for expect() and crash context.
DEFAULT_TAIL_LINES = 5000
#: Default byte length after which a line without an end is cut.
DEFAULT_MAX_LINE = 4096
#: Appended in console.log to a line that was cut at ``max_line`` bytes (it continues on the next line).
SPLIT_MARK = " \u2026[split]"
#: How long one read blocks at most: bounds stop() latency and the disk-write delay of a trickle.
DEFAULT_READ_TIMEOUT = 0.05
#: Reconnect backoff, first and largest wait, in seconds.
DEFAULT_BACKOFF_MIN = 0.1
DEFAULT_BACKOFF_MAX = 2.0
#: How many of the last lines an ExpectTimeout message shows.
EXPECT_CONTEXT_LINES = 15

_EOL = re.compile(rb"\r\n|\r|\n")
#: An ANSI escape sequence (CSI, OSC, two-byte): stripped from console lines, live (here) and saved (rig.detect.triage).
ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Delete C0 controls but tab, DEL and C1 controls.
_CONTROL = {c: None for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0))}


@dataclass(frozen=True)
class ConsoleLine:
    """One console line. ``time`` is wall clock (epoch s), ``monotonic`` is ``time.monotonic()``,
    both taken when the line's last byte arrived. ``split``: the line was cut at ``max_line``
    bytes and continues in the next line. ``partial``: the line has no end yet (a prompt); only
    :meth:`ConsoleCapture.expect` returns such lines.
    """

    number: int
    time: float
    monotonic: float
    text: str
    split: bool = False
    partial: bool = False


class ExpectTimeout(DeviceError):
    """The device did not print what was expected in time. The message shows the last lines."""

    def __init__(self, message: str, *, pattern: str, last_lines: list[ConsoleLine]) -> None:
        super().__init__(message)
        self.pattern = pattern
        self.last_lines = last_lines


def format_log_line(wall: float, text: str) -> str:
    """The one ``console.log`` line format: ``2025-01-02T03:04:05.678Z text`` (rig.detect.detector parses it)."""
    stamp = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
    return f"{stamp[:-6]}Z {text}"


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (.*)$", re.S)


def parse_log_line(line: str) -> tuple[float, str, str] | None:
    """A ``console.log`` line -> (wall time, ``HH:MM:SS.mmm``, text); None if it is not in the format.

    The reader of :func:`format_log_line`'s lines, so the format has one owner (the HTML report reads
    console.log through it; rig.detect.detector strips this stamp among others from any saved console).
    """
    m = _LOG_LINE.match(line)
    if m is None:
        return None
    try:
        wall = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
    except ValueError:  # e.g. month 13: not a line the rig wrote
        return None
    return wall, m.group(1)[11:], m.group(2)


def _clean(raw: bytes) -> str:
    s = raw.decode("utf-8", errors="replace")
    if "\x1b" in s:
        s = ANSI_ESCAPE.sub("", s)
    return s.translate(_CONTROL)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    n = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


Subscriber = Callable[[ConsoleLine], None]


def console_for(url: str, log_dir: str | Path, *, name: str | None = None, baudrate: int = 115200,
                sources: list[str] | None = None, inventory: str | None = None, ssh: object = None,
                sudo: bool = False) -> ConsoleCapture:
    """The capture for a console URL: serial (tty, ``rfc2217://``, ``socket://``), ``netconsole://``,
    or ``ssh://kmsg`` (needs ``ssh``, the device's rig.transports.ssh.SshClient).

    One line path for every transport: whatever the transport, bytes reach ``console.raw`` first,
    then lines ``console.log``, then subscribers (see the module docstring).
    """
    if url.startswith("netconsole:"):
        from rig.console.netconsole import NetconsoleCapture  # the UDP transport builds on this module

        return NetconsoleCapture(url, log_dir, name=name, sources=sources, inventory=inventory)
    if url == "ssh://kmsg":
        from rig.console.sshkmsg import SshKmsgCapture
        from rig.transports.ssh import SshClient

        if not isinstance(ssh, SshClient):
            raise TypeError("console ssh://kmsg needs the device's SshClient")
        return SshKmsgCapture(ssh, log_dir, name=name or "device", sudo=sudo)
    return ConsoleCapture(url, log_dir, name=name, baudrate=baudrate)


class Rfc2217Serial(serial.rfc2217.Serial):
    """pyserial's RFC 2217 client, whose reader thread ends quietly when the server resets the connection.

    Why: the reader thread answers the server's telnet options itself, and a console server restarted
    at that moment (ser2net, a lab's terminal server) makes that answer fail; pyserial lets the
    ``ConnectionResetError`` out of its thread, a traceback on the rig's terminal. Here the thread just
    stops, which pyserial's ``read()`` already reports as a lost connection, and the capture reconnects.
    Writes from other threads (the rig's own, negotiation at open) raise as before.
    """

    def _internal_raw_write(self, data: bytes) -> None:
        try:
            super()._internal_raw_write(data)
        except OSError as e:
            if threading.current_thread() is not self._thread:
                raise
            log.debug("console %s: RFC 2217 reply failed (%s): the server went away", self.portstr, e)
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # the thread's next recv() ends it


class ConsoleCapture:
    """Capture one serial console (``/dev/ttyUSB0``, ``rfc2217://h:p[?ign_set_control]``,
    ``socket://h:p``) into ``log_dir`` from a background thread, with reconnects.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        url: str,
        log_dir: str | Path,
        *,
        baudrate: int = 115200,
        tail_lines: int = DEFAULT_TAIL_LINES,
        max_line: int = DEFAULT_MAX_LINE,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        backoff_min: float = DEFAULT_BACKOFF_MIN,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        name: str | None = None,
    ) -> None:
        if max_line < 16:
            raise ValueError("max_line must be at least 16 bytes")
        self.url = url
        self.name = name or url
        self.log_dir = Path(log_dir)
        self.raw_path = self.log_dir / "console.raw"
        self.log_path = self.log_dir / "console.log"
        self.baudrate = baudrate
        self.max_line = max_line
        self.read_timeout = read_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max

        self._cond = threading.Condition()
        self._tail: deque[ConsoleLine] = deque(maxlen=tail_lines)
        self._subscribers: list[Subscriber] = []
        self._sub_errors: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.SerialBase | None = None
        self._port_lock = threading.Lock()

        self._buf = bytearray()
        self._after_cr = False  # the last line ended with a bare \r
        self._last_no = 0
        self._raw_f: BinaryIO | None = None
        self._log_f: TextIO | None = None

        #: True while a connection to the console (server) is open.
        self.connected = False
        #: ``time.monotonic()`` since when we have had no connection (None while connected).
        self.disconnected_since: float | None = None
        #: Number of successful connections after the first one.
        self.reconnects = 0
        #: Last connect/read error, for lab_fault() (never contains secrets: URLs carry none).
        self.last_error: str | None = None
        #: Time of the last byte received (wall and monotonic), None before the first byte.
        self.last_byte_time: float | None = None
        self.last_byte_monotonic: float | None = None
        #: Total bytes received since start().
        self.bytes_received = 0
        self._connects = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> ConsoleCapture:
        """Open the log files (append) and start the reader thread. Returns self."""
        if self._thread is not None:
            raise RuntimeError(f"console {self.name}: already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._last_no = _count_lines(self.log_path)
        self._raw_f = open(self.raw_path, "ab", buffering=0)  # noqa: SIM115 -- closed in stop()
        self._log_f = open(self.log_path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        self._stop.clear()
        self.disconnected_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"console:{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reader, flush an unfinished line to the log, close files.

        Returns within about ``read_timeout`` when connected or waiting to reconnect; only a
        connect attempt in progress (pyserial's rfc2217 negotiation) can take longer.
        """
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                log.warning("console %s: reader thread did not stop within %.1f s", self.name, timeout)
        self._thread = None
        self._close_port()
        with self._cond:
            if self._buf:
                self._emit(bytes(self._buf), time.time(), time.monotonic(), split=False)
                self._buf.clear()
            for f in (self._raw_f, self._log_f):
                if f is not None:
                    f.close()
            self._raw_f = self._log_f = None
            self._cond.notify_all()

    def __enter__(self) -> ConsoleCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- queries
    def mark(self) -> int:
        """The number of the last complete line: pass it as ``since`` to expect only newer lines."""
        with self._cond:
            return self._last_no

    def tail(self, n: int | None = None) -> list[ConsoleLine]:
        """The last ``n`` (default: all kept) complete lines, oldest first."""
        with self._cond:
            lines = list(self._tail)
        return lines if n is None else lines[-n:]

    def wait_connected(self, timeout: float) -> bool:
        """Block until the reader holds a connection (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def lab_fault(self, min_down: float = 0.0) -> str | None:
        """A sentence saying the console *path* is broken (not the device), or None.

        Why: a silent console is a hang only if the console server is up; if we cannot even
        reach the server, the verdict must be lab-fault. ``min_down`` ignores short blips.
        """
        since = self.disconnected_since
        if self.connected or since is None:
            return None
        down = time.monotonic() - since
        if down < min_down:
            return None
        why = f" ({self.last_error})" if self.last_error else ""
        what = "never reached" if self._connects == 0 else "unreachable"
        return (
            f"console server {self.url} {what} for {down:.0f} s{why}; "
            f"check the console server (ser2net) and the cable/port"
        )

    def stats(self) -> dict[str, object]:
        """What the transport delivered, for reports (a netconsole adds its record and loss counts)."""
        return {
            "transport": "serial",
            "url": self.url,
            "bytes": self.bytes_received,
            "lines": self._last_no,
            "reconnects": self.reconnects,
        }

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(line)`` for every new complete line, from the reader thread, after
        the line is on disk. Exceptions are logged and ignored. Returns an unsubscribe function.
        """
        with self._cond:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._cond, contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def expect(self, pattern: str | re.Pattern[str], timeout: float, *, since: int | None = None) -> ConsoleLine:
        """Wait for a line matching ``pattern`` (``re.search``) among lines numbered > ``since``
        (default: :meth:`mark` now, i.e. only new lines); an unfinished line (a prompt) counts.

        Raises :class:`ExpectTimeout` (a DeviceError) with the last lines, or
        :class:`rig.errors.LabFault` if the console was disconnected when time ran out.
        Lines older than the in-memory tail are not searched.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            if since is None:
                since = self._last_no
            while True:
                for line in self._tail:
                    if line.number > since and rx.search(line.text):
                        return line
                if self._buf:
                    text = _clean(bytes(self._buf))
                    if rx.search(text):
                        return ConsoleLine(
                            number=self._last_no + 1,
                            time=self.last_byte_time or time.time(),
                            monotonic=self.last_byte_monotonic or time.monotonic(),
                            text=text,
                            partial=True,
                        )
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            last = list(self._tail)[-EXPECT_CONTEXT_LINES:]
        fault = self.lab_fault()
        if fault is not None:
            raise LabFault(
                f"console {self.name}: waited {timeout:.0f} s for {rx.pattern!r} but {fault}",
                component="console",
            )
        shown = "\n".join(f"  {ln.number}: {ln.text}" for ln in last) or "  (no output)"
        raise ExpectTimeout(
            f"console {self.name}: no line matching {rx.pattern!r} within {timeout:g} s "
            f"after line {since}; last lines:\n{shown}",
            pattern=rx.pattern,
            last_lines=last,
        )

    def write(self, data: bytes) -> None:
        """Send bytes to the device (a person or test typing). LabFault while disconnected."""
        with self._port_lock:
            port = self._port
            if port is None or not self.connected:
                raise LabFault(
                    f"console {self.name}: cannot write, not connected to {self.url}"
                    + (f" ({self.last_error})" if self.last_error else ""),
                    component="console",
                )
            try:
                port.write(data)
                port.flush()
            except (serial.SerialException, OSError) as e:
                raise LabFault(f"console {self.name}: write to {self.url} failed: {e}", component="console") from e

    # ---------------------------------------------------------------- reader thread
    def _open(self) -> serial.SerialBase:
        if self.url.startswith("rfc2217://"):
            return Rfc2217Serial(self.url, baudrate=self.baudrate, timeout=self.read_timeout)
        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.read_timeout)

    def _close_port(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
        self.connected = False
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def _run(self) -> None:
        backoff = self.backoff_min
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as e:
                self.last_error = str(e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            with self._port_lock:
                self._port = port
            with self._cond:
                self.connected = True
                self.disconnected_since = None
                self.last_error = None
                self._cond.notify_all()
            if self._connects:
                self.reconnects += 1
                log.info("console %s: reconnected (%d)", self.name, self.reconnects)
            self._connects += 1
            backoff = self.backoff_min
            try:
                while not self._stop.is_set():
                    data = port.read(65536)
                    if data:
                        self._on_bytes(data)
            except (serial.SerialException, OSError) as e:
                self.last_error = str(e) or type(e).__name__
                log.warning("console %s: connection lost: %s", self.name, self.last_error)
            except Exception:  # a bug of ours: keep capturing, but say so
                log.exception("console %s: reader error, reconnecting", self.name)
                self.last_error = "internal reader error"
            finally:
                self._close_port()
                if not self._stop.is_set():
                    self.disconnected_since = time.monotonic()
                with self._cond:
                    self._cond.notify_all()

    def _on_bytes(self, data: bytes) -> None:
        wall, mono = time.time(), time.monotonic()
        self._write_raw(data, wall, mono)
        self._feed_text(data, wall, mono)

    def _write_raw(self, data: bytes, wall: float, mono: float) -> None:
        """Exact bytes to console.raw, first (a transport that parses its input calls this before parsing)."""
        raw_f = self._raw_f
        if raw_f is not None:
            raw_f.write(data)  # unbuffered: on disk (in the page cache) before anything else
        self.bytes_received += len(data)
        self.last_byte_time, self.last_byte_monotonic = wall, mono

    def _feed_text(self, data: bytes, wall: float, mono: float) -> None:
        """Split console text into lines: console.log, the tail, then subscribers (reader thread)."""
        new: list[ConsoleLine] = []
        with self._cond:
            pos = 0
            for m in _EOL.finditer(data):
                self._buf += data[pos : m.start()]
                term = m.group()
                pos = m.end()
                bare_cr = term == b"\r"
                if not self._buf and (bare_cr or self._after_cr):
                    # "\r" then "\n" in the next read, "\r\r\n", or a lone "\r": no new line.
                    self._after_cr = bare_cr
                    continue
                self._after_cr = bare_cr
                self._split_long(wall, mono, new)
                new.append(self._emit(bytes(self._buf), wall, mono, split=False))
                self._buf.clear()
            self._buf += data[pos:]
            self._split_long(wall, mono, new)
            if new:
                self._cond.notify_all()
            subs = list(self._subscribers) if new else []
        for line in new:
            for cb in subs:
                try:
                    cb(line)
                except Exception:
                    n = self._sub_errors.get(id(cb), 0) + 1
                    self._sub_errors[id(cb)] = n
                    if n <= 3:
                        log.exception("console %s: subscriber %r failed (ignored)", self.name, cb)

    def _split_long(self, wall: float, mono: float, out: list[ConsoleLine]) -> None:
        while len(self._buf) > self.max_line:
            cut = self.max_line
            # Do not cut a UTF-8 sequence in two: back up over continuation bytes.
            for back in range(4):
                if (self._buf[cut - back] & 0xC0) != 0x80:
                    cut -= back
                    break
            out.append(self._emit(bytes(self._buf[:cut]), wall, mono, split=True))
            del self._buf[:cut]

    def _emit(self, raw: bytes, wall: float, mono: float, *, split: bool) -> ConsoleLine:
        """Write one line to console.log and the tail. Caller holds self._cond."""
        self._last_no += 1
        line = ConsoleLine(number=self._last_no, time=wall, monotonic=mono, text=_clean(raw), split=split)
        f = self._log_f
        if f is not None:
            f.write(format_log_line(wall, line.text) + (SPLIT_MARK if split else "") + "\n")
            f.flush()
        self._tail.append(line)
        return line
