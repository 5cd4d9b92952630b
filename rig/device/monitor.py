"""The hang monitor: one verdict per device, at every moment.

Why two signals: a laptop that stops printing may be hung, or its console server may be gone, or
its console may just be slow under an NMI flood; a laptop whose SSH is dead may be hung, or its
network may be down. Only the two together say "hang":

- a **heartbeat** on the device (a line written to ``/dev/kmsg`` every H seconds) that the rig sees
  on the serial console, and
- an **SSH liveness probe** (``echo`` with a deadline).

**The rule** (``HangRule``, pure logic, no threads or I/O): *hang* = the console has shown no
heartbeat for 2·H **and** an SSH probe started after the last heartbeat has failed or gone
unanswered for its deadline, with no later probe answering. Neither signal alone is enough: a slow
console with a live SSH is busy, not hung; a dead SSH with a live heartbeat is ``lost-connection``.

Combined with the crash detector's events this gives one verdict (rig.vocab.VerdictKind):
``ok``, ``crash(<kind>)``, ``hang``, ``reboot``, ``lost-connection`` (SSH dead but console alive),
``lab-fault`` (console server unreachable).

Timing (why it is built this way): a hung device never answers, so a probe's *deadline* is what a
hang verdict waits for. The monitor therefore does not wait for the silence to be complete before
asking: as soon as the heartbeat is late (1.5·H) it starts a probe with a short deadline
(``silence_probe_deadline``: H, clamped to 1..2 s -- an SSH ``echo`` on a healthy device answers in
well under a second even under a 10 NMI/s flood on TCG, see BENCHMARKS.md), so the answer is in at
about 2.5·H and the verdict comes at max(2·H, 1.5·H + deadline): 2.5 s for H = 1 s. Probes run in
their own threads, so a probe in flight never delays the next look at the heartbeat. Routine
probes (every ``ssh_probe_interval``, deadline H + 1) keep watching SSH while the console is alive
(for ``lost-connection``) and also count as evidence once they are older than the short deadline.
The bound promised to users stays 3·H + 2 s of the last heartbeat.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rig.detect.detector import Detector, Event
from rig.errors import LabFault
from rig.inventory import MonitorConfig
from rig.protocols import ConsoleLine, LineSource, LivenessProbe
from rig.vocab import CRASH_KINDS, EventKind, VerdictKind, verdict_text

log = logging.getLogger(__name__)

#: Before the first heartbeat: slack for the SSH command that starts the loop, and for a device
#: that reboots just as the monitor starts to show its new boot banner (a reboot, not a hang: the
#: lab's TCG guests on a loaded 2-core machine took 4.7 to over 10 s from reset to the banner).
#: Only a device that stops before its very first heartbeat pays it.
STARTUP_GRACE = 15.0


@dataclass
class Verdict:
    """The monitor's judgement, with the evidence a report needs."""

    kind: VerdictKind
    detail: str | None = None
    reason: str = ""
    at: float = field(default_factory=time.time)
    event: Event | None = None
    last_heartbeat: float | None = None  # wall time of the last heartbeat seen
    since_heartbeat: float | None = None  # seconds from that heartbeat to this verdict
    source: str = "console"  # where ``event`` was read: the console, or "pstore" after a recovery

    @property
    def text(self) -> str:
        return verdict_text(self.kind, self.detail)

    @property
    def ok(self) -> bool:
        return self.kind is VerdictKind.OK

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": self.text,
            "kind": self.kind.value,
            "detail": self.detail,
            "reason": self.reason,
            "at": self.at,
            "event": None
            if self.event is None
            else {
                "kind": self.event.kind.value,
                "line": self.event.line_no,
                "text": self.event.text,
                "title": self.event.title,  # rig.detect.detector's "<report type> in <guilty function>": groups crashes
                "source": self.source,
            },
            "last_heartbeat": self.last_heartbeat,
            "since_heartbeat": None if self.since_heartbeat is None else round(self.since_heartbeat, 3),
        }


