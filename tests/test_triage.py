"""``rig triage``: the real CLI over the real console captures in tests/data/console/ and over the
shapes saved logs come in (LF/CRLF, ANSI, NULs and garbage, no printk time, logger and console
server stamps, gzip, stdin, a real ser2net trace made here by a real ser2net).

The captures are real kernel/lab output (see tests/test_detect.py for where they come from); the
odd shapes are made from them the way the tool that writes such files would. No lab guest boots:
the ser2net test runs socat + ser2net on loopback (tests/consolepeers.py) and is over in seconds.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import rig.detect.triage
from rig.cli import main
from rig.detect.triage import ERROR, MAX_EVENTS, SCHEMA, VERDICTS, decode_console, triage_bytes
from tests.consolepeers import SER2NET, PtyPair, _port_open, free_port, terminate, wait_for

DATA = Path(__file__).parent / "data" / "console"
CAPTURES = sorted(p.name for p in DATA.glob("*.log"))

# capture -> (verdict, kind of the first crash or None, event kinds that must be among the events)
TRIAGE: dict[str, tuple[str, str | set[str] | None, set[str]]] = {
    "kernel_clean_boot.log": ("ok", None, set()),
    "kernel_nmi_sysrq.log": ("ok", None, {"nmi"}),  # NMI-heavy: 8 unknown-reason NMIs + sysrq-l backtraces
    "kernel_sysrq_crash.log": ("crash", "panic", {"panic"}),
    "kernel_sysrq_reboot.log": ("reboot", None, {"reboot"}),  # sysrq-b on the console shell: a second boot
    "sbsim_clean.log": ("ok", None, {"shadowbox_start"}),
    "sbsim_nmis.log": ("ok", None, {"nmi", "shadowbox_start"}),
    "sbsim_nmi_delay.log": ("ok", None, {"nmi"}),
    "sbsim_nmi_ratelimit.log": ("ok", None, {"nmi"}),  # 41 NMI events
    "sbsim_hang_after_nmi.log": ("ok", None, {"nmi"}),  # the seed bug: silence, nothing to read
    "sbsim_panic.log": ("crash", "panic", {"panic"}),
    "sbsim_panic_after_nmi.log": ("crash", "panic", {"panic", "nmi"}),
    "sbsim_oops.log": ("crash", "oops", {"oops"}),
    "sbsim_gpf.log": ("crash", "gpf", {"gpf", "shadowbox_start"}),  # #GP on 0xdead000000000100
    "sbsim_softlockup.log": ("crash", {"soft_lockup", "rcu_stall"}, {"soft_lockup"}),
    "sbsim_softlockup_default.log": ("crash", "rcu_stall", {"rcu_stall"}),
    "sbsim_rcu_stall.log": ("crash", "rcu_stall", {"rcu_stall"}),
    "sbsim_hung_task.log": ("crash", "hung_task", {"hung_task"}),
    "sbsim_warn.log": ("warning", None, {"warning"}),
    "sbsim_bug.log": ("crash", "bug", {"bug"}),
    "sbsim_fail_start.log": ("fail", None, {"shadowbox_fail"}),
    "sbsim_alert.log": ("alert", None, {"shadowbox_alert"}),
    "sbsim_hang_banner.log": ("crash", "shadowbox_hang", {"shadowbox_hang"}),
    "sbsim_unload.log": ("alert", None, {"shadowbox_alert", "shadowbox_start"}),
    "boot-wedged-keyring.log": ("crash", "rcu_stall", {"rcu_stall", "soft_lockup"}),  # a lab boot that wedged
}

EVENT_KEYS = {"kind", "line", "timestamp", "text", "title", "cpu"}
FILE_KEYS = {"file", "verdict", "crash", "reason", "lines", "format", "compressed", "error", "events", "events_dropped"}


def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["triage", *args], input=stdin, catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def run_json(*args: str, stdin: bytes | None = None) -> tuple[int, dict[str, Any]]:
    code, out, _err = run("--json", *args, stdin=stdin)
    doc = json.loads(out)
    assert doc["schema"] == SCHEMA == 2
    return code, doc


def one(path: Path | str, *args: str) -> tuple[int, dict[str, Any]]:
    code, doc = run_json(*args, str(path))
    (f,) = doc["files"]
    return code, f


def kinds(f: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in f["events"]]


def summary(f: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(e["kind"], e["line"], e["title"]) for e in f["events"]]


# ---- the real captures -------------------------------------------------------------------------------


def test_every_capture_has_a_row() -> None:
    assert CAPTURES, f"no captures in {DATA}"
    assert sorted(TRIAGE) == CAPTURES, "add new captures to TRIAGE in tests/test_triage.py"


def test_captures_cover_the_failure_classes() -> None:
    """The classes the captures can show (no hard-lockup capture exists: TCG has no PMU for the
    hard-lockup detector; tests/test_detect.py has its lines)."""
    code, doc = run_json(*(str(DATA / n) for n in CAPTURES))
    seen = {k for f in doc["files"] for k in kinds(f)}
    wanted = {
        "panic",
        "oops",
        "gpf",
        "bug",
        "soft_lockup",
        "rcu_stall",
        "hung_task",
        "warning",
        "shadowbox_fail",
        "shadowbox_alert",
        "shadowbox_hang",
        "nmi",
        "reboot",
    }
    assert wanted <= seen, wanted - seen
    assert {f["verdict"] for f in doc["files"]} == set(VERDICTS)
    assert code == 1


@pytest.mark.parametrize("name", CAPTURES)
def test_real_capture(name: str) -> None:
    verdict, crash, must = TRIAGE[name]
    code, f = one(DATA / name)
    assert f["verdict"] == verdict, summary(f)
    assert f["crash"] in (crash if isinstance(crash, set) else {crash}), summary(f)
    assert must <= set(kinds(f)), summary(f)
    assert code == (0 if verdict == "ok" else 1)
    assert f["error"] is None and f["format"] == "text" and f["compressed"] is None


def test_gpf_capture_is_crash_gpf_and_names_its_line() -> None:
    """A #GP is its own class: the verdict is crash(gpf), its oops body adds no "oops" event."""
    code, f = one(DATA / "sbsim_gpf.log")
    assert (code, f["verdict"], f["crash"]) == (1, "crash", "gpf")
    assert kinds(f) == ["shadowbox_start", "gpf"], summary(f)
    assert f["reason"] == "general protection fault in sbsim_gpf_fn"  # <report type> in <guilty function>
    gpf = f["events"][1]
    assert gpf["text"].endswith(
        "] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI"
    )
    assert (gpf["line"], gpf["timestamp"]) == (398, 8.99334)


