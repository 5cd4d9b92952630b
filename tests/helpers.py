"""Helpers the rig's own tests share (one module, so no test module imports another).

- lab runs: :func:`run_suites` (the plugin and the device suites in a subprocess, as a lab engineer runs
  them), :func:`restore_guests` (power-cycle the shared lab's guests a test left dead);
- console evidence: :func:`match_serial_log`, :func:`assert_contiguous_in_serial_log` (console.raw is one
  unbroken piece of QEMU's own serial log);
- builds: :func:`sbsim_variant` (a "build" of the stand-in with one default changed), :func:`git`,
  :func:`commit_all`;
- the plugin without devices: :func:`run_plugin` on a made-up inventory; :func:`free_udp_port`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from rig.inventory import Device
from rig.lab.manager import Lab
from rig.lab.ports import SLOT_WIDTH, lab_base_port, port_bound
from rig.lab.sbsim import sbsim_source_dir

CHECKOUT = Path(__file__).resolve().parent.parent


def run_suites(
    lab: Lab, report_dir: Path, run_id: str, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "pytest", *args,
        "--rig-devices", str(lab.inventory_dir), "--rig-report-dir", str(report_dir),
        "-p", "no:cacheprovider", "-q", "-rs",
    ]  # fmt: skip
    env = {**os.environ, "RIG_RUN_ID": run_id}
    # Its own process group, killed whole if this test ends early (its timeout, pytest-timeout, ^C):
    # killing the suite's pytest alone left its xdist workers running, holding the devices' locks, and
    # the next lab test found its device busy.
    proc = subprocess.Popen(cmd, cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _walk(raw: bytes, serial: bytes, at: int) -> tuple[int, int, str]:
    """Compare from serial[at]: (bytes of raw matched, QEMU repeats skipped, "" or why they differ)."""
    i, j, dups, n, m = 0, at, 0, len(raw), len(serial)
    chunk = 4096
    while i < n:
        k = min(chunk, n - i)
        if raw[i : i + k] == serial[j : j + k]:
            i, j = i + k, j + k
            continue
        end = i + k
        while i < end:
            if j < m and raw[i] == serial[j]:
                i, j = i + 1, j + 1
            elif 0 < j < m and serial[j] == serial[j - 1]:
                dups, j = dups + 1, j + 1
            else:
                why = (
                    f"console.raw differs from QEMU's serial log at console.raw offset {i} (serial log offset {j}): "
                    f"the rig has {raw[max(0, i - 20) : i + 20]!r}, QEMU logged {serial[max(0, j - 20) : j + 20]!r}"
                )
                return i, dups, why
    return i, dups, ""


def match_serial_log(raw: bytes, serial: bytes, *, start: int = 0) -> tuple[int, int]:
    """Check that ``raw`` (console.raw or a piece of it) is one contiguous piece of QEMU's serial log.

    Returns (offset in the serial log, bytes QEMU logged twice). Why the second number: QEMU 7.2's
    chardev logfile sometimes writes a byte twice when the pty pushes back (seen under a console
    flood: the log had ``foox`` where the guest printed -- and the rig received -- ``fox``). Such a
    repeat is allowed on QEMU's side only; any other difference fails, saying where it is.
    Every place the start of ``raw`` occurs is tried (boots print the same first lines each time).
    """
    assert raw, "console.raw (this piece) is empty: the rig captured nothing"
    head = raw[:64]
    best: tuple[int, str] = (-1, f"the first bytes of console.raw {head!r} are not in QEMU's serial log after {start}")
    at = serial.find(head, start)
    while at >= 0:
        matched, dups, why = _walk(raw, serial, at)
        if not why:
            return at, dups
        if matched > best[0]:
            best = (matched, why)
        at = serial.find(head, at + 1)
    raise AssertionError(best[1])


def assert_contiguous_in_serial_log(raw: bytes, serial: bytes, *, start: int = 0) -> int:
    """No console byte lost or added (see match_serial_log); returns where ``raw`` starts in the serial log."""
    at, dups = match_serial_log(raw, serial, start=start)
    assert dups <= max(8, len(raw) // 10_000), f"QEMU's serial log repeats {dups} of {len(raw)} bytes: look closer"
    return at


def sbsim_variant(dest: Path, **defaults: int) -> Path:
    """A copy of the shipped sbsim tree whose module parameters default to ``defaults``.

    This is how a "build" with a bug is made: the same source with one default changed (e.g.
    ``hang_after_nmi=40``), as a commit of a real tree would change it. The shipped sbsim.c is
    never edited. A parameter whose declaration is not found fails loudly.
    """
    shutil.copytree(sbsim_source_dir(), dest, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*"))
    src = dest / "sbsim.c"
    text = src.read_text()
    for name, value in defaults.items():
        text, n = re.subn(
            rf"^static (int|bool) {name}( = -?\d+)?;", rf"static \g<1> {name} = {int(value)};", text, flags=re.M
        )
        assert n == 1, f"sbsim.c has no 'static int/bool {name};' declaration any more: update sbsim_variant"
    src.write_text(text)
    return dest


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "rig test",
        "GIT_AUTHOR_EMAIL": "rig@example.invalid",
        "GIT_COMMITTER_NAME": "rig test",
        "GIT_COMMITTER_EMAIL": "rig@example.invalid",
    }
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return proc.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def restore_guests(lab: Any, log_dir: Path) -> None:
    """Power-cycle (side by side, the rig's way) every lab guest that does not answer SSH."""
    from rig.device.lifecycle import fresh_boot
    from rig.inventory import load_inventory
    from rig.lab.manager import ssh_login_check

    dead = []
    for dev in load_inventory([lab.inventory_dir]):
        g = lab.guest(dev.name)
        try:
            ssh_login_check(g.ssh_port, g.key_file, g.known_hosts)
        except Exception:  # noqa: BLE001 - not answering, whatever the reason
            dead.append(dev)
    if dead:
        failed = {k: v for k, v in fresh_boot(dead, log_dir, Console(quiet=True)).items() if v}
        assert not failed, f"could not restore lab guests: {failed}"


PLUGIN_SUITE = """
import json, os

def test_source_and_build(device, rig_run):
    rig_run.device(device)  # writes this device's report.json
    with open(os.environ["RIG_TEST_OUT"], "a") as fh:
        fh.write(json.dumps({"device": device.name, "source": str(device.shadowbox.source)}) + "\\n")
"""


@dataclass(frozen=True)
class PluginRun:
    """What a pytest run of the rig plugin gave: its exit status and output (``run_plugin``)."""

    returncode: int
    stdout: str
    stderr: str


def run_plugin(pytester: pytest.Pytester, *args: str) -> PluginRun:
    """The rig plugin on a throw-away suite over two devices no test contacts, run in this process.

    Why ``pytester`` (in-process) and not a pytest subprocess: no interpreter start-up and no second
    import of the rig per run; the suite, the inventory and the reports live in ``pytester.path``,
    which is also the run's working folder (relative options resolve there).
    """
    tmp_path = pytester.path
    inv = tmp_path / "devices"
    inv.mkdir(exist_ok=True)
    for name in ("a", "b"):
        (inv / f"{name}.toml").write_text(
            f'name = "{name}"\n[ssh]\nhost = "192.0.2.1"\nuser = "root"\nknown_hosts = "{inv / "known_hosts"}"\n'
            f'key_file = "{inv / "key"}"\n'
            f'[shadowbox]\nrecipe = "sbsim"\nsource = "/nonexistent/original-{name}"\n'
        )
    (tmp_path / "test_suite.py").write_text(PLUGIN_SUITE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RIG_RUN_ID", "run")
        mp.setenv("RIG_TEST_OUT", str(tmp_path / "seen.jsonl"))
        res = pytester.runpytest(
            str(tmp_path / "test_suite.py"), "--rig-devices", str(inv), "--rig-report-dir", str(tmp_path / "reports"),
            "-p", "no:cacheprovider", "-p", "no:xdist", "-q", *args,
        )  # fmt: skip
    return PluginRun(int(res.ret), "\n".join(res.outlines), "\n".join(res.errlines))


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def lab_device(lab_devices: list[Device], name: str) -> Device:
    """One lab guest's inventory entry by name (from the ``lab_devices`` fixture)."""
    return next(d for d in lab_devices if d.name == name)


def with_monitor(dev: Device, **changes: Any) -> Device:
    """``dev`` with some of its [monitor] settings changed (validated models, never text edits of a file)."""
    return dev.model_copy(update={"monitor": dev.monitor.model_copy(update=changes)})


def lab_root(tmp_path_factory: pytest.TempPathFactory, base: Path) -> Path:
    """A lab folder under ``base`` whose port block no other lab of this test run has (rig.lab.ports).

    Why: a lab's ports come from a hash of its folder, 625 blocks in all, and a run of the lab tests has
    six to nine labs up at once across its xdist workers: two of them drew the same block about once in
    twenty runs, and the second lab's bring-up failed on a port the first one's QEMU held. Each block is
    claimed with an O_EXCL file in a folder all workers of the run share; a block whose first guest's
    ports are bound already (a lab outside this run) is passed over too.
    """
    basetemp = tmp_path_factory.getbasetemp()
    claims = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    for attempt in range(100):
        root = base / ("state" if attempt == 0 else f"state-{attempt}")
        block = lab_base_port(root)
        if any(port_bound(block + i, "tcp") or port_bound(block + i, "udp") for i in range(SLOT_WIDTH)):
            continue
        try:
            os.close(os.open(claims / f"rig-lab-port-block-{block}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return root
    raise RuntimeError(f"no free lab port block for a folder under {base} after 100 tries")