#: Verdicts judged from silence alone: a crash or boot banner printed soon after may still explain them.
SILENCE_KINDS = frozenset({VerdictKind.HANG, VerdictKind.LOST_CONNECTION})

HEARTBEAT_RE = re.compile(r"rig-heartbeat ([0-9a-f]{8}) (\d+)")
#: ``mktemp -d`` template of the device folder that holds the heartbeat loop's pid (one per start).
HEARTBEAT_TEMPLATE = "/tmp/rig-heartbeat.XXXXXXXX"


def silence_probe_deadline(h: float) -> float:
    """Deadline of the probe started when the heartbeat is late: H, but at least 1 s and at most 2 s.

    At least 1 s: an SSH exec on a busy TCG guest must not be called dead for being a little slow.
    At most 2 s: SSH latency does not grow with a long heartbeat interval, so neither need the wait.
    """
    return min(max(h, 1.0), 2.0)


@dataclass
class Probe:
    """One SSH liveness probe as the rule sees it (times on the monitor's clock)."""

    kind: str  # "routine" or "silence"
    started: float
    deadline: float
    ok: bool | None = None  # None while unanswered
    ended: float | None = None
    generation: int = 0  # HangRule.reset() count when it started: late answers from before are ignored


@dataclass(frozen=True)
class Decision:
    kind: VerdictKind
    reason: str


