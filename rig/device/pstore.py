"""Last words before the reboot: the kernel's pstore records, read after recovery and at run start.

Why: a laptop that hung or crashed with no console (or whose netconsole died with its network)
said its last words into persistent storage -- ramoops (reserved RAM, survives a *warm* reset only)
or efi-pstore (UEFI variables, survives a power cut). After the rig brings the device back, it
mounts pstore if needed, reads every ``/sys/fs/pstore/*`` record, runs the crash detector over them
and clears them, so the next crash is never confused with this one.

What pstore cannot hold (said in reports, not hidden): Debian's kernel has ``CONFIG_PSTORE_CONSOLE``
off, so only kmsg *dumps* are kept -- a panic or oops (and, with ramoops ``max_reason=4``, a clean
reboot). A silent hang without a panic leaves nothing; the inventory's ``[stall] panic_on_stall``
turns a detected stall into a panic so that it does leave a record.

A dump is split into parts (``Panic#1 Part1`` is the newest piece; efi-pstore writes many small
ones): the parts of one dump are put back in order, oldest first, before the detector reads them.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rig.detect.detector import Detector, Event, first_crash
from rig.errors import RigError

if TYPE_CHECKING:
    from rig.protocols import CommandRunner

log = logging.getLogger(__name__)

PSTORE_DIR = "/sys/fs/pstore"
#: The header line kmsg_dump writes at the top of each part: "Panic#1 Part1", "Oops#2 Part3".
_PART = re.compile(r"^(?P<reason>[A-Za-z]+)#(?P<count>\d+) Part(?P<part>\d+)\s*$")
#: A record bigger than this is cut (a day-long ftrace record must not fill the report).
MAX_RECORD_CHARS = 256 * 1024
NOTHING_AFTER_HANG = (
    "pstore is empty: the kernel left no last words (a hang without a panic writes nothing to pstore; "
    "Debian's kernel has CONFIG_PSTORE_CONSOLE off; set [monitor] panic_on_stall so a stall panics and leaves one)"
)


@dataclass
class PstoreRecord:
    """One dump (its parts joined) as pstore held it."""

    names: list[str]  # the files it came from, e.g. ["dmesg-ramoops-0"]
    kind: str  # dmesg, console, pmsg, ftrace, mce, ...
    backend: str  # ramoops, efi, ...
    reason: str | None  # Panic, Oops, Reboot, ... (from the part header)
    time: float  # the record's time as pstore gives it (file mtime), epoch seconds
    text: str
    events: list[Event] = field(default_factory=list)

    @property
    def crash(self) -> Event | None:
        return first_crash(self.events)

    def to_json(self) -> dict[str, object]:
        c = self.crash
        return {
            "files": self.names,
            "type": self.kind,
            "backend": self.backend,
            "reason": self.reason,
            "time": self.time,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)) if self.time else None,
            "crash": None if c is None else {"kind": c.kind.value, "line": c.line_no, "text": c.text},
            "events": [{"kind": e.kind.value, "line": e.line_no, "text": e.text} for e in self.events[:50]],
            "text": self.text,
        }


@dataclass
class PstoreHarvest:
    """What one look at pstore found: records (maybe none), or why it could not look."""

    when: str  # "run start", "after recovery"
    at: float
    records: list[PstoreRecord] = field(default_factory=list)
    error: str | None = None
    cleared: bool = False
    backend: str | None = None  # what /sys/module/pstore/parameters/backend says ("ramoops", "efi_pstore")

    @property
    def crash(self) -> tuple[PstoreRecord, Event] | None:
        for r in self.records:
            c = r.crash
            if c is not None:
                return r, c
        return None

    def summary(self) -> str:
        if self.error:
            return f"pstore {self.when}: not read ({self.error})"
        if not self.records:
            back = f" (backend {self.backend})" if self.backend else " (no pstore backend registered)"
            return f"pstore {self.when}: empty{back}"
        parts = []
        for r in self.records:
            c = r.crash
            stamp = time.strftime("%H:%M:%S", time.gmtime(r.time)) if r.time else "?"
            parts.append(f"{r.kind}/{r.backend} {r.reason or ''} at {stamp} UTC"
                         + (f": crash({c.kind.value}) {c.text.strip()[:120]}" if c else ""))
        return f"pstore {self.when}: {len(self.records)} record(s): " + "; ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "when": self.when,
            "at": self.at,
            "backend": self.backend,
            "error": self.error,
            "cleared": self.cleared,
            "summary": self.summary(),
            "records": [r.to_json() for r in self.records],
        }


def _script(token: str) -> str:
    p = PSTORE_DIR
    return "\n".join([
        f"[ -d {p} ] || exit 3",
        f"grep -qs ' {p} pstore ' /proc/mounts || mount -t pstore pstore {p} 2>/dev/null || exit 4",
        f"echo \"{token} backend $(cat /sys/module/pstore/parameters/backend 2>/dev/null)\"",
        f"for f in {p}/*; do",
        "  [ -f \"$f\" ] || continue",
        f"  echo \"{token} file ${{f##*/}} $(stat -c %Y \"$f\" 2>/dev/null || echo 0)\"",
        f"  head -c {MAX_RECORD_CHARS} \"$f\"",
        "  echo",
        "done",
        f"echo \"{token} end\"",
    ])


def parse_listing(out: str, token: str) -> tuple[str | None, list[tuple[str, float, str]]]:
    """(backend, [(file name, mtime, text)]) from the harvest script's output."""
    backend: str | None = None
    files: list[tuple[str, float, str]] = []
    cur: tuple[str, float] | None = None
    buf: list[str] = []
    for line in out.split("\n"):
        if line.startswith(token + " "):
            if cur is not None:
                files.append((cur[0], cur[1], "\n".join(buf).rstrip("\n")))
                cur, buf = None, []
            f = line.split(" ")
            if f[1] == "backend":
                backend = " ".join(f[2:]).strip() or None
            elif f[1] == "file" and len(f) >= 4:
                try:
                    mtime = float(f[3])
                except ValueError:
                    mtime = 0.0
                cur = (f[2], mtime)
            continue
        if cur is not None:
            buf.append(line)
    return backend, files


