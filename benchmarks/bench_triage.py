"""``rig triage`` on big files: peak memory (``/usr/bin/time -v``) and throughput (issue 16).

Why a benchmark and not a test: the figures move with the machine's load; the goal (max RSS under
200 MB whatever the file size) is recorded in BENCHMARKS.md, never asserted.

Two inputs, made in a temporary folder:

* a gzip of ``--zeros-gib`` GiB of zero bytes (about 2 MB compressed: a decompression bomb; the
  old whole-file reader took 4.27 GB of RAM for 2 GiB). ``rig triage`` must read it through and
  call it "not console text" (exit 2);
* ``--text-mb`` MB of the real captures in tests/data/console/ repeated, gzip'd: console text
  with crashes, reboots and NMIs (events past 10 000 are counted, not kept).

Run: ``python -m benchmarks.bench_triage [--zeros-gib 2] [--text-mb 256]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "console"
RIG = Path(sys.executable).with_name("rig")


def make_zeros(path: Path, gib: float) -> int:
    """A gzip of ``gib`` GiB of zeros, written in 16 MiB steps (never all in memory)."""
    total = int(gib * (1 << 30))
    step = 16 << 20
    block = bytes(step)
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        left = total
        while left:
            n = min(step, left)
            f.write(comp.compress(block[:n]))
            left -= n
        f.write(comp.flush())
    return total


def make_text(path: Path, mb: float) -> int:
    """``mb`` MB of the real captures, repeated whole, gzip'd."""
    corpus = b"".join(p.read_bytes() for p in sorted(DATA.glob("*.log")))
    total = 0
    with gzip.open(path, "wb", compresslevel=6) as f:
        while total < mb * 1e6:
            f.write(corpus)
            total += len(corpus)
    return total


def time_triage(path: Path) -> dict[str, Any]:
    """``/usr/bin/time -v rig triage --json PATH``: exit status, max RSS, wall and CPU seconds."""
    proc = subprocess.run(
        ["/usr/bin/time", "-v", str(RIG), "triage", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    err = proc.stderr

    def field(name: str) -> str:
        m = re.search(rf"^\s*{re.escape(name)}: (.+)$", err, re.M)
        if not m:
            raise SystemExit(f"/usr/bin/time printed no '{name}':\n{err[-2000:]}")
        return m.group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    doc = json.loads(proc.stdout)
    (f,) = doc["files"]
    return {
        "exit": proc.returncode,
        "max_rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
        "wall_s": wall,
        "cpu_s": float(field("User time (seconds)")) + float(field("System time (seconds)")),
        "verdict": f["verdict"],
        "lines": f["lines"],
        "events": len(f["events"]),
        "events_dropped": f["events_dropped"],
        "error": f["error"],
    }


def main(zeros_gib: float = 2.0, text_mb: float = 256.0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        zeros = Path(tmp) / "zeros.gz"
        out["zeros_bytes"] = make_zeros(zeros, zeros_gib)
        out["zeros_gz_bytes"] = zeros.stat().st_size
        out["zeros"] = time_triage(zeros)
        zeros.unlink()
        text = Path(tmp) / "console.log.gz"
        out["text_bytes"] = make_text(text, text_mb)
        out["text_gz_bytes"] = text.stat().st_size
        out["text"] = time_triage(text)
    la = os.getloadavg()
    out["load"] = f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}"
    return out


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for key, what in (("zeros", "gzip of zeros"), ("text", "gzip of real console captures")):
        m, size = r[key], r[f"{key}_bytes"]
        mib = size / (1 << 20)
        rows.append(
            f"| {what}: {mib:.0f} MiB ({r[f'{key}_gz_bytes'] / 1e6:.1f} MB compressed) | < 200 MB | "
            f"{m['max_rss_mb']:.1f} MB | {mib / m['wall_s']:.0f} MiB/s wall ({m['wall_s']:.1f} s), "
            f"{mib / m['cpu_s']:.0f} MiB/s per CPU second ({m['cpu_s']:.1f} s) | exit {m['exit']}, {m['verdict']}, "
            f"{m['lines']} lines, {m['events']} events listed + {m['events_dropped']} counted |"
        )
    head = "| input | goal (max RSS) | max RSS | throughput | result |\n|---|---|---|---|---|\n"
    return head + "\n".join(rows) + f"\n\n(load at the end: {r['load']})"


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zeros-gib", type=float, default=2.0, help="GiB of zeros in the gzip bomb (default 2)")
    ap.add_argument("--text-mb", type=float, default=256.0, help="MB of console text (default 256)")
    args = ap.parse_args(argv)
    r = main(args.zeros_gib, args.text_mb)
    print(json.dumps(r, indent=1))
    print(markdown(r))


if __name__ == "__main__":
    cli()
