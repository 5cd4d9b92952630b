"""rig.lab.kernels without Debian's archive: index parsing, the choice of a build, the header fix-up,
signature checks and a whole fetch from a small local archive.

Real peers, no network: ``gpgv`` checks signatures made by a throw-away ``gpg`` key (named like a
bullseye archive key, or not), ``dpkg-deb`` builds and unpacks tiny .debs, ``depmod`` indexes the
unpacked modules folder, ``make`` follows the rewritten headers Makefile, and a stdlib HTTP server on
127.0.0.1 plays deb.debian.org. The real archive is exercised by the lab (tools/bootstrap.sh and the
5.10 guest in tests/test_lab.py), not here.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from consolepeers import free_port

from rig.errors import LabFault
from rig.lab import image, kernels
from rig.lab.kernels import Series, Suite
from rig.lab.sbsim import default_headers_dir

# --- versions and index parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("5.10.262-1", "5.10.262-1", 0),
        ("5.10.262-1", "5.10.99-1", 1),  # digits compare as numbers
        ("5.10.262-1~deb10u1", "5.10.262-1", -1),  # ~ sorts before anything
        ("5.10.262-1+deb11u1", "5.10.262-1", 1),
        ("1:1.0-1", "2.0-1", 1),  # epoch wins
        ("5.10.262-2", "5.10.262-10", -1),
        ("5.10.262", "5.10.262-1", -1),  # no revision is revision 0
    ],
)
def test_compare_versions_is_dpkgs(a: str, b: str, expected: int) -> None:
    assert kernels.compare_versions(a, b) == expected
    assert kernels.compare_versions(b, a) == -expected
    # and agrees with dpkg itself, the reference
    op = {0: "eq", 1: "gt", -1: "lt"}[expected]
    assert subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0


RELEASE_TEXT = """Origin: Debian
Codename: bullseye
MD5Sum:
 00000000000000000000000000000000  1234 main/binary-amd64/Packages.xz
SHA256:
 AAAA111122223333444455556666777788889999000011112222333344445555  8065948 main/binary-amd64/Packages.xz
 bbbb111122223333444455556666777788889999000011112222333344445555      32 contrib/binary-amd64/Packages.xz
