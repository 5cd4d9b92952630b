"""`make bench`'s runner (benchmarks/__main__.py) knows the power and netconsole benchmarks: no lab needed here.

The benchmarks themselves boot guests for many minutes; these tests only check the runner's side: every
benchmark has a title, a renderer and a one-line summary, and a refreshed section replaces its old text in
BENCHMARKS.md in place, between its markers, leaving the other sections as they were.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import benchmarks.__main__ as runner
from rig.lab.manager import checkout_dir

POWER: dict[str, Any] = {
    "lab-1": {"recover_s": [22.2, 22.4], "methods": ["warm-reset", "warm-reset"], "verdicts": ["powered-off"] * 2},
    "laptop-1": {"recover_s": [31.2, 19.6], "methods": ["power-cut", "power-cut"], "verdicts": ["hang", "hang"]},
    "laptop-2": {"recover_s": [25.1, 26.1], "methods": ["power-cut", "power-cut"], "verdicts": ["hang", "hang"]},
    "load": [3.3, 4.1],
    "rounds": 2,
}
NETCONSOLE: dict[str, Any] = {
    "latency": {"serial": [2.1, 2.3], "netconsole": [2.0, 2.6]},
    "other": [],
    "flood": {"records": 200, "bytes": 200_000, "seconds": 1.5, "received": 200, "lost_by_gaps": 0, "gaps": 0,
              "socket_drops": 0},
    "load": (1.0, 1.0, 1.0),
    "machine": "test machine",
}


def test_every_benchmark_has_a_title_a_renderer_and_a_summary() -> None:
    assert {"power", "netconsole"} <= set(runner.NAMES)
    for name in runner.NAMES:
        assert name in runner.TITLES and name in runner.RENDER and name in runner.SUMMARY, name
    assert {"power", "netconsole"} <= set(runner.OWN_LAB), "they boot labs of their own, not the shared one"
    assert "laptop-1 25.4 s (power-cut)" in runner.SUMMARY["power"](POWER)
    assert "netconsole 2.30 s" in runner.SUMMARY["netconsole"](NETCONSOLE)


@pytest.mark.parametrize(("name", "result", "expect"), [
    ("power", POWER, "| laptop-1 | pdu (virtual APC PDU, labgrid apc) | 25.4 / 31.2 s |"),
    ("netconsole", NETCONSOLE, "| hang verdict after the last heartbeat | median 2.20 s"),
])  # fmt: skip
def test_a_refreshed_section_replaces_its_old_text_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, result: dict[str, Any], expect: str
) -> None:
    monkeypatch.setenv("RIG_BENCH_LAB", str(tmp_path / "bench-lab"))  # no saved results: the summary is empty
    md = tmp_path / "BENCHMARKS.md"
    shutil.copy(checkout_dir() / "BENCHMARKS.md", md)
    before = md.read_text()
    assert before.count(runner.begin(name)) == 1, f"BENCHMARKS.md has no {name} markers: a run would append a copy"
    old_block = before[before.index(runner.begin(name)):before.index(runner.end(name))]
    runner.update_md(md, {name: runner.RENDER[name]({**result, "_where": "here"}, "here")})
    after = md.read_text()
    block = after[after.index(runner.begin(name)):after.index(runner.end(name))]
    assert expect in block and block.startswith(f"{runner.begin(name)}\n## {runner.TITLES[name]}\n")
    assert after.count(f"## {runner.TITLES[name]}") == 1, "the section was replaced, not added a second time"
    assert old_block not in after
    # the sections around it (generated, another helper's, hand-written ones) are still there, unchanged
    detect = before[before.index(runner.begin("detect")):before.index(runner.end("detect"))]
    assert detect in after
    assert before[before.index(runner.end(name)):] in after
