"""A silence verdict (hang) turns into the crash or reboot the console prints within crash_tail_seconds.

Why a simulated clock and direct console lines: what is under test is the monitor's bookkeeping
after a verdict (which line may replace it, until when), which real time cannot interleave on
demand. Nothing stands in for a real peer: the monitor is never started (no SSH, no watcher
thread), the hang is latched the way the watcher latches it, and the console lines are real lines
from tests/data/console captures. The whole path on lab guests is in tests/test_rig_lab.py.
"""

from __future__ import annotations

import threading
import time

from rig.console.capture import ConsoleLine
from rig.device.monitor import HangMonitor
from rig.inventory import MonitorConfig
from rig.vocab import VerdictKind

PANIC = "[  812.345678] Kernel panic - not syncing: NMI: Not continuing"
BANNER = "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14))"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def hung_monitor(clock: Clock, tail: float = 10.0) -> HangMonitor:
    mon = HangMonitor("lap-1", ssh=None, console=None, settings=MonitorConfig(crash_tail_seconds=tail), clock=clock)  # type: ignore[arg-type]
    with mon._lock:
        mon._declare(VerdictKind.HANG, None, "no heartbeat for 2.0 s and an SSH probe did not answer")
    return mon


def line(n: int, text: str, clock: Clock) -> ConsoleLine:
    return ConsoleLine(number=n, time=time.time(), monotonic=clock.t, text=text)


def test_a_panic_printed_soon_after_a_hang_verdict_replaces_it() -> None:
    clock = Clock()
    mon = hung_monitor(clock)
    clock.t += 4.7  # the lab's panicking CPU under an NMI flood
    mon.on_line(line(1, PANIC, clock))
    v = mon.verdict()
    assert v.kind is VerdictKind.CRASH and v.text == "crash(panic)"
    assert "4.7 s after the silence was declared hang" in v.reason and "no heartbeat" in v.reason


def test_a_boot_banner_soon_after_a_hang_verdict_is_a_reboot() -> None:
    clock = Clock()
    mon = hung_monitor(clock)
    clock.t += 8.0
    mon.on_line(line(1, BANNER, clock))
    assert mon.verdict().kind is VerdictKind.REBOOT


def test_too_late_or_not_a_silence_verdict_stays() -> None:
    clock = Clock()
    mon = hung_monitor(clock, tail=3.0)
    clock.t += 3.5
    mon.on_line(line(1, PANIC, clock))
    assert mon.verdict().kind is VerdictKind.HANG  # after the window: the hang stands
    crashed = HangMonitor("lap-2", ssh=None, console=None, settings=MonitorConfig(), clock=clock)  # type: ignore[arg-type]
    crashed.on_line(line(1, PANIC, clock))
    crashed.on_line(line(2, BANNER, clock))
    assert crashed.verdict().text == "crash(panic)"  # a crash is never turned into a reboot


def test_settled_waits_out_the_window_and_wakes_on_the_crash() -> None:
    clock = Clock()
    mon = hung_monitor(clock)
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(mon.settled().text))
    waiter.start()
    time.sleep(0.3)
    assert not got  # still inside the window: not settled yet
    mon.on_line(line(1, PANIC, clock))
    waiter.join(timeout=5)
    assert got == ["crash(panic)"]
    clock.t += 20  # a fresh hang, window over: settled returns it at once
    other = hung_monitor(clock, tail=1.0)
    clock.t += 2
    assert other.settled().kind is VerdictKind.HANG


def heartbeat(mon: HangMonitor, n: int, clock: Clock) -> None:
    mon.on_line(line(n, f"[  {clock.t:.6f}] rig-heartbeat {mon._token} {n}", clock))


def test_margin_is_the_longest_heartbeat_gap_and_a_recovery_starts_it_afresh() -> None:
    """report.json's ``liveness``: how close a healthy device came to the 2H of silence a hang needs."""
    clock = Clock()
    mon = HangMonitor("lap-1", ssh=None, console=None, settings=MonitorConfig(heartbeat_interval=1.0), clock=clock)  # type: ignore[arg-type]
    for n, dt in enumerate([0.0, 1.0, 1.8, 1.0], start=1):
        clock.t += dt
        heartbeat(mon, n, clock)
    m = mon.margin()
    assert m["heartbeats"] == 4 and abs(m["longest_heartbeat_gap"] - 1.8) < 1e-6, m
    assert m["hang_needs_silence"] == 2.0 and m["silence_probe_deadline"] == 1.0
    mon.pause()  # a power cycle on purpose: 60 s without heartbeats say nothing of the device's margin
    clock.t += 60
    mon.resume()
    heartbeat(mon, 5, clock)
    clock.t += 1.1
    heartbeat(mon, 6, clock)
    assert abs(mon.margin()["longest_heartbeat_gap"] - 1.8) < 1e-6, mon.margin()
