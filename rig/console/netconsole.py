"""netconsole: a console for laptops without a serial port (the kernel log over UDP).

Why netconsole: a laptop has no UART, but its kernel can send every log record as a UDP datagram
through netpoll, which works from IRQ, NMI and panic context -- the NMI backtraces, Shadow-box's
lines and the panic text all arrive, like on a serial console. Userspace console output does not
travel (only the kernel log does), so whatever the rig must see is written to ``/dev/kmsg`` (the
monitor's heartbeat already is, and so is the lab's ready banner).

Three parts, one module (the transport and what it needs on the device):

* :class:`NetconsoleStream` (pure): one datagram in, console text out. The extended format
  (``netconsole=+...``, configfs ``extended``) starts each record with
  ``<level>,<seq>,<usec>,<flag>[,ncfrag=<off>/<total>];`` -- parsed and removed, the record put back
  as ``[ssss.uuuuuu] text`` (what the serial console prints, so the detector and triage read both the
  same), records over 1000 bytes joined from their ``ncfrag`` fragments (in any order), and
  **sequence gaps counted**: a report never claims to hold the whole log when records were lost.
  A sequence that starts again from a lower number with other content is a reboot, not a duplicate.
  Datagrams without that header are plain netconsole text and pass through as they are.
* :class:`NetconsoleCapture`: a :class:`rig.console.capture.ConsoleCapture` whose transport is a UDP
  socket: every datagram's exact bytes to ``console.raw`` first, then the stream's text through the
  very same line path as a serial console (``console.log``, tail, subscribers, ``expect``).
* :class:`NetconsoleTarget`: a dynamic target set up on the device over SSH (configfs), checked,
  and removed again at close; or nothing at all when the device's boot parameter sends already.

**One UDP port per device** (not one port told apart by source address): the plugin drives each
device from its own pytest-xdist worker process, and two processes cannot share one bound UDP
port (SO_REUSEPORT would hand each datagram to a random one); the lab's guests all send from
127.0.0.1 through QEMU's user-mode NAT, so source addresses cannot tell them apart; and a laptop's
address may change with DHCP. The source address is still checked: datagrams from anyone but the
device are kept on disk (``netconsole-foreign.log``) and counted, never mixed into its console.

What netconsole cannot tell: it shares the NIC with SSH, so a dead network looks like a hang; and
datagrams the controller never received (lost on the wire, or overflowing the socket buffer, counted
as ``socket_drops``) are known only through the sequence gaps.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import re
import shlex
import socket
import struct
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from rig.console.capture import (
    DEFAULT_MAX_LINE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_TAIL_LINES,
    ConsoleCapture,
    format_log_line,
)
from rig.errors import ConfigError, DeviceError, LabFault, RigError, Unavailable

if TYPE_CHECKING:
    from rig.inventory import NetconsoleSetup
    from rig.protocols import CommandRunner

__all__ = [
    "NetconsoleCapture",
    "NetconsoleSetupError",
    "NetconsoleStream",
    "NetconsoleTarget",
    "SeqGap",
    "parse_netconsole_url",
]

log = logging.getLogger(__name__)

SCHEME = "netconsole"
#: ``[release,]<level>,<seq>,<usec>,<flag>[,more fields];`` (kernel Documentation/networking/netconsole.rst;
#: ``release`` only when the target's ``release`` attribute is on).
_EXT_HEADER = re.compile(
    rb"^(?:(?P<release>\d[^,;]*\.[^,;]*),)?(?P<level>\d{1,3}),(?P<seq>\d{1,20}),(?P<usec>\d{1,20}),"
    rb"(?P<flag>[^,;]{0,4})(?P<extra>(?:,[^;]*)?);"
)
_NCFRAG = re.compile(rb"(?:^|,)ncfrag=(\d+)/(\d+)(?:,|$)")
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
#: Marker that starts the rig's own lines in console.log (never sent by a device).
MARK = "rig-netconsole:"
#: How many recent records are remembered to tell a duplicate from a reboot's new sequence.
RECENT_RECORDS = 4096
#: A record's fragments still missing after this many later records are given up (kept partial).
FRAGMENT_PATIENCE = 64
#: A record older than the newest one by more than this (kernel time) is a new boot, not a late datagram.
LATE_USEC = 5_000_000
#: Gaps kept in memory (and reports); the lost total counts them all.
MAX_GAPS = 1000
#: Linux socket option that puts the socket's dropped-datagram counter in each message's ancillary data.
SO_RXQ_OVFL = int(getattr(socket, "SO_RXQ_OVFL", 40))
RCVBUF_BYTES = 8 << 20


@dataclass(frozen=True)
class SeqGap:
    """Records the device sent that never arrived: those between seq ``after`` and seq ``before``."""

    after: int
    before: int
    at: float  # wall time the record after the gap arrived

    @property
    def lost(self) -> int:
        return self.before - self.after - 1

    @property
    def text(self) -> str:
        n = self.lost
        return f"{n} record{'s' if n != 1 else ''} lost between seq {self.after} and {self.before}"

    def to_json(self) -> dict[str, object]:
        return {"after": self.after, "before": self.before, "lost": self.lost, "at": self.at, "text": self.text}


@dataclass
class _Partial:
    total: int
    level: int
    usec: int
    flag: str
    chunks: dict[int, bytes] = field(default_factory=dict)
    waited: int = 0

    def have(self) -> int:
        return sum(len(c) for c in self.chunks.values())

    def joined(self) -> tuple[bytes, bool]:
        """The body from offset 0 as far as it is contiguous, and whether that is all of it."""
        out = bytearray()
        for off in sorted(self.chunks):
            if off > len(out):
                break
            out += self.chunks[off][len(out) - off :]
        return bytes(out), len(out) >= self.total


def _unescape(body: bytes) -> bytes:
    r"""The extended format writes unprintable bytes (and a newline inside a message) as ``\xNN``."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), body) if b"\\x" in body else body


