"""Lab image build time (cold and cached) and boot-to-SSH-ready per guest for 1 and 2 guests.

Method: ``rig.lab.image.build_image`` into a fresh temporary cache folder (cold), then again into the
same folder (cached: hashing the inputs only). Boot: ``Lab.up(count)`` on the benchmarks' own lab
folder; ``GuestInfo.boot_seconds`` is QEMU start to "an SSH login works" (the image is already
cached, so it is not in the figure). 1 guest, ``down``, then 2 guests started together (they share
the 2 cores: TCG is CPU-bound, so each boots slower than a guest alone). Wall clock (boots are
not CPU-only: they wait on the guest).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import make_lab
from rig.lab import image
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


def main(lab: Lab | None = None, repeat: int = 1, keep_up: bool = False) -> dict[str, Any]:
    r = image_times(repeat)
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

    return (
        f"image cold {fmt(r['cold_s'])} s, cached {', '.join(f'{x * 1000:.0f}' for x in r['cached_s'])} ms "
        f"(initramfs {r['initramfs_bytes'] / 1e6:.1f} MB); boot ({r['accel']}) 1 guest: {fmt(r['boot_1'])} s; "
        f"2 guests: {fmt(r['boot_2'])} s (median {statistics.median(r['boot_2']):.1f} s)"
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
