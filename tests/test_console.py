"""rig.console.capture against a real console path: socat pty -> ser2net 4 -> pyserial rfc2217:// / socket://.

No mocks: the "device" is the feed side of a socat pty pair, the console server is the real
ser2net, the client is pyserial through rig.console.capture.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.console.capture import SPLIT_MARK, ConsoleCapture, ConsoleLine, ExpectTimeout, format_log_line
from rig.detect.detector import Detector
from rig.errors import DeviceError, LabFault
from rig.lab.image import lab_kernel
from tests.consolepeers import PtyPair, Ser2Net, free_port, wait_for, wait_for_progress

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (.*)$")


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    p = PtyPair(tmp_path / "pty").start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def ser2net(tmp_path: Path, pty: PtyPair) -> Iterator[Ser2Net]:
    s = Ser2Net(tmp_path / "srv", pty.dev, free_port()).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def capture(tmp_path: Path, ser2net: Ser2Net) -> Iterator[ConsoleCapture]:
    c = ConsoleCapture(ser2net.rfc2217_url, tmp_path / "logs", backoff_max=0.3)
    c.start()
    try:
        wait_for(lambda: c.connected, 10, "console connected")
        yield c
    finally:
        c.stop()


def log_texts(path: Path) -> list[str]:
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        m = LOG_LINE.match(raw)
        assert m, f"console.log line not in '<ISO time> <text>' format: {raw!r}"
        out.append(m.group(1))
    return out


def test_bytes_hit_disk_before_subscribers(capture: ConsoleCapture, pty: PtyPair) -> None:
    seen: list[tuple[ConsoleLine, bool]] = []

    def on_line(line: ConsoleLine) -> None:
        # The line must already be in console.log when a subscriber sees it.
        seen.append((line, line.text in log_texts(capture.log_path)))

    capture.subscribe(on_line)
    payload = b"[    0.000000] Linux version 6.1.0\r\nsecond line\r\nno end yet"
    pty.write(payload)
    line = capture.expect("second line", 10)
    assert line.number == 2 and line.text == "second line"
    wait_for(lambda: capture.raw_path.read_bytes() == payload, 10, "console.raw to hold the exact bytes")
    assert log_texts(capture.log_path) == ["[    0.000000] Linux version 6.1.0", "second line"]
    # Subscribers run on the reader thread just after expect() is woken: wait for them (CI once read
    # `seen` before the reader had called them).
    wait_for(lambda: len(seen) >= 2, 10, "both lines at the subscriber")
    assert [(s[0].text, s[1]) for s in seen] == [(t, True) for t in log_texts(capture.log_path)]
    assert capture.expect("no end", 5).partial  # a prompt without newline still matches
    assert capture.last_byte_time is not None and abs(capture.last_byte_time - time.time()) < 60
    assert capture.bytes_received == len(payload)


def test_line_endings_controls_and_non_utf8(capture: ConsoleCapture, pty: PtyPair) -> None:
    pty.write(b"a\r\nb\nc\rd\r")
    pty.write(b"\ne\r\r\n")  # \r then \n split across writes; \r\r\n (double CR)
    pty.write(b"\x1b[1;31mred\x1b[0m\ttab\x07bell\x00nul\r\n")
    pty.write(b"bad \xff\xfe utf8 \xc3\xa9\r\n")
    pty.write(b"end\r\n")
    capture.expect("^end$", 10)
    assert [ln.text for ln in capture.tail()] == [
        "a",
        "b",
        "c",
        "d",
        "e",
        "red\ttabbellnul",
        "bad \ufffd\ufffd utf8 \u00e9",
        "end",
    ]
    assert log_texts(capture.log_path)[-2] == "bad \ufffd\ufffd utf8 \u00e9"
    assert [ln.number for ln in capture.tail()] == list(range(1, 9))


def test_one_megabyte_line_without_newline(capture: ConsoleCapture, pty: PtyPair) -> None:
    big = bytes(b"0123456789abcdef"[i % 16] for i in range(1 << 20))
    pty.write(big)
    pty.write(b"\r\ndone\r\n")
    # What this proves is that no byte is lost or reordered, not how fast: pyserial's RFC 2217 client
    # passes each byte through a queue (1 MB took 7 s alone here, over 30 s in CI's starved pure side), so
    # wait as long as bytes keep arriving and fail only when they stop.
    wait_for_progress(lambda: capture.bytes_received, len(big) + 8, stall=30, what="the 1 MB line at the console")
    capture.expect("^done$", 10, since=0)
    lines = capture.tail()
    parts = lines[:-1]
    assert all(len(p.text) <= capture.max_line for p in parts)
    assert all(p.split for p in parts[:-1]) and not parts[-1].split
    assert "".join(p.text for p in parts).encode() == big
    texts = log_texts(capture.log_path)
    assert texts[0].endswith(SPLIT_MARK) and not texts[-2].endswith(SPLIT_MARK)
    assert capture.raw_path.read_bytes() == big + b"\r\ndone\r\n"


def test_expect_since_mark_and_timeout_message(capture: ConsoleCapture, pty: PtyPair) -> None:
    pty.write(b"login: ready 1\r\n")
    first = capture.expect(r"ready \d", 10, since=0)
    assert first.text == "login: ready 1"
    m = capture.mark()
    assert m == first.number
    with pytest.raises(ExpectTimeout) as ei:
        capture.expect(r"ready \d", 0.3, since=m)
    assert isinstance(ei.value, DeviceError)
    assert "login: ready 1" in str(ei.value) and "ready" in ei.value.pattern

    def later() -> None:
        time.sleep(0.2)
        pty.write(b"ready 2\r\n")

    t = threading.Thread(target=later)
    t.start()
    try:
        assert capture.expect(r"ready \d", 10, since=m).text == "ready 2"
    finally:
        t.join()


def test_subscriber_exception_does_not_kill_reader(capture: ConsoleCapture, pty: PtyPair) -> None:
    got: list[str] = []

    def bad(line: ConsoleLine) -> None:
        raise RuntimeError("subscriber bug")

    capture.subscribe(bad)
    unsubscribe = capture.subscribe(lambda ln: got.append(ln.text))
    pty.write(b"one\r\ntwo\r\n")
    capture.expect("two", 10)
    unsubscribe()
    pty.write(b"three\r\n")
    capture.expect("three", 10)
    assert got == ["one", "two"]
    assert capture.connected


def test_write_reaches_the_device(capture: ConsoleCapture, pty: PtyPair) -> None:
    capture.write(b"echo hi\r")
    assert pty.read_feed(5) == b"echo hi\r"


def test_detector_on_captured_lines(capture: ConsoleCapture, pty: PtyPair) -> None:
    det = Detector(booted=True)
    events = []
    capture.subscribe(lambda ln: events.extend(det.feed(ln.text, line_no=ln.number, time=ln.time)))
    pty.write(b"[   12.5] Kernel panic - not syncing: sysrq triggered crash\r\n")
    line = capture.expect("panic", 10)
    wait_for(lambda: events, 5, "event")
    assert events[0].kind == "panic" and events[0].line_no == line.number and events[0].time == line.time
    # console.log lines (with their ISO time) give the same event when re-scanned later
    (again,) = Detector(booted=True).scan(capture.log_path.read_text().splitlines())
    assert again.title == events[0].title
    assert again.time is not None and abs(again.time - line.time) < 0.002


def test_reconnect_after_ser2net_restart_loses_nothing_delivered(
    capture: ConsoleCapture, pty: PtyPair, ser2net: Ser2Net
) -> None:
    pty.write(b"before 1\r\nbefore 2\r\n")
    capture.expect("before 2", 10)
    ser2net.stop()
    wait_for(lambda: not capture.connected, 10, "capture to notice ser2net is gone")
    wait_for(lambda: capture.lab_fault() is not None, 5, "lab_fault while down")
    fault = capture.lab_fault()
    assert fault is not None and ser2net.rfc2217_url in fault and "unreachable" in fault
    with pytest.raises(LabFault):
        capture.write(b"x")
    with pytest.raises(LabFault):  # waiting on a dead console path is a lab fault, not the device's
        capture.expect("never", 0.3)
    # Written while nobody serves the pty: may be lost (pty buffering), so not asserted.
    pty.write(b"while down\r\n")
    ser2net.start()
    wait_for(lambda: capture.connected, 15, "capture to reconnect")
    assert capture.reconnects == 1 and capture.lab_fault() is None
    pty.write(b"after 1\r\n")
    capture.expect("after 1", 10)
    texts = log_texts(capture.log_path)
    assert texts[:2] == ["before 1", "before 2"] and texts[-1] == "after 1"
    raw = capture.raw_path.read_bytes()
    # Every byte ser2net delivered, exactly once, in order; only what was written while it was down may be gone.
    assert raw in (
        b"before 1\r\nbefore 2\r\nafter 1\r\n",
        b"before 1\r\nbefore 2\r\nwhile down\r\nafter 1\r\n",
    ), raw
    assert [ln.number for ln in capture.tail()] == list(range(1, len(texts) + 1))


def sync_with_server(cap: ConsoleCapture, pty: PtyPair, tag: str) -> None:
    """Write ``sync <tag>`` until the capture sees it: the console server is now passing bytes on.

    Why: with a raw ``tcp`` accepter there is no handshake, so "connected" on our side only means
    the kernel accepted the TCP connection; until ser2net has attached it, ser2net drops what the
    device sends (a console server keeps nothing for absent users). A real device that prints in
    that window is not the rig's to keep.
    """
    for _ in range(50):
        pty.write(f"sync {tag}\r\n".encode())
        try:
            cap.expect(f"sync {tag}", 0.2)
            return
        except ExpectTimeout:
            continue
    raise AssertionError(f"ser2net never passed 'sync {tag}' on")


def test_socket_url_raw_tcp_and_reconnect(tmp_path: Path, pty: PtyPair) -> None:
    srv = Ser2Net(tmp_path / "raw", pty.dev, free_port(), accepter="tcp").start()
    cap = ConsoleCapture(srv.socket_url, tmp_path / "logs", backoff_max=0.3)
    try:
        cap.start()
        wait_for(lambda: cap.connected, 10, "socket:// connected")
        sync_with_server(cap, pty, "1")
        mark = cap.mark()
        pty.write(b"raw hello\r\n")
        assert cap.expect("raw hello", 10).number == mark + 1
        srv.stop()
        wait_for(lambda: not cap.connected, 10, "socket:// EOF noticed")
        srv.start()
        wait_for(lambda: cap.connected, 15, "socket:// reconnected")
        sync_with_server(cap, pty, "2")
        pty.write(b"raw again\r\n")
        cap.expect("raw again", 10)
        assert cap.reconnects == 1
        raw = cap.raw_path.read_bytes()
        kept = b"".join(ln for ln in raw.splitlines(keepends=True) if not ln.startswith(b"sync "))
        assert kept == b"raw hello\r\nraw again\r\n", raw  # nothing lost, nothing twice
    finally:
        cap.stop()
        srv.stop()


def test_never_reachable_is_a_lab_fault(tmp_path: Path) -> None:
    url = f"rfc2217://127.0.0.1:{free_port()}?ign_set_control"
    with ConsoleCapture(url, tmp_path / "logs", backoff_max=0.2) as cap:
        wait_for(lambda: cap.last_error is not None, 5, "a connect error")
        fault = cap.lab_fault()
        assert fault is not None and "never reached" in fault and url in fault
        assert cap.lab_fault(min_down=3600) is None
        assert not cap.connected and cap.reconnects == 0


def test_wait_connected_is_false_until_the_console_server_comes_up(tmp_path: Path, pty: PtyPair) -> None:
    """What Dut.open waits on: no server, no connection; a real ser2net started later is joined."""
    port = free_port()
    with ConsoleCapture(f"rfc2217://127.0.0.1:{port}?ign_set_control", tmp_path / "logs", backoff_max=0.2) as cap:
        assert cap.wait_connected(0.5) is False
        srv = Ser2Net(tmp_path / "srv", pty.dev, port).start()
        try:
            assert cap.wait_connected(10) is True and cap.connected
        finally:
            srv.stop()


def test_stop_is_quick_when_peer_is_silent(capture: ConsoleCapture) -> None:
    time.sleep(0.3)  # reader is blocked in read() on a silent console
    t0 = time.monotonic()
    capture.stop()
    assert time.monotonic() - t0 < 3.0  # about read_timeout (0.2 s); a reader that ignores the stop costs 5
    assert not capture.connected


def test_restart_appends_and_continues_numbering(tmp_path: Path, ser2net: Ser2Net, pty: PtyPair) -> None:
    logs = tmp_path / "logs"
    for i in (1, 2):
        with ConsoleCapture(ser2net.rfc2217_url, logs, backoff_max=0.3) as cap:
            wait_for(lambda c=cap: c.connected, 10, "connected")  # type: ignore[misc]
            pty.write(f"run {i}\r\n".encode())
            assert cap.expect(f"run {i}", 10).number == i
    assert log_texts(logs / "console.log") == ["run 1", "run 2"]
    assert (logs / "console.raw").read_bytes() == b"run 1\r\nrun 2\r\n"


def test_tail_is_bounded(tmp_path: Path, ser2net: Ser2Net, pty: PtyPair) -> None:
    with ConsoleCapture(ser2net.rfc2217_url, tmp_path / "logs", tail_lines=10) as cap:
        wait_for(lambda: cap.connected, 10, "connected")
        pty.write(b"".join(b"l%d\r\n" % i for i in range(50)))
        cap.expect("^l49$", 10)
        assert [ln.number for ln in cap.tail()] == list(range(41, 51))
        assert len(log_texts(cap.log_path)) == 50


def test_format_log_line() -> None:
    assert format_log_line(1735787045.678, "x") == "2025-01-02T03:04:05.678Z x"


def test_parse_log_line_reads_what_format_log_line_writes() -> None:
    from rig.console.capture import parse_log_line

    line = format_log_line(1735787045.678, "shadow-box: VM [1] INT NMI callback")
    wall, hms, text = parse_log_line(line) or (0.0, "", "")
    assert abs(wall - 1735787045.678) < 0.001 and hms == "03:04:05.678"
    assert text == "shadow-box: VM [1] INT NMI callback"
    assert parse_log_line("[   1.0] not the rig's format") is None
    assert parse_log_line("2025-13-02T03:04:05.678Z month 13") is None


BUSYBOX = Path("/bin/busybox")
CRASH_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "rig: userspace up"
/bin/busybox sleep 1
echo c > /proc/sysrq-trigger
"""