"""


def test_release_sha256_reads_the_sha256_list_only() -> None:
    sums = kernels.release_sha256(RELEASE_TEXT)
    assert sums == {
        "main/binary-amd64/Packages.xz": ("aaaa111122223333444455556666777788889999000011112222333344445555", 8065948),
        "contrib/binary-amd64/Packages.xz": ("bbbb111122223333444455556666777788889999000011112222333344445555", 32),
    }
    assert kernels.release_sha256("Origin: Debian\n") == {}


def stanza(name: str, version: str, arch: str = "amd64", **extra: str) -> dict[str, str]:
    d = {"Package": name, "Version": version, "Architecture": arch,
         "Filename": f"pool/{name}_{version}_{arch}.deb", "Size": "10", "SHA256": "0" * 64}
    d.update(extra)
    return d


def build(abi: str, version: str, *, unsigned: bool = True, signed: bool = False,
          headers: bool = True, common: bool = True, kbuild: bool = True) -> list[dict[str, str]]:
    rel = f"5.10.0-{abi}-amd64"
    out = []
    if unsigned:
        out.append(stanza(f"linux-image-{rel}-unsigned", version))
    if signed:
        out.append(stanza(f"linux-image-{rel}", version))
    if headers:
        out.append(stanza(f"linux-headers-{rel}", version))
    if common:
        out.append(stanza(f"linux-headers-5.10.0-{abi}-common", version, "all"))
    if kbuild:
        out.append(stanza("linux-kbuild-5.10", version))
    return out


MAIN = Suite("http://archive.invalid/debian", "bullseye", "bullseye")
SEC = Suite("http://archive.invalid/debian-security", "bullseye-security", "bullseye")


def test_parse_deb822_keeps_stanzas_and_continuation_lines() -> None:
    text = ("Package: linux-kbuild-5.10\nVersion: 5.10.262-1\nDescription: Kbuild\n more text\n\n\n"
            "Package: linux-headers-5.10.0-46-amd64\nVersion: 5.10.262-1\n")
    st = kernels.parse_deb822(text)
    assert [s["Package"] for s in st] == ["linux-kbuild-5.10", "linux-headers-5.10.0-46-amd64"]
    assert st[0]["Description"] == "Kbuild\nmore text"


def test_choose_takes_the_newest_complete_build_across_suites() -> None:
    main = build("30", "5.10.218-1") + build("32", "5.10.223-1")
    sec = build("45", "5.10.259-1") + build("46", "5.10.262-1", headers=False)  # 46 is incomplete
    pick = kernels.choose([(MAIN, main), (SEC, sec)], "5.10")
    assert (pick.release, pick.version, pick.suite) == ("5.10.0-45-amd64", "5.10.259-1", SEC)
    assert [st["Package"] for _s, st in pick.debs] == [
        "linux-image-5.10.0-45-amd64-unsigned", "linux-headers-5.10.0-45-amd64",
        "linux-headers-5.10.0-45-common", "linux-kbuild-5.10"]
    # all four of one Debian version (linux-kbuild-5.10 exists in several versions)
    assert {st["Version"] for _s, st in pick.debs} == {"5.10.259-1"}


def test_choose_prefers_unsigned_and_the_higher_debian_version_of_one_abi() -> None:
    stanzas = build("46", "5.10.262-1", signed=True) + build("46", "5.10.262-1+b1", signed=True)
    pick = kernels.choose([(SEC, stanzas)], "5.10")
    assert pick.version == "5.10.262-1+b1"
    assert pick.image[1]["Package"] == "linux-image-5.10.0-46-amd64-unsigned"
    only_signed = build("46", "5.10.262-1", unsigned=False, signed=True)
    assert kernels.choose([(SEC, only_signed)], "5.10").image[1]["Package"] == "linux-image-5.10.0-46-amd64"


def test_choose_a_named_release_companions_from_another_suite_and_nothing_found() -> None:
    main = build("32", "5.10.223-1", kbuild=False)
    sec = [stanza("linux-kbuild-5.10", "5.10.223-1")] + build("46", "5.10.262-1")
    pick = kernels.choose([(MAIN, main), (SEC, sec)], "5.10", release="5.10.0-32-amd64")
    assert pick.release == "5.10.0-32-amd64"
    assert pick.image[0] == MAIN and pick.kbuild[0] == SEC
    with pytest.raises(LabFault, match=r"no complete build of linux-image-5\.10\.\*-amd64"):
        kernels.choose([(MAIN, build("46", "1", kbuild=False))], "5.10")
    with pytest.raises(LabFault, match=r"linux-image-4\.19"):
        kernels.choose([(MAIN, main)], "4.19")
    # other flavours (cloud, rt) and architectures are not lab kernels
    others = [stanza("linux-image-5.10.0-99-cloud-amd64-unsigned", "9"),
              stanza("linux-image-5.10.0-99-amd64", "9", "i386")]
    assert kernels.choose([(MAIN, others + main), (SEC, sec)], "5.10").release == "5.10.0-46-amd64"


# --- header fix-up -----------------------------------------------------------------------------------


def debian_like_tree(root: Path, release: str = "5.10.0-46-amd64", abi: str = "5.10.0-46") -> Path:
    """The shape of Debian 11's unpacked headers, image and kbuild packages (tiny stand-ins)."""
    hdr = root / "usr/src" / f"linux-headers-{release}"
    common = root / "usr/src" / f"linux-headers-{abi}-common"
    kbuild = root / "usr/lib/linux-kbuild-5.10/scripts"
    for d in (hdr, common, kbuild, root / "lib/modules" / release):
        d.mkdir(parents=True)
    (hdr / "Makefile").write_text(f"include /usr/src/linux-headers-{abi}-common/Makefile\n")
    (hdr / ".kernelvariables").write_text(
        "override ARCH = x86\nCC = $(if $(DEBIAN_KERNEL_USE_CCACHE),$(CCACHE)) $(CROSS_COMPILE)gcc-10\n")
    # the common Makefile stands in for the kernel's: reads .kernelvariables from the flavour dir
    (common / "Makefile").write_text(
        "abs_srctree := $(realpath $(dir $(lastword $(MAKEFILE_LIST))))\n"
        "-include .kernelvariables\n"
        "all:\n\t@echo CC=$(strip $(CC)) SRC=$(abs_srctree) SCRIPTS=$(realpath $(abs_srctree)/scripts)\n")
    (common / "scripts").symlink_to("../../lib/linux-kbuild-5.10/scripts")
    (hdr / "scripts").symlink_to("../../lib/linux-kbuild-5.10/scripts")
    (root / "lib/modules" / release / "build").symlink_to(f"/usr/src/linux-headers-{release}")
    (root / "lib/modules" / release / "source").symlink_to(f"/usr/src/linux-headers-{abi}-common")
    return hdr


