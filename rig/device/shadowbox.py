"""Deploy Shadow-box to a device: preflight, upload, build, insmod, and read what it says.

Why recipes are data: upstream Shadow-box, the gooroom fork and the lab's sbsim stand-in differ only
in commands, file names and console markers, so they are three :class:`Recipe` values driven by one
mechanism (:class:`Deployer`), not three code paths. A new fork is a new recipe.

Shadow-box cannot be unloaded (rmmod is trapped); the rig never pretends to. A reboot through the
device's power control is the only way back to a clean state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from rig.errors import CommandTimeout, ConfigError, DeviceError, LabFault, RigError
from rig.inventory import check_module_params
from rig.protocols import LineSource, Shell
from rig.transports.ssh import SshUnreachable

log = logging.getLogger(__name__)

#: ``mktemp -d`` template of the folder a deploy uploads to on the device (a fresh one per deploy).
REMOTE_TEMPLATE = "/tmp/rig-shadowbox.XXXXXXXX"
#: Never copied from a tree without git (with git, only its tracked files are): version-control metadata.
IGNORED_NAMES = (".git", ".hg", ".svn")
#: What ``uname -r`` may print and still be used in a controller path (no '/', no '..').
KERNEL_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")


def check_kernel_release(release: str) -> str:
    """``release`` if it is a kernel release name; a DeviceError otherwise (it becomes a controller path)."""
    if not KERNEL_RELEASE_RE.match(release) or ".." in release:
        raise DeviceError(f"the device's uname -r {release[:80]!r} is not a kernel release name; not used as a path")
    return release


def tree_files(tree: Path) -> list[Path]:
    """The files a deploy takes from ``tree`` (relative): git's tracked files, else all but IGNORED_NAMES.

    Why: the device needs the sources, not the repository (``.git`` can be hundreds of MB) nor the
    untracked files lying in a working tree (editor backups, old builds, secrets someone left there).
    """
    try:
        proc = subprocess.run(["git", "-C", str(tree), "ls-files", "-z", "--cached"], capture_output=True, timeout=30)
        if proc.returncode == 0:
            listed = [Path(p) for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
            files = [f for f in listed if (tree / f).is_file() or (tree / f).is_symlink()]
            if files:
                return sorted(files)
    except (OSError, subprocess.TimeoutExpired):
        pass
    out: list[Path] = []
    for root, dirs, names in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        out.extend((Path(root) / n).relative_to(tree) for n in names)
        out.extend((Path(root) / d).relative_to(tree) for d in dirs if (Path(root) / d).is_symlink())
    return sorted(out)


def stage_tree(tree: Path, dest: Path) -> Path:
    """Copy :func:`tree_files` of ``tree`` to ``dest`` (symlinks as symlinks); return ``dest``."""
    dest.mkdir(parents=True)
    for rel in tree_files(tree):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / rel, target, follow_symlinks=False)
    return dest


#: Upstream's markers (light_box.c, v2.3.0): every line starts ``shadow-box: ``. "Kernel version is not
#: supported, [%s]" has no newline, so the next line may be glued to it: patterns are searched, not anchored.
_UPSTREAM_FAILURES: tuple[tuple[str, str], ...] = (
    (r"VMX inside SMX is disabled by BIOS", "vmx-disabled: VT-x inside SMX (TXT) is disabled in the firmware setup"),
    (r"VMX is disabled by BIOS", "vmx-disabled: VT-x is disabled in the firmware setup"),
    (r"VMX not support", "no-vmx: the CPU has no VT-x (or it is not exposed to this kernel)"),
    (
        r"Kernel version is not supported",
        "unsupported-kernel: the tree has no System.map for this kernel's 'uname -v' (system.map/<uname -v>.map), "
        "or does not support this kernel",
    ),
    (r"VMXON Fail", "vmxon-failed: VMXON failed (VT-x locked or already in use by another hypervisor)"),
    (r"Launch Valid Fail|Launch Invalid Fail", "launch-failed: VMLAUNCH failed"),
    (r"sb_init_vmx fail", "vmx-init-failed: sb_init_vmx failed"),
    (r"alloc fail", "out-of-memory: Shadow-box could not allocate its memory"),
    (r"Thread run fail", "thread-fail: a VM thread did not start"),
    (r"Execution Fail", "start-failed: Shadow-box reported Execution Fail"),
)
#: upstream ``errorcode=%d`` (shadow_box.h): the ones a deploy can end with.
_UPSTREAM_CODES: tuple[tuple[str, str], ...] = (
    ("1", "start-failed: errorcode=1 (Execution Fail)"),
    ("2", "no-vmx: errorcode=2 (VT-x missing or disabled)"),
    ("5", "unsupported-kernel: errorcode=5 (kernel version not supported)"),
    ("7", "out-of-memory: errorcode=7 (memory allocation failed)"),
)
_GOOROOM_FAILURES: tuple[tuple[str, str], ...] = (
    (r"Intel CPU is not found", "no-intel-cpu: the CPU is not an Intel CPU (GRMCODE=020010)"),
    (r"Failed to get kallsyms_lookup_name", "missing-symbol: kallsyms_lookup_name() not found through a kprobe"),
    (
        r"sb_get_symbol_address \[[^\]]*\] is NULL|HANG Error SYMBOL_NULL",
        "missing-symbol: a kernel symbol the tree needs is missing in this kernel",
    ),
    *_UPSTREAM_FAILURES,
)
#: gooroom ``GRMCODE=%06d`` result codes.
_GOOROOM_CODES: tuple[tuple[str, str], ...] = (
    ("020009", "not-started: GRMCODE=020009 (Shadow-box did not start)"),
    ("020010", "no-vmx: GRMCODE=020010 (hardware not supported: no Intel VT-x)"),
    ("020011", "launch-failed: GRMCODE=020011 (VM launch failed)"),
    ("020013", "unsupported-kernel: GRMCODE=020013 (kernel version mismatch)"),
    ("020015", "out-of-memory: GRMCODE=020015 (memory allocation failed)"),
)

#: Build tools a tree may need, and the fix a preflight failure names.
TOOL_FIXES: dict[str, str] = {
    "make": "install make (Debian: apt install make)",
    "gcc": "install gcc (Debian: apt install gcc; the kernel's own gcc version)",
    "nasm": "install nasm (Debian: apt install nasm): the tree's .asm files are assembled with it",
    "python2": "make_symtable.py is Python 2 and the Makefile runs 'python': install Python 2 and make "
    "'python' run it (a python2 interpreter first in PATH), or port make_symtable.py",
}


@dataclass(frozen=True)
class TreeShape:
    """How to tell a tree of one flavour: files it must have and a (file, regex) it must match."""

    files: tuple[str, ...]
    #: (file, regex, what it means): the tree matches only if the regex is found in the file.
    match: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Recipe:
    """How one Shadow-box flavour is built, loaded and judged. Pure data."""

    name: str
    #: Shell command run in the tree to build (on the device, or on the controller with KDIR set).
    build: str
    #: Modules to insmod, in order, relative to the tree. The last one is Shadow-box proper.
    modules: tuple[str, ...]
    #: Folder of the tree where ``build`` runs (gooroom: ``Source``).
    build_dir: str = ""
    #: Console/kmsg lines meaning "started"; the result code regex and its success value.
    success_marker: str = "Execution Complete"
    result_code: str = r"errorcode=(\d+)"
    result_ok: str = "0"
    #: Failure markers -> the named reason a report shows (first match wins).
    failures: tuple[tuple[str, str], ...] = _UPSTREAM_FAILURES
    #: Result codes other than ``result_ok`` -> the named reason.
    result_codes: tuple[tuple[str, str], ...] = _UPSTREAM_CODES
    #: What the device must have for this recipe (preflight).
    needs_vmx: bool = True
    needs_no_jump_label: bool = True
    needs_system_map: bool = False
    needs_intremap_off: bool = True
    #: Where the tree reads the System.map, as ``<dir>/<uname -v>.map`` (None: it does not read one).
    system_map_dir: str | None = None
    #: Tools the build machine needs (keys of TOOL_FIXES).
    tools: tuple[str, ...] = ()
    #: The Makefiles build for ``uname -r`` of the machine that runs make (KDIR is ignored).
    builds_for_uname: bool = False
    #: Kernel series the tree is known to build for (prefixes); empty = do not check.
    kernels: tuple[str, ...] = ()
    #: Build location when the inventory does not say.
    default_build_on: Literal["device", "controller"] = "device"
    #: A command run on the device after the last insmod (gooroom: start the helper's logger).
    start_logging: str = ""
    #: What a tree of this flavour looks like (None: any folder).
    shape: TreeShape | None = None
    #: ``rmmod`` leaves the device as a fresh boot would (only sbsim, the lab stand-in: its exit
    #: cancels the host-section timers, unregisters the NMI handler and removes /proc/sbsim).
    #: Shadow-box itself cannot be unloaded: for it only a reboot gives a clean state.
    unloads: bool = False


#: gooroom's START_LOGGING is ioctl 0 on /dev/sb-helper (what its gop-helper daemon does after insmod).
#: The rig does it itself, with the device's python3, so the host-side lines leave the helper's kfifo.
_GOOROOM_START_LOGGING = (
    'python3 -c \'import fcntl, os; fd = os.open("/dev/sb-helper", os.O_RDONLY); '
    "fcntl.ioctl(fd, 0, bytearray(8)); os.close(fd)'"
)

#: gooroom master (v2.x, 4.9/4.19-era): the buildable tree is Source/.
_GOOROOM = Recipe(
    name="gooroom",
    build="make",
    build_dir="Source",
    modules=("Source/shadow_box_helper/shadow_box_helper.ko", "Source/shadow_box/shadow_box.ko"),
    result_code=r"GRMCODE=(\d+)",
    result_ok="020008",
    failures=_GOOROOM_FAILURES,
    result_codes=_GOOROOM_CODES,
    needs_system_map=True,
    system_map_dir="Source/shadow_box/system.map",
    tools=("make", "gcc", "nasm", "python2"),
    builds_for_uname=True,
    kernels=("4.9.", "4.19."),
    start_logging=_GOOROOM_START_LOGGING,
    shape=TreeShape(
        ("Source/Makefile", "Source/shadow_box/Makefile", "Source/shadow_box/shadow_box.h"),
        ("Source/shadow_box/Makefile", r"make_symtable\.py", "Source/shadow_box/Makefile runs make_symtable.py"),
    ),
)

RECIPES: dict[str, Recipe] = {
    "upstream": Recipe(
        name="upstream",
        build="make",
        modules=("shadow_box.ko",),
        needs_system_map=True,
        system_map_dir="system.map",
        tools=("make", "gcc", "nasm", "python2"),
        builds_for_uname=True,
        kernels=("4.",),
        shape=TreeShape(
            ("Makefile", "make_symtable.py", "shadow_box.h"),
            ("shadow_box.h", r'SHADOWBOX_VERSION\s+"2\.', "SHADOWBOX_VERSION 2.x"),
        ),
    ),
    "gooroom": _GOOROOM,
    # branch gooroom-3.0 (v3.1.0): the same layout and markers, no System.map (kallsyms through a
    # kprobe), no Python 2 step, and 5.10 among its kernels.
    "gooroom-3.0": replace(
        _GOOROOM,
        name="gooroom-3.0",
        needs_system_map=False,
        system_map_dir=None,
        tools=("make", "gcc", "nasm"),
        kernels=("4.9.", "4.19.", "5.10."),
        shape=TreeShape(
            ("Source/Makefile", "Source/shadow_box/Makefile", "Source/shadow_box/shadow_box.h"),
            (
                "Source/shadow_box/shadow_box.h",
                r'SHADOWBOX_VERSION\s+"3\.',
                "SHADOWBOX_VERSION 3.x (branch gooroom-3.0)",
            ),
        ),
    ),
    "sbsim": Recipe(
        name="sbsim",
        build='make -C "$KDIR" M="$PWD" modules',
        modules=("sbsim.ko",),
        needs_vmx=False,
        needs_no_jump_label=False,
        needs_intremap_off=False,
        default_build_on="controller",
        unloads=True,
    ),
}


def tree_mismatch(recipe: Recipe, tree: Path) -> str | None:
    """Why ``tree`` is not a tree of ``recipe``'s flavour (None if it is), naming the recipe that fits.

    Why before anything is uploaded: deploying gooroom with the upstream recipe builds the wrong
    folder and loads the wrong modules; the failure then reads as Shadow-box's, minutes later.
    """
    why = _shape_mismatch(recipe, tree)
    if why is None:
        return None
    fits = [r.name for r in RECIPES.values() if r is not recipe and r.shape and _shape_mismatch(r, tree) is None]
    hint = f"it looks like a '{fits[0]}' tree: set [shadowbox] recipe = \"{fits[0]}\"" if fits else ""
    if not fits and (tree / "Makefile").is_file() and (tree.parent / "shadow_box_helper").is_dir():
        hint = f"it looks like a gooroom Source/ folder: point [shadowbox] source at {tree.parent.parent}"
    return f"{tree} is not a '{recipe.name}' tree: {why}" + (f"; {hint}" if hint else "")


def _shape_mismatch(recipe: Recipe, tree: Path) -> str | None:
    shape = recipe.shape
    if shape is None:
        return None
    missing = [f for f in shape.files if not (tree / f).is_file()]
    if missing:
        return "missing " + ", ".join(missing)
    if shape.match is not None:
        rel, pattern, meaning = shape.match
        try:
            text = (tree / rel).read_text(errors="replace")
        except OSError as exc:
            return f"{rel} unreadable ({exc})"
        if not re.search(pattern, text):
            return f"{rel} does not show {meaning}"
    return None


# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool | None  # None = could not tell
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


#: What to do, per failure reason: the report and the terminal line show it next to what happened.
HINTS: dict[str, str] = {
    "preflight": "fix the failed checks (each names its fix), or go past them with --rig-force-deploy "
    "(rig regress --force-deploy) to see what the tree itself does",
    "tree-mismatch": "set [shadowbox] recipe to the tree's flavour, or point [shadowbox] source at the right tree",
    "build-failed": "read the build's last lines (the tool's or compiler's own words): install what is missing, "
    "or use a tree that supports this kernel",
    "no-vmx": "use a machine whose CPU has Intel VT-x, exposed to this kernel (not a TCG guest)",
    "no-intel-cpu": "Shadow-box runs on Intel CPUs only",
    "vmx-disabled": "enable Intel Virtualization Technology (and VT-x inside TXT) in the firmware setup",
    "unsupported-kernel": "boot a kernel the tree supports (upstream: system.map/<uname -v>.map of this very "
    "kernel must be in the tree)",
    "missing-symbol": "the kernel lacks a symbol the tree needs: boot a kernel the tree supports, or fix the tree",
    "out-of-memory": "free memory on the device (or give the guest more) and deploy again",
    "insmod-hang": "insmod never returned: the device is rebooted before the next deploy",
    "insmod-failed": "read the kernel lines Shadow-box printed (below)",
    "no-start-marker": "read the kernel lines Shadow-box printed (below); raise [shadowbox] start_timeout if it "
    "is still starting",
    "bad-result-code": "read the kernel lines Shadow-box printed (below)",
}


class DeployFailed(DeviceError):
    """Deploy failed for a named reason (``reason`` is the short key, e.g. ``no-vmx``).

    It carries what a lab engineer needs to see: the preflight checks, the build's whole output
    (``log``; reports keep its last 40 lines) and the kernel lines printed since the first insmod.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        log: str = "",
        *,
        checks: list[Check] | None = None,
        kernel_lines: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.log = log
        self.checks: list[Check] = list(checks or [])
        self.kernel_lines: list[str] = list(kernel_lines or [])
        self.hint = HINTS.get(reason, "") if hint is None else hint
        #: Set when the deploy went past a failed preflight (--rig-force-deploy).
        self.forced = False
        #: The recipe and tree, filled by the Deployer.
        self.recipe = ""
        self.tree = ""

    def output_tail(self, lines: int = 40) -> list[str]:
        return self.log.rstrip("\n").splitlines()[-lines:] if self.log.strip() else []

    def summary(self) -> str:
        """One line: what happened and what to do (the terminal line, the JUnit property)."""
        return f"{self.reason}: {self.detail}" + (f" -- do: {self.hint}" if self.hint else "")

    def to_json(self) -> dict[str, object]:
        return {
            "ok": False,
            "recipe": self.recipe,
            "tree": self.tree,
            "reason": self.reason,
            "detail": self.detail,
            "hint": self.hint,
            "forced": self.forced,
            "checks": [c.to_json() for c in self.checks],
            "failed_checks": [c.to_json() for c in self.checks if c.ok is False],
            "build_output_tail": self.output_tail(40),
            "kernel_lines": self.kernel_lines[-40:],
        }


