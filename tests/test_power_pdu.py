"""rig.power.pdu against a real SNMP agent: the lab's virtual APC PDU (Debian's snmpd with a pass
script, rig.lab.vpdu) driven through labgrid's own ``apc`` back end -- and every way a PDU fails.

No guest is booted here: the outlet is a file the pass script keeps (what the lab's power daemon
watches). The lab tests (tests/test_power_lab.py) plug a laptop-like guest into it.
"""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.errors import InventoryError, LabFault
from rig.inventory import PduPower, load_device
from rig.lab import vpdu
from rig.power import PduPowerControl, PowerState, offers_warm_reset, power_for
from tests.consolepeers import STARVED_SLACK_S


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pdu:
    def __init__(self, dir: Path, port: int) -> None:
        self.dir, self.port = dir, port

    def outlet(self, n: int) -> int | None:
        return vpdu.read_outlet(self.dir, n)


@pytest.fixture
def pdu(tmp_path: Path) -> Iterator[Pdu]:
    d = tmp_path / "pdu"
    port = free_udp_port()
    vpdu.start(d, port)
    try:
        yield Pdu(d, port)
    finally:
        vpdu.stop(d)


def control(port: int, outlet: int | str = 3, *, timeout: float = 10.0, model: str = "apc") -> PduPowerControl:
    return PduPowerControl("thinkpad-7", model, "127.0.0.1", outlet, port=port, timeout=timeout, cycle_pause=0.2)


def test_outlet_on_off_cycle_through_labgrid_apc(pdu: Pdu) -> None:
    p = control(pdu.port)
    assert p.status() is PowerState.ON and pdu.outlet(3) == 1
    p.off()
    assert pdu.outlet(3) == 2 and p.status() is PowerState.OFF
    assert pdu.outlet(2) == 1  # the neighbour outlet is untouched
    p.on()
    assert pdu.outlet(3) == 1 and p.status() is PowerState.ON
    p.cycle()
    assert p.status() is PowerState.ON
    assert not offers_warm_reset(p)  # a PDU can only cut the power: recovery knows RAM is lost
    assert "PDU apc at 127.0.0.1:" in p.describe() and "outlet 3" in p.describe()


def test_reboot_value_is_counted_by_the_virtual_pdu(pdu: Pdu) -> None:
    import subprocess

    subprocess.run(["snmpset", "-v1", "-c", "private", f"127.0.0.1:{pdu.port}", f"{vpdu.APC_OUTLET_OID}.5",
                    "i", "3"], check=True, capture_output=True)
    assert vpdu.reboots(pdu.dir, 5) == 1 and pdu.outlet(5) == 1


def test_outlet_the_pdu_does_not_have_is_a_lab_fault_naming_it(tmp_path: Path) -> None:
    d = tmp_path / "pdu4"
    port = free_udp_port()
    vpdu.start(d, port, outlets=4)  # a 4-outlet PDU; labgrid's apc allows 1..8, so the agent is asked
    try:
        assert control(port, outlet=4).status() is PowerState.ON
        with pytest.raises(LabFault) as ei:
            control(port, outlet=6).off()
    finally:
        vpdu.stop(d)
    text = str(ei.value)
    assert ei.value.component == "pdu"
    assert "thinkpad-7" in text and "PDU apc at 127.0.0.1" in text and "outlet 6" in text
    assert "no outlet 6" in text, text


def test_outlet_out_of_the_back_ends_range_is_a_lab_fault(pdu: Pdu) -> None:
    with pytest.raises(LabFault, match=r"refused outlet 12.*check outlet and port"):
        control(pdu.port, outlet=12).on()
    assert all(pdu.outlet(n) == 1 for n in range(1, 9))


def test_unreachable_pdu_is_a_lab_fault_saying_what_to_check() -> None:
    t0 = time.monotonic()
    with pytest.raises(LabFault) as ei:
        control(free_udp_port()).status()  # nobody there: net-snmp times out (1 s x 6 tries)
    assert time.monotonic() - t0 < 10.0 + STARVED_SLACK_S
    assert "thinkpad-7" in str(ei.value) and "community" in str(ei.value) and "outlet 3" in str(ei.value)


def test_pdu_that_accepts_and_never_answers_udp_fails_at_the_rigs_deadline() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        t0 = time.monotonic()
        with pytest.raises(LabFault, match=r"no answer within 2 s") as ei:
            control(silent.getsockname()[1], timeout=2.0).off()
        took = time.monotonic() - t0
    # The rig's deadline, not net-snmp's 6 s: that one would come as net-snmp's own words, not this text.
    assert 2.0 <= took < 2.0 + STARVED_SLACK_S, took
    assert "thinkpad-7" in str(ei.value) and "outlet 3" in str(ei.value)