def test_fixup_makes_the_unpacked_headers_self_contained(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hdr = debian_like_tree(root)
    changes = kernels.fixup_tree(root, "5.10.0-46-amd64")
    assert len(changes) == 4, changes
    assert "gcc-10" not in (hdr / ".kernelvariables").read_text()
    build = root / "lib/modules/5.10.0-46-amd64/build"
    assert not os.readlink(build).startswith("/") and build.resolve() == hdr.resolve()
    # the tree moves (the cache renames a staged folder into place): still consistent afterwards
    moved = tmp_path / "moved"
    root.rename(moved)
    out = subprocess.run(["make", "-s", "-C", str(moved / "usr/src/linux-headers-5.10.0-46-amd64")],
                         capture_output=True, text=True, check=True).stdout
    assert "CC=gcc " in out, out  # the host's compiler, not gcc-10
    assert f"SRC={moved}/usr/src/linux-headers-5.10.0-46-common " in out, out
    assert f"SCRIPTS={moved}/usr/lib/linux-kbuild-5.10/scripts" in out, out
    # idempotent: a second pass finds nothing to change
    assert kernels.fixup_tree(moved, "5.10.0-46-amd64") == []


def test_fixup_refuses_a_layout_it_does_not_know(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hdr = debian_like_tree(root)
    common = root / "usr/src/linux-headers-5.10.0-46-common/Makefile"
    common.write_text(common.read_text() + "KBUILD = /usr/lib/linux-kbuild-5.10/scripts\n")
    with pytest.raises(LabFault, match=r"linux-headers-5\.10\.0-46-common/Makefile still names an absolute"):
        kernels.fixup_tree(root, "5.10.0-46-amd64")
    assert hdr.is_dir()


# --- signatures (gpgv against a throw-away key) ------------------------------------------------------


@dataclass
class Signer:
    home: Path
    keyring: Path

    def sign(self, text: str, out: Path) -> Path:
        src = out.with_suffix(".plain")
        src.write_text(text)
        subprocess.run(["gpg", "--batch", "--yes", "--quiet", "--clearsign", "-o", str(out), str(src)],
                       env={**os.environ, "GNUPGHOME": str(self.home)}, check=True, capture_output=True)
        return out


def make_signer(base: Path, uid: str) -> Iterator[Signer]:
    # A short home of its own: gpg-agent's sockets live in it, and a unix socket path has at most
    # 107 bytes (under xdist, tmp_path gains a popen-gwN/ level and S.gpg-agent.browser went past it).
    base.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="rig-gpg-"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       env=env, check=True, capture_output=True)
        keyring = base / "keyring.gpg"
        keyring.write_bytes(subprocess.run(["gpg", "--export"], env=env, check=True, capture_output=True).stdout)
        yield Signer(home, keyring)
    finally:  # gpg started an agent for this home: stop it
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)
        # The home stays (a few kB in /tmp): a caller that took the signer with next() still signs
        # with it after this generator was closed; gpg starts its agent again on demand.


@pytest.fixture
def bullseye_signer(tmp_path: Path) -> Iterator[Signer]:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is needed to make test signatures: apt-get install gpg (tools/bootstrap.sh)")
    yield from make_signer(tmp_path / "bullseye", "Test Archive Automatic Signing Key (11/bullseye) <t@example.org>")


def test_verify_inrelease_returns_only_the_signed_text(tmp_path: Path, bullseye_signer: Signer) -> None:
    signed = bullseye_signer.sign(RELEASE_TEXT, tmp_path / "InRelease")
    text = kernels.verify_inrelease(signed, MAIN, bullseye_signer.keyring)
    assert text.strip() == RELEASE_TEXT.strip()
    # the Codename must be the suite's own: a good signature on bullseye's index is not bullseye-security's
    with pytest.raises(LabFault, match=r"signed index is for 'bullseye', expected 'bullseye-security'"):
        kernels.verify_inrelease(signed, SEC, bullseye_signer.keyring)