def test_json_shape_and_lines_point_into_the_file() -> None:
    path = DATA / "sbsim_panic_after_nmi.log"
    code, doc = run_json(str(path))
    assert set(doc) == {"schema", "files"}
    (f,) = doc["files"]
    assert set(f) == FILE_KEYS
    assert f["file"] == str(path) and f["lines"] == len(path.read_bytes().splitlines())
    assert f["reason"] and f["crash"] == "panic"
    file_lines = path.read_text(errors="replace").splitlines()
    for e in f["events"]:
        assert set(e) == EVENT_KEYS
        assert isinstance(e["line"], int) and e["line"] >= 1
        assert file_lines[e["line"] - 1].rstrip("\r") == e["text"]
        m = re.match(r"\[\s*(\d+\.\d+)\]", e["text"])
        assert m and e["timestamp"] == float(m.group(1))
        assert e["cpu"] is None or isinstance(e["cpu"], int)
    assert code == 1


def test_text_output_one_word_verdict_and_nmis_folded() -> None:
    code, out, _ = run(str(DATA / "sbsim_nmi_ratelimit.log"), str(DATA / "sbsim_oops.log"))
    lines = out.splitlines()
    assert lines[0].startswith(f"{DATA / 'sbsim_nmi_ratelimit.log'}: ok  [459 lines")
    assert "41 nmi events" in out and "--all" in out
    oops = [ln for ln in lines if ln.startswith(str(DATA / "sbsim_oops.log"))]
    assert oops and oops[0].split(": ", 1)[1].startswith("crash (oops)")
    assert re.search(r"^\s+388\s+2\.095661\s+oops\s+\[\s+2\.095661\] BUG: kernel NULL pointer", out, re.M)
    assert code == 1
    _, out_all, _ = run("--all", str(DATA / "sbsim_nmi_ratelimit.log"))
    assert len([ln for ln in out_all.splitlines() if " nmi " in ln]) == 41


