"""The live board: one row per device (state, NMIs per source, heartbeats, last event, verdict).

Why a file: with ``pytest -n N`` the devices are driven by xdist workers, while the terminal belongs
to the controller process; ``rig regress`` runs pytest as a child with its output in a log. So every
process that drives a device appends small JSON lines to ``<run>/board.jsonl`` (:class:`BoardFeed`,
one ``write`` per line on an ``O_APPEND`` descriptor, so lines of two workers never interleave), and
whoever owns the terminal tails that file (:class:`BoardTail`) into the pure model
(:class:`BoardModel`: rows from events, tested on its own) and draws it with rich
(:func:`render`, :func:`live_board`). The file doubles as a record of how the run went.

The board is a view: a feed that cannot write, or a line that cannot be parsed, is dropped with a
debug log line, never an error of the run. The plain log lines (pytest's, the rig's) stay as they
are; the board is drawn only on a terminal and can be switched off (``--rig-no-live``, ``--no-live``).

Lines (``t`` is unix time, every line names its ``device``)::

    {"kind": "state", "state": "connecting|deploying|testing|soaking|recovering|busy|lab-fault|done",
     "test": str, "soak_seconds": float}
    {"kind": "sample", "heartbeats": int, "nmis": {source: count}, "event": str}
    {"kind": "verdict", "test": str, "outcome": str, "verdict": str}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

BOARD_FILE = "board.jsonl"
#: Seconds between two samples of a device's counters (heartbeats, NMIs, last event).
SAMPLE_INTERVAL = 1.0


# ---------------------------------------------------------------------------------------------
# the model (pure)


@dataclass
class Row:
    """One device's line on the board."""

    device: str
    state: str = "waiting"
    test: str = ""
    #: When the current soak started (unix time) and how long it is meant to be.
    soak_started: float | None = None
    soak_seconds: float | None = None
    nmis: dict[str, int] = field(default_factory=dict)
    heartbeats: int = 0
    last_event: str = ""
    verdict: str = ""
    #: (passed, failed) tests so far.
    passed: int = 0
    failed: int = 0

    def state_text(self, now: float) -> str:
        """``soaking 7/20 min``, ``deploying``, ``done``... (the soak's progress from the clock)."""
        if self.state == "soaking" and self.soak_started is not None and self.soak_seconds:
            done = min(max(0.0, now - self.soak_started), self.soak_seconds)
            if self.soak_seconds >= 120:
                return f"soaking {done / 60:.0f}/{self.soak_seconds / 60:.0f} min"
            return f"soaking {done:.0f}/{self.soak_seconds:.0f} s"
        if self.state == "testing" and self.test:
            return f"testing {self.test}"
        return self.state


class BoardModel:
    """Rows from board events. Pure: no clock, no I/O; events in, rows out."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, device: str) -> Row:
        r = self.rows.get(device)
        if r is None:
            r = self.rows[device] = Row(device)
        return r

    def apply(self, ev: dict[str, Any]) -> None:
        device = ev.get("device")
        if not isinstance(device, str) or not device:
            return
        r = self.row(device)
        kind = ev.get("kind")
        if kind == "state":
            r.state = str(ev.get("state") or r.state)
            r.test = str(ev.get("test") or "")
            if r.state == "soaking":
                r.soak_started = float(ev.get("t") or 0.0)
                r.soak_seconds = _num(ev.get("soak_seconds"))
            if "detail" in ev:
                r.last_event = str(ev["detail"])[:120]
        elif kind == "sample":
            if isinstance(ev.get("heartbeats"), int):
                r.heartbeats = ev["heartbeats"]
            nmis = ev.get("nmis")
            if isinstance(nmis, dict):
                r.nmis = {str(k): int(v) for k, v in nmis.items() if isinstance(v, int)}
            if ev.get("event"):
                r.last_event = str(ev["event"])[:120]
        elif kind == "verdict":
            outcome = str(ev.get("outcome") or "")
            verdict = str(ev.get("verdict") or "")
            if outcome == "passed":
                r.passed += 1
            elif outcome == "failed":
                r.failed += 1
            if outcome != "skipped":
                test = str(ev.get("test") or "")
                r.verdict = f"{test}: {verdict}" if outcome == "failed" else verdict
            if r.state in ("testing", "soaking"):
                r.state, r.test = "idle", ""

    def apply_all(self, events: Iterable[dict[str, Any]]) -> BoardModel:
        for ev in events:
            self.apply(ev)
        return self

    def sorted_rows(self) -> list[Row]:
        return [self.rows[k] for k in sorted(self.rows)]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


# ---------------------------------------------------------------------------------------------
# the file: writers in the processes that drive devices, one reader where the terminal is


class BoardFeed:
    """Appends board lines to ``path``; never raises (the board is a view, not the run)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._fd: int | None = None
        self._lock = threading.Lock()

    def emit(self, device: str, kind: str, **fields: Any) -> None:
        line = json.dumps({"t": self.clock(), "device": device, "kind": kind, **fields}, default=str) + "\n"
        with self._lock:
            try:
                if self._fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(self._fd, line.encode())
            except OSError as exc:
                log.debug("board line for %s not written to %s: %s", device, self.path, exc)

    def state(self, device: str, state: str, **fields: Any) -> None:
        self.emit(device, "state", state=state, **fields)

    def verdict(self, device: str, test: str, outcome: str, verdict: str) -> None:
        self.emit(device, "verdict", test=test, outcome=outcome, verdict=verdict)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class BoardTail:
    """Reads the lines appended to ``path`` since the last call (a half-written last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[dict[str, Any]] = []
        for raw in lines:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if isinstance(ev, dict):
                out.append(ev)
        return out


def sample(dut: Any) -> dict[str, Any]:
    """A device's counters as the board shows them: heartbeats seen, NMIs raised per source, last event."""
    mon = dut.monitor
    events = list(getattr(mon, "events", ()))[-1:]
    last = ""
    if events:
        ev = events[0]
        last = f"{ev.kind.value}: {ev.text.strip()}"
    return {
        "heartbeats": int(getattr(mon, "heartbeats", 0)),
        "nmis": dict(getattr(dut, "nmi_raised", {})),
        "event": last,
    }


