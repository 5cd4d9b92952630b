"""Shared fixtures of the rig's own tests.

``lab`` (session scope) -- one virtual lab of 2 real QEMU guests for every test that asks for it, on
two kernels: ``lab-1`` boots the host's Debian 12 kernel (6.1), ``lab-2`` Debian 11's 5.10 (fetched
from Debian's signed archive into ``~/.cache/shadowbox-rig/kernels`` by tools/bootstrap.sh, or on
first use; see rig.lab.kernels). So every lab test and suite that uses both guests runs on both
kernels, at no extra boot cost (the two guests boot in parallel as before).

Why one per session: booting a TCG guest costs about 12 s of CPU (10-40 s of wall on two shared
cores); every lab test of the session (of the xdist worker, under `make test`) shares the same two
guests. The lab is isolated from the checkout's own ``.lab`` (a user's ``rig lab up`` is never
touched): its state folder and inventory folder are temporary, its ports derive from that folder's
path (see rig.lab.ports).

API (the fixture yields a :class:`rig.lab.manager.Lab` after ``up(count=2)``)::

    def test_x(lab):
        g = lab.guest("lab-1")           # rig.lab.manager.GuestInfo
        g.ssh_port, g.key_file, g.known_hosts        # paramiko: key login, RejectPolicy
        g.console_url                    # "rfc2217://127.0.0.1:PORT?ign_set_control" (pyserial)
        g.bmc_port, g.bmc_user, g.bmc_password_file  # ipmitool -I lanplus -p PORT -U admin -f FILE
        g.qmp_socket                     # QMP for the rig (the BMC has its own socket)
        g.serial_log                     # every console byte, written by QEMU itself
        g.inventory_file                 # devices TOML, load with rig.inventory.load_device
        g.kernel_version                 # lab-1 "6.1.0-56-amd64", lab-2 "5.10.0-46-amd64" (or newer builds)
        g.kernel_series, g.kernel_headers   # "6.1" / "5.10"; where modules for it are built
        g.kernel_origin                  # "host" (lab-1) or "debian bullseye-security" (lab-2)
        lab.inventory_dir                # folder with lab-1.toml, lab-2.toml (rig.inventory.load_inventory)
        lab.kill_console_server("lab-1"); lab.start_console_server("lab-1")   # fault injection
        lab.restart_console_server("lab-1"); lab.kill_bmc("lab-1"); lab.start_bmc("lab-1")

Do not assume a kernel version in a test: compare with ``g.kernel_version`` / ``g.kernel_series``.
``LAB_KERNELS`` names the kernels (rig.lab.kernels specs) of lab-1 and lab-2.

Rules for users of the fixture: the guests are shared, so a test that breaks one (kills its console
server or BMC, powers it off, crashes or hangs its kernel) must put it back before returning --
e.g. ``lab.start_console_server(name)``, or a power cycle and :func:`wait_lab_guest_ready` for a
crashed guest. Mark such tests ``@pytest.mark.lab``. Under pytest-xdist each worker boots its own
lab (its own temporary folder, so its own ports, and its own device-lock folder: see
``_session_lock_dir``); `make test` runs the lab tests with ``-n 2 --dist loadfile`` so a file's
tests stay together, in order, on one worker (tools/run-tests.sh). A test may rely on the state an
earlier test *of its own file* left; never on another file's.

``lab_devices`` (session scope): the two guests as rig.inventory.Device objects.

``laptop_lab`` (session scope) -- a second, separate lab of 2 *laptop-like* guests with no BMC at
all (``Lab.up(count=0, laptop_like=2)``): ``laptop-1`` on outlet 1 of its own virtual APC PDU (a
real snmpd, switched by labgrid's apc back end), ``laptop-2`` on a virtual power-button relay. A
power cut ends the guest's QEMU (RAM lost) and power-on starts it again (rig.lab.vpower). Every
laptop-like lab test shares it (one boot of two guests per session). Extra API::

    g = laptop_lab.guest("laptop-1"); g.power_kind ("pdu" / "relay"), g.pdu_port, g.pdu_outlet,
    g.pdu_dir, g.button_file, g.dir / "power-events.log"
    laptop_lab.stall_pdu("laptop-1"); laptop_lab.unstall_pdu("laptop-1")    # SIGSTOP/SIGCONT snmpd
    laptop_lab.press_button("laptop-2", 0.5); laptop_lab.set_ac_power_on("laptop-1", False)

``laptop_devices`` (session scope): those two as rig.inventory.Device objects. Tests must leave
both guests powered and answering SSH.

``netconsole_lab`` (session scope): a separate lab of ONE laptop-like guest ``nc-1`` (host kernel)
whose only console is netconsole (extended format, boot parameter, UDP to 127.0.0.1:<console
port>; no ser2net) and which reserves a ramoops region (panics and oopses land in pstore and survive
the lab's warm power cycle). ``lab.guest("nc-1").console_url`` is ``netconsole://127.0.0.1:PORT``;
its inventory is ``lab.inventory_dir``. Shared by every test that needs such a guest: boot it once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.inventory import Device, load_inventory
from rig.lab.manager import GuestInfo, Lab, ssh_login_check
from tests.helpers import lab_root

#: Power cycle / crash to "SSH login works" on a lab guest (TCG, shared cores).
LAB_READY_TIMEOUT = 180.0
#: Kernel of lab-1 and lab-2 (rig.lab.kernels specs): the host's 6.1 and Debian 11's 5.10.
LAB_KERNELS = ("6.1", "5.10")
#: Lab test files, slowest first (seconds of the lab side in a full run: BENCHMARKS.md, issue 11).
#: `make test` hands whole files to its lab workers in this order (``--dist loadfile``, collection
#: order kept), so the long files start first and the short ones fill in at the end (longest-first
#: scheduling). A file not listed runs after these; a stale list only costs balance, never a result.
LAB_FILES_SLOWEST_FIRST = (
    "test_bisect.py",
    "test_bisect_intermittent_lab.py",
    "test_netconsole_lab.py",
    "test_regress.py",
    "test_power_lab.py",
    "test_plugin_lab.py",
    "test_rig_lab.py",
    "test_sbsim_residency_lab.py",
    "test_faults_lab.py",
    "test_deploy_failures_lab.py",
    "test_lab.py",
    "test_hardening_lab.py",
    "test_soak_lab.py",
    "test_console.py",
    "test_bmc.py",
)


@pytest.fixture(scope="session")
def _session_lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Device locks of this session's labs in a folder of this session (``RIG_LOCK_DIR``).

    Why: the rig locks a device by its name in one per-user folder, and every lab of a test run --
    one per xdist worker -- names its guests lab-1, lab-2. Two workers' lab-1 are two guests, so
    they must not wait for each other's lock. Set for this process and the suites it starts (a
    test that needs another lock folder sets its own, e.g. with monkeypatch).
    """
    locks = tmp_path_factory.getbasetemp() / "device-locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    os.environ["RIG_LOCK_DIR"] = str(locks)
    return locks


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, _session_lock_dir: Path) -> Iterator[Lab]:
    """A lab of 2 guests (lab-1 on 6.1, lab-2 on 5.10), up for the whole session, torn down at its end."""
    base = tmp_path_factory.mktemp("lab")
    the_lab = Lab(root=lab_root(tmp_path_factory, base), inventory_dir=base / "devices")
    try:
        the_lab.up(count=2, kernels=list(LAB_KERNELS))
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def laptop_lab(tmp_path_factory: pytest.TempPathFactory, _session_lock_dir: Path) -> Iterator[Lab]:
    """A lab of 2 laptop-like guests (no BMC): laptop-1 on a virtual PDU outlet, laptop-2 on a relay."""
    base = tmp_path_factory.mktemp("laptops")
    the_lab = Lab(root=lab_root(tmp_path_factory, base), inventory_dir=base / "devices")
    try:
        the_lab.up(count=0, laptop_like=2, laptop_power=("pdu", "relay"))
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def netconsole_lab(tmp_path_factory: pytest.TempPathFactory, _session_lock_dir: Path) -> Iterator[Lab]:
    """One guest ``nc-1``: netconsole its only console, ramoops pstore; up for the session."""
    base = tmp_path_factory.mktemp("nclab")
    the_lab = Lab(root=lab_root(tmp_path_factory, base), inventory_dir=base / "devices")
    try:
        the_lab.up(count=1, name_prefix="nc", console="netconsole", pstore=True)
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def laptop_devices(laptop_lab: Lab) -> dict[str, Device]:
    """The laptop-like guests' inventory files, loaded the way the rig loads any laptop's, by name."""
    return {d.name: d for d in load_inventory([laptop_lab.inventory_dir])}


@pytest.fixture(scope="session")
def lab_devices(lab: Lab) -> list[Device]:
    """The lab's inventory files, loaded the way the rig loads any laptop's."""
    return load_inventory([lab.inventory_dir])


def wait_lab_guest_ready(info: GuestInfo, timeout: float = LAB_READY_TIMEOUT) -> float:
    """Wait until ``info``'s guest accepts an SSH login again (after a reset); return the seconds waited."""
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            ssh_login_check(info.ssh_port, info.key_file, info.known_hosts)
            return time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"{info.name}: no SSH login within {timeout:.0f} s (last error: {last})")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the shared lab is a lab test, whether or not it says so; slow lab files first.

    `make test` (tools/run-tests.sh) runs lab tests in their own workers and the rest in parallel
    beside them; a lab user left unmarked would boot a lab in a pure-test worker.
    """
    for item in items:
        if {"lab", "lab_devices"} & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.lab)
    # Slowest lab files first (LAB_FILES_SLOWEST_FIRST); a stable sort, so the order within a file
    # and among the other files stays as collected.
    rank = {name: i for i, name in enumerate(LAB_FILES_SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
