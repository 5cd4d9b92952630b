"""Host resources the lab claims: loopback ports and the processes it starts.

Why ports derived from a hash of the lab folder: two checkouts on one machine (or a user's lab and a
test session's isolated lab) must never fight over ports, and a lab's ports should stay the same
from one ``rig lab up`` to the next so its inventory files stay valid. Each lab folder gets a block
of ports in 20000-59999; guest *i* uses slot *i* of that block. Before use every port is checked
free; a taken port is a clear error naming the port and, when /proc tells us, the process holding it.

Why process checks by command line: ``rig lab down`` kills by pid files, and a pid file may be stale
(the pid reused by an unrelated process after a reboot). A process is only "ours" when its
``/proc/<pid>/cmdline`` contains the lab folder's path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rig.errors import LabFault

PORT_LOW = 20000
PORT_HIGH = 60000
#: Ports per guest: ssh (tcp), console (tcp), bmc (udp), one spare.
SLOT_WIDTH = 4
#: Guests per lab (the block size is MAX_GUESTS * SLOT_WIDTH).
MAX_GUESTS = 16


@dataclass(frozen=True)
class GuestPorts:
    """The loopback ports of one guest."""

    ssh: int  # TCP, QEMU hostfwd to the guest's port 22
    console: int  # TCP, ser2net RFC 2217
    bmc: int  # UDP, the virtual BMC (IPMI lanplus)


def lab_base_port(lab_root: Path) -> int:
    """First port of this lab folder's block, stable for a given absolute path."""
    block = SLOT_WIDTH * MAX_GUESTS
    nblocks = (PORT_HIGH - PORT_LOW) // block
    h = int(hashlib.sha256(str(lab_root.resolve()).encode()).hexdigest(), 16)
    return PORT_LOW + (h % nblocks) * block


def guest_ports(lab_root: Path, index: int) -> GuestPorts:
    """Ports of guest number ``index`` (1-based) of the lab in ``lab_root``."""
    if not 1 <= index <= MAX_GUESTS:
        raise LabFault(f"guest index {index}: a lab has 1..{MAX_GUESTS} guests", component="lab")
    base = lab_base_port(lab_root) + (index - 1) * SLOT_WIDTH
    return GuestPorts(ssh=base, console=base + 1, bmc=base + 2)


def _proc_net_inodes(port: int, proto: str) -> set[str]:
    """Socket inodes bound to local ``port`` (LISTEN for tcp), from /proc/net/<proto>{,6}."""
    inodes: set[str] = set()
    for table in (proto, proto + "6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            local_port = int(f[1].rsplit(":", 1)[1], 16)
            if local_port != port:
                continue
            if proto == "tcp" and f[3] != "0A":  # 0A = LISTEN
                continue
            inodes.add(f[9])
    inodes.discard("0")
    return inodes


def port_bound(port: int, proto: str = "tcp") -> bool:
    """Whether some process listens on (tcp) or has bound (udp) ``port``, per /proc/net."""
    return bool(_proc_net_inodes(port, proto))


def port_owner(port: int, proto: str = "tcp") -> str | None:
    """'pid N (command line)' of a process holding ``port``, or None if /proc does not tell."""
    inodes = _proc_net_inodes(port, proto)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return f"pid {pid_dir.name} ({cmdline_text(int(pid_dir.name))[:120]})"
        except OSError:
            continue
    return None


def check_port_free(port: int, proto: str, what: str) -> None:
    """Raise LabFault naming ``port``, its use and who holds it, unless 127.0.0.1:port can be bound."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":
            # Same as QEMU and ser2net do: a TIME_WAIT leftover must not count as "taken".
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            owner = port_owner(port, proto)
            blame = f"held by {owner}" if owner else "held by another process (not visible in /proc)"
            raise LabFault(
                f"{proto.upper()} port 127.0.0.1:{port} ({what}) is already in use, {blame}. "
                f"Stop that process, or use another lab folder (RIG_LAB_DIR / --lab-dir: ports "
                f"are derived from its path)",
                component="ports",
            ) from None


# --- processes -------------------------------------------------------------------------------------


def spawn_logged(argv: list[str], log_file: Path, what: str) -> subprocess.Popen[bytes]:
    """Start a lab service detached (own session, survives the CLI), appending its output to ``log_file``.

    A dated header line per start makes restarts (fault-injection tests) visible in the log.
    """
    with open(log_file, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {what}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )


def cmdline_text(pid: int) -> str:
    """The command line of ``pid`` with spaces between arguments ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reaping it if it is our dead child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = st.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def is_ours(pid: int | None, marker: str) -> bool:
    """True if ``pid`` is alive and its command line contains ``marker`` (the lab folder path)."""
    return pid is not None and pid > 0 and pid_alive(pid) and marker in cmdline_text(pid)


def read_pid(path: Path) -> int | None:
    """The pid stored in ``path``, or None if missing or garbage."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_process(pid: int | None, marker: str, *, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``, a process that is ours; True if one was stopped.

    A pid whose command line lacks ``marker`` is left alone (stale pid file, reused pid).
    """
    if pid is None or not is_ours(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    return True
