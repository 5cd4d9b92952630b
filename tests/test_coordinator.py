"""Devices as labgrid places, against the real engine: labgrid-coordinator and labgrid-exporter.

The coordinator listens on 127.0.0.1 and a free port (never its default of all interfaces), with an
exporter publishing the bench's console (NetworkSerialPort) and outlet (NetworkPowerPort), as a lab
runs them. "Controllers" are separate processes with their own labgrid identity (LG_HOSTNAME /
LG_USERNAME) and their own local lock folder, as two benches' controllers are; each drives the
rig's own API (rig.transports.coordinator.PlaceLease, rig.device.dut.Dut.open). No lab guest is booted: the place is
acquired before the device is contacted, and these tests check that step.

Not exercised here: two real hosts (both controllers run on this machine; "another host" is a
holder comment naming a host that is not this one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

from rig.device.dut import DeviceBusy, Dut
from rig.errors import ConfigError, LabFault
from rig.inventory import PduPower, load_device
from rig.reports.results import load_run
from rig.transports.coordinator import (
    PlaceLease,
    Session,
    holder_comment,
    parse_holder,
    place_device,
    session_for,
    stale_here,
)
from tests.consolepeers import free_port

BIN = Path(sys.executable).parent

#: How long a controller process may take to finish: generous, since the pure tests run at low CPU
#: priority beside the lab's guests (with two busy loops beside them, the coordinator and exporter took
#: 13 s to start and one test 58 s); a guard against a hang, not a timing.
EXIT_WAIT_S = 90


class Proc:
    """A labgrid program whose output is read line by line (to wait for its ready line)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.p = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self._seen:
                self.lines.append(line.rstrip())
                self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self.lines):
                left = end - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    raise AssertionError(f"{self.p.args[0]}: no {text!r} in {self.lines[-20:]}")
                self._seen.wait(min(left, 0.5))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)


def start_coordinator(folder: Path, port: int) -> Proc:
    folder.mkdir(parents=True, exist_ok=True)
    c = Proc([str(BIN / "labgrid-coordinator"), "-l", f"127.0.0.1:{port}"], folder)
    c.wait_for("Coordinator ready")
    return c


class Admin:
    """The lab admin's side, in this process: the rig's own session (one per process and coordinator).

    One session per process is labgrid's rule too: two client streams from one process share one
    gRPC connection, and the coordinator refuses a second stream from the same peer.
    """

    def __init__(self, address: str) -> None:
        self.address = address

    @property
    def s(self) -> Session:
        return session_for(self.address, 10)

    def _rpc(self, what: str, request: str, **fields: object) -> None:
        async def go(c: Any) -> None:
            await getattr(c.stub, request)(getattr(pb, request + "Request")(**fields))
            await c.sync_with_coordinator()

        self.s.call(what, go)

    def create(self, place: str, match: str | None = None) -> None:
        self._rpc("create", "AddPlace", name=place)
        if match:
            self._rpc("add match", "AddPlaceMatch", placename=place, pattern=match)

    def show(self, place: str) -> Any:
        self.s.call("sync", lambda c: c.sync_with_coordinator())
        return self.s.place(place)


