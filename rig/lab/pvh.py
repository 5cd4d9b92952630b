"""The kernel file QEMU boots: the ELF inside Debian's bzImage, entered through PVH.

Why: under TCG a guest spends about 4 of its 9 seconds of boot (and as much CPU) before the kernel prints
its first line, in the bzImage's own decompressor: the xz payload is unpacked by emulated x86 code.
Debian's kernels are built with ``CONFIG_PVH`` (Xen's PVH entry point), so QEMU can load the
decompressed ELF straight into guest memory and jump to the kernel (``-kernel vmlinux``: QEMU sees the
``XEN_ELFNOTE_PHYS32_ENTRY`` note). Same kernel, same bytes, same command line; only the unpacking moves
from emulated code to the host, once per kernel (BENCHMARKS.md, "Guest boot").

The ELF is cached next to the fetched kernels (``<kernel cache>/pvh/``), keyed by the bzImage's sha256,
so every lab and test session shares one copy. A kernel without the note, or a payload this module does
not unpack, boots as before from its bzImage: :func:`boot_kernel` never fails a lab for this.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from rig.files import write_atomic
from rig.lab import kernels

log = logging.getLogger(__name__)

#: Xen's ELF note type for the 32-bit PVH entry point (xen/include/public/elfnote.h).
XEN_ELFNOTE_PHYS32_ENTRY = 18
_PT_NOTE = 4
#: Bump when the extraction's output changes for the same bzImage.
EXTRACTOR_VERSION = "1"


class NotPvhBootable(Exception):
    """This bzImage cannot be booted through PVH (the reason says why); boot the bzImage itself."""


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage, found through the boot protocol's header.

    ``setup_sects`` (offset 0x1f1) says where the protected-mode code starts; ``payload_offset`` and
    ``payload_length`` (0x248, 0x24c; boot protocol 2.08 and later) place the payload within it.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise NotPvhBootable("not a bzImage (no 'HdrS' boot header)")
    if struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise NotPvhBootable("boot protocol older than 2.08 (no payload fields)")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(bzimage):
        raise NotPvhBootable(f"payload {offset:#x}+{length:#x} lies outside the file")
    return bzimage[start:start + length]


def decompress(data: bytes) -> bytes:
    """Unpack a kernel payload by its magic: xz, gzip or zstd (the formats Debian has used)."""
    if data.startswith(b"\xfd7zXZ\x00") or data.startswith(b"\x1f\x8b"):
        # Both stop at the stream's end (the payload carries a size trailer after it); a stream that does
        # not end is a truncated kernel, never to be booted half.
        d: lzma.LZMADecompressor | zlib._Decompress = (
            lzma.LZMADecompressor() if data[0] == 0xFD else zlib.decompressobj(wbits=31)
        )
        out = d.decompress(data)
        if not d.eof:
            raise NotPvhBootable("the compressed kernel ends early (truncated payload)")
        return out
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        if shutil.which("zstd") is None:
            raise NotPvhBootable("zstd payload and no `zstd` program")
        proc = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
        if proc.returncode != 0 and not proc.stdout:
            raise NotPvhBootable(f"zstd: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    raise NotPvhBootable(f"payload compression not known (magic {data[:6].hex()})")


def has_pvh_entry(elf: bytes) -> bool:
    """True when ``elf`` is a 64-bit ELF whose notes carry Xen's PVH entry point."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract(bzimage: Path) -> bytes:
    """The kernel ELF inside ``bzimage``, or :class:`NotPvhBootable` saying why it cannot be booted so."""
    elf = decompress(payload(bzimage.read_bytes()))
    if not has_pvh_entry(elf):
        raise NotPvhBootable("the kernel has no PVH entry note (built without CONFIG_PVH)")
    return elf


def cache_path(bzimage: Path, cache: Path | None = None) -> Path:
    """Where the ELF of ``bzimage`` is kept: by content, so a replaced kernel file gets a new one."""
    digest = hashlib.sha256(bzimage.read_bytes()).hexdigest()[:16]
    return (cache or kernels.cache_dir()) / "pvh" / f"{bzimage.name}-{digest}-v{EXTRACTOR_VERSION}.elf"


def boot_kernel(bzimage: Path, cache: Path | None = None) -> Path:
    """The file to give QEMU's ``-kernel`` for ``bzimage``: its cached PVH ELF, else the bzImage itself."""
    try:
        out = cache_path(bzimage, cache)
        if out.is_file():
            return out
        elf = extract(bzimage)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, elf)
        return out
    except (NotPvhBootable, OSError, lzma.LZMAError, zlib.error, struct.error) as exc:
        log.info("booting %s as a bzImage (no PVH boot: %s)", bzimage, exc)
        return bzimage
