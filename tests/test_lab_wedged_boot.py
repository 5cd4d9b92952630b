"""A lab bring-up boot that wedges is told from a slow one by the rig's crash rules (Lab._wedged_boot).

The wedge is a real capture: laptop-1's first boot in a clean-clone `make test` (2026-12-01, three lab
workers), an RCU stall and soft lockups in the kernel's keyring set-up before /init ever ran.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rig.lab.manager import Lab

WEDGED = Path(__file__).parent / "data" / "console" / "boot-wedged-keyring.log"
CLEAN_BOOT = (
    "[    0.000000] Linux version 6.1.0 (debian-kernel@lists.debian.org) #1 SMP\n"
    "[    3.883583] integrity: Platform Keyring initialized\n"
    "[    5.528350] Freeing initrd memory: 3160K\n"
    "rig-lab: laptop-1 init done, starting dropbear and the console shell\n"
)


def _wedged(tmp_path: Path, text: bytes) -> str | None:
    log = tmp_path / "serial.log"
    log.write_bytes(text)
    lab = Lab(root=tmp_path / "state", inventory_dir=tmp_path / "devices")
    return lab._wedged_boot(SimpleNamespace(serial_log=log))  # type: ignore[arg-type]


def test_a_wedged_boot_is_named_by_its_crash(tmp_path: Path) -> None:
    got = _wedged(tmp_path, WEDGED.read_bytes())
    assert got is not None and got.startswith("rcu_stall:") and "key_set_index_key" in got, got


def test_a_slow_clean_boot_is_not_wedged_and_only_the_current_boot_counts(tmp_path: Path) -> None:
    assert _wedged(tmp_path, CLEAN_BOOT.encode()) is None
    # the wedged boot, then a reset and a clean boot after it: only the last boot is judged
    assert _wedged(tmp_path, WEDGED.read_bytes() + CLEAN_BOOT.encode()) is None
    assert _wedged(tmp_path, CLEAN_BOOT.encode() + WEDGED.read_bytes()) is not None


def test_no_serial_log_yet_is_not_wedged(tmp_path: Path) -> None:
    lab = Lab(root=tmp_path / "state", inventory_dir=tmp_path / "devices")
    assert lab._wedged_boot(SimpleNamespace(serial_log=tmp_path / "none.log")) is None  # type: ignore[arg-type]
