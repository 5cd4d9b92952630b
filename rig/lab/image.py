"""The lab's DUT image: Debian's own kernel plus an initramfs built from Debian packages on this host.

Why build it here, from the host's packages: the lab must work offline on a fresh Debian machine, and
the guest kernel must be exactly the one whose headers the rig builds sbsim against (the module must
load in the guest). So the kernel is used as-is -- the host's ``/boot/vmlinuz-<ver>``, or a kernel
fetched from Debian's archive into the kernel cache (:mod:`rig.lab.kernels`, e.g. Debian 11's 5.10)
-- and the initramfs is assembled from busybox-static, dropbear, OpenSSH's sftp-server, *that
kernel's* e1000 module and the shared libraries those binaries need. One image per kernel: the
kernel's release and package version are inputs of the image's hash.

Why a cache keyed by a hash of the inputs: a build takes seconds, but ``rig lab up`` and every test
session would pay it. The image lives in ``<lab>/image/<hash>/`` and is rebuilt only when the kernel,
a package version, a guest-init file or this builder's version changes. The build is staged in a
temporary folder and renamed into place, so concurrent builders never see half an image.

Per-guest identity (hostname, SSH host key, authorized key) is NOT in the shared image: it goes in a
small second cpio archive appended to the shared one (Linux unpacks concatenated archives in order),
see :func:`guest_initrd`. The shared image therefore never depends on keys.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rig.errors import LabFault
from rig.files import write_atomic
from rig.lab import kernels
from rig.lab.kernels import LabKernel

#: Bump when the builder's output changes for the same inputs (forces a rebuild everywhere).
BUILDER_VERSION = "3"

#: Debian packages whose versions are inputs of the image.
IMAGE_PACKAGES = ("busybox-static", "dropbear-bin", "openssh-sftp-server")

#: Kernel modules the guest needs that Debian builds as modules (loaded by /init, deps first).
GUEST_MODULES = ("e1000",)
#: Modules /init loads itself, with parameters from the kernel command line (as modprobe would):
#: netconsole (``netconsole=`` on the command line, or none: dynamic targets in configfs) and
#: ramoops (``ramoops.mem_address=...``; only with a reserved region, see rig.lab.manager).
#: Their dependencies (configfs, reed_solomon) join the load order.
SELF_LOADED_MODULES = ("netconsole", "ramoops")

BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")

#: Files of rig/lab/guest-init/ and where they go in the guest, with their modes.
GUEST_INIT_FILES = {
    "init": ("init", 0o755),
    "inittab": ("etc/inittab", 0o644),
    "nohup": ("bin/nohup", 0o755),
    "profile": ("etc/profile", 0o644),
}


def _run(argv: list[str], what: str, *, input_bytes: bytes | None = None) -> bytes:
    """Run a build tool; on failure raise LabFault naming the tool and what to install."""
    try:
        proc = subprocess.run(argv, input=input_bytes, capture_output=True, check=False)
    except FileNotFoundError:
        raise LabFault(
            f"{what}: program {argv[0]!r} not found; run `make deps` (tools/bootstrap.sh)", component="image"
        ) from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-800:]
        raise LabFault(f"{what}: {argv[0]} exited with {proc.returncode}: {err}", component="image")
    return proc.stdout


def _version_key(version: str) -> list[tuple[int, str]]:
    """Sort key so that 6.1.0-57 sorts after 6.1.0-9 (numbers compare as numbers)."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)]


