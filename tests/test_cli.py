"""The ``rig`` command line: on bad input (no lab needed) and against the shared lab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.cli import main
from rig.lab.manager import Lab
from tests.sshpeers import mute_ssh_server, ssh_keygen


def rig(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res.exit_code, res.output


def test_bad_inventory_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text('name = "x"\n[ssh]\nhost = "h"\nkey_file = "k"\nknown_hosts = "kh"\nportt = 2\n')
    code, out = rig("--devices", str(tmp_path), "devices")
    assert code == 1
    assert "x.toml" in out and "ssh.portt" in out and "unknown key" in out


def test_no_devices_says_what_to_do(tmp_path: Path) -> None:
    code, out = rig("--devices", str(tmp_path), "check")
    assert code == 1 and "rig lab up" in out


def test_unknown_device_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "a"\n[ssh]\nhost = "h"\nkey_file = "k"\nknown_hosts = "kh"\n')
    code, out = rig("--devices", str(tmp_path), "nmi", "nope", "--via", "sysrq")
    assert code == 1 and "unknown device(s) nope; known: a" in out


def test_a_device_that_never_sends_its_ssh_banner_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A hung laptop accepts TCP and never answers: paramiko logs that as ERROR with a traceback from
    its own thread. The real ``rig`` process (its own logging set-up) must say it once, in the rig's
    words. The peer is a real socket that accepts and stays silent."""
    (tmp_path / "kh").write_text("")
    ssh_keygen(tmp_path / "id")  # a real key: a broken key file is reported before any network now
    with mute_ssh_server() as port:
        (tmp_path / "mute.toml").write_text(
            f'name = "mute"\n[ssh]\nhost = "127.0.0.1"\nport = {port}\nkey_file = "id"\n'
            'known_hosts = "kh"\nconnect_timeout = 2\n'
        )
        proc = subprocess.run(
            [sys.executable, "-m", "rig.cli", "--devices", str(tmp_path), "--report-dir", str(tmp_path / "r"), "check"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "mute" in out and "SshUnreachable" in out, out
    assert "Traceback" not in out and "paramiko" not in out, out


@pytest.mark.lab
def test_devices_check_nmi_console_on_the_lab(lab: Lab, tmp_path: Path) -> None:
    inv = str(lab.inventory_dir)
    reports = str(tmp_path)
    code, out = rig("--devices", inv, "--report-dir", reports, "devices")
    assert code == 0 and "lab-1" in out and "lab-2" in out

    code, out = rig("--devices", inv, "--report-dir", reports, "check", "lab-1")
    assert code == 0, out
    assert "lab-1 nmi:perf: n/a no PMU" in " ".join(out.split())

    code, out = rig("--devices", inv, "--report-dir", reports, "nmi", "lab-1", "--via", "qmp", "--count", "2")
    assert code == 0, out
    assert "qmp: raised 2" in out and "-> ok" in out

    code, out = rig("--devices", inv, "--report-dir", reports, "nmi", "lab-1", "--via", "perf")
    assert code == 1 and "perf unavailable: no PMU" in " ".join(out.split())

    code, out = rig("--devices", inv, "--report-dir", reports, "console", "lab-1", "--seconds", "2")
    assert code == 0
    logs = list(tmp_path.rglob("console.raw"))
    assert logs, "rig console wrote no console.raw"


@pytest.mark.lab
def test_a_second_run_on_a_busy_device_refuses(lab: Lab, tmp_path: Path) -> None:
    """Two rig runs never share a laptop: the second one (another process) is told who holds it."""
    import subprocess
    import sys

    from rig.device.dut import Dut
    from rig.inventory import load_device

    dev = load_device(lab.guest("lab-1").inventory_file)
    with Dut(dev, tmp_path / "holder").open(monitor=False):
        proc = subprocess.run(
            [sys.executable, "-m", "rig.cli", "--devices", str(lab.inventory_dir), "--report-dir", str(tmp_path),
             "nmi", "lab-1", "--via", "qmp"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "device lab-1" in proc.stderr and "is in use by pid" in proc.stderr, proc.stderr
