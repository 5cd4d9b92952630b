"""Parsing /proc/interrupts and judging delivery from per-CPU deltas.

The text comes from real kernels: this machine's own /proc/interrupts, and a 16-CPU layout with an
offline CPU. Raising NMIs on real devices is tested in test_nmi_lab.py against lab guests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.device.nmi import Delivery, InterruptCounts, parse_proc_interrupts
from rig.errors import DeviceError

WITH_OFFLINE_CPU = """\
           CPU0       CPU1       CPU3
  0:         44          0          0   IO-APIC   2-edge      timer
NMI:         16        778         21   Non-maskable interrupts
LOC:     123456     234567     345678   Local timer interrupts
PMI:         16        778         21   Performance monitoring interrupts
ERR:          0
"""


def test_parse_this_machines_proc_interrupts() -> None:
    text = Path("/proc/interrupts").read_text()
    counts = parse_proc_interrupts(text)
    header_cpus = text.splitlines()[0].split()
    assert len(counts.cpus) == len(header_cpus)
    assert len(counts.row("NMI")) == len(counts.cpus)


def test_offline_cpus_keep_their_numbers() -> None:
    c = parse_proc_interrupts(WITH_OFFLINE_CPU)
    assert c.cpus == (0, 1, 3)
    assert c.row("NMI") == (16, 778, 21)
    assert c.row("MCE") == (0, 0, 0)  # absent rows read as zeros


def test_not_proc_interrupts() -> None:
    with pytest.raises(DeviceError, match="no CPU header"):
        parse_proc_interrupts("bash: cat: not found\n")


def _counts(nmi: tuple[int, ...]) -> InterruptCounts:
    return InterruptCounts(cpus=tuple(range(len(nmi))), rows={"NMI": nmi})


def test_delivery_names_the_missing_cpu() -> None:
    d = Delivery("qmp", 3, _counts((5, 5)), _counts((8, 5)), expected_cpus=(0, 1))
    assert d.per_cpu == (3, 0)
    assert not d.ok and d.missing_cpus == [1]
    assert "MISSING on cpu 1" in d.summary()
    d = Delivery("qmp", 3, _counts((5, 5)), _counts((8, 6)), expected_cpus=(0, 1))
    assert d.ok and d.counted == 4


def test_nothing_raised_is_not_ok() -> None:
    assert not Delivery("ipmi", 0, _counts((1,)), _counts((2,)), expected_cpus=(0,)).ok


def test_every_named_nmi_source_has_one_class_and_the_names_agree() -> None:
    """rig.vocab names the sources (inventory, CLI, suites read it); rig.device.nmi.SOURCES builds them."""
    from rig.device.nmi import SOURCES, NmiMeans
    from rig.vocab import NMI_SOURCE_NAMES

    assert tuple(SOURCES) == NMI_SOURCE_NAMES
    runner = object()
    for name, make in SOURCES.items():
        src = make(NmiMeans(runner))  # type: ignore[arg-type]  # built, not run: no command is sent
        assert src.name == name, (name, type(src).__name__)


def test_inventory_refuses_an_nmi_source_outside_the_registry(tmp_path: Path) -> None:
    from rig.errors import InventoryError
    from rig.inventory import load_device

    f = tmp_path / "x.toml"
    f.write_text('name = "x"\nnmi_sources = ["sysrq", "magic"]\n[ssh]\nhost = "h"\nuser = "u"\n')
    with pytest.raises(InventoryError) as info:
        load_device(f)
    from rig.vocab import NMI_SOURCE_NAMES

    msg = str(info.value)
    assert "nmi_sources.1" in msg and all(f"'{n}'" in msg for n in NMI_SOURCE_NAMES), msg
