"""Devices as labgrid places, against the real engine: labgrid-coordinator and labgrid-exporter.

The coordinator listens on 127.0.0.1 and a free port (never its default of all interfaces), with an
exporter publishing the bench's console (NetworkSerialPort) and outlet (NetworkPowerPort), as a lab
runs them. "Controllers" are separate processes with their own labgrid identity (LG_HOSTNAME /
LG_USERNAME) and their own local lock folder, as two benches' controllers are; each drives the
rig's own API (rig.coordinator.PlaceLease, rig.dut.Dut.open). No lab guest is booted: the place is
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

import pytest
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

from rig.coordinator import PlaceLease, Session, holder_comment, parse_holder, session_for, stale_here
from rig.dut import DeviceBusy, Dut
from rig.errors import ConfigError, LabFault
from rig.inventory import load_device
from rig.results import load_run
from tests.consolepeers import free_port

BIN = Path(sys.executable).parent


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

    def wait_for(self, text: str, timeout: float = 30) -> None:
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
                          text=True, timeout=60)  # fmt: skip
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
from rig.results import load_run
from rig.coordinator import PlaceLease
from rig.dut import DeviceBusy
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
    assert b.wait(30) == 3, out
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
    assert a.wait(30) == 0
    shown = place_state(lg, place)
    assert shown.acquired is None and shown.comment == ""
    b = controller(tmp_path, inv, "bench-b/ci", "once", "night-b")
    assert first_line(b) == "HELD" and b.wait(30) == 0


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
        a.wait(30)


def test_a_waiting_controller_gets_the_place_when_the_holder_releases(lg: Lab, tmp_path: Path) -> None:
    place = new_place(lg)
    a = controller(tmp_path, inventory(tmp_path / "a", place, lg.address), "bench-a/ci", "hold", "night-a")
    assert first_line(a) == "HELD"
    short = controller(tmp_path, inventory(tmp_path / "s", place, lg.address, wait=1), "bench-s/ci", "once", "s")
    out = first_line(short)
    assert short.wait(30) == 3 and "after waiting" in out and "held by bench-a/ci" in out, out
    waiter = controller(tmp_path, inventory(tmp_path / "b", place, lg.address, wait=30), "bench-b/ci", "once", "b")
    time.sleep(1.5)  # the waiter is in the coordinator's queue now (not a timing assertion: order only)
    assert waiter.poll() is None
    assert a.stdin is not None
    a.stdin.write("\n")
    a.stdin.flush()
    assert a.wait(30) == 0
    assert first_line(waiter) == "HELD"
    assert waiter.wait(30) == 0


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
    assert b.wait(30) == 0, out
    assert out.startswith("HELD place " + place) and f"pid {a.pid}@" in out and "is gone" in out, out


def test_a_holder_on_another_host_is_reported_with_its_age_not_cleared(lg: Lab, tmp_path: Path) -> None:
    place = new_place(lg)
    # A run on another controller, 3 h ago (its own identity; its comment names its host).
    comment = holder_comment("night-far", 1, "far-bench", time.time() - 3 * 3600 - 5 * 60)
    client_as(lg.address, "far-bench/ci", "-p", place, "acquire")
    client_as(lg.address, "far-bench/ci", "-p", place, "set-comment", comment)
    b = controller(tmp_path, inventory(tmp_path / "inv", place, lg.address), "bench-b/ci", "once", "night-b")
    out = first_line(b)
    assert b.wait(30) == 3, out
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
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        assert a.stdin is not None
        a.stdin.write("\n")
        a.stdin.flush()
        a.wait(30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert re.search(rf"DEVICE BUSY: device held-x1: labgrid place {place} .* held by bench-a/ci \(run night-a", out)
    assert "LAB FAULT on far-t14 (not a device failure): labgrid coordinator 127.0.0.1:" in out
    run = tmp_path / "reports" / "night-b"
    assert not (run / "held-x1").exists()  # the holder's device: nothing written by this run
    rep = load_run(run).device("far-t14")
    assert rep is not None and rep.cells()["test_uses_the_laptop"].label == "lab-fault"


def test_the_held_places_console_and_outlet_come_from_the_exporter(lg: Lab, tmp_path: Path) -> None:
    """Looked up through the rig's API (rig.coordinator); Dut does not use them yet (see the README)."""
    place = new_place(lg)
    lease = PlaceLease(load_device(inventory(tmp_path / "inv", place, lg.address)), "night-r")
    with pytest.raises(LabFault, match="not held by this run"):
        lease.console_url()
    lease.acquire()
    try:
        assert lease.console_url() == "rfc2217://127.0.0.1:7003"
        (outlet,) = lease.resources("NetworkPowerPort")
        assert (outlet["model"], outlet["index"]) == ("simplerest", 3)
    finally:
        lease.release()
