"""SSH transport to a device (paramiko): run commands with deadlines, stream long-running ones, copy files.

Why this module exists instead of ``paramiko.SSHClient`` used ad hoc: a test rig must answer *whose
fault* every failure is and must never hang. So:

* Every call has a deadline and honours it even when the peer is frozen (SIGSTOP'd, wedged kernel):
  a timer closes the channel, which wakes every paramiko wait. paramiko's own ``exec_command`` and
  ``recv_exit_status`` wait without a bound, and ``Transport.set_keepalive`` never notices a dead peer
  (see the lab notes), so the socket also gets TCP keepalive + ``TCP_USER_TIMEOUT``.
* stdout and stderr are read concurrently while the command runs: a command that fills one stream
  while we wait on the other would otherwise block forever on the SSH window.
* Host keys are pinned (``ssh.host_key``) or come from a rig-owned known_hosts file. There is no
  AutoAdd: a reinstalled laptop (or a man in the middle) produces a :class:`HostKeyError` that says
  which file to fix, never a silent trust.
* Failures are sorted: a wrong key/password or an unknown host key is a lab fault
  (:class:`rig.errors.LabFault`); SSH not answering on a device that should be up is the device's
  problem (:class:`SshUnreachable`, a :class:`rig.errors.DeviceError`); a host name that does not
  resolve is a :class:`rig.errors.ConfigError`.
* Values from inventories are never pasted into shell code unquoted: a command given as a list is
  joined with :func:`shlex.join`; a string is the caller's own shell code and runs as is.
* One client is shared by threads (the hang monitor probes while a test runs commands). Each command
  takes a connection from a small pool (one command per connection at a time: dropbear 2022.x drops
  a connection whose channels start and end concurrently, see SshClient); opening connections is
  serialized by a lock, so a booting device sees one handshake at a time.
* A timed-out command is sent a KILL "signal" request before its channel is closed. dropbear kills
  the command's shell; OpenSSH refuses signals for root sessions, so there a command that never
  writes again can outlive its deadline on the device.

Passwords are read through :meth:`rig.inventory.SecretRef.resolve_password` at login and appear in no
message or log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import select
import shlex
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko
from paramiko.channel import Channel
from paramiko.common import cMSG_CHANNEL_REQUEST

from rig.errors import CommandTimeout, ConfigError, DeviceError, LabFault
from rig.inventory import SshConfig

log = logging.getLogger(__name__)

#: TCP keepalive: first probe after this many idle seconds, then every KEEPALIVE_INTERVAL, give up
#: after KEEPALIVE_COUNT unanswered probes. Together with TCP_USER_TIMEOUT (unacknowledged data) a
#: blocked read on a powered-off peer fails in about ten seconds instead of the kernel's two hours.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 10_000

#: After the exit status arrived, wait this long for the output's end-of-file. A command that leaves
#: a background child holding stdout (``daemon &``) would otherwise keep the channel open.
EOF_GRACE = 1.0

#: How much of a long-running process's output a RemoteProcess keeps (the rest goes to callbacks).
KEEP_OUTPUT = 1 << 20

#: Idle connections kept per client (one per thread that ran commands at the same time).
MAX_IDLE = 3

#: Pause between reconnect attempts in wait_ready.
RETRY_PAUSE = 1.0

PROBE_TEXT = "rig-alive"

_CHUNK = 1 << 15


class HostKeyError(LabFault):
    """The device's host key is unknown or changed. The message names the file to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message, component="ssh")


class SshUnreachable(DeviceError):
    """SSH does not answer (refused, timed out, connection dropped): the device's problem, not the lab's.

    The monitor reports it as ``lost-connection``.
    """


@dataclass(frozen=True)
class CommandResult:
    """A finished remote command. Bytes are kept as received; ``out``/``err`` are for humans and parsers."""

    command: str
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration: float
    device: str = ""

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> CommandResult:
        """Return self if the command succeeded, else raise DeviceError with the command and the stderr tail."""
        if self.ok:
            return self
        tail = _tail(self.err) or "(no stderr)"
        who = f"device {self.device}: " if self.device else ""
        raise DeviceError(f"{who}command {_short(self.command)} failed with exit status {self.exit_status}: {tail}")


def _tail(text: str, lines: int = 10, chars: int = 2000) -> str:
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail[-chars:]


