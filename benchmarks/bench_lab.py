"""Lab image build time (cold and cached) and boot-to-SSH-ready per guest for 1 and 2 guests.

Method: ``rig.lab.image.build_image`` into a fresh temporary cache folder (cold), then again into the
same folder (cached: hashing the inputs only). Boot: ``Lab.up(count)`` on the benchmarks' own lab
folder; ``GuestInfo.boot_seconds`` is QEMU start to "an SSH login works" (the image is already
cached, so it is not in the figure). 1 guest, ``down``, then 2 guests started together (they share
the 2 cores: TCG is CPU-bound, so each boots slower than a guest alone). Wall clock (boots are
not CPU-only: they wait on the guest).

PVH beside bzImage (``boot_kinds``): one guest's QEMU, started by the lab's own ``guest.start_qemu``
with the lab's command line, booted alternately from the bzImage and from its PVH ELF
(rig.lab.pvh), one at a time; wall seconds from QEMU start to the guest's ``rig-lab: NAME ready``
console line, and the QEMU process's CPU seconds at that moment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import make_lab
from rig.lab import guest, image, pvh
from rig.lab.manager import Lab


def image_times(repeat: int = 1) -> dict[str, Any]:
    cold: list[float] = []
    cached: list[float] = []
    for _ in range(repeat):
        d = Path(tempfile.mkdtemp(prefix="bench-image-"))
        try:
            t0 = time.monotonic()
            img = image.build_image(d)
            cold.append(time.monotonic() - t0)
            assert img.built, "a fresh cache folder must build"
            t0 = time.monotonic()
            img2 = image.build_image(d)
            cached.append(time.monotonic() - t0)
            assert not img2.built, "the second build must come from the cache"
            size = img.initramfs.stat().st_size
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return {"cold_s": cold, "cached_s": cached, "initramfs_bytes": size, "digest": img.digest}


def boot_times(lab: Lab, counts: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Boot seconds per guest for each count; leaves the lab up with the last count (caller downs it)."""
    out: dict[str, Any] = {}
    for n in counts:
        lab.down()
        infos = lab.up(count=n)
        out[f"boot_{n}"] = [float(i.boot_seconds or 0.0) for i in infos]
        out["accel"] = infos[0].accel
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _qemu_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boot_kinds(rounds: int = 3, timeout: float = 120.0) -> dict[str, Any]:
    """Boot one guest from the bzImage and from its PVH ELF, alternately: seconds and QEMU CPU to ready."""
    work = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    try:
        img = image.build_image(work / "image")
        key = image.ensure_client_key(work / "keys")
        gdir = work / "g"
        gdir.mkdir()
        image.guest_initrd(img, gdir, "bench-boot", key.with_suffix(".pub").read_text())
        paths = guest.GuestPaths(gdir)
        kinds = {"bzImage": img.kernel, "pvh": pvh.boot_kernel(img.kernel)}
        if kinds["pvh"] == img.kernel:
            return {"pvh_available": False}
        out: dict[str, Any] = {"pvh_available": True, **{k: {"wall_s": [], "cpu_s": []} for k in kinds}}
        for _ in range(rounds):
            for kind, kernel in kinds.items():
                paths.serial_log.unlink(missing_ok=True)
                cfg = guest.QemuConfig(name="bench-boot", kernel=kernel, ssh_port=_free_port())
                t0 = time.monotonic()
                pid = guest.start_qemu(cfg, paths)
                try:
                    while b"rig-lab: bench-boot ready" not in (paths.serial_log.read_bytes()
                                                               if paths.serial_log.exists() else b""):
                        if time.monotonic() - t0 > timeout:
                            raise RuntimeError(f"{kind}: no ready line within {timeout:.0f} s")
                        time.sleep(0.05)
                    out[kind]["wall_s"].append(time.monotonic() - t0)
                    out[kind]["cpu_s"].append(_qemu_cpu_seconds(pid))
                finally:
                    os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)  # start_qemu's child: reap it before the next boot
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(lab: Lab | None = None, repeat: int = 1, keep_up: bool = False) -> dict[str, Any]:
    r = image_times(repeat)
    r["kinds"] = boot_kinds()
    own = lab is None
    the_lab = lab or make_lab()
    try:
        r.update(boot_times(the_lab))
    finally:
        if own and not keep_up:
            the_lab.down()
    return r


def summary(r: dict[str, Any]) -> str:
    def fmt(xs: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in xs)

    k = r.get("kinds", {})
    kinds = (f"; one guest alone, bzImage {fmt(k['bzImage']['wall_s'])} s / PVH {fmt(k['pvh']['wall_s'])} s"
             if k.get("pvh_available") else "")
    return (
        f"image cold {fmt(r['cold_s'])} s, cached {', '.join(f'{x * 1000:.0f}' for x in r['cached_s'])} ms "
        f"(initramfs {r['initramfs_bytes'] / 1e6:.1f} MB); boot ({r['accel']}) 1 guest: {fmt(r['boot_1'])} s; "
        f"2 guests: {fmt(r['boot_2'])} s (median {statistics.median(r['boot_2']):.1f} s)"
        + kinds
    )


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="cold/cached image builds (default 1)")
    args = ap.parse_args(argv)
    r = main(repeat=args.repeat)
    print(summary(r))
    return r


if __name__ == "__main__":
    cli()
