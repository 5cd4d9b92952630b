"""``rig triage LOGFILE... [--json]``: classify saved console logs with the live monitor's detector.

Why a command of its own: the console is the only witness of a crash, and the witness is often
a file -- a console server's trace, a colleague's bug report, a past run's ``console.log``. The
question is the same as during a run ("did it crash, and how?"), so the answer comes from the
same :class:`rig.detect.Detector` the monitor feeds, run over the file's lines.

What a saved log may look like, and what is done about it (in this order):

* gzip'd, xz'd or bzip2'd (by its magic bytes, whatever the name): decompressed.
* a ser2net trace written with ``trace-*-hexdump: true`` (lines of ``[YYYY/MM/DD HH:MM:SS ]term
  5b 20 ... |[ ...|``): the device's bytes (``term`` lines; the client's ``tcp`` lines are
  dropped) are decoded back from the hex columns. A plain trace (no hexdump) is the device's
  bytes as they came, with ``YYYY/MM/DD HH:MM:SS OPEN/CLOSE`` lines when ``trace-*-timestamp``
  is on: those lines are left alone (they match no rule).
* ANSI escapes, NULs and other control characters (but tab): removed, as the console reader does.
  Bytes that are not UTF-8 become U+FFFD. A byte-order mark is dropped; UTF-16 with one (a
  Windows terminal's log) is decoded.
* ``\\r\\n``, ``\\n``: end a line. A bare ``\\r`` inside a line (a progress bar, a terminal that
  overwrote the line) splits it into pieces that the detector sees as separate lines, as the live
  console reader does; events still name the file's line number.
* a timestamp a logger or console server put in front of every line: ``2025/01/02 03:04:05 ``,
  ``2025-01-02 03:04:05[.123] ``, ``[2025-01-02 03:04:05.123] ``, ``[03:04:05.123] ``
  (minicom/tio/picocom style), ``Jan  2 03:04:05 `` (moreutils ``ts``), syslog/journal lines
  ``Jan  2 03:04:05 host kernel: `` and ``2025-01-02T03:04:05+0000 host kernel: ``, grabserial's
  ``[0.123456 0.000123] ``: removed when one of the first lines has it. The rig's own
  ``console.log`` stamp (``2025-01-02T03:04:05.678Z ``), syslog levels (``<4>``) and printk
  timestamps are the detector's business. Conserver's ``[-- MARK -- ...]`` / ``[-- Console up
  -- ...]`` lines are lines of their own and match no rule.

The JSON shape (``--json``; stable, versioned by ``schema``; docs/triage.md shows an example)::

    {"schema": 1,
     "files": [{"file": "<path as given, '-' for stdin>",
                "verdict": "ok|crash|reboot|fail|alert|warning|error",
                "crash": "<kind of the first crash event>" | null,
                "reason": "<title of the event behind the verdict>" | null,
                "lines": <lines in the file (decoded text for a hexdump trace)>,
                "format": "text|ser2net-hexdump", "compressed": "gzip" | "xz" | "bzip2" | null,
                "error": "<why the file could not be read>" | null,
                "events": [{"kind": "<rig.vocab.EventKind value>", "line": <1-based line>,
                            "timestamp": <printk seconds> | null, "text": "<the line>",
                            "title": "<short stable title>", "cpu": <int> | null}]}]}

Verdict (one word per file, the worst thing in it wins, in this order):
``crash`` (a crash-kind event, :data:`rig.vocab.CRASH_KINDS`; ``crash`` names the FIRST one, the
monitor's rule: ``crash(panic)``), ``reboot`` (a second ``Linux version`` banner), ``fail``
(Shadow-box failed to start), ``alert`` (Shadow-box reported an attack), ``warning`` (a kernel
WARNING), ``ok`` (nothing, or only NMIs and Shadow-box's start). Why no ``hang``: in the rig a
hang is a *silent* device (no heartbeat, no SSH), which a saved log cannot show; the kernel's own
hang reports (soft/hard lockup, RCU stall, hung task) and Shadow-box's HANG banner are crash kinds
in the monitor (``crash(hung_task)``, ``crash(shadowbox_hang)``), so they are here too. ``error``:
the file could not be read.

Exit status: 0 every file ``ok``; 1 some file is not ``ok``; 2 a usage error or a file that
could not be read (the other files are still classified and printed).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from rig.console import ANSI_ESCAPE  # one definition of "an ANSI escape" for live and saved consoles
from rig.detect import Detector, Event, first_crash
from rig.vocab import EventKind

__all__ = [
    "SCHEMA",
    "VERDICTS",
    "FileResult",
    "decode_console",
    "triage_bytes",
    "triage_path",
    "triage",
]

#: Version of the ``--json`` shape. Bump it when a field changes meaning or goes away.
SCHEMA = 1
#: Verdict words, worst first (the order in which they win).
VERDICTS = ("crash", "reboot", "fail", "alert", "warning", "ok")
#: Verdict of a file that could not be read (not in VERDICTS: it is not a classification).
ERROR = "error"

_NOTICE_VERDICT = (
    (EventKind.REBOOT, "reboot"),
    (EventKind.SHADOWBOX_FAIL, "fail"),
    (EventKind.SHADOWBOX_ALERT, "alert"),
    (EventKind.WARNING, "warning"),
)

_ANSI_B = re.compile(ANSI_ESCAPE.pattern.encode("ascii"))
#: C0 controls but tab, LF and CR, and DEL: dropped from the bytes (before decoding, so no
#: UTF-8 sequence is touched: none of these bytes occurs inside one).
_C0_DELETE = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_C1 = re.compile("[\x80-\x9f]")

# ser2net hexdump trace line: optional timestamp, direction name, 1..8 hex bytes, |ascii|.
_HEX_LINE = re.compile(
    rb"(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?(\w+) +((?:[0-9a-f]{2} ){1,8}) *\|.{0,8}\|\r?$", re.DOTALL
)
_SER2NET_EVENT = re.compile(rb"(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?(?:OPEN|CLOSE) ")
_DEVICE_SIDE = b"term"

# A logger's / console server's stamp in front of every line (see the module docstring).
_FOREIGN = re.compile(
    r"(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? "
    r"|\[(?:\d{4}-\d\d-\d\d[ T])?\d\d:\d\d:\d\d(?:[.,]\d+)?\] ?"
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?: \S+ kernel:)? "
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? \S+ kernel: "
    r"|\[\d+\.\d+ \d+\.\d+\] )"
)
_FOREIGN_LINE = re.compile("^" + _FOREIGN.pattern, re.MULTILINE)
#: How many first lines are looked at for a foreign stamp.
_SNIFF_LINES = 200

# printk time at the start of an event's text (after a syslog level).
_PRINTK_TS = re.compile(r"(?:<\d{1,3}>)?\[\s*(\d+\.\d+)\]")


@dataclass
class FileResult:
    """One file's classification (the ``files[]`` element of the JSON shape)."""

    file: str
    verdict: str
    crash: str | None = None
    reason: str | None = None
    lines: int = 0
    format: str = "text"
    compressed: str | None = None
    error: str | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def to_json(self) -> dict[str, Any]:
        """The documented ``files[]`` element (schema :data:`SCHEMA`)."""
        return {
            "file": self.file,
            "verdict": self.verdict,
            "crash": self.crash,
            "reason": self.reason,
            "lines": self.lines,
            "format": self.format,
            "compressed": self.compressed,
            "error": self.error,
            "events": [event_json(e) for e in self.events],
        }