def kernel_version() -> str:
    """The host kernel the lab boots: ``RIG_LAB_KERNEL``, else the one ``linux-image-amd64`` depends on.

    The one place that answers "which host kernel": the lab, sbsim's builder and the tests all ask
    here, because Debian's archive replaces point releases (6.1.0-56 -> 6.1.0-57) and a version
    written anywhere else goes stale on the next fresh machine. Falls back to the newest
    ``/boot/vmlinuz-*`` that has modules installed. The headers of this same version are what sbsim
    is built against (see :func:`headers_dir`).
    """
    env = os.environ.get("RIG_LAB_KERNEL")
    if env:
        return env
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Depends}", "linux-image-amd64"],
            capture_output=True, text=True, check=False,
        ).stdout
    except FileNotFoundError:
        out = ""
    m = re.search(r"linux-image-(\S+?)[\s,(]", out + " ")
    if m and Path(f"/boot/vmlinuz-{m.group(1)}").exists():
        return m.group(1)
    candidates = sorted(
        (p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")),
        key=_version_key, reverse=True,
    )
    for ver in candidates:
        if Path(f"/lib/modules/{ver}").is_dir():
            return ver
    raise LabFault(
        "no lab kernel: /boot/vmlinuz-<ver> with /lib/modules/<ver> not found; "
        "run `make deps` (apt-get install linux-image-amd64 linux-headers-amd64)",
        component="image",
    )


def lab_kernel(kernel: str | LabKernel | None = None) -> LabKernel:
    """The :class:`LabKernel` for a release (host or kernel cache; no network), default the host's."""
    if isinstance(kernel, LabKernel):
        return kernel
    release = kernel or kernel_version()
    found = kernels.find_kernel(release)
    if found is None:
        raise LabFault(
            f"kernel {release}: neither installed on the host (/boot/vmlinuz-{release}, /lib/modules/{release}) "
            f"nor in the kernel cache {kernels.cache_dir()}; `rig lab up --kernel {kernels.series_of(release)}` "
            "fetches Debian kernels, `make deps` installs the host's",
            component="image",
        )
    return found


def kernel_path(version: str | None = None) -> Path:
    """The lab kernel's image (readable: QEMU loads it with -kernel): /boot or the kernel cache."""
    k = kernels.find_kernel(version or kernel_version())
    return k.vmlinuz if k is not None else Path(f"/boot/vmlinuz-{version or kernel_version()}")


def headers_dir(version: str | None = None) -> Path:
    """Where to build out-of-tree modules (sbsim) for kernel ``version`` (default: the host's lab kernel).

    ``/usr/src/linux-headers-<ver>`` for the host's kernels, the fixed-up headers in the kernel cache
    for fetched ones (see rig.lab.kernels).
    """
    release = version or kernel_version()
    k = kernels.find_kernel(release)
    return k.headers if k is not None else Path(f"/usr/src/linux-headers-{release}")


def _package_version(pkg: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout:
        raise LabFault(
            f"Debian package {pkg} is not installed; run `make deps` (apt-get install {pkg})",
            component="image",
        )
    return out.stdout.strip()


def _guest_init_dir() -> Path:
    return Path(str(resources.files("rig.lab").joinpath("guest-init")))


@dataclass(frozen=True)
class ImageInputs:
    """Everything the image depends on; its hash names the cache folder."""

    kernel: str
    kernel_package: str
    packages: dict[str, str]
    init_files: dict[str, str]  # name -> sha256 of content
    modules: tuple[str, ...]
    builder: str

    def digest(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def image_inputs(kernel: str | LabKernel | None = None) -> ImageInputs:
    """Collect the inputs (cheap: dpkg-query and a few small files), without building anything."""
    k = lab_kernel(kernel)
    init_dir = _guest_init_dir()
    package = _package_version(f"linux-image-{k.release}") if k.origin == "host" else k.package_version
    return ImageInputs(
        kernel=k.release,
        kernel_package=package,
        packages={p: _package_version(p) for p in IMAGE_PACKAGES},
        init_files={
            n: hashlib.sha256((init_dir / n).read_bytes()).hexdigest() for n in sorted(GUEST_INIT_FILES)
        },
        modules=GUEST_MODULES + SELF_LOADED_MODULES,
        builder=BUILDER_VERSION,
    )


@dataclass(frozen=True)
class Image:
    """A built image: the kernel to boot and the shared initramfs."""

    kernel_version: str
    kernel: Path
    initramfs: Path
    digest: str
    dir: Path
    #: True when this call built the image, False when it came from the cache.
    built: bool
    #: Build modules for this image's kernel here (see headers_dir).
    headers: Path | None = None
    #: "host" or where the kernel was fetched from ("debian bullseye-security").
    kernel_origin: str = "host"


def _ldd_deps(binary: Path) -> list[Path]:
    """Shared libraries (and the loader) a dynamic binary needs, as absolute paths."""
    out = _run(["ldd", str(binary)], f"listing libraries of {binary}").decode()
    libs: list[Path] = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _module_order(kver: str, names: tuple[str, ...], moddir: Path | None = None) -> list[Path]:
    """Module files for ``names`` with their dependencies first, from ``moddir``'s modules.dep."""
    moddir = moddir or Path(f"/lib/modules/{kver}")
    try:
        dep_text = (moddir / "modules.dep").read_text()
    except OSError as exc:
        raise LabFault(
            f"{moddir}/modules.dep: {exc.strerror}; reinstall linux-image-{kver}", component="image"
        ) from None
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in dep_text.splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        base = Path(mod).name.split(".ko")[0].replace("-", "_")
        by_name[base] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        for d in reversed(deps.get(mod, [])):  # modules.dep lists deepest dependency last
            visit(d)
        if mod not in order:
            order.append(mod)

    for n in names:
        found = by_name.get(n.replace("-", "_"))
        if found is None:
            raise LabFault(f"kernel {kver} has no module {n!r} in {moddir}/modules.dep", component="image")
        visit(found)
    return [moddir / m for m in order]


def _read_module(path: Path) -> bytes:
    """Module bytes, decompressed: busybox insmod does not read .ko.xz / .ko.zst / .ko.gz."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return _run(["zstd", "-dc", str(path)], f"decompressing {path}")
    return data


def _copy_file(src: Path, dst: Path, mode: int | None = None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # follows symlinks: the guest gets the real bytes
    os.chmod(dst, mode if mode is not None else stat.S_IMODE(src.stat().st_mode))


def write_cpio(root: Path, out: Path) -> None:
    """Pack ``root`` as a gzip'd newc cpio (the format Linux unpacks as initramfs), owner root:root.

    GNU cpio writes the archive (the one tool that knows the format); sorting the list keeps the
    archive's order stable.
    """
    names = sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
    )
    listing = ("\n".join(["."] + names) + "\n").encode()
    archive = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
        input=listing, cwd=root, capture_output=True, check=False,
    )
    if archive.returncode != 0:
        raise LabFault(
            f"cpio failed packing {root}: {archive.stderr.decode(errors='replace').strip()}; "
            "is the `cpio` package installed? (make deps)",
            component="image",
        )
    write_atomic(out, gzip.compress(archive.stdout, compresslevel=6, mtime=0))


def _stage_rootfs(stage: Path, kernel: LabKernel) -> None:
    """Lay out the guest's root file system in ``stage``."""
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "etc", "mnt", "var", "usr/lib", "lib/modules"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    os.chmod(stage / "tmp", 0o1777)
    (stage / "root").mkdir(mode=0o700)
    os.chmod(stage / "root", 0o700)
    # One bin for everything, so every PATH (dropbear's, busybox init's, a login shell's) finds it.
    for link in ("sbin", "usr/bin", "usr/sbin"):
        (stage / link).symlink_to(os.path.relpath(stage / "bin", (stage / link).parent))
    (stage / "var/run").symlink_to("../run")

    # busybox and its applets
    _copy_file(BUSYBOX, stage / "bin/busybox", 0o755)
    applets = _run([str(BUSYBOX), "--list"], "listing busybox applets").decode().split()
    for applet in applets:
        if applet in ("busybox", "linuxrc") or "/" in applet:
            continue
        target = stage / "bin" / applet
        if not target.exists():
            target.symlink_to("busybox")

    # dropbear and sftp-server (dropbear runs /usr/lib/sftp-server for the "sftp" subsystem)
    _copy_file(DROPBEAR, stage / "bin/dropbear", 0o755)
    _copy_file(SFTP_SERVER, stage / "usr/lib/openssh/sftp-server", 0o755)
    (stage / "usr/lib/sftp-server").symlink_to("openssh/sftp-server")
    for lib in {*_ldd_deps(DROPBEAR), *_ldd_deps(SFTP_SERVER)}:
        _copy_file(lib, stage / lib.relative_to("/"), 0o755)

    # modules, decompressed, with the order /init loads them in
    order = []
    self_loaded = {m + ".ko" for m in SELF_LOADED_MODULES}
    for mod in _module_order(kernel.release, GUEST_MODULES + SELF_LOADED_MODULES, kernel.modules_dir):
        name = mod.name.split(".ko")[0] + ".ko"
        (stage / "lib/modules" / name).write_bytes(_read_module(mod))
        if name not in self_loaded:
            order.append(name)
    (stage / "lib/modules/load-order").write_text("\n".join(order) + "\n")

    # accounts: root with /bin/sh; '*' = no password can match, login is by public key only
    (stage / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (stage / "etc/group").write_text("root:x:0:\ntty:x:5:\n")
    (stage / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(stage / "etc/shadow", 0o600)
    (stage / "etc/shells").write_text("/bin/sh\n/bin/ash\n")
    (stage / "etc/hostname").write_text("lab\n")

    init_dir = _guest_init_dir()
    for name, (dest, mode) in GUEST_INIT_FILES.items():
        _copy_file(init_dir / name, stage / dest, mode)


def build_image(cache_dir: Path, *, kernel: str | LabKernel | None = None) -> Image:
    """Return the image for ``kernel`` (default: the host's), building it into ``cache_dir/<hash>/`` if missing.

    ``kernel`` is a release ("5.10.0-46-amd64", host or kernel cache) or a :class:`LabKernel`.
    A second call with unchanged inputs does no work (``Image.built`` is False) and leaves the
    cached files untouched.
    """
    k = lab_kernel(kernel)
    inputs = image_inputs(k)
    digest = inputs.digest()
    kpath = k.vmlinuz
    if not os.access(kpath, os.R_OK):
        raise LabFault(f"{kpath} is missing or unreadable; run `make deps` or check permissions",
                       component="image")
    out = cache_dir / digest
    initramfs = out / "initramfs.cpio.gz"
    if initramfs.is_file() and (out / "manifest.json").is_file():
        return Image(inputs.kernel, kpath, initramfs, digest, out, built=False, headers=k.headers,
                     kernel_origin=k.origin)

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache_dir))
    try:
        stage = work / "root"
        stage.mkdir()
        _stage_rootfs(stage, k)
        result = work / "result"
        result.mkdir()
        write_cpio(stage, result / "initramfs.cpio.gz")
        (result / "manifest.json").write_text(
            json.dumps({"digest": digest, "kernel_image": str(kpath), **inputs.__dict__},
                       indent=2, default=list) + "\n"
        )
        try:
            os.rename(result, out)
        except OSError:
            if not initramfs.is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Image(inputs.kernel, kpath, initramfs, digest, out, built=True, headers=k.headers, kernel_origin=k.origin)


def ensure_client_key(keys_dir: Path) -> Path:
    """The lab's SSH login key ``<lab>/keys/id_ed25519`` (OpenSSH format, 0600), generated once."""
    key = keys_dir / "id_ed25519"
    if key.is_file() and key.with_suffix(".pub").is_file():
        return key
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    for stale in (key, key.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rig-lab", "-f", str(key)],
         "generating the lab's SSH key")
    os.chmod(key, 0o600)
    return key


def ensure_host_key(guest_dir: Path) -> str:
    """A guest's dropbear ed25519 host key (generated once); returns its public line ``ssh-ed25519 AAAA..``."""
    hk = guest_dir / "dropbear_ed25519_host_key"
    if not hk.is_file():
        guest_dir.mkdir(parents=True, exist_ok=True)
        _run(["dropbearkey", "-t", "ed25519", "-f", str(hk)], f"generating the host key of {guest_dir.name}")
        os.chmod(hk, 0o600)
    out = _run(["dropbearkey", "-y", "-f", str(hk)], f"reading the host key of {guest_dir.name}").decode()
    for line in out.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise LabFault(f"{hk}: dropbearkey -y printed no ssh-ed25519 line; delete the file to regenerate it",
                   component="image")


def guest_initrd(image: Image, guest_dir: Path, hostname: str, authorized_key: str) -> Path:
    """Write ``<guest_dir>/initrd``: the shared initramfs plus a per-guest cpio (hostname, keys)."""
    ensure_host_key(guest_dir)
    with tempfile.TemporaryDirectory(prefix=".identity-", dir=guest_dir) as tmp:
        root = Path(tmp) / "root"
        (root / "etc/dropbear").mkdir(parents=True)
        os.chmod(root / "etc", 0o755)
        os.chmod(root / "etc/dropbear", 0o700)
        (root / "etc/hostname").write_text(hostname + "\n")
        _copy_file(guest_dir / "dropbear_ed25519_host_key", root / "etc/dropbear/dropbear_ed25519_host_key", 0o600)
        (root / "root/.ssh").mkdir(parents=True)
        os.chmod(root / "root", 0o700)
        os.chmod(root / "root/.ssh", 0o700)
        (root / "root/.ssh/authorized_keys").write_text(authorized_key.strip() + "\n")
        os.chmod(root / "root/.ssh/authorized_keys", 0o600)
        identity = Path(tmp) / "identity.cpio.gz"
        write_cpio(root, identity)
        out = guest_dir / "initrd"
        write_atomic(out, image.initramfs.read_bytes() + identity.read_bytes())
    return out
