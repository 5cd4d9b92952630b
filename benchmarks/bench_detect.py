"""Console detector throughput on one core, full pattern set, against pexpect-style baselines in the same run.

Input: the real console captures in tests/data/console/ (boots, NMI floods, oopses, panics, stalls),
concatenated and repeated to the target size.

Baselines (measured in the same process, on the same text, right after the detector):

- ``pexpect-defaults``: the way existing lab tools match a console -- ``child.expect(PATTERNS)`` in
  a loop. This re-implements pexpect 4.9's ``Expecter`` for a regex pattern list with its defaults
  (``maxread=2000``, ``searchwindowsize=None``): every read of up to 2000 characters is appended to
  the buffer and the WHOLE buffer since the last match is searched again with every pattern; the
  earliest match wins and the buffer is consumed up to its end; each new ``expect()`` call first
  searches what is left (``existing_data``). Read from pexpect/expect.py (``new_data``: "copy the
  whole buffer (really slow for large datasets)").
- ``pexpect-window``: the kind variant a careful tool author would write: the same loop with
  ``searchwindowsize=4000`` (two reads), so only the tail of the buffer is searched.
- ``pexpect-real`` (only when ``import pexpect`` works; it is not a rig dependency): the real
  library, ``pexpect.fdpexpect.fdspawn`` over a file of the same text, as a check that the
  re-implementation is faithful (same matches, similar speed).

Why CPU time (``time.process_time``) and ratios: the machine is shared and noisy; CPU time of one
thread is the "one core" figure, and a ratio measured side by side in one run is what the goal is
about. Goal (issues 3/6): >= 20 MB/s (about 1,700 consoles at 115200 baud) and >= 10x the baseline.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rig.detect.detector import Detector

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "console"

#: The detector's rules, written the way an expect-based tool lists them: one regex per thing it
#: reacts to (the same kernel titles, NMI evidence and Shadow-box lines rig.detect.detector knows).
EXPECT_PATTERNS = [
    r"Linux version \S+",
    r"Kernel panic - not syncing",
    r"PANIC: double fault",
    r"BUG: soft lockup - CPU#\d+ stuck for",
    r"Watchdog detected hard LOCKUP on cpu \d+",
    r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall",
    r"INFO: task .+:\d+ blocked for more than \d+ seconds",
    r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference"
    r"|unable to handle page fault|unable to handle kernel paging request|unable to handle kernel)",
    r"general protection fault",
    r"Oops(?:: | - )",
    r"(?:invalid opcode|stack segment|divide error|int3|Internal error|Unhandled fault): ",
    r"[Kk]ernel BUG at [^\s!]+",
    r"BUG: |BUG kmalloc-|UBSAN: ",
    r"WARNING: CPU: \d+ PID: \d+",
    r"WARNING: ",
    r"------------\[ cut here \]------------",
    r"---\[ end trace",
    r"Uhhuh\. NMI received for unknown reason \w+ on CPU \d+",
    r"Dazed and confused, but trying to continue",
    r"NMI backtrace for cpu \d+",
    r"INFO: NMI handler \(.*?\) took too long",
    r"VM \[\d+\] INT NMI callback",
    r"VM \[\d+\] .*(?:NMI Interrupt Occured|Thread run fail)",
    r"VM \[\d+\] .*(?:Memory attack|GDTR or IDTR attack|Task count is different|Hidden task"
    r"|Module count is different|Hidden module|Process try to unload)",
    r"(?:shadow-box|alcatraz): .*Execution (?:Complete|Fail)",
    r"(?:shadow-box|alcatraz): .*(?:Kernel version is not supported|VMX not support|VMX is disabled by BIOS)",
    r"(?:shadow-box|alcatraz): .*HANG \S",
    r"errorcode=-?\d+",
    r"GRMCODE=\d+",
]

MAXREAD = 2000  # pexpect's default read size
WINDOW = 4000  # the kind variant's searchwindowsize: two reads, so a line split across reads is found


def corpus_text(target_bytes: int) -> str:
    """All captures concatenated, repeated (whole captures only) to about ``target_bytes``."""
    text = "".join(p.read_text(errors="replace") for p in sorted(DATA.glob("*.log")))
    if not text:
        raise SystemExit(f"no console captures in {DATA}; the benchmark needs the test data of the checkout")
    reps = max(1, round(target_bytes / len(text.encode())))
    return text * reps


def run_detector(text: str) -> tuple[float, int]:
    """CPU seconds and events of one ``Detector.scan()`` over the lines of ``text``.

    ``scan`` is the block path (triage, reports, tests: a list of lines at once; its pre-filter
    runs over the whole block). Splitting the text into lines is not timed: the console reader
    hands over lines.
    """
    lines = text.splitlines(keepends=True)
    det = Detector()
    t0 = time.process_time()
    n = len(det.scan(lines))
    return time.process_time() - t0, n


def run_feed(text: str) -> tuple[float, int]:
    """CPU seconds and events of ``Detector.feed()`` called once per line: the live monitor's path
    (rig.device.monitor gets one console line at a time), reported next to the block figure."""
    lines = text.splitlines(keepends=True)
    det = Detector()
    feed = det.feed
    n = 0
    t0 = time.process_time()
    for line in lines:
        n += len(feed(line))
    return time.process_time() - t0, n


class ExpectLoop:
    """pexpect 4.9's Expecter + searcher_re, reduced to what costs time (see the module docstring).

    ``read`` returns at most ``maxread`` characters, as ``read_nonblocking`` does on a fast source.
    The ``_before`` buffer pexpect also keeps (for ``child.before``) is kept too: it is part of the cost.
    """

    def __init__(self, text: str, patterns: list[str], searchwindowsize: int | None = None) -> None:
        self.text = text
        self.pos = 0
        self.searches = [re.compile(p) for p in patterns]
        self.sws = searchwindowsize
        self.buffer = io.StringIO()
        self.before = io.StringIO()

    def _read(self) -> str | None:
        if self.pos >= len(self.text):
            return None
        data = self.text[self.pos : self.pos + MAXREAD]
        self.pos += len(data)
        return data

    def _search(self, window: str) -> bool:
        first: re.Match[str] | None = None
        start = 0 if self.sws is None else max(0, len(window) - self.sws)
        for s in self.searches:
            m = s.search(window, start)
            if m is not None and (first is None or m.start() < first.start()):
                first = m
        if first is None:
            return False
        self.buffer = io.StringIO()
        self.buffer.write(window[first.end() :])
        self.before = io.StringIO()
        self.before.write(window[first.end() :])
        return True

    def _existing(self) -> bool:
        if self.sws:
            n = self.buffer.tell()
            self.buffer.seek(max(0, n - self.sws))
            window = self.buffer.read()
        else:
            window = self.buffer.getvalue()
        return self._search(window)

    def _new(self, data: str) -> bool:
        self.before.write(data)
        if not self.sws:
            self.buffer.write(data)
            window = self.buffer.getvalue()  # pexpect: "copy the whole buffer (really slow ...)"
        elif len(data) >= self.sws or not self.buffer.tell():
            window = data[-self.sws :]
            self.buffer = io.StringIO()
            self.buffer.write(window)
        else:
            self.buffer.write(data)
            n = self.buffer.tell()
            self.buffer.seek(max(0, n - self.sws))
            window = self.buffer.read()
        if self._search(window):
            return True
        if self.sws and self.buffer.tell() > self.sws:
            self.buffer = io.StringIO()
            self.buffer.write(window[-self.sws :])
        return False

    def expect(self) -> bool:
        """One ``child.expect(patterns)``: True on a match, False at EOF."""
        if self._existing():
            return True
        while True:
            data = self._read()
            if data is None:
                return False
            if self._new(data):
                return True



def run_expect_loop(text: str, searchwindowsize: int | None) -> tuple[float, int]:
    """CPU seconds and matches of ``while child.expect(PATTERNS) ...`` over ``text``."""
    loop = ExpectLoop(text, EXPECT_PATTERNS, searchwindowsize)
    t0 = time.process_time()
    hits = 0
    while loop.expect():
        hits += 1
    return time.process_time() - t0, hits


def run_real_pexpect(text: str, searchwindowsize: int | None) -> tuple[float, int] | None:
    """The real pexpect library over a file of ``text`` (None when pexpect is not importable)."""
    try:
        from pexpect import EOF  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from pexpect.fdpexpect import fdspawn  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    pats = [re.compile(p) for p in EXPECT_PATTERNS] + [EOF]
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
        f.write(text)
        path = f.name
    fd = os.open(path, os.O_RDONLY)
    try:
        child = fdspawn(fd, encoding="utf-8", codec_errors="replace", searchwindowsize=searchwindowsize,
                        timeout=30)
        t0 = time.process_time()
        hits = 0
        eof_index = len(pats) - 1
        while child.expect(pats) != eof_index:
            hits += 1
        return time.process_time() - t0, hits
    finally:
        os.close(fd)
        os.unlink(path)


def profile_detector(text: str, top: int = 8) -> list[tuple[str, float, int]]:
    """Where the detector's time goes: (function, share of total CPU time, calls), biggest first."""
    lines = text.splitlines(keepends=True)
    det = Detector()
    prof = cProfile.Profile()
    prof.enable()
    det.scan(lines)
    prof.disable()
    st = pstats.Stats(prof)
    stats: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    rows = []
    for (file, line, func), (_cc, nc, tt, _ct, _callers) in stats.items():
        where = f"{Path(file).name}:{line}({func})" if line else func
        rows.append((where, tt / total, nc))
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows[:top]


