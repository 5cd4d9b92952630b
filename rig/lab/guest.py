"""One virtual laptop: a qemu-system-x86_64 process with serial, network and QMP wired for the rig.

Why these QEMU choices:

- ``-no-shutdown``: a guest that powers off stops instead of QEMU exiting, so QMP ``system_reset`` /
  ``cont`` can power it on again, like a BMC does with a laptop (a BMC never makes the laptop vanish).
- ``-chardev pty,...,logfile=serial.log``: QEMU discards serial output while nobody has the pty open,
  so the guest never stalls when the console server is down, and the log file keeps every byte. The
  console server (ser2net) opens the pty, found through QMP ``query-chardev``.
- Three QMP sockets: ``qmp.sock`` for the rig (written in the inventory), ``bmc-qmp.sock`` for the
  virtual BMC, ``lab-qmp.sock`` for the lab itself. A QMP socket serves one client at a time; separate
  sockets mean the BMC holding its connection never blocks the rig or ``rig lab status``.
- Kernel command line: ``console=ttyS0,115200`` (the rig reads the serial console),
  ``apic_extnmi=all`` (without it an NMI from QMP/IPMI reaches only CPU 0), ``panic=0`` (a panicked
  guest stays panicked for the rig to see; no automatic reboot), ``cryptomgr.notests`` (the crypto
  API's boot self-tests cost about 0.6 s of CPU per boot under TCG and test nothing the rig or sbsim
  uses; a real laptop keeps its own command line), and no ``quiet``.
- KVM only when it really runs a guest: on some hosts /dev/kvm opens but the guest spins forever
  with no output. :func:`probe_kvm` boots the lab kernel under KVM with a deadline and caches the
  answer; otherwise TCG.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rig.errors import LabFault
from rig.files import write_atomic
from rig.transports.qmp import QmpClient

KERNEL_CMDLINE: tuple[str, ...] = ("console=ttyS0,115200", "apic_extnmi=all", "panic=0", "cryptomgr.notests")
QEMU = "qemu-system-x86_64"
#: Deadlines (seconds), named so callers can see and change them.
QMP_READY_TIMEOUT = 15.0
KVM_PROBE_TIMEOUT = 10.0
#: Longest path a unix socket address may have on Linux (sun_path is 108 bytes with the NUL).
UNIX_PATH_MAX = 107


def qemu_binary() -> str:
    """Absolute path of qemu-system-x86_64, or LabFault saying how to install it."""
    found = shutil.which(QEMU)
    if found is None:
        raise LabFault(
            f"{QEMU} not found on PATH; run `make deps` (or: apt-get install qemu-system-x86)",
            component="qemu",
        )
    return found


@dataclass(frozen=True)
class GuestPaths:
    """Files of one guest under ``<lab>/guests/<name>/``."""

    dir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def bmc_qmp_socket(self) -> Path:
        return self.dir / "bmc-qmp.sock"

    @property
    def lab_qmp_socket(self) -> Path:
        return self.dir / "lab-qmp.sock"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def qemu_pid(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd"

    def check(self) -> None:
        """Refuse paths QEMU cannot take: commas (option separator) and over-long socket paths."""
        if "," in str(self.dir):
            raise LabFault(f"lab folder {self.dir} contains ',' which QEMU options cannot take; "
                           "use another RIG_LAB_DIR", component="qemu")
        longest = max((self.qmp_socket, self.bmc_qmp_socket, self.lab_qmp_socket), key=lambda p: len(str(p)))
        if len(str(longest)) > UNIX_PATH_MAX:
            raise LabFault(f"socket path {longest} is longer than {UNIX_PATH_MAX} bytes (unix socket limit); "
                           "use a shorter RIG_LAB_DIR", component="qemu")


@dataclass(frozen=True)
class QemuConfig:
    """What to boot and how."""

    name: str
    kernel: Path
    ssh_port: int
    accel: str = "tcg"
    smp: int = 2
    memory_mb: int = 512
    cmdline: tuple[str, ...] = KERNEL_CMDLINE


def qemu_argv(qemu: str, cfg: QemuConfig, paths: GuestPaths) -> list[str]:
    """The full QEMU command line (an argument list: nothing goes through a shell)."""
    cpu = "host" if cfg.accel == "kvm" else "max"
    argv = [
        qemu, "-name", f"guest={cfg.name},process=rig-lab-{cfg.name}",
        "-accel", cfg.accel, "-cpu", cpu, "-smp", str(cfg.smp), "-m", str(cfg.memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-shutdown",
        "-kernel", str(cfg.kernel), "-initrd", str(paths.initrd), "-append", " ".join(cfg.cmdline),
        "-chardev", f"pty,id=ser0,logfile={paths.serial_log},logappend=on",
        "-serial", "chardev:ser0",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22",
        "-device", "e1000,netdev=net0",
        "-pidfile", str(paths.qemu_pid),
    ]
    for sock in (paths.qmp_socket, paths.bmc_qmp_socket, paths.lab_qmp_socket):
        argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    return argv


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


def accepts(socket_path: Path) -> bool:
    """Whether a Unix socket takes connections now (a connect, closed at once).

    Why not the file's existence: QEMU binds the socket (the file appears) and listens a moment later;
    on a loaded machine a connect in between was refused, and a lab's bring-up failed on it.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(socket_path))
        except OSError:
            return False
    return True


