"""The benchmarks' own virtual lab: a folder of its own, so a benchmark never disturbs other work.

Why a separate folder (``/tmp/bench-lab``, or ``$RIG_BENCH_LAB``): the checkout's ``.lab`` and the
tests' temporary labs may be in use by someone else on the same machine; ports derive from the lab
folder (rig.lab.ports), so a distinct folder also means distinct ports.

``bench_lab(count)`` is a context manager: it brings ``count`` guests up (reusing a running lab when
the caller passes one) and always takes down what it started, even when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

from rig.device.dut import Dut
from rig.inventory import Device, load_inventory
from rig.lab.manager import Lab


def bench_root() -> Path:
    return Path(os.environ.get("RIG_BENCH_LAB", "/tmp/bench-lab"))


def make_lab() -> Lab:
    root = bench_root()
    return Lab(root=root / "state", inventory_dir=root / "devices")


@contextlib.contextmanager
def bench_lab(count: int = 2, lab: Lab | None = None) -> Iterator[Lab]:
    """A lab with at least ``count`` guests; ``down()`` at the end only if this call started it."""
    if lab is not None:
        lab.up(count=count)
        yield lab
        return
    own = make_lab()
    try:
        own.up(count=count)
        yield own
    finally:
        own.down()


def devices(lab: Lab) -> list[Device]:
    return load_inventory([lab.inventory_dir])


def open_dut(lab: Lab, name: str, log_dir: Path) -> Dut:
    """The device ``name`` of the lab, opened (lock, console, SSH, hang monitor) the way a suite gets it."""
    dev = next(d for d in devices(lab) if d.name == name)
    return Dut(dev, log_dir, lock_wait=30.0).open()


def rss_mib() -> float:
    """Resident set size of this process now, MiB (from /proc; ru_maxrss is the peak, not the current)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
