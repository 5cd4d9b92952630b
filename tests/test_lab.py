"""The virtual lab against real peers: the image builder, QEMU (TCG) guests, ser2net, dropbear, paramiko.

Only the shared session lab (fixture ``lab``, tests/conftest.py) and, where a test must break a lab
on purpose, a one-guest lab in tmp_path are booted. Nothing is mocked; VT-x and a PMU do not exist
under TCG, which no test here needs.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shlex
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import serial
from click.testing import CliRunner

from rig.device.dut import Dut
from rig.errors import LabFault
from rig.inventory import IpmiPower, load_device
from rig.lab import image, kernels
from rig.lab.cli import lab as lab_cli
from rig.lab.guest import run_state
from rig.lab.manager import Lab, vbmc_available
from rig.lab.ports import cmdline_text, guest_ports, pid_alive, port_bound
from rig.lab.sbsim import build_sbsim, default_headers_dir
from tests.helpers import lab_root

# --- helpers ---------------------------------------------------------------------------------------


def ssh(lab: Lab, name: str) -> paramiko.SSHClient:
    """Log in to a lab guest exactly as the rig would: lab key, the lab's known_hosts, RejectPolicy."""
    dev = load_device(lab.guest(name).inventory_file)
    client = paramiko.SSHClient()
    assert dev.ssh.known_hosts is not None
    client.load_host_keys(str(dev.ssh.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(dev.ssh.host, port=dev.ssh.port, username=dev.ssh.user, key_filename=str(dev.ssh.key_file),
                   timeout=10, allow_agent=False, look_for_keys=False)
    return client


def run(client: paramiko.SSHClient, cmd: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``cmd``; read both streams before the exit status (lab-notes: else it can hang)."""
    i, o, e = client.exec_command(cmd, timeout=30)
    if stdin is not None:
        i.write(stdin)
        i.channel.shutdown_write()
    out, err = o.read().decode(), e.read().decode()
    return o.channel.recv_exit_status(), out, err


def lab_processes(root: Path) -> list[str]:
    """Live processes whose command line names the lab folder (what `down` must leave none of)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            cmd = cmdline_text(int(p.name))
            if f"{root}/" in cmd:
                try:
                    state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if state != "Z":
                    found.append(f"{p.name}: {cmd}")
    return found


def cpio_names(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes())  # handles concatenated gzip members too
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().split()


@pytest.fixture
def isolated_lab(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab folder of its own (own ports); whatever a test starts in it is stopped afterwards."""
    lab = Lab(root=lab_root(tmp_path_factory, tmp_path), inventory_dir=tmp_path / "devices")
    try:
        yield lab
    finally:
        lab.down()
        assert lab_processes(lab.root) == []


# --- image (no guest boots) ------------------------------------------------------------------------


def test_image_builds_then_comes_from_cache(tmp_path: Path) -> None:
    first = image.build_image(tmp_path / "image")
    assert first.built
    assert first.kernel == Path(f"/boot/vmlinuz-{image.kernel_version()}")
    names = cpio_names(first.initramfs)
    for needed in ("init", "bin/busybox", "bin/sh", "bin/tar", "bin/insmod", "bin/nohup", "bin/setsid",
                   "bin/dropbear", "usr/lib/sftp-server", "usr/lib/openssh/sftp-server",
                   "lib/modules/e1000.ko", "lib64/ld-linux-x86-64.so.2", "etc/passwd", "etc/inittab"):
        assert needed in names, needed
    assert not any(n.endswith((".ko.xz", ".ko.zst")) for n in names)
    mtime = first.initramfs.stat().st_mtime_ns
    second = image.build_image(tmp_path / "image")
    assert not second.built
    assert second.digest == first.digest
    assert second.initramfs.stat().st_mtime_ns == mtime  # untouched: not rebuilt
    assert [p.name for p in (tmp_path / "image").iterdir()] == [first.digest]  # no leftovers


def test_image_digest_follows_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    before = image.image_inputs().digest()
    assert image.image_inputs().digest() == before
    monkeypatch.setattr(image, "BUILDER_VERSION", image.BUILDER_VERSION + "-changed")
    assert image.image_inputs().digest() != before


def test_guest_initrd_appends_identity(tmp_path: Path) -> None:
    img = image.build_image(tmp_path / "image")
    gdir = tmp_path / "g"
    gdir.mkdir()
    initrd = image.guest_initrd(img, gdir, "box-7", "ssh-ed25519 AAAAtest rig-lab")
    shared = img.initramfs.read_bytes()
    assert initrd.read_bytes().startswith(shared)
    identity = tmp_path / "identity.cpio.gz"  # the appended archive (cpio -t stops at the first TRAILER)
    identity.write_bytes(initrd.read_bytes()[len(shared):])
    names = cpio_names(identity)
    assert "etc/hostname" in names
    assert "etc/dropbear/dropbear_ed25519_host_key" in names
    assert "root/.ssh/authorized_keys" in names
    assert image.ensure_host_key(gdir).startswith("ssh-ed25519 AAAA")


def _uts_release(headers: Path) -> str:
    """The release modules built against ``headers`` carry in their vermagic (what ``uname -r`` says)."""
    text = (headers / "include/generated/utsrelease.h").read_text()
    return text.split('"')[1]


def _modinfo(ko: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(ko)], capture_output=True, text=True, check=True).stdout.strip()


def test_one_image_per_kernel_each_with_its_own_e1000(tmp_path: Path) -> None:
    """6.1 (host) and 5.10 (kernel cache; fetched by tools/bootstrap.sh): two images, each with the
    e1000 module of its own kernel (a module of another kernel would not load and the guest would
    have no network)."""
    host = image.kernel_version()
    k510 = kernels.resolve("5.10", host_release=host)
    assert k510.release.startswith("5.10.") and k510.origin.startswith("debian bullseye")
    images = {k: image.build_image(tmp_path / "image", kernel=k) for k in (host, k510.release)}
    assert images[host].digest != images[k510.release].digest
    assert images[k510.release].kernel == k510.vmlinuz and images[host].kernel == Path(f"/boot/vmlinuz-{host}")
    assert images[k510.release].headers == k510.headers and images[k510.release].kernel_origin == k510.origin
    for release, img in images.items():
        root = tmp_path / f"root-{release}"
        root.mkdir()
        data = gzip.decompress(img.initramfs.read_bytes())
        subprocess.run(["cpio", "-id", "--quiet", "lib/modules/*"], input=data, cwd=root, check=True)
        assert _modinfo(root / "lib/modules/e1000.ko", "vermagic").split()[0] == release
    # the headers the inventory will name build for that kernel: their release is the kernel's
    assert _uts_release(k510.headers) == k510.release
    assert image.headers_dir(k510.release) == k510.headers


def test_sbsim_builds_for_5_10_with_the_hosts_gcc(tmp_path: Path) -> None:
    """The fetched 5.10 headers (Debian 11 named gcc-10) build sbsim with the host's gcc 12; the module
    carries 5.10's vermagic. That it also loads is tested on the 5.10 guest below."""
    k510 = kernels.resolve("5.10", host_release=image.kernel_version())
    assert default_headers_dir(k510.release) == k510.headers
    ko = build_sbsim(k510.headers, tmp_path / "build")
    assert _modinfo(ko, "vermagic").split()[0] == k510.release
    assert _modinfo(ko, "name") == "sbsim"


# --- bad input (no guest boots) ----------------------------------------------------------------------


def test_kernel_requests_are_checked_before_anything_starts(isolated_lab: Lab) -> None:
    with pytest.raises(LabFault, match=r"2 kernels \(6\.1, 5\.10\) for 1 guests: raise --count"):
        isolated_lab.up(count=1, kernels=["6.1", "5.10"])
    with pytest.raises(LabFault, match=r"kernel 4\.9: not installed on the host .*known: 5\.10, 6\.1"):
        isolated_lab.up(count=2, kernels=["6.1", "4.9"])
    assert isolated_lab.status() == []
    assert lab_processes(isolated_lab.root) == []
    result = CliRunner().invoke(lab_cli, ["--lab-dir", str(isolated_lab.root), "--inventory-dir",
                                          str(isolated_lab.inventory_dir), "up", "--count", "1",
                                          "--kernel", "6.1", "--kernel", "5.10"])
    assert result.exit_code == 1 and "2 kernels (6.1, 5.10) for 1 guests" in result.output, result.output


def test_rig_lab_kernels_lists_host_and_fetched(tmp_path: Path) -> None:
    result = CliRunner().invoke(lab_cli, ["kernels"])
    assert result.exit_code == 0, result.output
    host = image.kernel_version()
    k510 = kernels.resolve("5.10", host_release=host)
    assert f"{host}" in result.output and "host" in result.output
    assert k510.release in result.output and f"headers: {k510.headers}" in result.output




def test_up_without_qemu_says_how_to_install(isolated_lab: Lab, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(LabFault, match=r"qemu-system-x86_64 not found.*apt-get install qemu-system-x86"):
        isolated_lab.up(count=1)
    assert isolated_lab.status() == []
    assert not (isolated_lab.inventory_dir / "lab-1.toml").exists()


def test_up_without_qemu_cli_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(lab_cli, ["--lab-dir", str(tmp_path / "s"), "--inventory-dir",
                                          str(tmp_path / "d"), "up", "--count", "1"])
    assert result.exit_code == 1
    assert "qemu-system-x86_64 not found" in result.output


def test_up_with_a_port_taken_names_port_and_holder(isolated_lab: Lab) -> None:
    ports = guest_ports(isolated_lab.root, 2)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", ports.console))
        squatter.listen()
        with pytest.raises(LabFault) as err:
            isolated_lab.up(count=2)
    msg = str(err.value)
    assert f"127.0.0.1:{ports.console}" in msg
    assert "console server of lab-2" in msg
    assert f"pid {os.getpid()}" in msg  # who to blame
    assert isolated_lab.status() == []  # nothing half-started (checked before anything starts)
    assert lab_processes(isolated_lab.root) == []


def test_second_lab_command_on_one_folder_is_refused(isolated_lab: Lab) -> None:
    import fcntl

    isolated_lab.root.mkdir(parents=True)
    with open(isolated_lab.root / "lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242\n")
        held.flush()
        with pytest.raises(LabFault, match=r"another `rig lab` command \(pid 4242\) is working on"):
            isolated_lab.up(count=1)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert isolated_lab.status() == []


# --- a failing boot is rolled back (boots one guest briefly) -----------------------------------------


@pytest.mark.lab
def test_boot_timeout_rolls_back_everything(tmp_path: Path) -> None:
    lab = Lab(root=tmp_path / "state", inventory_dir=tmp_path / "devices", boot_timeout=1.0)
    try:
        with pytest.raises(LabFault, match=r"lab-1: SSH on 127.0.0.1:\d+ did not accept a login within 1 s"):
            lab.up(count=1)
        assert lab_processes(lab.root) == []
        assert lab.status() == []
        assert not (lab.inventory_dir / "lab-1.toml").exists()
    finally:
        lab.down()


# --- the shared lab ----------------------------------------------------------------------------------


@pytest.mark.lab
def test_inventory_files_load_with_the_rig_schema(lab: Lab) -> None:
    for name in ("lab-1", "lab-2"):
        g = lab.guest(name)
        dev = load_device(lab.inventory_dir / f"{name}.toml")
        assert dev.name == name
        assert dev.tags == ["lab", "virtual", "kernel-" + ".".join(g.kernel_version.split(".")[:2])]
        assert dev.nmi_sources == ["ipmi", "sysrq", "qmp", "perf"]
        assert (dev.ssh.host, dev.ssh.port, dev.ssh.user) == ("127.0.0.1", g.ssh_port, "root")
        assert dev.ssh.key_file == g.key_file and dev.ssh.known_hosts == g.known_hosts
        assert dev.console is not None and dev.console.url == f"rfc2217://127.0.0.1:{g.console_port}?ign_set_control"
        assert isinstance(dev.power, IpmiPower) and dev.power.port == g.bmc_port
        assert dev.power.password_file == g.bmc_password_file
        assert (g.bmc_password_file.stat().st_mode & 0o777) == 0o600
        assert dev.qmp_socket() == g.qmp_socket
        assert "apic_extnmi=all" in dev.kernel.cmdline_requires
        assert dev.shadowbox.recipe == "sbsim"
        assert g.kernel_version.startswith(dev.kernel.version_prefix or "?")
        # the headers the inventory names are this guest's kernel's (sbsim is built against them)
        assert dev.shadowbox.kernel_headers == g.kernel_headers
        assert g.kernel_headers is not None and _uts_release(g.kernel_headers) == g.kernel_version
        assert g.kernel_version in dev.description
    assert len({lab.guest(n).ssh_port for n in ("lab-1", "lab-2")}) == 2


@pytest.mark.lab
@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_ssh_login_kernel_cmdline_and_cpus(lab: Lab, name: str) -> None:
    client = ssh(lab, name)
    try:
        assert run(client, "uname -r")[1].strip() == lab.guest(name).kernel_version
        assert run(client, "uname -n")[1].strip() == name
        cmdline = run(client, "cat /proc/cmdline")[1].split()
        assert "apic_extnmi=all" in cmdline and "console=ttyS0,115200" in cmdline
        assert run(client, "nproc")[1].strip() == "2"
    finally:
        client.close()


@pytest.mark.lab
def test_the_lab_has_two_kernels(lab: Lab) -> None:
    """The session lab is a kernel matrix: lab-1 on the host's 6.1, lab-2 on Debian 11's 5.10."""
    g1, g2 = lab.guest("lab-1"), lab.guest("lab-2")
    assert (g1.kernel_series, g1.kernel_origin) == (kernels.series_of(image.kernel_version()), "host")
    assert g2.kernel_series == "5.10" and g2.kernel_origin.startswith("debian bullseye")
    assert load_device(g2.inventory_file).tags == ["lab", "virtual", "kernel-5.10"]


@pytest.mark.lab
def test_5_10_guest_builds_loads_sbsim_and_takes_nmis_on_every_cpu(lab: Lab, tmp_path: Path) -> None:
    """On the 5.10 guest, through the rig's own path (inventory -> Dut -> Deployer): sbsim is built on the
    controller against the fetched, fixed-up 5.10 headers with the host's gcc, loads, starts, and every
    lab NMI source reaches both CPUs, where sbsim's handler sees them."""
    g = lab.guest("lab-2")
    dut = Dut(load_device(g.inventory_file), tmp_path / "lab-2").open()
    try:
        release = dut.ssh.run("uname -r", timeout=30).out.strip()
        assert release == g.kernel_version and release.startswith("5.10."), release
        result = dut.deploy_shadowbox()
        assert result.result_code == "0", result.markers
        assert any("Execution Complete" in m for m in result.markers), result.markers
        assert "sbsim" in dut.ssh.run("cat /proc/modules", timeout=30).out
        mark = dut.console.mark() if dut.console else 0
        for source in ("qmp", "sysrq", "ipmi"):
            delivery = dut.nmi_source(source).deliver(count=2, interval=0.2, settle=1.0)
            assert delivery.ok and len(delivery.per_cpu) == 2, delivery.summary()
        time.sleep(1.0)
        callbacks = dut.shadowbox_callbacks(since=mark)
        assert set(callbacks) == {0, 1} and all(n >= 1 for n in callbacks.values()), callbacks
        assert dut.verdict().ok, dut.verdict()
    finally:
        # leave the shared guest as found: sbsim (unlike Shadow-box) may be unloaded
        with contextlib.suppress(Exception):  # never hide the test's own failure
            dut.ssh.run("rmmod sbsim 2>/dev/null; true", timeout=30)
        dut.close()


@pytest.mark.lab
def test_ssh_rejects_a_wrong_host_key(lab: Lab, tmp_path: Path) -> None:
    g = lab.guest("lab-1")
    other = lab.guest("lab-2")
    bad = tmp_path / "known_hosts"  # lab-2's key recorded for lab-1's port: a "reinstalled laptop"
    bad.write_text(f"[127.0.0.1]:{g.ssh_port} " + " ".join(other.known_hosts.read_text().split()[1:3]) + "\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(bad))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect("127.0.0.1", port=g.ssh_port, username="root", key_filename=str(g.key_file),
                       timeout=10, allow_agent=False, look_for_keys=False)
    client.close()


@pytest.mark.lab
def test_sftp_put_and_get(lab: Lab) -> None:
    client = ssh(lab, "lab-1")
    try:
        payload = os.urandom(200_000)
        with client.open_sftp() as sftp:
            sftp.putfo(io.BytesIO(payload), "/tmp/sftp-test.bin")
            back = io.BytesIO()
            sftp.getfo("/tmp/sftp-test.bin", back)
        assert back.getvalue() == payload
    finally:
        client.close()


@pytest.mark.lab
def test_guest_has_what_the_rig_needs(lab: Lab) -> None:
    client = ssh(lab, "lab-2")
    try:
        tools = "sh echo cat sleep awk grep insmod rmmod lsmod dmesg tar df uname mkdir kill nohup setsid"
        code, out, err = run(client, f"for t in {tools}; do command -v $t >/dev/null || echo missing $t; done")
        assert code == 0 and out == "", out + err
        assert run(client, "awk '$2==\"/tmp\"{print $3}' /proc/mounts")[1].strip() == "tmpfs"
        assert run(client, "cat /proc/sys/kernel/sysrq")[1].strip() == "1"
        assert run(client, "test -w /dev/kmsg && echo yes")[1].strip() == "yes"
        assert run(client, "nohup true && setsid true && echo ok")[1].strip() == "ok"
        # upload a folder the way the rig does: a tar stream into `tar x` over exec
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"tar upload works\n"
            info = tarfile.TarInfo("up/sub/file.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        code, out, err = run(client, "mkdir -p /tmp/t && tar x -C /tmp/t && cat /tmp/t/up/sub/file.txt",
                             stdin=buf.getvalue())
        assert code == 0 and out == "tar upload works\n", err
    finally:
        client.close()


@pytest.mark.lab
def test_sysrq_l_raises_nmi_backtraces(lab: Lab) -> None:
    client = ssh(lab, "lab-1")
    try:
        code, _, err = run(client, "echo l > /proc/sysrq-trigger")
        assert code == 0, err
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "NMI backtrace for cpu" in run(client, "dmesg")[1]:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no 'NMI backtrace for cpu' in dmesg after echo l > /proc/sysrq-trigger")
    finally:
        client.close()


def _read_console_until(url: str, needle: bytes, trigger: object, timeout: float = 30.0) -> bytes:
    """Open the console, call ``trigger()``, read until ``needle`` shows up (or fail)."""
    port = serial.serial_for_url(url, baudrate=115200, timeout=0.5)
    try:
        trigger()  # type: ignore[operator]
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and needle not in buf:
            buf += port.read(4096)
        return buf
    finally:
        port.close()


@pytest.mark.lab
def test_console_bytes_through_rfc2217(lab: Lab) -> None:
    g = lab.guest("lab-2")
    marker = f"rig-lab-console-{uuid.uuid4().hex[:8]}"
    client = ssh(lab, "lab-2")
    try:
        buf = _read_console_until(g.console_url, marker.encode(),
                                  lambda: run(client, f"echo {shlex.quote(marker)} > /dev/kmsg"))
    finally:
        client.close()
    assert marker.encode() in buf
    assert marker in g.serial_log.read_text(errors="replace")  # QEMU's own log has it too
    assert "rig-lab: lab-2 ready" in g.serial_log.read_text(errors="replace")


@pytest.mark.lab
def test_console_server_kill_and_restart(lab: Lab) -> None:
    g = lab.guest("lab-1")
    assert lab.kill_console_server("lab-1")
    try:
        assert not port_bound(g.console_port)
        assert lab.guest("lab-1").console_server_pid is None
        with pytest.raises(serial.SerialException):
            serial.serial_for_url(g.console_url, baudrate=115200, timeout=1)
        # the guest must not stall while nobody reads its console
        client = ssh(lab, "lab-1")
        try:
            assert run(client, "for i in $(seq 200); do echo console-flood-$i > /dev/kmsg; done; echo done")[1] \
                == "done\n"
        finally:
            client.close()
    finally:
        pid = lab.start_console_server("lab-1")
    assert lab.guest("lab-1").console_server_pid == pid
    marker = f"back-{uuid.uuid4().hex[:6]}"
    client = ssh(lab, "lab-1")
    try:
        buf = _read_console_until(g.console_url, marker.encode(),
                                  lambda: run(client, f"echo {marker} > /dev/kmsg"))
    finally:
        client.close()
    assert marker.encode() in buf


@pytest.mark.lab
def test_qmp_socket_answers(lab: Lab) -> None:
    from rig.lab.guest import GuestPaths

    assert run_state(GuestPaths(lab.guest("lab-1").dir)) == "running"
    assert lab.guest("lab-1").qmp_socket.is_socket()


@pytest.mark.lab
def test_virtual_bmc_answers_ipmitool(lab: Lab) -> None:
    if not vbmc_available():
        pytest.skip("rig/lab/vbmc.py (the virtual BMC, another part of the project) is not there yet")
    if shutil.which("ipmitool") is None:
        pytest.fail("ipmitool is missing: run make deps")
    g = lab.guest("lab-2")
    assert g.bmc_pid is not None
    out = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(g.bmc_port), "-U", g.bmc_user,
         "-f", str(g.bmc_password_file), "chassis", "power", "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Chassis Power is on" in out.stdout


@pytest.mark.lab
def test_up_again_reports_already_up(lab: Lab) -> None:
    before = {g.name: g.qemu_pid for g in lab.status()}
    again = lab.up(count=2)
    assert [g.note for g in again] == ["already up", "already up"]
    assert {g.name: g.qemu_pid for g in again} == before


@pytest.mark.lab
def test_status_shows_both_guests(lab: Lab) -> None:
    infos = lab.status()
    assert [(g.name, g.note) for g in infos] == [("lab-1", "up"), ("lab-2", "up")]
    assert all(g.boot_seconds and g.boot_seconds > 0 for g in infos)
    result = CliRunner().invoke(lab_cli, ["--lab-dir", str(lab.root), "--inventory-dir",
                                          str(lab.inventory_dir), "status"])
    assert result.exit_code == 0, result.output
    assert "lab-1" in result.output and "lab-2" in result.output


# --- a whole up/down cycle of a lab of its own --------------------------------------------------------


@pytest.mark.lab
def test_up_down_cycle_leaves_no_process(isolated_lab: Lab) -> None:
    guests = isolated_lab.up(count=1, name_prefix="solo")
    assert [g.name for g in guests] == ["solo-1"] and guests[0].note == "started"
    # a second `up` with a larger count starts only the missing guest, and heals a running one
    assert isolated_lab.kill_console_server("solo-1")
    more = isolated_lab.up(count=2, name_prefix="solo")
    assert [(g.name, g.note) for g in more] == [("solo-1", "already up"), ("solo-2", "started")]
    assert more[0].notes == ["console server restarted"] and more[0].console_server_pid
    assert more[0].qemu_pid == guests[0].qemu_pid
    stopped = isolated_lab.down()
    assert set(stopped) == {"solo-1", "solo-2"}
    assert lab_processes(isolated_lab.root) == []
    guests = isolated_lab.up(count=1, name_prefix="solo")  # and up again after down
    assert guests[0].note == "started"
    # asking for another kernel restarts the running guest on it (one boot, the rest is bookkeeping)
    host = image.kernel_version()
    switched = isolated_lab.up(count=1, name_prefix="solo", kernels=["5.10"])
    assert switched[0].note == "started" and switched[0].notes == [f"kernel was {host}"]
    old_qemu = guests[0].qemu_pid
    assert switched[0].kernel_series == "5.10" and old_qemu and not pid_alive(old_qemu)
    assert load_device(isolated_lab.inventory_dir / "solo-1.toml").kernel.version_prefix == "5.10."
    assert isolated_lab.up(count=1, name_prefix="solo", kernels=["5.10"])[0].note == "already up"
    guests = switched
    pids = [guests[0].qemu_pid, guests[0].console_server_pid]
    assert all(pids) and lab_processes(isolated_lab.root)
    assert (isolated_lab.inventory_dir / "solo-1.toml").is_file()
    stopped = isolated_lab.down()
    assert "qemu" in stopped["solo-1"] and "ser2net" in stopped["solo-1"]
    assert lab_processes(isolated_lab.root) == []
    assert not any(pid_alive(p) for p in pids if p)
    assert not (isolated_lab.inventory_dir / "solo-1.toml").exists()
    assert all(what == [] for what in isolated_lab.down().values())  # down twice: nothing to stop


def test_lab_root_never_gives_two_labs_of_a_run_one_port_block(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """tests.helpers.lab_root: the session labs of all workers draw distinct port blocks (a shared one made a
    bring-up fail on a port another worker's QEMU held), and a block already bound is passed over."""
    from rig.lab.ports import lab_base_port

    roots = [lab_root(tmp_path_factory, tmp_path / f"lab{i}") for i in range(30)]
    blocks = [lab_base_port(r) for r in roots]
    assert len(set(blocks)) == len(blocks), blocks
    taken = lab_base_port(tmp_path / "busy" / "state")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        got = lab_root(tmp_path_factory, tmp_path / "busy")
    assert got != tmp_path / "busy" / "state" and lab_base_port(got) != taken


def test_a_qemu_socket_counts_as_ready_once_it_listens_not_once_it_exists(tmp_path: Path) -> None:
    """rig.lab.guest.accepts: QEMU binds its QMP socket (the file appears) before it listens; a connect in
    between is refused (a laptop lab's bring-up failed so). Ready means a connect is accepted."""
    from rig.lab.guest import accepts

    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        assert path.exists() and not accepts(path)
        s.listen(1)
        assert accepts(path)
    assert not accepts(tmp_path / "missing.sock")