# ---- exit status and errors --------------------------------------------------------------------------


def test_exit_0_when_all_ok() -> None:
    code, doc = run_json(str(DATA / "kernel_clean_boot.log"), str(DATA / "kernel_nmi_sysrq.log"))
    assert code == 0 and [f["verdict"] for f in doc["files"]] == ["ok", "ok"]


def test_missing_file_exit_2_others_still_classified(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    code, out, err = run("--json", str(DATA / "sbsim_oops.log"), str(missing), str(DATA / "kernel_clean_boot.log"))
    assert code == 2
    assert str(missing) in err and "no such file" in err
    files = json.loads(out)["files"]
    assert [f["verdict"] for f in files] == ["crash", "error", "ok"]
    assert files[1]["error"].startswith(str(missing)) and files[1]["events"] == []
    code, out, err = run(str(missing), str(DATA / "sbsim_oops.log"))  # text mode too
    assert code == 2 and "crash (oops)" in out and str(missing) in err


def test_folder_and_broken_gzip_are_named_errors(tmp_path: Path) -> None:
    broken = tmp_path / "cut.log.gz"
    broken.write_bytes(gzip.compress((DATA / "sbsim_panic.log").read_bytes())[:200])
    code, out, err = run(str(tmp_path), str(broken))
    assert code == 2
    assert f"{tmp_path}: is a folder" in err
    assert f"{broken}: not a readable gzip file" in err


def test_usage_errors_exit_2() -> None:
    assert run()[0] == 2
    assert run("--bogus", str(DATA / "sbsim_oops.log"))[0] == 2
    code, _, err = run("-", "-", stdin=b"")
    assert code == 2 and "once" in err


# ---- shapes of saved logs -----------------------------------------------------------------------------


def _variant(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _same_detection(a: dict[str, Any], b: dict[str, Any], *, timestamps: bool = True) -> None:
    assert (a["verdict"], a["crash"], a["lines"]) == (b["verdict"], b["crash"], b["lines"])
    assert [(e["kind"], e["line"], e["title"]) for e in a["events"]] == [
        (e["kind"], e["line"], e["title"]) for e in b["events"]
    ]
    if timestamps:
        assert [e["timestamp"] for e in a["events"]] == [e["timestamp"] for e in b["events"]]


@pytest.mark.parametrize("name", ["sbsim_oops.log", "sbsim_nmi_ratelimit.log", "sbsim_fail_start.log"])
def test_lf_only_same_as_crlf(tmp_path: Path, name: str) -> None:
    raw = (DATA / name).read_bytes()
    assert b"\r\n" in raw
    _, ref = one(DATA / name)
    _, lf = one(_variant(tmp_path, name, raw.replace(b"\r\n", b"\n")))
    _same_detection(lf, ref)


def test_ansi_nuls_and_binary_garbage(tmp_path: Path) -> None:
    lines = (DATA / "sbsim_panic_after_nmi.log").read_bytes().split(b"\r\n")
    out = []
    for i, ln in enumerate(lines):
        if b"Kernel panic" in ln or b"Uhhuh" in ln:
            ln = b"\x1b[1;31m" + ln.replace(b"] ", b"] \x1b[0m", 1) + b"\x1b[0m\x1b]0;title\x07"
        if b"Dazed" in ln:
            ln = b"\x00\x00\x01\x7f" + ln.replace(b"] ", b"] \x00", 1)  # line noise around a break
        if i % 7 == 0:
            ln = ln + b"\x00\x00\xff\xfe\x81"  # NULs and bytes that are not UTF-8
        if i % 50 == 0:
            ln = b"\x00\x01\x02\x9b\xc3\x28 garbage \x7f" + ln
        out.append(ln)
    _, ref = one(DATA / "sbsim_panic_after_nmi.log")
    _, got = one(_variant(tmp_path, "noisy.log", b"\r\n".join(out)))
    _same_detection(got, ref)
    assert not [e for e in got["events"] if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", e["text"])]
    panic = [e for e in got["events"] if e["kind"] == "panic"][0]
    assert "\x1b" not in panic["text"] and panic["text"].startswith("[   10.355744] Kernel panic - not syncing")


def test_without_printk_timestamps(tmp_path: Path) -> None:
    raw = (DATA / "sbsim_hung_task.log").read_bytes()
    bare = re.sub(rb"(?m)^\[\s*\d+\.\d+\] ", b"", raw)
    assert bare != raw
    _, ref = one(DATA / "sbsim_hung_task.log")
    _, got = one(_variant(tmp_path, "bare.log", bare))
    _same_detection(got, ref, timestamps=False)
    assert got["events"] and all(e["timestamp"] is None for e in got["events"])


# A stamp put in front of every line by the tool that saved the console (see rig.detect.triage's docstring).
FOREIGN = {
    "ser2net-trace-timestamp": b"2026/11/26 01:02:03 ",
    "ts-moreutils": b"Nov 26 01:02:03 ",
    "syslog-kernel": b"Nov  6 01:02:03 lab-1 kernel: ",
    "journal-short-iso": b"2026-11-26T01:02:03+0000 lab-1 kernel: ",
    "date-time-ms": b"2026-11-26 01:02:03.456 ",
    "minicom-bracket": b"[2026-11-26 01:02:03.456] ",
    "tio-bracket": b"[01:02:03.456] ",
    "grabserial": b"[0.123456 0.000123] ",
}


@pytest.mark.parametrize("style", FOREIGN)
@pytest.mark.parametrize("name", ["sbsim_rcu_stall.log", "sbsim_alert.log", "kernel_nmi_sysrq.log"])
def test_logger_and_console_server_stamps(tmp_path: Path, style: str, name: str) -> None:
    stamp = FOREIGN[style]
    raw = (DATA / name).read_bytes()
    stamped = b"".join(stamp + ln for ln in raw.splitlines(keepends=True))
    _, ref = one(DATA / name)
    _, got = one(_variant(tmp_path, f"{style}.log", stamped))
    _same_detection(got, ref)
    assert all(not e["text"].startswith(stamp.decode()) for e in got["events"])


def test_conserver_marks_and_ser2net_open_close_lines(tmp_path: Path) -> None:
    """Lines a console server adds between the device's lines: they count as lines, match nothing."""
    lines = (DATA / "sbsim_oops.log").read_bytes().splitlines(keepends=True)
    out, added = [], 0
    for i, ln in enumerate(lines):
        if i % 40 == 0:
            out.append(b"[-- MARK -- Thu Nov 26 01:00:00 2026]\r\n")
            out.append(b"2026/11/26 01:00:00 OPEN (ipv4,127.0.0.1,40000)\r\n")
            added += 2
        out.append(ln)
    _, ref = one(DATA / "sbsim_oops.log")
    _, got = one(_variant(tmp_path, "conserver.log", b"".join(out)))
    assert (got["verdict"], got["crash"], got["lines"]) == ("crash", "oops", ref["lines"] + added)
    file_lines = b"".join(out).decode(errors="replace").splitlines()
    for e in got["events"]:
        assert file_lines[e["line"] - 1] == e["text"]


def test_bare_carriage_returns_split_a_line_but_keep_its_number(tmp_path: Path) -> None:
    data = (
        b"[    1.000000] booting\n"
        b"progress  10%\rprogress  20%\r[    5.000000] Kernel panic - not syncing: under a progress bar\r\n"
        b"[    6.000000] after\r\r\n"
    )
    _, f = one(_variant(tmp_path, "cr.log", data))
    assert f["verdict"] == "crash" and f["lines"] == 3
    (e,) = f["events"]
    assert (e["kind"], e["line"], e["timestamp"]) == ("panic", 2, 5.0)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_byte_order_marks(tmp_path: Path, encoding: str) -> None:
    """Logs saved by Windows tools: a UTF-8 BOM in front of line 1, or UTF-16 with a BOM."""
    text = (DATA / "kernel_sysrq_crash.log").read_text(errors="replace")
    first = "[    2.959997] Kernel panic - not syncing: sysrq triggered crash\r\n"
    _, f = one(_variant(tmp_path, "win.log", (first + text).encode(encoding)))
    assert (f["verdict"], f["crash"]) == ("crash", "panic")
    assert f["events"][0]["line"] == 1 and f["events"][0]["timestamp"] == 2.959997


@pytest.mark.parametrize("fname", ["console.log.gz", "console.log"])
def test_gzip_by_content(tmp_path: Path, fname: str) -> None:
    p = _variant(tmp_path, fname, gzip.compress((DATA / "sbsim_softlockup.log").read_bytes()))
    _, ref = one(DATA / "sbsim_softlockup.log")
    _, got = one(p)
    _same_detection(got, ref)
    assert got["compressed"] == "gzip"


@pytest.mark.parametrize(("compress", "name"), [(lzma.compress, "xz"), (bz2.compress, "bzip2")])
def test_xz_and_bzip2_by_content(tmp_path: Path, compress: Any, name: str) -> None:
    """Bug reports arrive as .xz or .bz2 as often as .gz (kernel bugzilla attachments)."""
    p = _variant(tmp_path, "attachment.txt", compress((DATA / "sbsim_softlockup.log").read_bytes()))
    _, ref = one(DATA / "sbsim_softlockup.log")
    _, got = one(p)
    _same_detection(got, ref)
    assert got["compressed"] == name
    broken = _variant(tmp_path, "cut.txt", compress((DATA / "sbsim_panic.log").read_bytes())[:100])
    code, _, err = run(str(broken))
    assert code == 2 and f"{broken}: not a readable {name} file" in err


def test_rig_console_log_format(tmp_path: Path) -> None:
    """The rig's own console.log (``<ISO time>Z <line>``): its stamp is not part of the event text."""
    raw = (DATA / "sbsim_bug.log").read_text(errors="replace").splitlines()
    stamped = "".join(f"2026-11-26T01:02:{i % 60:02d}.{i % 1000:03d}Z {ln}\n" for i, ln in enumerate(raw))
    _, ref = one(DATA / "sbsim_bug.log")
    _, got = one(_variant(tmp_path, "console.log", stamped.encode()))
    _same_detection(got, ref)


def test_empty_file_is_ok_with_no_lines(tmp_path: Path) -> None:
    code, f = one(_variant(tmp_path, "empty.log", b""))
    assert (code, f["verdict"], f["lines"], f["events"]) == (0, "ok", 0, [])
    _, f = one(_variant(tmp_path, "two.log", b"a\nb"))
    assert f["lines"] == 2


def test_stdin_dash() -> None:
    code, doc = run_json("-", stdin=(DATA / "sbsim_hang_banner.log").read_bytes())
    (f,) = doc["files"]
    assert (f["file"], f["verdict"], f["crash"], code) == ("-", "crash", "shadowbox_hang", 1)


def test_installed_command_reads_a_pipe() -> None:
    """The real ``rig`` entry point in a real process, a gzip'd capture on its standard input."""
    rig = Path(sys.executable).with_name("rig")
    data = gzip.compress((DATA / "kernel_sysrq_crash.log").read_bytes())
    proc = subprocess.run([str(rig), "triage", "--json", "-"], input=data, capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    (f,) = json.loads(proc.stdout)["files"]
    assert (f["verdict"], f["crash"], f["compressed"]) == ("crash", "panic", "gzip")


def test_two_boots_in_one_log_is_a_reboot_and_mid_run(tmp_path: Path) -> None:
    """A console that saw the machine boot twice (two real boots, one after the other)."""
    both = (DATA / "kernel_clean_boot.log").read_bytes() + (DATA / "sbsim_clean.log").read_bytes()
    p = _variant(tmp_path, "twice.log", both)
    code, f = one(p)
    assert (f["verdict"], kinds(f)[0], code) == ("reboot", "reboot", 1)
    assert f["events"][0]["line"] == 371  # the second banner, the first line after the first capture
    code, f = one(DATA / "kernel_clean_boot.log", "--mid-run")
    assert (f["verdict"], code) == ("reboot", 1)


def test_crash_wins_over_an_earlier_reboot(tmp_path: Path) -> None:
    both = (DATA / "kernel_clean_boot.log").read_bytes() + (DATA / "sbsim_oops.log").read_bytes()
    _, f = one(_variant(tmp_path, "reboot-then-oops.log", both))
    assert (f["verdict"], f["crash"]) == ("crash", "oops")
    assert kinds(f)[0] == "reboot"


# ---- a real ser2net trace ------------------------------------------------------------------------------


@pytest.fixture
def ser2net_traces(tmp_path: Path) -> Iterator[tuple[Path, Path, bytes]]:
    """A real ser2net with two trace files on one port: ``trace-read`` (plain) and ``trace-both``
    with hexdump and timestamps. The device (a socat pty) prints sbsim_oops.log; the client types a
    line that looks like a panic, which must not count: it is not the device's output."""
    port = free_port()
    device_text = (DATA / "sbsim_oops.log").read_bytes()
    plain, hexdump = tmp_path / "read.trace", tmp_path / "both-hex.trace"
    with PtyPair(tmp_path / "pty") as pty:
        cfg = tmp_path / "ser2net.yaml"
        cfg.write_text(
            "connection: &con0\n"
            f"  accepter: tcp,127.0.0.1,{port}\n"
            "  timeout: 0\n"
            f"  connector: serialdev,{pty.dev},115200n81,local\n"
            "  options:\n"
            "    kickolduser: true\n"
            f"    trace-read: {plain}\n"
            f"    trace-both: {hexdump}\n"
            "    trace-both-hexdump: true\n"
            "    trace-both-timestamp: true\n"
        )
        proc = subprocess.Popen(
            [SER2NET, "-n", "-u", "-P", str(tmp_path / "ser2net.pid"), "-c", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=open(tmp_path / "ser2net.out", "wb"),  # noqa: SIM115 -- the child owns it
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: proc.poll() is not None or _port_open(port), 10, f"ser2net on 127.0.0.1:{port}")
            assert proc.poll() is None, (tmp_path / "ser2net.out").read_text()

            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                time.sleep(0.3)  # the connection is up at ser2net before the device speaks
                s.sendall(b"Kernel panic - not syncing: typed by the user\r\n")
                for i in range(0, len(device_text), 4096):
                    pty.write(device_text[i : i + 4096])
                got = b""
                deadline = time.monotonic() + 20
                while len(got) < len(device_text) and time.monotonic() < deadline:
                    got += s.recv(65536)
                assert got == device_text, f"ser2net passed {len(got)} of {len(device_text)} bytes"
            time.sleep(0.3)  # let ser2net write and close its traces
        finally:
            terminate(proc)
        yield plain, hexdump, device_text


def test_real_ser2net_traces(ser2net_traces: tuple[Path, Path, bytes]) -> None:
    plain, hexdump, device_text = ser2net_traces
    assert re.match(rb"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d OPEN ", hexdump.read_bytes())
    assert b" tcp " in hexdump.read_bytes() and b" term " in hexdump.read_bytes()
    _, ref = one(DATA / "sbsim_oops.log")
    code, doc = run_json(str(plain), str(hexdump))
    fp, fh = doc["files"]
    assert code == 1
    _same_detection(fp, ref)
    assert fh["format"] == "ser2net-hexdump"
    _same_detection(fh, ref)  # line numbers are those of the decoded device text
    assert "typed by the user" not in json.dumps(fh)
    lines, numbers, fmt, _ = decode_console(hexdump.read_bytes())
    assert fmt == "ser2net-hexdump" and numbers is None
    assert "\n".join(lines).encode() + b"\n" == device_text.replace(b"\r\n", b"\n")


# ---- streaming, refusals, limits (issue 16) -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunk_boundaries_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Reading in chunks of any size (cut inside lines, escapes, UTF-8 and UTF-16 sequences, gzip/xz
    members, hexdump rows) gives what reading the file in one piece gives."""
    raw = (DATA / "sbsim_panic_after_nmi.log").read_bytes()
    noisy = raw.replace(b"Kernel panic", b"\x1b[1;31mKernel panic", 1).replace(b"] ", "] \u00e9".encode(), 3)
    files = {
        "plain.log": noisy,
        "two-members.log.gz": gzip.compress(noisy[:5000]) + gzip.compress(noisy[5000:]),
        "log.xz": lzma.compress(noisy),
        "log.bz2": bz2.compress(noisy),
        "win.log": noisy.decode("utf-8", errors="replace").encode("utf-16"),
        "cr.log": noisy.replace(b"\r\n", b"\r\r\n", 40),
    }
    ref = {n: one(_variant(tmp_path, n, d))[1] for n, d in files.items()}
    monkeypatch.setattr(rig.detect.triage, "CHUNK", chunk)
    for n in files:
        code, got = one(tmp_path / n)
        assert code == 1 and got["verdict"] == "crash", n
        assert got == ref[n], n


def test_a_line_with_no_end_is_cut_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line with no end is cut once it is longer than MAX_LINE (beyond the first 64 KiB, read at
    once to tell the format): no string grows with the file; the cut counts as a line end."""
    monkeypatch.setattr(rig.detect.triage, "MAX_LINE", 1000)
    monkeypatch.setattr(rig.detect.triage, "CHUNK", 1000)
    data = b"A" * 200_000 + b"\n[    5.000000] Kernel panic - not syncing: after a long line\n"
    lines, numbers, _, _ = decode_console(data)
    assert numbers is None and len(lines) > 50
    assert max(len(x) for x in lines[1:]) <= 2000 and len(lines[0]) <= 66_000
    assert "".join(lines[:-1]) == "A" * 200_000
    _, f = one(_variant(tmp_path, "long.log", data))
    assert (f["verdict"], f["lines"], f["events"][0]["line"]) == ("crash", len(lines), len(lines))


def test_non_regular_files_are_refused_by_name(tmp_path: Path) -> None:
    """/dev/zero never ends; a FIFO opened by name waits for a writer. Both: exit 2 at once, named."""
    fifo = tmp_path / "console.fifo"
    os.mkfifo(fifo)
    code, out, err = run("/dev/zero", str(fifo), str(DATA / "sbsim_oops.log"))
    assert code == 2
    assert "/dev/zero: not a regular file" in err and f"{fifo}: not a regular file" in err
    assert "rig triage - <" in err
    assert "sbsim_oops.log: crash (oops)" in out  # the other files are still classified


def test_a_binary_file_is_flagged_not_classified_ok() -> None:
    code, f = one(Path(sys.executable).resolve())
    assert (code, f["verdict"]) == (2, ERROR)
    assert "not console text" in f["error"] and "binary" in f["error"]


def test_console_log_with_some_noise_is_still_text(tmp_path: Path) -> None:
    raw = (DATA / "sbsim_oops.log").read_bytes()
    code, f = one(_variant(tmp_path, "noise.log", b"\x00" * 2000 + raw))  # a NUL run at power-on
    assert (code, f["verdict"], f["crash"]) == (1, "crash", "oops")


def test_memory_error_is_an_error_verdict_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError (injected: the reading is bounded, so a real one needs another program's load)
    becomes verdict error and exit 2, not a traceback and exit 1 (which scripts read as 'found')."""

    def no_memory(self: object, lines: object) -> list[object]:
        raise MemoryError

    monkeypatch.setattr(rig.detect.triage.Detector, "scan", no_memory)
    code, out, err = run(str(DATA / "sbsim_oops.log"))
    assert code == 2 and "ran out of memory" in err and "Traceback" not in out + err


def test_events_past_the_cap_are_counted_and_the_crash_is_kept(tmp_path: Path) -> None:
    nmis = b"".join(b"[    1.%06d] NMI backtrace for cpu 0\n" % i for i in range(MAX_EVENTS + 50))
    data = nmis + b"[    9.000000] Kernel panic - not syncing: late\n"
    _, f = one(_variant(tmp_path, "soak.log", data))
    assert (f["verdict"], f["crash"]) == ("crash", "panic")
    assert len(f["events"]) == MAX_EVENTS + 1 and f["events_dropped"] == 50
    assert f["events"][-1]["line"] == MAX_EVENTS + 51


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=3000), st.sampled_from([b"", b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh", b"\xff\xfe", b"\xef\xbb\xbf"])
)
def test_property_any_bytes_never_raise(data: bytes, magic: bytes) -> None:
    r = triage_bytes(magic + data, "x")
    assert r.verdict in (*VERDICTS, ERROR)
    assert (r.error is None) == (r.verdict != ERROR)
