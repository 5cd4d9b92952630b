"""rig.transports.qmp against a real QEMU (no kernel, no disk: SeaBIOS spins looking for a boot device).

The QEMU peer here (:class:`QemuPeer`, fixture ``qemu``) is also used by tests/test_bmc.py and
tests/test_power.py. It starts paused (``-S``) so it costs no CPU until a test resumes it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consolepeers import terminate

from rig.errors import LabFault
from rig.transports.qmp import QmpClient, QmpCommandError

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


class QemuPeer:
    """A QEMU with no guest: a QMP peer and a CPU. One QMP socket; the process is ours to kill."""

    def __init__(self) -> None:
        # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be too long.
        self.dir = Path(tempfile.mkdtemp(prefix="rigqmp-", dir="/tmp"))
        self.qmp_socket = self.dir / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> QemuPeer:
        argv = [
            QEMU, "-accel", "tcg", "-nodefaults", "-display", "none", "-machine", "q35", "-m", "64",
            "-no-shutdown", "-S", "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not self.qmp_socket.exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"qemu exited with {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError("qemu did not create its QMP socket within 20 s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        terminate(self.proc, timeout=5)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def qemu() -> Iterator[QemuPeer]:
    peer = QemuPeer()
    try:
        yield peer.start()
    finally:
        peer.stop()


pytestmark = pytest.mark.lab


def test_status_stop_cont_reset(qemu: QemuPeer) -> None:
    q = QmpClient(qemu.qmp_socket)
    assert q.status() == "prelaunch"  # -S
    q.cont()
    assert q.status() == "running"
    q.stop()
    assert q.status() == "paused"
    q.cont()
    q.system_reset()
    assert q.status() == "running"  # a reset of a running VM keeps it running
    q.stop()
    q.system_reset()
    assert q.status() in ("paused", "prelaunch")  # reset does not resume a stopped VM
    q.cont()
    assert q.status() == "running"
    q.stop()


def test_inject_nmi_and_powerdown_are_accepted(qemu: QemuPeer) -> None:
    # QMP cannot show an NMI count in a BIOS guest; delivery inside a Linux guest is checked
    # with the real lab image (rig.device.nmi). Here: QEMU accepts the commands, running or paused.
    q = QmpClient(qemu.qmp_socket)
    q.inject_nmi()
    q.cont()
    q.inject_nmi()
    q.system_powerdown()  # SeaBIOS has no ACPI handler: nothing happens, but QEMU accepts it
    assert q.status() == "running"
    q.stop()


def test_command_returns_the_qmp_value(qemu: QemuPeer) -> None:
    q = QmpClient(qemu.qmp_socket)
    ret = q.command("query-status")
    assert ret["running"] is False
    cpus = q.command("query-cpus-fast")
    assert isinstance(cpus, list) and len(cpus) == 1


def test_refused_command_is_a_command_error_not_a_lab_fault(qemu: QemuPeer) -> None:
    q = QmpClient(qemu.qmp_socket)
    with pytest.raises(QmpCommandError, match="no-such-command"):
        q.command("no-such-command")
    assert q.status() == "prelaunch"  # the client is still usable


def test_context_manager_keeps_one_connection_and_locks_others_out(qemu: QemuPeer) -> None:
    with QmpClient(qemu.qmp_socket) as q:
        assert q.connected
        assert q.status() == "prelaunch"
        q.cont()
        assert q.status() == "running"
        other = QmpClient(qemu.qmp_socket, timeout=1.0)
        with pytest.raises(LabFault, match="one client at a time") as info:
            other.status()
        assert str(qemu.qmp_socket) in str(info.value)
        q.stop()
    assert not q.connected
    # Outside a with-block every call connects and leaves: two clients take turns freely.
    a, b = QmpClient(qemu.qmp_socket), QmpClient(qemu.qmp_socket)
    a.cont()
    assert b.status() == "running"
    b.stop()
    assert a.status() == "paused"


def test_missing_socket_is_a_lab_fault_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.sock"
    with pytest.raises(LabFault) as info:
        QmpClient(path).status()
    msg = str(info.value)
    assert str(path) in msg and "is the lab up? (rig lab status)" in msg
    assert info.value.component == "qmp"


def test_refused_socket_is_a_lab_fault(tmp_path: Path) -> None:
    path = Path(tempfile.mkdtemp(prefix="rigqmp-", dir="/tmp")) / "stale.sock"
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()  # a socket file nobody listens on: what a crashed QEMU leaves behind
        with pytest.raises(LabFault, match="refused") as info:
            QmpClient(path).inject_nmi()
        assert str(path) in str(info.value) and "rig lab status" in str(info.value)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def test_silent_peer_hits_the_deadline(tmp_path: Path) -> None:
    """A socket that accepts but never greets (a wedged QEMU) must not block forever."""
    path = Path(tempfile.mkdtemp(prefix="rigqmp-", dir="/tmp")) / "silent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    conns: list[socket.socket] = []
    t = threading.Thread(target=lambda: conns.append(srv.accept()[0]), daemon=True)
    t.start()
    try:
        started = time.monotonic()
        with pytest.raises(LabFault, match="did not greet within 0.5s"):
            QmpClient(path, timeout=0.5).status()
        assert time.monotonic() - started < 10  # the deadline held (generous bound, not a perf test)
    finally:
        for c in conns:
            c.close()
        srv.close()
        shutil.rmtree(path.parent, ignore_errors=True)


def test_qemu_gone_mid_session_is_a_lab_fault(qemu: QemuPeer) -> None:
    with QmpClient(qemu.qmp_socket) as q:
        assert q.status() == "prelaunch"
        assert qemu.proc is not None
        qemu.proc.kill()
        qemu.proc.wait(5)
        with pytest.raises(LabFault, match=str(qemu.qmp_socket)):
            q.status()
        assert not q.connected


def test_an_event_before_the_capabilities_reply_is_not_a_failed_connect() -> None:
    """QEMU switches a monitor to command mode inside qmp_capabilities and answers afterwards, so an
    event of that moment (the RESET of a ``system_reset`` another client just asked for) can come
    before the reply. qemu.qmp's own negotiation takes the first message for the reply and fails
    ("Negotiation failed"): a vBMC power reset followed by a status read failed so in a clean-clone
    run. The peer here sends that order: greeting, RESET, then the reply."""
    import json

    path = Path(tempfile.mkdtemp(prefix="rigqmp-", dir="/tmp")) / "events.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}
    reset = {"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET",
             "data": {"guest": False, "reason": "host-qmp-system-reset"}}  # fmt: skip

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            send = lambda obj: conn.sendall(json.dumps(obj).encode() + b"\r\n")  # noqa: E731
            send(greeting)
            buf, decoder = "", json.JSONDecoder()
            while chunk := conn.recv(4096):
                buf += chunk.decode()
                while buf.strip():  # QMP is a JSON stream: qemu.qmp ends a command with no newline
                    try:
                        msg, end = decoder.raw_decode(buf.lstrip())
                    except ValueError:
                        break
                    buf = buf.lstrip()[end:]
                    if msg["execute"] == "qmp_capabilities":
                        send(reset)
                        reply: dict[str, object] = {"return": {}}
                    else:
                        reply = {"return": {"status": "running", "singlestep": False, "running": True}}
                    if "id" in msg:
                        reply["id"] = msg["id"]
                    send(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert QmpClient(path, timeout=5).status() == "running"
    finally:
        srv.close()
        t.join(5)
        shutil.rmtree(path.parent, ignore_errors=True)
