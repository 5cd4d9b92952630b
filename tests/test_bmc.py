"""rig.transports.bmc and rig.lab.vbmc against real peers: QEMU (via QMP), the virtual BMC as a separate
process, ipmitool, and OpenIPMI's ipmi_sim (a BMC that refuses diag, like many real ones).

Not checked here: that the NMI from 'diag' is counted inside a Linux guest. A BIOS-only QEMU has
no /proc/interrupts and QMP shows no NMI count; that check runs with the real lab image (rig.device.nmi).
Here the vBMC's log proves QMP ``inject-nmi`` was sent and QEMU accepted it.

The peers (:class:`VbmcPeer`, :class:`IpmiSimPeer`, fixtures ``vbmc`` and ``ipmi_sim``) are also
used by tests/test_power.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consolepeers import terminate
from pydantic import SecretStr
from test_qmp import QemuPeer, qemu  # noqa: F401  (the fixture is used by name)

from rig.errors import LabFault, Unavailable
from rig.transports.bmc import BmcClient
from rig.transports.qmp import QmpClient
from tests.consolepeers import STARVED_SLACK_S
from tests.helpers import free_udp_port

IPMITOOL = shutil.which("ipmitool") or "/usr/bin/ipmitool"
IPMI_SIM = shutil.which("ipmi_sim") or "/usr/bin/ipmi_sim"
VBMC_PASSWORD = "vbmc-Secret-4711"

pytestmark = pytest.mark.lab


def _secret_file(directory: Path, value: str) -> Path:
    path = directory / "bmc.pw"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


class VbmcPeer:
    """``python -m rig.lab.vbmc`` as its own process (as the lab runs it), logging to a file."""

    def __init__(self, qmp_socket: Path, *, port: int | None = None, name: str = "lab-t") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rigvbmc-"))
        self.qmp_socket = qmp_socket
        self.port = free_udp_port() if port is None else port
        self.name = name
        self.user = "admin"
        self.password_file = _secret_file(self.dir, VBMC_PASSWORD)
        self.log_file = self.dir / "vbmc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VbmcPeer:
        argv = [sys.executable, "-m", "rig.lab.vbmc", "--name", self.name, "--address", "127.0.0.1",
                "--port", str(self.port), "--user", self.user, "--password-file", str(self.password_file),
                "--qmp-socket", str(self.qmp_socket), "--qmp-timeout", "2"]
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while "listening on" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vbmc exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vbmc not ready within 30 s:\n{self.log()}")
            time.sleep(0.05)
        if self.port == 0:
            line = next(ln for ln in self.log().splitlines() if "listening on" in ln)
            self.port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def client(self, password: str = VBMC_PASSWORD, *, user: str = "admin", timeout: float = 10.0) -> BmcClient:
        return BmcClient("127.0.0.1", self.port, user, SecretStr(password), timeout=timeout, name=self.name)

    def ipmitool(self, *args: str, password_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [IPMITOOL, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                "-f", str(password_file or self.password_file), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def stop(self) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            rc = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


@pytest.fixture
def vbmc(qemu: QemuPeer) -> Iterator[VbmcPeer]:  # noqa: F811
    peer = VbmcPeer(qemu.qmp_socket)
    try:
        yield peer.start()
    finally:
        peer.stop()


class IpmiSimPeer:
    """OpenIPMI's ipmi_sim with one BMC (MC 0x20) on a loopback UDP port, no chassis attached."""

    PASSWORD = "sim-Secret-0815"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rigipmisim-"))
        self.port = free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IpmiSimPeer:
        (self.dir / "state").mkdir()
        conf = self.dir / "lan.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the password
        with os.fdopen(fd, "w") as f:
            f.write(
                'name "rigsim"\n'
                "set_working_mc 0x20\n"
                "  startlan 1\n"
                f"    addr 127.0.0.1 {self.port}\n"
                "    priv_limit admin\n"
                "    allowed_auths_admin md5\n"
                "    guid a123456789abcdefa123456789abcdef\n"
                "  endlan\n"
                f'  user 2 true "admin" "{self.PASSWORD}" admin 10 md5\n'
            )
        emu = self.dir / "rigsim.emu"
        emu.write_text("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n")
        self.log_file = self.dir / "ipmi_sim.log"
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [IPMI_SIM, "-c", str(conf), "-f", str(emu), "-s", str(self.dir / "state"), "-n"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        # Ready when the UDP port is taken (bind fails with EADDRINUSE).
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ipmi_sim exited: {self.log_file.read_text(errors='replace')}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", self.port))
                except OSError:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError("ipmi_sim did not bind its port within 20 s")
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.proc, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def ipmi_sim() -> Iterator[IpmiSimPeer]:
    if not Path(IPMI_SIM).exists():
        pytest.fail("ipmi_sim is missing: install Debian package openipmi (make deps)")
    peer = IpmiSimPeer()
    try:
        yield peer.start()
    finally:
        peer.stop()


# ---------------------------------------------------------------------------------------------
# vBMC + ipmitool


def test_ipmitool_drives_the_guest_through_the_vbmc(vbmc: VbmcPeer) -> None:
    q = QmpClient(vbmc.qmp_socket)

    def power(action: str) -> str:
        res = vbmc.ipmitool("chassis", "power", action)
        assert res.returncode == 0, f"ipmitool chassis power {action}: {res.stdout}{res.stderr}"
        return res.stdout

    assert "Chassis Power is off" in power("status")  # -S: 'prelaunch' reads as off
    assert q.status() == "prelaunch"
    power("on")
    assert q.status() == "running"
    assert "Chassis Power is on" in power("status")
    power("off")
    assert q.status() == "paused"
    assert "Chassis Power is off" in power("status")
    power("cycle")  # from off: cycle ends powered on
    assert q.status() == "running"
    power("cycle")  # from on
    assert q.status() == "running"
    power("off")
    power("reset")  # reset of an 'off' guest resumes it (the QMP model: reset means a boot)
    assert q.status() == "running"
    log = vbmc.log()
    for action in ("on", "off", "cycle", "reset"):
        assert f"chassis control {action} from 127.0.0.1" in log
    q.stop()


def test_ipmitool_diag_injects_an_nmi(vbmc: VbmcPeer) -> None:
    QmpClient(vbmc.qmp_socket).cont()
    res = vbmc.ipmitool("chassis", "power", "diag")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Diag" in res.stdout
    log = vbmc.log()
    assert "diag: QMP inject-nmi sent to" in log
    assert "chassis control diag from 127.0.0.1" in log and "completion code 0x00" in log


def test_ipmitool_wrong_password_is_refused_and_never_logged(vbmc: VbmcPeer) -> None:
    wrong = "Wrong-Password-9931"
    bad = _secret_file(Path(tempfile.mkdtemp(prefix="rigpw-")), wrong)
    try:
        res = vbmc.ipmitool("chassis", "power", "status", password_file=bad)
    finally:
        shutil.rmtree(bad.parent, ignore_errors=True)
    assert res.returncode != 0
    assert "Chassis Power is" not in res.stdout
    log = vbmc.log()
    assert wrong not in log and VBMC_PASSWORD not in log


# ---------------------------------------------------------------------------------------------
# vBMC + rig.transports.bmc.BmcClient (pyghmi's client)


def test_bmcclient_logs_in_and_drives_the_guest(vbmc: VbmcPeer) -> None:
    q = QmpClient(vbmc.qmp_socket)
    bmc = vbmc.client()
    try:
        assert bmc.power_state() == "off"
        bmc.set_power("on", wait=True)
        assert q.status() == "running"
        assert bmc.power_state() == "on"
        bmc.set_power("off", wait=True)
        assert q.status() == "paused"
        bmc.set_power("cycle")
        assert q.status() == "running"
        bmc.set_power("reset")
        assert q.status() == "running"
        bmc.diag()
        assert "diag: QMP inject-nmi sent to" in vbmc.log()
        bmc.set_power("off")
        assert bmc.power_state() == "off"
    finally:
        bmc.close()
    # pyghmi proposed SHA-256 (suite 17) first; the vBMC refused it, and the client fell back.
    assert "refused algorithms" in vbmc.log()
    # After close() the same client logs in again.
    assert bmc.power_state() == "off"
    bmc.close()


def test_wrong_password_is_a_lab_fault_without_the_password(
    vbmc: VbmcPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-Password-1234"
    bad = vbmc.client(wrong)
    for _ in range(2):  # twice: a failed login must not leave a session that hangs the next one
        with pytest.raises(LabFault) as info:
            bad.power_state()
        msg = str(info.value)
        assert "rejected the login for user 'admin'" in msg
        assert "check password_env/password_file" in msg
        assert vbmc.name in msg and f"127.0.0.1:{vbmc.port}" in msg
        assert wrong not in msg and VBMC_PASSWORD not in msg
    assert wrong not in caplog.text
    assert wrong not in vbmc.log() and VBMC_PASSWORD not in vbmc.log()
    # The right password still works in the same process: pyghmi's session cache is not poisoned.
    good = vbmc.client()
    assert good.power_state() == "off"
    good.close()


def test_unknown_user_is_a_rejected_login_not_an_unreachable_bmc(vbmc: VbmcPeer) -> None:
    with pytest.raises(LabFault, match="rejected the login for user 'nobody'"):
        vbmc.client(user="nobody").power_state()
    assert "unknown user 'nobody'" in vbmc.log()


def test_nobody_listening_is_a_lab_fault_within_the_deadline() -> None:
    port = free_udp_port()
    bmc = BmcClient("127.0.0.1", port, "admin", SecretStr("whatever-pw"), timeout=3.0, name="ghost")
    started = time.monotonic()
    with pytest.raises(LabFault) as info:
        bmc.power_state()
    elapsed = time.monotonic() - started
    assert f"BMC ghost at 127.0.0.1:{port} did not answer within 3s" in str(info.value)
    assert "is it powered and on the network?" in str(info.value)
    assert elapsed < 3.0 + STARVED_SLACK_S, f"took {elapsed:.1f}s: the deadline did not hold"
    assert "whatever-pw" not in str(info.value)


def test_two_clients_are_independent(vbmc: VbmcPeer) -> None:
    """A client stuck on a dead BMC does not hold up a client of a live one in the same process."""
    dead = BmcClient("127.0.0.1", free_udp_port(), "admin", SecretStr("x-pw"), timeout=5.0, name="dead")
    live = vbmc.client()
    order: list[str] = []
    errors: list[BaseException] = []

    def ask_dead() -> None:
        try:
            dead.power_state()
        except LabFault:
            order.append("dead")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=ask_dead)
    t.start()
    try:
        time.sleep(0.2)  # the dead client is now inside its login
        assert live.power_state() == "off"
        order.append("live")
        live.set_power("on")
        assert QmpClient(vbmc.qmp_socket).status() == "running"
    finally:
        t.join(30)
        live.close()
    assert not errors, errors
    assert order == ["live", "dead"]


def test_vbmc_answers_an_error_code_when_qmp_is_down(tmp_path: Path) -> None:
    missing = Path(tempfile.mkdtemp(prefix="rigqmp-", dir="/tmp")) / "gone.sock"
    peer = VbmcPeer(missing)
    try:
        peer.start()
        bmc = peer.client()
        with pytest.raises(LabFault, match="0xff"):
            bmc.power_state()
        with pytest.raises(LabFault, match=r"refused chassis power on \(completion code 0xff"):
            bmc.set_power("on")
        with pytest.raises(Unavailable, match="refuses diag"):
            bmc.diag()
        bmc.close()
        res = peer.ipmitool("chassis", "power", "status")
        assert res.returncode != 0
        assert peer.proc is not None and peer.proc.poll() is None, "the vBMC must survive a QMP outage"
        assert "does not exist; is the lab up?" in peer.log()
    finally:
        rc = peer.stop()
        shutil.rmtree(missing.parent, ignore_errors=True)
    assert rc == 0


def test_vbmc_port_zero_and_clean_sigterm(qemu: QemuPeer) -> None:  # noqa: F811
    peer = VbmcPeer(qemu.qmp_socket, port=0)
    try:
        peer.start()
        assert peer.port != 0
        bmc = peer.client()
        assert bmc.power_state() == "off"
        bmc.close()
        log_before_stop = peer.log()
    finally:
        rc = peer.stop()
    assert rc == 0
    assert "listening on 127.0.0.1:" in log_before_stop
    assert VBMC_PASSWORD not in log_before_stop


def test_vbmc_refuses_an_unreadable_password_file(qemu: QemuPeer, tmp_path: Path) -> None:  # noqa: F811
    res = subprocess.run(
        [sys.executable, "-m", "rig.lab.vbmc", "--name", "x", "--port", "0", "--password-file",
         str(tmp_path / "missing.pw"), "--qmp-socket", str(qemu.qmp_socket)],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode != 0
    assert "--password-file" in res.stderr and "missing.pw" in res.stderr


# ---------------------------------------------------------------------------------------------
# ipmi_sim: a third-party BMC


def test_ipmi_sim_power_status_and_refused_diag(ipmi_sim: IpmiSimPeer) -> None:
    bmc = BmcClient("127.0.0.1", ipmi_sim.port, "admin", SecretStr(ipmi_sim.PASSWORD), name="sim")
    try:
        assert bmc.power_state() == "off"  # no chassis attached
        with pytest.raises(Unavailable) as info:
            bmc.diag()
        assert info.value.capability == "ipmi"
        assert "refuses diag" in str(info.value)
        assert "0xcc" in str(info.value)
        assert ipmi_sim.PASSWORD not in str(info.value)
        assert bmc.power_state() == "off"  # the session survives a refused command
    finally:
        bmc.close()


def test_ipmi_sim_wrong_password(ipmi_sim: IpmiSimPeer) -> None:
    bmc = BmcClient("127.0.0.1", ipmi_sim.port, "admin", SecretStr("not-the-sim-pw"), name="sim")
    with pytest.raises(LabFault, match="rejected the login") as info:
        bmc.power_state()
    assert "not-the-sim-pw" not in str(info.value)
