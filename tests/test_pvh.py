"""The lab boots the ELF inside a bzImage through PVH (rig.lab.pvh): found, cached, or the bzImage itself."""

from __future__ import annotations

import gzip
import lzma
import os
import struct
from pathlib import Path

import pytest

from rig.lab import image, pvh


def _elf(with_pvh_note: bool) -> bytes:
    """A minimal 64-bit ELF: header, one PT_NOTE program header, and a note (Xen's PVH entry or another)."""
    name = b"Xen\0"
    ntype = pvh.XEN_ELFNOTE_PHYS32_ENTRY if with_pvh_note else 6
    note = struct.pack("<III", len(name), 4, ntype) + name + struct.pack("<I", 0x1000000)
    phoff, phentsize = 64, 56
    note_off = phoff + phentsize
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, 1)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note + b"\0" * 64


def _bzimage(payload: bytes, *, setup_sects: int = 2, version: int = 0x20F) -> bytes:
    """A bzImage shell: the boot header's fields that place ``payload`` after the setup sectors."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    offset = 0x40  # the decompressor's code sits before the payload in a real image
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + b"\x90" * offset + payload + struct.pack("<I", 12345)  # size trailer, as in Linux


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress], ids=["xz", "gzip"])
def test_the_elf_inside_a_bzimage_is_booted_and_cached(tmp_path: Path, compress: object) -> None:
    elf = _elf(with_pvh_note=True)
    kernel = tmp_path / "vmlinuz-test"
    kernel.write_bytes(_bzimage(compress(elf)))  # type: ignore[operator]
    booted = pvh.boot_kernel(kernel, tmp_path / "cache")
    assert booted != kernel and booted.read_bytes() == elf
    stamp = booted.stat().st_mtime_ns
    os.utime(booted, ns=(stamp - 10**9, stamp - 10**9))
    assert pvh.boot_kernel(kernel, tmp_path / "cache") == booted
    assert booted.stat().st_mtime_ns == stamp - 10**9, "a cached ELF must not be extracted again"
    kernel.write_bytes(_bzimage(compress(elf + b"changed")))  # type: ignore[operator]
    assert pvh.boot_kernel(kernel, tmp_path / "cache") != booted, "a replaced kernel file gets its own ELF"


@pytest.mark.parametrize(
    "content, reason",
    [
        (_bzimage(lzma.compress(_elf(with_pvh_note=False))), "no PVH entry note"),
        (_bzimage(b"BZh91AY&SY" + b"\0" * 32), "compression not known"),
        (_bzimage(lzma.compress(_elf(True)), version=0x207), "older than 2.08"),
        (b"MZ" + b"\0" * 1000, "not a bzImage"),
        (_bzimage(lzma.compress(_elf(True)))[:700], "outside the file"),
    ],
    ids=["no-note", "bzip2", "old-protocol", "not-bzimage", "truncated"],
)
def test_a_kernel_that_cannot_boot_through_pvh_boots_as_its_bzimage(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    kernel = tmp_path / "vmlinuz-test"
    kernel.write_bytes(content)
    with pytest.raises(pvh.NotPvhBootable, match=reason):
        pvh.extract(kernel)
    assert pvh.boot_kernel(kernel, tmp_path / "cache") == kernel
    assert not list((tmp_path / "cache").rglob("*.elf"))


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress], ids=["xz", "gzip"])
def test_a_corrupt_or_cut_payload_boots_as_its_bzimage(tmp_path: Path, compress: object) -> None:
    kernel = tmp_path / "vmlinuz-test"
    kernel.write_bytes(_bzimage(b"\xfd7zXZ\x00" + b"\x55" * 200))
    assert pvh.boot_kernel(kernel, tmp_path / "cache") == kernel
    whole = compress(_elf(with_pvh_note=True) + bytes(4096))  # type: ignore[operator]
    kernel.write_bytes(_bzimage(whole[: len(whole) // 2]))  # the stream stops half-way: its ELF is cut
    with pytest.raises(pvh.NotPvhBootable, match="ends early"):
        pvh.extract(kernel)
    assert pvh.boot_kernel(kernel, tmp_path / "cache") == kernel


def test_the_hosts_debian_kernel_has_a_pvh_entry(tmp_path: Path) -> None:
    """Debian builds CONFIG_PVH: the lab's kernel must come out as an ELF, or every boot pays ~4 s more."""
    kernel = image.lab_kernel().vmlinuz
    if not os.access(kernel, os.R_OK):
        pytest.skip(f"{kernel} is not readable here")
    booted = pvh.boot_kernel(kernel, tmp_path)
    assert booted != kernel
    assert pvh.has_pvh_entry(booted.read_bytes())
