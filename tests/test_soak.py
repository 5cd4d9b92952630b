"""The NMI soak's promise and what it kept (rig.device.soak), without a lab: pure rate logic.

The loop itself runs on the lab with a BMC killed mid-soak (tests/test_soak_lab.py). Here: what a
soak promises per source, per-minute counting, when a rate is "far below" the asked one, how a thin
soak's exposure is counted for bisect, and how a stopped source is named.
"""

from __future__ import annotations

import time

import pytest

from rig.device.soak import (
    RATE_FLOOR,
    SourceStopped,
    SourceTally,
    asked_rates,
    effective_seconds,
    shortfalls,
)
from rig.errors import LabFault


def test_soak_asks_ten_per_second_of_cheap_sources_and_one_per_five_seconds_of_slow_ones() -> None:
    rates = asked_rates(["ipmi", "qmp", "sysrq", "perf"], interval=0.1, slow_every=50)
    assert rates == pytest.approx({"ipmi": 10.0, "qmp": 10.0, "sysrq": 0.2, "perf": 0.2})
    with pytest.raises(ValueError, match="interval"):
        asked_rates(["ipmi"], interval=0)


def test_soak_counts_nmis_per_source_per_minute() -> None:
    t = SourceTally("ipmi", 10.0)
    for s in (0.5, 59.9, 60.0, 61.0, 185.0):
        t.add(1, s)
    # minute 0: two, minute 1: two, minute 2: none (the source was silent), minute 3: one
    assert t.per_minute == [2, 2, 0, 1]
    assert t.raised == 5


def test_soak_rate_far_below_the_asked_one_is_named_with_numbers() -> None:
    dying = SourceTally("ipmi", 10.0)
    dying.add(189, 10.0)  # the case: 189 NMIs in the first 20 s of a 60 s soak, none after
    dying.failed(LabFault("BMC lab-1 at 127.0.0.1:623 did not answer"))
    kept = SourceTally("sysrq", 0.2)
    kept.add(11, 30.0)
    short = shortfalls({"ipmi": dying, "sysrq": kept}, 60.0)
    assert len(short) == 1
    assert short[0].startswith("ipmi raised 3.1/s of the asked 10/s (189 NMIs in 60 s, 32%)")
    assert "did not answer" in short[0]
    # at the floor exactly is kept, below it is not
    edge = SourceTally("qmp", 10.0)
    edge.add(int(RATE_FLOOR * 10 * 60), 1.0)
    assert edge.shortfall(60.0) is None
    edge_low = SourceTally("qmp", 10.0)
    edge_low.add(int(RATE_FLOOR * 10 * 60) - 1, 1.0)
    assert edge_low.shortfall(60.0) is not None


def test_soak_too_short_to_judge_a_slow_source_says_nothing() -> None:
    t = SourceTally("sysrq", 0.2)  # a 5 s soak asks one sysrq round: no rate to judge yet
    assert t.shortfall(5.0) is None
    t.add(0, 0.0)
    assert t.shortfall(20.0) is not None  # asked 4, raised 0


def test_soak_thin_soak_counts_at_the_rate_it_achieved_for_bisect() -> None:
    full = SourceTally("ipmi", 10.0)
    full.add(540, 1.0)  # 9/s: kept the promise (tick overhead), counts in full
    assert effective_seconds({"ipmi": full}, 60.0) == 60.0
    thin = SourceTally("ipmi", 10.0)
    thin.add(60, 1.0)  # 1/s of 10/s: a tenth
    assert effective_seconds({"ipmi": thin, "sysrq": SourceTally("sysrq", 0.2)}, 60.0) == pytest.approx(0.0)
    assert effective_seconds({"ipmi": thin}, 60.0) == pytest.approx(6.0)


def test_soak_stopped_source_names_source_when_and_why() -> None:
    at = time.mktime((2026, 12, 1, 9, 0, 20, 0, 0, -1))
    cause = LabFault("BMC lab-1 at 127.0.0.1:6230 did not answer within 10s", component="bmc")
    exc = SourceStopped("ipmi", 20.4, at, cause)
    assert isinstance(exc, LabFault) and exc.component == "bmc"
    text = str(exc)
    assert "NMI source ipmi stopped 20 s into the soak (at 09:00:20)" in text
    assert "did not answer within 10s" in text and "lab fault" in text


# -- the loop's plumbing, on a real (unstarted) HangMonitor: no device, sources that keep time -----


class _Dut:
    """What run_soak asks of a Dut, around a real HangMonitor that is never started (no SSH)."""

    def __init__(self) -> None:
        from rig.device.monitor import HangMonitor
        from rig.inventory import MonitorConfig

        settings = MonitorConfig(heartbeat_interval=0.2)
        self.monitor = HangMonitor("lap-1", None, None, settings)  # type: ignore[arg-type]
        self.device = type("D", (), {"monitor": settings})()
        self.verdict_note = ""

    def verdict(self) -> object:
        return self.monitor.verdict()

    def settled_verdict(self) -> object:
        return self.monitor.verdict()


class _SlowSource:
    """Raises one 'NMI' per call, taking ``seconds``: a source that cannot keep the asked rate."""

    def __init__(self, seconds: float, fail_after: int | None = None) -> None:
        self.seconds, self.fail_after, self.calls = seconds, fail_after, 0

    def raise_(self, count: int = 1, interval: float = 0.0) -> int:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise LabFault("BMC lap-1 at 127.0.0.1:623 did not answer within 10s", component="bmc")
        time.sleep(self.seconds)
        return count


class _Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []

    def event(self, kind: str, text: str, **extra: object) -> None:
        self.events.append((kind, text, extra))


def test_soak_below_its_rate_says_so_in_the_verdict_reason_the_note_and_the_report() -> None:
    from rig.device.soak import run_soak

    dut, rep = _Dut(), _Events()
    result = run_soak(dut, {"ipmi": _SlowSource(0.4)}, 3.0, report=rep)
    assert result.verdict.ok and result.stopped is None
    assert result.shortfalls and "ipmi raised" in result.verdict.reason and "of the asked 10/s" in result.verdict.reason
    assert dut.verdict_note.startswith("soak below its asked NMI rate: ipmi raised")  # the plugin's test verdict
    kinds = [k for k, _, _ in rep.events]
    assert kinds == ["soak-start", "soak-end"]
    end = rep.events[1]
    assert "BELOW THE ASKED NMI RATE" in end[1]
    assert end[2]["per_minute"] == {"ipmi": [result.raised["ipmi"]]} and end[2]["shortfalls"] == result.shortfalls


def test_soak_source_that_stops_with_a_lab_fault_ends_the_soak_as_lab_fault() -> None:
    from rig.device.soak import run_soak
    from rig.vocab import VerdictKind

    dut, rep, src = _Dut(), _Events(), _SlowSource(0.0, fail_after=5)
    result = run_soak(dut, {"qmp": src}, 300.0, report=rep)
    assert src.calls == 6  # ended at the fault: never asked again (a66d3c1 went on for the whole soak)
    assert result.stopped is not None and result.stopped.source == "qmp"
    assert result.verdict.kind is VerdictKind.LAB_FAULT and "NMI source qmp stopped" in result.verdict.reason
    assert result.raised == {"qmp": 5}
    end = rep.events[-1][2]
    assert end["stopped"]["source"] == "qmp" and "did not answer" in end["stopped"]["why"]  # type: ignore[index]
    assert end["time_to_failure"] is None  # a lab fault is no time-to-failure of the device
