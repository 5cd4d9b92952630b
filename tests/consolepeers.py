"""Real console-server peers for tests: a socat pty pair and ser2net 4 in front of it.

Why: the console path in the lab (and in a real lab rack) is device -> serial -> ser2net ->
TCP (RFC 2217 or raw) -> pyserial. Tests drive the *device* end by writing into a pty and read
through the real ser2net, so reconnects, EOFs and option negotiation are the real ones.

Usage (see tests/test_console.py for fixtures with finalizers)::

    with PtyPair(tmp_path) as pty, Ser2Net(tmp_path, pty.dev, free_port()) as srv:
        url = srv.rfc2217_url          # or srv.socket_url for a raw-TCP accepter
        pty.write(b"hello\\r\\n")       # as if the device printed it

Everything binds 127.0.0.1 only; every process started is killed in ``stop()``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SOCAT = shutil.which("socat") or "/usr/bin/socat"
SER2NET = shutil.which("ser2net") or "/usr/sbin/ser2net"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: What the tests that check a deadline holds allow past it. Why so much: the pure tests run at nice 10
#: beside the lab's guests, and a starved process spends seconds on the CPU work inside the timed
#: step (a lazy import, the error's text): 3 s past a 1.5 s deadline with three busy loops beside it.
#: Each such test tells the deadline from something much longer (forever, a 30 s sleep) or names the
#: deadline in the error it expects.
STARVED_SLACK_S = 8.0


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``cond`` until it is true; after ``timeout`` s fail naming ``what`` (the tests' wait for a condition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def wait_for_progress(count: Callable[[], int], target: int, stall: float, what: str) -> None:
    """Poll ``count`` until it reaches ``target``; fail naming ``what`` only when it has not grown for
    ``stall`` s. For waits on throughput (a flood through a slow client), where a total deadline
    would be a timed assertion on a loaded machine's speed."""
    last, since = count(), time.monotonic()
    while last < target:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            raise TimeoutError(f"{what}: stuck at {last} of {target} for {stall:g} s")


def wait_for_quiet(count: Callable[[], int], quiet: float, timeout: float, what: str) -> None:
    """Wait until ``count`` has not changed for ``quiet`` s (a reader that has drained its socket);
    fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still changing after {timeout:g} s (at {last})")
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 3.0) -> None:
    """Stop a test peer: SIGTERM, then SIGKILL if it has not gone within ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class PtyPair:
    """``socat PTY,link=<dir>/dev PTY,link=<dir>/feed``: the test writes into ``feed`` and the
    console server opens ``dev`` as if it were the device's serial port.

    Why the holder fd: when the last opener of ``dev`` (ser2net) exits, socat would read EIO on
    the pty master and quit; keeping ``dev`` open write-only (we never read from it) keeps socat
    alive across a ser2net restart.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dev = self.dir / "dev"
        self.feed = self.dir / "feed"
        self.proc: subprocess.Popen[bytes] | None = None
        self._feed_fd: int | None = None
        self._hold_fd: int | None = None

    def start(self) -> PtyPair:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [SOCAT, f"PTY,link={self.dev},raw,echo=0", f"PTY,link={self.feed},raw,echo=0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "socat.err", "wb"),  # noqa: SIM115 -- child owns it
        )
        try:
            wait_for(lambda: self.dev.exists() and self.feed.exists(), 5, f"socat ptys in {self.dir}")
            self._hold_fd = os.open(self.dev, os.O_WRONLY | os.O_NOCTTY)
            self._feed_fd = os.open(self.feed, os.O_RDWR | os.O_NOCTTY)
        except BaseException:
            self.stop()
            raise
        return self

    def write(self, data: bytes) -> None:
        """Write as the device: bytes appear on ``dev`` (and so at the console server)."""
        assert self._feed_fd is not None, "PtyPair not started"
        view = memoryview(data)
        while view:
            n = os.write(self._feed_fd, view)
            view = view[n:]

    def read_feed(self, timeout: float = 1.0) -> bytes:
        """Read what the console client typed (it arrives on the feed side)."""
        assert self._feed_fd is not None, "PtyPair not started"
        import select

        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self._feed_fd], [], [], 0.05)
            if r:
                out += os.read(self._feed_fd, 65536)
            elif out:
                break
        return out

    def stop(self) -> None:
        for fd in (self._feed_fd, self._hold_fd):
            if fd is not None:
                os.close(fd)
        self._feed_fd = self._hold_fd = None
        terminate(self.proc)

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Ser2Net:
    """ser2net 4 in the foreground serving one pty on 127.0.0.1:``port``.

    ``accepter`` is ``"telnet(rfc2217),tcp"`` (use :attr:`rfc2217_url`) or ``"tcp"`` (raw, use
    :attr:`socket_url`). ``timeout: 0`` (a hung device prints nothing for hours; ser2net must
    not hang up on us) and ``kickolduser`` (a reconnecting rig must win over its dead old
    session) are what the lab uses too. ``-u``: no UUCP lock files in /var/lock.
    """

    def __init__(self, directory: Path, dev: Path, port: int, *, accepter: str = "telnet(rfc2217),tcp") -> None:
        self.dir = Path(directory)
        self.dev = Path(dev)
        self.port = port
        self.accepter = accepter
        self.config = self.dir / f"ser2net-{port}.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def rfc2217_url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}?ign_set_control"

    @property
    def socket_url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> Ser2Net:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "connection: &con0\n"
            f"  accepter: {self.accepter},127.0.0.1,{self.port}\n"
            "  timeout: 0\n"
            f"  connector: serialdev,{self.dev},115200n81,local\n"
            "  options:\n"
            "    kickolduser: true\n"
        )
        self.starts += 1
        self.proc = subprocess.Popen(
            [SER2NET, "-n", "-u", "-P", str(self.dir / f"ser2net-{self.port}.pid"), "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.dir / f"ser2net-{self.port}.{self.starts}.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: self.proc is not None and (self.proc.poll() is not None or _port_open(self.port)),
                5,
                f"ser2net on 127.0.0.1:{self.port}",
            )
            if self.proc.poll() is not None:
                raise RuntimeError(f"ser2net exited with {self.proc.returncode}; see {self.dir}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def __enter__(self) -> Ser2Net:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
