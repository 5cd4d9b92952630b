"""rig.power: the QMP and IPMI implementations against one real QEMU (the IPMI one through the
lab's virtual BMC), the manual one, and the inventory factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from test_bmc import VBMC_PASSWORD, VbmcPeer, vbmc  # noqa: F401  (fixtures are used by name)
from test_qmp import QemuPeer, qemu  # noqa: F401

from rig.errors import ConfigError, Unavailable
from rig.inventory import Device
from rig.power import (
    IpmiPowerControl,
    ManualPowerControl,
    PowerControl,
    PowerState,
    QmpPowerControl,
    power_for,
)
from rig.transports.bmc import BmcClient
from rig.transports.qmp import QmpClient


@pytest.mark.lab
def test_qmp_power_model(qemu: QemuPeer) -> None:  # noqa: F811
    q = QmpClient(qemu.qmp_socket)
    power = QmpPowerControl(q)
    assert power.status() is PowerState.OFF  # prelaunch (-S)
    power.on()
    assert q.status() == "running" and power.status() is PowerState.ON
    power.on()  # already on: nothing happens
    assert q.status() == "running"
    power.off()
    assert q.status() == "paused" and power.status() is PowerState.OFF
    power.off()  # idempotent
    assert power.status() is PowerState.OFF
    power.cycle()
    assert q.status() == "running"
    power.reset()
    assert q.status() == "running"
    power.off()
    power.reset()  # a reset of an 'off' guest boots it
    assert q.status() == "running"
    assert str(qemu.qmp_socket) in power.describe()
    power.off()


@pytest.mark.lab
def test_qmp_and_ipmi_power_drive_the_same_guest(vbmc: VbmcPeer) -> None:  # noqa: F811
    qmp_power = QmpPowerControl(QmpClient(vbmc.qmp_socket))
    bmc = BmcClient("127.0.0.1", vbmc.port, "admin", SecretStr(VBMC_PASSWORD), name=vbmc.name)
    ipmi_power = IpmiPowerControl(bmc)
    try:
        assert qmp_power.status() is PowerState.OFF and ipmi_power.status() is PowerState.OFF
        ipmi_power.on()
        assert qmp_power.status() is PowerState.ON
        qmp_power.off()
        assert ipmi_power.status() is PowerState.OFF
        ipmi_power.cycle()
        assert qmp_power.status() is PowerState.ON
        qmp_power.off()
        ipmi_power.reset()
        assert qmp_power.status() is PowerState.ON
        ipmi_power.off()
        assert qmp_power.status() is PowerState.OFF
        qmp_power.on()
        assert ipmi_power.status() is PowerState.ON
        assert vbmc.name in ipmi_power.describe() and "'admin'" in ipmi_power.describe()
    finally:
        bmc.close()


@pytest.mark.parametrize(
    ("qmp_status", "expected"),
    [
        ("running", PowerState.ON),
        ("guest-panicked", PowerState.ON),  # powered, but stuck: still 'on' to a power button
        ("internal-error", PowerState.ON),
        ("paused", PowerState.OFF),
        ("shutdown", PowerState.OFF),  # the guest powered itself off (-no-shutdown keeps QEMU)
        ("prelaunch", PowerState.OFF),
        ("inmigrate", PowerState.UNKNOWN),
        ("debug", PowerState.UNKNOWN),
    ],
)
def test_qmp_state_mapping(qmp_status: str, expected: PowerState) -> None:
    assert QmpPowerControl.state_of(qmp_status) is expected


def test_manual_power_asks_a_person() -> None:
    power = ManualPowerControl("press the power button of the grey ThinkPad for 5 s")
    assert power.status() is PowerState.UNKNOWN
    for button in (power.on, power.off, power.cycle, power.reset):
        with pytest.raises(Unavailable) as info:
            button()
        assert info.value.capability == "power"
        assert str(info.value) == (
            "power unavailable: manual power: press the power button of the grey ThinkPad for 5 s"
        )
    assert "grey ThinkPad" in power.describe()


def _device(power: dict[str, Any], tmp_path: Path) -> Device:
    return Device.model_validate({
        "name": "lap1",
        "ssh": {"host": "10.0.0.5", "host_key": "ssh-ed25519 AAAAC3Nza", "key_file": str(tmp_path / "k")},
        "power": power,
    })


def test_power_for_reads_the_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIG_TEST_BMC_PW", "env-Secret-77")
    ipmi = power_for(_device(
        {"kind": "ipmi", "host": "10.0.0.9", "port": 6230, "user": "root", "password_env": "RIG_TEST_BMC_PW"},
        tmp_path,
    ))
    assert isinstance(ipmi, IpmiPowerControl)
    assert (ipmi.bmc.host, ipmi.bmc.port, ipmi.bmc.user, ipmi.bmc.name) == ("10.0.0.9", 6230, "root", "lap1")
    assert ipmi.bmc._password.get_secret_value() == "env-Secret-77"
    assert "env-Secret-77" not in ipmi.describe() and "env-Secret-77" not in repr(ipmi.bmc)

    pw_file = tmp_path / "bmc.pw"
    pw_file.write_text("file-Secret-88\n")
    pw_file.chmod(0o600)
    from_file = power_for(_device(
        {"kind": "ipmi", "host": "bmc1", "user": "admin", "password_file": str(pw_file)}, tmp_path
    ))
    assert isinstance(from_file, IpmiPowerControl)
    assert from_file.bmc._password.get_secret_value() == "file-Secret-88"
    assert from_file.bmc.port == 623

    qmp = power_for(_device({"kind": "qmp", "socket": str(tmp_path / "qmp.sock")}, tmp_path))
    assert isinstance(qmp, QmpPowerControl)
    assert qmp.qmp.socket_path == tmp_path / "qmp.sock"

    manual = power_for(_device({"kind": "manual", "instructions": "ask Jo"}, tmp_path))
    assert isinstance(manual, ManualPowerControl) and manual.instructions == "ask Jo"

    for impl in (ipmi, qmp, manual):
        assert isinstance(impl, PowerControl)


def test_power_for_names_a_missing_password_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIG_TEST_UNSET_PW", raising=False)
    dev = _device(
        {"kind": "ipmi", "host": "bmc1", "user": "admin", "password_env": "RIG_TEST_UNSET_PW"}, tmp_path
    )
    with pytest.raises(ConfigError, match="RIG_TEST_UNSET_PW") as info:
        power_for(dev)
    assert "lap1" in str(info.value)