def printk_time(text: str) -> float | None:
    """The kernel's ``[   12.345678]`` seconds at the start of a console line, or None."""
    m = _PRINTK_TS.match(text)
    return float(m.group(1)) if m else None


def event_json(e: Event) -> dict[str, Any]:
    """One ``events[]`` element: ``line`` is the file's line, ``timestamp`` printk seconds or null."""
    return {
        "kind": e.kind.value,
        "line": e.line_no,
        "timestamp": printk_time(e.text),
        "text": e.text,
        "title": e.title,
        "cpu": e.cpu,
    }


def _decode_hexdump(data: bytes) -> bytes | None:
    """The device's bytes from a ser2net hexdump trace, or None if ``data`` is not one.

    Why "term" only: with ``trace-both`` the client's typing (``tcp``) is interleaved; the device
    side is named ``term`` by ser2net (serial, pty and telnet accepters alike). A trace without any
    ``term`` line (another connector) keeps every direction.
    """
    head = data[:4096].split(b"\n")
    if len(data) > 4096:
        head.pop()  # may be cut in the middle
    head = head[:40]
    hex_lines = [ln for ln in head if _HEX_LINE.match(ln)]
    other = [ln for ln in head if ln.strip() and not _HEX_LINE.match(ln) and not _SER2NET_EVENT.match(ln)]
    if not hex_lines or other:
        return None
    rows: list[tuple[bytes, bytes]] = []
    for ln in data.split(b"\n"):
        m = _HEX_LINE.match(ln)
        if m:
            rows.append((m.group(1), m.group(2)))
    keep_all = not any(side == _DEVICE_SIDE for side, _ in rows)
    return b"".join(bytes.fromhex(hx.decode("ascii")) for side, hx in rows if keep_all or side == _DEVICE_SIDE)


