"""Deploy Shadow-box to a device: preflight, upload, build, insmod, and read what it says.

Why recipes are data: upstream Shadow-box, the gooroom fork and the lab's sbsim stand-in differ only
in commands, file names and console markers, so they are three :class:`Recipe` values driven by one
mechanism (:class:`Deployer`), not three code paths. A new fork is a new recipe.

Shadow-box cannot be unloaded (rmmod is trapped); the rig never pretends to. A reboot through the
device's power control is the only way back to a clean state.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rig.errors import CommandTimeout, ConfigError, DeviceError, LabFault, RigError
from rig.inventory import check_module_params
from rig.protocols import LineSource, Shell
from rig.ssh import SshUnreachable

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


@dataclass(frozen=True)
class Recipe:
    """How one Shadow-box flavour is built, loaded and judged. Pure data."""

    name: str
    #: Shell command run in the tree to build (on the device, or on the controller with KDIR set).
    build: str
    #: Modules to insmod, in order, relative to the tree. The last one is Shadow-box proper.
    modules: tuple[str, ...]
    #: Console/kmsg lines meaning "started"; the result code regex and its success value.
    success_marker: str = "Execution Complete"
    result_code: str = r"errorcode=(\d+)"
    result_ok: str = "0"
    #: Failure markers -> the named reason a report shows.
    failures: tuple[tuple[str, str], ...] = (
        (r"VMX not support", "no-vmx: the CPU has no VT-x (or it is not exposed to this kernel)"),
        (r"VMX is disabled by BIOS", "vmx-disabled: VT-x is disabled in the firmware setup"),
        (r"Kernel version is not supported", "unsupported-kernel: the tree does not support this kernel"),
        (r"HANG Error SYMBOL_NULL|is NULL", "missing-symbol: a kernel symbol the tree needs is missing"),
        (r"Thread run fail", "thread-fail: a VM thread did not start"),
        (r"Execution Fail", "start-failed: Shadow-box reported Execution Fail"),
    )
    #: What the device must have for this recipe (preflight).
    needs_vmx: bool = True
    needs_no_jump_label: bool = True
    needs_system_map: bool = False
    needs_intremap_off: bool = True
    #: Kernel series the tree is known to build for (prefixes); empty = do not check.
    kernels: tuple[str, ...] = ()
    #: Build location when the inventory does not say.
    default_build_on: Literal["device", "controller"] = "device"


RECIPES: dict[str, Recipe] = {
    "upstream": Recipe(
        name="upstream",
        build="make",
        modules=("shadow_box.ko",),
        needs_system_map=True,
        kernels=("4.",),
    ),
    "gooroom": Recipe(
        name="gooroom",
        build="make",
        modules=("shadow_box_helper.ko", "shadow_box.ko"),
        result_code=r"GRMCODE=(\d+)",
        result_ok="020008",
        kernels=("4.9.", "4.19.", "5.10."),
    ),
    "sbsim": Recipe(
        name="sbsim",
        build='make -C "$KDIR" M="$PWD" modules',
        modules=("sbsim.ko",),
        needs_vmx=False,
        needs_no_jump_label=False,
        needs_intremap_off=False,
        default_build_on="controller",
    ),
}


# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool | None  # None = could not tell
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


class PreflightFailed(DeviceError):
    def __init__(self, checks: list[Check]) -> None:
        bad = [c for c in checks if c.ok is False]
        super().__init__("preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in bad))
        self.checks = checks


class DeployFailed(DeviceError):
    """Deploy failed for a named reason (``reason`` is the short key, e.g. ``no-vmx``)."""

    def __init__(self, reason: str, detail: str, log: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.log = log


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

    def to_json(self) -> dict[str, object]:
        return {
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
"""