@pytest.fixture
def crash_initrd(tmp_path: Path) -> Path:
    """A busybox initramfs whose init panics the kernel with sysrq-c."""
    import shutil
    import subprocess

    root = tmp_path / "initrd"
    (root / "bin").mkdir(parents=True)
    (root / "proc").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    (root / "init").write_text(CRASH_INIT)
    (root / "init").chmod(0o755)
    out = tmp_path / "initrd.cpio"
    files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    with out.open("wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=f, check=True)
    return out


@pytest.mark.lab
def test_qemu_guest_panic_then_reboot_seen_through_capture(tmp_path: Path, crash_initrd: Path) -> None:
    """A real guest kernel: sysrq-c panic, panic=1 reboot, second banner -> [PANIC, REBOOT]."""
    import subprocess

    port = free_port()
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256",
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-kernel", str(lab_kernel().vmlinuz), "-initrd", str(crash_initrd),
            "-append", "console=ttyS0 panic=1",
            "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    det = Detector()
    events = []
    cap = ConsoleCapture(f"socket://127.0.0.1:{port}", tmp_path / "logs", backoff_max=0.2)
    cap.subscribe(lambda ln: events.extend(det.feed(ln.text, line_no=ln.number, time=ln.time)))
    try:
        cap.start()
        wait_for(lambda: [e for e in events if e.kind == "reboot"], 120, "panic and reboot banner")
    finally:
        cap.stop()
        qemu.kill()
        qemu.wait(10)
    kinds = [e.kind.value for e in events]
    assert kinds[:2] == ["panic", "reboot"], events
    assert "sysrq triggered crash" in events[0].title
    assert "rig: userspace up" in log_texts(cap.log_path)


def test_a_console_server_that_resets_mid_negotiation_leaves_no_thread_traceback(tmp_path: Path) -> None:
    """A console server restarted while pyserial's RFC 2217 reader answers its telnet options: the reader
    thread's reply hits a reset socket. Plain pyserial lets that ConnectionResetError / BrokenPipeError out
    of its thread (a traceback on the rig's terminal; CI's run of session 7 printed four). The rig's client
    ends that thread quietly; pyserial's read() then says the connection is lost, and the capture
    reconnects as for any lost connection (test_reconnect_after_ser2net_restart_loses_nothing_delivered)."""
    import socket
    import struct

    from rig.console.capture import Rfc2217Serial

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    served = threading.Event()

    def serve() -> None:
        # Many unknown options (IAC DO 0x99): each makes the reader send IAC WONT 0x99, and the reset
        # right behind them makes those replies fail. Twice, so one connection's race is not all it gets.
        for _ in range(2):
            conn, _addr = srv.accept()
            with conn:
                conn.sendall(b"\xff\xfd\x99" * 20000)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        served.set()

    errors: list[BaseException | None] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        for _ in range(2):
            with contextlib.suppress(Exception):  # open may fail: refused, reset, negotiation timeout
                p = Rfc2217Serial(f"rfc2217://127.0.0.1:{port}?ign_set_control", timeout=0.2)
                with contextlib.suppress(Exception):
                    p.read(10)
                reader = p._thread
                p.close()
                if reader is not None:
                    reader.join(5)
        assert served.wait(10), "the fake console server was not reached twice"
    finally:
        threading.excepthook = old_hook
        srv.close()
    assert errors == [], f"an RFC 2217 reader thread raised: {errors!r}"