def test_verify_inrelease_refuses_tampering_strangers_and_a_missing_keyring(
    tmp_path: Path, bullseye_signer: Signer,
) -> None:
    signed = bullseye_signer.sign(RELEASE_TEXT, tmp_path / "InRelease")
    tampered = tmp_path / "tampered"
    tampered.write_text(signed.read_text().replace("8065948", "8065949"))
    with pytest.raises(LabFault, match=r"InRelease: signature check failed"):
        kernels.verify_inrelease(tampered, MAIN, bullseye_signer.keyring)
    # signed by a key in the keyring, but not a bullseye key (e.g. the keyring lacks bullseye's keys)
    other = next(make_signer(tmp_path / "other", "Some Other Key (12/bookworm) <o@example.org>"))
    with pytest.raises(LabFault, match=r"no good signature by a bullseye key"):
        kernels.verify_inrelease(other.sign(RELEASE_TEXT, tmp_path / "other.InRelease"), MAIN, other.keyring)
    subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(other.home)}, check=False)
    # a keyring without the signer's key
    with pytest.raises(LabFault, match=r"lacks the key that signed it"):
        kernels.verify_inrelease(signed, MAIN, other.keyring)
    with pytest.raises(LabFault, match=r"/nonexistent.gpg not found: apt-get install debian-archive-keyring"):
        kernels.verify_inrelease(signed, MAIN, Path("/nonexistent.gpg"))


def test_the_real_keyring_has_bullseyes_keys(tmp_path: Path) -> None:
    """The host's keyring is what the fetcher trusts: it must carry the bullseye archive keys (gpg lists them)."""
    home = Path(tempfile.mkdtemp(prefix="rig-gpg-"))  # short: see make_signer
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        out = subprocess.run(["gpg", "--show-keys", "--with-colons", str(kernels.KEYRING)],
                             capture_output=True, text=True, check=True, env=env)
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    uids = [line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("uid:")]
    assert any("(11/bullseye)" in u and "Security" not in u for u in uids), uids
    assert any("(11/bullseye)" in u and "Security" in u for u in uids), uids


# --- a whole fetch from a local archive ----------------------------------------------------------------


def make_deb(work: Path, name: str, version: str, arch: str, files: dict[str, str | tuple[str, str]]) -> Path:
    """A real .deb (dpkg-deb -b): files maps path -> content, or -> ("symlink", target)."""
    root = work / f"{name}-src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@example.org>\n"
        f"Description: test package\n")
    for path, content in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            p.symlink_to(content[1])
        else:
            p.write_text(content)
    out = work / f"{name}_{version}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out)],
                   check=True, capture_output=True)
    return out


@dataclass
class LocalArchive:
    url: str
    dir: Path
    suites: tuple[Suite, ...]


def kernel_debs(work: Path, abi: str, version: str) -> list[Path]:
    rel = f"5.10.0-{abi}-amd64"
    common = f"linux-headers-5.10.0-{abi}-common"
    return [
        make_deb(work, f"linux-image-{rel}-unsigned", version, "amd64", {
            f"boot/vmlinuz-{rel}": "not really a kernel\n",
            f"lib/modules/{rel}/kernel/.keep": "",
            f"lib/modules/{rel}/build": ("symlink", f"/usr/src/linux-headers-{rel}"),
        }),
        make_deb(work, f"linux-headers-{rel}", version, "amd64", {
            f"usr/src/linux-headers-{rel}/Makefile": f"include /usr/src/{common}/Makefile\n",
            f"usr/src/linux-headers-{rel}/.kernelvariables": "CC = $(CROSS_COMPILE)gcc-10\n",
        }),
        make_deb(work, common, version, "all", {f"usr/src/{common}/Makefile": "all:\n\t@echo ok\n"}),
        make_deb(work, "linux-kbuild-5.10", version, "amd64", {"usr/lib/linux-kbuild-5.10/scripts/.keep": ""}),
    ]


