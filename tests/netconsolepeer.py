"""A netconsole sender for tests: the kernel's extended format, byte for byte, over real UDP.

The format follows the kernel's documentation and printk's extended output (records checked against
datagrams a lab guest on 6.1 sent, e.g. ``12,412,19234971,-;rig-heartbeat 4825a118 1\n``; fragments follow
the documentation, no real kernel line here was long enough to be split): ``<level>,<seq>,<usec>,<flag>;``,
the message with bytes below 0x20, from 0x7f and the backslash written as ``\\xNN``, a newline, then
optional `` KEY=value`` dictionary lines each ending in a newline. A record over 1000 bytes goes as
fragments ``<header>,ncfrag=<offset>/<total>;<chunk>``, each datagram at most 1000 bytes, where
offset and total count the body after the header's ``;``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

MAX_PRINT_CHUNK = 1000


def escape(text: bytes) -> bytes:
    out = bytearray()
    for c in text:
        if c < 0x20 or c >= 0x7F or c == 0x5C:
            out += b"\\x%02x" % c
        else:
            out.append(c)
    return bytes(out)


def record(seq: int, text: str | bytes, *, usec: int | None = None, level: int = 6, flag: str = "-",
           dict_lines: Iterable[str] = ()) -> bytes:
    """One extended record as printk formats it for an extended console."""
    raw = text.encode() if isinstance(text, str) else text
    usec = 1_000_000 + seq * 1000 if usec is None else usec
    body = escape(raw) + b"\n" + b"".join(b" " + d.encode() + b"\n" for d in dict_lines)
    return b"%d,%d,%d,%s;" % (level, seq, usec, flag.encode()) + body


def datagrams(rec: bytes) -> list[bytes]:
    """What netconsole sends for one record: the record itself, or its ncfrag fragments."""
    if len(rec) <= MAX_PRINT_CHUNK:
        return [rec]
    header, _, body = rec.partition(b";")
    out, off = [], 0
    while off < len(body):
        head = header + b",ncfrag=%d/%d;" % (off, len(body))
        chunk = body[off : off + MAX_PRINT_CHUNK - len(head)]
        out.append(head + chunk)
        off += len(chunk)
    return out


class Sender:
    """A UDP socket that sends to the capture, from a chosen loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.port))
        self.sent += len(data)

    def send_record(self, seq: int, text: str | bytes, **kw: object) -> list[bytes]:
        grams = datagrams(record(seq, text, **kw))  # type: ignore[arg-type]
        for g in grams:
            self.send(g)
        return grams

    def close(self) -> None:
        self.sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
