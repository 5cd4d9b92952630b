"""rig.transports.ssh against real servers: OpenSSH sshd and dropbear on 127.0.0.1 (see tests/sshpeers.py).

The peers run on this machine, so a "remote" file or process is also visible locally: tests check
effects (files written, processes killed) directly instead of trusting the client's own report.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from rig.errors import CommandTimeout, DeviceError, LabFault
from rig.transports.ssh import CommandResult, HostKeyError, SshClient, SshUnreachable, fingerprint, wrap_command
from tests.consolepeers import STARVED_SLACK_S
from tests.sshpeers import SshPeer, free_port, mute_ssh_server, ssh_keygen

KINDS = ["sshd", "dropbear"]


@pytest.fixture(params=KINDS)
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SshPeer]:
    p = SshPeer(request.param, tmp_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def clients() -> Iterator[list[SshClient]]:
    """Every SshClient a test makes goes here and is closed afterwards."""
    made: list[SshClient] = []
    yield made
    for c in made:
        c.close()


def client_for(peer: SshPeer, clients: list[SshClient], **overrides: object) -> SshClient:
    c = SshClient(peer.config(**overrides), device="lap-1")
    clients.append(c)
    return c


def host_key_fp(peer: SshPeer) -> str:
    return fingerprint(base64.b64decode(peer.host_key.split()[1]))


# -- commands ---------------------------------------------------------------------------------


def test_run_exit_status_and_both_streams(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    c.connect()
    res = c.run("echo out; echo err >&2; exit 7", timeout=10)
    assert isinstance(res, CommandResult)
    assert (res.exit_status, res.out, res.err, res.ok) == (7, "out\n", "err\n", False)
    assert res.duration > 0
    ok = c.run(["true"], timeout=10)
    assert ok.ok and ok.check() is ok


def test_check_names_command_status_and_stderr_tail(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    with pytest.raises(DeviceError) as ei:
        c.run("for i in $(seq 1 50); do echo line$i >&2; done; exit 3", timeout=10, check=True)
    msg = str(ei.value)
    assert "lap-1" in msg and "exit status 3" in msg and "line50" in msg and "seq 1 50" in msg
    assert "line1\n" not in msg  # only the tail
    assert not isinstance(ei.value, LabFault)


def test_ten_megabytes_on_both_streams_do_not_hang(peer: SshPeer, clients: list[SshClient]) -> None:
    # stderr first: a client that only drained stdout would stall on the full stderr window.
    c = client_for(peer, clients)
    res = c.run("head -c 4000000 /dev/zero | tr '\\0' e >&2; head -c 10485760 /dev/urandom", timeout=60)
    assert res.ok
    assert len(res.stdout) == 10485760
    assert res.stderr == b"e" * 4000000


def test_stdin_is_streamed(peer: SshPeer, clients: list[SshClient]) -> None:
    data = os.urandom(3 * 1024 * 1024)
    res = client_for(peer, clients).run("sha256sum", stdin=data, timeout=60)
    assert res.out.split()[0] == hashlib.sha256(data).hexdigest()


def _kill_pid_in(pidfile: Path) -> None:
    """Clean up a command a test started on the (local) peer, by the pid it wrote."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_sleep_with_short_timeout_raises_command_timeout_fast(
    peer: SshPeer, clients: list[SshClient], tmp_path: Path
) -> None:
    c = client_for(peer, clients)
    c.connect()
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    try:
        with pytest.raises(CommandTimeout) as ei:
            c.run(f"echo $$ > {pidfile}; exec sleep 30", timeout=1)
        took = time.monotonic() - t0
        assert took < 1 + STARVED_SLACK_S, f"timeout=1 took {took:.1f} s"  # not the 30 s sleep
        msg = str(ei.value)
        assert "lap-1" in msg and "sleep 30" in msg and "1 s" in msg
        assert c.run("echo still-usable", timeout=10).out == "still-usable\n"
        if peer.kind == "dropbear":
            # The client asks the server to KILL a timed-out command; dropbear does it. (OpenSSH refuses
            # signals for root sessions: "session signalling requires privilege separation".)
            assert _gone(int(pidfile.read_text()), within=5), "timed-out command still runs"
    finally:
        _kill_pid_in(pidfile)


