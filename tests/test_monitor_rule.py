"""The hang rule (rig.device.monitor.HangRule) driven by a simulated clock.

Why simulated: the rule is pure logic (times and probe outcomes in, probes to start and verdicts
out), and the cases that matter -- a probe answering just before or after the silence deadline, a
heartbeat arriving while a probe is in flight -- need exact interleavings that real time cannot
produce on demand. Nothing here stands in for a real peer: the clock is a number this file
advances, and "probe answered after d seconds" is a scripted outcome. The real SSH probe and the
real console are exercised on lab guests in tests/test_rig_lab.py.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

from rig.device.monitor import STARTUP_GRACE, HangRule, Probe, silence_probe_deadline
from rig.vocab import VerdictKind

H = 1.0
TICK = 0.1

#: A scripted probe outcome: (answered ok?, after how many seconds), or None = never answers.
Answer = Callable[[Probe], tuple[bool, float] | None]


def simulate(
    heartbeats: list[float],
    answer: Answer,
    until: float,
    *,
    h: float = H,
    has_console: bool = True,
    console_ok: Callable[[float], bool] = lambda t: True,
) -> list[tuple[float, VerdictKind, str]]:
    """Run the rule the way HangMonitor's watcher does, every TICK of simulated time.

    Returns every verdict with its time; after a verdict the rule is reset (like ``resume()``), so a
    run can show more than one.
    """
    rule = HangRule(h, 2.0, 3.0, has_console=has_console, now=0.0)
    pending: list[tuple[float, Probe, bool]] = []  # (answer time, probe, ok)
    hbs = sorted(heartbeats)
    verdicts: list[tuple[float, VerdictKind, str]] = []
    steps = int(round(until / TICK))
    for i in range(1, steps + 1):
        now = i * TICK
        while hbs and hbs[0] <= now:
            rule.heartbeat(hbs.pop(0))
        for item in [x for x in pending if x[0] <= now]:
            pending.remove(item)
            rule.probe_ended(item[1], item[2], item[0])
        ok = console_ok(now)
        d = rule.judge(now, console_ok=ok)
        if d is not None:
            verdicts.append((now, d.kind, d.reason))
            rule.reset(now)
            pending.clear()
            continue
        start = rule.probe_to_start(now, console_ok=ok)
        if start is not None:
            p = rule.probe_started(start[0], now, start[1])
            a = answer(p)
            if a is None:
                pending.append((now + p.deadline, p, False))  # the probe's own deadline ends it
            else:
                pending.append((now + min(a[1], p.deadline), p, a[0] and a[1] <= p.deadline))
    return verdicts


def fast(p: Probe) -> tuple[bool, float]:
    return (True, 0.05)


def test_short_deadline_is_clamped_between_1_and_2_seconds() -> None:
    assert silence_probe_deadline(0.25) == 1.0
    assert silence_probe_deadline(1.0) == 1.0
    assert silence_probe_deadline(1.5) == 1.5
    assert silence_probe_deadline(10.0) == 2.0


def test_a_hung_device_is_a_hang_after_2h_and_within_the_goal() -> None:
    last = 10.0
    hbs = [float(t) for t in range(1, int(last) + 1)]

    def dead_after_last(p: Probe) -> tuple[bool, float] | None:
        return None if p.started > last else (True, 0.05)

    verdicts = simulate(hbs, dead_after_last, until=30)
    assert verdicts, "a silent device whose SSH never answers must be declared hung"
    t, kind, reason = verdicts[0]
    assert kind is VerdictKind.HANG, reason
    latency = t - last
    assert latency >= 2 * H, "never before 2H of silence"
    # at the latest: the probe started at 1.5H with a deadline of H has no answer at 2.5H (sooner when a
    # routine probe started after the last heartbeat is already older than that deadline at 2H)
    assert latency <= 1.5 * H + silence_probe_deadline(H) + 2 * TICK
    assert latency < 2 * H + 1, "the issue's median goal"
    assert "no heartbeat" in reason and "SSH probe" in reason


def test_hang_latency_over_many_random_stop_times_meets_both_goals() -> None:
    rng = random.Random(6)
    latencies = []
    for _ in range(40):
        phase = rng.uniform(0, H)
        last = 5 + phase + H * rng.randint(0, 5)
        hbs = [phase + k * H for k in range(1, 200) if phase + k * H <= last]
        delay = rng.uniform(0.02, 0.5)
        verdicts = simulate(hbs, lambda p, last=hbs[-1], d=delay: None if p.started > last else (True, d),
                            until=hbs[-1] + 20)
        assert verdicts and verdicts[0][1] is VerdictKind.HANG, verdicts
        latencies.append(verdicts[0][0] - hbs[-1])
    assert min(latencies) >= 2 * H
    assert statistics.median(latencies) < 2 * H + 1
    assert max(latencies) < 3 * H + 2


def test_a_busy_device_with_late_heartbeats_but_answering_ssh_is_never_hung() -> None:
    # heartbeats 2.6 s apart (console backed up by a flood), SSH answers in 0.8 s: busy, not hung
    hbs = [2.6 * k for k in range(1, 40)]
    verdicts = simulate(hbs, lambda p: (True, 0.8), until=100)
    assert verdicts == []


def test_a_probe_answering_just_within_its_deadline_is_not_a_hang() -> None:
    hbs = [float(t) for t in range(1, 11)] + [14.0, 15.0]  # a 4 s gap
    short = silence_probe_deadline(H)
    verdicts = simulate(hbs, lambda p: (True, short - 0.05), until=20)
    assert verdicts == []


def test_a_probe_answering_just_after_its_deadline_during_silence_is_a_hang() -> None:
    hbs = [float(t) for t in range(1, 11)] + [14.0, 15.0]  # a 4 s gap: the device is slow, not hung
    short = silence_probe_deadline(H)
    verdicts = simulate(hbs, lambda p: (True, short + 0.3), until=20)
    # both signals silent for the rule's windows: this is what the rule calls a hang, by design
    assert verdicts and verdicts[0][1] is VerdictKind.HANG
    assert verdicts[0][0] - 10.0 >= 2 * H


def test_heartbeat_back_before_2h_means_no_verdict_even_if_the_probe_failed() -> None:
    hbs = [float(t) for t in range(1, 11)] + [11.9 + k for k in range(10)]
    verdicts = simulate(hbs, lambda p: (False, 0.01) if 11.0 < p.started < 12.0 else (True, 0.05), until=22)
    assert verdicts == []


def test_a_failure_from_before_the_last_heartbeat_is_not_evidence() -> None:
    # the routine probe started just before the last heartbeat fails late; a silence probe answers
    last = 10.0
    hbs = [float(t) for t in range(1, 11)] + [13.5 + k for k in range(10)]

    def answer(p: Probe) -> tuple[bool, float] | None:
        if p.kind == "routine" and last - 0.5 < p.started <= last:
            return None
        return (True, 0.1)

    verdicts = simulate(hbs, answer, until=25)
    assert verdicts == []


def test_ssh_dead_but_heartbeat_alive_is_lost_connection_not_hang() -> None:
    hbs = [float(t) for t in range(1, 60)]
    verdicts = simulate(hbs, lambda p: None if p.started > 10 else (True, 0.05), until=40)
    assert verdicts, "SSH dead for long must be said"
    t, kind, _ = verdicts[0]
    assert kind is VerdictKind.LOST_CONNECTION
    assert t - 10 >= 3.0 + 2 * H  # ssh_probe_timeout + 2H after SSH died
    assert all(k is not VerdictKind.HANG for _, k, _ in verdicts)


def test_without_a_console_two_failed_probes_make_a_hang() -> None:
    verdicts = simulate([], lambda p: None if p.started > 10 else (True, 0.05), until=30, has_console=False)
    assert verdicts and verdicts[0][1] is VerdictKind.HANG
    assert "no console" in verdicts[0][2]
    assert verdicts[0][0] > 10 + 2.0  # two probes, not one


def test_a_console_fault_never_becomes_a_hang() -> None:
    # console gone from t=10 (no heartbeats reach the rig), SSH dead too: the monitor names the
    # console fault itself; the rule must not call it a hang meanwhile
    hbs = [float(t) for t in range(1, 11)]
    verdicts = simulate(hbs, lambda p: None if p.started > 10 else (True, 0.05), until=30,
                        console_ok=lambda t: t < 10.05)
    assert verdicts == []


def test_before_the_first_heartbeat_the_startup_grace_applies() -> None:
    verdicts = simulate([], lambda p: None, until=30)
    assert verdicts and verdicts[0][1] is VerdictKind.HANG
    assert verdicts[0][0] >= STARTUP_GRACE + 2 * H


def test_probes_are_not_started_on_every_tick_while_a_busy_device_is_silent() -> None:
    rule = HangRule(H, 2.0, 3.0, has_console=True, now=0.0)
    rule.heartbeat(1.0)
    started = 0
    for i in range(1, 60):  # 1.5 .. 7.4 s: silent, every probe answers at once
        now = 1.5 + i * TICK
        s = rule.probe_to_start(now)
        if s is not None:
            p = rule.probe_started(s[0], now, s[1])
            rule.probe_ended(p, True, now + 0.01)
            started += 1
    assert 0 < started <= 6 / (H / 2) + 1


def test_timeline_says_where_the_time_went() -> None:
    rule = HangRule(H, 2.0, 3.0, has_console=True, now=0.0)
    rule.heartbeat(10.0)
    s = rule.probe_to_start(11.5)
    assert s is not None and s[0] == "silence"
    rule.probe_started(s[0], 11.5, s[1])
    assert rule.judge(12.2) is None  # silent 2.2 s, probe in flight 0.7 s: not yet
    d = rule.judge(12.5)
    assert d is not None and d.kind is VerdictKind.HANG
    labels = [label for label, _ in rule.timeline(12.5)]
    assert labels == ["last heartbeat", "heartbeat late noticed", "silence probe start", "verdict"]


def test_a_probe_failing_after_a_reset_does_not_count_against_the_recovered_device() -> None:
    rule = HangRule(H, 2.0, 3.0, has_console=False, now=0.0)
    old = [rule.probe_started("routine", t, 2.0) for t in (1.0, 1.1)]
    rule.reset(5.0)  # the device was recovered meanwhile
    for p in old:
        rule.probe_ended(p, False, 6.0)  # the hung device's probes time out only now
    assert rule.failures == 0 and rule.dead_since is None
    assert rule.judge(6.0) is None