class Sampler:
    """A thread that samples the devices ``duts()`` returns into ``feed``, when something changed."""

    def __init__(self, feed: BoardFeed, duts: Callable[[], Iterable[Any]], interval: float = SAMPLE_INTERVAL) -> None:
        self.feed = feed
        self.duts = duts
        self.interval = interval
        self._stop = threading.Event()
        self._last: dict[str, dict[str, Any]] = {}
        self._thread = threading.Thread(target=self._run, name="rig-board-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def once(self) -> None:
        for dut in list(self.duts()):
            try:
                s = sample(dut)
            except Exception as exc:  # noqa: BLE001 - a view: a device being torn down may not answer
                log.debug("board sample of %s: %s", getattr(dut, "name", "?"), exc)
                continue
            if self._last.get(dut.name) != s:
                self._last[dut.name] = s
                self.feed.emit(dut.name, "sample", **s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.once()


# ---------------------------------------------------------------------------------------------
# drawing (thin)

_STATE_STYLE = {"soaking": "cyan", "deploying": "yellow", "recovering": "magenta", "done": "green",
                "lab-fault": "magenta", "busy": "red"}  # fmt: skip


def render(model: BoardModel, now: float, title: str = "rig: devices") -> Table:
    table = Table(title=title, expand=False)
    for col in ("device", "state", "NMIs raised", "heartbeats", "last event", "verdict"):
        table.add_column(col, overflow="fold" if col == "last event" else "ellipsis")
    for r in model.sorted_rows():
        nmis = ", ".join(f"{k} {v}" for k, v in sorted(r.nmis.items())) or "-"
        verdict = Text(r.verdict or "-", style="red" if r.failed else ("green" if r.passed else ""))
        state = Text(r.state_text(now), style=_STATE_STYLE.get(r.state, ""))
        table.add_row(r.device, state, nmis, str(r.heartbeats), r.last_event[-60:] or "-", verdict)
    return table


class LiveLines:
    """A stream for pytest's terminal writer while the board is up: whole lines go above the board.

    Why: pytest writes to the terminal directly; without this its lines would be drawn over the
    board. A line is printed when it is complete (pytest's ``....  [ 40%]`` rows end with one).
    """

    def __init__(self, console: Console, original: TextIO) -> None:
        self.console = console
        self.original = original
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.console.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass

    def flush_partial(self) -> None:
        if self._buf:
            line, self._buf = self._buf, ""
            self.console.print(Text.from_ansi(line), soft_wrap=True)

    def isatty(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return str(getattr(self.original, "encoding", "utf-8"))


def wanted(stream: TextIO | None, disabled: bool) -> bool:
    """The board is drawn only on a terminal, and not when switched off."""
    stream = stream if stream is not None else sys.stdout
    return not disabled and bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def live_board(path: Path, console: Console, *, enabled: bool, title: str = "rig: devices") -> Iterator[Live | None]:
    """Draw the board of ``path`` (a board.jsonl being written) until the block ends.

    Yields the rich ``Live`` (print above it with ``live.console.print``) or None when off.
    """
    if not enabled:
        yield None
        return
    model, tail = BoardModel(), BoardTail(path)
    stop = threading.Event()
    with Live(render(model, time.time(), title), console=console, refresh_per_second=2, transient=False) as live:

        def follow() -> None:
            while not stop.wait(0.5):
                model.apply_all(tail.read())
                live.update(render(model, time.time(), title))

        th = threading.Thread(target=follow, name="rig-board", daemon=True)
        th.start()
        try:
            yield live
        finally:
            stop.set()
            th.join(timeout=2)
            model.apply_all(tail.read())
            live.update(render(model, time.time(), title))


class TerminalBoard:
    """The board for a pytest run: drawn from the first device line on, so a run without devices
    (the rig's own test suite, a suite that selected none) keeps pytest's output exactly as it was.

    ``attach(live)`` is called once the board is up (the plugin routes pytest's writer through it),
    ``detach()`` when it goes down.
    """

    def __init__(
        self, path: Path, console: Console, title: str, attach: Callable[[Live], None], detach: Callable[[], None]
    ) -> None:
        self.model, self.tail = BoardModel(), BoardTail(path)
        self.console, self.title = console, title
        self.attach, self.detach = attach, detach
        self.live: Live | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="rig-board", daemon=True)

    def start(self) -> TerminalBoard:
        self._thread.start()
        return self

    def _step(self) -> None:
        with self._lock:
            self.model.apply_all(self.tail.read())
            if self.live is None and self.model.rows and not self._stop.is_set():
                self.live = Live(console=self.console, refresh_per_second=2, transient=False)
                self.live.start()
                self.attach(self.live)
            if self.live is not None:
                self.live.update(render(self.model, time.time(), self.title))

    def _follow(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a view never stops the run
                log.debug("live board: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:
            if self.live is not None:
                self.model.apply_all(self.tail.read())
                self.live.update(render(self.model, time.time(), self.title))
                self.detach()
                self.live.stop()
                self.live = None