def publish(archive_dir: Path, suite_path: str, dist: str, debs: list[Path], signer: Signer) -> None:
    """Lay out ``<archive>/<suite_path>/{pool,dists/<dist>}`` with Packages.xz and a signed InRelease."""
    base = archive_dir / suite_path
    pool = base / "pool/main/l/linux"
    pool.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        shutil.copy(deb, pool / deb.name)
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                                capture_output=True, text=True, check=True).stdout.strip()
        data = deb.read_bytes()
        stanzas.append(f"{fields}\nFilename: pool/main/l/linux/{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    pk = base / f"dists/{dist}/main/binary-amd64/Packages.xz"
    pk.parent.mkdir(parents=True)
    pk.write_bytes(lzma.compress("\n".join(stanzas).encode()))
    blob = pk.read_bytes()
    release = (f"Origin: Debian\nCodename: {dist}\nSHA256:\n"
               f" {hashlib.sha256(blob).hexdigest()} {len(blob)} main/binary-amd64/Packages.xz\n")
    signer.sign(release, base / f"dists/{dist}/InRelease")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def local_archive(tmp_path: Path, bullseye_signer: Signer) -> Iterator[LocalArchive]:
    """A two-suite archive like Debian's (an older build in main, the newest in security) on 127.0.0.1."""
    work = tmp_path / "debs"
    (work / "old").mkdir(parents=True)
    (work / "new").mkdir()
    archive = tmp_path / "archive"
    publish(archive, "debian", "bullseye", kernel_debs(work / "old", "30", "5.10.218-1"), bullseye_signer)
    publish(archive, "debian-security", "bullseye-security", kernel_debs(work / "new", "46", "5.10.262-1"),
            bullseye_signer)
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(archive), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield LocalArchive(url, archive, (Suite(f"{url}/debian", "bullseye", "bullseye"),
                                          Suite(f"{url}/debian-security", "bullseye-security", "bullseye")))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_fetch_from_a_signed_archive_unpacks_fixes_and_caches(
    tmp_path: Path, local_archive: LocalArchive, bullseye_signer: Signer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(kernels.FETCHABLE, "5.10", Series("5.10", local_archive.suites))
    cache = tmp_path / "cache"
    said: list[str] = []
    rep = kernels.fetch_series_report("5.10", cache=cache, keyring=bullseye_signer.keyring, progress=said.append)
    k = rep.kernel
    assert rep.fetched and k.release == "5.10.0-46-amd64" and k.package_version == "5.10.262-1"
    assert k.origin == "debian bullseye-security"
    assert k.vmlinuz == cache / "5.10.0-46-amd64/root/boot/vmlinuz-5.10.0-46-amd64" and k.vmlinuz.is_file()
    assert (k.modules_dir / "modules.dep").is_file()  # depmod ran on the unpacked tree
    assert "gcc-10" not in (k.headers / ".kernelvariables").read_text()
    assert os.readlink(k.modules_dir / "build") == "../../../usr/src/linux-headers-5.10.0-46-amd64"
    meta = json.loads((cache / "5.10.0-46-amd64/kernel.json").read_text())
    assert [d["package"] for d in meta["debs"]] == [
        "linux-image-5.10.0-46-amd64-unsigned", "linux-headers-5.10.0-46-amd64",
        "linux-headers-5.10.0-46-common", "linux-kbuild-5.10"]
    assert all(d["url"].startswith(local_archive.url + "/debian-security/pool/") for d in meta["debs"])
    assert sorted(p.name for p in cache.iterdir()) == [".fetch.lock", "5.10.0-46-amd64"]  # no staging leftovers
    assert any("downloading linux-image-5.10.0-46-amd64-unsigned" in m for m in said), said
    # the headers Makefile reaches the common tree inside the cache
    out = subprocess.run(["make", "-s", "-C", str(k.headers)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"

    # sbsim's builder finds headers in the kernel cache by release (the host has no /usr/src for 5.10)
    monkeypatch.setenv("RIG_KERNEL_CACHE", str(cache))
    assert default_headers_dir("5.10.0-46-amd64") == k.headers

    # a second time: from the cache, without the archive (it is gone)
    shutil.rmtree(local_archive.dir)
    again = kernels.fetch_series_report("5.10", cache=cache, keyring=bullseye_signer.keyring)
    assert not again.fetched and again.kernel == k
    assert kernels.resolve("5.10", host_release="6.1.0-56-amd64", cache=cache, fetch=False) == k
    assert kernels.resolve("5.10.0-46-amd64", host_release="6.1.0-56-amd64", cache=cache, fetch=False) == k


def test_a_deb_that_does_not_match_the_index_is_refused(
    tmp_path: Path, local_archive: LocalArchive, bullseye_signer: Signer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(kernels.FETCHABLE, "5.10", Series("5.10", local_archive.suites))
    deb = local_archive.dir / "debian-security/pool/main/l/linux/linux-kbuild-5.10_5.10.262-1_amd64.deb"
    data = bytearray(deb.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    deb.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(LabFault, match=r"linux-kbuild-5\.10_5\.10\.262-1_amd64\.deb: SHA256 \w+ does not match"):
        kernels.fetch_series("5.10", cache=cache, keyring=bullseye_signer.keyring)
    assert kernels.cached_releases("5.10", cache) == []
    assert sorted(p.name for p in cache.iterdir()) == [".fetch.lock"]  # nothing half-unpacked left


def test_an_unreachable_archive_is_a_lab_fault_naming_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nobody listens there
    suite = Suite(f"http://127.0.0.1:{port}/debian", "bullseye", "bullseye")
    monkeypatch.setitem(kernels.FETCHABLE, "5.10", Series("5.10", (suite,)))
    with pytest.raises(LabFault, match=rf"cannot download http://127\.0\.0\.1:{port}/debian/dists/bullseye/InRelease"):
        kernels.fetch_series("5.10", cache=tmp_path / "cache")


def test_a_missing_file_is_a_lab_fault_naming_the_url(tmp_path: Path, local_archive: LocalArchive) -> None:
    url = f"{local_archive.url}/debian/pool/nothing.deb"
    with pytest.raises(LabFault, match=rf"{url}: HTTP 404"):
        kernels._download(url, tmp_path / "x")


def test_resolve_names_what_it_knows(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    host = image.kernel_version()
    k = kernels.resolve(kernels.series_of(host), host_release=host, cache=cache)
    assert (k.release, k.origin, k.vmlinuz) == (host, "host", Path(f"/boot/vmlinuz-{host}"))
    assert kernels.resolve(host, host_release=host, cache=cache) == k
    with pytest.raises(LabFault, match=r"kernel 4\.9: not installed on the host .* \(known: 5\.10, 6\.1\)"):
        kernels.resolve("4.9", host_release="6.1.0-56-amd64", cache=cache)
    with pytest.raises(LabFault, match=r"kernel 'latest': expected a series like '6\.1'"):
        kernels.resolve("latest", host_release="6.1.0-56-amd64", cache=cache)
    with pytest.raises(LabFault, match=r"kernel 5\.10 is not in the cache .*rig lab kernels --fetch 5\.10"):
        kernels.resolve("5.10", host_release="6.1.0-56-amd64", cache=cache, fetch=False)


# --- issue 17 item 14: an expired signed index, an oversized InRelease ---------------------------------


def test_verify_inrelease_refuses_an_index_past_its_valid_until(tmp_path: Path, bullseye_signer: Signer) -> None:
    """A validly signed but old index (replayed by a mirror or an attacker) is refused, as apt does."""
    codename = "Codename: bullseye\n"
    old = RELEASE_TEXT.replace(codename, codename + "Valid-Until: Sat, 01 Nov 2025 10:00:00 UTC\n")
    signed = bullseye_signer.sign(old, tmp_path / "InRelease")
    with pytest.raises(LabFault, match=r"the signed index expired \(Valid-Until Sat, 01 Nov 2025 10:00:00 UTC\)"):
        kernels.verify_inrelease(signed, MAIN, bullseye_signer.keyring)
    fresh = RELEASE_TEXT.replace(codename, codename + "Valid-Until: Fri, 01 Jan 2100 00:00:00 UTC\n")
    assert kernels.verify_inrelease(bullseye_signer.sign(fresh, tmp_path / "fresh"), MAIN, bullseye_signer.keyring)


def test_an_oversized_inrelease_is_refused_without_reading_it_all(
    tmp_path: Path, local_archive: LocalArchive, bullseye_signer: Signer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    inrelease = local_archive.dir / "debian/dists/bullseye/InRelease"
    with open(inrelease, "ab") as f:
        f.write(b"x" * (kernels.INRELEASE_MAX_BYTES + (1 << 20)))
    with pytest.raises(LabFault, match=rf"InRelease: larger than the {kernels.INRELEASE_MAX_BYTES} bytes expected"):
        kernels.fetch_index(local_archive.suites[0], tmp_path, bullseye_signer.keyring)
    assert (tmp_path / "bullseye.InRelease").stat().st_size <= kernels.INRELEASE_MAX_BYTES