def prefilter_share(text: str) -> float:
    """The share of lines that the block pre-filter hands to the classifier (the rest cost nothing
    per line: they are only part of the anchor searches over the whole block)."""
    from rig.detect.detector import _candidates  # noqa: PLC0415 - a private detail, read for the report only

    lines = text.splitlines()
    return len(_candidates(lines)) / max(1, len(lines))


#: Interleaved repetitions of every measurement (medians reported).
ROUNDS = 5


def main(size_mb: float = 16.0, baseline_mb: float = 2.0, profile: bool = True) -> dict[str, Any]:
    """Detector over ``size_mb`` of console text; baselines over ``baseline_mb`` (whole captures)."""
    text = corpus_text(int(size_mb * 1e6))
    nbytes = len(text.encode())
    base = corpus_text(int(baseline_mb * 1e6))
    base_bytes = len(base.encode())
    # Each measurement ROUNDS times, interleaved (detector, feed, baselines, detector, ...), and the
    # median of each: one noisy second on the shared machine then moves one sample, not the ratio.
    det_t: list[float] = []
    feed_t: list[float] = []
    full_t: list[float] = []
    win_t: list[float] = []
    for _ in range(ROUNDS):
        det_s, det_events = run_detector(text)
        feed_s, feed_events = run_feed(text)
        if feed_events != det_events:
            raise SystemExit(
                f"scan() found {det_events} events but feed() {feed_events}: the block pre-filter is wrong"
            )
        full_s, full_hits = run_expect_loop(base, None)
        win_s, win_hits = run_expect_loop(base, WINDOW)
        det_t.append(det_s)
        feed_t.append(feed_s)
        full_t.append(full_s)
        win_t.append(win_s)
    det_s, feed_s = statistics.median(det_t), statistics.median(feed_t)
    full_s, win_s = statistics.median(full_t), statistics.median(win_t)
    det_mbs = nbytes / det_s / 1e6
    # The detector on the baselines' text too, so the event count compares like with like.
    _, det_events_base = run_detector(base)
    out: dict[str, Any] = {
        "bytes": nbytes,
        "detector_mb_s": det_mbs,
        "detector_events": det_events,
        "feed_mb_s": nbytes / feed_s / 1e6,
        "baseline_bytes": base_bytes,
        "detector_events_on_baseline_text": det_events_base,
        "defaults_mb_s": base_bytes / full_s / 1e6,
        "defaults_hits": full_hits,
        "window_mb_s": base_bytes / win_s / 1e6,
        "window_hits": win_hits,
        "patterns": len(EXPECT_PATTERNS),
        "rounds": ROUNDS,
        "ratio_window_per_round": [
            round((nbytes / d) / (base_bytes / w), 2) for d, w in zip(det_t, win_t, strict=True)
        ],
    }
    out["ratio_defaults"] = det_mbs / out["defaults_mb_s"]
    out["ratio_window"] = det_mbs / out["window_mb_s"]
    real = run_real_pexpect(base, None)
    if real is not None:
        out["real_defaults_mb_s"] = base_bytes / real[0] / 1e6
        out["real_defaults_hits"] = real[1]
        real_w = run_real_pexpect(base, WINDOW)
        assert real_w is not None
        out["real_window_mb_s"] = base_bytes / real_w[0] / 1e6
        out["real_window_hits"] = real_w[1]
    if profile:
        sample = corpus_text(2_000_000)
        out["profile"] = profile_detector(sample)
        out["prefilter_share"] = prefilter_share(sample)
    return out