class PreflightFailed(DeployFailed):
    """Preflight refused the device; ``checks`` say which check failed and what fixes it."""

    def __init__(self, checks: list[Check]) -> None:
        bad = [c for c in checks if c.ok is False]
        super().__init__("preflight", "; ".join(f"{c.name}: {c.detail}" for c in bad), checks=checks)


@dataclass
class DeployResult:
    recipe: str
    checks: list[Check]
    build_seconds: float = 0.0
    load_seconds: float = 0.0
    result_code: str | None = None
    markers: list[str] = field(default_factory=list)
    tree: str = ""
    commit: str | None = None
    remote_dir: str = ""  # the fresh folder on the device it was uploaded to (removed after loading)
    #: Went past a failed preflight (--rig-force-deploy): the report says so.
    forced: bool = False
    #: Kernel lines printed since the first insmod (the last 40).
    kernel_lines: list[str] = field(default_factory=list)
    #: Things the deploy could not do but went on without (e.g. gooroom's START_LOGGING).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "forced": self.forced,
            "failed_checks": [c.to_json() for c in self.checks if c.ok is False],
            "kernel_lines": self.kernel_lines[-40:],
            "notes": self.notes,
            "recipe": self.recipe,
            "checks": [c.to_json() for c in self.checks],
            "build_seconds": round(self.build_seconds, 2),
            "load_seconds": round(self.load_seconds, 2),
            "result_code": self.result_code,
            "markers": self.markers,
            "tree": self.tree,
            "commit": self.commit,
            "remote_dir": self.remote_dir,
        }


