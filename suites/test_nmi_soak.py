"""NMIs from every offered source for --rig-soak-minutes while the heartbeat keeps going.

The original Shadow-box hang needed about 20 minutes of NMIs on one laptop model; the default
soak is that long. Any crash or hang fails the test with its evidence (the plugin adds the
console excerpt); the time from the start of the soak to the verdict is recorded as time-to-hang.

The loop is :func:`rig.device.soak.run_soak` (shared with ``rig bisect``): it keeps each source's asked
and achieved rate and the NMIs raised per minute (report.json, ``soak-end`` event). A source that
stops with a lab fault (BMC gone) ends the soak as a lab fault naming the source; a rate far
below the asked one is said in the verdict's reason.
"""

from __future__ import annotations

import pytest

from rig.device.soak import run_soak


@pytest.mark.soak
def test_nmi_soak(dut, shadowbox, rig_report, nmi_sources, soak_minutes):
    if not nmi_sources:
        pytest.skip(f"{dut.name}: no NMI source available")
    result = run_soak(dut, nmi_sources, soak_minutes * 60, report=rig_report)
    if result.stopped is not None:
        raise result.stopped  # a LabFault: the plugin reports it as lab-fault, never the device's failure
    verdict = result.verdict
    assert verdict.ok, f"{verdict.text} after {result.seconds:.0f} s of NMIs ({result.rates_text()}): {verdict.reason}"
