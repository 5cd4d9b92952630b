"""The live board: rows from events (pure), the board file across processes, and the terminal.

The model and the file are tested on their own; the plugin is tested in real pytest subprocesses
(``-n 2``: two xdist workers feed one file that the controller draws), on a real pseudo-terminal
for the drawn board, and on a pipe (CI) where nothing but pytest's own lines may appear.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from rig.reports.board import BOARD_FILE, BoardFeed, BoardModel, BoardTail, LiveLines, Sampler, render, wanted


def ev(device: str, kind: str, t: float = 1000.0, **fields: object) -> dict[str, object]:
    return {"t": t, "device": device, "kind": kind, **fields}


def test_rows_follow_a_device_from_deploy_through_a_soak_to_its_verdict() -> None:
    m = BoardModel().apply_all(
        [
            ev("x1", "state", state="connecting"),
            ev("x1", "state", state="deploying"),
            ev("t14", "state", state="recovering"),
            ev("x1", "state", t=1000.0, state="soaking", test="test_nmi_soak[x1]", soak_seconds=1200.0),
            ev("x1", "sample", heartbeats=41, nmis={"ipmi": 300, "sysrq": 6}, event="nmi: NMI received for unknown"),
        ]
    )
    x1, t14 = m.rows["x1"], m.rows["t14"]
    assert x1.state_text(now=1000.0 + 7 * 60) == "soaking 7/20 min"
    assert x1.state_text(now=1000.0 + 99 * 60) == "soaking 20/20 min"  # never past the soak's length
    assert (x1.nmis, x1.heartbeats, x1.last_event) == ({"ipmi": 300, "sysrq": 6}, 41, "nmi: NMI received for unknown")
    assert t14.state_text(now=0) == "recovering"
    m.apply(ev("x1", "verdict", test="test_nmi_soak", outcome="failed", verdict="hang"))
    assert (x1.state, x1.verdict, x1.failed, x1.passed) == ("idle", "test_nmi_soak: hang", 1, 0)
    m.apply(ev("x1", "state", state="done"))
    assert [r.device for r in m.sorted_rows()] == ["t14", "x1"]
    assert x1.state_text(0) == "done"


def test_short_soak_counts_seconds_and_a_skip_keeps_the_verdict() -> None:
    m = BoardModel().apply_all(
        [
            ev("a", "state", t=50.0, state="soaking", soak_seconds=30),
            ev("a", "verdict", test="t1", outcome="passed", verdict="ok"),
            ev("a", "verdict", test="t2", outcome="skipped", verdict="ok"),
        ]
    )
    assert m.rows["a"].verdict == "ok" and m.rows["a"].passed == 1
    m.apply(ev("a", "state", t=50.0, state="soaking", soak_seconds=30))
    assert m.rows["a"].state_text(62.0) == "soaking 12/30 s"


def test_lines_without_a_device_or_of_unknown_kind_change_nothing() -> None:
    m = BoardModel().apply_all([{"kind": "state", "state": "x"}, ev("", "state", state="y"), ev("a", "weird")])
    assert list(m.rows) == ["a"] and m.rows["a"].state == "waiting"


def test_tail_reads_only_whole_new_lines_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / BOARD_FILE
    tail = BoardTail(path)
    assert tail.read() == []  # no file yet: the run has not started
    with open(path, "w") as fh:
        fh.write(json.dumps(ev("a", "state", state="deploying")) + "\nnot json\n" + '{"device": "b", "ki')
    got = tail.read()
    assert [g["state"] for g in got] == ["deploying"]
    with open(path, "a") as fh:
        fh.write('nd": "state", "state": "soaking"}\n')
    assert tail.read() == [{"device": "b", "kind": "state", "state": "soaking"}]
    assert tail.read() == []


def _hammer(path: str, device: str, n: int) -> None:
    feed = BoardFeed(Path(path))
    for i in range(n):
        feed.emit(device, "sample", heartbeats=i, nmis={"qmp": i}, event="x" * 300)
    feed.close()


def test_two_processes_append_whole_lines(tmp_path: Path) -> None:
    """xdist workers are processes: their lines must never interleave inside a line."""
    path = tmp_path / BOARD_FILE
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(path), d, 400)) for d in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    parsed = [json.loads(line) for line in lines]
    m = BoardModel().apply_all(parsed)
    assert {d: r.heartbeats for d, r in m.rows.items()} == {"a": 399, "b": 399}


def test_a_feed_that_cannot_write_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    BoardFeed(blocker / "run" / BOARD_FILE).state("a", "deploying")  # parent is a file: dropped, logged


class _Mon:
    def __init__(self) -> None:
        self.heartbeats = 0
        self.events: list[object] = []


class _Dut:
    """The two attributes the sampler reads (a Dut's monitor counters and its NMI tally)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.monitor = _Mon()
        self.nmi_raised: dict[str, int] = {}


def test_sampler_writes_a_line_only_when_a_counter_changed(tmp_path: Path) -> None:
    from rig.detect.detector import Event, EventKind

    feed = BoardFeed(tmp_path / BOARD_FILE)
    d = _Dut("a")
    s = Sampler(feed, lambda: [d])
    s.once()
    s.once()
    d.monitor.heartbeats = 3
    d.nmi_raised["qmp"] = 12
    d.monitor.events.append(Event(EventKind.SOFT_LOCKUP, 9, "watchdog: BUG: soft lockup - CPU#1 stuck", None, 1, "x"))
    s.once()
    lines = [json.loads(x) for x in (tmp_path / BOARD_FILE).read_text().splitlines()]
    assert len(lines) == 2
    row = BoardModel().apply_all(lines).rows["a"]
    assert (row.heartbeats, row.nmis) == (3, {"qmp": 12})
    assert row.last_event.startswith("soft_lockup: watchdog: BUG: soft lockup")


def test_render_has_one_row_per_device_with_its_numbers() -> None:
    m = BoardModel().apply_all(
        [
            ev("lab-2", "state", t=0.0, state="soaking", soak_seconds=600),
            ev("lab-2", "sample", heartbeats=7, nmis={"qmp": 90, "ipmi": 3}),
            ev("lab-1", "verdict", test="test_deploy", outcome="passed", verdict="ok"),
        ]
    )
    console = Console(width=140, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(m, now=120.0))
    text = console.export_text()
    lab2 = next(line for line in text.splitlines() if "lab-2" in line)
    assert "soaking 2/10 min" in lab2 and "ipmi 3, qmp 90" in lab2 and " 7 " in lab2
    assert "ok" in next(line for line in text.splitlines() if "lab-1" in line)


def test_live_lines_prints_whole_lines_above_the_board() -> None:
    console = Console(width=80, record=True, file=open(os.devnull, "w"), force_terminal=True)  # noqa: SIM115
    out = LiveLines(console, sys.stdout)
    out.write("....")
    assert "...." not in console.export_text(clear=False)
    out.write("\x1b[32m..\x1b[0m  [ 40%]\nnext")
    assert console.export_text(clear=False).splitlines()[0] == "......  [ 40%]"
    out.flush_partial()
    assert console.export_text().splitlines()[-1] == "next"


def test_board_only_on_a_terminal(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as fh:
        assert not wanted(fh, disabled=False)
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        assert wanted(tty, disabled=False)
        assert not wanted(tty, disabled=True)
    os.close(master)


# ---------------------------------------------------------------------------------------------
# the plugin, in real pytest runs (no device is contacted: the suite only uses the device param)

SUITE = """
import os, pathlib, time
import pytest

@pytest.mark.soak
def test_soak(device):
    # Soak until the driving test has seen the board show it on the terminal (BOARD_SEEN): the board
    # must be live while a test runs, not only between tests. At most 60 s; 1.5 s without BOARD_SEEN.
    seen = os.environ.get("BOARD_SEEN")
    end = time.monotonic() + (60 if seen else 1.5)
    while time.monotonic() < end and not (seen and pathlib.Path(seen).exists()):
        time.sleep(0.1)
    assert not seen or pathlib.Path(seen).exists(), "the board did not show this soak while it ran"

def test_quick(device):
    pass
"""


def _inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "devices"
    inv.mkdir(exist_ok=True)
    for name in ("bench1-x1", "bench2-t14"):
        (inv / f"{name}.toml").write_text(
            f'name = "{name}"\n[ssh]\nhost = "192.0.2.1"\nknown_hosts = "{inv / "kh"}"\nkey_file = "{inv / "k"}"\n'
        )
    (tmp_path / "test_suite.py").write_text(SUITE)
    return inv


def _cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pytest", str(tmp_path / "test_suite.py"), "--rig-devices", str(_inventory(tmp_path)),
        "--rig-report-dir", str(tmp_path / "reports"), "--rig-soak-minutes", "0.5", "-p", "no:cacheprovider",
        "-q", *extra,
    ]  # fmt: skip


def _in_pty(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300, *, seen: tuple[str, Path] | None = None
) -> tuple[int, str]:
    """Run ``cmd`` with a real pseudo-terminal as stdout/stderr; return (exit code, what it drew).

    ``seen`` = (text, file): the file is created once the text has been drawn, so the run can wait for
    its own board instead of hoping a starved process draws a frame within a fixed time.
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            if seen is not None and not seen[1].exists() and seen[0].encode() in b"".join(chunks):
                seen[1].touch()
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_two_workers_feed_one_board_file(tmp_path: Path) -> None:
    env = {**os.environ, "RIG_RUN_ID": "run"}
    proc = subprocess.run(_cmd(tmp_path, "-n", "2"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "reports" / "run" / BOARD_FILE).read_text().splitlines()]
    soaks = [x for x in lines if x.get("state") == "soaking"]
    assert {x["device"] for x in soaks} == {"bench1-x1", "bench2-t14"}
    assert all(x["soak_seconds"] == 30.0 for x in soaks)
    # Not a terminal (CI): pytest's own lines only, no board.
    assert "rig: run" not in proc.stdout and "NMIs raised" not in proc.stdout


def test_board_is_drawn_on_a_terminal_and_pytest_lines_stay(tmp_path: Path) -> None:
    env = {**os.environ, "RIG_RUN_ID": "run", "TERM": "xterm", "COLUMNS": "150", "LINES": "40"}
    mark = tmp_path / "board-showed-soaking"
    rc, shown = _in_pty(
        _cmd(tmp_path, "-p", "no:xdist"), tmp_path, {**env, "BOARD_SEEN": str(mark)}, seen=("soaking", mark)
    )
    assert rc == 0, shown
    assert "rig: run run" in shown and "NMIs raised" in shown
    assert "soaking" in shown and "bench1-x1" in shown and "bench2-t14" in shown
    assert "4 passed" in shown  # pytest's summary line, after the board
    rc, plain = _in_pty(_cmd(tmp_path, "-p", "no:xdist", "--rig-no-live"), tmp_path, {**env, "RIG_RUN_ID": "run2"})
    assert rc == 0, plain
    assert "4 passed" in plain and "NMIs raised" not in plain


def test_rig_regress_draws_the_board_of_the_build_that_is_running(tmp_path: Path) -> None:
    """rig regress runs pytest as a child (its output in a log): the board comes from the run's file."""
    from rig.reports.report import RunReport, write_summary
    from rig.runs.regress import Regress, Selection, parse_builds

    tree = tmp_path / "build"
    tree.mkdir()

    def runner(spec, tree, run_dir, selection) -> int:  # type: ignore[no-untyped-def]
        # What the plugin's workers write while the suites run, then the run's summary.
        feed = BoardFeed(run_dir / BOARD_FILE)
        feed.state("lab-1", "soaking", test="test_nmi_soak[lab-1]", soak_seconds=60.0)
        feed.emit("lab-1", "sample", heartbeats=5, nmis={"qmp": 42}, event="")
        time.sleep(1.2)  # the board follows the file every 0.5 s
        feed.verdict("lab-1", "test_nmi_soak", "failed", "hang")
        RunReport(run_dir.parent, run_dir.name)
        write_summary(run_dir)
        return 1

    console = Console(record=True, force_terminal=True, width=140, file=open(os.devnull, "w"))  # noqa: SIM115
    sel = Selection(["/inv"], [], [], ["/s/test_x.py"], 1.0, ["lab-1"])
    reg = Regress(
        parse_builds(None, [], [str(tree)]), tmp_path / "out", sel, tmp_path / "c", console, runner, live=True
    )
    reg.run()
    text = console.export_text()
    assert "rig regress: [1/1] build" in text
    row = [line for line in text.splitlines() if "lab-1" in line and "qmp 42" in line]
    assert row and "test_nmi_soak: hang" in row[-1], text[-2000:]


def test_a_run_without_devices_keeps_pytests_output_on_a_terminal(tmp_path: Path) -> None:
    """The rig's own tests, or a suite that selects no device: no board, not even an empty one."""
    (tmp_path / "test_plain.py").write_text("def test_a():\n    pass\n")
    cmd = [
        sys.executable, "-m", "pytest", str(tmp_path / "test_plain.py"), "--rig-report-dir", str(tmp_path / "reports"),
        "--rig-devices", str(tmp_path / "none"), "-p", "no:cacheprovider", "-q",
    ]  # fmt: skip
    (tmp_path / "none").mkdir()
    env = {**os.environ, "RIG_RUN_ID": "plain", "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    rc, shown = _in_pty(cmd, tmp_path, env)
    assert rc == 0, shown
    assert "1 passed" in shown and "rig: run" not in shown and "NMIs raised" not in shown
