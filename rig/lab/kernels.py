"""Kernels a lab guest can boot: the host's own Debian kernel, or one fetched from Debian's archive.

Why fetch kernels at all: Shadow-box supports a list of kernel series (4.19, 5.10, ...) and the
rig must show a suite passing or failing *per kernel*. The host (Debian 12) has 6.1 installed; Debian
11's 5.10 is served by the same archive. Installing it with apt would need a foreign suite in the
host's apt sources (and would let apt pull foreign packages onto the host), so this module fetches
exactly four packages itself and unpacks them into a cache, never into ``/``:

- ``linux-image-<rel>-unsigned`` (vmlinuz + modules; the unsigned image is fine for QEMU),
- ``linux-headers-<rel>`` and ``linux-headers-<abi>-common`` (what ``make -C <headers> M=...`` needs),
- ``linux-kbuild-<series>`` (fixdep, modpost, objtool, ... built for amd64; they run on Debian 12).

Why the archive is trusted: the suite's ``InRelease`` is verified with ``gpgv`` against Debian's own
keyring (``debian-archive-keyring``) and must be signed by a key whose name says the suite's codename;
only the verified text is parsed; ``Packages.xz`` must match the SHA256 and size the verified text
names, and each ``.deb`` the SHA256 and size its ``Packages`` stanza names. Nothing unverified is
unpacked.

Why the headers are rewritten: Debian's headers point into ``/usr/src`` and ``/usr/lib/linux-kbuild-*``
with absolute paths and name ``gcc-10``, the compiler Debian 11 built with. The unpacked tree is made
self-consistent (relative paths only, so the cache folder can move) and told to use the host's
``gcc`` (12): a module built that way loads in the 5.10 guest (same vermagic and symbol versions).

Cache layout (``$RIG_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/shadowbox-rig/kernels``, else
``~/.cache/shadowbox-rig/kernels``; outside the checkout, shared by every checkout and test)::

    <cache>/<release>/kernel.json        what was fetched: release, versions, URLs, SHA256s
    <cache>/<release>/root/boot/vmlinuz-<release>
    <cache>/<release>/root/lib/modules/<release>/          (with modules.dep from depmod -b)
    <cache>/<release>/root/usr/src/linux-headers-<release>/   <- build modules here

A finished kernel appears by one ``rename`` of a staged folder; a second fetch finds it and does no
network I/O at all (offline after the first time).
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import functools
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rig.errors import LabFault

#: Debian's archive keyring (package debian-archive-keyring): the only keys an index is checked against.
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: Seconds for one HTTP request to make progress (connect, or between reads).
HTTP_TIMEOUT = 60.0
#: Largest InRelease accepted (Debian's are about 100-200 KB): a hostile or broken server cannot fill the disk.
INRELEASE_MAX_BYTES = 4 << 20
ARCH = "amd64"
FLAVOUR = "amd64"

#: progress(message): optional callback for a progress display.
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class Suite:
    """One signed Debian suite: ``<base>/dists/<dist>/InRelease``."""

    base: str
    dist: str  # the suite's Codename field, e.g. "bullseye-security"
    codename: str  # the release its signing keys are named after, e.g. "bullseye"
    component: str = "main"

    @property
    def inrelease_url(self) -> str:
        return f"{self.base}/dists/{self.dist}/InRelease"

    @property
    def packages_path(self) -> str:
        """Path of Packages.xz relative to the suite, as the InRelease file lists it."""
        return f"{self.component}/binary-{ARCH}/Packages.xz"


@dataclass(frozen=True)
class Series:
    """A kernel series the lab can fetch, and the suites that carry it (newest build wins)."""

    name: str
    suites: tuple[Suite, ...]

    @property
    def kbuild_package(self) -> str:
        return f"linux-kbuild-{self.name}"


#: Kernel series fetched from Debian's archive (the host's own series needs no fetching).
FETCHABLE: dict[str, Series] = {
    "5.10": Series("5.10", (
        Suite("http://deb.debian.org/debian", "bullseye", "bullseye"),
        Suite("http://deb.debian.org/debian-security", "bullseye-security", "bullseye"),
    )),
}


def cache_dir() -> Path:
    """Where fetched kernels live: $RIG_KERNEL_CACHE, else the XDG cache (outside any checkout)."""
    env = os.environ.get("RIG_KERNEL_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "shadowbox-rig" / "kernels"


# --- what a lab kernel is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabKernel:
    """A kernel a guest can boot, with the modules its initramfs takes and the headers sbsim builds against."""

    release: str  # e.g. "5.10.0-46-amd64"
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>, with modules.dep
    headers: Path  # the flavour's headers: make -C <headers> M=<dir> modules
    package_version: str  # Debian version of the image package, e.g. "5.10.262-1"
    origin: str  # "host" or the suite it came from, e.g. "debian bullseye-security"

    @property
    def series(self) -> str:
        """``major.minor`` ("5.10"), what short names and inventory tags use."""
        return series_of(self.release)


def series_of(release: str) -> str:
    """``"5.10.0-46-amd64"`` -> ``"5.10"``."""
    return ".".join(release.split(".")[:2])


def _dpkg_version(pkg: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def host_kernel(release: str) -> LabKernel | None:
    """The kernel ``release`` as installed on the host (/boot, /lib/modules, /usr/src), or None."""
    vmlinuz = Path(f"/boot/vmlinuz-{release}")
    moddir = Path(f"/lib/modules/{release}")
    if not (vmlinuz.exists() and moddir.is_dir()):
        return None
    return LabKernel(
        release=release, vmlinuz=vmlinuz, modules_dir=moddir,
        headers=Path(f"/usr/src/linux-headers-{release}"),
        package_version=_dpkg_version(f"linux-image-{release}") or "unknown", origin="host",
    )


def cached_kernel(release: str, cache: Path | None = None) -> LabKernel | None:
    """A fetched kernel ``release`` from the cache, or None if it is not (completely) there."""
    kdir = (cache or cache_dir()) / release
    try:
        meta = json.loads((kdir / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    root = kdir / "root"
    k = LabKernel(
        release=release, vmlinuz=root / "boot" / f"vmlinuz-{release}", modules_dir=root / "lib/modules" / release,
        headers=root / "usr/src" / f"linux-headers-{release}", package_version=str(meta.get("version", "unknown")),
        origin=f"debian {meta.get('suite', '?')}",
    )
    return k if k.vmlinuz.is_file() and (k.modules_dir / "modules.dep").is_file() else None


def cached_releases(series: str, cache: Path | None = None) -> list[str]:
    """Releases of ``series`` in the cache, newest first."""
    root = cache or cache_dir()
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir()
             if p.name.startswith(series + ".") and (p / "kernel.json").is_file()]
    return sorted(found, key=_release_key, reverse=True)


def _release_key(release: str) -> tuple[int, ...]:
    """"5.10.0-46-amd64" -> (5, 10, 0, 46): the ABI number orders Debian's builds of one series."""
    return tuple(int(n) for n in re.findall(r"\d+", release.removesuffix(f"-{FLAVOUR}")))