def _short(command: str, limit: int = 200) -> str:
    """Quote a command for a message; long scripts are cut (the full text is in the debug log)."""
    text = command if len(command) <= limit else command[:limit] + "..."
    return repr(text)


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (``SHA256:base64-without-padding``)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def wrap_command(command: str | Sequence[str], *, sudo: bool) -> str:
    """The exact text sent to the device for ``command``.

    A list is quoted with shlex.join (argument values stay literal); a string is the caller's shell
    code. With sudo the whole thing runs under ``sudo -n`` (never prompts: a missing sudoers rule
    fails at once instead of hanging on a password prompt); a string is wrapped in ``sh -c`` so
    that sudo covers every part of a pipeline, not only its first word.
    """
    if isinstance(command, str):
        text = command
        return f"sudo -n sh -c {shlex.quote(text)}" if sudo else text
    args = list(command)
    if not args:
        raise ValueError("empty command list")
    text = shlex.join(args)
    return f"sudo -n {text}" if sudo else text


@dataclass
class _KnownKey:
    keytype: str
    blob: bytes
    source: str  # a known_hosts path, or a description of the pinned key


def _algorithms_for(keytype: str) -> list[str]:
    """Host-key algorithm names to negotiate for a key type written in known_hosts."""
    if keytype == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    return [keytype]


