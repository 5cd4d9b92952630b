"""``rig triage LOGFILE... [--json]``: classify saved console logs with the live monitor's detector.

Why a command of its own: the console is the only witness of a crash, and the witness is often
a file -- a console server's trace, a colleague's bug report, a past run's ``console.log``. The
question is the same as during a run ("did it crash, and how?"), so the answer comes from the
same :class:`rig.detect.detector.Detector` the monitor feeds, run over the file's lines.

What a saved log may look like, and what is done about it (in this order):

* gzip'd, xz'd or bzip2'd (by its magic bytes, whatever the name): decompressed.
* a ser2net trace written with ``trace-*-hexdump: true`` (lines of ``[YYYY/MM/DD HH:MM:SS ]term
  5b 20 ... |[ ...|``): the device's bytes (``term`` lines; the client's ``tcp`` lines are
  dropped; a trace whose first 40 lines hold no ``term`` row keeps every direction) are decoded
  back from the hex columns. A plain trace (no hexdump) is the device's
  bytes as they came, with ``YYYY/MM/DD HH:MM:SS OPEN/CLOSE`` lines when ``trace-*-timestamp``
  is on: those lines are left alone (they match no rule).
* ANSI escapes, NULs and other control characters (but tab): removed, as the console reader does.
  Bytes that are not UTF-8 become U+FFFD. A byte-order mark is dropped; UTF-16 with one (a
  Windows terminal's log) is decoded.
* ``\\r\\n``, ``\\n``: end a line (one with no end in :data:`MAX_LINE` characters is cut there).
  A bare ``\\r`` inside a line (a progress bar, a terminal that overwrote the line) splits it
  into pieces that the detector sees as separate lines, as the live console reader does; events
  still name the file's line number.
* a timestamp a logger or console server put in front of every line: ``2025/01/02 03:04:05 ``,
  ``2025-01-02 03:04:05[.123] ``, ``[2025-01-02 03:04:05.123] ``, ``[03:04:05.123] ``
  (minicom/tio/picocom style), ``Jan  2 03:04:05 `` (moreutils ``ts``), syslog/journal lines
  ``Jan  2 03:04:05 host kernel: `` and ``2025-01-02T03:04:05+0000 host kernel: ``, grabserial's
  ``[0.123456 0.000123] ``: removed when one of the first lines has it. The rig's own
  ``console.log`` stamp (``2025-01-02T03:04:05.678Z ``), syslog levels (``<4>``) and printk
  timestamps are the detector's business. Conserver's ``[-- MARK -- ...]`` / ``[-- Console up
  -- ...]`` lines are lines of their own and match no rule.

The JSON shape (``--json``; stable, versioned by ``schema``; docs/triage.md shows an example)::

    {"schema": 2,
     "files": [{"file": "<path as given, '-' for stdin>",
                "verdict": "ok|crash|reboot|fail|alert|warning|error",
                "crash": "<kind of the first crash event>" | null,
                "reason": "<title of the event behind the verdict>" | null,
                "lines": <lines in the file (decoded text for a hexdump trace)>,
                "format": "text|ser2net-hexdump", "compressed": "gzip" | "xz" | "bzip2" | null,
                "error": "<why the file could not be read>" | null,
                "events": [{"kind": "<rig.vocab.EventKind value>", "line": <1-based line>,
                            "timestamp": <printk seconds> | null, "text": "<the line>",
                            "title": "<report type> in <guilty function>", "cpu": <int> | null}],
                "events_dropped": <events past MAX_EVENTS, not listed>}]}

Verdict (one word per file, the worst thing in it wins, in this order):
``crash`` (a crash-kind event, :data:`rig.vocab.CRASH_KINDS`; ``crash`` names the FIRST one, the
monitor's rule: ``crash(panic)``), ``reboot`` (a second ``Linux version`` banner), ``fail``
(Shadow-box failed to start), ``alert`` (Shadow-box reported an attack), ``warning`` (a kernel
WARNING), ``ok`` (nothing, or only NMIs and Shadow-box's start). Why no ``hang``: in the rig a
hang is a *silent* device (no heartbeat, no SSH), which a saved log cannot show; the kernel's own
hang reports (soft/hard lockup, RCU stall, hung task) and Shadow-box's HANG banner are crash kinds
in the monitor (``crash(hung_task)``, ``crash(shadowbox_hang)``), so they are here too. ``error``:
the file could not be read.

Everything is streamed: read and decompressed :data:`CHUNK` bytes at a time, fed to the detector in
batches, so memory is bounded whatever the file's size. Refused (verdict ``error``): a path that is
not a regular file (``/dev/zero``, a FIFO: read a stream as ``-``), a file that is mostly not text
(:data:`BINARY_SHARE`), a file that runs the process out of memory.

Exit status: 0 every file ``ok``; 1 some file is not ``ok``; 2 a usage error or a file that
could not be read (the other files are still classified and printed).
"""