def _stamp(usec: int) -> bytes:
    return b"[%5d.%06d] " % (usec // 1_000_000, usec % 1_000_000)


class NetconsoleStream:
    """Datagrams in, console text out; counts what was lost, duplicated, reordered or malformed.

    Pure (no sockets, no clock): :meth:`feed` takes the datagram and the wall time it arrived and
    returns the bytes to split into console lines, rig marker lines about gaps included.
    """

    def __init__(self) -> None:
        self.datagrams = 0
        self.records = 0
        self.plain = 0
        self.malformed = 0
        self.duplicates = 0
        self.reordered = 0
        self.restarts = 0
        self.fragments = 0
        self.fragmented_records = 0
        self.incomplete_records = 0
        self.lost = 0
        self.gaps: list[SeqGap] = []
        self.gaps_total = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.extended = False  # seen at least one extended record
        self._last_usec = 0  # kernel time of the newest record
        self._recent: OrderedDict[int, int] = OrderedDict()  # seq -> usec (a record's identity)
        self._missing: list[list[int]] = []  # [lo, hi] ranges of seqs not (yet) received
        self._partials: OrderedDict[int, _Partial] = OrderedDict()

    # -- sequence bookkeeping -------------------------------------------------------------------

    def _remember(self, seq: int, usec: int) -> None:
        self._recent[seq] = usec
        while len(self._recent) > RECENT_RECORDS:
            self._recent.popitem(last=False)

    def _fill(self, seq: int) -> bool:
        """A seq that was missing arrived late: take it out of the missing ranges."""
        for i, (lo, hi) in enumerate(self._missing):
            if lo <= seq <= hi:
                parts = [r for r in ([lo, seq - 1], [seq + 1, hi]) if r[0] <= r[1]]
                self._missing[i : i + 1] = parts
                self.lost -= 1
                return True
        return False

    def _account(self, seq: int, usec: int, wall: float, out: bytearray) -> bool:
        """Book one record's seq; False if it is a duplicate to drop."""
        last = self.last_seq
        known = self._recent.get(seq)
        if known is not None:
            if known == usec:
                self.duplicates += 1
                return False
            self._restart(seq, out, f"seq {seq} came again with other content")
        elif last is not None and seq <= last:
            if self._fill(seq):
                self.reordered += 1
            elif seq < last - RECENT_RECORDS or self._last_usec - usec > LATE_USEC:
                self._restart(seq, out, f"seq fell from {last} to {seq}")
            else:
                self.reordered += 1  # older than the first record we saw: arrived late, nothing lost
        elif last is not None and seq > last + 1:
            gap = SeqGap(after=last, before=seq, at=wall)
            self.lost += gap.lost
            self.gaps_total += 1
            if len(self.gaps) < MAX_GAPS:
                self.gaps.append(gap)
            self._missing.append([last + 1, seq - 1])
            del self._missing[:-256]
            out += f"{MARK} {gap.text}\n".encode()
        if self.first_seq is None:
            self.first_seq = seq
        if self.last_seq is None or seq >= self.last_seq:
            self.last_seq = seq
            self._last_usec = usec
        self._remember(seq, usec)
        return True

    def _restart(self, seq: int, out: bytearray, why: str) -> None:
        """The device's kernel started counting again: a reboot (the boot parameter replays its boot log)."""
        self.restarts += 1
        self._recent.clear()
        self._missing.clear()
        self.last_seq = seq
        self.first_seq = seq
        self._last_usec = 0
        out += f"{MARK} sequence restarted at {seq} ({why}: the device rebooted?)\n".encode()

    # -- datagrams ------------------------------------------------------------------------------

    def feed(self, datagram: bytes, wall: float) -> bytes:
        """One datagram (exact bytes) -> console text to split into lines."""
        self.datagrams += 1
        out = bytearray()
        m = _EXT_HEADER.match(datagram)
        if m is None:
            if self.extended:
                self.malformed += 1
                out += f"{MARK} datagram without an extended header ({len(datagram)} bytes), kept as text:\n".encode()
            else:
                self.plain += 1
            out += datagram
            if self.extended and not datagram.endswith(b"\n"):
                out += b"\n"
            self._age_partials(out)
            return bytes(out)
        self.extended = True
        seq, usec = int(m.group("seq")), int(m.group("usec"))
        level, flag, extra = int(m.group("level")), m.group("flag").decode("ascii", "replace"), m.group("extra")
        body = datagram[m.end() :]
        frag = _NCFRAG.search(extra) if extra else None
        if frag is not None:
            self._fragment(seq, level, usec, flag, int(frag.group(1)), int(frag.group(2)), body, wall, out)
            return bytes(out)
        if extra and b"ncfrag" in extra:
            self.malformed += 1
            out += f"{MARK} seq {seq}: unreadable ncfrag field, kept as text:\n".encode()
        if self._account(seq, usec, wall, out):
            self.records += 1
            out += self._record_text(usec, body)
        self._age_partials(out)
        return bytes(out)

    def _fragment(
        self, seq: int, level: int, usec: int, flag: str, off: int, total: int, chunk: bytes, wall: float,
        out: bytearray,
    ) -> None:
        self.fragments += 1
        p = self._partials.get(seq)
        if p is None or p.usec != usec:
            if total <= 0 or off >= total or total > 1 << 20:
                self.malformed += 1
                out += f"{MARK} seq {seq}: fragment {off}/{total} makes no sense, kept as text:\n".encode()
                out += chunk + b"\n"
                return
            if not self._account(seq, usec, wall, out):
                return  # a duplicate of a record already shown
            p = self._partials[seq] = _Partial(total=total, level=level, usec=usec, flag=flag)
        if off in p.chunks:
            self.duplicates += 1
            return
        p.chunks[off] = chunk
        body, complete = p.joined()
        if complete:
            del self._partials[seq]
            self.records += 1
            self.fragmented_records += 1
            out += self._record_text(usec, body[: p.total])
        self._age_partials(out, skip=seq)

    def _age_partials(self, out: bytearray, skip: int | None = None) -> None:
        for seq in list(self._partials):
            if seq == skip:
                continue
            p = self._partials[seq]
            p.waited += 1
            if p.waited > FRAGMENT_PATIENCE or len(self._partials) > 64:
                del self._partials[seq]
                self._give_up(seq, p, out)

    def _give_up(self, seq: int, p: _Partial, out: bytearray) -> None:
        self.incomplete_records += 1
        self.records += 1
        body, _ = p.joined()
        out += self._record_text(p.usec, body, newline=False)
        out += f" {MARK} record seq {seq} incomplete: {p.have()} of {p.total} bytes arrived\n".encode()

    def flush(self) -> bytes:
        """What is still waiting for fragments, as partial records (the capture stops)."""
        out = bytearray()
        for seq, p in list(self._partials.items()):
            self._give_up(seq, p, out)
        self._partials.clear()
        return bytes(out)

    @staticmethod
    def _record_text(usec: int, body: bytes, *, newline: bool = True) -> bytes:
        # The message ends at the first real newline; " KEY=value" dictionary lines follow it.
        text = body.split(b"\n", 1)[0]
        lines = _unescape(text).split(b"\n")  # a message with embedded newlines: one line each, like serial
        stamp = _stamp(usec)
        out = b"\n".join(stamp + ln for ln in lines)
        return out + b"\n" if newline else out

    def to_json(self) -> dict[str, object]:
        return {
            "datagrams": self.datagrams,
            "records": self.records,
            "extended": self.extended,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "lost": self.lost,
            "gaps_total": self.gaps_total,
            "gaps": [g.to_json() for g in self.gaps[-50:]],
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "restarts": self.restarts,
            "malformed": self.malformed,
            "plain": self.plain,
            "fragments": self.fragments,
            "fragmented_records": self.fragmented_records,
            "incomplete_records": self.incomplete_records,
        }


def parse_netconsole_url(url: str) -> tuple[str, int]:
    """``netconsole://HOST:PORT`` -> (address to bind, UDP port). ConfigError naming the URL otherwise."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != SCHEME or not parts.hostname or port is None:
        raise ConfigError(
            f"console url {url!r}: a netconsole console is netconsole://ADDRESS:PORT (the controller's "
            "address to listen on, e.g. netconsole://0.0.0.0:6666)"
        )
    try:
        ipaddress.IPv4Address(parts.hostname)
    except ValueError:
        raise ConfigError(f"console url {url!r}: listen address must be an IPv4 address (0.0.0.0 for all)") from None
    return parts.hostname, port


def _escape_line(data: bytes) -> str:
    return data.decode("ascii", "backslashreplace").replace("\n", "\\n").replace("\r", "\\r")


class NetconsoleCapture(ConsoleCapture):
    """A console fed by netconsole datagrams on a UDP port (``netconsole://0.0.0.0:6666``).

    ``sources``: the addresses the device sends from (default: any). Datagrams from anyone else are
    kept in ``netconsole-foreign.log`` and counted (:attr:`foreign`), not shown as the device's.
    The port is bound in :meth:`start`: a port in use is a :class:`LabFault` there, naming the
    device, the port and the fix.
    """

    def __init__(
        self,
        url: str,
        log_dir: str | Path,
        *,
        sources: list[str] | None = None,
        tail_lines: int = DEFAULT_TAIL_LINES,
        max_line: int = DEFAULT_MAX_LINE,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        name: str | None = None,
        inventory: str | None = None,
    ) -> None:
        super().__init__(url, log_dir, tail_lines=tail_lines, max_line=max_line, read_timeout=read_timeout, name=name)
        self.bind_host, self.bind_port = parse_netconsole_url(url)
        self.sources = set(sources) if sources else None
        self.inventory = inventory
        self.stream = NetconsoleStream()
        self.foreign: Counter[str] = Counter()
        self.foreign_path = self.log_dir / "netconsole-foreign.log"
        #: Datagrams the controller's socket buffer dropped (Linux SO_RXQ_OVFL): lost here, not on the device.
        self.socket_drops = 0
        self.internal_errors = 0
        self._sock: socket.socket | None = None
        self._foreign_f: TextIO | None = None

    def start(self) -> NetconsoleCapture:
        if self._thread is not None:
            raise RuntimeError(f"console {self.name}: already started")
        self._sock = self._bind()
        try:
            super().start()
        except BaseException:
            self._sock.close()
            self._sock = None
            raise
        return self

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # A flood (a panic under an NMI storm, a 10 MB burst) must wait in the socket, not be dropped:
            # FORCE passes net.core.rmem_max when the rig may (CAP_NET_ADMIN), else the capped size.
            try:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), RCVBUF_BYTES)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            if sys.platform.startswith("linux"):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            sock.bind((self.bind_host, self.bind_port))
        except OSError as exc:
            sock.close()
            where = f" ([console] url in {self.inventory})" if self.inventory else ""
            if exc.errno == errno.EADDRINUSE:
                raise LabFault(
                    f"device {self.name}: netconsole port udp {self.bind_host}:{self.bind_port} is already in use "
                    f"on this controller: another rig run, another device's [console] or another program "
                    f"(rsyslog, nc) listens there; stop it, or give this device a port of its own{where} "
                    "and point its netconsole target at that port",
                    component="console",
                ) from None
            raise LabFault(
                f"device {self.name}: cannot listen for netconsole on udp {self.bind_host}:{self.bind_port}: "
                f"{exc.strerror or exc}{where}",
                component="console",
            ) from None
        sock.settimeout(self.read_timeout)
        return sock

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._foreign_f is not None:
            self._foreign_f.close()
            self._foreign_f = None

    def _emit_pending(self) -> None:
        rest = self.stream.flush()
        if rest:
            self._feed_text(rest, time.time(), time.monotonic())

    def write(self, data: bytes) -> None:
        raise Unavailable("console input", f"{self.name}'s console is netconsole, which only sends (no input)")

    def lab_fault(self, min_down: float = 0.0) -> str | None:
        """A UDP listener has no server to lose: silence is the device's (or its network's), not the lab's."""
        if self.connected or self._thread is None:
            return None
        return super().lab_fault(min_down)

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "transport": "netconsole",
            "listen": f"udp {self.bind_host}:{self.bind_port}",
            **self.stream.to_json(),
            "foreign_datagrams": sum(self.foreign.values()),
            "foreign_sources": dict(self.foreign.most_common(10)),
            "socket_drops": self.socket_drops,
        }

    # -- reader thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with self._cond:
            self.connected = True
            self.disconnected_since = None
            self._connects = 1
            self._cond.notify_all()
        cmsg_space = socket.CMSG_SPACE(4)
        try:
            while not self._stop.is_set():
                try:
                    data, anc, _flags, addr = sock.recvmsg(65535, cmsg_space)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self._stop.is_set():
                        break
                    self.last_error = str(exc)
                    log.warning("console %s: netconsole socket error: %s", self.name, exc)
                    self._stop.wait(0.1)
                    continue
                try:
                    self._on_datagram(data, addr, anc)
                except Exception:  # a bug of ours: the bytes are on disk already; keep reading
                    self.internal_errors += 1
                    if self.internal_errors <= 3:
                        log.exception("console %s: netconsole datagram handling failed (kept going)", self.name)
        finally:
            self._emit_pending()
            with self._cond:
                self.connected = False
                self._cond.notify_all()

    def _on_datagram(self, data: bytes, addr: tuple[str, int], anc: list[tuple[int, int, bytes]]) -> None:
        wall, mono = time.time(), time.monotonic()
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                self.socket_drops = struct.unpack("=I", value[:4])[0]
        if self.sources is not None and addr[0] not in self.sources:
            self.foreign[addr[0]] += 1
            if self._foreign_f is None:
                self._foreign_f = open(self.foreign_path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in stop()
            self._foreign_f.write(f"{format_log_line(wall, '')}{addr[0]}:{addr[1]} {_escape_line(data)}\n")
            self._foreign_f.flush()
            return
        self._write_raw(data, wall, mono)
        text = self.stream.feed(data, wall)
        if text:
            self._feed_text(text, wall, mono)


def resolve_sources(host: str) -> list[str] | None:
    """IPv4 addresses of ``host`` (the device's SSH host): whom to take datagrams from. None = anyone."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("netconsole: cannot resolve %s (%s): accepting datagrams from any source", host, exc)
        return None
    return sorted({str(i[4][0]) for i in infos})


# -------------------------------------------------------------------------------------------------
# the device side: a dynamic target in configfs


class NetconsoleSetupError(DeviceError):
    """The device cannot send netconsole as asked (module, configfs, interface, netpoll). Says which and why."""


#: Exit codes of the set-up script, and what they mean.
_SETUP_ERRORS = {
    3: "the netconsole module is not loaded and `modprobe netconsole` failed (is CONFIG_NETCONSOLE set in "
    "this kernel? Debian builds it as a module)",
    4: "configfs is not mounted at /sys/kernel/config and mounting it failed (modprobe configfs; "
    "mount -t configfs none /sys/kernel/config)",
    5: "/sys/kernel/config/netconsole is missing: this kernel's netconsole has no dynamic targets "
    "(CONFIG_NETCONSOLE_DYNAMIC); use the boot parameter instead (docs/netconsole.md)",
    6: "no network interface found towards the controller (`ip route get` gave none); set dev_name",
}


class NetconsoleTarget:
    """A dynamic netconsole target on the device (``/sys/kernel/config/netconsole/<name>``).

    Why configfs and not the boot parameter: it needs no GRUB edit on the laptop and goes away at
    :meth:`remove`. Its limits (kernel documentation, and tried in the lab): it replays nothing
    from before it was enabled, and it does not survive a reboot -- the rig sets it up again after
    each recovery. Attributes may only change while ``enabled`` is 0, so the script disables first.
    """

    def __init__(
        self, ssh: CommandRunner, device: str, setup: NetconsoleSetup, port: int, *, sudo: bool = False
    ) -> None:
        self.ssh = ssh
        self.device = device
        self.setup_cfg = setup
        self.port = setup.remote_port or port
        self.sudo = sudo
        self.name = "rig_" + re.sub(r"[^A-Za-z0-9_]", "_", device)[:40]
        self.dir = f"/sys/kernel/config/netconsole/{self.name}"
        #: What the device reported after enabling: interface, local address, remote MAC.
        self.details: dict[str, str] = {}

    def script(self) -> str:
        s = self.setup_cfg
        q = shlex.quote
        if s.remote_ip is None:
            raise ConfigError(f"device {self.device}: [console.netconsole] configure = true needs remote_ip")
        remote = q(s.remote_ip)
        lines = [
            "[ -d /sys/module/netconsole ] || modprobe netconsole >/dev/null 2>&1 || exit 3",
            "grep -qs ' /sys/kernel/config configfs ' /proc/mounts || { modprobe configfs >/dev/null 2>&1; "
            "mount -t configfs configfs /sys/kernel/config 2>/dev/null; } || exit 4",
            "[ -d /sys/kernel/config/netconsole ] || exit 5",
            f"dev={q(s.dev_name or '')}",
            f"[ -n \"$dev\" ] || dev=$(ip route get {remote} 2>/dev/null "
            "| sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | head -n1)",
            "[ -n \"$dev\" ] || exit 6",
            f"mac={q(s.remote_mac or '')}",
            "if [ -z \"$mac\" ]; then",
            f"  hop=$(ip route get {remote} 2>/dev/null | sed -n 's/.* via \\([^ ]*\\).*/\\1/p' | head -n1)",
            f"  hop=${{hop:-{s.remote_ip}}}",
            "  ping -c 1 -W 1 \"$hop\" >/dev/null 2>&1",
            "  mac=$(ip neigh show \"$hop\" 2>/dev/null | sed -n 's/.* lladdr \\([^ ]*\\).*/\\1/p' | head -n1)",
            "  mac=${mac:-ff:ff:ff:ff:ff:ff}",
            "fi",
            f"T={self.dir}",
            "if [ -d $T ]; then echo 0 > $T/enabled 2>/dev/null; else mkdir $T || exit 7; fi",
            "echo \"$dev\" > $T/dev_name && echo \"$mac\" > $T/remote_mac && "
            f"echo {remote} > $T/remote_ip && echo {self.port} > $T/remote_port && echo 1 > $T/extended || exit 8",
        ]
        if s.local_ip:
            lines.append(f"echo {q(s.local_ip)} > $T/local_ip || exit 8")
        lines += [
            "if ! echo 1 > $T/enabled 2>/tmp/rig-netconsole.err; then",
            "  echo \"interface=$dev\"; cat /tmp/rig-netconsole.err; dmesg | grep -i netconsole | tail -n 5",
            "  rmdir $T 2>/dev/null; exit 9",
            "fi",
            "echo \"interface=$dev\"; echo \"remote_mac=$mac\"; echo \"local_ip=$(cat $T/local_ip)\"",
        ]
        return "\n".join(lines)

    def configure(self) -> dict[str, str]:
        """Create (or re-create) and enable the target; NetconsoleSetupError naming device and interface."""
        res = self.ssh.run(["sh", "-c", self.script()], timeout=30, sudo=self.sudo)
        out = res.out + res.err
        info = dict(re.findall(r"^(interface|remote_mac|local_ip)=(.*)$", out, flags=re.M))
        iface = info.get("interface") or self.setup_cfg.dev_name or "?"
        if res.exit_status == 0:
            self.details = info
            log.info("%s: netconsole target %s on %s -> %s:%d (%s)", self.device, self.name, iface,
                     self.setup_cfg.remote_ip, self.port, info.get("remote_mac"))
            return info
        if res.exit_status in _SETUP_ERRORS:
            why = _SETUP_ERRORS[res.exit_status]
        elif res.exit_status == 9:
            said = " ".join(ln.strip() for ln in out.splitlines() if ln.strip() and not ln.startswith("interface="))
            if "doesn't support polling" in out or "support polling" in out:
                why = (f"interface {iface}'s driver cannot do netpoll (the kernel said: {said[-300:]}); netconsole "
                       "cannot send over it (Wi-Fi usually cannot): use a wired NIC or USB-Ethernet adapter "
                       "whose driver supports netpoll, and set [console.netconsole] dev_name")
            else:
                why = f"enabling the target on interface {iface} failed: {said[-400:] or 'no reason given'}"
        else:
            why = f"the set-up script failed with exit status {res.exit_status}: {out.strip()[-300:]}"
        raise NetconsoleSetupError(f"device {self.device}: netconsole set-up failed: {why}")

    def remove(self) -> None:
        """Disable and remove the target (best effort: a hung device cannot be asked)."""
        script = f"T={self.dir}; [ -d $T ] || exit 0; echo 0 > $T/enabled; rmdir $T"
        try:
            self.ssh.run(["sh", "-c", script], timeout=10, sudo=self.sudo)
        except RigError as exc:
            log.info("%s: netconsole target not removed (%s)", self.device, exc)