class RemoteProcess:
    """A long-running command (heartbeat loop, log follower) on its own channel.

    Output is streamed to the callbacks as it arrives (from a reader thread) and the last
    KEEP_OUTPUT bytes of each stream are kept. ``stop()`` signals the remote process group: closing
    an SSH channel does not by itself end a command that runs without a terminal.
    """

    def __init__(
        self,
        client: SshClient,
        chan: Channel,
        transport: paramiko.Transport,
        command: str,
        *,
        sudo: bool,
        on_stdout: Callable[[bytes], None] | None,
        on_stderr: Callable[[bytes], None] | None,
    ) -> None:
        self.command = command
        self._client = client
        self._chan = chan
        self._transport = transport
        self._sudo = sudo
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._pid_line = bytearray()
        self.pid: int | None = None
        self._pid_known = threading.Event()
        self._done = threading.Event()
        self.exit_status: int | None = None
        self._thread = threading.Thread(target=self._read, name=f"ssh-{client.device}-proc", daemon=True)
        self._thread.start()

    # The first stdout line is "rig-pid N" from our wrapper; it is consumed here, not passed on.
    def _feed_stdout(self, data: bytes) -> None:
        if self.pid is None and not self._pid_known.is_set():
            self._pid_line += data
            if b"\n" not in self._pid_line:
                return
            line, _, rest = bytes(self._pid_line).partition(b"\n")
            self._pid_line.clear()
            try:
                self.pid = int(line.split()[-1])
            except (ValueError, IndexError):
                log.warning("%s: could not read the pid line of %s", self._client.device, _short(self.command))
                rest = line + b"\n" + rest
            self._pid_known.set()
            data = rest
            if not data:
                return
        with self._lock:
            self._out += data
            del self._out[:-KEEP_OUTPUT]
        if self._on_stdout is not None:
            self._on_stdout(data)

    def _feed_stderr(self, data: bytes) -> None:
        with self._lock:
            self._err += data
            del self._err[:-KEEP_OUTPUT]
        if self._on_stderr is not None:
            self._on_stderr(data)

    def _read(self) -> None:
        chan = self._chan
        try:
            while True:
                got = False
                while chan.recv_ready():
                    data = chan.recv(_CHUNK)
                    if not data:
                        break
                    self._feed_stdout(data)
                    got = True
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(_CHUNK)
                    if not data:
                        break
                    self._feed_stderr(data)
                    got = True
                if got:
                    continue
                if chan.closed or chan.eof_received:
                    # The exit status follows the end of output closely; a dead transport never sends it.
                    chan.status_event.wait(EOF_GRACE * 3)
                    break
                select.select([chan], [], [], 0.5)
        except Exception as exc:  # noqa: BLE001 - a dropped connection ends the process's stream; say so once
            log.debug("%s: background command reader stopped: %s", self._client.device, exc)
        finally:
            if chan.exit_status_ready():
                self.exit_status = chan.recv_exit_status()
            self._pid_known.set()
            self._done.set()
            chan.close()
            self._client._checkin(self._transport)

    @property
    def alive(self) -> bool:
        """True while the remote command runs (its channel is open and no exit status came)."""
        return not self._done.is_set()

    @property
    def stdout(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    @property
    def stderr(self) -> bytes:
        with self._lock:
            return bytes(self._err)

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def wait(self, timeout: float) -> int | None:
        """Wait for the command to end on its own; its exit status, or None if still running/unknown."""
        self._done.wait(timeout)
        return self.exit_status

    def stop(self, timeout: float = 5.0) -> int | None:
        """End the remote command (TERM, then KILL its process group) and close the channel.

        Best effort with a deadline: a device that no longer answers cannot be asked to kill anything;
        the channel is closed regardless (and the command then dies of SIGPIPE on its next write).
        """
        deadline = time.monotonic() + timeout
        if self.alive:
            self._pid_known.wait(max(0.0, min(1.0, deadline - time.monotonic())))
        for sig in ("TERM", "KILL"):
            if not self.alive or self.pid is None:
                break
            kill = f"kill -{sig} -- -{self.pid} 2>/dev/null || kill -{sig} {self.pid} 2>/dev/null; true"
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._client.run(kill, timeout=min(left, 5.0), sudo=self._sudo)
            except Exception as exc:  # noqa: BLE001 - device may be gone; we still close below
                log.debug("%s: could not signal %s: %s", self._client.device, self.pid, exc)
                break
            self._done.wait(max(0.0, min(2.0, deadline - time.monotonic())))
        self._chan.close()
        self._done.wait(max(0.0, min(1.0, deadline - time.monotonic())))
        return self.exit_status


class _ChannelWriter(io.RawIOBase):
    """A write-only file object over a channel's stdin, for tarfile's streaming mode."""

    def __init__(self, chan: Channel) -> None:
        self._chan = chan

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self._chan.sendall(data)
        return len(data)


class SshClient:
    """One device's SSH connection. Thread-safe; see the module docstring for the guarantees."""

    def __init__(self, cfg: SshConfig, *, device: str) -> None:
        self.cfg = cfg
        self.device = device
        #: Serializes opening connections: a booting device gets one handshake at a time.
        self._lock = threading.RLock()
        #: Guards the pool below (held only briefly, never across network waits).
        self._pool_lock = threading.Lock()
        self._idle: list[paramiko.Transport] = []
        self._open_transports: set[paramiko.Transport] = set()
        self._closed = False

    # -- naming ----------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.cfg.user}@{self.cfg.host}:{self.cfg.port}"

    @property
    def _host_name(self) -> str:
        """The host's name as known_hosts writes it: ``host`` on port 22, else ``[host]:port``."""
        return self.cfg.host if self.cfg.port == 22 else f"[{self.cfg.host}]:{self.cfg.port}"

    def __repr__(self) -> str:
        return f"SshClient({self.device!r}, {self.target})"

    # -- connection ------------------------------------------------------------------------------

    # One command per connection at a time. Why: dropbear 2022.x (Debian 12, the lab image) kills the
    # whole connection ("Failed assertion (common-channel.c:705): !channel->sent_close", dropbear issue
    # #321, fixed upstream in 2024) when a session's child exits while another channel on the same
    # connection is between open and exec -- exactly what the monitor's probe next to a test command
    # does. So commands take a connection from a small pool (normally one, two while the monitor
    # probes during a command) instead of sharing channels on one Transport.

    @property
    def connected(self) -> bool:
        with self._pool_lock:
            return any(t.is_active() and t.is_authenticated() for t in self._open_transports)

    def connect(self, timeout: float | None = None, *, banner_timeout: float | None = None) -> None:
        """Open (or reopen) the connection: TCP, key exchange, host key check, login.

        ``banner_timeout`` (default: the whole ``timeout``) bounds the wait for the server's banner
        alone: a port forwarder that accepts TCP before anybody listens behind it (QEMU's user network
        while a guest boots) is told from a slow server in a moment (rig.lab's boot wait polls so).
        Idle connections from before are closed (after a reboot they are dead anyway). Raises
        SshUnreachable (device not answering), HostKeyError / LabFault (keys, credentials),
        ConfigError (unresolvable host, unreadable key file).
        """
        timeout = self.cfg.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.check_key()  # before the network: a bad key file is said even when the device is off
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            raise SshUnreachable(f"device {self.device}: SSH {self.target}: another thread is still connecting")
        try:
            with self._pool_lock:
                self._closed = False
                stale, self._idle = self._idle, []
                self._open_transports.difference_update(stale)
            for t in stale:
                _close_quietly(t)
            t = self._open(deadline, banner_timeout)
            with self._pool_lock:
                self._open_transports.add(t)
                self._idle.append(t)
        finally:
            self._lock.release()

    def _checkout(self, deadline: float) -> paramiko.Transport:
        """An idle live connection, or a new one (opened under the connect lock, within the deadline)."""
        while True:
            with self._pool_lock:
                if self._closed:
                    raise DeviceError(f"device {self.device}: SSH client was closed; call connect() first")
                while self._idle:
                    t = self._idle.pop()
                    if t.is_active():
                        return t
                    self._open_transports.discard(t)
                    _close_quietly(t)
            if not self._lock.acquire(timeout=self._left(deadline)):
                raise SshUnreachable(f"device {self.device}: SSH {self.target}: another thread is still connecting")
            try:
                with self._pool_lock:
                    # Another thread may have finished with a connection while we waited for the lock.
                    if any(t.is_active() for t in self._idle):
                        continue
                left = min(self.cfg.connect_timeout, self._left(deadline))
                t = self._open(time.monotonic() + left)
                with self._pool_lock:
                    self._open_transports.add(t)
                return t
            finally:
                self._lock.release()

    def _checkin(self, t: paramiko.Transport) -> None:
        """Give a connection back for the next command; dead or surplus ones are closed."""
        with self._pool_lock:
            keep = not self._closed and t.is_active() and t in self._open_transports and len(self._idle) < MAX_IDLE
            if keep:
                self._idle.append(t)
            else:
                self._open_transports.discard(t)
        if not keep:
            _close_quietly(t)

    def _left(self, deadline: float) -> float:
        return max(0.01, deadline - time.monotonic())

    def _open_socket(self, deadline: float) -> socket.socket:
        host, port = self.cfg.host, self.cfg.port
        try:
            sock = socket.create_connection((host, port), timeout=self._left(deadline))
        except socket.gaierror as exc:
            raise ConfigError(
                f"device {self.device}: ssh.host {host!r} does not resolve ({exc.strerror}); fix the inventory"
            ) from None
        except ConnectionRefusedError:
            raise SshUnreachable(
                f"device {self.device}: SSH {host}:{port} refused the connection; is the device up and sshd running?"
            ) from None
        except TimeoutError:
            raise SshUnreachable(
                f"device {self.device}: SSH {host}:{port} did not answer within the connect timeout; "
                "is the device powered and on the network?"
            ) from None
        except OSError as exc:
            raise SshUnreachable(
                f"device {self.device}: SSH {host}:{port} unreachable: {exc.strerror or exc}"
            ) from None
        _tune_socket(sock)
        return sock

    def _open(self, deadline: float, banner_timeout: float | None = None) -> paramiko.Transport:
        known = self._known_keys()
        sock = self._open_socket(deadline)
        t = paramiko.Transport(sock)
        try:
            left = self._left(deadline)
            t.banner_timeout = left if banner_timeout is None else min(left, banner_timeout)
            t.handshake_timeout = left
            t.auth_timeout = left
            if known:
                opts = t.get_security_options()
                first: list[str] = []
                for k in known:
                    first += [a for a in _algorithms_for(k.keytype) if a in opts.key_types and a not in first]
                opts.key_types = tuple(first + [a for a in opts.key_types if a not in first])
            try:
                t.start_client(timeout=self._left(deadline))
            except paramiko.SSHException as exc:
                raise SshUnreachable(
                    f"device {self.device}: SSH {self.cfg.host}:{self.cfg.port} did not complete the handshake: {exc}"
                ) from None
            except (OSError, EOFError) as exc:
                raise SshUnreachable(
                    f"device {self.device}: SSH {self.cfg.host}:{self.cfg.port} dropped the connection "
                    f"during the handshake: {exc}"
                ) from None
            try:
                # start_client returns quietly when its timeout runs out mid-handshake (a hung
                # device's sshd): the key exchange is then unfinished and there is no server key.
                server_key = t.get_remote_server_key()
            except paramiko.SSHException:
                raise SshUnreachable(
                    f"device {self.device}: SSH {self.cfg.host}:{self.cfg.port} did not finish the handshake "
                    "before the deadline (a hung device?)"
                ) from None
            self._check_host_key(server_key, known)
            self._login(t, deadline)
        except BaseException:
            t.close()
            raise
        log.debug("%s: connected to %s", self.device, self.target)
        return t

    # -- host keys -------------------------------------------------------------------------------

    def _known_keys(self) -> list[_KnownKey]:
        """Keys the device may present: the pinned one and the known_hosts entries for [host]:port."""
        keys: list[_KnownKey] = []
        if self.cfg.host_key is not None:
            parts = self.cfg.host_key.split()
            try:
                blob = base64.b64decode(parts[1], validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(
                    f"device {self.device}: ssh.host_key is not 'type base64' (the base64 part does not decode); "
                    "copy the line from ssh-keyscan without the host name"
                ) from None
            keys.append(_KnownKey(parts[0], blob, f"ssh.host_key in device {self.device}'s inventory"))
        path = self.cfg.known_hosts
        if path is not None and path.exists():
            hk = paramiko.HostKeys()
            try:
                hk.load(str(path))
            except OSError as exc:
                raise ConfigError(f"device {self.device}: cannot read ssh.known_hosts {path}: {exc.strerror}") from None
            entry = hk.lookup(self._host_name)
            if entry is not None:
                for keytype in entry:
                    keys.append(_KnownKey(keytype, entry[keytype].asbytes(), str(path)))
        return keys

    def _check_host_key(self, key: paramiko.PKey, known: list[_KnownKey]) -> None:
        blob = key.asbytes()
        got = fingerprint(blob)
        if any(k.blob == blob for k in known):
            return
        name = self._host_name
        if not known:
            where = self.cfg.known_hosts
            exists = "" if where is None or where.exists() else " (the file does not exist yet)"
            port = self.cfg.port
            raise HostKeyError(
                f"device {self.device}: host key for {name} is not known; add it to {where}{exists} "
                f"(ssh-keyscan -p {port} {shlex.quote(self.cfg.host)}); the device offered {key.get_name()} {got}"
            )
        same = [k for k in known if k.keytype == key.get_name()]
        expected = (same or known)[0]
        raise HostKeyError(
            f"device {self.device}: host key for {name} CHANGED (expected {expected.keytype} "
            f"{fingerprint(expected.blob)}, got {got}): if the laptop was reinstalled, update {expected.source}; "
            "otherwise stop: someone may be intercepting"
        )

    # -- login -----------------------------------------------------------------------------------

    def _login(self, t: paramiko.Transport, deadline: float) -> None:
        who = f"device {self.device}: SSH login as {self.cfg.user!r} on {self.cfg.host}:{self.cfg.port}"
        tried: list[str] = []
        if self.cfg.key_file is not None:
            pkey = self._load_key(self.cfg.key_file)
            tried.append(f"key {self.cfg.key_file}")
            try:
                t.auth_publickey(self.cfg.user, pkey)
                return
            except paramiko.AuthenticationException:
                self._unless_refused(t, deadline, who)
            except paramiko.SSHException as exc:
                raise SshUnreachable(f"{who}: connection failed during login: {exc}") from None
        if self.cfg.has_secret():
            password = self.cfg.resolve_password(f"device {self.device} ssh")
            tried.append("password from " + (self.cfg.password_env or str(self.cfg.password_file)))
            try:
                t.auth_password(self.cfg.user, password.get_secret_value())
                return
            except paramiko.AuthenticationException:
                self._unless_refused(t, deadline, who)
            except paramiko.SSHException as exc:
                # Never echo the exception text here: some servers' replies quote the attempt.
                raise SshUnreachable(f"{who}: connection failed during password login ({type(exc).__name__})") from None
        raise LabFault(
            f"{who} was refused (tried {', '.join(tried)}); install the key in the user's authorized_keys "
            "or fix the password source",
            component="ssh",
        )

    def _unless_refused(self, t: paramiko.Transport, deadline: float, who: str) -> None:
        """Raise SshUnreachable if a failed login was not the server's answer but its silence.

        Why: paramiko ends a login the server never answers ("Authentication timeout.", at our deadline)
        or a connection dropped mid-login with the same AuthenticationException as a refused key. A
        laptop that hangs or is switched off just as the rig logs in is a device that stopped
        answering; calling it "login refused" would make a lab fault of a hang.
        """
        if not t.is_active() or deadline - time.monotonic() <= 0.05:
            raise SshUnreachable(
                f"{who}: the device stopped answering during login (no reply before the deadline, or the "
                "connection dropped)"
            ) from None

    def check_key(self) -> None:
        """Raise ConfigError unless ``key_file`` (if any) exists, is readable and loads without a passphrase.

        Needs no network, so ``rig check`` and the first connect name a bad key file at once.
        """
        if self.cfg.key_file is not None:
            self._load_key(self.cfg.key_file)

    def _load_key(self, path: Path) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(path)
        except FileNotFoundError:
            raise ConfigError(f"device {self.device}: ssh.key_file {path} does not exist") from None
        except (paramiko.PasswordRequiredException, TypeError):
            # paramiko raises TypeError ("Key is password-protected, but password was not provided")
            # for encrypted keys in the OpenSSH format, PasswordRequiredException for PEM ones.
            raise ConfigError(
                f"device {self.device}: ssh.key_file {path} is encrypted (has a passphrase); the rig logs in "
                f"unattended and needs a key without one: make one with ssh-keygen -t ed25519 -N '' -f <new file>, "
                f"install its .pub on the device and point key_file at it"
            ) from None
        except PermissionError:
            raise ConfigError(
                f"device {self.device}: ssh.key_file {path} is not readable by this user; fix its owner or mode (0600)"
            ) from None
        except (paramiko.SSHException, OSError, ValueError) as exc:
            raise ConfigError(f"device {self.device}: ssh.key_file {path} cannot be loaded: {exc}") from None

    def _open_session(self, deadline: float, what: str, timeout: float) -> tuple[Channel, paramiko.Transport]:
        """A new session channel and its connection (which the caller must _checkin).

        A pooled connection may be dead without paramiko knowing yet (the device rebooted), and dropbear
        2022.x sometimes closes a new channel at once: either way one more try is made within the deadline.
        """
        for attempt in range(2):
            t = self._checkout(deadline)
            try:
                return t.open_session(timeout=self._left(deadline)), t
            except (paramiko.SSHException, OSError, EOFError) as exc:
                alive = t.is_active()
                self._checkin(t)
                if deadline - time.monotonic() < 0.05:
                    raise self._timeout(what, timeout) from None
                if attempt == 0:
                    # Dead pooled connection, or dropbear closing a fresh channel at once (its SIGCHLD race,
                    # issue #173): a second try on a live connection succeeds.
                    log.debug("%s: could not open a channel (%s); retrying once", self.device, exc)
                    continue
                if not alive:
                    raise SshUnreachable(f"device {self.device}: SSH connection to {self.target} lost: {exc}") from None
                raise SshUnreachable(f"device {self.device}: SSH {self.target} refused a new session: {exc}") from None
        raise AssertionError("unreachable")

    def _start_command(
        self,
        text: str,
        deadline: float,
        timeout: float,
        holder: list[Channel],
        expired: threading.Event,
        *,
        subsystem: str | None = None,
    ) -> tuple[Channel, paramiko.Transport]:
        """Open a channel and exec ``text`` (or start ``subsystem``) on it; one retry if that fails.

        A retry cannot run the command twice: an exec that was not acknowledged did not start. It
        matters with dropbear 2022.x, which may close a new channel at once (see the pool comment).
        """
        for attempt in range(2):
            chan, t = self._open_session(deadline, text, timeout)
            holder.append(chan)
            if expired.is_set():
                chan.close()
            try:
                if subsystem is None:
                    chan.exec_command(text)
                else:
                    chan.invoke_subsystem(subsystem)
                return chan, t
            except (paramiko.SSHException, OSError, EOFError) as exc:
                chan.close()
                self._checkin(t)
                if expired.is_set() or deadline - time.monotonic() < 0.05:
                    raise self._timeout(text, timeout) from None
                if attempt == 0:
                    log.debug("%s: exec not accepted (%s); retrying once", self.device, exc)
                    continue
                if subsystem is not None and t.is_active():
                    raise DeviceError(
                        f"device {self.device}: SSH {self.target} refused the {subsystem} subsystem ({exc}); "
                        "install sftp-server (dropbear looks for /usr/lib/sftp-server)"
                    ) from None
                raise SshUnreachable(
                    f"device {self.device}: SSH {self.target} could not start a command: {exc}"
                ) from None
        raise AssertionError("unreachable")

    # -- commands --------------------------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: float,
        sudo: bool = False,
        check: bool = False,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run a command and collect its output, within ``timeout`` seconds (connect included).

        Raises CommandTimeout (channel closed; the remote command may linger if it ignores the hangup)
        or SshUnreachable if the connection is lost. With ``check``, a non-zero exit raises DeviceError.
        """
        feed = None
        if stdin is not None:
            data = stdin

            def feed(w: _ChannelWriter) -> None:
                for i in range(0, len(data), _CHUNK):
                    w.write(data[i : i + _CHUNK])

        res = self._exec(self._wrap(command, sudo), timeout=timeout, feed=feed)
        return res.check() if check else res

    def _wrap(self, command: str | Sequence[str], sudo: bool) -> str:
        use_sudo = (sudo or self.cfg.sudo) and self.cfg.user != "root"
        return wrap_command(command, sudo=use_sudo)

    def _exec(self, text: str, *, timeout: float, feed: Callable[[_ChannelWriter], None] | None) -> CommandResult:
        start = time.monotonic()
        deadline = start + timeout
        log.debug("%s: run (timeout %.1fs): %s", self.device, timeout, text)
        expired = threading.Event()
        holder: list[Channel] = []

        def expire() -> None:
            expired.set()
            for c in list(holder):
                _signal_channel(c, "KILL")
                c.close()

        timer = threading.Timer(self._left(deadline), expire)
        timer.daemon = True
        timer.start()
        feeder: threading.Thread | None = None
        feed_error: list[BaseException] = []
        out = bytearray()
        err = bytearray()
        transport: paramiko.Transport | None = None
        try:
            chan, transport = self._start_command(text, deadline, timeout, holder, expired)
            if feed is None:
                chan.shutdown_write()
            else:

                def pump() -> None:
                    try:
                        feed(_ChannelWriter(chan))
                        chan.shutdown_write()
                    except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
                        feed_error.append(exc)

                feeder = threading.Thread(target=pump, name=f"ssh-{self.device}-stdin", daemon=True)
                feeder.start()
            status = self._collect(chan, out, err, deadline, expired)
            if status is None:
                _signal_channel(chan, "KILL")
                raise self._timeout(text, timeout)
            if feeder is not None:
                feeder.join(self._left(deadline))
            if feed_error and not isinstance(feed_error[0], OSError | EOFError | paramiko.SSHException):
                raise feed_error[0]
            lost = status == -1 and not transport.is_active()
        finally:
            timer.cancel()
            for c in holder:
                c.close()
            if transport is not None:
                self._checkin(transport)
        if lost:
            raise SshUnreachable(
                f"device {self.device}: SSH connection to {self.target} lost while running {_short(text)}"
            )
        return CommandResult(text, status, bytes(out), bytes(err), time.monotonic() - start, self.device)

    def _timeout(self, text: str, timeout: float) -> CommandTimeout:
        return CommandTimeout(
            f"device {self.device}: command {_short(text)} did not finish within {timeout:g} s (SSH {self.target})"
        )

    @staticmethod
    def _collect(
        chan: Channel, out: bytearray, err: bytearray, deadline: float, expired: threading.Event
    ) -> int | None:
        """Read both streams until the command ends. The exit status, -1 if none came, None on deadline."""
        exit_seen: float | None = None
        while True:
            got = False
            while chan.recv_ready():
                data = chan.recv(_CHUNK)
                if not data:
                    break
                out += data
                got = True
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(_CHUNK)
                if not data:
                    break
                err += data
                got = True
            now = time.monotonic()
            if expired.is_set() or now >= deadline:
                return None
            if got:
                exit_seen = None
                continue
            if chan.exit_status_ready():
                if chan.eof_received or chan.closed:
                    return chan.recv_exit_status()
                if exit_seen is None:
                    exit_seen = now
                elif now - exit_seen >= EOF_GRACE:
                    return chan.recv_exit_status()
            elif chan.eof_received:
                # All output is in; the exit status follows closely.
                chan.status_event.wait(min(max(deadline - now, 0.0), 0.2))
                continue
            select.select([chan], [], [], min(max(deadline - now, 0.0), 0.25))

    # -- long-running commands -------------------------------------------------------------------

    def start(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = False,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
    ) -> RemoteProcess:
        """Start a long-running command in the background of this connection; returns at once.

        The remote shell prints its pid first (consumed here) so that ``stop()`` can signal the
        command's whole process group. ``timeout`` bounds only the start (connect + exec).
        """
        inner = command if isinstance(command, str) else shlex.join(list(command))
        wrapped = f"echo rig-pid $$; exec sh -c {shlex.quote(inner)}"
        text = self._wrap(wrapped, sudo)
        deadline = time.monotonic() + (self.cfg.connect_timeout if timeout is None else timeout)
        log.debug("%s: start: %s", self.device, text)
        expired = threading.Event()
        holder: list[Channel] = []

        def expire() -> None:
            expired.set()
            for c in list(holder):
                c.close()

        start_timeout = self.cfg.connect_timeout if timeout is None else timeout
        timer = threading.Timer(self._left(deadline), expire)
        timer.daemon = True
        timer.start()
        try:
            chan, t = self._start_command(text, deadline, start_timeout, holder, expired)
            chan.shutdown_write()
        finally:
            timer.cancel()
        return RemoteProcess(self, chan, t, text, sudo=sudo or self.cfg.sudo, on_stdout=on_stdout, on_stderr=on_stderr)

    # -- files -----------------------------------------------------------------------------------

    # -- files -----------------------------------------------------------------------------------

    def _sftp_call(self, what: str, timeout: float, action: Callable[[paramiko.SFTPClient], None]) -> None:
        """Run ``action`` on an SFTP session that is closed at the deadline (SFTP waits have no bound)."""
        deadline = time.monotonic() + timeout
        expired = threading.Event()
        holder: list[Channel] = []

        def expire() -> None:
            expired.set()
            for c in list(holder):
                c.close()

        timer = threading.Timer(self._left(deadline), expire)
        timer.daemon = True
        timer.start()
        transport: paramiko.Transport | None = None
        try:
            chan, transport = self._start_command(what, deadline, timeout, holder, expired, subsystem="sftp")
            try:
                sftp = paramiko.SFTPClient(chan)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if expired.is_set():
                    raise self._timeout(what, timeout) from None
                raise DeviceError(
                    f"device {self.device}: SFTP session on {self.target} failed to start: {exc}"
                ) from None
            try:
                action(sftp)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if expired.is_set():
                    raise self._timeout(what, timeout) from None
                detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise DeviceError(f"device {self.device}: {what} failed: {detail}") from None
            finally:
                sftp.close()
        finally:
            timer.cancel()
            for c in holder:
                c.close()
            if transport is not None:
                self._checkin(transport)

    def upload_file(
        self, local: str | os.PathLike[str], remote: str, mode: int | None = None, *, timeout: float = 300.0
    ) -> None:
        """Copy one file to the device over SFTP. ``mode`` defaults to the local file's permission bits."""
        src = Path(local)
        perm = stat.S_IMODE(src.stat().st_mode) if mode is None else mode

        def action(sftp: paramiko.SFTPClient) -> None:
            sftp.put(str(src), remote, confirm=True)
            sftp.chmod(remote, perm)

        self._sftp_call(f"upload {src} -> {remote}", timeout, action)

    def download_file(self, remote: str, local: str | os.PathLike[str], *, timeout: float = 300.0) -> None:
        """Copy one file from the device over SFTP."""
        dst = Path(local)
        self._sftp_call(f"download {remote} -> {dst}", timeout, lambda sftp: sftp.get(remote, str(dst)))

    def upload_tree(
        self, local_dir: str | os.PathLike[str], remote_dir: str, *, timeout: float = 600.0, sudo: bool = False
    ) -> None:
        """Copy a directory tree to the device: a tar stream into ``tar -x`` over one exec channel.

        Why tar: SFTP has no directory upload (one round trip per file and mkdir), while a tar stream
        keeps modes, symlinks and empty directories and works with busybox tar behind dropbear.
        Files end up owned by the login user (root's extraction gets root-owned files).
        """
        src = Path(local_dir)
        if not src.is_dir():
            raise ConfigError(f"upload_tree: {src} is not a directory")
        q = shlex.quote(remote_dir)
        text = self._wrap(f"mkdir -p {q} && tar -x -f - -C {q}", sudo)

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        def feed(w: _ChannelWriter) -> None:
            with tarfile.open(fileobj=w, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for child in sorted(src.iterdir()):
                    tar.add(child, arcname=child.name, recursive=True, filter=as_root)

        self._exec(text, timeout=timeout, feed=feed).check()

    # -- liveness --------------------------------------------------------------------------------

    def alive(self, timeout: float = 3.0) -> bool:
        """Can the device run a command right now? ``echo rig-alive`` with a deadline (reconnects if needed).

        This, not a keepalive, is how a frozen or powered-off device is noticed: the answer comes within
        ``timeout`` whatever the peer does. Lab faults (host key, credentials) are raised, not returned
        as False: they say nothing about the device.
        """
        try:
            res = self._exec(f"echo {PROBE_TEXT}", timeout=timeout, feed=None)
        except (DeviceError, paramiko.SSHException, OSError, EOFError) as exc:
            log.debug("%s: probe failed: %s", self.device, exc)
            return False
        return res.ok and res.out.strip() == PROBE_TEXT

    def wait_ready(self, timeout: float) -> float:
        """Reconnect in a loop (after a reboot) until a probe command answers; returns seconds waited.

        Raises SshUnreachable (a DeviceError) at the deadline, naming the last error; host-key and
        login failures are raised at once (waiting does not fix them).
        """
        start = time.monotonic()
        deadline = start + timeout
        last = "no attempt made"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SshUnreachable(
                    f"device {self.device}: SSH {self.target} did not come back within {timeout:g} s "
                    f"(last error: {last})"
                )
            try:
                self.connect(timeout=min(self.cfg.connect_timeout, left))
                if self.alive(timeout=max(0.1, min(3.0, deadline - time.monotonic()))):
                    waited = time.monotonic() - start
                    log.info("%s: SSH ready after %.1f s", self.device, waited)
                    return waited
                last = "connected, but the probe command did not answer"
            except (DeviceError, paramiko.SSHException, OSError, EOFError) as exc:
                last = str(exc)
            time.sleep(max(0.0, min(RETRY_PAUSE, deadline - time.monotonic())))

    def close(self) -> None:
        """Close the connection. Later calls fail until connect() is called again."""
        with self._pool_lock:
            self._closed = True
            doomed = list(self._open_transports)
            self._open_transports.clear()
            self._idle.clear()
        for t in doomed:
            _close_quietly(t)

    def __enter__(self) -> SshClient:
        if not self.connected:
            self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _signal_channel(chan: Channel, signame: str) -> None:
    """Ask the server to signal the channel's command (RFC 4254 6.9 "signal" request).

    Why: closing a channel does not end a command that runs without a terminal, so a timed-out
    ``sleep 30`` would outlive its deadline. OpenSSH sends the signal to the session's process group,
    dropbear to its shell. paramiko has no call for this request, so it is built from its Message
    class; best effort (a frozen peer never acts on it, and the channel is closed right after).
    """
    if chan.closed or not chan.active:
        return
    transport = chan.get_transport()
    if transport is None or not transport.is_active():
        return
    m = paramiko.Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("signal")
    m.add_boolean(False)
    m.add_string(signame)
    try:
        transport._send_user_message(m)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        log.debug("could not send signal %s: %s", signame, exc)


def _close_quietly(t: paramiko.Transport) -> None:
    try:
        t.close()
    except Exception as exc:  # noqa: BLE001 - closing a dead transport may fail; it is gone either way
        log.debug("closing a transport: %s", exc)


def _tune_socket(sock: socket.socket) -> None:
    """TCP keepalive and TCP_USER_TIMEOUT, so a vanished peer breaks a blocked read within seconds."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:  # Linux has all four; elsewhere the probe command still bounds every wait
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