def test_http_pdu_that_accepts_and_never_answers_tcp_fails_at_the_rigs_deadline() -> None:
    """labgrid's simplerest back end calls requests without a timeout: it would block forever."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # the kernel accepts; nobody ever reads or answers
        host = f"http://127.0.0.1:{srv.getsockname()[1]}/relay/{{index}}/{{value}}"
        p = PduPowerControl("thinkpad-7", "simplerest", host, 1, timeout=1.5)
        t0 = time.monotonic()
        with pytest.raises(LabFault, match=r"PDU simplerest .* outlet 1: reading the outlet failed: no answer"):
            p.status()
        assert time.monotonic() - t0 < 1.5 + STARVED_SLACK_S


def test_wrong_community_is_a_lab_fault_naming_the_community(tmp_path: Path) -> None:
    d = tmp_path / "pdu"
    port = free_udp_port()
    vpdu.start(d, port, community="not-private")  # labgrid's apc always sends 'private'
    try:
        with pytest.raises(LabFault, match=r"community.*'private'"):
            control(port).on()
    finally:
        vpdu.stop(d)
    assert vpdu.read_outlet(d, 3) == 1  # nothing was switched


def test_stalled_agent_recovers_when_it_answers_again(pdu: Pdu) -> None:
    import os
    import signal

    pid = vpdu.running_pid(pdu.dir)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(LabFault, match="no answer within 1.5 s"):
            control(pdu.port, timeout=1.5).status()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert control(pdu.port).status() is PowerState.ON


INVENTORY = """
name = "thinkpad-t14"
[ssh]
host = "10.0.0.5"
key_file = "id"
known_hosts = "kh"
[power]
kind = "pdu"
model = "{model}"
host = "127.0.0.1"
port = {port}
outlet = 3
"""


def test_inventory_pdu_section_builds_the_back_end(tmp_path: Path, pdu: Pdu) -> None:
    f = tmp_path / "t.toml"
    f.write_text(INVENTORY.format(model="apc", port=pdu.port))
    dev = load_device(f)
    assert isinstance(dev.power, PduPower) and dev.power.timeout == 10.0
    p = power_for(dev)
    p.off()
    assert pdu.outlet(3) == 2


def test_unknown_model_fails_at_load_naming_file_field_and_the_known_models(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text(INVENTORY.format(model="apc-typo", port=161))
    with pytest.raises(InventoryError) as ei:
        load_device(f)
    text = str(ei.value)
    assert str(f) in text and "power.pdu.model" in text and "unknown PDU model 'apc-typo'" in text
    assert "gude" in text and "shelly_gen2" in text


def test_pdu_password_only_for_url_hosts_and_never_in_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "t.toml"
    f.write_text(textwrap.dedent(INVENTORY.format(model="apc", port=161)) + 'user = "u"\npassword_env = "PW"\n')
    with pytest.raises(InventoryError, match="http"):
        load_device(f)
    monkeypatch.setenv("PW", "s3cr3t-pdu")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        stop = threading.Event()

        def answer() -> None:  # a web PDU that refuses everyone: HTTP 401
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                except OSError:
                    continue
                with c:
                    c.recv(65536)
                    c.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        g = tmp_path / "w.toml"
        g.write_text(textwrap.dedent(f"""
            name = "plug-9"
            [ssh]
            host = "10.0.0.5"
            key_file = "id"
            known_hosts = "kh"
            [power]
            kind = "pdu"
            model = "simplerest"
            host = "http://127.0.0.1:{port}/relay/{{index}}/{{value}}"
            outlet = 1
            user = "u"
            password_env = "PW"
        """))
        with pytest.raises(LabFault) as ei:
            power_for(load_device(g)).on()
        stop.set()
        t.join(2)
    assert "plug-9" in str(ei.value)
    assert "s3cr3t-pdu" not in str(ei.value) and "401" in str(ei.value)


def test_rig_power_cli_switches_and_reads_the_outlet_under_the_device_lock(
    tmp_path: Path, pdu: Pdu, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from rig.cli import main
    from rig.device.dut import DeviceLock

    monkeypatch.setenv("RIG_LOCK_DIR", str(tmp_path / "locks"))
    inv = tmp_path / "devices"
    inv.mkdir()
    (inv / "t.toml").write_text(INVENTORY.format(model="apc", port=pdu.port))
    run = CliRunner().invoke
    r = run(main, ["--devices", str(inv), "power", "thinkpad-t14", "off"])
    assert r.exit_code == 0, r.output
    assert pdu.outlet(3) == 2 and "off done" in r.output
    r = run(main, ["--devices", str(inv), "power", "thinkpad-t14", "status"])
    assert r.exit_code == 0 and "thinkpad-t14: off" in r.output and "PDU apc at 127.0.0.1" in r.output, r.output
    r = run(main, ["--devices", str(inv), "power", "thinkpad-t14", "reset"])
    assert r.exit_code == 0 and "no warm reset: power cycle instead" in r.output, r.output
    assert pdu.outlet(3) == 1
    lock = DeviceLock(load_device(inv / "t.toml"))
    lock.acquire()
    try:
        r = run(main, ["--devices", str(inv), "power", "thinkpad-t14", "off"])
    finally:
        lock.release()
    assert r.exit_code == 1 and "DEVICE BUSY" in r.output and pdu.outlet(3) == 1, r.output
    r = run(main, ["--devices", str(inv), "power", "no-such-laptop", "on"])
    assert r.exit_code == 1 and "unknown device(s) no-such-laptop" in r.output, r.output