def find_kernel(release: str, cache: Path | None = None) -> LabKernel | None:
    """``release`` from the host or the cache, without any network I/O."""
    return host_kernel(release) or cached_kernel(release, cache)


def resolve(
    spec: str, *, host_release: str, cache: Path | None = None, fetch: bool = True,
    progress: ProgressFn | None = None,
) -> LabKernel:
    """A kernel spec -> the kernel: a short name ("6.1", "5.10") or a full release ("5.10.0-46-amd64").

    The host's kernel (``host_release``) answers its own series. Other series come from the cache,
    newest first; with ``fetch`` a missing one is fetched from Debian's archive (:func:`fetch`).
    """
    spec = spec.strip()
    if not re.fullmatch(r"\d+\.\d+(\.\S+)?", spec):
        raise LabFault(f"kernel {spec!r}: expected a series like '6.1' or '5.10', or a release like "
                       f"{host_release!r}", component="kernel")
    series = series_of(spec)
    is_short = spec == series
    if is_short and series_of(host_release) == series:
        k = host_kernel(host_release)
        if k is None:
            raise LabFault(f"kernel {spec}: the host kernel {host_release} is not installed "
                           "(/boot, /lib/modules); run `make deps`", component="kernel")
        return k
    if not is_short:
        found = find_kernel(spec, cache)
        if found is not None:
            return found
    else:
        for rel in cached_releases(series, cache):
            found = cached_kernel(rel, cache)
            if found is not None:
                return found
    if series not in FETCHABLE:
        known = sorted({series_of(host_release), *FETCHABLE})
        raise LabFault(f"kernel {spec}: not installed on the host and not a series the lab can fetch "
                       f"(known: {', '.join(known)})", component="kernel")
    if not fetch:
        raise LabFault(f"kernel {spec} is not in the cache {cache or cache_dir()}; fetch it with "
                       f"`rig lab kernels --fetch {series}` (or `make deps`)", component="kernel")
    return fetch_series(series, release=None if is_short else spec, cache=cache, progress=progress)


