"""Real SSH servers for tests: OpenSSH's sshd and dropbear, on 127.0.0.1, with keys in a temp folder.

Why real servers: the SSH transport's hard parts (window stalls on unread output, host keys, a
frozen peer, a server that restarts) are behaviours of real servers, not of a mock.

Both servers run as root and let the test's client key log in as root, without touching the
machine's own configuration:

* sshd gets its own config file (AuthorizedKeysFile in the temp folder, StrictModes off because
  pytest's temp folder lives under /tmp). It needs the privilege-separation folder /run/sshd, which
  is created if missing (it is what the openssh-server package creates at boot; it is left in place
  because another test's sshd may be using it).
* dropbear reads ``~root/.ssh/authorized_keys`` and has no option to change that. Instead of
  editing /root/.ssh, it runs in a private mount namespace (``unshare --mount``) in which a temp
  folder is bind-mounted over /root. The real /root is never written.

Usage::

    peer = SshPeer("sshd", tmp_path)      # or "dropbear"
    peer.start()
    cfg = peer.config()                   # a rig.inventory.SshConfig for this peer
    ...
    peer.stop()                           # kills the server and every process it started
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from rig.inventory import SshConfig

SSHD = "/usr/sbin/sshd"
DROPBEAR = "/usr/sbin/dropbear"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PeerKind = Literal["sshd", "dropbear"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mute_ssh_server(banner: bytes | None = None) -> Iterator[int]:
    """A real TCP server on 127.0.0.1 that accepts and then never speaks SSH; yields its port.

    A stand-in for a hung laptop whose kernel still accepts connections: with ``banner`` it sends
    that (an sshd that hangs mid-handshake), without it nothing at all (a frozen sshd).
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                held.append(conn)
                if banner is not None:
                    conn.sendall(banner)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        srv.close()
        for conn in held:
            conn.close()
        th.join(timeout=5)


def ssh_keygen(path: Path, kind: str = "ed25519") -> str:
    """Make an OpenSSH key pair at ``path``; returns the public line 'type base64 comment'."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "rig-test", "-f", str(path)], check=True)
    return path.with_suffix(path.suffix + ".pub").read_text().strip()


def dropbear_keygen(path: Path, kind: str = "ed25519") -> str:
    """Make a dropbear host key at ``path``; returns the public line 'type base64 comment'."""
    subprocess.run(["dropbearkey", "-t", kind, "-f", str(path)], check=True, capture_output=True)
    out = subprocess.run(["dropbearkey", "-y", "-f", str(path)], check=True, capture_output=True, text=True).stdout
    return next(line for line in out.splitlines() if line.startswith(("ssh-", "ecdsa-")))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


class SshPeer:
    """One SSH server on 127.0.0.1:<free port>, with its host key and an authorized client key."""

    def __init__(self, kind: PeerKind, tmp: Path, port: int | None = None) -> None:
        self.kind = kind
        self.dir = tmp / f"{kind}-peer"
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"
        # Client key (the rig's key) and the server's host key.
        self.client_key = self.dir / "client_ed25519"
        if not self.client_key.exists():
            self.client_pub = ssh_keygen(self.client_key)
        else:
            self.client_pub = self.client_key.with_suffix(".pub").read_text().strip()
        self.home = self.dir / "home"
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        os.chmod(self.home / ".ssh", 0o700)
        self.authorized_keys = self.home / ".ssh" / "authorized_keys"
        self.authorized_keys.write_text(self.client_pub + "\n")
        os.chmod(self.authorized_keys, 0o600)
        if kind == "sshd":
            self.host_key_file = self.dir / "ssh_host_ed25519_key"
            self.host_key_line = ssh_keygen(self.host_key_file)
        else:
            self.host_key_file = self.dir / "dropbear_ed25519_host_key"
            self.host_key_line = dropbear_keygen(self.host_key_file)
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_key}\n")

    @property
    def host_key(self) -> str:
        """'type base64' of the server's host key (what ssh.host_key pins)."""
        return " ".join(self.host_key_line.split()[:2])

    # -- lifecycle ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        if self.kind == "sshd":
            cfg = self.dir / "sshd_config"
            cfg.write_text(
                "\n".join(
                    [
                        f"Port {self.port}",
                        f"ListenAddress {self.host}",
                        f"HostKey {self.host_key_file}",
                        f"AuthorizedKeysFile {self.authorized_keys}",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication yes",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",
                        "UseDNS no",
                        "PidFile none",
                        "LogLevel VERBOSE",
                        f"Subsystem sftp {SFTP_SERVER}",
                        "",
                    ]
                )
            )
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            return [SSHD, "-D", "-e", "-f", str(cfg)]
        # dropbear: a private mount namespace where our temp home hides /root (see module docstring).
        inner = [
            DROPBEAR,
            "-F",
            "-E",
            "-s",  # no password logins: key only
            "-p",
            f"{self.host}:{self.port}",
            "-r",
            str(self.host_key_file),
            "-P",
            str(self.dir / "dropbear.pid"),
        ]
        script = 'mount --bind "$0" /root && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, str(self.home), *inner]

    def start(self, timeout: float = 10.0) -> SshPeer:
        """Start the server and wait until it answers with an SSH banner."""
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._logf = logf
        self.proc = subprocess.Popen(self._command(), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} on port {self.port} did not answer within {timeout} s")

    def freeze(self) -> list[int]:
        """SIGSTOP the server and every process it started: the peer stops answering, TCP stays up."""
        pids = [self.pid, *descendants(self.pid)]
        _signal_all(pids, signal.SIGSTOP)
        self._frozen = pids
        return pids

    def thaw(self) -> None:
        _signal_all(getattr(self, "_frozen", []), signal.SIGCONT)
        self._frozen = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def stop(self) -> None:
        """Kill the server and everything below it (connections, sessions, commands). Idempotent."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        _signal_all(pids, signal.SIGCONT)  # a stopped process would not act on TERM
        _signal_all(pids, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        self._logf.close()

    def restart(self) -> SshPeer:
        self.stop()
        return self.start()

    # -- client side -------------------------------------------------------------------------

    def config(self, **overrides: Any) -> SshConfig:
        """An SshConfig that reaches this peer as root with the client key, host key from known_hosts."""
        data: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": "root",
            "key_file": self.client_key,
            "known_hosts": self.known_hosts,
            "connect_timeout": 5.0,
        }
        data.update(overrides)
        return SshConfig.model_validate({k: v for k, v in data.items() if v is not None})
