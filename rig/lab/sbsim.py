"""Build sbsim, the lab's stand-in for Shadow-box, against a kernel's headers.

Why a builder at all: the lab guest runs Debian's kernel, not the host's, so the module must be
built with ``make -C <that kernel's headers> M=<dir>`` -- the same command a user runs for the real
Shadow-box on a laptop. The build takes a second or two but the lab and the tests ask for the
module often, so a finished build is reused while neither the sources nor the headers changed.

sbsim is NOT Shadow-box: it prints Shadow-box's console lines and reproduces, on demand, the
failures the rig must catch (see ``rig/lab/sbsim/README.md``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from rig.errors import LabFault
from rig.lab import kernels

#: Files that make up the module's source; everything the build needs, nothing else.
SOURCE_FILES: tuple[str, ...] = ("sbsim.c", "Makefile")

#: Module parameters sbsim.c defines (``modinfo -p`` lists them; the deploy recipe may pass them).
PARAMETERS: tuple[str, ...] = (
    "version",
    "log_nmi",
    "hang_after_nmi",
    "panic_after_nmi",
    "nmi_delay_us",
    "fail_start",
    "stall_secs",
    "hung_secs",
    "host_residency_pct",
    "host_window_us",
    "hang_on_host_nmi",
    "trigger",
)

#: Values accepted by ``/sys/module/sbsim/parameters/trigger`` (alert and hang_banner take ``:arg``).
TRIGGERS: tuple[str, ...] = (
    "oops",
    "bug",
    "warn",
    "panic",
    "softlockup",
    "rcu_stall",
    "hung_task",
    "alert",
    "hang_banner",
)

#: Deadline for one ``make ... modules`` run; a normal build takes about 2 s.
BUILD_TIMEOUT_S: float = 300.0

#: How many lines of make's output an error message carries.
ERROR_TAIL_LINES: int = 30

_KEY_FILE = ".sbsim-build-key"
_LOCK_FILE = ".sbsim-build.lock"


class SbsimBuildError(LabFault):
    """sbsim could not be built: missing headers or tools, or the compiler refused the source.

    A LabFault because it is the lab's payload that failed, never the device under test.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, component="sbsim")


def sbsim_source_dir() -> Path:
    """The directory holding sbsim.c and its kbuild Makefile (shipped as package data)."""
    return Path(__file__).resolve().parent / "sbsim"


def default_headers_dir(kernel_version: str) -> Path:
    """Where Debian keeps the headers for ``kernel_version`` (e.g. ``6.1.0-56-amd64``).

    Prefers ``/usr/src/linux-headers-<ver>`` (what the linux-headers package installs, present
    even when that kernel is not the one running) and falls back to ``/lib/modules/<ver>/build``,
    then to the lab's kernel cache (kernels fetched from Debian's archive, e.g. 5.10: see
    rig.lab.kernels). Returns the /usr/src path when none exists, so that build_sbsim names it in
    its error.
    """
    if not kernel_version or "/" in kernel_version or kernel_version in (".", ".."):
        raise ValueError(f"not a kernel version: {kernel_version!r} (expected e.g. '6.1.0-56-amd64')")
    usr_src = Path("/usr/src") / f"linux-headers-{kernel_version}"
    for candidate in (usr_src, Path("/lib/modules") / kernel_version / "build"):
        if (candidate / "Makefile").is_file():
            return candidate
    fetched = kernels.cached_kernel(kernel_version)
    if fetched is not None and (fetched.headers / "Makefile").is_file():
        return fetched.headers
    return usr_src


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _build_key(source_dir: Path, headers_dir: Path) -> str:
    """A digest that changes when a source file or the headers' identity changes.

    The headers are identified by their resolved path, kernel release, config and exported
    symbol versions: a headers package upgrade changes at least one of those.
    """
    h = hashlib.sha256()
    for name in SOURCE_FILES:
        h.update(name.encode() + b"\0" + _file_digest(source_dir / name).encode() + b"\0")
    h.update(str(headers_dir.resolve()).encode() + b"\0")
    for rel in ("Module.symvers", "include/config/kernel.release", "include/generated/autoconf.h", ".config"):
        path = headers_dir / rel
        h.update(rel.encode() + b"\0" + (_file_digest(path) if path.is_file() else "absent").encode() + b"\0")
    return h.hexdigest()