PREFLIGHT_SCRIPT = r"""
echo "uname=$(uname -r)"
if grep -qw vmx /proc/cpuinfo; then echo vmx=yes; else echo vmx=no; fi
echo "cmdline=$(cat /proc/cmdline)"
cfg=/boot/config-$(uname -r)
if [ -r "$cfg" ] || [ -r /proc/config.gz ]; then
  jl=$( { cat "$cfg" 2>/dev/null || zcat /proc/config.gz 2>/dev/null; } | sed -n 's/^CONFIG_JUMP_LABEL=//p')
  echo "jump_label=${jl:-n}"
else echo jump_label=unknown; fi
if [ -r /boot/System.map-$(uname -r) ]; then echo systemmap=yes; else echo systemmap=no; fi
if [ -r /sys/kernel/security/lockdown ]; then echo "lockdown=$(cat /sys/kernel/security/lockdown)"; fi
for f in /sys/firmware/efi/efivars/SecureBoot-*; do
  [ -r "$f" ] && echo "secureboot=$(od -An -t u1 -j4 -N1 "$f" | tr -d ' ')"
done
echo "free_kb=$(df -k /tmp | awk 'NR==2 {print $4}')"
echo "uname_v=$(uname -v)"
if [ -d "/lib/modules/$(uname -r)/build" ]; then echo headers=yes; else echo headers=no; fi
stext=$(awk '$3 == "_stext" {print $1; exit}' /proc/kallsyms 2>/dev/null)
if [ -n "$stext" ] && [ -n "${stext##*[!0]*}" ]; then echo kallsyms=no
elif [ -n "$stext" ]; then echo kallsyms=yes
else echo kallsyms=no; fi
"""

