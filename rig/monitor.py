"""The hang monitor: one verdict per device, at every moment.

Why two signals: a laptop that stops printing may be hung, or its console server may be gone, or
its console may just be slow under an NMI flood; a laptop whose SSH is dead may be hung, or its
network may be down. Only the two together say "hang":

- a **heartbeat** on the device (a line written to ``/dev/kmsg`` every H seconds) that the rig sees
  on the serial console, and
- an **SSH liveness probe** with a short deadline, run as soon as the heartbeat goes quiet.

Combined with the crash detector's events this gives one verdict (rig.vocab.VerdictKind):
``ok``, ``crash(<kind>)``, ``hang`` (heartbeat silent and SSH dead), ``reboot``, ``lost-connection``
(SSH dead but console alive), ``lab-fault`` (console server unreachable).

Timing: the heartbeat is judged silent after 2·H; the probe then gets H + 1 s; so a hang is
declared within 3·H + 2 s of the last heartbeat (the watcher ticks every H/4 s at most).
A slow console alone never makes a hang: the SSH probe must fail too.
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
from dataclasses import dataclass, field

from rig.detect import Detector, Event
from rig.inventory import MonitorConfig
from rig.protocols import ConsoleLine, LineSource, LivenessProbe
from rig.vocab import CRASH_KINDS, EventKind, VerdictKind, verdict_text

log = logging.getLogger(__name__)


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
            else {"kind": self.event.kind.value, "line": self.event.line_no, "text": self.event.text},
            "last_heartbeat": self.last_heartbeat,
            "since_heartbeat": None if self.since_heartbeat is None else round(self.since_heartbeat, 3),
        }


HEARTBEAT_RE = re.compile(r"rig-heartbeat ([0-9a-f]{8}) (\d+)")


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
        self._token = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._verdict: Verdict | None = None
        self._changed = threading.Condition(self._lock)
        self._last_hb_mono: float | None = None
        self._last_hb_wall: float | None = None
        self._started_mono = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused = False
        self._recent: deque[str] = deque(maxlen=200)

    # -- input -------------------------------------------------------------------------------

    def on_line(self, line: ConsoleLine) -> None:
        """Called for every console line (from the console reader thread)."""
        m = HEARTBEAT_RE.search(line.text)
        if m and m.group(1) == self._token:
            with self._lock:
                self.heartbeats += 1
                self._last_hb_mono = line.monotonic
                self._last_hb_wall = line.time
            return
        events = self.detector.feed(line.text, line_no=line.number, time=line.time)
        if not events:
            return
        with self._lock:
            self.events.extend(events)
            self.event_counts.update(ev.kind.value for ev in events)
            if self._verdict is not None or self._paused:
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
        """The device-side loop: one ``rig-heartbeat <token> <n>`` line into the kernel log every H s."""
        h = self.settings.heartbeat_interval
        loop = f'n=0; while :; do n=$((n+1)); echo "rig-heartbeat {self._token} $n" > /dev/kmsg; sleep {h:g}; done'
        pidfile = "/tmp/rig-heartbeat.pid"
        return (
            f"if [ -f {pidfile} ]; then kill $(cat {pidfile}) 2>/dev/null; fi; "
            f"setsid sh -c {shlex.quote(loop)} </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"
        )

    def start(self) -> None:
        """Start the heartbeat on the device and the watcher thread."""
        with self._lock:
            self._verdict = None
            self._started_mono = self.clock()
            self._last_hb_mono = None
        self._start_heartbeat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name=f"monitor-{self.device}", daemon=True)
        self._thread.start()

    def _start_heartbeat(self) -> None:
        cmd = "sh -c " + shlex.quote(self.heartbeat_script())
        self.ssh.run(cmd, timeout=15, sudo=self.sudo)

    def stop_heartbeat(self) -> None:
        """Stop the device-side loop (best effort: a hung device cannot be asked anything)."""
        try:
            cmd = "sh -c " + shlex.quote("kill $(cat /tmp/rig-heartbeat.pid) 2>/dev/null; rm -f /tmp/rig-heartbeat.pid")
            self.ssh.run(cmd, timeout=5, sudo=self.sudo)
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
            self._started_mono = self.clock()
            self._last_hb_mono = None
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

    def last_heartbeat_age(self) -> float | None:
        with self._lock:
            return None if self._last_hb_mono is None else self.clock() - self._last_hb_mono

    # -- internals ---------------------------------------------------------------------------

    def _declare(self, kind: VerdictKind, detail: str | None, reason: str, event: Event | None = None) -> None:
        """Latch a verdict (caller holds the lock). The first non-ok verdict wins."""
        if self._verdict is not None:
            return
        now = self.clock()
        since = None if self._last_hb_mono is None else now - self._last_hb_mono
        self._verdict = Verdict(
            kind, detail, reason, time.time(), event, last_heartbeat=self._last_hb_wall, since_heartbeat=since
        )
        log.warning("%s: verdict %s: %s", self.device, self._verdict.text, reason)
        self._changed.notify_all()

    def _probe(self) -> bool:
        self.probes += 1
        timeout = self.settings.heartbeat_interval + 1.0
        try:
            ok = self.ssh.alive(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "not alive"
            log.debug("%s: probe raised %s", self.device, exc)
            ok = False
        if not ok:
            self.probe_failures += 1
        return ok

    def _watch(self) -> None:
        h = self.settings.heartbeat_interval
        tick = min(h / 4, 0.25)
        silent_after = 2 * h
        console_grace = 3 * h + 2
        last_probe = 0.0
        ssh_dead_since: float | None = None
        failures = 0
        while not self._stop.wait(tick):
            with self._lock:
                if self._verdict is not None or self._paused:
                    continue
                last_hb = self._last_hb_mono
                started = self._started_mono
            now = self.clock()
            fault = self.console.lab_fault() if self.console is not None else None
            if fault is not None:
                since = getattr(self.console, "disconnected_since", None)
                gone_for = (now - since) if isinstance(since, float) else console_grace
                if gone_for >= console_grace:
                    with self._lock:
                        self._declare(VerdictKind.LAB_FAULT, "console", fault)
                    continue
            reference = last_hb if last_hb is not None else started
            # Before the first heartbeat, allow the SSH command that starts it some slack.
            threshold = silent_after if last_hb is not None else silent_after + 5.0
            silent = self.console is not None and fault is None and now - reference >= threshold
            due = now - last_probe >= self.settings.ssh_probe_interval
            if not (silent or due):
                continue
            last_probe = now
            alive = self._probe()
            with self._lock:
                if self._verdict is not None or self._paused:
                    continue
                if alive:
                    ssh_dead_since = None
                    failures = 0
                    continue
                ssh_dead_since = ssh_dead_since or now
                failures += 1
                t = self.clock()
                hb_age = None if self._last_hb_mono is None else t - self._last_hb_mono
                # Silent: no heartbeat for 2H (or, before the first one, for the start-up grace).
                hb_silent = (hb_age is not None and hb_age >= silent_after) or (
                    hb_age is None and t - started >= silent_after + 5.0
                )
                if self.console is None:
                    if failures >= 2:
                        self._declare(
                            VerdictKind.HANG, None, "SSH dead and no console to tell a hang from a network fault"
                        )
                elif hb_silent:
                    silent_for = hb_age if hb_age is not None else t - started
                    self._declare(
                        VerdictKind.HANG,
                        None,
                        f"no heartbeat for {silent_for:.1f} s and SSH does not answer within {h + 1:g} s",
                    )
                elif hb_age is not None and t - ssh_dead_since >= self.settings.ssh_probe_timeout + 2 * h:
                    self._declare(
                        VerdictKind.LOST_CONNECTION, None, "SSH does not answer but the console heartbeat goes on"
                    )
