"""Console detector throughput on one core, full pattern set, against a naive baseline in the same run.

Input: the real console captures in tests/data/console/ (boots, NMI floods, oopses, panics, stalls),
concatenated and repeated to the target size. The baseline is the way existing lab tools match a
console: a pexpect-style loop that tries every pattern, one regex at a time, on each chunk of text.
Goal (issue 3/6): >= 20 MB/s (about 1,700 consoles at 115200 baud) and >= 10x the baseline.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from rig.detect import Detector

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "console"

# The same titles the detector knows, written the naive way: one regex each, no pre-filter.
NAIVE_PATTERNS = [
    r"Kernel panic - not syncing",
    r"BUG: kernel NULL pointer dereference|BUG: unable to handle",
    r"Oops: ",
    r"kernel BUG at",
    r"general protection fault",
    r"BUG: soft lockup - CPU#\d+ stuck",
    r"Watchdog detected hard LOCKUP",
    r"rcu: INFO: rcu_\w+ (self-)?detected (expedited )?stall",
    r"INFO: task \S+ blocked for more than \d+ seconds",
    r"WARNING: CPU: \d+ PID: \d+",
    r"------------\[ cut here \]------------",
    r"Linux version \d",
    r"shadow-box: .*Execution (Complete|Fail)",
    r"shadow-box: .*VMX not support",
    r"shadow-box: .*(Memory attack|Hidden task|Hidden module|Task count is different)",
    r"shadow-box: .*HANG ",
    r"shadow-box: VM \[\d+\] INT NMI callback",
    r"Uhhuh\. NMI received",
    r"NMI backtrace for cpu \d+",
]


def corpus(target_bytes: int) -> list[str]:
    text = "".join(p.read_text(errors="replace") for p in sorted(DATA.glob("*.log")))
    if not text:
        raise SystemExit(f"no console captures in {DATA}")
    reps = max(1, target_bytes // len(text.encode()))
    return (text * reps).splitlines(keepends=True)


def run_detector(lines: list[str]) -> tuple[float, int]:
    det = Detector()
    t0 = time.process_time()
    n = len(det.scan(lines))
    return time.process_time() - t0, n


def run_naive(lines: list[str], chunk: int = 4096) -> tuple[float, int]:
    """pexpect-style: append each read to a buffer, try every pattern, drop the buffer up to a match."""
    pats = [re.compile(p) for p in NAIVE_PATTERNS]
    t0 = time.process_time()
    hits = 0
    buf = ""
    data = "".join(lines)
    for i in range(0, len(data), chunk):
        buf += data[i : i + chunk]
        while True:
            best = None
            for p in pats:
                m = p.search(buf)
                if m and (best is None or m.start() < best.start()):
                    best = m
            if best is None:
                buf = buf[-256:]  # keep a tail so a match split across reads is still found
                break
            hits += 1
            buf = buf[best.end() :]
    return time.process_time() - t0, hits


def main(size_mb: float = 32.0) -> dict[str, float]:
    lines = corpus(int(size_mb * 1e6))
    nbytes = sum(len(s.encode()) for s in lines)
    det_s, det_events = run_detector(lines)
    naive_lines = lines[: max(1, len(lines) // 8)]  # the baseline is slow: measure it on an eighth
    naive_bytes = sum(len(s.encode()) for s in naive_lines)
    naive_s, naive_hits = run_naive(naive_lines)
    det_mbs = nbytes / det_s / 1e6
    naive_mbs = naive_bytes / naive_s / 1e6
    return {
        "bytes": nbytes,
        "detector_mb_s": det_mbs,
        "detector_events": det_events,
        "naive_mb_s": naive_mbs,
        "naive_hits": naive_hits,
        "ratio": det_mbs / naive_mbs,
    }


if __name__ == "__main__":
    r = main()
    print(
        f"detector {r['detector_mb_s']:.1f} MB/s over {r['bytes'] / 1e6:.0f} MB ({r['detector_events']} events); "
        f"naive {r['naive_mb_s']:.1f} MB/s; ratio {r['ratio']:.1f}x"
    )