def parse_facts(text: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            facts[k.strip()] = v.strip()
    return facts


def judge_preflight(recipe: Recipe, facts: dict[str, str], min_free_kb: int = 50_000) -> list[Check]:
    """Turn device facts into named checks. Pure: testable on facts from any laptop."""
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
        ok = facts.get("systemmap") == "yes"
        checks.append(Check("system-map", ok, f"/boot/System.map-{kernel} " + ("present" if ok else "missing")))
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
        self._staging: Path | None = None
        self._staged: Path | None = None

    def preflight(self) -> list[Check]:
        res = self.shell.run("sh -c " + shlex.quote(PREFLIGHT_SCRIPT), timeout=30, sudo=self.sudo)
        return judge_preflight(self.recipe, parse_facts(res.out))

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
        proc = subprocess.run(
            ["sh", "-c", self.recipe.build],
            cwd=build_dir,
            env={"KDIR": str(headers), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PWD": str(build_dir)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            self.cleanup()
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise DeployFailed(
                "build-failed",
                f"'{self.recipe.build}' exited {proc.returncode} on the controller (tree {self.tree})",
                tail,
            )
        return build_dir

    def build_on_device(self, remote: str) -> float:
        t0 = time.monotonic()
        cmd = f"cd {shlex.quote(remote)} && {self.recipe.build}"
        try:
            # as the owner of the folder (root with sudo: see make_remote_dir)
            res = self.shell.run("sh -c " + shlex.quote(cmd), timeout=900, sudo=self.sudo)
        except CommandTimeout as exc:
            raise DeployFailed("build-failed", f"build did not finish: {exc}") from None
        if res.exit_status != 0:
            raise DeployFailed(
                "build-failed",
                f"'{self.recipe.build}' exited {res.exit_status} on {self.device}",
                (res.out + res.err)[-2000:],
            )
        return time.monotonic() - t0

    def deploy(self, *, skip_preflight_failures: bool = False) -> DeployResult:
        """Preflight, upload, build, insmod, wait for the start marker and the result code."""
        if not self.tree.is_dir():
            raise ConfigError(f"device {self.device}: [shadowbox] source {self.tree} is not a folder")
        checks = self.preflight()
        if any(c.ok is False for c in checks) and not skip_preflight_failures:
            raise PreflightFailed(checks)
        result = DeployResult(self.recipe.name, checks, tree=str(self.tree), commit=git_commit(self.tree))
        kernel = self.shell.run("uname -r", timeout=10).out.strip()
        try:
            upload = self._stage()
            if self.build_on == "controller":
                t0 = time.monotonic()
                upload = self.build_on_controller(kernel)
                result.build_seconds = time.monotonic() - t0
            remote = self.upload(upload)
        finally:
            self.cleanup()
        result.remote_dir = remote
        if self.build_on == "device":
            result.build_seconds = self.build_on_device(remote)
        mark = self.console.mark() if self.console is not None else 0
        t0 = time.monotonic()
        for i, module in enumerate(self.recipe.modules):
            last = i == len(self.recipe.modules) - 1
            self._insmod(insmod_argv(f"{remote}/{module}", self.module_params if last else {}), module)
        # Loaded: the files are not needed again. (After a refused or hung insmod they stay, root's
        # and 0700, for a look by hand: asking a hung device to remove them would only wait.)
        self._remove_remote(remote)
        result.load_seconds = time.monotonic() - t0
        self._await_start(mark, result)
        return result

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
        stopped answering (:class:`rig.ssh.SshUnreachable`, which the monitor judges). Neither is
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
            reason = self._console_reason() or "insmod-hang: insmod never returned"
            key, _, detail = reason.partition(": ")
            raise DeployFailed(
                key, f"{module}: {detail} (insmod still running after {self.start_timeout:g} s)"
            ) from None
        if res.exit_status != 0:
            found = self._log_reason() or self._console_reason()
            key, _, detail = (found or "insmod-failed: insmod failed").partition(": ")
            raise DeployFailed(key, f"{module}: {detail}; insmod said: {res.err.strip()[-300:]}")

    def _await_start(self, mark: int, result: DeployResult) -> None:
        """Wait for the success marker and the result code (console first, else the kernel log)."""
        deadline = time.monotonic() + self.start_timeout
        text = ""
        while time.monotonic() < deadline:
            text = self._kernel_log()
            if self.recipe.success_marker in text:
                break
            reason = _match_failure(self.recipe, text)
            if reason:
                key, _, detail = reason.partition(": ")
                raise DeployFailed(key, detail, text[-2000:])
            time.sleep(0.5)
        else:
            raise DeployFailed(
                "no-start-marker",
                f"'{self.recipe.success_marker}' not seen within {self.start_timeout:g} s",
                text[-2000:],
            )
        codes = re.findall(self.recipe.result_code, text)
        result.result_code = codes[-1] if codes else None
        result.markers = [ln.strip() for ln in text.splitlines() if "shadow-box:" in ln][-40:]
        if result.result_code is not None and result.result_code != self.recipe.result_ok:
            raise DeployFailed(
                "bad-result-code", f"result code {result.result_code}, expected {self.recipe.result_ok}", text[-2000:]
            )

    def _kernel_log(self) -> str:
        try:
            return self.shell.run("dmesg", timeout=15, sudo=self.sudo).out
        except RigError:
            return ""

    def _log_reason(self) -> str | None:
        return _match_failure(self.recipe, self._kernel_log())

    def _console_reason(self) -> str | None:
        if self.console is None:
            return None
        pattern = "|".join(f"(?:{p})" for p, _ in self.recipe.failures)
        try:
            line = self.console.expect(pattern, timeout=1.0, since=0)
        except RigError:
            return None
        return _match_failure(self.recipe, str(getattr(line, "text", line)))


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
