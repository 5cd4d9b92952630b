"""One device under test, assembled from its inventory entry.

Why this layer: suites, the CLI and the plugin talk to a ``Dut`` -- never to paramiko, pyserial or
pyghmi -- so a physical laptop and a virtual-lab laptop are driven by the same code, and the
lifecycle (lock, connect, capture, monitor, recover, close) lives in one place.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from rig.bmc import BmcClient
from rig.console import ConsoleCapture, ConsoleLine
from rig.errors import ConfigError, DeviceError, LabFault, RigError, Unavailable
from rig.inventory import Device, IpmiPower
from rig.monitor import HangMonitor, Verdict
from rig.nmi import (
    InterruptCounts,
    IpmiDiagNmi,
    NmiSource,
    PerfNmi,
    QmpNmi,
    SysrqNmi,
    read_interrupts,
)
from rig.power import IpmiPowerControl, ManualPowerControl, PowerControl, PowerState, power_for
from rig.qmp import QmpClient
from rig.shadowbox import Deployer, DeployResult, recipe_for
from rig.ssh import SshClient
from rig.vocab import VerdictKind

log = logging.getLogger(__name__)

#: Console lines that say a (re)booted device is ready for SSH: a getty/login prompt, or the lab's banner.
READY_PATTERN = re.compile(r"login:|rig-lab: \S+ ready")
#: Shadow-box's host-side NMI handler line (the fixed build drops the NMI and logs this).
CALLBACK_RE = re.compile(r"shadow-box: VM \[(\d+)\] INT NMI callback")


class DeviceBusy(RigError):
    """Another rig run holds this device. Two runs never share a laptop."""


class DeviceLock:
    """An exclusive, machine-wide lock on one device, keyed by its SSH endpoint.

    Keyed by ``user@host:port`` rather than by name so that two checkouts (or two inventory files)
    pointing at the same laptop still exclude each other. The lock dies with the process, so a
    killed run never leaves a device locked.
    """

    def __init__(self, device: Device, lock_dir: Path | None = None) -> None:
        key = f"{device.ssh.user}@{device.ssh.host}:{device.ssh.port}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        base = lock_dir or Path(os.environ.get("RIG_LOCK_DIR", Path(tempfile.gettempdir()) / "shadowbox-rig-locks"))
        base.mkdir(parents=True, exist_ok=True)
        self.path = base / f"{digest}.lock"
        self.device = device.name
        self.key = key
        self._fh: TextIO | None = None

    def acquire(self, wait: float = 0.0) -> None:
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the lock's lifetime
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


class Dut:
    """A connected device: SSH, console capture, power, NMI sources and a hang monitor."""

    def __init__(self, device: Device, log_dir: Path, *, lock_wait: float = 0.0) -> None:
        self.device = device
        self.name = device.name
        self.log_dir = log_dir
        self.lock = DeviceLock(device)
        self.lock_wait = lock_wait
        self.ssh = SshClient(device.ssh, device=device.name)
        self.console: ConsoleCapture | None = None
        if device.console is not None:
            self.console = ConsoleCapture(device.console.url, log_dir, name=device.name, baudrate=device.console.baud)
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
            self.power = power_for(device)
        sock = device.qmp_socket()
        self.qmp: QmpClient | None = QmpClient(sock) if sock is not None else None
        self.monitor = HangMonitor(device.name, self.ssh, self.console, device.monitor, sudo=device.ssh.sudo)
        #: Set when a test ended in a crash/hang/reboot: the next user power-cycles first.
        self.needs_recovery = False
        #: capability -> None (offered) or the reason it is not; filled by the plugin.
        self.caps: dict[str, str | None] = {}
        #: Shadow-box (or sbsim) loaded since the last boot: a second deploy needs a reboot first.
        self.shadowbox_loaded = False
        #: (settings, result) of the Shadow-box running since the last boot, if any.
        self.deployment: tuple[str, DeployResult] | None = None
        self._kernel: str | None = None
        #: A verdict a test provoked on purpose (see accept_verdict).
        self.accepted_verdict: Verdict | None = None
        #: (monitor verdict, verdict after asking the power control): asked once per verdict.
        self._power_judged: tuple[Verdict, Verdict] | None = None
        self._opened = False
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
            if monitor:
                self.monitor.start()
        except BaseException:
            self.close()
            raise
        self._opened = True
        return self

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

    def close(self) -> None:
        try:
            self.monitor.stop()
            if self._opened:
                self.monitor.stop_heartbeat()
        finally:
            self.ssh.close()
            if self.console is not None:
                self.console.stop()
            if self.bmc is not None:
                self.bmc.close()
            self.lock.release()
            self._opened = False

    def __enter__(self) -> Dut:
        return self if self._opened else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capabilities ------------------------------------------------------------------------

    def nmi_source(self, name: str) -> NmiSource:
        """Build one NMI source by name (whether or not the device offers it: ``check`` says)."""
        sudo = self.device.ssh.sudo
        if name == "ipmi":
            return IpmiDiagNmi(self.ssh, self.bmc)
        if name == "qmp":
            return QmpNmi(self.ssh, self.qmp)
        if name == "sysrq":
            return SysrqNmi(self.ssh, sudo=sudo)
        if name == "perf":
            return PerfNmi(self.ssh, sudo=sudo)
        raise DeviceError(f"device {self.name}: unknown NMI source {name!r}")

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

    @property
    def kernel_release(self) -> str | None:
        """``uname -r`` of the running kernel, read once per boot (None if the device does not answer)."""
        if self._kernel is None:
            try:
                self._kernel = self.ssh.run("uname -r", timeout=10).out.strip() or None
            except RigError:
                return None
        return self._kernel

    def interrupts(self) -> InterruptCounts:
        return read_interrupts(self.ssh)

    def verdict(self) -> Verdict:
        """The device's verdict: the monitor's, with a switched-off device told apart from a hung one."""
        return self._judge_power(self.monitor.verdict())

    def settled_verdict(self) -> Verdict:
        """:meth:`verdict` after a hang had its chance to become the crash or reboot the console
        prints next (:meth:`rig.monitor.HangMonitor.settled`): what reports and bisect record."""
        return self._judge_power(self.monitor.settled())

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
        self.needs_recovery = not v.ok
        return v

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, *, timeout: float | None = None, start_monitor: bool = True) -> float:
        """Power-cycle the device and wait until it is ready again; return the seconds it took.

        Waits for a ready line on the console (login prompt / lab banner) when there is a console,
        then for SSH. The monitor is paused meanwhile and starts afresh, so the next test does not
        inherit this verdict.
        """
        timeout = timeout or self.device.monitor.boot_timeout
        t0 = time.monotonic()
        self.monitor.stop()
        self.monitor.pause()
        mark = self.console.mark() if self.console is not None else 0
        self.power.cycle()  # LabFault (BMC) or Unavailable (manual power) go to the caller as they are
        if self.console is not None and self.console.connected:
            self.console.expect(READY_PATTERN, timeout=timeout, since=mark)
        elif self.console is not None:
            log.warning("%s: console unreachable (%s); waiting for SSH only", self.name, self.console.lab_fault())
        left = max(5.0, timeout - (time.monotonic() - t0))
        self.ssh.wait_ready(timeout=left)
        self.monitor.resume()
        if start_monitor:
            self.monitor.start()
        self.shadowbox_loaded = False
        self.deployment = None
        took = time.monotonic() - t0
        log.info("%s: recovered in %.1f s", self.name, took)
        return took

    # -- Shadow-box ----------------------------------------------------------------------------

    def deploy_shadowbox(self, **overrides: object) -> DeployResult:
        """Deploy the inventory's Shadow-box recipe; reboot first if one is already loaded.

        ``overrides`` replace fields of the inventory's [shadowbox] section for this deploy
        (e.g. ``module_params={"hang_after_nmi": 50}``), so a suite can try a variant build.
        """
        cfg = self.device.shadowbox.model_copy(update=overrides)
        recipe = recipe_for(cfg.recipe)
        source = cfg.source
        if source is None:
            raise ConfigError(
                f"device {self.name}: [shadowbox] source is not set in {self.device.source_file}; "
                "point it at the Shadow-box tree to deploy"
            )
        key = cfg.model_dump_json()
        if self.deployment is not None and self.deployment[0] == key:
            return self.deployment[1]  # already running this very build since the last boot
        if self.shadowbox_loaded or self._modules_loaded(recipe.modules):
            self.recover()  # Shadow-box cannot be unloaded: a clean state needs a reboot
        deployer = Deployer(
            self.ssh,
            self.console,
            recipe,
            Path(source),
            device=self.name,
            build_on=cfg.build_on,
            kernel_headers=cfg.kernel_headers,
            module_params=dict(cfg.module_params),
            start_timeout=cfg.start_timeout,
            sudo=self.device.ssh.sudo,
        )
        self.shadowbox_loaded = True  # even a failed insmod may have left something behind
        result = deployer.deploy()
        self.deployment = (key, result)
        return result

    def runs_shadowbox(self) -> bool:
        """Whether a module of the inventory's recipe is loaded now (then only a reboot gives a clean state)."""
        return self._modules_loaded(recipe_for(self.device.shadowbox.recipe).modules)

    def _modules_loaded(self, modules: tuple[str, ...]) -> bool:
        names = {m.removesuffix(".ko").replace("-", "_") for m in modules}
        loaded = {line.split(" ", 1)[0] for line in self.ssh.run("cat /proc/modules", timeout=10).out.splitlines()}
        return bool(names & loaded)
