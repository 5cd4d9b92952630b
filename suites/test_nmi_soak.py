"""NMIs from every offered source for --rig-soak-minutes while the heartbeat keeps going.

The original Shadow-box hang needed about 20 minutes of NMIs on one laptop model; the default
soak is that long. Any crash or hang fails the test with its evidence (the plugin adds the
console excerpt); the time from the start of the soak to the verdict is recorded as time-to-hang.
"""

from __future__ import annotations

import time

import pytest

from rig.errors import RigError, Unavailable

NMI_INTERVAL = 0.1  # seconds between rounds: about 10 NMIs per second per source


@pytest.mark.soak
def test_nmi_soak(dut, shadowbox, rig_report, nmi_sources, soak_minutes):
    if not nmi_sources:
        pytest.skip(f"{dut.name}: no NMI source available")
    # sysrq backtraces flood a 115200-baud console; keep them rarer than the cheap sources.
    cheap = {n: s for n, s in nmi_sources.items() if n in ("ipmi", "qmp")}
    slow = {n: s for n, s in nmi_sources.items() if n not in cheap}
    raised = dict.fromkeys(nmi_sources, 0)
    start = time.monotonic()
    end = start + soak_minutes * 60
    rig_report.event("soak-start", f"{soak_minutes:g} min, sources {', '.join(nmi_sources)}")
    rounds = 0
    while time.monotonic() < end:
        try:
            for name, src in cheap.items():
                raised[name] += src.raise_(1)
            if rounds % 50 == 0:
                for name, src in slow.items():
                    raised[name] += src.raise_(1)
        except Unavailable:
            raise
        except RigError:
            # The device may just have died under us: let the monitor decide within its bound.
            dut.monitor.wait(timeout=3 * dut.device.monitor.heartbeat_interval + 5)
        rounds += 1
        if dut.monitor.wait(timeout=NMI_INTERVAL) is not None:
            break
    elapsed = time.monotonic() - start  # to the verdict, before it settles (a hang may still turn into a panic)
    verdict = dut.settled_verdict()
    rig_report.event(
        "soak-end",
        f"{elapsed:.0f} s, raised {raised}, verdict {verdict.text}",
        seconds=elapsed,
        raised=raised,
        time_to_failure=None if verdict.ok else elapsed,
    )
    assert verdict.ok, f"{verdict.text} after {elapsed:.0f} s of NMIs ({raised}): {verdict.reason}"