#: The build machine's tools (run on the device, or on the controller for controller builds).
TOOLS_SCRIPT = r"""
for t in make gcc nasm python3; do
  if command -v "$t" >/dev/null 2>&1; then echo "tool_$t=yes"; else echo "tool_$t=no"; fi
done
if command -v python >/dev/null 2>&1; then
  echo "python_major=$(python -c 'import sys; print(sys.version_info[0])' 2>/dev/null || echo broken)"
else echo python_major=none; fi
echo "build_uname=$(uname -r)"
"""


def parse_facts(text: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            facts[k.strip()] = v.strip()
    return facts


def judge_preflight(
    recipe: Recipe,
    facts: dict[str, str],
    min_free_kb: int = 50_000,
    *,
    build_facts: dict[str, str] | None = None,
    build_on: Literal["device", "controller"] = "device",
) -> list[Check]:
    """Turn device facts (and the build machine's, ``build_facts``) into named checks.

    Pure: testable on facts from any laptop. Each failed check names its fix.
    """
    checks: list[Check] = []
    kernel = facts.get("uname", "?")
    cmdline = facts.get("cmdline", "").split()
    if recipe.needs_vmx:
        ok = facts.get("vmx") == "yes"
        checks.append(
            Check(
                "vt-x",
                ok,
                "vmx flag present"
                if ok
                else "no 'vmx' in /proc/cpuinfo: no VT-x, disabled in firmware, or hidden by a hypervisor",
            )
        )
    if recipe.kernels:
        ok = kernel.startswith(recipe.kernels)
        checks.append(
            Check(
                "kernel",
                ok,
                f"{kernel} ({'supported' if ok else 'not in'} {', '.join(recipe.kernels)} for recipe {recipe.name})",
            )
        )
    if recipe.needs_no_jump_label:
        jl = facts.get("jump_label", "unknown")
        if jl == "unknown":
            checks.append(Check("jump-label", None, "kernel config not readable (/boot/config-*, /proc/config.gz)"))
        else:
            detail = f"CONFIG_JUMP_LABEL={jl}" + (": Shadow-box needs a kernel built without it" if jl == "y" else "")
            checks.append(Check("jump-label", jl != "y", detail))
    if recipe.needs_intremap_off:
        ok = "intremap=off" in cmdline
        checks.append(
            Check(
                "intremap",
                ok,
                "intremap=off on the command line" if ok else "boot with intremap=off (Shadow-box locks the IOMMU)",
            )
        )
    if recipe.needs_system_map:
        checks.append(_system_map_check(recipe, facts, kernel))
    if build_facts is None:  # a device build: the device is the build machine
        build_facts = facts if build_on == "device" else {}
    checks.extend(_build_checks(recipe, facts, build_facts, build_on))
    lockdown = facts.get("lockdown", "")
    if lockdown:
        locked = "[none]" not in lockdown
        checks.append(Check("lockdown", not locked, lockdown + (": unsigned modules are refused" if locked else "")))
    sb = facts.get("secureboot")
    if sb is not None:
        checks.append(
            Check("secure-boot", sb != "1", "enabled: unsigned Shadow-box will be refused" if sb == "1" else "disabled")
        )
    free = int(facts.get("free_kb", "0") or 0)
    checks.append(Check("free-space", free >= min_free_kb, f"{free // 1024} MiB free in /tmp"))
    return checks


def _system_map_check(recipe: Recipe, facts: dict[str, str], kernel: str) -> Check:
    """The tree reads ``<system_map_dir>/<uname -v>.map`` (strcmp on ``uname -v``), not /boot: say where it goes."""
    where = f"{recipe.system_map_dir}/<uname -v>.map in the tree" if recipe.system_map_dir else "the tree"
    if facts.get("systemmap") == "yes":
        return Check("system-map", True, f"/boot/System.map-{kernel} is copied to {where}")
    if facts.get("kallsyms") == "yes":
        return Check("system-map", True, f"no /boot/System.map-{kernel}: /proc/kallsyms is copied to {where}")
    return Check(
        "system-map",
        False,
        f"no /boot/System.map-{kernel} and /proc/kallsyms shows no addresses: install this kernel's System.map "
        f"as /boot/System.map-{kernel} (or deploy as root), the rig copies it to {where}",
    )


def _build_checks(
    recipe: Recipe, facts: dict[str, str], build: dict[str, str], build_on: Literal["device", "controller"]
) -> list[Check]:
    """Tools, headers and build host: the things that make ``make`` fail before it compiles anything."""
    checks: list[Check] = []
    where = "the device" if build_on == "device" else "the controller"
    if recipe.builds_for_uname and build_on == "controller" and build:
        ok = build.get("build_uname") == facts.get("uname")
        detail = (
            f"the tree's Makefiles build for 'uname -r' of the machine that runs make (KDIR is ignored): "
            f"the controller runs {build.get('build_uname')}, the device {facts.get('uname')}"
        )
        checks.append(Check("build-host", ok, detail if not ok else "controller runs the device's kernel"))
    if recipe.builds_for_uname and build_on == "device":
        ok = facts.get("headers") == "yes"
        detail = f"/lib/modules/{facts.get('uname')}/build " + (
            "present" if ok else f"missing on the device: install linux-headers-{facts.get('uname')}"
        )
        checks.append(Check("kernel-headers", ok, detail))
    for tool in recipe.tools:
        if not build:
            checks.append(Check(f"tool:{tool}", None, f"could not ask {where}"))
        elif tool == "python2":
            major = build.get("python_major", "none")
            ok = major == "2"
            found = {"none": "there is no 'python'", "broken": "'python' does not run"}.get(
                major, f"'python' is Python {major}"
            )
            checks.append(
                Check("tool:python2", ok, "'python' is Python 2" if ok else f"{found} on {where}: {TOOL_FIXES[tool]}")
            )
        else:
            ok = build.get(f"tool_{tool}") == "yes"
            checks.append(
                Check(f"tool:{tool}", ok, f"{tool} found" if ok else f"{tool} not found on {where}: {TOOL_FIXES[tool]}")
            )
    if recipe.start_logging and facts.get("tool_python3") == "no":
        checks.append(
            Check(
                "start-logging",
                None,
                "no python3 on the device: the rig cannot send START_LOGGING to /dev/sb-helper, so the lines "
                "Shadow-box prints in VMX root (NMI callbacks, hang banners) stay in the helper's buffer; "
                "install python3",
            )
        )
    return checks


def git_commit(tree: Path) -> str | None:
    """The tree's git commit (with ``-dirty``) if it is a git checkout; None otherwise."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def insmod_argv(module_path: str, params: dict[str, str | int]) -> list[str]:
    """``insmod <module> name=value ...`` as an argument list: nothing in it is ever parsed by a shell."""
    check_module_params(params)
    return ["insmod", module_path, *(f"{k}={v}" for k, v in params.items())]


class Deployer:
    """Runs a recipe on one device."""

    def __init__(
        self,
        shell: Shell,
        console: LineSource | None,
        recipe: Recipe,
        tree: Path,
        *,
        device: str,
        build_on: Literal["device", "controller"] | None = None,
        kernel_headers: Path | None = None,
        module_params: dict[str, str | int] | None = None,
        start_timeout: float = 120.0,
        sudo: bool = False,
        build_cache: Path | None = None,
    ) -> None:
        self.shell = shell
        self.console = console
        self.recipe = recipe
        self.tree = tree
        self.device = device
        self.build_on = build_on or recipe.default_build_on
        self.kernel_headers = kernel_headers
        self.module_params = module_params or {}
        try:
            check_module_params(self.module_params)  # overrides (Dut.deploy_shadowbox) skip the schema
        except ValueError as exc:
            raise ConfigError(f"device {device}: [shadowbox] module_params: {exc}") from None
        self.start_timeout = start_timeout
        self.sudo = sudo
        #: Controller builds kept by content (:meth:`build_key`); None: every deploy builds.
        self.build_cache = build_cache
        #: The cache entry the last controller build came from, "" if it was built.
        self.reused_build = ""
        self._staging: Path | None = None
        self._staged: Path | None = None
        #: Set just before the first insmod: from then on the device may hold part of Shadow-box
        #: and only a reboot gives a clean state (a refusal before it leaves the device as it was).
        self.reached_insmod = False
        self._kmsg_anchor = ""

    def preflight(self) -> list[Check]:
        """The device's facts (and the build machine's tools) as named checks; nothing is uploaded or loaded."""
        res = self.shell.run("sh -c " + shlex.quote(PREFLIGHT_SCRIPT + TOOLS_SCRIPT), timeout=30, sudo=self.sudo)
        facts = parse_facts(res.out)
        if self.build_on == "controller":
            local = subprocess.run(["sh", "-c", TOOLS_SCRIPT], capture_output=True, text=True, timeout=30)
            build_facts = parse_facts(local.stdout)
        else:
            build_facts = facts
        return judge_preflight(self.recipe, facts, build_facts=build_facts, build_on=self.build_on)

    def check_tree(self) -> None:
        """Refuse a tree that is not of the recipe's flavour, before anything is uploaded."""
        if not self.tree.is_dir():
            raise ConfigError(f"device {self.device}: [shadowbox] source {self.tree} is not a folder")
        why = tree_mismatch(self.recipe, self.tree)
        if why is not None:
            raise self._named(DeployFailed("tree-mismatch", why))

    def _named(self, exc: DeployFailed) -> DeployFailed:
        exc.recipe, exc.tree = self.recipe.name, str(self.tree)
        return exc

    def _stage(self) -> Path:
        """A controller-side copy of the deployable files of the tree (:func:`tree_files`), made once.

        It is what is built (controller builds) and what is uploaded, so the device never receives the
        tree's ``.git`` or untracked files; :meth:`cleanup` removes it (no ``rig-build-*`` pile-up).
        """
        if self._staged is None:
            self._staging = Path(tempfile.mkdtemp(prefix=f"rig-build-{self.device}-"))
            self._staged = stage_tree(self.tree, self._staging / self.tree.name)
        return self._staged

    def cleanup(self) -> None:
        """Remove the controller-side copy (the module is on the device by then, or the deploy failed)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = self._staged = None

    def build_on_controller(self, kernel_release: str) -> Path:
        """Build a copy of the tree against the controller's headers; return the built copy.

        A copy, so the user's tree (or the rig's installed sbsim source) is never written to. A
        failed build removes its copy (the log is in the DeployFailed).
        """
        headers = self.kernel_headers or Path(f"/usr/src/linux-headers-{check_kernel_release(kernel_release)}")
        if not headers.is_dir():
            raise DeployFailed(
                "build-failed",
                f"kernel headers {headers} not found on the controller; install "
                f"linux-headers-{kernel_release} or set [shadowbox] kernel_headers",
            )
        build_dir = self._stage()
        key = self.build_key(build_dir, headers, kernel_release) if self.build_cache is not None else ""
        if key and self._from_cache(key, build_dir):
            return build_dir
        try:
            self._build_copy(build_dir, headers)
        except DeployFailed:
            self.cleanup()
            raise
        if key:
            self._to_cache(key, build_dir)
        return build_dir

    def build_key(self, staged: Path, headers: Path, kernel_release: str) -> str:
        """What a controller build's output depends on, hashed: the staged tree's bytes, the recipe's
        build, and the headers (path, release, and the stamps of the files kbuild reads first).

        Why the whole tree and not only the sources: which files a Makefile reads cannot be told from
        outside, so any changed byte is a new build. A commit that touched nothing of the tree (the
        same tree hash in git) gives the same key and reuses the build; a reinstalled headers package
        changes the stamps and builds anew.
        """
        from rig.runs.regress import tree_digest

        h = hashlib.sha256()
        stamps = []
        for name in ("Makefile", "Module.symvers", "include/config/kernel.release"):
            f = headers / name
            st = f.stat() if f.exists() else None
            stamps.append(f"{name}:{st.st_size}:{st.st_mtime_ns}" if st else f"{name}:-")
        for part in (tree_digest(staged), self.recipe.name, self.recipe.build, self.recipe.build_dir,
                     "|".join(self.recipe.modules), str(headers.resolve()), kernel_release, *stamps):  # fmt: skip
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:24]

    def _from_cache(self, key: str, build_dir: Path) -> bool:
        """Copy the cached modules of ``key`` into the staged copy; False (build it) if any is missing."""
        assert self.build_cache is not None
        entry = self.build_cache / key
        if not all((entry / m).is_file() for m in self.recipe.modules):
            return False
        for m in self.recipe.modules:
            (build_dir / m).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry / m, build_dir / m)
        self.reused_build = str(entry)
        return True

    def _to_cache(self, key: str, build_dir: Path) -> None:
        """Keep the modules of a build that passed :meth:`_judge_modules` (written aside, then renamed:
        two deploys of the same tree at once leave one whole entry, never half of one)."""
        assert self.build_cache is not None
        self.build_cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.build_cache))
        try:
            for m in self.recipe.modules:
                (tmp / m).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(build_dir / m, tmp / m)
            os.rename(tmp, self.build_cache / key)
        except OSError:
            pass  # another deploy stored the same build first, or the cache is not writable: no reuse
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _build_copy(self, build_dir: Path, headers: Path) -> None:
        """Run the recipe's build in the controller-side copy and check the modules it must leave."""
        work = build_dir / self.recipe.build_dir
        started = time.time()
        try:
            proc = subprocess.run(
                ["sh", "-c", self.recipe.build],
                cwd=work,
                env={"KDIR": str(headers), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PWD": str(work)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            raise DeployFailed("build-failed", "the build on the controller did not finish in 600 s", out) from None
        if proc.returncode != 0:
            raise DeployFailed(
                "build-failed",
                _build_failure(self.recipe.build, proc.returncode, "the controller", proc.stdout),
                proc.stdout,
            )
        found = {}
        for m in self.recipe.modules:
            f = build_dir / m
            found[m] = int(f.stat().st_mtime) if f.is_file() else None
        self._judge_modules(found, int(started), "the controller", proc.stdout)

    def _judge_modules(self, found: dict[str, int | None], started: int, where: str, output: str) -> None:
        """Every module the recipe loads exists and is newer than the build's start, or ``build-failed``.

        Why: make's exit status is not enough. gooroom's ``.ONESHELL`` Makefile (no ``-e``) exits 0
        whatever fails, and a tree that ships a stale ``.ko`` would be loaded as if it were built.
        """
        missing = [m for m, t in found.items() if t is None]
        stale = [m for m, t in found.items() if t is not None and t < started - 1]
        if missing or stale:
            what = []
            if missing:
                what.append("built no " + ", ".join(missing))
            if stale:
                what.append(", ".join(stale) + " older than the build's start (not rebuilt)")
            last = _last_lines(output, 3)
            raise DeployFailed(
                "build-failed",
                f"'{self.recipe.build}' exited 0 on {where} but {'; '.join(what)}"
                + (f"; its last lines: {last}" if last else ""),
                output,
            )

    def build_on_device(self, remote: str) -> float:
        t0 = time.monotonic()
        where = f"{self.device}"
        folder = remote + ("/" + self.recipe.build_dir if self.recipe.build_dir else "")
        started = self._device_time()
        if self.recipe.system_map_dir:
            self._place_system_map(remote)
        cmd = f"cd {shlex.quote(folder)} && {self.recipe.build}"
        try:
            # as the owner of the folder (root with sudo: see make_remote_dir)
            res = self.shell.run("sh -c " + shlex.quote(cmd + " 2>&1"), timeout=900, sudo=self.sudo)
        except CommandTimeout as exc:
            raise DeployFailed("build-failed", f"build did not finish: {exc}") from None
        output = res.out + res.err
        if res.exit_status != 0:
            raise DeployFailed(
                "build-failed", _build_failure(self.recipe.build, res.exit_status, where, output), output
            )
        self._judge_modules(self._device_modules(remote), started, where, output)
        return time.monotonic() - t0

    def _device_time(self) -> int:
        try:
            return int(self.shell.run("date +%s", timeout=10).out.strip())
        except (RigError, ValueError):
            return 0

    def _device_modules(self, remote: str) -> dict[str, int | None]:
        script = 'for m in "$@"; do if [ -f "$m" ]; then echo "$(stat -c %Y "$m") $m"; else echo "- $m"; fi; done'
        paths = [f"{remote}/{m}" for m in self.recipe.modules]
        res = self.shell.run(
            "sh -c " + shlex.quote(script) + " sh " + " ".join(map(shlex.quote, paths)), timeout=15, sudo=self.sudo
        )
        stamps: dict[str, int | None] = {m: None for m in self.recipe.modules}
        for line in res.out.splitlines():
            stamp, _, path = line.partition(" ")
            m = path.removeprefix(remote + "/")
            if m in stamps and stamp.isdigit():
                stamps[m] = int(stamp)
        return stamps

    def _place_system_map(self, remote: str) -> None:
        """Put the running kernel's System.map where the tree reads it: ``<dir>/<uname -v>.map``.

        The tree compares the file name with ``uname -v`` (strcmp), so the name is the device's own
        ``uname -v``; the map comes from ``/boot`` or, failing that, ``/proc/kallsyms`` (root).
        """
        d = f"{remote}/{self.recipe.system_map_dir}"
        script = (
            f'd={shlex.quote(d)}; mkdir -p "$d"; f="$d/$(uname -v).map"; m="/boot/System.map-$(uname -r)"; '
            'if [ -r "$m" ]; then cp "$m" "$f"; else grep -v \'\\[\' /proc/kallsyms > "$f"; fi; '
            'chmod a+r "$f"'
        )
        with_suppress = self.shell.run("sh -c " + shlex.quote(script), timeout=60, sudo=self.sudo)
        if with_suppress.exit_status != 0:
            log.warning("device %s: System.map not placed: %s", self.device, with_suppress.err.strip())

    def deploy(self, *, skip_preflight_failures: bool = False) -> DeployResult:
        """Tree check, preflight, upload, build, insmod, start-logging, the start marker and the result code.

        Every failure is a :class:`DeployFailed` carrying the checks, the build output and the
        kernel lines, so the report shows the tool's, compiler's and kernel's own words.
        """
        self.check_tree()
        checks = self.preflight()
        forced = any(c.ok is False for c in checks)
        if forced and not skip_preflight_failures:
            raise self._named(PreflightFailed(checks))
        result = DeployResult(
            self.recipe.name, checks, tree=str(self.tree), commit=git_commit(self.tree), forced=forced
        )
        try:
            self._deploy(result)
        except DeployFailed as exc:
            exc.checks = exc.checks or checks
            exc.forced = forced
            raise self._named(exc) from None
        return result

    def _deploy(self, result: DeployResult) -> None:
        kernel = self.shell.run("uname -r", timeout=10).out.strip()
        try:
            upload = self._stage()
            if self.build_on == "controller":
                t0 = time.monotonic()
                upload = self.build_on_controller(kernel)
                result.build_seconds = time.monotonic() - t0
                if self.reused_build:
                    result.notes.append(f"build reused: this tree, recipe and headers were built before "
                                        f"({self.reused_build})")  # fmt: skip
            remote = self.upload(upload)
        finally:
            self.cleanup()
        result.remote_dir = remote
        if self.build_on == "device":
            result.build_seconds = self.build_on_device(remote)
        mark = self.console.mark() if self.console is not None else 0
        self._kmsg_anchor = _last_line(self._kernel_log())
        self.reached_insmod = True
        t0 = time.monotonic()
        for i, module in enumerate(self.recipe.modules):
            last = i == len(self.recipe.modules) - 1
            self._insmod(insmod_argv(f"{remote}/{module}", self.module_params if last else {}), module)
        # Loaded: the files are not needed again. (After a refused or hung insmod they stay, root's
        # and 0700, for a look by hand: asking a hung device to remove them would only wait.)
        self._remove_remote(remote)
        result.load_seconds = time.monotonic() - t0
        if self.recipe.start_logging:
            result.notes.extend(self._start_logging())
        self._await_start(mark, result)

    def _start_logging(self) -> list[str]:
        """gooroom: ask the helper to drain its buffer (what gop-helper does after insmod)."""
        try:
            res = self.shell.run("sh -c " + shlex.quote(self.recipe.start_logging), timeout=30, sudo=self.sudo)
        except RigError as exc:
            return [f"start-logging not sent ({exc})"]
        if res.exit_status != 0:
            return [
                f"start-logging not sent: {_last_lines(res.out + res.err, 2) or f'exit {res.exit_status}'}; "
                "lines Shadow-box prints in VMX root stay in the helper's buffer"
            ]
        return ["start-logging sent (ioctl START_LOGGING on /dev/sb-helper)"]

    def new_kernel_lines(self) -> list[str]:
        """Kernel lines printed since just before the first insmod (all of this boot if unknown)."""
        return _after_anchor(self._kernel_log(), getattr(self, "_kmsg_anchor", ""))

    def make_remote_dir(self) -> str:
        """A fresh folder on the device for this deploy: ``mktemp -d`` (0700), by root when sudo is used.

        Why not a fixed ``/tmp`` path: another user of the device could plant that path (a symlink,
        a module of their own) and have root insmod what they put there.
        """
        res = self.shell.run(["mktemp", "-d", REMOTE_TEMPLATE], timeout=15, sudo=self.sudo)
        path = res.out.strip()
        if res.exit_status != 0 or not path.startswith(REMOTE_TEMPLATE.rstrip("X")) or "\n" in path:
            raise DeviceError(f"device {self.device}: mktemp -d {REMOTE_TEMPLATE} failed: {res.err.strip()[-200:]}")
        return path

    def upload(self, tree: Path, remote: str | None = None) -> str:
        """Copy ``tree`` to ``remote`` (default: a fresh :meth:`make_remote_dir`) on the device; once more
        if SSH drops. Returns the remote folder.

        Why one retry: the step is idempotent (the folder is removed and written whole again), and a
        long transfer is what a flaky link, a NAT timeout or a console-server-grade switch kills
        first. Why only one: a path that drops the same transfer twice will drop it again.
        Then the device is asked a short command: if it answers, the *path* is at fault and this is
        a :class:`rig.errors.LabFault` naming the device and the step; if it does not, the device
        stopped answering (:class:`rig.transports.ssh.SshUnreachable`, which the monitor judges). Neither is
        ever reported as a Shadow-box failure (:class:`DeployFailed`).
        """
        remote = remote or self.make_remote_dir()
        shown = self.tree if tree == self._staged else tree  # the user's tree, not the staging copy
        step = f"deploy step 'upload' ({shown} -> {remote})"
        lost: SshUnreachable | None = None
        for attempt in (1, 2):
            try:
                if attempt == 2:  # empty the folder, keep it (its owner and mode are what make it safe)
                    empty = 'cd -- "$1" && rm -rf -- ./* ./.[!.]* ./..?*'  # busybox find has no -delete
                    self.shell.run(["sh", "-c", empty, "sh", remote], timeout=30, sudo=self.sudo)
                self.shell.upload_tree(tree, remote, sudo=self.sudo)
                return remote
            except SshUnreachable as exc:
                lost = exc
                if attempt == 1:
                    log.warning("device %s: %s lost the SSH connection (%s); uploading again", self.device, step, exc)
        try:
            self.shell.run("true", timeout=15)
        except RigError as exc:
            raise SshUnreachable(
                f"device {self.device}: {step}: the SSH connection dropped twice and the device no longer "
                f"answers ({exc})"
            ) from None
        raise LabFault(
            f"device {self.device}: {step} lost the SSH connection twice ({lost}), while the device still "
            "answers short commands: the network path between the controller and the device drops long "
            "transfers; check the cable, switch, VPN or forwarder in between, then run again",
            component="ssh",
        )

    def _remove_remote(self, remote: str) -> None:
        try:
            self.shell.run(["rm", "-rf", "--", remote], timeout=15, sudo=self.sudo)
        except RigError as exc:  # an insmod that hung the device: the folder does not matter then
            log.debug("device %s: could not remove %s: %s", self.device, remote, exc)

    def _insmod(self, cmd: list[str], module: str) -> None:
        try:
            res = self.shell.run(cmd, timeout=self.start_timeout, sudo=self.sudo)
        except CommandTimeout:
            lines = self.new_kernel_lines()
            reason = _match_failure(self.recipe, "\n".join(lines)) or self._console_reason()
            key, _, detail = (reason or "insmod-hang: insmod never returned").partition(": ")
            raise DeployFailed(
                key,
                f"{module}: {detail} (insmod still running after {self.start_timeout:g} s)",
                kernel_lines=lines,
            ) from None
        if res.exit_status != 0:
            lines = self.new_kernel_lines()
            text = "\n".join(lines)
            found = _match_failure(self.recipe, text) or _match_code(self.recipe, text) or self._console_reason()
            key, _, detail = (found or "insmod-failed: insmod failed").partition(": ")
            raise DeployFailed(key, f"{module}: {detail}; insmod said: {res.err.strip()[-300:]}", kernel_lines=lines)

    def _await_start(self, mark: int, result: DeployResult) -> None:
        """Wait for the success marker and the result code in the kernel lines printed since insmod."""
        deadline = time.monotonic() + self.start_timeout
        lines: list[str] = []
        text = ""
        while time.monotonic() < deadline:
            lines = self.new_kernel_lines()
            text = "\n".join(lines)
            if self.recipe.success_marker in text:
                break
            reason = _match_failure(self.recipe, text) or _match_code(self.recipe, text)
            if reason:
                key, _, detail = reason.partition(": ")
                raise DeployFailed(key, detail, kernel_lines=lines)
            time.sleep(0.5)
        else:
            raise DeployFailed(
                "no-start-marker",
                f"'{self.recipe.success_marker}' not seen within {self.start_timeout:g} s",
                kernel_lines=lines,
            )
        codes = re.findall(self.recipe.result_code, text)
        result.result_code = codes[-1] if codes else None
        result.markers = [ln.strip() for ln in lines if "shadow-box:" in ln][-40:]
        result.kernel_lines = lines[-40:]
        if result.result_code is not None and result.result_code != self.recipe.result_ok:
            named = dict(self.recipe.result_codes).get(result.result_code)
            key, _, detail = (named or "bad-result-code: ").partition(": ")
            raise DeployFailed(
                key, detail or f"result code {result.result_code}, expected {self.recipe.result_ok}", kernel_lines=lines
            )

    def _kernel_log(self) -> str:
        try:
            return self.shell.run("dmesg", timeout=15, sudo=self.sudo).out
        except RigError:
            return ""

    def _console_reason(self) -> str | None:
        if self.console is None:
            return None
        pattern = "|".join(f"(?:{p})" for p, _ in self.recipe.failures)
        try:
            line = self.console.expect(pattern, timeout=1.0, since=0)
        except RigError:
            return None
        return _match_failure(self.recipe, str(getattr(line, "text", line)))


def _last_line(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def _after_anchor(text: str, anchor: str) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    if anchor:
        for i in range(len(lines) - 1, -1, -1):
            if lines[i] == anchor:
                return lines[i + 1 :]
    return lines


_NOISE = re.compile(r"^make(\[\d+\])?: (Entering|Leaving) directory|^\s*$")
_TELLING = re.compile(r"error|Error|ERROR|not found|No such file|Stop\.|SyntaxError|undefined|fatal")


def _last_lines(text: str, n: int) -> str:
    """The last ``n`` lines that say something (errors first; make's directory chatter left out)."""
    lines = [ln.strip() for ln in text.rstrip().splitlines() if not _NOISE.search(ln)]
    telling = [ln for ln in lines if _TELLING.search(ln)]
    return " | ".join((telling or lines)[-n:])


_NOT_FOUND = re.compile(r"(?:^|\s)(?:sh: )?(?:\d+: )?([\w.+-]+): (?:command )?not found", re.M)


def _build_failure(command: str, status: int, where: str, output: str) -> str:
    """``'make' exited 127 on lab-1: sh: make: not found -- install make ...``: the tool's own words first."""
    msg = f"'{command}' exited {status} on {where}"
    last = _last_lines(output, 3)
    if last:
        msg += f": {last}"
    m = _NOT_FOUND.search(output)
    if m:
        tool = m.group(1)
        fix = TOOL_FIXES.get(tool, f"install {tool}")
        msg += f" -- '{tool}' is not installed on {where}: {fix}, or build elsewhere ([shadowbox] build_on)"
    return msg


def _match_code(recipe: Recipe, text: str) -> str | None:
    """A result code other than success, named (upstream ``errorcode=7`` says nothing else)."""
    codes = re.findall(recipe.result_code, text)
    if codes and codes[-1] != recipe.result_ok:
        return dict(recipe.result_codes).get(codes[-1], f"bad-result-code: result code {codes[-1]}")
    return None


def _match_failure(recipe: Recipe, text: str) -> str | None:
    for pattern, reason in recipe.failures:
        if re.search(pattern, text):
            return reason
    return None


def recipe_for(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown Shadow-box recipe {name!r}; known: {', '.join(RECIPES)}") from None