from __future__ import annotations

import bz2
import codecs
import io
import itertools
import json
import lzma
import os
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import click

from rig.console.capture import ANSI_ESCAPE  # one definition of "an ANSI escape" for live and saved consoles
from rig.detect.detector import Detector, Event, first_crash
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
#: 2 (issue 16): titles in kernel-developer form (``<report type> in <guilty function>``), no CPU
#: numbers in them, a reboot is ``unexpected reboot``; lockdep and sanitizer reports are ``bug``
#: events; ``events_dropped`` added; a binary or non-regular file is an ``error``.
SCHEMA = 2
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
    #: Events found but not listed (past :data:`MAX_EVENTS`; never the first of a kind).
    events_dropped: int = 0

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
            "events_dropped": self.events_dropped,
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


def _hexdump_keep(head: bytes) -> tuple[bool, bool]:
    """``(is_a_hexdump_trace, keep_every_direction)`` from the first bytes of a file.

    Why "term" only: with ``trace-both`` the client's typing (``tcp``) is interleaved; the device
    side is named ``term`` by ser2net (serial, pty and telnet accepters alike). A trace whose first
    lines hold no ``term`` row (another connector) keeps every direction.
    """
    lines = head[:4096].split(b"\n")
    if len(head) > 4096:
        lines.pop()  # may be cut in the middle
    lines = lines[:40]
    hex_rows = [m for ln in lines if (m := _HEX_LINE.match(ln))]
    other = [ln for ln in lines if ln.strip() and not _HEX_LINE.match(ln) and not _SER2NET_EVENT.match(ln)]
    if not hex_rows or other:
        return False, False
    return True, not any(m.group(1) == _DEVICE_SIDE for m in hex_rows)


#: (magic bytes, name): what bug reports arrive as; told by content, whatever the file name.
_COMPRESSORS: tuple[tuple[bytes, str], ...] = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"))
#: What the decompressors raise for a broken file.
_BROKEN = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
#: Bytes read (and, decompressed, produced) per step: memory stays a few MB whatever the file size.
CHUNK = 1 << 20
#: A "line" with no line end in this many characters is cut (2 GiB without a newline must not be
#: one string); the cut counts as a line end.
MAX_LINE = 1 << 20
#: Events kept per file; the first of each kind is always kept (the verdict needs it), the rest
#: only counted (an NMI soak prints millions).
MAX_EVENTS = 10_000
#: Share of bytes that are control characters or not UTF-8 above which a file is "not console text"
#: (a console log has a few: line noise, a NUL run at power-on; /bin/ls has ~40 %).
BINARY_SHARE = 0.30
#: Bytes a file must have before the share above is judged.
BINARY_MIN_BYTES = 512
_NONTEXT = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])


class BrokenCompressedFile(Exception):
    """A gzip/xz/bzip2 file that does not decompress (cut short, corrupt); the message names the format."""


class NotConsoleText(Exception):
    """A file that is mostly not text (a binary); the message says how much."""


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk


