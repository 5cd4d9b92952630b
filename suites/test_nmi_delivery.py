"""Every NMI source the device offers reaches every CPU while Shadow-box runs.

Delivery is proved from per-CPU deltas of /proc/interrupts (NMI:, or PMI: for perf). A source
the device cannot offer (no BMC, no PMU, BMC refuses diag, not a VM) is skipped with its reason.
Shadow-box's host-side callbacks (``VM [n] INT NMI callback``) are counted per CPU when present.
"""

from __future__ import annotations

import pytest

from rig.errors import Unavailable
from rig.vocab import NMI_SOURCE_NAMES

SOURCES = list(NMI_SOURCE_NAMES)


@pytest.mark.parametrize("source", SOURCES)
def test_nmi_reaches_every_cpu(dut, shadowbox, rig_report, source):
    if source not in dut.device.nmi_sources:
        pytest.skip(f"{dut.name}: {source} is not in nmi_sources ({dut.device.source_file})")
    src = dut.nmi_source(source)
    mark = dut.console.mark() if dut.console is not None else None
    try:
        delivery = src.deliver(count=3, interval=0.3, settle=1.0)
    except Unavailable as exc:
        pytest.skip(f"{dut.name}: {exc}")
    rig_report.nmi_delivery(f"test_nmi_reaches_every_cpu[{source}]", delivery)
    if mark is not None:
        callbacks = dut.shadowbox_callbacks(since=mark)
        if callbacks:
            rig_report.shadowbox_callbacks(callbacks)
    assert delivery.ok, delivery.summary()