def summary(r: dict[str, Any]) -> str:
    s = (
        f"detector {r['detector_mb_s']:.1f} MB/s over {r['bytes'] / 1e6:.1f} MB ({r['detector_events']} events; "
        f"line-by-line feed {r.get('feed_mb_s', 0.0):.1f} MB/s); "
        f"pexpect defaults {r['defaults_mb_s']:.2f} MB/s ({r['defaults_hits']} matches), "
        f"windowed {r['window_mb_s']:.1f} MB/s ({r['window_hits']} matches) over {r['baseline_bytes'] / 1e6:.1f} MB; "
        f"ratios {r['ratio_defaults']:.1f}x / {r['ratio_window']:.2f}x"
    )
    if "real_defaults_mb_s" in r:
        s += (f"; real pexpect {r['real_defaults_mb_s']:.2f} MB/s ({r['real_defaults_hits']}) / "
              f"windowed {r['real_window_mb_s']:.1f} MB/s ({r['real_window_hits']})")
    return s


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=16.0, help="console text for the detector (default 16)")
    ap.add_argument("--baseline-mb", type=float, default=2.0, help="console text for the baselines (default 2)")
    args = ap.parse_args(argv)
    r = main(args.size_mb, args.baseline_mb)
    print(summary(r))
    for where, share, calls in r.get("profile", []):
        print(f"  {share * 100:5.1f} %  {calls:>9}  {where}")
    return r


if __name__ == "__main__":
    cli()