class HangRule:
    """The decision rule, pure: times and outcomes in, probes to start and verdicts out.

    Why separate from ``HangMonitor``: the rule is where a false hang or a slow verdict would come
    from, and as pure logic it can be driven by a scripted clock in tests (tests/test_monitor_rule.py)
    through every interleaving of heartbeats and probe answers without waiting for real time.
    """

    def __init__(
        self, h: float, probe_interval: float, probe_timeout: float, *, has_console: bool, now: float
    ) -> None:
        self.h = h
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.has_console = has_console
        self.short = silence_probe_deadline(h)
        self.generation = 0
        self.reset(now)
        #: Near-miss figures over the monitor's life (benchmarks report them): the longest gap
        #: between two heartbeats and the slowest probe that did answer.
        self.max_heartbeat_gap = 0.0
        self.slowest_answer = 0.0
        self.silence_probes = 0

    def reset(self, now: float) -> None:
        """Judge afresh from ``now`` (start, or resume after a recovery)."""
        self.generation += 1
        self.started = now
        self.last_hb: float | None = None
        self.probes: deque[Probe] = deque(maxlen=16)
        self.last_routine = float("-inf")
        self.failures = 0  # consecutive failed probes (any kind)
        self.dead_since: float | None = None  # end of the first of those failures
        self.late_at: float | None = None  # when the current silence was first noticed (>= 1.5 H)

    # -- inputs ---------------------------------------------------------------------------------

    def heartbeat(self, t: float) -> None:
        if self.last_hb is not None:
            self.max_heartbeat_gap = max(self.max_heartbeat_gap, t - self.last_hb)
        self.last_hb = t
        self.late_at = None

    def probe_started(self, kind: str, t: float, deadline: float) -> Probe:
        p = Probe(kind, t, deadline, generation=self.generation)
        self.probes.append(p)
        if kind == "routine":
            self.last_routine = t
        else:
            self.silence_probes += 1
        return p

    def probe_ended(self, p: Probe, ok: bool, t: float) -> None:
        p.ok, p.ended = ok, t
        if p.generation != self.generation:
            return  # a probe of the device before its recovery says nothing about it now
        if ok:
            self.slowest_answer = max(self.slowest_answer, t - p.started)
            self.failures = 0
            self.dead_since = None
        else:
            self.failures += 1
            self.dead_since = self.dead_since if self.dead_since is not None else t

    # -- state ----------------------------------------------------------------------------------

    def silence(self, now: float) -> float:
        """Seconds of heartbeat silence that count (before the first heartbeat, minus a start-up grace)."""
        if self.last_hb is not None:
            return now - self.last_hb
        return now - self.started - STARTUP_GRACE

    def _since_silence(self) -> list[Probe]:
        """Probes that say something about the current silence: started after the last heartbeat
        and after the start of the latest such probe that answered (the device was alive then)."""
        ref = self.last_hb if self.last_hb is not None else self.started
        after = [p for p in self.probes if p.started >= ref]
        answered = [p.started for p in after if p.ok]
        if answered:
            last_ok = max(answered)
            after = [p for p in after if p.started > last_ok]
        return after

    def dead_evidence(self, now: float) -> Probe | None:
        """A probe since the silence began that failed, or is unanswered for the short deadline."""
        for p in self._since_silence():
            if p.ok is False or (p.ok is None and now - p.started >= self.short):
                return p
        return None

    # -- outputs --------------------------------------------------------------------------------

    def probe_to_start(self, now: float, console_ok: bool = True) -> tuple[str, float] | None:
        """(kind, deadline) of a probe to start now, or None."""
        outstanding = [p for p in self.probes if p.ok is None]
        if self.has_console and console_ok and self.silence(now) >= 1.5 * self.h:
            if self.late_at is None:
                self.late_at = now
            pending = [p for p in self._since_silence() if p.ok is None]
            recent = [p for p in self.probes if p.kind == "silence" and now - p.started < self.h / 2]
            if not pending and not recent:
                return ("silence", self.short)
            return None
        if not outstanding and now - self.last_routine >= self.probe_interval:
            return ("routine", self.h + 1.0)
        return None

    def judge(self, now: float, console_ok: bool = True) -> Decision | None:
        """The verdict this moment calls for, or None (ok so far)."""
        if not self.has_console:
            if self.failures >= 2:
                return Decision(VerdictKind.HANG, "SSH dead and no console to tell a hang from a network fault")
            return None
        if not console_ok:
            return None  # heartbeats cannot arrive; the monitor judges the console fault itself
        silence = self.silence(now)
        if silence >= 2 * self.h:
            p = self.dead_evidence(now)
            if p is not None:
                ref = self.last_hb if self.last_hb is not None else self.started
                what = (f"failed after {p.ended - p.started:.1f} s" if p.ok is False and p.ended is not None
                        else f"did not answer within {self.short:g} s")
                shown = silence if self.last_hb is not None else now - self.started
                return Decision(
                    VerdictKind.HANG,
                    f"no heartbeat for {shown:.1f} s and an SSH probe started {p.started - ref:.1f} s "
                    f"after it {what}",
                )
            return None
        if (
            self.last_hb is not None
            and self.dead_since is not None
            and now - self.dead_since >= self.probe_timeout + 2 * self.h
        ):
            return Decision(VerdictKind.LOST_CONNECTION, "SSH does not answer but the console heartbeat goes on")
        return None

    def timeline(self, now: float) -> list[tuple[str, float]]:
        """Where the time went, in seconds after the last heartbeat (or the monitor's start if none yet)."""
        ref = self.last_hb if self.last_hb is not None else self.started
        out: list[tuple[str, float]] = [("last heartbeat" if self.last_hb is not None else "monitor start", 0.0)]
        if self.late_at is not None:
            out.append(("heartbeat late noticed", self.late_at - ref))
        for p in self.probes:
            if p.started >= ref or (p.ended is not None and p.ended >= ref) or p.ok is None:
                out.append((f"{p.kind} probe start", p.started - ref))
                if p.ended is not None:
                    out.append((f"{p.kind} probe {'ok' if p.ok else 'failed'}", p.ended - ref))
        out.append(("verdict", now - ref))
        return sorted(out, key=lambda x: x[1])


