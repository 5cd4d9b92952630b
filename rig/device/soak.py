"""The NMI soak: every offered NMI source, round after round, while the hang monitor watches.

One piece of code for both users -- the soak suite (``suites/test_nmi_soak.py``) and the bisect
oracle (:mod:`rig.runs.bisect`) -- because both make the same claim: "the device survived T seconds of
NMIs". That claim is only true if the NMIs were raised. So a soak keeps, per source, the rate it
promised (asked) and the rate it achieved, and the NMIs raised in each minute:

* A source that stops with a :class:`~rig.errors.LabFault` (BMC unreachable, login refused) ends
  the soak at once as a lab fault (:class:`SourceStopped`) naming the source, when and why. Before
  this, the loop caught the fault and went on: a soak whose BMC died 20 s in passed as "ok".
* A source that achieved far less than its asked rate (below :data:`RATE_FLOOR`) is named in the
  result's verdict reason and in the report (``soak-end`` event: ``rates``, ``per_minute``).
* The bisect oracle counts a thin soak's exposure at the rate it achieved
  (:attr:`SoakResult.effective_seconds`), since its 'good' verdicts rest on soak length.

Which sources are cheap: ``ipmi`` and ``qmp`` are raised every round; the others (``sysrq``,
``perf``) print a backtrace or run a command on the device and would flood a 115200-baud console,
so they are raised once every :data:`SLOW_EVERY` rounds.

The rate logic (:class:`SourceTally`, :func:`shortfalls`) is pure and tested without a lab
(tests/test_soak.py); the loop is tested on the lab with a BMC killed mid-soak
(tests/test_soak_lab.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from rig.device.monitor import Verdict
from rig.errors import LabFault, RigError, Unavailable
from rig.vocab import VerdictKind

#: Seconds between rounds: about 10 NMIs per second per cheap source.
NMI_INTERVAL = 0.1
#: A slow source is raised once every this many rounds (about one per 5 s at the default interval).
SLOW_EVERY = 50
#: Sources cheap enough to raise every round.
CHEAP_SOURCES = ("ipmi", "qmp")
#: A source whose achieved rate is below this fraction of its asked rate fell short of its promise.
RATE_FLOOR = 0.5
#: A rate is judged only once this many NMIs were asked of the source (a 3 s soak asks under one sysrq).
MIN_ASKED_TO_JUDGE = 2.0


class _Source(Protocol):
    def raise_(self, count: int = 1, interval: float = 0.0) -> int: ...


class _Report(Protocol):
    def event(self, kind: str, text: str, **extra: Any) -> None: ...


@dataclass
class SourceTally:
    """One source's promise and what it kept: NMIs raised in total and per minute of the soak."""

    name: str
    asked_per_s: float
    raised: int = 0
    per_minute: list[int] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""

    def add(self, count: int, since_start: float) -> None:
        """Count ``count`` NMIs raised ``since_start`` seconds into the soak (its minute's bucket)."""
        minute = max(0, int(since_start // 60))
        while len(self.per_minute) <= minute:
            self.per_minute.append(0)
        self.per_minute[minute] += count
        self.raised += count

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def achieved_per_s(self, seconds: float) -> float:
        return self.raised / seconds if seconds > 0 else 0.0

    def shortfall(self, seconds: float) -> str | None:
        """Why this source fell short of its promise over ``seconds`` (None if it kept it, or too early to say)."""
        asked = self.asked_per_s * seconds
        if asked < MIN_ASKED_TO_JUDGE:
            return None
        achieved = self.achieved_per_s(seconds)
        if achieved >= RATE_FLOOR * self.asked_per_s:
            return None
        text = (
            f"{self.name} raised {achieved:.2g}/s of the asked {self.asked_per_s:.2g}/s "
            f"({self.raised} NMIs in {seconds:.0f} s, {self.raised / asked:.0%})"
        )
        if self.errors:
            text += f"; {self.errors} error(s), last: {self.last_error}"
        return text

    def to_json(self, seconds: float) -> dict[str, Any]:
        return {
            "asked_per_s": round(self.asked_per_s, 3),
            "achieved_per_s": round(self.achieved_per_s(seconds), 3),
            "raised": self.raised,
            "per_minute": list(self.per_minute),
            "errors": self.errors,
            "last_error": self.last_error,
        }


def asked_rates(names: list[str], interval: float = NMI_INTERVAL, slow_every: int = SLOW_EVERY) -> dict[str, float]:
    """NMIs per second the soak promises per source: 1/interval for cheap ones, 1/(interval*slow_every) else."""
    if interval <= 0 or slow_every < 1:
        raise ValueError(f"soak interval {interval} and slow_every {slow_every} must be positive")
    return {n: (1.0 / interval if n in CHEAP_SOURCES else 1.0 / (interval * slow_every)) for n in names}


def shortfalls(tallies: Mapping[str, SourceTally], seconds: float) -> list[str]:
    """Every source's shortfall over ``seconds``, in order."""
    return [s for t in tallies.values() if (s := t.shortfall(seconds)) is not None]


def effective_seconds(tallies: Mapping[str, SourceTally], seconds: float) -> float:
    """``seconds`` at the asked rate: scaled down by the worst fraction achieved when a source fell short.

    Why: the bisect oracle calls a commit good after T seconds of NMIs; T seconds at a tenth of the
    rate are not T seconds of evidence. A soak that kept its promise counts in full.
    """
    if not shortfalls(tallies, seconds):
        return seconds
    fractions = [
        min(1.0, t.achieved_per_s(seconds) / t.asked_per_s) for t in tallies.values() if t.asked_per_s * seconds > 0
    ]
    return seconds * (min(fractions) if fractions else 1.0)


class SourceStopped(LabFault):
    """An NMI source failed with a lab fault mid-soak: the soak ends there, as a lab fault naming it."""

    def __init__(self, source: str, after: float, at: float, cause: BaseException) -> None:
        when = time.strftime("%H:%M:%S", time.localtime(at))
        super().__init__(
            f"NMI source {source} stopped {after:.0f} s into the soak (at {when}): {cause}; the soak ended "
            "there (it did not raise the NMIs it promised): a lab fault, not the device's",
            component=getattr(cause, "component", "lab"),
        )
        self.source = source
        self.after = after
        self.at = at
        self.cause = str(cause)


@dataclass
class SoakResult:
    """What one soak did: how long, with which NMIs, and the device's verdict (settled)."""

    seconds: float
    verdict: Verdict
    tallies: dict[str, SourceTally]
    stopped: SourceStopped | None = None
    started: float = 0.0  # wall time of the first NMI round

    @property
    def raised(self) -> dict[str, int]:
        return {n: t.raised for n, t in self.tallies.items()}

    @property
    def shortfalls(self) -> list[str]:
        return shortfalls(self.tallies, self.seconds)

    @property
    def effective_seconds(self) -> float:
        return effective_seconds(self.tallies, self.seconds)

    def rates_text(self) -> str:
        return ", ".join(
            f"{n} {t.raised} ({t.achieved_per_s(self.seconds):.2g}/s of {t.asked_per_s:.2g}/s)"
            for n, t in self.tallies.items()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "effective_seconds": round(self.effective_seconds, 1),
            "verdict": self.verdict.text,
            "reason": self.verdict.reason,
            "sources": {n: t.to_json(self.seconds) for n, t in self.tallies.items()},
            "shortfalls": self.shortfalls,
            "stopped": None
            if self.stopped is None
            else {"source": self.stopped.source, "after": round(self.stopped.after, 1), "at": self.stopped.at,
                  "why": self.stopped.cause},
        }  # fmt: skip


def run_soak(
    dut: Any,
    sources: Mapping[str, _Source],
    seconds: float,
    *,
    interval: float = NMI_INTERVAL,
    slow_every: int = SLOW_EVERY,
    report: _Report | None = None,
) -> SoakResult:
    """NMIs from ``sources`` for ``seconds`` (or until the monitor's verdict); see the module docstring.

    ``dut`` needs ``monitor`` (``wait``), ``device.monitor.heartbeat_interval``, ``verdict()`` and
    ``settled_verdict()`` (a :class:`rig.device.dut.Dut`). A source that is :class:`Unavailable` mid-soak
    raises (the caller skips); a source's :class:`LabFault` ends the soak (``result.stopped``, and the
    verdict is a lab fault unless the device had failed already); any other error is the device's
    to explain: the monitor is given its detection bound, and the soak goes on if it says nothing.
    """
    names = list(sources)
    rates = asked_rates(names, interval, slow_every)
    tallies = {n: SourceTally(n, rates[n]) for n in names}
    cheap = [n for n in names if n in CHEAP_SOURCES]
    slow = [n for n in names if n not in CHEAP_SOURCES]
    detect_bound = 3 * dut.device.monitor.heartbeat_interval + 5
    if report is not None:
        report.event("soak-start", f"{seconds:.0f} s, sources {', '.join(names)}", asked_per_s=rates)
    start, start_wall = time.monotonic(), time.time()
    end = start + seconds
    stopped: SourceStopped | None = None
    rounds = 0
    while time.monotonic() < end and stopped is None:
        due = cheap + (slow if rounds % slow_every == 0 else [])
        for name in due:
            try:
                tallies[name].add(sources[name].raise_(1), time.monotonic() - start)
            except Unavailable:
                raise
            except LabFault as exc:
                tallies[name].failed(exc)
                stopped = SourceStopped(name, time.monotonic() - start, time.time(), exc)
                break
            except RigError as exc:
                # The device may just have died under us: let the monitor decide within its bound.
                tallies[name].failed(exc)
                dut.monitor.wait(timeout=detect_bound)
                break
        rounds += 1
        if stopped is None and dut.monitor.wait(timeout=interval) is not None:
            break
    elapsed = time.monotonic() - start  # to the verdict, before it settles (a hang may still turn into a panic)
    if stopped is not None and dut.verdict().ok:
        verdict = Verdict(VerdictKind.LAB_FAULT, stopped.source, str(stopped))
    else:
        verdict = dut.settled_verdict()
    result = SoakResult(elapsed, verdict, tallies, stopped, started=start_wall)
    short = result.shortfalls
    if short and verdict.ok:
        result.verdict = replace(verdict, reason="; ".join([*filter(None, [verdict.reason]), *short]))
        if hasattr(dut, "verdict_note"):
            dut.verdict_note = "soak below its asked NMI rate: " + "; ".join(short)  # the plugin's test verdict says it
    if report is not None:
        what = f"{elapsed:.0f} s (started {time.strftime('%H:%M:%S', time.localtime(start_wall))}), raised " + (
            f"{result.rates_text()}, verdict {result.verdict.text}"
        )
        if short:
            what += "; BELOW THE ASKED NMI RATE: " + "; ".join(short)
        if stopped is not None:
            what += f"; {stopped}"
        report.event(
            "soak-end",
            what,
            seconds=elapsed,
            raised=result.raised,
            per_minute={n: list(t.per_minute) for n, t in tallies.items()},
            rates={n: t.to_json(elapsed) for n, t in tallies.items()},
            shortfalls=short,
            stopped=result.to_json()["stopped"],
            time_to_failure=None if verdict.ok or stopped is not None else elapsed,
        )
    return result