def client_as(address: str, identity: str, *args: str) -> None:
    """labgrid-client as another controller would run it (its own process and identity)."""
    host, user = identity.split("/")
    env = {**os.environ, "LG_HOSTNAME": host, "LG_USERNAME": user}
    proc = subprocess.run([str(BIN / "labgrid-client"), "-x", address, *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@dataclass
class Lab:
    address: str
    root: Path
    coordinator: Proc
    exporter: Proc
    admin: Admin


@pytest.fixture(scope="session")
def lg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One coordinator and one exporter (bench3's console server and PDU outlet) for the session."""
    root = tmp_path_factory.mktemp("labgrid")
    port = free_port()
    coordinator = start_coordinator(root / "coordinator", port)
    exports = root / "exports.yaml"
    exports.write_text(
        "bench3:\n"
        "  NetworkSerialPort:\n    host: '127.0.0.1'\n    port: 7003\n"
        "  NetworkPowerPort:\n    model: 'simplerest'\n    host: 'http://127.0.0.1:7080/outlet/{index}'\n    index: 3\n"
    )
    exporter = Proc(
        [str(BIN / "labgrid-exporter"), "-c", f"127.0.0.1:{port}", "-n", "bench-exporter", "--hostname", "127.0.0.1",
         str(exports)], root,
    )  # fmt: skip
    try:
        exporter.wait_for("connected to coordinator")
        yield Lab(f"127.0.0.1:{port}", root, coordinator, exporter, Admin(f"127.0.0.1:{port}"))
    finally:
        exporter.stop()
        coordinator.stop(signal.SIGKILL)  # a graceful stop waits 5 s for the clients' streams


_places = iter(range(1, 1000))


def new_place(lg: Lab) -> str:
    """A fresh place matching bench3's exported resources (each test its own)."""
    name = f"x1gen9-bench3-{next(_places)}"
    lg.admin.create(name, "bench-exporter/bench3/*")
    return name


def inventory(folder: Path, place: str, address: str, wait: float = 0.0, name: str = "x1gen9") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.toml"
    p.write_text(
        f'name = "{name}"\n[ssh]\nhost = "192.0.2.9"\nkey_file = "id"\nknown_hosts = "kh"\n'
        f'[lab]\nplace = "{place}"\ncoordinator = "{address}"\nplace_wait = {wait}\nconnect_timeout = 5\n'
    )
    return p


CONTROLLER = r"""
import sys, time
from rig.inventory import load_device
from rig.reports.results import load_run
from rig.transports.coordinator import PlaceLease
from rig.device.dut import DeviceBusy
lease = PlaceLease(load_device(sys.argv[1]))
try:
    lease.acquire()
except DeviceBusy as exc:
    print("BUSY", exc, flush=True)
    sys.exit(3)
print("HELD", lease.cleared or "", flush=True)
if sys.argv[2] == "hold":
    sys.stdin.readline()
lease.release()
print("RELEASED", flush=True)
"""


def controller(tmp_path: Path, inv: Path, identity: str, mode: str, run_id: str) -> subprocess.Popen[str]:
    """Another controller: its own process, labgrid identity, run id and local lock folder."""
    host, user = identity.split("/")
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    env = {
        **os.environ, "LG_HOSTNAME": host, "LG_USERNAME": user, "RIG_RUN_ID": run_id,
        "RIG_LOCK_DIR": str(tmp_path / f"locks-{host}"), "PYTHONPATH": str(Path(__file__).parent.parent),
    }  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(script), str(inv), mode], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def first_line(p: subprocess.Popen[str]) -> str:
    """The controller's answer (HELD/BUSY/RELEASED), past any log lines."""
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith(("HELD", "BUSY", "RELEASED")):
            return line.strip()
    return ""


def place_state(lg: Lab, place: str) -> Any:
    return lg.admin.show(place)


# ---------------------------------------------------------------------------------------------


def test_holder_comment_round_trip_and_staleness() -> None:
    c = holder_comment("night-7", 4242, "bench-a", 1_780_000_000.0)
    h = parse_holder(c)
    assert h is not None and (h.run_id, h.pid, h.host, h.since) == ("night-7", 4242, "bench-a", 1_780_000_000.0)
    assert parse_holder("Alice: flashing BIOS, do not touch") is None
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert stale_here(parse_holder(holder_comment("r", gone.pid, "me", 0)), "me")
    assert not stale_here(parse_holder(holder_comment("r", gone.pid, "other", 0)), "me")  # not ours to judge
    assert not stale_here(parse_holder(holder_comment("r", os.getpid(), "me", 0)), "me")


def test_a_place_without_a_coordinator_address_says_where_to_set_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    p = inventory(tmp_path, "x", "")
    p.write_text(p.read_text().replace('coordinator = ""\n', ""))
    with pytest.raises(ConfigError, match=r"no coordinator: set \[lab\] coordinator .* or .* LG_COORDINATOR"):
        PlaceLease(load_device(p))


def test_two_controllers_one_place_the_second_is_refused_naming_the_holder(lg: Lab, tmp_path: Path) -> None:
    place = new_place(lg)
    inv = inventory(tmp_path / "inv", place, lg.address)
    a = controller(tmp_path, inv, "bench-a/ci", "hold", "night-a")
    assert first_line(a) == "HELD"
    shown = place_state(lg, place)
    assert shown.acquired == "bench-a/ci"
    assert re.fullmatch(rf"rig: run night-a, pid {a.pid}@\S+, since \d{{4}}-\S+", shown.comment), shown.comment
    # The exporter's resources came with the place.
    assert ["bench-exporter", "bench3", "NetworkSerialPort", "NetworkSerialPort"] in shown.acquired_resources
    b = controller(tmp_path, inv, "bench-b/ci", "once", "night-b")
    out = first_line(b)
    assert b.wait(EXIT_WAIT_S) == 3, out
    assert out.startswith("BUSY device x1gen9: labgrid place " + place)
    assert f"held by bench-a/ci (run night-a, pid {a.pid}@" in out
    # A second place on the same bench resources (a mistake in the lab's places): refused, and said so.
    twin = new_place(lg)
    with pytest.raises(DeviceBusy, match=rf"place {twin} on .* refused: Failed to acquire resources"):
        PlaceLease(load_device(inventory(tmp_path / "twin", twin, lg.address))).acquire()
    # The holder ends: its release clears the comment, and the other controller gets the place.
    assert a.stdin is not None
    a.stdin.write("\n")
    a.stdin.flush()
    assert a.wait(EXIT_WAIT_S) == 0
    shown = place_state(lg, place)
    assert shown.acquired is None and shown.comment == ""
    b = controller(tmp_path, inv, "bench-b/ci", "once", "night-b")
    assert first_line(b) == "HELD" and b.wait(EXIT_WAIT_S) == 0


def test_dut_open_is_refused_at_the_place_and_leaves_the_local_lock_free(
    lg: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Dut.open, as the plugin and every rig command use it: DEVICE BUSY, then nothing held."""
    place = new_place(lg)
    inv = inventory(tmp_path / "inv", place, lg.address)
    a = controller(tmp_path, inv, "bench-a/ci", "hold", "night-a")
    try:
        assert first_line(a) == "HELD"
        monkeypatch.setenv("RIG_LOCK_DIR", str(tmp_path / "locks-here"))
        dut = Dut(load_device(inv), tmp_path / "logs", run_id="night-here")
        with pytest.raises(DeviceBusy, match=rf"place {place} on {lg.address} is held by bench-a/ci \(run night-a"):
            dut.open()
        assert not (tmp_path / "logs").exists()  # refused before anything was written
        dut.lock.acquire()  # the local flock was released with the refusal
        dut.lock.release()
    finally:
        assert a.stdin is not None
        a.stdin.write("\n")
        a.stdin.flush()
        a.wait(EXIT_WAIT_S)


def test_a_waiting_controller_gets_the_place_when_the_holder_releases(lg: Lab, tmp_path: Path) -> None:
    place = new_place(lg)
    a = controller(tmp_path, inventory(tmp_path / "a", place, lg.address), "bench-a/ci", "hold", "night-a")
    assert first_line(a) == "HELD"
    short = controller(tmp_path, inventory(tmp_path / "s", place, lg.address, wait=1), "bench-s/ci", "once", "s")
    out = first_line(short)
    assert short.wait(EXIT_WAIT_S) == 3 and "after waiting" in out and "held by bench-a/ci" in out, out
    waiter = controller(tmp_path, inventory(tmp_path / "b", place, lg.address, wait=30), "bench-b/ci", "once", "b")
    time.sleep(1.5)  # the waiter is in the coordinator's queue now (not a timing assertion: order only)
    assert waiter.poll() is None
    assert a.stdin is not None
    a.stdin.write("\n")
    a.stdin.flush()
    assert a.wait(EXIT_WAIT_S) == 0
    assert first_line(waiter) == "HELD"
    assert waiter.wait(EXIT_WAIT_S) == 0


def test_a_sigkilled_holder_is_cleared_by_the_next_run_on_this_host(lg: Lab, tmp_path: Path) -> None:
    place = new_place(lg)
    inv = inventory(tmp_path / "inv", place, lg.address)
    a = controller(tmp_path, inv, "bench-a/ci", "hold", "night-a")
    assert first_line(a) == "HELD"
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    assert place_state(lg, place).acquired == "bench-a/ci"  # labgrid keeps a killed holder's lock
    b = controller(tmp_path, inv, "bench-b/ci", "once", "night-b")
    out = first_line(b)
    assert b.wait(EXIT_WAIT_S) == 0, out
    assert out.startswith("HELD place " + place) and f"pid {a.pid}@" in out and "is gone" in out, out


def test_a_holder_on_another_host_is_reported_with_its_age_not_cleared(lg: Lab, tmp_path: Path) -> None:
    place = new_place(lg)
    # A run on another controller, 3 h ago (its own identity; its comment names its host).
    comment = holder_comment("night-far", 1, "far-bench", time.time() - 3 * 3600 - 5 * 60)
    client_as(lg.address, "far-bench/ci", "-p", place, "acquire")
    client_as(lg.address, "far-bench/ci", "-p", place, "set-comment", comment)
    b = controller(tmp_path, inventory(tmp_path / "inv", place, lg.address), "bench-b/ci", "once", "night-b")
    out = first_line(b)
    assert b.wait(EXIT_WAIT_S) == 3, out
    assert "held by far-bench/ci (run night-far, pid 1@far-bench, for 3 h 5 min)" in out
    assert "another controller (far-bench)" in out
    assert place_state(lg, place).acquired == "far-bench/ci"
    client_as(lg.address, "far-bench/ci", "-p", place, "release")  # bench3's resources are free again


def test_an_unreachable_coordinator_is_a_lab_fault(tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", "x1gen9-bench3", f"127.0.0.1:{free_port()}")
    with pytest.raises(LabFault, match=r"labgrid coordinator 127\.0\.0\.1:\d+ unreachable") as exc:
        PlaceLease(load_device(inv)).acquire()
    assert exc.value.component == "coordinator"


def test_a_missing_place_is_a_lab_fault_naming_how_to_create_it(lg: Lab, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", "no-such-place", lg.address)
    with pytest.raises(LabFault, match=r"has no place 'no-such-place' \(create it: labgrid-client -x .* create\)"):
        PlaceLease(load_device(inv)).acquire()


def test_a_coordinator_restart_mid_run_is_a_lab_fault_and_the_next_test_acquires_again(tmp_path: Path) -> None:
    """Its own coordinator (the session's one stays up for the other tests)."""
    port = free_port()
    folder = tmp_path / "coordinator"
    folder.mkdir()
    # The places a coordinator keeps across restarts (it saves them every 15 s; here from a former run).
    (folder / "places.yaml").write_text("x1gen9-bench3:\n  comment: ''\n  matches: []\n")
    c = start_coordinator(folder, port)
    address = f"127.0.0.1:{port}"
    admin = Admin(address)
    try:
        lease = PlaceLease(load_device(inventory(tmp_path / "inv", "x1gen9-bench3", address)), "night-r")
        lease.acquire()
        assert lease.lost() is None
        c.stop(signal.SIGKILL)  # the coordinator dies mid-run (a restart is the same to the holder)
        end = time.monotonic() + 30
        while lease.lost() is None and time.monotonic() < end:
            time.sleep(0.1)
        why = lease.lost()
        assert why is not None and "went away (stopped or restarted)" in why and "the lock was lost" in why
        c = start_coordinator(folder, port)  # places are kept, acquisitions are not
        assert admin.show("x1gen9-bench3").acquired is None
        lease.ensure()  # before the next test: a new session, the place acquired again
        assert lease.lost() is None
        assert admin.show("x1gen9-bench3").comment.startswith("rig: run night-r, pid ")
        lease.release()
        assert admin.show("x1gen9-bench3").acquired is None
        c.stop(signal.SIGKILL)
        with pytest.raises(LabFault, match="unreachable|connection is gone"):
            lease.acquire()  # and not back: a lab fault at set-up
    finally:
        c.stop(signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_bad_place_name_names_the_file_and_field(tmp_path: Path) -> None:
    from rig.errors import InventoryError

    p = inventory(tmp_path, "bench 3; rm -rf /", "127.0.0.1:1")
    with pytest.raises(InventoryError, match=r"(?s)x1gen9\.toml.*lab\.place: place .bench 3; rm -rf /.") as exc:
        load_device(p)
    assert "use letters, digits" in str(exc.value)


PLUGIN_SUITE = """
def test_uses_the_laptop(dut):
    pass
"""


def test_a_pytest_run_on_a_held_place_is_device_busy_and_a_dead_coordinator_a_lab_fault(
    lg: Lab, tmp_path: Path
) -> None:
    """The plugin, as a second controller's nightly: one laptop held by another controller's run, one
    whose coordinator does not answer. Neither is contacted over SSH (the place comes first)."""
    place = new_place(lg)
    inv = tmp_path / "inv"
    inventory(inv, place, lg.address, name="held-x1")
    inventory(inv, "x1gen9-bench9", f"127.0.0.1:{free_port()}", name="far-t14")
    a = controller(tmp_path, inv / "held-x1.toml", "bench-a/ci", "hold", "night-a")
    try:
        assert first_line(a) == "HELD"
        (tmp_path / "test_suite.py").write_text(PLUGIN_SUITE)
        env = {**os.environ, "RIG_RUN_ID": "night-b", "LG_HOSTNAME": "bench-b", "RIG_LOCK_DIR": str(tmp_path / "lk")}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", str(tmp_path / "test_suite.py"), "--rig-devices", str(inv),
             "--rig-report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider", "-p", "no:xdist", "-rf"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        assert a.stdin is not None
        a.stdin.write("\n")
        a.stdin.flush()
        a.wait(EXIT_WAIT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert re.search(rf"DEVICE BUSY: device held-x1: labgrid place {place} .* held by bench-a/ci \(run night-a", out)
    assert "LAB FAULT on far-t14 (not a device failure): labgrid coordinator 127.0.0.1:" in out
    run = tmp_path / "reports" / "night-b"
    assert not (run / "held-x1").exists()  # the holder's device: nothing written by this run
    rep = load_run(run).device("far-t14")
    assert rep is not None and rep.cells()["test_uses_the_laptop"].label == "lab-fault"


def test_the_held_places_console_and_outlet_come_from_the_exporter(lg: Lab, tmp_path: Path) -> None:
    """Looked up through the rig's API (rig.transports.coordinator), as Dut.open does for a from_place inventory."""
    place = new_place(lg)
    lease = PlaceLease(load_device(inventory(tmp_path / "inv", place, lg.address)), "night-r")
    with pytest.raises(LabFault, match="not held by this run"):
        lease.console_url()
    lease.acquire()
    try:
        # labgrid's own serial driver opens an rfc2217 port with ign_set_control too (no modem lines on a pty).
        assert lease.console_url() == ("rfc2217://127.0.0.1:7003?ign_set_control", 115200)
        outlet = lease.power_port()
        assert (outlet.name, outlet.args["model"], outlet.args["index"]) == ("NetworkPowerPort", "simplerest", 3)
        assert outlet.path == "bench-exporter/bench3/NetworkPowerPort/NetworkPowerPort"
    finally:
        lease.release()


# -- console and power outlet from the place's exported resources ([console]/[power] from_place) ----------


def from_place_inventory(folder: Path, place: str, address: str, console: str = "", power: str = "") -> Path:
    """An inventory with neither a console URL nor a PDU address: both are the place's."""
    p = inventory(folder, place, address)
    p.write_text(p.read_text() + f"[console]\nfrom_place = true\n{console}"
                 f'[power]\nkind = "pdu"\nfrom_place = true\ncycle_pause = 1\ntimeout = 2\n{power}')  # fmt: skip
    return p


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[console]\nurl = "rfc2217://10.0.0.5:7001"\nfrom_place = true\n', r"console: give url or from_place"),
        ("[console]\nbaud = 9600\n", r"console: give url = .* or from_place = true"),
        ("[console]\nfrom_place = true\nbaud = 9600\n", r"console: with from_place the speed is the place's"),
        ('[console]\nurl = "rfc2217://10.0.0.5:7001"\nresource = "debug"\n', r"console: resource .* needs from_pl"),
        ('[power]\nkind = "pdu"\nfrom_place = true\nhost = "10.0.0.9"\noutlet = 2\n',
         r"power\.pdu: with from_place .* remove host, outlet"),
        ('[power]\nkind = "pdu"\nhost = "10.0.0.9"\n', r"power\.pdu: pdu power needs model, outlet \(or from_pl"),
    ],
)
def test_a_from_place_inventory_is_checked_when_it_is_read(tmp_path: Path, body: str, problem: str) -> None:
    from rig.errors import InventoryError

    p = inventory(tmp_path, "x1gen9-bench3", "127.0.0.1:1")
    p.write_text(p.read_text() + body)
    with pytest.raises(InventoryError, match=rf"(?s)x1gen9\.toml: invalid device inventory.*{problem}"):
        load_device(p)


def test_from_place_without_a_place_names_both_sections(tmp_path: Path) -> None:
    from rig.errors import InventoryError

    p = from_place_inventory(tmp_path, "x", "127.0.0.1:1")
    p.write_text(re.sub(r"(?s)\[lab\].*?(?=\[console\])", "", p.read_text()))
    with pytest.raises(InventoryError, match=r"\[console\] and \[power\] from_place = true needs \[lab\] place"):
        load_device(p)


def test_before_its_place_is_acquired_a_from_place_device_has_no_console_and_a_pending_outlet(
    tmp_path: Path,
) -> None:
    dut = Dut(load_device(from_place_inventory(tmp_path, "x1gen9-bench3", "127.0.0.1:1")), tmp_path / "logs")
    assert dut.console is None
    with pytest.raises(ConfigError, match=r"outlet is labgrid place x1gen9-bench3's NetworkPowerPort, known once"):
        dut.power.cycle()
    assert "(not acquired yet)" in dut.power.describe()


BENCH5 = """\
bench5:
  console:
    cls: NetworkSerialPort
    host: 127.0.0.1
    port: {console}
  debug:
    cls: NetworkSerialPort
    host: 127.0.0.1
    port: {debug}
    protocol: raw
    speed: 921600
  outlet:
    cls: NetworkPowerPort
    model: apc
    host: 127.0.0.1:{snmp}
    index: 5
  bad-outlet:
    cls: NetworkPowerPort
    model: nosuchpdu
    host: 127.0.0.1
    index: 2
"""


def start_exporter(lg: Lab, name: str, config: str) -> Proc:
    """Another bench's exporter on the session's coordinator (its own name and resources)."""
    exports = lg.root / f"{name}.yaml"
    exports.write_text(config)
    e = Proc([str(BIN / "labgrid-exporter"), "-c", lg.address, "-n", name, "--hostname", "127.0.0.1", str(exports)],
             lg.root)  # fmt: skip
    e.wait_for("connected to coordinator")
    return e


def test_place_resources_several_of_a_kind_by_name_missing_and_exporter_offline_are_lab_faults(
    lg: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIG_LOCK_DIR", str(tmp_path / "locks"))
    exporter = start_exporter(lg, "bench5-exporter", BENCH5.format(console=7105, debug=7106, snmp=16105))
    try:
        place = f"t14-bench5-{next(_places)}"
        lg.admin.create(place, "bench5-exporter/bench5/*")
        inv = tmp_path / "inv"
        # Two NetworkSerialPorts and no name: which one is not guessed.
        lease = PlaceLease(load_device(from_place_inventory(inv, place, lg.address)), "night-5")
        lease.acquire()
        try:
            with pytest.raises(LabFault, match=rf"place {place} on .* has 2 NetworkSerialPort resources \(console, "
                               r"debug\): say which one with \[console\] resource = \"NAME\" in .*x1gen9\.toml"):
                place_device(lease.device, lease)
        finally:
            lease.release()
        # Named: that one, with its protocol and speed; the outlet is the place's only NetworkPowerPort.
        named = load_device(from_place_inventory(inv, place, lg.address, console='resource = "debug"\n',
                                                 power='resource = "outlet"\n'))  # fmt: skip
        # rig check acquires the place and checks what the place gives (nothing listens there: named failures).
        from rig.cli import check_device

        row = check_device(named, tmp_path / "check")
        assert row.cells["place"] == ("ok", f"{place} on {lg.address}")
        assert row.cells["console"][0] == "FAIL" and "socket://127.0.0.1:7106" in row.cells["console"][1]
        assert row.cells["power"][0] == "FAIL" and "PDU apc at 127.0.0.1:16105 outlet 5" in row.cells["power"][1]
        assert lg.admin.show(place).acquired is None  # released at the end of the check
        lease = PlaceLease(named, "night-5")
        lease.acquire()
        try:
            dev = place_device(named, lease)
            assert dev.console is not None
            assert (dev.console.url, dev.console.baud) == ("socket://127.0.0.1:7106", 921600)
            assert isinstance(dev.power, PduPower)
            assert (dev.power.model, dev.power.host, dev.power.outlet, dev.power.cycle_pause) == (
                "apc", "127.0.0.1:16105", 5, 1.0)  # fmt: skip
            # A name the place does not have: the names it has.
            assert named.console is not None
            wrong = named.model_copy(update={"console": named.console.model_copy(update={"resource": "uart9"})})
            with pytest.raises(LabFault, match=r"has no NetworkSerialPort named 'uart9' .* resources: console, debug"):
                place_device(wrong, lease)
            # Two outlets and none named: which one is not guessed either.
            assert isinstance(named.power, PduPower)
            unnamed = named.model_copy(update={"power": named.power.model_copy(update={"resource": None})})
            two = r"has 2 NetworkPowerPort resources \((outlet, bad-|bad-outlet, )outlet\): say which one with \[power"
            with pytest.raises(LabFault, match=two):
                place_device(unnamed, lease)
            # What an exporter publishes is not checked by it: the rig's schema refuses a model labgrid lacks.
            bad = named.model_copy(update={"power": named.power.model_copy(update={"resource": "bad-outlet"})})
            with pytest.raises(LabFault, match=rf"place {place}'s NetworkPowerPort bad-outlet \(bench5-exporter/bench5/"
                               r"NetworkPowerPort/bad-outlet\) cannot be used: unknown PDU model 'nosuchpdu'; "
                               r"labgrid's power back ends are: .*apc"):
                place_device(bad, lease)
            # The exporter goes offline while the place is held: the coordinator keeps its resources as orphans.
            exporter.stop()
            end = time.monotonic() + 30
            while lease.session is not None and time.monotonic() < end:
                if not lease.session.client.resources["bench5-exporter"]["bench5"]["debug"].data:
                    break  # the coordinator told this client that the resource is gone
                time.sleep(0.1)
            with pytest.raises(LabFault, match=rf"place {place}'s NetworkSerialPort debug \(bench5-exporter/bench5/"
                               r"NetworkSerialPort/debug\) is unavailable: exporter bench5-exporter is offline") as ei:
                place_device(named, lease)
            assert ei.value.component == "coordinator"
        finally:
            lease.release()
        # Through Dut.open, the exporter still away: a lab fault before the laptop is touched, nothing left held.
        dut = Dut(named, tmp_path / "logs", run_id="night-5")
        with pytest.raises(LabFault, match=rf"place {place} on .* has no NetworkSerialPort \(\[console\] from_place"
                           r" in .*\): is the bench's exporter running"):
            dut.open()
        assert lg.admin.show(place).acquired is None
        dut.lock.acquire()
        dut.lock.release()
    finally:
        exporter.stop()


LAPTOP_EXPORTS = """\
laptop-1:
  NetworkSerialPort:
    host: 127.0.0.1
    port: {console}
    speed: 115200
  NetworkPowerPort:
    model: apc
    host: 127.0.0.1:{snmp}
    index: {outlet}
"""


@pytest.mark.lab
def test_a_dut_whose_inventory_has_no_console_or_pdu_takes_both_from_the_exported_place(
    lg: Lab, laptop_lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real engine end to end: an exporter publishes a laptop-like guest's real console server (ser2net)
    and its outlet of the virtual APC PDU (snmpd, labgrid's apc back end); the rig's inventory says neither.
    One power cycle through the exported outlet; the guest's console lines arrive through the exported port."""
    import tomllib

    import tomli_w

    from rig.device.dut import READY_PATTERN
    from rig.power import PowerState

    g = laptop_lab.guest("laptop-1")
    console_port = urlsplit(g.console_url).port
    exporter = start_exporter(lg, "laptop-exporter", LAPTOP_EXPORTS.format(console=console_port, snmp=g.pdu_port,
                                                                             outlet=g.pdu_outlet))  # fmt: skip
    try:
        place = f"laptop-1-bench-{next(_places)}"
        lg.admin.create(place, "laptop-exporter/laptop-1/*")
        data = tomllib.loads(g.inventory_file.read_text())
        data["console"] = {"from_place": True}
        kept = {k: v for k, v in data["power"].items() if k in ("timeout", "cycle_pause")}  # what stays in the file
        data["power"] = {"kind": "pdu", "from_place": True, **kept}
        data["lab"] = {"place": place, "coordinator": lg.address}
        inv = tmp_path / "inv" / "laptop-1.toml"
        inv.parent.mkdir()
        inv.write_text(tomli_w.dumps(data))
        dev = load_device(inv)
        assert dev.console is not None and dev.console.url is None
        assert isinstance(dev.power, PduPower) and dev.power.host is None and dev.power.outlet is None
        monkeypatch.setenv("RIG_LOCK_DIR", str(tmp_path / "locks"))
        events = g.dir / "power-events.log"
        n_events = len(events.read_text().splitlines()) if events.exists() else 0
        before = g.qemu_pid
        with Dut(dev, tmp_path / "logs", run_id="night-lab").open() as dut:
            assert dut.console is not None and dut.console.url == g.console_url  # the place's, not the file's
            assert dut.power.describe() == (f"pdu: PDU apc at 127.0.0.1:{g.pdu_port} outlet {g.pdu_outlet}, "
                                              "through labgrid's apc back end")
            assert dut.power.status() is PowerState.ON
            assert lg.admin.show(place).acquired is not None
            mark = dut.console.mark()
            dut.recover()  # a power cut through the exported outlet; waits for the console's ready line, then SSH
            assert dut.last_recovery is not None and dut.last_recovery["method"] == "power-cut"
            seen = [line.text for line in dut.console.tail() if line.number > mark]
            assert any(READY_PATTERN.search(t) for t in seen), seen[-20:]  # the new boot, through the exported port
            assert dut.ssh.run("echo back", timeout=10).out.strip() == "back"
        new = events.read_text().splitlines()[n_events:]
        assert len(new) >= 2 and new[0].endswith("cut outlet off") and "start outlet on" in new[1], new
        assert laptop_lab.guest("laptop-1").qemu_pid != before  # the QEMU process ended: the power was cut
        assert lg.admin.show(place).acquired is None  # released with the Dut
        assert READY_PATTERN.search((tmp_path / "logs" / "console.log").read_text())  # on disk as it arrived
    finally:
        exporter.stop()


def test_rig_power_on_a_place_another_controller_holds_is_device_busy(
    lg: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching off a laptop another controller's run is soaking would make its verdicts nonsense."""
    from click.testing import CliRunner

    from rig.cli import main

    place = new_place(lg)
    inv = inventory(tmp_path / "inv", place, lg.address)
    a = controller(tmp_path, inv, "bench-a/ci", "hold", "night-a")
    try:
        assert first_line(a) == "HELD"
        monkeypatch.setenv("RIG_LOCK_DIR", str(tmp_path / "locks-here"))
        res = CliRunner().invoke(main, ["--devices", str(inv.parent), "power", "x1gen9", "off"])
        assert res.exit_code == 1, res.output
        assert re.search(rf"DEVICE BUSY: device x1gen9: labgrid place {place} .* held by bench-a/ci", res.output)
    finally:
        assert a.stdin is not None
        a.stdin.write("\n")
        a.stdin.flush()
        a.wait(EXIT_WAIT_S)


def test_a_place_is_read_as_the_coordinator_has_it_now_not_as_the_stream_last_said(
    lg: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's places are a copy the coordinator streams. In a clean-clone run another controller's
    acquire had not reached that copy yet, and `rig power off` said "refused although nobody holds it"
    instead of naming the holder. Here the copy's updates are held back 1.5 s, as a loaded machine did."""
    import asyncio

    place = new_place(lg)
    reader = session_for(lg.address, 10)  # this process's one session (the coordinator allows one stream)
    try:
        assert not reader.place(place).acquired
        apply = reader.client.on_place_changed

        async def late(update: Any) -> None:
            await asyncio.sleep(1.5)
            await apply(update)

        monkeypatch.setattr(reader.client, "on_place_changed", late)
        client_as(lg.address, "bench-b/ci", "-p", place, "acquire")
        assert reader.place(place).acquired == "bench-b/ci"
    finally:
        client_as(lg.address, "bench-b/ci", "-p", place, "release")
