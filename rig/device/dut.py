"""One device under test, assembled from its inventory entry.

Why this layer: suites, the CLI and the plugin talk to a ``Dut`` -- never to paramiko, pyserial or
pyghmi -- so a physical laptop and a virtual-lab laptop are driven by the same code, and the
lifecycle (lock, connect, capture, monitor, recover, close) lives in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rig.console.capture import ConsoleCapture, ConsoleLine, console_for
from rig.console.netconsole import NetconsoleTarget, parse_netconsole_url, resolve_sources
from rig.device.facts import DeviceFacts, read_facts
from rig.device.lifecycle import DeviceState, Lifecycle, Step
from rig.device.monitor import HangMonitor, Verdict
from rig.device.nmi import SOURCES, InterruptCounts, NmiMeans, NmiSource, read_interrupts
from rig.device.pstore import PstoreHarvest, crash_after_hang, hang_amended, harvest, nothing_after_hang
from rig.device.shadowbox import Deployer, DeployFailed, DeployResult, recipe_for
from rig.errors import ConfigError, DeviceError, LabFault, RigError, Unavailable
from rig.inventory import Device, IpmiPower
from rig.power import (
    IpmiPowerControl,
    ManualPowerControl,
    PowerControl,
    PowerState,
    offers_warm_reset,
    power_for,
    status_is_inferred,
)
from rig.transports.bmc import BmcClient
from rig.transports.qmp import QmpClient
from rig.transports.ssh import SshClient
from rig.vocab import VerdictKind

if TYPE_CHECKING:
    from rig.transports.coordinator import PlaceLease

log = logging.getLogger(__name__)

#: Console lines that say a (re)booted device is ready for SSH: a getty/login prompt, or the lab's banner.
READY_PATTERN = re.compile(r"login:|rig-lab: \S+ ready")
#: Shadow-box's host-side NMI handler line (the fixed build drops the NMI and logs this).
CALLBACK_RE = re.compile(r"shadow-box: VM \[(\d+)\] INT NMI callback")


class DeviceBusy(RigError):
    """Another rig run holds this device. Two runs never share a laptop."""


def default_lock_dir() -> Path:
    """Where this user's device locks live: ``$RIG_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/shadowbox-rig/locks``
    (``/run/user/<uid>``), else ``<tmp>/shadowbox-rig-<uid>/locks``.

    Why per user and not one shared ``/tmp`` folder: in a shared folder any local user could plant a
    symlink where a lock file goes (the rig then emptied the file it pointed at) or flock a lock
    file and block every run. Two users of one controller therefore do not exclude each other's
    runs: give them one ``RIG_LOCK_DIR`` they both own, or one account for the lab.
    """
    explicit = os.environ.get("RIG_LOCK_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "shadowbox-rig" / "locks"
    return Path(tempfile.gettempdir()) / f"shadowbox-rig-{os.getuid()}" / "locks"


def _private_dir(path: Path) -> Path:
    """Create ``path`` (and its rig-made parent) 0700; refuse a symlink or a folder another user owns."""
    for d in (path.parent, path) if path.parent.name.startswith("shadowbox-rig") else (path,):
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"device lock folder {d}: cannot create it ({exc.strerror}); set RIG_LOCK_DIR") from None
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"device lock folder {d} is not a folder (a symlink?); remove it or set RIG_LOCK_DIR")
        if st.st_uid != os.getuid():
            raise ConfigError(
                f"device lock folder {d} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}); "
                "someone else made it: remove it or set RIG_LOCK_DIR to a folder of yours"
            )
        if st.st_mode & 0o077:
            os.chmod(d, 0o700)
    return path


class DeviceLock:
    """An exclusive, machine-wide lock on one device, keyed by its SSH endpoint.

    Keyed by ``user@host:port`` rather than by name so that two checkouts (or two inventory files)
    pointing at the same laptop still exclude each other. The lock dies with the process, so a
    killed run never leaves a device locked. Lock files live in this user's 0700 folder
    (:func:`default_lock_dir`), are opened without following symlinks and are 0600.
    """

    def __init__(self, device: Device, lock_dir: Path | None = None) -> None:
        key = f"{device.ssh.user}@{device.ssh.host}:{device.ssh.port}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        base = _private_dir(lock_dir or default_lock_dir())
        self.path = base / f"{digest}.lock"
        self.device = device.name
        self.key = key
        self._fh: TextIO | None = None

    def _open(self) -> TextIO:
        """The lock file, never through a symlink, owned by this user, 0600."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"device lock {self.path}: cannot open it ({exc.strerror}; a symlink is refused): remove it"
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            os.close(fd)
            raise ConfigError(f"device lock {self.path} is not a file of this user's: remove it")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "r+")

    def acquire(self, wait: float = 0.0) -> None:
        fh = self._open()  # held for the lock's lifetime
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(fh)
                    fh.close()
                    raise DeviceBusy(
                        f"device {self.device} ({self.key}) is in use by {holder}; "
                        f"wait for that run to finish (lock file {self.path})"
                    ) from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._fh = fh

    @staticmethod
    def _holder(fh: TextIO, patience: float = 1.0) -> str:
        """Who holds the lock, as its holder wrote it ("pid N since ...").

        The holder writes that line just after it got the lock, so a run that loses the race by a
        hair finds the file empty, or still holding the line of a holder that was killed: wait a
        moment for a line naming a live process rather than name the wrong one.
        """
        end = time.monotonic() + patience
        text = ""
        while True:
            fh.seek(0)
            text = fh.read().strip()
            if text and _names_live_process(text):
                return text
            if time.monotonic() >= end:
                break
            time.sleep(0.05)
        return f"{text} (that process has gone; another holds it now)" if text else "another process"

    def release(self) -> None:
        if self._fh is not None:
            # Empty the file while still holding the lock: the next run that loses a race must not
            # read this run's line and name a process that no longer holds the device (CI caught it).
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def module_names(modules: tuple[str, ...]) -> set[str]:
    """The names /proc/modules lists for a recipe's modules, which are paths (Source/shadow_box/shadow_box.ko)."""
    return {Path(m).name.removesuffix(".ko").replace("-", "_") for m in modules}