#: (magic bytes, name, decompress): what bug reports arrive as; told by content, whatever the file name.
_COMPRESSORS: tuple[tuple[bytes, str, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
    (b"BZh", "bzip2", bz2.decompress),
)
#: What the decompressors raise for a broken file (bz2: ValueError when cut short).
_BROKEN = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


class BrokenCompressedFile(Exception):
    """A gzip/xz/bzip2 file that does not decompress (cut short, corrupt); the message names the format."""


def decode_console(data: bytes) -> tuple[list[str], list[int] | None, str, str | None]:
    """Bytes of a saved console -> ``(lines for the detector, file line of each or None, format, compressed)``.

    The second item is None when every detector line is the file line of the same number (no
    bare ``\\r`` inside a line); otherwise it maps detector line ``i`` (0-based) to its file line.
    Raises ``BrokenCompressedFile`` for a broken gzip, xz or bzip2 file.
    """
    compressed = None
    for magic, name, decompress in _COMPRESSORS:
        if data.startswith(magic):
            try:
                data, compressed = decompress(data), name
            except _BROKEN as exc:
                raise BrokenCompressedFile(f"not a readable {name} file ({exc})") from exc
            break
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a byte-order mark (a Windows tool's log)
        data = data.decode("utf-16", errors="replace").encode("utf-8")
    elif data[:3] == b"\xef\xbb\xbf":  # UTF-8 byte-order mark: not part of the first line
        data = data[3:]
    fmt = "text"
    decoded = _decode_hexdump(data)
    if decoded is not None:
        data, fmt = decoded, "ser2net-hexdump"
    if b"\x1b" in data:
        data = _ANSI_B.sub(b"", data)
    data = data.translate(None, _C0_DELETE)
    text = data.decode("utf-8", errors="replace")
    if _C1.search(text):
        text = _C1.sub("", text)
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    sniff = text[: 200 * _SNIFF_LINES].split("\n", _SNIFF_LINES)[:_SNIFF_LINES]
    if any(_FOREIGN.match(ln) for ln in sniff):
        text = _FOREIGN_LINE.sub("", text)
    lines = text.split("\n") if text else []
    if lines and lines[-1] == "":
        lines.pop()  # a final line end does not start another line
    if "\r" not in text:
        return lines, None, fmt, compressed
    pieces: list[str] = []
    numbers: list[int] = []
    for n, line in enumerate(lines, 1):
        if "\r" in line:
            line = line.rstrip("\r")
            if "\r" in line:
                for piece in line.split("\r"):
                    if piece:
                        pieces.append(piece)
                        numbers.append(n)
                continue
        pieces.append(line)
        numbers.append(n)
    return pieces, numbers, fmt, compressed


def _verdict(events: list[Event]) -> tuple[str, str | None, str | None]:
    crash = first_crash(events)
    if crash is not None:
        return "crash", crash.kind.value, crash.title
    kinds = {e.kind: e for e in reversed(events)}  # the first event of each kind
    for kind, word in _NOTICE_VERDICT:
        if kind in kinds:
            return word, None, kinds[kind].title
    return "ok", None, None


def triage_bytes(data: bytes, name: str, *, mid_run: bool = False) -> FileResult:
    """Classify one saved console given as bytes. ``mid_run``: the log starts after a boot, so
    its first ``Linux version`` banner is already a reboot."""
    try:
        lines, numbers, fmt, compressed = decode_console(data)
    except BrokenCompressedFile as exc:
        return FileResult(name, ERROR, error=f"{name}: {exc}; decompress it by hand to check")
    events = Detector(booted=mid_run).scan(lines)
    if numbers is not None:
        events = [_renumber(e, numbers[e.line_no - 1]) for e in events]
    verdict, crash, reason = _verdict(events)
    n_lines = numbers[-1] if numbers else len(lines)
    return FileResult(name, verdict, crash, reason, n_lines, fmt, compressed, None, events)


def _renumber(e: Event, line_no: int) -> Event:
    return Event(kind=e.kind, line_no=line_no, text=e.text, time=e.time, cpu=e.cpu, title=e.title)


def triage_path(path: str, *, mid_run: bool = False) -> FileResult:
    """Classify one file (``-``: standard input). A file that cannot be read gives verdict ``error``
    with a message that names it; nothing is raised."""
    if path == "-":
        return triage_bytes(sys.stdin.buffer.read(), "-", mid_run=mid_run)
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return FileResult(path, ERROR, error=f"{path}: no such file; check the path")
    except IsADirectoryError:
        return FileResult(path, ERROR, error=f"{path}: is a folder; give the console log files in it")
    except OSError as exc:
        return FileResult(path, ERROR, error=f"{path}: cannot read it ({exc.strerror or exc}); check its permissions")
    return triage_bytes(data, path, mid_run=mid_run)


# --- the command ------------------------------------------------------------------------------------


def _excerpt(text: str, width: int = 150) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _print_text(r: FileResult, show_all: bool) -> None:
    if r.error is not None:
        click.echo(f"{r.file}: error")
        return
    head = f"{r.file}: {r.verdict}"
    if r.crash:
        head += f" ({r.crash})"
    extra = [f"{r.lines} lines", f"{len(r.events)} events"]
    if r.format != "text":
        extra.append(r.format)
    if r.compressed:
        extra.append(r.compressed)
    click.echo(f"{head}  [{', '.join(extra)}]")
    hidden = [e for e in r.events if e.kind is EventKind.NMI] if not show_all else []
    for e in r.events:
        if hidden and e.kind is EventKind.NMI:
            continue
        ts = printk_time(e.text)
        stamp = f"{ts:12.6f}" if ts is not None else f"{'-':>12}"
        click.echo(f"  {e.line_no:>7}  {stamp}  {e.kind.value:<15}  {_excerpt(e.text)}")
    if hidden:
        click.echo(
            f"  {len(hidden)} nmi events (lines {hidden[0].line_no}-{hidden[-1].line_no}) not listed; --all lists them"
        )


@click.command("triage")
@click.argument("logfiles", nargs=-1, required=True, metavar="LOGFILE...")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (schema 1, see docs/triage.md).")
@click.option("--all", "show_all", is_flag=True, help="Also list NMI events in the text output.")
@click.option(
    "--mid-run", is_flag=True, help="The logs start after a boot: their first 'Linux version' banner is a reboot."
)
def triage(logfiles: Sequence[str], as_json: bool, show_all: bool, mid_run: bool) -> None:
    """Classify saved console logs (plain, .gz/.xz/.bz2, ser2net traces, '-' for stdin) with the monitor's detector.

    One verdict word per file: crash, reboot, fail, alert, warning or ok (docs/triage.md).
    Exit status: 0 all ok, 1 any other verdict, 2 a usage error or an unreadable file.
    """
    results = []
    stdin_used = False
    for path in logfiles:
        if path == "-":
            if stdin_used:
                raise click.UsageError("'-' (standard input) can be given once")
            stdin_used = True
        r = triage_path(path, mid_run=mid_run)
        if r.error is not None:
            click.echo(f"rig triage: {r.error}", err=True)
        results.append(r)
        if not as_json:
            _print_text(r, show_all)
    if as_json:
        click.echo(json.dumps({"schema": SCHEMA, "files": [r.to_json() for r in results]}, indent=1))
    if any(r.error is not None for r in results):
        sys.exit(2)
    sys.exit(0 if all(r.ok for r in results) else 1)