def _tail(text: str, lines: int = ERROR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _reinstall_hint(headers_dir: Path) -> str:
    """The command that restores these headers: apt for the host's, a re-fetch for the kernel cache's."""
    cache = kernels.cache_dir().resolve()
    if headers_dir.resolve().is_relative_to(cache):
        release = headers_dir.resolve().name.removeprefix("linux-headers-")
        return (f"rm -rf {cache / release} && rig lab kernels --fetch {kernels.series_of(release)}"
                " (headers fetched from Debian's archive)")
    name = headers_dir.resolve().name
    package = name if name.startswith("linux-headers-") else "linux-headers-amd64"
    return f"apt-get install --reinstall {package}"


def build_sbsim(headers_dir: Path, out_dir: Path) -> Path:
    """Build sbsim.ko in ``out_dir`` against ``headers_dir`` and return the .ko's path.

    Copies the sources into ``out_dir`` (kbuild writes its objects next to them, so building in
    the package directory would dirty the checkout), then runs
    ``make -C <headers_dir> M=<out_dir> modules``. Skips the build when ``out_dir`` already holds
    a module built from the same sources against the same headers. Safe to call from parallel
    test workers: a lock file in ``out_dir`` serialises them.
    """
    headers_dir = Path(headers_dir)
    out_dir = Path(out_dir).resolve()
    if not (headers_dir / "Makefile").is_file():
        raise SbsimBuildError(
            f"kernel headers not found at {headers_dir} (no Makefile there): install the headers of the "
            "lab kernel, e.g. `apt-get install linux-headers-amd64` (tools/bootstrap.sh does it)"
        )
    if any(ch.isspace() for ch in str(out_dir)):
        raise SbsimBuildError(
            f"kbuild cannot build in a directory whose path has spaces: {out_dir}; pick another out_dir"
        )
    if shutil.which("make") is None:
        raise SbsimBuildError("`make` is not installed: run tools/bootstrap.sh (apt-get install make gcc)")
    source_dir = sbsim_source_dir()
    missing = [name for name in SOURCE_FILES if not (source_dir / name).is_file()]
    if missing:
        raise SbsimBuildError(f"sbsim sources missing in {source_dir}: {', '.join(missing)}; reinstall the rig")

    out_dir.mkdir(parents=True, exist_ok=True)
    ko = out_dir / "sbsim.ko"
    key_file = out_dir / _KEY_FILE
    with (out_dir / _LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        key = _build_key(source_dir, headers_dir)
        if ko.is_file() and key_file.is_file() and key_file.read_text().strip() == key:
            return ko

        key_file.unlink(missing_ok=True)
        ko.unlink(missing_ok=True)
        for name in SOURCE_FILES:
            shutil.copyfile(source_dir / name, out_dir / name)
        cmd = ["make", "-C", str(headers_dir), f"M={out_dir}", "modules"]
        env = dict(os.environ, LC_ALL="C")
        try:
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=BUILD_TIMEOUT_S,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode(errors="replace")
            raise SbsimBuildError(
                f"building sbsim against {headers_dir} did not finish within {BUILD_TIMEOUT_S:.0f} s "
                f"(BUILD_TIMEOUT_S); last output:\n{_tail(output)}"
            ) from None
        if proc.returncode != 0 or not ko.is_file():
            raise SbsimBuildError(
                f"building sbsim failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"last {ERROR_TAIL_LINES} lines of make's output:\n{_tail(proc.stdout)}\n"
                f"If the headers are incomplete, reinstall them: {_reinstall_hint(headers_dir)}"
            )
        key_file.write_text(key + "\n")
        return ko