# --- the archive's index: pure functions (unit-tested on small fixtures) ----------------------------


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Stanzas of a Debian control-format file (Packages, Release); continuation lines are kept."""
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, ""
            continue
        if line[0] in " \t" and last:
            cur[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        last = key.strip()
        cur[last] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def release_sha256(release_text: str) -> dict[str, tuple[str, int]]:
    """The ``SHA256:`` list of a (verified) Release text: {path: (sha256, size)}."""
    fields = parse_deb822(release_text)
    if not fields or "SHA256" not in fields[0]:
        return {}
    out: dict[str, tuple[str, int]] = {}
    for line in fields[0]["SHA256"].splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[2]] = (parts[0].lower(), int(parts[1]))
    return out


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of one upstream or revision part (non-digits by the ~-first order, digits numerically)."""
    while a or b:
        na = re.match(r"\D*", a).group()  # type: ignore[union-attr]
        nb = re.match(r"\D*", b).group()  # type: ignore[union-attr]
        for i in range(max(len(na), len(nb))):
            ca = _order(na[i]) if i < len(na) else 0
            cb = _order(nb[i]) if i < len(nb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        a, b = a[len(na):], b[len(nb):]
        da = re.match(r"\d*", a).group()  # type: ignore[union-attr]
        db = re.match(r"\d*", b).group()  # type: ignore[union-attr]
        ia, ib = int(da or 0), int(db or 0)
        if ia != ib:
            return -1 if ia < ib else 1
        a, b = a[len(da):], b[len(db):]
    return 0


def compare_versions(a: str, b: str) -> int:
    """Debian version comparison (epoch:upstream-revision, '~' sorts first): -1, 0 or 1."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, rev

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


@dataclass(frozen=True)
class Pick:
    """The four packages of one kernel build: (suite it came from, its Packages stanza) each."""

    release: str
    version: str
    image: tuple[Suite, dict[str, str]]
    headers: tuple[Suite, dict[str, str]]
    common: tuple[Suite, dict[str, str]]
    kbuild: tuple[Suite, dict[str, str]]

    @property
    def debs(self) -> list[tuple[Suite, dict[str, str]]]:
        return [self.image, self.headers, self.common, self.kbuild]

    @property
    def suite(self) -> Suite:
        return self.image[0]


_Candidate = tuple[str, str, Suite, dict[str, str], bool]  # release, version, suite, stanza, unsigned


def _newest_first(x: _Candidate, y: _Candidate) -> int:
    """Order: higher ABI number, then higher Debian version, then the unsigned image package."""
    kx, ky = _release_key(x[0]), _release_key(y[0])
    if kx != ky:
        return -1 if kx > ky else 1
    return compare_versions(y[1], x[1]) or (int(y[4]) - int(x[4]))


def choose(indexes: Iterable[tuple[Suite, list[dict[str, str]]]], series: str, release: str | None = None) -> Pick:
    """The newest ``linux-image-<series>.*-amd64`` build (or exactly ``release``) and its three companions.

    Prefers the unsigned image package (the same kernel without the signing wrapper). All four
    packages must carry the same Debian version (the headers' Depends pin it); a build whose
    companions are missing from every suite is skipped for an older complete one. Companions may
    come from another suite than the image (Debian's point releases move packages around).
    """
    image_re = re.compile(rf"linux-image-({re.escape(series)}\.\d+-\d+-{FLAVOUR})(-unsigned)?")
    by_name: dict[tuple[str, str], tuple[Suite, dict[str, str]]] = {}
    candidates: list[_Candidate] = []
    for suite, stanzas in indexes:
        for st in stanzas:
            name, ver = st.get("Package", ""), st.get("Version", "")
            if not name or not ver or st.get("Architecture") not in (ARCH, "all"):
                continue
            by_name[(name, ver)] = (suite, st)
            m = image_re.fullmatch(name)
            if m and (release is None or m.group(1) == release):
                candidates.append((m.group(1), ver, suite, st, m.group(2) is not None))
    for rel, ver, suite, st, _unsigned in sorted(candidates, key=functools.cmp_to_key(_newest_first)):
        abi = rel.removesuffix(f"-{FLAVOUR}")
        headers = by_name.get((f"linux-headers-{rel}", ver))
        common = by_name.get((f"linux-headers-{abi}-common", ver))
        kbuild = by_name.get((f"linux-kbuild-{series}", ver))
        if headers and common and kbuild:
            return Pick(rel, ver, (suite, st), headers, common, kbuild)
    what = f"linux-image-{release}" if release else f"linux-image-{series}.*-{FLAVOUR}"
    raise LabFault(f"Debian's index has no complete build of {what} (image, headers, headers-common and "
                   f"linux-kbuild-{series} of one version)", component="kernel")


# --- making the unpacked headers self-consistent -----------------------------------------------------


def fixup_tree(root: Path, release: str, compiler: str = "gcc") -> list[str]:
    """Make an unpacked kernel tree under ``root`` usable in place; return what was changed.

    - ``usr/src/linux-headers-<rel>/Makefile`` includes the common tree by an absolute /usr/src path:
      include it relative to the Makefile's own folder instead.
    - ``.kernelvariables`` names Debian 11's ``gcc-10``: use ``compiler`` (the host's gcc).
    - every absolute symlink under ``root`` (``lib/modules/<rel>/build`` and ``source``) becomes the
      relative link to the same place inside ``root``.
    - Makefiles under the headers that still name ``/usr/src/linux-headers-`` or ``/usr/lib/linux-kbuild-``
      with an absolute path are refused (LabFault): the tree would quietly use the host's files.
    """
    changes: list[str] = []
    hdr = root / "usr/src" / f"linux-headers-{release}"
    mk = hdr / "Makefile"
    text = mk.read_text()
    new = re.sub(r"^include\s+/usr/src/(linux-headers-\S+)/Makefile\s*$",
                 r"include $(dir $(lastword $(MAKEFILE_LIST)))../\1/Makefile", text, flags=re.M)
    if new != text:
        mk.write_text(new)
        changes.append(f"{mk.relative_to(root)}: include the common headers by a relative path")
    kv = hdr / ".kernelvariables"
    if kv.is_file():
        text = kv.read_text()
        new = re.sub(r"\bgcc-\d+\b", compiler, text)
        if new != text:
            kv.write_text(new)
            changes.append(f"{kv.relative_to(root)}: CC uses {compiler} (the host's compiler)")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    rel = os.path.relpath(root / target.lstrip("/"), p.parent)
                    p.unlink()
                    p.symlink_to(rel)
                    changes.append(f"{p.relative_to(root)} -> {rel} (was {target})")
    for makefile in (mk, *(hdr.parent.glob("linux-headers-*-common/Makefile"))):
        if re.search(r"^[^#\n]*(/usr/src/linux-headers-|/usr/lib/linux-kbuild-)", makefile.read_text(), re.M):
            raise LabFault(f"{makefile} still names an absolute /usr/src or /usr/lib/linux-kbuild path after "
                           "the fix-up; the rig does not know this headers layout", component="kernel")
    return changes


# --- network and verification ------------------------------------------------------------------------


def _download(
    url: str, dest: Path, *, sha256: str | None = None, size: int | None = None, max_size: int | None = None
) -> None:
    """GET ``url`` into ``dest``; check SHA256/size when given. LabFault naming the URL on any failure.

    No more than ``max_size`` bytes (or ``size``, when the signed index gives it) are ever read.
    """
    h = hashlib.sha256()
    got = 0
    cap = size if size is not None else max_size
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp, open(dest, "wb") as f:  # noqa: S310
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                h.update(block)
                got += len(block)
                if cap is not None and got > cap:
                    raise LabFault(
                        f"{url}: larger than the {cap} bytes expected; refusing to read more (a broken mirror "
                        "or proxy?)",
                        component="kernel",
                    )
                f.write(block)
    except urllib.error.HTTPError as exc:
        raise LabFault(f"{url}: HTTP {exc.code} {exc.reason}; Debian's archive may have moved the file "
                       "(retry later, or report it)", component="kernel") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LabFault(f"cannot download {url}: {reason}; is Debian's archive reachable from this machine "
                       "(proxy: http_proxy)?", component="kernel") from None
    if size is not None and got != size:
        raise LabFault(f"{url}: got {got} bytes, the signed index says {size}; retry (a proxy may have "
                       "truncated it)", component="kernel")
    if sha256 is not None and h.hexdigest() != sha256.lower():
        raise LabFault(f"{url}: SHA256 {h.hexdigest()} does not match the signed index ({sha256}); "
                       "refusing to use it", component="kernel")


def verify_inrelease(signed: Path, suite: Suite, keyring: Path = KEYRING) -> str:
    """Verify an InRelease file with gpgv; return the signed text (only that is trusted).

    Checks that the keyring holds the suite's keys: at least one good signature must come from a key
    whose name carries the release's codename ("... (11/bullseye) ..."), and the text's Codename must
    be the suite's own (``bullseye-security``): a valid signature on another suite's index is refused.
    """
    if not keyring.is_file():
        raise LabFault(f"{keyring} not found: apt-get install debian-archive-keyring", component="kernel")
    out = signed.with_suffix(".verified")
    out.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            ["gpgv", "--status-fd", "1", "--keyring", str(keyring), "--output", str(out), str(signed)],
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError:
        raise LabFault("gpgv not found: apt-get install gpgv (needed to check Debian's signed index)",
                       component="kernel") from None
    goods = [line.split(None, 3)[-1] for line in proc.stdout.splitlines() if line.startswith("[GNUPG:] GOODSIG ")]
    if proc.returncode != 0 and not goods:
        missing = "NO_PUBKEY" in proc.stdout
        hint = (f"{keyring} lacks the key that signed it: upgrade debian-archive-keyring" if missing
                else "the file is not a valid signed index")
        raise LabFault(f"{suite.inrelease_url}: signature check failed ({hint}): "
                       f"{proc.stderr.strip()[-300:]}", component="kernel")
    if not any(f"/{suite.codename})" in uid for uid in goods):
        raise LabFault(f"{suite.inrelease_url}: no good signature by a {suite.codename} key in {keyring} "
                       f"(signed by: {goods or 'nobody'}); upgrade debian-archive-keyring", component="kernel")
    text = out.read_text()
    fields = parse_deb822(text)
    codename = fields[0].get("Codename") if fields else None
    if codename != suite.dist:
        raise LabFault(f"{suite.inrelease_url}: signed index is for {codename!r}, expected {suite.dist!r}",
                       component="kernel")
    check_valid_until(fields[0], suite.inrelease_url)
    return text


def check_valid_until(release: dict[str, str], url: str, now: float | None = None) -> None:
    """Refuse a signed index past its ``Valid-Until`` (what apt does): an old, validly signed index
    replayed by a mirror or an attacker would pin kernels with known holes. Suites without the field
    (Debian's point-release suites) have no expiry."""
    field_ = release.get("Valid-Until")
    if not field_:
        return
    try:
        until = email.utils.parsedate_to_datetime(field_).timestamp()
    except (TypeError, ValueError):
        raise LabFault(f"{url}: Valid-Until {field_[:60]!r} is not a date", component="kernel") from None
    now = time.time() if now is None else now
    if until < now:
        raise LabFault(
            f"{url}: the signed index expired (Valid-Until {field_}); a stale or replayed copy: retry later or "
            "use another mirror",
            component="kernel",
        )


def fetch_index(suite: Suite, work: Path, keyring: Path = KEYRING) -> list[dict[str, str]]:
    """Download and verify one suite's index; return its Packages stanzas."""
    signed = work / f"{suite.dist}.InRelease"
    _download(suite.inrelease_url, signed, max_size=INRELEASE_MAX_BYTES)
    release = verify_inrelease(signed, suite, keyring)
    sums = release_sha256(release)
    if suite.packages_path not in sums:
        raise LabFault(f"{suite.inrelease_url} lists no {suite.packages_path}", component="kernel")
    sha, size = sums[suite.packages_path]
    pk = work / f"{suite.dist}.Packages.xz"
    url = f"{suite.base}/dists/{suite.dist}/{suite.packages_path}"
    _download(url, pk, sha256=sha, size=size)
    try:
        text = lzma.decompress(pk.read_bytes()).decode("utf-8", errors="replace")
    except lzma.LZMAError as exc:
        raise LabFault(f"{url}: not a valid xz file ({exc})", component="kernel") from None
    return parse_deb822(text)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """One fetcher at a time per cache (bootstrap and a test session may both ask for 5.10)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".fetch.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LabFault(f"{what}: {argv[0]} not found; run `make deps`", component="kernel") from None
    if proc.returncode != 0:
        raise LabFault(f"{what}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}",
                       component="kernel")


def _depmod() -> str:
    for cand in (shutil.which("depmod"), "/usr/sbin/depmod", "/sbin/depmod"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise LabFault("depmod not found: apt-get install kmod", component="kernel")


@dataclass
class FetchReport:
    """What :func:`fetch_series` did (for the CLI and bootstrap): nothing when the cache had it."""

    kernel: LabKernel
    fetched: bool
    changes: list[str] = field(default_factory=list)


def fetch_series(
    series: str, *, release: str | None = None, cache: Path | None = None, refresh: bool = False,
    keyring: Path = KEYRING, progress: ProgressFn | None = None,
) -> LabKernel:
    """The newest cached build of ``series`` (or ``release``); fetch it from Debian's archive if none.

    ``refresh`` asks the archive for a newer build even when one is cached.
    """
    return fetch_series_report(series, release=release, cache=cache, refresh=refresh, keyring=keyring,
                               progress=progress).kernel


def fetch_series_report(
    series: str, *, release: str | None = None, cache: Path | None = None, refresh: bool = False,
    keyring: Path = KEYRING, progress: ProgressFn | None = None,
) -> FetchReport:
    """:func:`fetch_series`, also saying whether it downloaded and what the header fix-up changed."""
    say = progress or (lambda _m: None)
    if series not in FETCHABLE:
        raise LabFault(f"kernel series {series!r} cannot be fetched (known: {', '.join(FETCHABLE)})",
                       component="kernel")
    spec = FETCHABLE[series]
    cache = cache or cache_dir()

    def from_cache() -> LabKernel | None:
        if release is not None:
            return cached_kernel(release, cache)
        for rel in cached_releases(series, cache):
            k = cached_kernel(rel, cache)
            if k is not None:
                return k
        return None

    if not refresh and (k := from_cache()) is not None:
        return FetchReport(k, fetched=False)
    with _cache_lock(cache):
        if not refresh and (k := from_cache()) is not None:  # another process fetched it meanwhile
            return FetchReport(k, fetched=False)
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{series}-", dir=cache))
        try:
            indexes = []
            for suite in spec.suites:
                say(f"reading the signed index of {suite.dist}")
                indexes.append((suite, fetch_index(suite, work, keyring)))
            pick = choose(indexes, series, release)
            if (k := cached_kernel(pick.release, cache)) is not None:
                return FetchReport(k, fetched=False)
            stage = work / "kernel"
            root = stage / "root"
            root.mkdir(parents=True)
            debs_meta = []
            for suite, st in pick.debs:
                url = f"{suite.base}/{st['Filename']}"
                if not st.get("SHA256") or "Size" not in st:
                    raise LabFault(f"{url}: its Packages stanza has no SHA256/Size; refusing it", component="kernel")
                deb = work / Path(st["Filename"]).name
                say(f"downloading {deb.name} ({int(st['Size']) // 1_000_000} MB)")
                _download(url, deb, sha256=st["SHA256"], size=int(st["Size"]))
                say(f"unpacking {deb.name}")
                _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
                deb.unlink()
                debs_meta.append({"package": st["Package"], "version": st["Version"], "url": url,
                                  "sha256": st["SHA256"]})
            changes = fixup_tree(root, pick.release)
            say("depmod")
            _run([_depmod(), "-b", str(root), pick.release], f"depmod for {pick.release}")
            (stage / "kernel.json").write_text(json.dumps({
                "release": pick.release, "series": series, "version": pick.version, "suite": pick.suite.dist,
                "debs": debs_meta, "fixups": changes, "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }, indent=2) + "\n")
            final = cache / pick.release
            if final.exists():  # incomplete leftover (no kernel.json, or broken): replace it
                shutil.rmtree(final)
            os.rename(stage, final)
            k = cached_kernel(pick.release, cache)
            if k is None:
                raise LabFault(f"{final}: fetched kernel is incomplete (no vmlinuz or modules.dep)", component="kernel")
            say(f"ready: {pick.release} ({pick.version}, {pick.suite.dist})")
            return FetchReport(k, fetched=True, changes=changes)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m rig.lab.kernels 5.10 [...]``: make sure these series are cached (tools/bootstrap.sh).

    Silent when everything is cached already (bootstrap runs before every `make test`).
    """
    import sys

    series_list = (sys.argv[1:] if argv is None else argv) or list(FETCHABLE)
    for series in series_list:

        def say(message: str, series: str = series) -> None:
            print(f"kernel {series}: {message}", flush=True)

        try:
            rep = fetch_series_report(series, progress=say)
        except LabFault as exc:
            print(f"kernel {series}: {exc}", file=sys.stderr)
            return 1
        if rep.fetched:
            print(f"kernel {series}: {rep.kernel.release} ready, headers in {rep.kernel.headers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