def assemble(files: list[tuple[str, float, str]]) -> list[PstoreRecord]:
    """Join the parts of each dump (newest part is Part1) into one record, oldest text first."""
    groups: dict[tuple[str, str, str], list[tuple[int, str, float, str]]] = {}
    singles: list[PstoreRecord] = []
    for name, mtime, text in files:
        kind, _, rest = name.partition("-")
        backend = rest.rsplit("-", 1)[0] if "-" in rest else rest
        first, _, body = text.partition("\n")
        m = _PART.match(first)
        if m is None:
            singles.append(PstoreRecord([name], kind, backend, None, mtime, text))
            continue
        key = (kind, backend, f"{m.group('reason')}#{m.group('count')}")
        groups.setdefault(key, []).append((int(m.group("part")), name, mtime, body))
    out: list[PstoreRecord] = []
    for (kind, backend, dump), parts in groups.items():
        parts.sort(key=lambda p: -p[0])  # Part N (oldest) ... Part 1 (newest)
        text = "\n".join(p[3].rstrip("\n") for p in parts)
        out.append(PstoreRecord([p[1] for p in parts], kind, backend, dump.split("#")[0],
                                max(p[2] for p in parts), text))
    out.extend(singles)
    out.sort(key=lambda r: r.time)
    for r in out:
        r.events = Detector(booted=True).scan(r.text.splitlines())
    return out


def speaks_of_hang(h: PstoreHarvest, hang_at: float) -> bool:
    """Whether this look at pstore can tell what a hang judged at ``hang_at`` was: one made by the recovery
    after it. A look from before the hang (run start, an earlier recovery) says nothing of it."""
    return h.when == "after recovery" and h.at > hang_at


def crash_after_hang(h: PstoreHarvest, hang_at: float) -> tuple[PstoreRecord, Event] | None:
    """The crash that the look at pstore after the recovery from a hang (judged at ``hang_at``) found: what
    the hang really was (None: no crash there, or a look that :func:`speaks_of_hang` says is not about it).

    Why a hang can be a crash: a panic raised in an NMI handler prints nothing until panic() has
    stopped the other CPUs and written the kmsg dump (the ramoops record: compressed, with ECC), and
    only then flushes the consoles. On a starved machine that flush can come seconds later (2.9 s on
    the lab's 2-core VM with two busy loops beside it, against 0.03-0.08 s in 25 other runs; more than
    the 10 s settle window in one CI run), or not at all where a console needs what the panic stopped.
    The console shows silence, the monitor judges a hang, and pstore holds the dump.
    """
    return h.crash if speaks_of_hang(h, hang_at) else None


def hang_amended(rec: PstoreRecord, ev: Event, judged: str) -> str:
    """The reason of a hang verdict that pstore turned into a crash (``judged``: the hang's own reason)."""
    return (
        f"pstore ({rec.kind}-{rec.backend}, {rec.reason or 'dump'}) after the recovery: "
        f"{ev.text.strip()[:200]} (the monitor had judged: hang: {judged})"
    )


def nothing_after_hang(h: PstoreHarvest) -> str:
    """What to say when a look at pstore after a hang found no crash (or could not look)."""
    return h.summary() if h.error else NOTHING_AFTER_HANG


def harvest(ssh: CommandRunner, device: str, *, when: str, sudo: bool = False, clear: bool = True) -> PstoreHarvest:
    """Read (and by default clear) the device's pstore. Never raises: a failure is the harvest's ``error``."""
    token = "rig-pstore-" + secrets.token_hex(6)
    h = PstoreHarvest(when=when, at=time.time())
    try:
        res = ssh.run(["sh", "-c", _script(token)], timeout=30, sudo=sudo)
    except RigError as exc:
        h.error = f"could not ask the device: {exc}"
        return h
    if res.exit_status == 3:
        h.error = f"{PSTORE_DIR} does not exist: this kernel has no pstore (CONFIG_PSTORE)"
        return h
    if res.exit_status == 4:
        h.error = f"pstore is not mounted and `mount -t pstore pstore {PSTORE_DIR}` failed (root needed?)"
        return h
    if res.exit_status != 0 or f"{token} end" not in res.out:
        h.error = f"the read stopped (exit status {res.exit_status}): {res.err.strip()[-200:]}"
        return h
    h.backend, files = parse_listing(res.out, token)
    h.records = assemble(files)
    if clear and files:
        names = " ".join(shlex.quote(f"{PSTORE_DIR}/{n}") for n, _, _ in files)
        try:
            cleared = ssh.run(["sh", "-c", f"rm -f {names}"], timeout=15, sudo=sudo)
            h.cleared = cleared.exit_status == 0
        except RigError as exc:
            log.warning("%s: pstore records not cleared: %s", device, exc)
    log.info("%s: %s", device, h.summary())
    return h