def _names_live_process(line: str) -> bool:
    """Whether a lock line's "pid N" is a process that still exists (a killed holder leaves its line)."""
    m = re.match(r"pid (\d+)\b", line)
    if m is None:
        return True  # not our format: show it as it is
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tally_raises(src: NmiSource, tally: Counter[str]) -> None:
    """Count what ``src.raise_`` raised into ``tally`` (``deliver`` goes through ``raise_`` too).

    Why on the instance: every source class has its own ``raise_``; the Dut that built the source
    is the one place that sees all of them, so the count needs no change in any source.
    """
    inner = src.raise_

    def raise_(count: int = 1, interval: float = 0.0) -> int:
        n = inner(count, interval)
        tally[src.name] += n
        return n

    setattr(src, "raise_", raise_)  # noqa: B010 - an instance attribute shadows the method on purpose


class Dut:
    """A connected device: SSH, console capture, power, NMI sources and a hang monitor."""

    def __init__(self, device: Device, log_dir: Path, *, lock_wait: float = 0.0, run_id: str | None = None) -> None:
        self.device = device
        self.name = device.name
        self.log_dir = log_dir
        self.lock = DeviceLock(device)
        self.lock_wait = lock_wait
        #: The device's labgrid place, when several controllers share it ([lab] place; rig.transports.coordinator).
        self.place: PlaceLease | None = None
        if device.lab.place is not None:
            from rig.transports.coordinator import PlaceLease

            self.place = PlaceLease(device, run_id)
        self.ssh = SshClient(device.ssh, device=device.name)
        self.console: ConsoleCapture | None = None
        #: The dynamic netconsole target the rig sets up on the device ([console.netconsole] configure).
        self.netconsole_target: NetconsoleTarget | None = None
        #: The inventory's entry as written. With ``from_place`` its console and/or outlet are the
        #: place's: filled in at each open, once the place is acquired (:meth:`take_place_resources`).
        self.inventory_device = device
        if device.console is not None and device.console.url is not None:
            sources: list[str] | None = None
            if device.console.is_netconsole:
                nc = device.console.netconsole
                src = (nc.source if nc is not None else None) or device.ssh.host
                sources = None if src == "any" else resolve_sources(src)
                if nc is not None and nc.configure:
                    port = parse_netconsole_url(device.console.url)[1]
                    self.netconsole_target = NetconsoleTarget(
                        self.ssh, device.name, nc, port, sudo=device.ssh.sudo
                    )
            self.console = console_for(
                device.console.url, log_dir, name=device.name, baudrate=device.console.baud,
                sources=sources, inventory=str(device.source_file) if device.source_file else None,
                ssh=self.ssh, sudo=device.ssh.sudo,
            )
        #: Every look at pstore (run start, after each recovery), oldest first: the device's last words.
        self.pstore_harvests: list[PstoreHarvest] = []
        self._harvests_taken = 0
        self.bmc: BmcClient | None = None
        self.power: PowerControl
        if isinstance(device.power, IpmiPower):
            self.bmc = BmcClient(
                device.power.host,
                device.power.port,
                device.power.user,
                device.power.resolve_password(f"device {device.name} [power]"),
                name=device.name,
            )
            self.power = IpmiPowerControl(self.bmc)
        else:
            # The probe lets a power-button relay infer the state it cannot read back. A from_place
            # outlet is a PlacePowerPending until open reads the place's (take_place_resources).
            self.power = power_for(device, probe=lambda: self.ssh.alive(timeout=3.0))
        sock = device.qmp_socket()
        self.qmp: QmpClient | None = QmpClient(sock) if sock is not None else None
        self.monitor = HangMonitor(device.name, self.ssh, self.console, device.monitor, sudo=device.ssh.sudo)
        #: The device's state (off, booting, ready, watched, deployed, failed) and the steps between
        #: them (rig.device.lifecycle): front ends ask it for a state instead of driving lock, console, monitor.
        self.lifecycle = Lifecycle(device.name, self)
        #: How the last recover() brought the device back (for the report's timeline): method
        #: "self-reboot" or "warm-reset" (RAM kept) or "power-cut", why, and the seconds it took.
        self.last_recovery: dict[str, object] | None = None
        #: (kernel.panic seconds, this boot's id) while the kernel is told to reboot itself after a panic
        #: (:meth:`expect_self_reboot`): recover() then waits for that reboot before any power action.
        self._self_reboot: tuple[float, str | None] | None = None
        #: capability -> None (offered) or the reason it is not; filled by the plugin.
        self.caps: dict[str, str | None] = {}
        #: (settings, result) of the Shadow-box running since the last boot, if any.
        self.deployment: tuple[str, DeployResult] | None = None
        #: Where controller builds are kept by content (rig.device.shadowbox.Deployer.build_key); None: always build.
        self.build_cache: Path | None = None
        #: deploy key -> how that deploy failed (kept across reboots: the same build fails the same way).
        self.deploy_failures: dict[str, DeployFailed] = {}
        #: Timeline sink (kind, text), set by the plugin: the Dut says when it reboots before a deploy.
        self.on_event: Callable[[str, str], None] | None = None
        #: Kernel, CPU, cmdline, modules, microcode of this boot (rig.device.facts), read once per boot.
        self._facts: DeviceFacts | None = None
        #: A verdict a test provoked on purpose (see accept_verdict).
        self.accepted_verdict: Verdict | None = None
        #: This test's verdict when it was judged only after a recovery (:meth:`verdict_after_last_words`):
        #: the monitor then watches the new boot, and its verdict is no longer the test's.
        self.judged_after_recovery: Verdict | None = None
        #: What the test's verdict reason must also say (e.g. a soak below its asked NMI rate, rig.device.soak).
        self.verdict_note = ""
        #: (monitor verdict, verdict after asking the power control): asked once per verdict.
        self._power_judged: tuple[Verdict, Verdict] | None = None
        self._opened = False
        #: NMIs raised per source through this Dut's sources (the live board shows them: rig.reports.board).
        self.nmi_raised: Counter[str] = Counter()
        #: Shadow-box host callbacks per CPU since open, counted as the lines arrive (not from the
        #: bounded console tail, which a 20-minute soak of callback lines would overrun).
        self._callback_totals: dict[int, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self, *, monitor: bool = True, recover_unreachable: bool = True) -> Dut:
        """Lock the device, start console capture, connect SSH, start the hang monitor.

        A device that does not answer SSH (left hung or crashed by an earlier run) is power-cycled
        once and waited for, when its power control allows: the rig recovers and goes on.
        """
        self.lock.acquire(self.lock_wait)  # first: a run refused here leaves nothing behind, not even a folder
        try:
            if self.place is not None:
                self.place.acquire()  # the other controllers' runs: DEVICE BUSY or a lab fault, before anything
                self.take_place_resources()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if self.console is not None:
                self.console.subscribe(self.monitor.on_line)
                self.console.subscribe(self._count_callback)
                self.console.start()
                if monitor:
                    self._wait_console()
            try:
                self.ssh.connect()
            except DeviceError as exc:
                if not recover_unreachable or isinstance(self.power, ManualPowerControl):
                    raise
                log.warning("%s: SSH unreachable at start (%s): power-cycling", self.name, exc)
                self.recover(start_monitor=False)
            else:
                self.lifecycle.apply(Step.CONNECT, "SSH answered at open")
                self._after_boot("run start")
            if monitor:
                self.monitor.start()
                self.lifecycle.apply(Step.WATCH, "open")
                if self.is_netconsole:
                    self._wait_first_heartbeat()
        except BaseException:
            self.close()
            raise
        self._opened = True
        return self

    def take_place_resources(self) -> None:
        """A ``from_place`` console and/or outlet: the held place's NetworkSerialPort/NetworkPowerPort.

        Why at open: only the place's holder gets its resources, and they are the bench's (its
        exporter) at this moment, so every open reads them again. A place without them, with several
        and none named, or whose exporter is offline is a LabFault (rig.transports.coordinator.place_device).
        """
        if self.place is None or not self.inventory_device.takes_place_resources:
            return
        from rig.transports.coordinator import place_device

        inv = self.inventory_device
        dev = self.device = place_device(inv, self.place)
        if inv.console is not None and inv.console.from_place and dev.console is not None and dev.console.url:
            if self.console is not None:
                self.console.stop()  # an earlier open's: the place may have another console server now
            self.console = console_for(
                dev.console.url, self.log_dir, name=dev.name, baudrate=dev.console.baud,
                inventory=str(dev.source_file) if dev.source_file else None,
            )
            self.monitor.console = self.console
        if dev.power != inv.power:
            self.power = power_for(dev, probe=lambda: self.ssh.alive(timeout=3.0))

    def _wait_console(self) -> None:
        """A watched device needs its console from the start: without it no hang can be told apart.

        Why at open and not only in the monitor: the monitor calls a console that stays away a lab
        fault only after 3·H + 2 s, so a short test on a device whose console server is down
        passed unwatched. A console server that does not accept us within
        ``console_connect_timeout`` fails the set-up as a lab fault, naming the server.
        """
        assert self.console is not None
        wait = self.device.monitor.console_connect_timeout
        if not self.console.wait_connected(wait):
            fault = self.console.lab_fault() or f"console server {self.console.url} not reached"
            raise LabFault(
                f"device {self.name}: {fault} (no connection within console_connect_timeout = {wait:g} s, "
                f"[monitor] in {self.device.source_file})"
            )

    @property
    def console_sees_boot(self) -> bool:
        """Whether a reboot's ready line can reach the console: not through a target or a follow the rig
        starts over SSH (they die with the old boot and come back only after SSH does)."""
        if self.console is None or self.netconsole_target is not None:
            return False
        return not (self.device.console is not None and self.device.console.url == "ssh://kmsg")

    @property
    def is_netconsole(self) -> bool:
        return self.device.console is not None and self.device.console.is_netconsole

    def _after_boot(self, when: str) -> None:
        """What a fresh boot (or the run's start) needs before the watch: the netconsole target
        (a dynamic one does not survive a reboot), then the last words the kernel left in pstore."""
        if self.netconsole_target is not None:
            self.netconsole_target.configure()
        self.pstore_harvests.append(harvest(self.ssh, self.name, when=when, sudo=self.device.ssh.sudo))
        self._facts = None
        with contextlib.suppress(RigError):  # read again when asked (Dut.facts), if the device does not answer now
            self.facts()

    def expect_self_reboot(self, after_seconds: float | None) -> None:
        """The kernel reboots itself ``after_seconds`` after a panic (``kernel.panic``, set for a soak by
        rig.device.stall); None: no longer (the sysctl was restored).

        Why the Dut must know: that reboot is warm (RAM kept), so the panic's ramoops record survives
        it -- while a PDU's or a relay's power cut, the only recovery such a laptop's power control
        offers, would lose it. :meth:`recover` after a panic waits for the reboot first. This boot's
        id is read now, while the device answers, so the reboot can be told from the same boot.
        """
        self._self_reboot = None if after_seconds is None else (after_seconds, self._boot_id())

    def take_pstore_harvests(self) -> list[PstoreHarvest]:
        """The harvests made since the last call (run start, recoveries), each handed out once (to the report)."""
        new = self.pstore_harvests[self._harvests_taken:]
        self._harvests_taken = len(self.pstore_harvests)
        return new

    def _wait_first_heartbeat(self) -> None:
        """A netconsole has no server that could say it is up: only a heartbeat proves the path works.

        Why a lab fault: the device answers SSH, so what fails is the way between (target address,
        MAC, a firewall on the controller, a switch), not the device under test.
        """
        assert self.console is not None
        wait = self.device.monitor.console_connect_timeout + 2 * self.device.monitor.heartbeat_interval
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.monitor.heartbeats > 0:
                return
            time.sleep(0.1)
        t = self.netconsole_target
        how = (f"the rig's target {t.name} on {t.details.get('interface', '?')} sends to "
               f"{t.setup_cfg.remote_ip}:{t.port} (remote_mac {t.details.get('remote_mac', '?')})"
               if t is not None else "the device's netconsole boot parameter must send to this controller's port")
        raise LabFault(
            f"device {self.name}: no heartbeat arrived over netconsole ({self.console.url}) within {wait:g} s; "
            f"{how}: check remote_ip/remote_mac in [console.netconsole] of {self.device.source_file}, and that "
            "nothing on the controller (firewall) drops those UDP datagrams",
            component="console",
        )

    def close(self) -> None:
        try:
            self.monitor.stop()
            if self._opened:
                self.monitor.stop_heartbeat()
                if self.netconsole_target is not None:
                    self.netconsole_target.remove()
        finally:
            self.ssh.close()
            if self.console is not None:
                self.console.stop()
            if self.bmc is not None:
                self.bmc.close()
            if self.place is not None:
                self.place.release()
            self.lock.release()
            self._opened = False
            self.lifecycle.apply(Step.CLOSE)

    def watch(self) -> None:
        """A fresh watch: the monitor restarted, so the next test does not inherit the last verdict
        (the lifecycle's ``watch`` step; front ends ask ``lifecycle.transition(DeviceState.WATCHED)``)."""
        self.lifecycle.apply(Step.WATCH, "a fresh watch")  # first: a failed device is refused, untouched
        self.monitor.stop()
        self.monitor.resume()
        self.monitor.start()

    def hold(self) -> None:
        """Lock the device and capture its console, nothing more (state stays off): ``rig check`` then
        checks SSH, console, power and each NMI source on its own, each with its own reason."""
        self.lock.acquire(self.lock_wait)
        if self.place is not None:  # another controller's run may hold it; a from_place console/outlet is its
            self.place.acquire()
            self.take_place_resources()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.console is not None:
            self.console.start()

    def console_fault(self, wait: float = 5.0) -> str | None:
        """After waiting up to ``wait`` for the console server: its lab fault, "" when connected;
        None without a console."""
        if self.console is None:
            return None
        self.console.wait_connected(wait)
        return self.console.lab_fault() or ""

    def fresh_boot(self) -> float | None:
        """A clean boot for a new build (``rig regress``, ``rig bisect``), on a device this Dut has not
        opened: the seconds the power cycle took, or None when the device answers SSH and runs no
        Shadow-box (nothing to reset). The lock (and the labgrid place) are taken first: a shared
        laptop is never power-cycled under another run. Call :meth:`close` after it.
        """
        self.lock.acquire(self.lock_wait)
        if self.place is not None:
            self.place.acquire()  # a shared laptop: never power-cycle it under another controller's run
        if self._clean():
            self.lifecycle.apply(Step.CONNECT, "answers SSH, runs no Shadow-box")
            return None
        if self.console is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.console.start()
        return self.recover(start_monitor=False)

    def _clean(self) -> bool:
        """True if the device answers SSH and none of its recipe's modules is loaded (no reboot needed).

        The same test the deploy step makes before it decides to reboot; any doubt means "not clean".
        """
        try:
            self.ssh.connect(timeout=5)
            return not self.runs_shadowbox()
        except Exception:  # noqa: BLE001 - unreachable, hung, half-open: a power cycle will tell
            return False

    @property
    def needs_recovery(self) -> bool:
        """A test ended in a crash, hang, reboot or power-off: the next user power-cycles first (lifecycle: failed)."""
        return self.lifecycle.state is DeviceState.FAILED

    @needs_recovery.setter
    def needs_recovery(self, value: bool) -> None:
        if not value:
            raise ValueError(f"device {self.name}: only a recovery clears needs_recovery (Dut.recover)")
        self.lifecycle.fail("marked for recovery")

    @property
    def shadowbox_loaded(self) -> bool:
        """Something of Shadow-box (or sbsim) was insmod-ed since the last boot: a second deploy needs a reboot."""
        return self.lifecycle.loaded

    def __enter__(self) -> Dut:
        return self if self._opened else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capabilities ------------------------------------------------------------------------

    def nmi_source(self, name: str) -> NmiSource:
        """Build one NMI source by name (whether or not the device offers it: ``check`` says)."""
        make = SOURCES.get(name)
        if make is None:
            raise DeviceError(f"device {self.name}: unknown NMI source {name!r} (known: {', '.join(SOURCES)})")
        src = make(NmiMeans(self.ssh, bmc=self.bmc, qmp=self.qmp, sudo=self.device.ssh.sudo))
        _tally_raises(src, self.nmi_raised)
        return src

    def nmi_sources(self) -> dict[str, NmiSource | Unavailable]:
        """Every source the inventory lists: a ready source, or :class:`Unavailable` with its reason."""
        out: dict[str, NmiSource | Unavailable] = {}
        for name in self.device.nmi_sources:
            src = self.nmi_source(name)
            try:
                src.check()
                if name == "ipmi" and self.bmc is not None:
                    self.bmc.power_state()  # reachable and the password works (LabFault otherwise)
                out[name] = src
            except Unavailable as exc:
                out[name] = exc
        return out

    def _count_callback(self, line: ConsoleLine) -> None:
        """Console subscriber (reader thread): one more host NMI callback for the CPU the line names."""
        m = CALLBACK_RE.search(line.text)
        if m:
            cpu = int(m.group(1))
            self._callback_totals[cpu] = self._callback_totals.get(cpu, 0) + 1

    def callback_totals(self) -> dict[int, int]:
        """Host NMI callbacks per CPU since :meth:`open` (a copy): take one before and one after a test."""
        return dict(self._callback_totals)

    def console_stats(self) -> dict[str, Any] | None:
        """What the console transport delivered (report.json ``console_transport``), None without a console."""
        return self.console.stats() if self.console is not None else None

    def console_lines(self, lines: int = 60) -> list[str]:
        """The last console lines (the in-memory tail), oldest first; none without a console."""
        return [ln.text for ln in self.console.tail(lines)] if self.console is not None else []

    def console_mark(self) -> int:
        """The number of the last console line seen (0 without a console): a start for ``since``."""
        return self.console.mark() if self.console is not None else 0

    def shadowbox_callbacks(self, since: int) -> dict[int, int]:
        """Shadow-box host-side NMI callbacks (``VM [n] INT NMI callback``) per CPU since a console mark."""
        counts: dict[int, int] = {}
        if self.console is None:
            return counts
        for line in self.console.tail():
            if line.number > since:
                m = CALLBACK_RE.search(line.text)
                if m:
                    cpu = int(m.group(1))
                    counts[cpu] = counts.get(cpu, 0) + 1
        return counts

    def facts(self) -> DeviceFacts:
        """Kernel, command line, CPU, microcode, VT-x and modules of this boot (rig.device.facts): read after each
        boot and kept until the next. A device that does not answer raises (and is asked again next time)."""
        if self._facts is None:
            self._facts = read_facts(self.ssh)
        return self._facts

    @property
    def kernel_release(self) -> str | None:
        """``uname -r`` of the running kernel, read once per boot (None if the device does not answer)."""
        try:
            return self.facts().kernel or None
        except RigError:
            return None

    def interrupts(self) -> InterruptCounts:
        return read_interrupts(self.ssh)

    def verdict(self) -> Verdict:
        """The device's verdict: the monitor's, with a switched-off device told apart from a hung one."""
        if self.judged_after_recovery is not None:
            return self.judged_after_recovery
        return self._judge_power(self.monitor.verdict())

    def settled_verdict(self) -> Verdict:
        """:meth:`verdict` after a hang had its chance to become the crash or reboot the console
        prints next (:meth:`rig.device.monitor.HangMonitor.settled`): what reports and bisect record."""
        if self.judged_after_recovery is not None:
            return self.judged_after_recovery
        return self._judge_power(self.monitor.settled())

    def verdict_after_last_words(self) -> Verdict:
        """The settled verdict, and for a hang what pstore says it was: the device is recovered now for that.

        Why: the console cannot always tell a hang from a crash. The text of a panic raised in an NMI
        handler can reach a netconsole after the settle window, or never (rig.device.pstore.crash_after_hang
        says why), while ramoops kept the dump. So a hang is followed at once by the recovery it needs anyway (warm
        reset first: RAM kept), and a crash that the look at pstore after it finds is this test's
        verdict, with the pstore text as its evidence; an empty pstore is said in the hang's reason.
        Until the next test the Dut answers with this verdict, not the new boot's; the device is
        already back, so the next test does not recover it again. Other verdicts are returned as they are.
        """
        v = self.settled_verdict()
        if v.kind is not VerdictKind.HANG:
            return v
        self.recover()
        h = self.pstore_harvests[-1]
        found = crash_after_hang(h, v.at)
        if found is None:
            out = replace(v, reason=f"{v.reason}; {nothing_after_hang(h)}")
        else:
            rec, ev = found
            out = replace(v, kind=VerdictKind.CRASH, detail=ev.kind.value, reason=hang_amended(rec, ev, v.reason),
                          event=ev, source="pstore")
        self.judged_after_recovery = out
        return out

    def wait_verdict(self, timeout: float) -> Verdict | None:
        """Block until a non-ok verdict (returned settled, as :meth:`settled_verdict`) or ``timeout`` (None)."""
        v = self.monitor.wait(timeout)
        return None if v is None else self.settled_verdict()

    def _judge_power(self, v: Verdict) -> Verdict:
        """A hang or lost connection of a device whose power control says 'off' is ``powered-off``.

        Why here and not in the monitor: the monitor only has the console and an SSH probe, and
        to them a switched-off laptop looks exactly like a hung one (silence, no SSH). The Dut owns
        the power control, so it asks -- once per verdict -- when the evidence says hang or
        lost-connection. If the power control cannot answer (BMC down, wrong password, manual
        power), the monitor's verdict stands, with the reason saying why it could not be told apart.
        A failed answer is not remembered: the next call asks again.
        """
        if v.kind not in (VerdictKind.HANG, VerdictKind.LOST_CONNECTION):
            return v
        judged = self._power_judged
        if judged is not None and judged[0] is v:
            return judged[1]
        try:
            state = self.power.status()
        except RigError as exc:  # LabFault (BMC unreachable/refusing), Unavailable (manual), DeviceError
            return replace(v, reason=f"{v.reason}; power state unknown ({exc})")
        if state is PowerState.OFF:
            out = replace(
                v,
                kind=VerdictKind.POWERED_OFF,
                detail=None,
                reason=f"{v.reason}; the power control ({self.power.describe()}) says the device is off "
                "and the rig did not switch it off: someone or something outside the test powered it down",
            )
        elif state is PowerState.UNKNOWN:
            out = replace(v, reason=f"{v.reason}; power state unknown ({self.power.describe()})")
        else:
            out = v
        self._power_judged = (v, out)
        return out

    def accept_verdict(self) -> Verdict:
        """Take the current verdict as this test's intended result (fault-injection tests).

        The plugin then does not fail the test for it, but the device is still recovered (power
        cycle) before its next test.
        """
        v = self.verdict()
        self.accepted_verdict = v
        if not v.ok and self.judged_after_recovery is None:  # judged after a recovery: already back
            self.lifecycle.fail(v.text)
        return v

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, *, timeout: float | None = None, start_monitor: bool = True) -> float:
        """Bring the device back -- warm reset first, power cut if that fails -- and wait until it is
        ready again; return the seconds it took.

        Why this order: a warm reset (IPMI/AMT reset, QMP system_reset, a site's reset command)
        keeps the machine's RAM, so what a hang left there (ramoops, the post-mortem log) survives;
        a power cut loses it. So the rig resets first where the back end offers a reset that keeps
        RAM (``warm_reset``), and cuts the power (``cycle``) only when the reset fails or the device
        is not ready within ``reset_timeout``. Before either, a device that panicked while its kernel
        was told to reboot itself (:meth:`expect_self_reboot`) is given that long to do so ("self-reboot":
        no power action at all). :attr:`last_recovery` says which it did and why.

        Ready = a ready line on the console (login prompt / lab banner) when there is a console,
        then SSH. The monitor is paused meanwhile and starts afresh, so the next test does not
        inherit this verdict. A device whose power control says "on" but that stays silent for the
        whole ``boot_timeout`` after a power cut is a :class:`LabFault` saying exactly that (a
        laptop with its battery in does not boot when a PDU restores AC), not a hang.
        """
        timeout = timeout or self.device.monitor.boot_timeout
        t0 = time.monotonic()
        armed, self._self_reboot = self._self_reboot, None
        panicked = self.monitor.verdict().kind is VerdictKind.CRASH
        self.monitor.stop()
        self.monitor.pause()
        self.lifecycle.apply(Step.POWER_CYCLE, "recover")
        self._facts = None
        self.deployment = None
        try:
            took = self._reboot(timeout, t0, start_monitor, armed if panicked else None)
        except BaseException as exc:
            self.lifecycle.fail(f"recovery failed: {exc}")
            raise
        return took

    def _reboot(
        self, timeout: float, t0: float, start_monitor: bool, armed: tuple[float, str | None] | None
    ) -> float:
        """:meth:`recover`'s work: self-reboot, warm reset or power cut, ready, the boot's own steps, the watch.

        ``armed``: (kernel.panic seconds, the boot id before) when the device panicked while told to reboot itself.
        """
        method, why = "power-cut", f"{self.power.describe().split(':', 1)[0]} offers no warm reset"
        done = False
        if armed is not None and armed[1] is not None:
            # The kernel reboots itself after the panic (kernel.panic): no power action, RAM kept.
            wait = armed[0] + timeout  # a whole boot, as after a power cut (boot_timeout)
            if self._rebooted_by_itself(armed[1], wait):
                method, done = "self-reboot", True
                why = f"rebooted by itself after the panic (kernel.panic={armed[0]:g}): no power action, RAM kept"
            else:
                why = f"did not reboot by itself within {wait:g} s of the panic (kernel.panic={armed[0]:g}); {why}"
                log.warning("%s: %s", self.name, why)
        if not done and offers_warm_reset(self.power):
            mark = self.console.mark() if self.console is not None else 0
            reset_wait = min(timeout, self.device.monitor.reset_timeout)
            boot_before = self._boot_id()
            try:
                self.power.reset()
                self._wait_new_boot(mark, reset_wait, boot_before)
                method, why, done = "warm-reset", "warm reset (RAM kept)", True
            except (LabFault, Unavailable):
                raise  # the power control itself failed: a cycle through it would fail the same way
            except RigError as exc:
                why = f"warm reset did not bring it back within {reset_wait:g} s ({exc}); power cut instead"
                log.warning("%s: %s", self.name, why)
        if not done:
            mark = self.console.mark() if self.console is not None else 0
            self.power.cycle()  # LabFault (BMC, PDU) or Unavailable (manual power) go to the caller as they are
            left = max(5.0, timeout - (time.monotonic() - t0)) if method == "warm-reset" else timeout
            try:
                self._wait_ready(mark, left)
            except RigError as exc:
                raise self._silent_after_power_on(left, exc) from None
        self.lifecycle.apply(Step.READY, method)
        self._after_boot("after recovery")
        self.monitor.resume()
        if start_monitor:
            self.monitor.start()
            self.lifecycle.apply(Step.WATCH, "after recovery")
        took = time.monotonic() - t0
        self.last_recovery = {"method": method, "why": why, "seconds": round(took, 2),
                              "power": self.power.describe()}
        log.info("%s: recovered by %s in %.1f s", self.name, method, took)
        return took

    def _boot_id(self) -> str | None:
        """This boot's id (``/proc/sys/kernel/random/boot_id``), or None when the device does not answer now.

        Short deadline: before a recovery the device is usually hung, and the answer is then "none".
        """
        try:
            if not self.ssh.alive(timeout=3.0):
                return None
            return self.ssh.run("cat /proc/sys/kernel/random/boot_id", timeout=5).out.strip() or None
        except RigError:
            return None

    def _rebooted_by_itself(self, boot_before: str, wait: float) -> bool:
        """Whether the device answers SSH in a new boot (boot_id changed) within ``wait`` seconds.

        Waits through SSH's own reconnect loop (the inventory's ``connect_timeout`` per attempt), not
        the 3 s liveness probe: a machine that is still booting, or slow, must get a whole login.
        """
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            try:
                self.ssh.wait_ready(timeout=left)
                now = self.ssh.run("cat /proc/sys/kernel/random/boot_id", timeout=max(5.0, min(30.0, left))).out
            except DeviceError as exc:  # not back (yet): the deadline decides
                log.debug("%s: not back by itself yet: %s", self.name, exc)
                continue
            if now.strip() and now.strip() != boot_before:
                return True
            time.sleep(1.0)
        return False

    def _wait_new_boot(self, mark: int, timeout: float, boot_before: str | None) -> None:
        """Ready again (:meth:`_wait_ready`) *and*, if the old boot's id is known, booted anew.

        Why: a device that answered before the reset answers at once after a reset that did nothing
        (a wrong command, a relay that is not wired), or before a slow reset takes effect; ready alone
        would call that a recovery. A DeviceError at the deadline sends the rig to the power cut.
        """
        end = time.monotonic() + timeout
        while True:
            self._wait_ready(mark, max(5.0, end - time.monotonic()))
            now = self._boot_id() if boot_before is not None else None
            if boot_before is None or (now is not None and now != boot_before):
                return
            if time.monotonic() >= end:
                raise DeviceError(
                    f"device {self.name}: still the same boot {timeout:g} s after the reset (boot_id unchanged): "
                    "the reset did not restart it"
                )
            time.sleep(1.0)

    def _wait_ready(self, mark: int, timeout: float) -> None:
        """Console ready line (if the console is connected), then SSH, within ``timeout`` in all."""
        t0 = time.monotonic()
        if not self.console_sees_boot:
            pass  # the rig's netconsole target or SSH follow died with the old boot: nothing arrives before SSH
        elif self.console is not None and self.console.connected:
            self.console.expect(READY_PATTERN, timeout=timeout, since=mark)
        elif self.console is not None:
            log.warning("%s: console unreachable (%s); waiting for SSH only", self.name, self.console.lab_fault())
        left = max(5.0, timeout - (time.monotonic() - t0))
        self.ssh.wait_ready(timeout=left)

    def _silent_after_power_on(self, waited: float, exc: RigError) -> RigError:
        """After a power cut the device never came back: say what the power control says, exactly."""
        try:
            state = self.power.status()
        except RigError as status_exc:
            return LabFault(f"device {self.name}: not ready {waited:.0f} s after a power cycle through "
                            f"{self.power.describe()} ({exc}), and its power state cannot be read ({status_exc})",
                            component="power")
        if self.device.power.kind not in ("pdu", "relay", "command"):
            return exc  # a BMC/AMT/QMP machine that does not boot is the device's to explain
        if state is PowerState.ON and not status_is_inferred(self.power):
            return LabFault(
                f"device {self.name}: {self.power.describe()} says the power is ON, but the laptop stayed silent "
                f"for {waited:.0f} s after the power cycle (boot_timeout; no ready line on the console, no SSH). "
                "Not a hang: it most likely never booted -- with a PDU or smart plug the battery must be out "
                "or the BIOS set to power on when AC returns; check the laptop by hand",
                component="power",
            )
        if status_is_inferred(self.power):
            return LabFault(
                f"device {self.name}: {self.power.describe()} pressed the power button, but the laptop stayed "
                f"silent for {waited:.0f} s (boot_timeout; no ready line on the console, no SSH). Not a hang: "
                "check the relay's wiring to the power-button pins and that the laptop has power",
                component="power",
            )
        return exc

    # -- Shadow-box ----------------------------------------------------------------------------

    def deploy_key(self, **overrides: object) -> str:
        """The identity of one deploy (the [shadowbox] settings with ``overrides``): same key, same build."""
        return self.device.shadowbox.model_copy(update=overrides).model_dump_json()

    def deployer(self, **overrides: object) -> Deployer:
        """The Deployer for the inventory's [shadowbox] section (``rig check --deploy`` runs its preflight)."""
        cfg = self.device.shadowbox.model_copy(update=overrides)
        if cfg.source is None:
            raise ConfigError(
                f"device {self.name}: [shadowbox] source is not set in {self.device.source_file}; "
                "point it at the Shadow-box tree to deploy"
            )
        return Deployer(
            self.ssh,
            self.console,
            recipe_for(cfg.recipe),
            Path(cfg.source),
            device=self.name,
            build_on=cfg.build_on,
            kernel_headers=cfg.kernel_headers,
            module_params=dict(cfg.module_params),
            start_timeout=cfg.start_timeout,
            sudo=self.device.ssh.sudo,
            build_cache=self.build_cache,
        )

    def deploy_shadowbox(self, *, force: bool = False, **overrides: object) -> DeployResult:
        """Deploy the inventory's Shadow-box recipe; reboot first only if something of it is loaded.

        ``overrides`` replace fields of the inventory's [shadowbox] section for this deploy
        (e.g. ``module_params={"hang_after_nmi": 50}``), so a suite can try a variant build.
        ``force`` goes past a failed preflight (the result says ``forced``).
        A failure is remembered per key (:attr:`deploy_failures`): the plugin skips later tests that
        need the same build instead of rebooting the device to fail the same way again.
        """
        deployer = self.deployer(**overrides)
        key = self.deploy_key(**overrides)
        if self.deployment is not None and self.deployment[0] == key:
            return self.deployment[1]  # already running this very build since the last boot
        if self.lifecycle.loaded or self._modules_loaded(deployer.recipe.modules):
            self._event("reboot-before-deploy", "Shadow-box was loaded since the last boot: power-cycling first")
            self.recover()  # Shadow-box cannot be unloaded: a clean state needs a reboot
        if not self.lifecycle.can(Step.DEPLOY):
            self.lifecycle.apply(Step.DEPLOY)  # raises, naming the device and its state
        try:
            result = deployer.deploy(skip_preflight_failures=force)
        except DeployFailed as exc:
            self.deploy_failures[key] = exc
            raise
        finally:
            # Only once insmod ran may something be loaded: a refusal before it (tree, preflight,
            # build) leaves the device as it was, and the next test need not power-cycle it.
            if deployer.reached_insmod:
                self.lifecycle.note_loaded()
        self.lifecycle.apply(Step.DEPLOY, result.recipe)
        self.deployment = (key, result)
        return result

    def _event(self, kind: str, text: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, text)

    def unload_shadowbox(self) -> str | None:
        """Unload the recipe's modules after a clean run instead of rebooting; None if done, else why not.

        Only for a recipe that ``unloads`` (sbsim: its exit stops what its init started), and only
        while the verdict is ok: a device that hung, crashed or lost its connection gets a reboot.
        Done means every module left /proc/modules and the device still answers; then the next
        deploy loads onto the same boot, as it would onto a fresh one. Shadow-box cannot be unloaded.
        """
        recipe = recipe_for(self.device.shadowbox.recipe)
        if not recipe.unloads:
            return f"recipe {recipe.name} cannot be unloaded"
        if self.needs_recovery or not self.verdict().ok:
            return "the device needs recovery"
        try:
            for module in reversed(recipe.modules):
                name = Path(module).name.removesuffix(".ko")
                res = self.ssh.run(["rmmod", name], timeout=30, sudo=self.device.ssh.sudo)
                if res.exit_status != 0:
                    return f"rmmod {name} failed: {(res.err or res.out).strip()[-200:]}"
            if self._modules_loaded(recipe.modules):
                return "still listed in /proc/modules after rmmod"
        except RigError as exc:
            return f"unload failed: {exc}"
        self.lifecycle.apply(Step.UNLOAD, "modules unloaded after a clean attempt (rmmod)")
        self.deployment = None
        return None

    def runs_shadowbox(self) -> bool:
        """Whether a module of the inventory's recipe is loaded now (then only a reboot gives a clean state)."""
        return self._modules_loaded(recipe_for(self.device.shadowbox.recipe).modules)

    def _modules_loaded(self, modules: tuple[str, ...]) -> bool:
        names = module_names(modules)
        loaded = {line.split(" ", 1)[0] for line in self.ssh.run("cat /proc/modules", timeout=10).out.splitlines()}
        return bool(names & loaded)