def start_qemu(cfg: QemuConfig, paths: GuestPaths) -> int:
    """Start QEMU detached (own session, survives ``rig lab up``); return its pid once QMP answers.

    On failure QEMU is killed and LabFault carries the tail of its log.
    """
    qemu = qemu_binary()
    paths.check()
    for stale in (paths.qmp_socket, paths.bmc_qmp_socket, paths.lab_qmp_socket, paths.qemu_pid):
        stale.unlink(missing_ok=True)
    with open(paths.qemu_log, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {cfg.name}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            qemu_argv(qemu, cfg, paths), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + QMP_READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabFault(
                f"QEMU for {cfg.name} exited with {proc.returncode} at start-up; {paths.qemu_log}:\n"
                f"{_log_tail(paths.qemu_log)}",
                component="qemu",
            )
        if accepts(paths.lab_qmp_socket):
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise LabFault(f"QEMU for {cfg.name} did not open its QMP socket within {QMP_READY_TIMEOUT:.0f} s; "
                   f"{paths.qemu_log}:\n{_log_tail(paths.qemu_log)}", component="qemu")


def qmp_command(socket_path: Path, command: str, timeout: float = 5.0, **args: object) -> object:
    """Run one QMP command on ``socket_path`` and return its result, through the rig's one QMP client."""
    return QmpClient(socket_path, timeout=timeout).command(command, **args)


def serial_pty(paths: GuestPaths) -> str:
    """The host pty of the guest's serial port (``/dev/pts/N``), from QMP ``query-chardev``."""
    result = qmp_command(paths.lab_qmp_socket, "query-chardev")
    if isinstance(result, list):
        for dev in result:
            if isinstance(dev, dict) and dev.get("label") == "ser0":
                filename = str(dev.get("filename", ""))
                if filename.startswith("pty:"):
                    return filename.removeprefix("pty:")
    raise LabFault(f"QMP {paths.lab_qmp_socket}: no pty chardev 'ser0' in query-chardev: {result!r}",
                   component="qemu")


def run_state(paths: GuestPaths) -> str:
    """QMP ``query-status`` of the guest ('running', 'paused', 'shutdown', ...)."""
    result = qmp_command(paths.lab_qmp_socket, "query-status")
    return str(result.get("status", "unknown")) if isinstance(result, dict) else "unknown"


def probe_kvm(kernel: Path, cache_file: Path, timeout: float = KVM_PROBE_TIMEOUT) -> bool:
    """Whether KVM really runs a guest here: boot ``kernel`` under KVM and wait for console output.

    /dev/kvm opening is not enough (on some hosts the guest spins forever with no output). The
    answer is cached in ``cache_file`` per QEMU binary and kernel, since the probe costs up to
    ``timeout`` seconds (of a spinning CPU) when KVM is broken. Labs that start at once (the test
    run's lab workers) probe once: the first holds a lock on the cache while it probes, the others
    then read its answer.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = qemu_binary()
    key = {"qemu": qemu, "qemu_mtime": os.stat(qemu).st_mtime, "kernel": str(kernel)}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_file.with_name(cache_file.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                return bool(cached["kvm"])
        except (OSError, ValueError, KeyError):
            pass
        works = _probe_kvm_boot(qemu, kernel, cache_file, timeout)
        write_atomic(cache_file, json.dumps({"key": key, "kvm": works, "probed_at": time.time()}) + "\n")
    return works


def _probe_kvm_boot(qemu: str, kernel: Path, cache_file: Path, timeout: float) -> bool:
    """Boot ``kernel`` under KVM; True when it printed its banner within ``timeout``."""
    out = cache_file.with_name(cache_file.name + ".console")
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-no-user-config",
         "-display", "none", "-no-reboot", "-kernel", str(kernel),
         "-append", "console=ttyS0 panic=-1", "-serial", f"file:{out}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    works = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if b"Linux version" in out.read_bytes():
                    works = True
                    break
            except OSError:
                pass
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        out.unlink(missing_ok=True)
    return works


def choose_accel(requested: str | None, kernel: Path, cache_file: Path) -> str:
    """'tcg' or 'kvm'. ``requested`` (or env RIG_LAB_ACCEL) may be 'tcg', 'kvm' or 'auto' (default)."""
    want = (requested or os.environ.get("RIG_LAB_ACCEL") or "auto").lower()
    if want not in ("auto", "tcg", "kvm"):
        raise LabFault(f"accelerator {want!r}: use tcg, kvm or auto (RIG_LAB_ACCEL / --accel)", component="qemu")
    if want == "tcg":
        return "tcg"
    works = probe_kvm(kernel, cache_file)
    if want == "kvm" and not works:
        raise LabFault("KVM was requested but a KVM guest printed nothing within "
                       f"{KVM_PROBE_TIMEOUT:.0f} s (or /dev/kvm is unusable); use --accel tcg",
                       component="qemu")
    return "kvm" if works else "tcg"