class HangMonitor:
    """Watches one device. Feed it console lines (``on_line``); read ``verdict()`` or ``wait()``."""

    def __init__(
        self,
        device: str,
        ssh: LivenessProbe,
        console: LineSource | None,
        settings: MonitorConfig,
        *,
        sudo: bool = False,
        detector: Detector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.ssh = ssh
        self.console = console
        self.settings = settings
        self.sudo = sudo
        self.detector = detector or Detector(booted=True)
        self.clock = clock
        #: The most recent console events (bounded: a day-long NMI soak must not grow the controller),
        #: and a count per kind over the whole session.
        self.events: deque[Event] = deque(maxlen=2000)
        self.event_counts: Counter[str] = Counter()
        self.heartbeats = 0
        self.probes = 0
        self.probe_failures = 0
        #: Where the time went before the last non-ok verdict (seconds after the last heartbeat).
        self.last_timeline: list[tuple[str, float]] = []
        self._token = secrets.token_hex(4)
        #: The device folder holding the heartbeat loop's pid (mktemp -d), once started.
        self._heartbeat_dir: str | None = None
        self._lock = threading.Lock()
        self._verdict: Verdict | None = None
        self._silence_declared = 0.0  # clock() of the last verdict (used while it is a silence verdict)
        self._changed = threading.Condition(self._lock)
        self._last_hb_mono: float | None = None
        self._last_hb_wall: float | None = None
        self.rule = HangRule(
            settings.heartbeat_interval,
            settings.ssh_probe_interval,
            settings.ssh_probe_timeout,
            has_console=console is not None,
            now=clock(),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused = False

    # -- input -------------------------------------------------------------------------------

    def on_line(self, line: ConsoleLine) -> None:
        """Called for every console line (from the console reader thread)."""
        m = HEARTBEAT_RE.search(line.text)
        if m and m.group(1) == self._token:
            with self._lock:
                self.heartbeats += 1
                self._last_hb_mono = line.monotonic
                self._last_hb_wall = line.time
                self.rule.heartbeat(line.monotonic)
            return
        events = self.detector.feed(line.text, line_no=line.number, time=line.time)
        if not events:
            return
        with self._lock:
            self.events.extend(events)
            self.event_counts.update(ev.kind.value for ev in events)
            if self._paused:
                return
            if self._verdict is not None:
                self._settle_silence(events)
                return
            for ev in events:
                if ev.kind in CRASH_KINDS:
                    self._declare(VerdictKind.CRASH, ev.kind.value, f"console: {ev.text.strip()[:200]}", ev)
                    return
                if ev.kind is EventKind.REBOOT:
                    self._declare(VerdictKind.REBOOT, None, "the kernel booted again without the rig asking", ev)
                    return

    # -- lifecycle ---------------------------------------------------------------------------

    def heartbeat_script(self) -> str:
        """The device-side loop: one ``rig-heartbeat <token> <n>`` line into the kernel log every H s.

        Its pid goes into a fresh ``mktemp -d`` folder (root's and 0700 when run with sudo) whose path
        the script prints, never into a fixed ``/tmp`` name: another user of the device could plant
        a fixed pid file and have root kill a process of their choosing. A previous loop of this
        monitor is stopped first, only if its pid still runs this monitor's token (a pid reused
        after a reboot is left alone).
        """
        h = self.settings.heartbeat_interval
        loop = f'n=0; while :; do n=$((n+1)); echo "rig-heartbeat {self._token} $n" > /dev/kmsg; sleep {h:g}; done'
        return (
            f"{self._stop_script()}"
            f"d=$(mktemp -d {HEARTBEAT_TEMPLATE}) || exit 1; "
            f'setsid sh -c {shlex.quote(loop)} </dev/null >/dev/null 2>&1 & echo $! > "$d/pid"; echo "$d"'
        )

    def _stop_script(self) -> str:
        """Shell that stops this monitor's previous loop (checked by token) and removes its folder."""
        d = self._heartbeat_dir
        if d is None:
            return ""
        q = shlex.quote(d)
        return (
            f"if [ -d {q} ] && [ ! -L {q} ]; then p=$(cat {q}/pid 2>/dev/null); "
            f'case "$p" in *[!0-9]*|"") ;; *) grep -q {self._token} /proc/$p/cmdline 2>/dev/null && kill "$p";; esac; '
            f"rm -rf {q}; fi; "
        )

    def start(self) -> None:
        """Start the heartbeat on the device and the watcher thread."""
        with self._lock:
            self._verdict = None
            self._last_hb_mono = None
            self.rule.reset(self.clock())
        self._start_heartbeat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name=f"monitor-{self.device}", daemon=True)
        self._thread.start()

    def _start_heartbeat(self) -> None:
        cmd = "sh -c " + shlex.quote(self.heartbeat_script())
        out = self.ssh.run(cmd, timeout=15, sudo=self.sudo).out.strip().splitlines()
        last = out[-1] if out else ""
        self._heartbeat_dir = last if last.startswith(HEARTBEAT_TEMPLATE.rstrip("X")) else None

    def stop_heartbeat(self) -> None:
        """Stop the device-side loop (best effort: a hung device cannot be asked anything)."""
        try:
            script = self._stop_script()
            if not script:
                return
            self.ssh.run("sh -c " + shlex.quote(script), timeout=5, sudo=self.sudo)
            self._heartbeat_dir = None
        except Exception as exc:  # noqa: BLE001 - the device may be dead; that is what we report elsewhere
            log.debug("%s: could not stop heartbeat: %s", self.device, exc)

    def stop(self) -> Verdict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.ssh_probe_timeout + 2)
        return self.verdict()

    def pause(self) -> None:
        """Stop judging (the rig is about to power-cycle the device on purpose)."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """Start judging afresh after a recovery: the next verdict is not inherited."""
        with self._lock:
            self._paused = False
            self._verdict = None
            self._last_hb_mono = None
            self.rule.reset(self.clock())
            self.detector = Detector(booted=True)

    # -- output ------------------------------------------------------------------------------

    def verdict(self) -> Verdict:
        with self._lock:
            if self._verdict is not None:
                return self._verdict
            return Verdict(
                VerdictKind.OK,
                reason=f"{self.heartbeats} heartbeats, {sum(self.event_counts.values())} console events",
                last_heartbeat=self._last_hb_wall,
            )

    def wait(self, timeout: float) -> Verdict | None:
        """Block until a non-ok verdict (returned) or until ``timeout`` (returns None)."""
        deadline = self.clock() + timeout
        with self._changed:
            while self._verdict is None:
                left = deadline - self.clock()
                if left <= 0:
                    return None
                self._changed.wait(timeout=min(left, 0.5))
            return self._verdict

    def settled(self) -> Verdict:
        """The verdict once a silence verdict had its chance to turn into what the console says next.

        A hang or lost connection is declared from silence alone, within about 2H. Some devices
        print the real story a few seconds later: under an NMI flood a panicking CPU prints its
        panic only after it failed to stop the others (4.7-9.3 s on the lab), and a laptop that
        reset itself prints its boot banner after its firmware. For ``crash_tail_seconds`` after a
        silence verdict, such a line replaces it (see ``_settle_silence``); this waits out that
        window, so reports and bisect steps name the crash or reboot, not "hang". Any other
        verdict is returned at once.
        """
        with self._changed:
            while self._verdict is not None and self._verdict.kind in SILENCE_KINDS and not self._paused:
                left = self._silence_declared + self.settings.crash_tail_seconds - self.clock()
                if left <= 0:
                    break
                self._changed.wait(timeout=min(left, 0.5))
        return self.verdict()

    def margin(self) -> dict[str, float | int]:
        """How close this device came to a false hang (report.json ``liveness``): its longest heartbeat gap
        against the 2H of silence a hang needs, its slowest SSH probe answer against a silence probe's deadline.

        Why: H is set per device, and a device whose healthy heartbeat already went 1.8 s late at H = 1 s
        is one stall away from a hang that is not one (the lab's TCG guests were: LAB_TCG_HEARTBEAT).
        Gaps across a recovery or a pause do not count (the rule starts afresh then).
        """
        with self._lock:
            return {
                "heartbeat_interval": self.rule.h,
                "heartbeats": self.heartbeats,
                "longest_heartbeat_gap": round(self.rule.max_heartbeat_gap, 3),
                "hang_needs_silence": 2 * self.rule.h,
                "slowest_probe_answer": round(self.rule.slowest_answer, 3),
                "silence_probe_deadline": self.rule.short,
            }

    def last_heartbeat_age(self) -> float | None:
        with self._lock:
            return None if self._last_hb_mono is None else self.clock() - self._last_hb_mono

    # -- internals ---------------------------------------------------------------------------

    def _settle_silence(self, events: list[Event]) -> None:
        """Replace a fresh silence verdict by a crash or reboot the console printed after it (lock held)."""
        v = self._verdict
        if v is None or v.kind not in SILENCE_KINDS:
            return
        late = self.clock() - self._silence_declared
        if late > self.settings.crash_tail_seconds:
            return
        for ev in events:
            if ev.kind in CRASH_KINDS:
                kind, detail, what = VerdictKind.CRASH, ev.kind.value, f"console: {ev.text.strip()[:200]}"
            elif ev.kind is EventKind.REBOOT:
                kind, detail, what = VerdictKind.REBOOT, None, "the kernel booted again without the rig asking"
            else:
                continue
            self._verdict = replace(
                v,
                kind=kind,
                detail=detail,
                event=ev,
                reason=f"{what} (printed {late:.1f} s after the silence was declared {v.text}: {v.reason})",
            )
            log.warning("%s: verdict %s -> %s: the console spoke after the silence", self.device, v.text, kind.value)
            self._changed.notify_all()
            return

    def _declare(self, kind: VerdictKind, detail: str | None, reason: str, event: Event | None = None) -> None:
        """Latch a verdict (caller holds the lock). The first non-ok verdict wins."""
        if self._verdict is not None:
            return
        now = self.clock()
        since = None if self._last_hb_mono is None else now - self._last_hb_mono
        self._verdict = Verdict(
            kind, detail, reason, time.time(), event, last_heartbeat=self._last_hb_wall, since_heartbeat=since
        )
        self._silence_declared = now
        self.last_timeline = self.rule.timeline(now)
        log.warning("%s: verdict %s: %s", self.device, self._verdict.text, reason)
        log.info(
            "%s: timeline (s after the last heartbeat): %s",
            self.device,
            ", ".join(f"{label} {t:+.2f}" for label, t in self.last_timeline),
        )
        self._changed.notify_all()

    def _probe(self, p: Probe) -> None:
        """Run one probe (in its own thread) and hand the answer to the rule."""
        try:
            ok = self.ssh.alive(timeout=p.deadline)
        except LabFault as exc:
            # A changed host key or a refused login says nothing about the device: it is the lab's
            # (or an attacker's) doing, never a hang or a lost connection.
            with self._lock:
                self.rule.probe_ended(p, False, self.clock())
                self._declare(VerdictKind.LAB_FAULT, "ssh", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any other failure to answer is "not alive"
            log.debug("%s: probe raised %s", self.device, exc)
            ok = False
        with self._lock:
            if not ok:
                self.probe_failures += 1
            self.rule.probe_ended(p, ok, self.clock())

    def _watch(self) -> None:
        h = self.settings.heartbeat_interval
        tick = min(h / 8, 0.1)
        console_grace = self.settings.hang_bound
        while not self._stop.wait(tick):
            now = self.clock()
            fault = self.console.lab_fault() if self.console is not None else None
            with self._lock:
                if self._verdict is not None or self._paused:
                    continue
                if fault is not None:
                    since = getattr(self.console, "disconnected_since", None)
                    gone_for = (now - since) if isinstance(since, float) else console_grace
                    if gone_for >= console_grace:
                        self._declare(VerdictKind.LAB_FAULT, "console", fault)
                        continue
                decision = self.rule.judge(now, console_ok=fault is None)
                if decision is not None:
                    self._declare(decision.kind, None, decision.reason)
                    continue
                start = self.rule.probe_to_start(now, console_ok=fault is None)
                if start is None:
                    continue
                p = self.rule.probe_started(start[0], now, start[1])
                self.probes += 1
            threading.Thread(target=self._probe, args=(p,), name=f"probe-{self.device}", daemon=True).start()
