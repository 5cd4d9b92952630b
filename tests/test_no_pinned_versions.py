"""Guard: nothing in the repository may depend on a kernel version that Debian's archive can replace.

Why: Debian replaces point releases (6.1.0-56 became 6.1.0-57 between two machines), and one test that
spelled ``/boot/vmlinuz-6.1.0-56-amd64`` failed on every new machine, CI's included. The lab asks
:func:`rig.lab.image.kernel_version` (one function) for the host's kernel; tests do the same, or use
``g.kernel_version`` of a lab guest.

Two patterns:
- an absolute host path with a concrete version (``/boot/vmlinuz-6.1...``, ``/lib/modules/5.10...``,
  ``/usr/src/linux-headers-6.1...``, ``/boot/System.map-...``, ``/boot/config-...``): flagged everywhere;
- a Debian kernel package name with a concrete version (``linux-image-6.1.0-57-amd64``): flagged
  everywhere except in files that model Debian's archive with made-up index data (ARCHIVE_FIXTURES).

A line that must spell one (a release that cannot exist, to test a "not installed" path) carries the
pragma ``pin-ok`` with its reason.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HOST_PATH = re.compile(
    r"""(?:^|(?<=[\s"'`(=:,{\[]))/(?:boot/(?:vmlinuz|System\.map|config|initrd\.img)-|lib/modules/|usr/src/linux-headers-)\d"""
)
PACKAGE = re.compile(r"\blinux-(?:image|headers)-\d+\.\d+\.\d+-\d+")
PRAGMA = "pin-ok"
#: Files read as text: code, scripts, build files and docs (captured kernel output under tests/data is
#: evidence, not a dependency, and is not scanned).
SUFFIXES = {".py", ".sh", ".md", ".toml", ".example", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".c", ".j2", ".html"}
NAMES = {"Makefile", "Kbuild", "run"}
SKIP_DIRS = ("tests/data/", "reports/", ".venv/", ".lab/")
#: Files whose package names are made-up archive data (index stanzas of a Debian that does not exist).
ARCHIVE_FIXTURES = {"tests/test_kernels.py": "unit tests of the archive picker on made-up Packages stanzas"}
#: This file plants pins on purpose (in temporary trees) to show the guard fails.
SELF = "tests/test_no_pinned_versions.py"


@dataclass(frozen=True)
class Pin:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text.strip()}"


def repo_files(root: Path) -> list[str]:
    """Tracked and new (not ignored) files, relative to ``root``; a plain walk where git is absent."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            capture_output=True, check=True,
        ).stdout
        return sorted({p for p in out.decode().split("\0") if p})
    except (OSError, subprocess.CalledProcessError):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def find_pins(root: Path, files: list[str]) -> list[Pin]:
    """Every line under ``root`` that spells a concrete kernel version in a host path or package name."""
    found: list[Pin] = []
    for rel in files:
        p = Path(rel)
        if rel == SELF or rel.startswith(SKIP_DIRS) or not (p.suffix in SUFFIXES or p.name in NAMES):
            continue
        try:
            text = (root / rel).read_text(errors="replace")
        except OSError:
            continue
        for no, line in enumerate(text.splitlines(), 1):
            if PRAGMA in line:
                continue
            if HOST_PATH.search(line) or (rel not in ARCHIVE_FIXTURES and PACKAGE.search(line)):
                found.append(Pin(rel, no, line))
    return found


def test_a_planted_pin_is_named_by_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    pinned = "/boot/" + "vmlinuz-6.1.0-56-amd64"  # spelled in two pieces: this file must not pin one itself
    (tmp_path / "tests/test_x.py").write_text(f'import os\nKERNEL = "{pinned}"\n')
    (tmp_path / "Makefile").write_text("deps:\n\tapt-get install -y linux-image-6.1.0-57-amd64\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/x.sh").write_text("make -C /lib/modules/5.10.0-46-amd64/build M=$PWD\n")
    pins = find_pins(tmp_path, ["tests/test_x.py", "Makefile", "tools/x.sh"])
    assert [(p.path, p.line) for p in pins] == [("tests/test_x.py", 2), ("Makefile", 2), ("tools/x.sh", 1)]
    assert str(pins[0]) == f'tests/test_x.py:2: KERNEL = "{pinned}"'


def test_what_is_not_a_pin(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        'p = f"/boot/vmlinuz-{release}"\n'             # a variable, not a version
        'q = cache / "x/root/boot/vmlinuz-5.10.0-46"\n'  # inside a cache tree, not the host's /boot
        'r = "/usr/src/linux-headers-9.9.9-none"  # pin-ok: cannot exist\n'
        "s = 'linux-image-amd64'\n"                     # the metapackage moves with the archive
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_kernels.py").write_text('stanza("linux-image-5.10.0-45-amd64-unsigned")\n')
    assert find_pins(tmp_path, ["a.py", "tests/test_kernels.py"]) == []


def test_the_repository_pins_no_kernel_version() -> None:
    pins = find_pins(ROOT, repo_files(ROOT))
    assert not pins, (
        "concrete kernel versions in the repository (Debian's archive replaces point releases; ask "
        "rig.lab.image.kernel_version() or a lab guest's kernel_version instead):\n"
        + "\n".join(str(p) for p in pins)
    )