def _inflate(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """Decompress ``chunks`` (gzip, xz or bzip2; concatenated members too), at most CHUNK bytes at a time.

    Why not gzip.decompress: a 9 MB gzip can expand to 2 GiB; here no step holds more than
    :data:`CHUNK` decompressed bytes. Raises BrokenCompressedFile for a cut or corrupt file.
    """
    try:
        if name == "gzip":
            yield from _inflate_zlib(chunks)
        else:
            yield from _inflate_stream(chunks, lzma.LZMADecompressor if name == "xz" else bz2.BZ2Decompressor)
    except _BROKEN as exc:
        raise BrokenCompressedFile(f"not a readable {name} file ({exc})") from exc


def _inflate_zlib(chunks: Iterator[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits=31)
    for chunk in chunks:
        buf = chunk
        while buf:
            out = d.decompress(buf, CHUNK)
            if out:
                yield out
            buf = d.unconsumed_tail
            if d.eof:
                rest = d.unused_data  # the input after this member (unconsumed_tail holds it too)
                if not rest.strip(b"\x00"):  # padding after the last member
                    buf = b""
                    break
                d, buf = zlib.decompressobj(wbits=31), rest
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")


def _inflate_stream(chunks: Iterator[bytes], make: Callable[[], Any]) -> Iterator[bytes]:
    d = make()
    for chunk in chunks:
        data = chunk
        while True:
            if d.eof:
                rest = d.unused_data + data  # data is empty after a first decompress() call
                if not rest.strip(b"\x00"):
                    break
                d, data = make(), rest
            out = d.decompress(data, CHUNK)
            data = b""
            if out:
                yield out
            if d.needs_input and not d.eof:
                break
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")


@dataclass
class _Reading:
    """What reading a file found out besides its lines (the ``format``/``compressed`` fields)."""

    fmt: str = "text"
    compressed: str | None = None
    file_lines: int = 0
    bytes_total: int = 0
    bytes_nontext: int = 0


def _console_lines(f: BinaryIO, info: _Reading) -> Iterator[tuple[list[str], list[int] | None, int]]:
    """A saved console's bytes -> batches of ``(lines for the detector, their file lines, first file line)``.

    The second item is None when the batch's lines are file lines ``first, first + 1, ...`` (no
    bare ``\r`` split one). The steps are the module docstring's, in its order, on one chunk at a time.
    """
    chunks = _chunks(f)
    head = b""
    for chunk in chunks:  # enough bytes to tell the compression
        head += chunk
        if len(head) >= 8:
            break
    stream: Iterator[bytes] = itertools.chain([head], chunks) if head else iter(())
    for magic, name in _COMPRESSORS:
        if head.startswith(magic):
            stream, info.compressed = _inflate(stream, name), name
            break
    # the first 64 KiB of the (decompressed) text tell its encoding and format
    head = b""
    for chunk in stream:
        head += chunk
        if len(head) >= 65536:
            break
    body: Iterator[bytes] = itertools.chain([head], stream) if head else iter(())
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a byte-order mark (a Windows tool's log)
        body = _utf16_to_utf8(body)
        head = next(body, b"")
        body = itertools.chain([head], body)
    elif head[:3] == b"\xef\xbb\xbf":  # UTF-8 byte-order mark: not part of the first line
        body = itertools.chain([head[3:]], itertools.islice(body, 1, None))
        head = head[3:]
    is_hex, keep_all = _hexdump_keep(head)
    if is_hex:
        info.fmt = "ser2net-hexdump"
        body = _hexdump_bytes(body, keep_all)
    blocks = _texts(body, info)
    first: list[tuple[list[str], bool]] = []
    for block in blocks:  # the first lines tell whether a logger stamped every line
        first.append(block)
        if sum(len(b[0]) for b in first) >= _SNIFF_LINES:
            break
    sniff = [ln for block, _cr in first for ln in block][:_SNIFF_LINES]
    foreign = any(_FOREIGN.match(ln[:200]) for ln in sniff)
    n = 0  # file lines so far
    for lines, has_cr in itertools.chain(first, blocks):
        if foreign:
            lines = [_FOREIGN_LINE.sub("", ln, count=1) for ln in lines]
        start = n + 1
        n += len(lines)
        if not has_cr:
            yield lines, None, start
            continue
        pieces: list[str] = []
        numbers: list[int] = []
        for i, line in enumerate(lines, start):
            if "\r" in line:
                line = line.rstrip("\r")
                if "\r" in line:
                    for piece in line.split("\r"):
                        if piece:
                            pieces.append(piece)
                            numbers.append(i)
                    continue
            pieces.append(line)
            numbers.append(i)
        yield pieces, numbers, start
    info.file_lines = n


def _utf16_to_utf8(body: Iterator[bytes]) -> Iterator[bytes]:
    dec = codecs.getincrementaldecoder("utf-16")(errors="replace")
    for chunk in body:
        yield dec.decode(chunk).encode("utf-8")
    yield dec.decode(b"", final=True).encode("utf-8")


def _hexdump_bytes(body: Iterator[bytes], keep_all: bool) -> Iterator[bytes]:
    """The device's bytes from a ser2net hexdump trace (rows of ``term 5b 20 ... |[ ...|``)."""
    carry = b""
    for chunk in body:
        rows = (carry + chunk).split(b"\n")
        carry = rows.pop()
        if len(carry) > MAX_LINE:
            carry = b""  # no hexdump row is that long
        out = []
        for ln in rows:
            m = _HEX_LINE.match(ln)
            if m and (keep_all or m.group(1) == _DEVICE_SIDE):
                out.append(bytes.fromhex(m.group(2).decode("ascii")))
        if out:
            yield b"".join(out)
    m = _HEX_LINE.match(carry)
    if m and (keep_all or m.group(1) == _DEVICE_SIDE):
        yield bytes.fromhex(m.group(2).decode("ascii"))


def _texts(body: Iterator[bytes], info: _Reading) -> Iterator[tuple[list[str], bool]]:
    """Bytes -> blocks of text lines with ANSI escapes, control characters and bad UTF-8 removed,
    each with whether a line of it may hold a bare ``\r``.

    Blocks, not lines: a Python step per line would be most of the reading's cost.
    """
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    carry = b""
    tail = ""
    for chunk in itertools.chain(body, [None]):
        if chunk is None:
            block, carry = carry, b""
            final = True
        else:
            block = carry + chunk
            cut = block.rfind(b"\n") + 1
            if cut == 0 and len(block) <= MAX_LINE:
                carry = block
                continue
            if cut == 0:
                cut = len(block)
            block, carry = block[:cut], block[cut:]
            final = False
        info.bytes_total += len(block)
        if b"\x1b" in block:
            block = _ANSI_B.sub(b"", block)
        kept = block.translate(None, _C0_DELETE)
        info.bytes_nontext += len(block) - len(block.translate(None, _NONTEXT))
        text = dec.decode(kept, final=final)
        if "\ufffd" in text:
            info.bytes_nontext += text.count("\ufffd")
        if _C1.search(text):
            text = _C1.sub("", text)
        if "\r\n" in text:
            text = text.replace("\r\n", "\n")
        text = tail + text
        lines = text.split("\n")
        tail = lines.pop()
        if len(tail) > MAX_LINE:
            lines.append(tail)
            tail = ""
        if lines:
            yield lines, "\r" in text
    if tail:
        yield [tail], "\r" in tail


def decode_console(data: bytes) -> tuple[list[str], list[int] | None, str, str | None]:
    """Bytes of a saved console -> ``(lines for the detector, file line of each or None, format, compressed)``.

    The second item is None when every detector line is the file line of the same number (no
    bare ``\\r`` inside a line); otherwise it maps detector line ``i`` (0-based) to its file line.
    Raises ``BrokenCompressedFile`` for a broken gzip, xz or bzip2 file. (The reading step of
    :func:`triage_stream`, all at once: for tests and small files.)
    """
    info = _Reading()
    lines: list[str] = []
    numbers: list[int] = []
    for batch, nums, start in _console_lines(io.BytesIO(data), info):
        lines += batch
        numbers += nums if nums is not None else range(start, start + len(batch))
    same = all(n == i for i, n in enumerate(numbers, 1))
    return lines, None if same else numbers, info.fmt, info.compressed


def _verdict(events: list[Event]) -> tuple[str, str | None, str | None]:
    crash = first_crash(events)
    if crash is not None:
        return "crash", crash.kind.value, crash.title
    kinds = {e.kind: e for e in reversed(events)}  # the first event of each kind
    for kind, word in _NOTICE_VERDICT:
        if kind in kinds:
            return word, None, kinds[kind].title
    return "ok", None, None


def triage_stream(f: BinaryIO, name: str, *, mid_run: bool = False) -> FileResult:
    """Classify one saved console read from ``f`` in chunks (memory bounded whatever its size).

    A file that cannot be decompressed, that is mostly not text, or that does not fit in memory
    gives verdict ``error`` with a message that names it (and the events found until then).
    """
    info = _Reading()
    det = Detector(booted=mid_run)
    events: list[Event] = []
    seen: set[EventKind] = set()
    dropped = 0
    error: str | None = None

    def keep(new: list[Event]) -> None:
        nonlocal dropped
        for e in new:
            if len(events) < MAX_EVENTS or e.kind not in seen:
                events.append(e)
                seen.add(e.kind)
            else:
                dropped += 1

    try:
        for lines, numbers, start in _console_lines(f, info):
            base = det.line_no
            new = det.scan(lines)
            for e in new:  # the file's line (a \r piece keeps its line's)
                i = e.line_no - base - 1
                e.line_no = numbers[i] if numbers is not None else start + i
            keep(new)
    except BrokenCompressedFile as exc:
        error = f"{name}: {exc}; decompress it by hand to check"
    except MemoryError:
        error = f"{name}: ran out of memory reading it; split it or give a smaller part (e.g. with tail -c)"
    if error is None and info.bytes_total >= BINARY_MIN_BYTES:
        share = info.bytes_nontext / info.bytes_total
        if share > BINARY_SHARE:
            error = (
                f"{name}: not console text ({share:.0%} of its {info.bytes_total} bytes are control characters "
                "or not UTF-8: a binary file?); give a console log"
            )
    verdict, crash, reason = _verdict(events)
    if error is not None:
        verdict = ERROR
    return FileResult(name, verdict, crash, reason, info.file_lines, info.fmt, info.compressed, error, events, dropped)


def triage_bytes(data: bytes, name: str, *, mid_run: bool = False) -> FileResult:
    """Classify one saved console given as bytes. ``mid_run``: the log starts after a boot, so
    its first ``Linux version`` banner is already a reboot."""
    return triage_stream(io.BytesIO(data), name, mid_run=mid_run)


def triage_path(path: str, *, mid_run: bool = False) -> FileResult:
    """Classify one file (``-``: standard input). A file that cannot be read gives verdict ``error``
    with a message that names it; nothing is raised.

    Only regular files are read by name: ``/dev/zero`` never ends and a FIFO given by name would
    block until a writer comes; a pipe is read as ``-`` (``producer | rig triage -``).
    """
    if path == "-":
        return triage_stream(sys.stdin.buffer, "-", mid_run=mid_run)
    not_regular = FileResult(
        path,
        ERROR,
        error=f"{path}: not a regular file (a device, FIFO or socket); "
        f"to read a stream give '-' and redirect it: rig triage - < {path}",
    )
    try:
        # stat before open: opening a FIFO by name would wait for a writer
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            return not_regular
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
                return not_regular
            return triage_stream(f, path, mid_run=mid_run)
    except FileNotFoundError:
        return FileResult(path, ERROR, error=f"{path}: no such file; check the path")
    except IsADirectoryError:
        return FileResult(path, ERROR, error=f"{path}: is a folder; give the console log files in it")
    except OSError as exc:
        return FileResult(path, ERROR, error=f"{path}: cannot read it ({exc.strerror or exc}); check its permissions")


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
    if r.reason:
        head += f": {r.reason}"
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
    if r.events_dropped:
        click.echo(f"  {r.events_dropped} more events not kept (more than {MAX_EVENTS} in one file)")
    if hidden:
        click.echo(
            f"  {len(hidden)} nmi events (lines {hidden[0].line_no}-{hidden[-1].line_no}) not listed; --all lists them"
        )


@click.command("triage")
@click.argument("logfiles", nargs=-1, required=True, metavar="LOGFILE...")
@click.option("--json", "as_json", is_flag=True, help=f"One JSON document (schema {SCHEMA}, see docs/triage.md).")
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
        try:
            r = triage_path(path, mid_run=mid_run)
        except MemoryError:  # anywhere else than in the reading loop (which reports it itself)
            r = FileResult(path, ERROR, error=f"{path}: ran out of memory classifying it; give a smaller part")
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
