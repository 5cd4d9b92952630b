"""Building sbsim (the lab's Shadow-box stand-in) against the real kernel headers, and its captures.

The build tests run the real ``make -C /usr/src/linux-headers-<ver> M=...`` and the real
``modinfo``; they skip (with the reason) when the lab kernel's headers are not installed.

The capture tests check the console logs in tests/data/console/sbsim_*.log: real serial-console
output of QEMU/TCG guests booted with Debian's kernel and sbsim, one per scenario (see
rig/lab/sbsim/README.md for how they were made). The crash detector's tests read them; these
tests make sure each still holds the kernel lines that make it worth having.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rig.errors import LabFault
from rig.lab import image
from rig.lab.sbsim import (
    PARAMETERS,
    SbsimBuildError,
    build_sbsim,
    default_headers_dir,
    sbsim_source_dir,
)

CAPTURES = Path(__file__).parent / "data" / "console"


def _headers() -> Path:
    try:
        version = image.kernel_version()
    except LabFault as exc:
        pytest.skip(f"no lab kernel installed: {exc}")
    headers = default_headers_dir(version)
    if not (headers / "Makefile").is_file():
        pytest.skip(f"headers for the lab kernel {version} are not installed at {headers}")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return headers


@pytest.fixture(scope="module")
def built_ko(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sbsim(_headers(), tmp_path_factory.mktemp("sbsim"))


def _modinfo(ko: Path, field: str | None = None) -> str:
    modinfo = shutil.which("modinfo") or "/sbin/modinfo"
    if not Path(modinfo).exists():
        pytest.skip("modinfo (kmod) is not installed")
    cmd = [modinfo, str(ko)] if field is None else [modinfo, "-F", field, str(ko)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def test_source_dir_holds_the_module_source() -> None:
    src = sbsim_source_dir()
    assert (src / "sbsim.c").is_file()
    assert "obj-m := sbsim.o" in (src / "Makefile").read_text()
    assert "NOT SHADOW-BOX" in (src / "sbsim.c").read_text()


def test_build_produces_a_module_for_the_lab_kernel(built_ko: Path) -> None:
    assert built_ko.name == "sbsim.ko"
    assert built_ko.read_bytes()[:4] == b"\x7fELF"
    vermagic = _modinfo(built_ko, "vermagic").strip()
    assert vermagic.split()[0] == image.kernel_version()


def test_modinfo_shows_license_description_and_every_parameter(built_ko: Path) -> None:
    assert _modinfo(built_ko, "license").strip() == "GPL"
    description = _modinfo(built_ko, "description")
    assert "NOT Shadow-box" in description
    assert "stand-in" in description
    params = {line.split(":", 1)[0] for line in _modinfo(built_ko, "parm").splitlines() if line}
    assert params == set(PARAMETERS)


def test_second_build_is_skipped_when_nothing_changed(built_ko: Path) -> None:
    before = built_ko.stat()
    again = build_sbsim(_headers(), built_ko.parent)
    after = again.stat()
    assert again == built_ko
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_source_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = _headers()
    src = tmp_path / "src"
    shutil.copytree(sbsim_source_dir(), src)
    monkeypatch.setattr("rig.lab.sbsim.sbsim_source_dir", lambda: src)
    out = tmp_path / "out"
    first = build_sbsim(headers, out)
    first_srcversion = _modinfo(first, "srcversion")
    (src / "sbsim.c").write_text((src / "sbsim.c").read_text() + "\nstatic int sbsim_extra __used;\n")
    second = build_sbsim(headers, out)
    assert _modinfo(second, "srcversion") != first_srcversion


def test_compile_error_raises_a_lab_fault_with_makes_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = _headers()
    src = tmp_path / "src"
    shutil.copytree(sbsim_source_dir(), src)
    (src / "sbsim.c").write_text((src / "sbsim.c").read_text() + "\nthis is not C;\n")
    monkeypatch.setattr("rig.lab.sbsim.sbsim_source_dir", lambda: src)
    with pytest.raises(SbsimBuildError) as info:
        build_sbsim(headers, tmp_path / "out")
    message = str(info.value)
    assert isinstance(info.value, LabFault)
    assert "make -C" in message and "exit 2" in message
    assert "sbsim.c" in message and "error" in message
    assert not (tmp_path / "out" / "sbsim.ko").exists()


def test_missing_headers_name_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SbsimBuildError) as info:
        build_sbsim(tmp_path / "no-headers", tmp_path / "out")
    assert str(tmp_path / "no-headers") in str(info.value)
    assert "apt-get install" in str(info.value)


def test_builds_against_every_lab_kernel_it_can_find(tmp_path: Path) -> None:
    """sbsim must build for each kernel a lab guest boots: the host's 6.1 and the cached 5.10.

    The 5.10 headers come from the lab's kernel cache (rig.lab.kernels, fetched from Debian's
    archive by tools/bootstrap.sh); without them this checks the host's kernel alone.
    """
    from rig.lab import kernels

    _headers()
    releases = [image.kernel_version(), *kernels.cached_releases("5.10")]
    for release in releases:
        ko = build_sbsim(default_headers_dir(release), tmp_path / release)
        assert _modinfo(ko, "vermagic").split()[0] == release
        assert "gpf" in _modinfo(ko, "parm")  # the trigger list in the parameter's description
    if len(releases) == 1:
        pytest.skip("no cached 5.10 kernel (rig lab kernels --fetch 5.10): built for the host's kernel only")


def test_default_headers_dir() -> None:
    assert default_headers_dir("9.9.9-none") == Path("/usr/src/linux-headers-9.9.9-none")  # pin-ok: cannot exist
    with pytest.raises(ValueError):
        default_headers_dir("../etc")


# ---- the console captures -------------------------------------------------------------------

BANNER = (
    "shadow-box: sbsim (sbsim lab stand-in, NOT Shadow-box): Lightweight Hypervisor-Based Kernel Protector v2.3.0-sbsim"
)

#: scenario -> lines (substrings) the real kernel printed for it, in order.
EXPECTED: dict[str, list[str]] = {
    "clean": [
        BANNER,
        "shadow-box: CPU Count 2",
        "shadow-box: Booting CPU ID 0",
        "shadow-box: Booting CPU ID 1",
        "shadow-box: Protect Kernel Code Area",
        "shadow-box:     [*] Complete",
        "shadow-box: Framework Preinitialize",
        "shadow-box: Framework Initailize",
        "shadow-box: Execution Complete",
        "shadow-box: errorcode=0",
    ],
    "nmis": [
        "shadow-box: errorcode=0",
        "shadow-box: VM [0] INT NMI callback",
        "Uhhuh. NMI received for unknown reason",
        "sysrq: Show backtrace of all active CPUs",
        "NMI backtrace for cpu 0",
        "Sending NMI from CPU 0 to CPUs 1:",
        "shadow-box: VM [1] INT NMI callback",
        "NMI:",
    ],
    "fail_start": [
        BANNER,
        "shadow-box:     [*] VMX not support",
        "shadow-box: Execution Fail",
        "shadow-box: errorcode=2",
        "Operation not permitted",
    ],
    "oops": [
        "BUG: kernel NULL pointer dereference, address: 0000000000000000",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "Comm: sbsim_oops",
        "RIP: 0010:sbsim_oops_fn",
        "---[ end trace",
    ],
    # a lab guest's serial.log (rig.lab, sbsim deployed by the rig), not the scenario /init above
    "gpf": [
        "shadow-box: errorcode=0",
        "shadow-box: trigger gpf: non-canonical address dereference in kthread",
        "general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1]",
        "Comm: sbsim_gpf",
        "RIP: 0010:sbsim_gpf_fn",
        "RAX: dead000000000100",
        "---[ end trace",
    ],
    "bug": ["kernel BUG at ", "sbsim.c:", "invalid opcode: 0000 [#1]", "RIP: 0010:sbsim_bug_fn", "---[ end trace"],
    "warn": ["------------[ cut here ]------------", "WARNING: CPU: ", "sbsim_trigger_set", "---[ end trace"],
    "panic": [
        "Kernel panic - not syncing: sbsim: trigger=panic",
        "---[ end Kernel panic - not syncing: sbsim: trigger=panic ]---",
    ],
    "panic_after_nmi": [
        "shadow-box: VM [0] INT NMI callback",
        "Kernel panic - not syncing: sbsim: panic_after_nmi=3 reached",
        "<NMI>",
        "sbsim_nmi_handler",
        "---[ end Kernel panic - not syncing: sbsim: panic_after_nmi=3 reached ]---",
    ],
    # captured with rcu_cpu_stall_timeout raised to 60 s, so the soft-lockup report comes alone
    "softlockup": ["watchdog: BUG: soft lockup - CPU#", "[sbsim_softlock:", "shadow-box: trigger softlockup: done"],
    # default settings: RCU's 21 s stall report comes first and resets the soft-lockup watchdog
    "softlockup_default": [
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        "Comm: sbsim_softlock",
        "shadow-box: trigger softlockup: done",
    ],
    "rcu_stall": [
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        "Sending NMI from CPU 1 to CPUs 0:",
        "NMI backtrace for cpu 0",
        "Comm: sbsim_rcustall",
        "shadow-box: VM [0] INT NMI callback",
        "shadow-box: trigger rcu_stall: done",
    ],
    "nmi_delay": ["shadow-box: VM [0] INT NMI callback", "took too long to run: 30"],
    "nmi_ratelimit": ["shadow-box: VM [", "Uhhuh. NMI received for unknown reason", "cpu0 15", "cpu1 15"],
    "unload": [
        'shadow-box: trigger: unknown value "bogus"',
        "Invalid argument",
        "shadow-box: sbsim unloaded (real Shadow-box cannot be unloaded)",
        "sbsim-lab: rmmod rc=0",
        "shadow-box: errorcode=0",
    ],
    "hung_task": ["INFO: task sbsim_hungtask:", "blocked for more than", "hung_task_timeout_secs"],
    "alert": ['shadow-box: VM [0] Hidden module, module name="sbsim_hidden"', 'module name="rootkit_x"'],
    "hang_banner": [
        "shadow-box: ================================================================",
        "shadow-box: HANG ",
        "shadow-box: ================================================================",
    ],
    "hang_after_nmi": ["shadow-box: errorcode=0", "shadow-box: VM [0] INT NMI callback"],
}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_capture_holds_the_real_kernel_lines(scenario: str) -> None:
    text = (CAPTURES / f"sbsim_{scenario}.log").read_text(errors="replace")
    assert len(text) < 200_000
    position = 0
    for needle in EXPECTED[scenario]:
        found = text.find(needle, position)
        assert found >= 0, f"sbsim_{scenario}.log lacks {needle!r} after offset {position}"
        position = found


def test_ratelimited_capture_logs_ten_of_thirty_nmis() -> None:
    text = (CAPTURES / "sbsim_nmi_ratelimit.log").read_text(errors="replace")
    assert text.count("INT NMI callback") == 10
    assert text.count("Uhhuh. NMI received") == 30


def test_hang_capture_ends_in_silence() -> None:
    """The seed bug: the hanging NMI logs nothing and nothing at all follows it.

    The guest's /init wrote a heartbeat to /dev/kmsg every second. The first inject-nmi reached
    both CPUs (NMIs 1 and 2, logged, heartbeats go on); the second one (NMI 3) hung the machine:
    no callback line, and the last line of the capture is a heartbeat. The host then watched the
    console for 75 s (not visible in the file: it simply ends) and QEMU showed both vCPUs at the
    same module address with interrupts off.
    """
    lines = (CAPTURES / "sbsim_hang_after_nmi.log").read_text(errors="replace").splitlines()
    callbacks = [i for i, line in enumerate(lines) if "INT NMI callback" in line]
    heartbeats = [i for i, line in enumerate(lines) if "sbsim-lab: heartbeat" in line]
    assert len(callbacks) == 2
    assert heartbeats and heartbeats[-1] > callbacks[-1]
    assert lines[-1] == lines[heartbeats[-1]]
    text = "\n".join(lines[callbacks[0] :])
    for noise in ("rcu: INFO", "stall", "soft lockup", "NMI backtrace", "Kernel panic", "HANG"):
        assert noise not in text