def test_background_child_holding_stdout_does_not_block_until_deadline(
    peer: SshPeer, clients: list[SshClient], tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    try:
        res = client_for(peer, clients).run(f"sleep 20 & echo $! > {pidfile}; echo started", timeout=15)
        assert res.ok and res.out == "started\n"
    finally:
        _kill_pid_in(pidfile)


def test_list_arguments_are_never_executed(peer: SshPeer, clients: list[SshClient], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    nasty = f"$(touch {marker});x"
    c = client_for(peer, clients)
    res = c.run(["ls", "-d", "--", nasty], timeout=10)
    assert res.exit_status != 0
    assert not marker.exists()
    for value in [nasty, "a b", "it's", '"q"', "`id`", "x;y|z&w", "new\nline", "*", "$HOME", "-n"]:
        assert c.run(["printf", "%s", value], timeout=10).out == value
    assert not marker.exists()


def test_sudo_prefix_is_sudo_n_and_covers_pipelines() -> None:
    assert wrap_command(["cat", "/a b"], sudo=True) == "sudo -n cat '/a b'"
    assert wrap_command("a | b", sudo=True) == "sudo -n sh -c 'a | b'"
    assert wrap_command("a | b", sudo=False) == "a | b"
    with pytest.raises(ValueError):
        wrap_command([], sudo=False)


def test_root_login_never_prefixes_sudo(peer: SshPeer, clients: list[SshClient]) -> None:
    # `sudo` is not installed here: a prefixed command would fail with 127.
    c = client_for(peer, clients, sudo=True)
    res = c.run(["id", "-u"], timeout=10, sudo=True)
    assert res.ok and res.out.strip() == "0"


# -- files ------------------------------------------------------------------------------------


def _make_tree(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "top.txt").write_text("top\n")
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(1_500_000))
    run = root / "a" / "run.sh"
    run.write_text("#!/bin/sh\necho ran\n")
    run.chmod(0o755)
    (root / "a" / "link-to-deep").symlink_to("b/c/deep.bin")
    (root / "name with spaces & $(x)").write_text("odd\n")


def _snapshot(root: Path) -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", None)
        else:
            out[rel] = (oct(p.stat().st_mode & 0o777), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_upload_tree_round_trips_a_nested_tree(peer: SshPeer, clients: list[SshClient], tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    dst = tmp_path / "remote dir $(touch pwned)" / "tree"
    c = client_for(peer, clients)
    c.upload_tree(src, str(dst))
    assert _snapshot(dst) == _snapshot(src)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert c.run([str(dst / "a" / "run.sh")], timeout=10).out == "ran\n"


def test_upload_tree_failure_is_a_device_error(peer: SshPeer, clients: list[SshClient], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    with pytest.raises(DeviceError) as ei:
        client_for(peer, clients).upload_tree(src, str(blocker / "sub"))
    assert "lap-1" in str(ei.value) and "exit status" in str(ei.value)


def test_upload_and_download_file(peer: SshPeer, clients: list[SshClient], tmp_path: Path) -> None:
    src = tmp_path / "tool"
    src.write_bytes(os.urandom(200_000))
    remote = tmp_path / "remote-tool"
    c = client_for(peer, clients)
    c.upload_file(src, str(remote), mode=0o750)
    assert remote.read_bytes() == src.read_bytes()
    assert remote.stat().st_mode & 0o777 == 0o750
    back = tmp_path / "back"
    c.download_file(str(remote), back)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(DeviceError) as ei:
        c.download_file(str(tmp_path / "missing"), tmp_path / "x")
    assert "lap-1" in str(ei.value) and "missing" in str(ei.value)


# -- host keys --------------------------------------------------------------------------------


def test_unknown_host_key_names_the_file_and_the_keyscan_command(
    peer: SshPeer, clients: list[SshClient], tmp_path: Path
) -> None:
    kh = tmp_path / "empty_known_hosts"
    kh.write_text(f"[127.0.0.1]:{free_port()} {peer.host_key}\n")  # the right key, but for another port
    c = client_for(peer, clients, known_hosts=kh)
    with pytest.raises(HostKeyError) as ei:
        c.connect()
    msg = str(ei.value)
    assert isinstance(ei.value, LabFault)
    assert f"device lap-1: host key for [127.0.0.1]:{peer.port} is not known; add it to {kh}" in msg
    assert f"(ssh-keyscan -p {peer.port} 127.0.0.1)" in msg
    assert host_key_fp(peer) in msg


def test_changed_host_key_in_known_hosts(peer: SshPeer, clients: list[SshClient], tmp_path: Path) -> None:
    other = ssh_keygen(tmp_path / "other_host_key")
    other_key = " ".join(other.split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{peer.port} {other_key}\n")
    c = client_for(peer, clients, known_hosts=kh)
    with pytest.raises(HostKeyError) as ei:
        c.connect()
    msg = str(ei.value)
    expected_fp = fingerprint(base64.b64decode(other_key.split()[1]))
    assert f"device lap-1: host key for [127.0.0.1]:{peer.port} CHANGED" in msg
    assert f"(expected ssh-ed25519 {expected_fp}, got {host_key_fp(peer)})" in msg
    assert f"if the laptop was reinstalled, update {kh}; otherwise stop: someone may be intercepting" in msg


def test_changed_pinned_host_key(peer: SshPeer, clients: list[SshClient], tmp_path: Path) -> None:
    other_key = " ".join(ssh_keygen(tmp_path / "other").split()[:2])
    c = client_for(peer, clients, known_hosts=None, host_key=other_key)
    with pytest.raises(HostKeyError, match="CHANGED.*update ssh.host_key in device lap-1's inventory"):
        c.connect()


def test_pinned_host_key_and_keyscan_known_hosts_are_accepted(
    peer: SshPeer, clients: list[SshClient], tmp_path: Path
) -> None:
    assert client_for(peer, clients, known_hosts=None, host_key=peer.host_key).run("true", timeout=10).ok
    # A known_hosts written by the real tool, hashed names included, with every key type the server has.
    scan = subprocess.run(
        ["ssh-keyscan", "-H", "-p", str(peer.port), "127.0.0.1"], capture_output=True, text=True, timeout=30
    )
    kh = tmp_path / "scanned_known_hosts"
    kh.write_text(scan.stdout)
    assert scan.stdout.startswith("|1|")
    assert client_for(peer, clients, known_hosts=kh).run("true", timeout=10).ok


# -- login and reachability -------------------------------------------------------------------


def test_wrong_key_is_a_lab_fault_naming_user_and_device(
    peer: SshPeer, clients: list[SshClient], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    ssh_keygen(stranger)
    c = client_for(peer, clients, key_file=stranger)
    with pytest.raises(LabFault) as ei:
        c.connect()
    msg = str(ei.value)
    assert not isinstance(ei.value, HostKeyError | DeviceError)
    assert "lap-1" in msg and "'root'" in msg and str(stranger) in msg
    assert stranger.read_text().splitlines()[1] not in msg  # no key material


def test_wrong_password_is_a_lab_fault_without_the_secret(
    peer: SshPeer,
    clients: list[SshClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "Hunter2-do-not-print"
    monkeypatch.setenv("RIG_TEST_SSH_PW", secret)
    caplog.set_level(logging.DEBUG)
    c = client_for(peer, clients, key_file=None, password_env="RIG_TEST_SSH_PW")
    with pytest.raises(LabFault) as ei:
        c.connect()
    msg = str(ei.value)
    assert "lap-1" in msg and "'root'" in msg and "RIG_TEST_SSH_PW" in msg
    assert secret not in msg and secret not in repr(ei.value)
    assert secret not in caplog.text


def test_a_device_that_freezes_during_login_is_unreachable_not_a_refused_login(
    peer: SshPeer, clients: list[SshClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop that hangs (or is switched off) just as the rig logs in: the server never answers the key.
    paramiko ends that wait with an AuthenticationException ("Authentication timeout."), the same class as
    a refused key; taken for a refusal it made a lab fault of a hang (CI: a switched-off guest was reported
    as 'SSH login refused' instead of powered off). It is a device that stopped answering."""
    real = paramiko.Transport.auth_publickey

    def freeze_then_auth(self: paramiko.Transport, *args: Any, **kwargs: Any) -> Any:
        peer.freeze()  # the server side of this very connection stops: no answer to the key
        return real(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.Transport, "auth_publickey", freeze_then_auth)
    c = client_for(peer, clients, connect_timeout=2.0)
    try:
        with pytest.raises(SshUnreachable) as ei:
            c.connect()
    finally:
        peer.thaw()
    assert not isinstance(ei.value, LabFault) and "lap-1" in str(ei.value), ei.value
    assert "login" in str(ei.value), ei.value


def test_nothing_listening_is_ssh_unreachable_not_a_lab_fault(tmp_path: Path, clients: list[SshClient]) -> None:
    peer = SshPeer("sshd", tmp_path)  # keys only; never started
    c = client_for(peer, clients)
    with pytest.raises(SshUnreachable) as ei:
        c.connect()
    assert isinstance(ei.value, DeviceError) and not isinstance(ei.value, LabFault)
    assert f"127.0.0.1:{peer.port} refused" in str(ei.value) and "lap-1" in str(ei.value)
    assert c.alive(timeout=2) is False


def test_handshake_stalled_after_the_banner_is_ssh_unreachable(
    peer: SshPeer, clients: list[SshClient]
) -> None:
    """A hung device's sshd may send its banner and then never finish the key exchange.

    The peer here is a real socket that does exactly that (a stand-in for a kernel that hangs
    mid-handshake: a frozen sshd never sends the banner, which is a different path). paramiko's
    start_client returns quietly when its timeout runs out; the rig must still say "unreachable"
    (so Dut.open power-cycles the device), not leak paramiko's "No existing session".
    """
    with mute_ssh_server(banner=b"SSH-2.0-stalled_1.0\r\n") as port:  # banner, then silence
        c = client_for(peer, clients, port=port, connect_timeout=2.0)
        with pytest.raises(SshUnreachable, match="lap-1.*handshake"):  # paramiko may time out first: same class
            c.connect()


def test_socket_has_keepalive_and_user_timeout(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    c.connect()
    sock = c._idle[0].sock
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 0


# -- dead peers, reboots, threads -------------------------------------------------------------


def test_alive_is_false_within_its_timeout_on_a_frozen_peer(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    c.connect()
    assert c.alive(timeout=3)
    peer.freeze()
    try:
        t0 = time.monotonic()
        assert c.alive(timeout=2) is False
        took = time.monotonic() - t0
        assert took < 2 + STARVED_SLACK_S, f"alive(timeout=2) took {took:.1f} s on a frozen peer"
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout):
            c.run("echo hi", timeout=1.5)
        assert time.monotonic() - t0 < 1.5 + STARVED_SLACK_S
    finally:
        peer.thaw()
    assert c.alive(timeout=5)  # the same connection works again once the peer runs


def test_wait_ready_after_the_server_was_killed_and_restarted(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    c.connect()
    assert c.run("echo before", timeout=10).ok
    peer.stop()
    assert c.alive(timeout=2) is False
    restarter = threading.Timer(2.0, peer.start)
    restarter.start()
    try:
        waited = c.wait_ready(timeout=30)
    finally:
        restarter.join()
    assert 1.0 < waited < 30
    assert c.run("echo after", timeout=10).out == "after\n"


def test_wait_ready_deadline_is_a_device_error(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    peer.stop()
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"lap-1.*did not come back within 2 s.*refused"):
        c.wait_ready(timeout=2)
    assert time.monotonic() - t0 < 2 + STARVED_SLACK_S


def test_threads_share_one_client_through_a_reconnect(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    c.connect()
    peer.restart()  # the transport is now dead: every thread below needs a reconnect, only one may do it
    results: list[str] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results.append(c.run(["echo", f"t{i}"], timeout=20).out.strip())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == sorted(f"t{i}" for i in range(4) for _ in range(3))


def test_start_streams_output_and_stop_kills_the_remote_command(peer: SshPeer, clients: list[SshClient]) -> None:
    c = client_for(peer, clients)
    chunks: list[bytes] = []
    got_three = threading.Event()

    def on_out(data: bytes) -> None:
        chunks.append(data)
        if b"".join(chunks).count(b"tick") >= 3:
            got_three.set()

    proc = c.start("while :; do echo tick; sleep 0.1; done", on_stdout=on_out)
    try:
        assert got_three.wait(10), b"".join(chunks)
        assert proc.alive and proc.pid is not None
        assert b"rig-pid" not in b"".join(chunks)  # the pid line is the rig's, not the command's output
        assert Path(f"/proc/{proc.pid}").exists()  # the peer is this machine
    finally:
        proc.stop(timeout=10)
    assert not proc.alive
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{proc.pid}").exists(), "remote loop survived stop()"
    assert proc.stdout.startswith(b"tick\n")


def test_started_command_that_ends_reports_its_status(peer: SshPeer, clients: list[SshClient]) -> None:
    proc = client_for(peer, clients).start(["sh", "-c", "echo done; echo warn >&2; exit 4"])
    assert proc.wait(10) == 4
    assert not proc.alive and proc.out == "done\n" and proc.stderr == b"warn\n"


def test_probes_next_to_running_commands_never_break_them(peer: SshPeer, clients: list[SshClient]) -> None:
    # What the hang monitor does during a test. On one shared dropbear 2022 connection this kills the
    # connection now and then (dropbear issue #321); the client must keep both working.
    c = client_for(peer, clients)
    c.connect()
    stop = threading.Event()
    probes: list[bool] = []

    def prober() -> None:
        while not stop.is_set():
            probes.append(c.alive(timeout=5))

    t = threading.Thread(target=prober)
    t.start()
    try:
        outs = [c.run(["sh", "-c", f"sleep 0.0{i % 5}; echo {i}"], timeout=20).out for i in range(40)]
    finally:
        stop.set()
        t.join(30)
    assert outs == [f"{i}\n" for i in range(40)]
    assert probes and all(probes), probes.count(False)


def test_context_manager_connects_and_closes(peer: SshPeer) -> None:
    with SshClient(peer.config(), device="lap-1") as c:
        assert c.connected
        assert c.run(["echo", "in"], timeout=10).out == "in\n"
    assert not c.connected
    with pytest.raises(DeviceError, match="closed; call connect"):
        c.run("true", timeout=5)
