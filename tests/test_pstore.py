"""rig.device.pstore's parsing and the report's "last words": pure (the lab test reads a real ramoops record).

The record texts are shaped as the kernel writes them: each part of a kmsg dump starts with
``<Reason>#<n> Part<k>`` (Part1 holds the newest lines), lines carry ``<level>[time]`` prefixes.
"""

from __future__ import annotations

import json
from pathlib import Path

from rig.device.monitor import Verdict
from rig.device.pstore import NOTHING_AFTER_HANG, PstoreHarvest, assemble, parse_listing
from rig.inventory import Device
from rig.reports.report import RunReport
from rig.vocab import VerdictKind

PANIC_OLD = "<6>[   40.1] sbsim: NMI 2 of 2\n<0>[   41.047167] Kernel panic - not syncing: sbsim: panic after NMI"
PANIC_NEW = "<4>[   41.060823] CPU: 1 PID: 0 Comm: swapper/1\n<0>[   41.060823] Kernel Offset: 0x17200000"


def test_parts_of_one_dump_are_joined_oldest_first() -> None:
    files = [
        ("dmesg-efi-179611540001", 1796115400.0, "Panic#1 Part1\n" + PANIC_NEW),
        ("dmesg-efi-179611540002", 1796115400.0, "Panic#1 Part2\n" + PANIC_OLD),
        ("console-ramoops-0", 1796115300.0, "no part header here"),
    ]
    recs = assemble(files)
    assert [r.kind for r in recs] == ["console", "dmesg"]
    dump = recs[1]
    assert dump.backend == "efi" and dump.reason == "Panic"
    assert dump.names == ["dmesg-efi-179611540002", "dmesg-efi-179611540001"]
    assert dump.text.index("Kernel panic") < dump.text.index("Kernel Offset")
    assert dump.crash is not None and dump.crash.kind.value == "panic"
    assert recs[0].crash is None


def test_listing_is_read_back_with_its_token() -> None:
    tok = "rig-pstore-abc"
    out = (f"{tok} backend ramoops\n{tok} file dmesg-ramoops-0 1796115400\nOops#1 Part1\n"
           f"<4>[   12.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n\n"
           f"{tok} file pmsg-ramoops-0 0\nuser text\n\n{tok} end\n")
    backend, files = parse_listing(out, tok)
    assert backend == "ramoops"
    assert [(n, t) for n, t, _ in files] == [("dmesg-ramoops-0", 1796115400.0), ("pmsg-ramoops-0", 0.0)]
    (oops, pmsg) = sorted(assemble(files), key=lambda r: r.kind)
    assert oops.crash is not None and oops.reason == "Oops" and pmsg.text == "user text"


def _device() -> Device:
    return Device.model_validate({
        "name": "thinkpad-x1",
        "ssh": {"host": "10.0.0.5", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA", "key_file": "/k"},
        "console": {"url": "netconsole://0.0.0.0:6666"},
    })


def _report_with_hang(tmp_path: Path) -> tuple[RunReport, Device]:
    run = RunReport(tmp_path, "r1")
    dev = _device()
    run.device(dev).test_result(nodeid="s::t", name="test_nmi_soak", outcome="failed", duration=60.0,
                                verdict=Verdict(VerdictKind.HANG, reason="no heartbeat for 2.1 s and an SSH probe...",
                                                at=1000.0))
    return run, dev


def test_a_hang_whose_pstore_holds_a_panic_becomes_that_crash(tmp_path: Path) -> None:
    run, dev = _report_with_hang(tmp_path)
    h = PstoreHarvest(when="after recovery", at=1796115500.0, backend="ramoops",
                      records=assemble([("dmesg-ramoops-0", 1796115400.0, "Panic#1 Part1\n" + PANIC_OLD)]))
    run.device(dev).last_words(h)
    data = json.loads((tmp_path / "r1" / "thinkpad-x1" / "report.json").read_text())
    v = data["tests"][-1]["verdict"]
    assert v["verdict"] == "crash(panic)" and v["event"]["source"] == "pstore"
    assert "Kernel panic - not syncing: sbsim: panic after NMI" in v["reason"] and "had judged: hang" in v["reason"]
    assert data["last_words"][0]["records"][0]["crash"]["kind"] == "panic"
    assert [e["kind"] for e in data["timeline"]][-2:] == ["last-words", "verdict-amended"]


def test_an_empty_pstore_after_a_hang_is_said_plainly(tmp_path: Path) -> None:
    run, dev = _report_with_hang(tmp_path)
    run.device(dev).last_words(PstoreHarvest(when="after recovery", at=999.0, backend="ramoops"))
    data = json.loads((tmp_path / "r1" / "thinkpad-x1" / "report.json").read_text())
    assert data["timeline"][-1]["kind"] == "last-words", "a harvest from before the hang says nothing about it"
    assert not data["timeline"][-1]["text"].startswith("after the hang")
    run.device(dev).last_words(PstoreHarvest(when="after recovery", at=1001.0, backend="ramoops"))
    data = json.loads((tmp_path / "r1" / "thinkpad-x1" / "report.json").read_text())
    assert data["tests"][-1]["verdict"]["verdict"] == "hang"
    assert data["timeline"][-1]["text"] == f"after the hang in test_nmi_soak: {NOTHING_AFTER_HANG}"
    assert data["last_words"][0]["summary"] == "pstore after recovery: empty (backend ramoops)"


def test_run_start_records_never_amend_a_verdict(tmp_path: Path) -> None:
    run, dev = _report_with_hang(tmp_path)
    h = PstoreHarvest(when="run start", at=1.0,
                      records=assemble([("dmesg-ramoops-0", 5.0, "Panic#1 Part1\n" + PANIC_OLD)]))
    run.device(dev).last_words(h)
    data = json.loads((tmp_path / "r1" / "thinkpad-x1" / "report.json").read_text())
    assert data["tests"][-1]["verdict"]["verdict"] == "hang"
    assert "crash(panic)" in data["last_words"][0]["summary"]


def test_console_gaps_reach_the_timeline_once(tmp_path: Path) -> None:
    run = RunReport(tmp_path, "r2")
    rep = run.device(_device())
    gap = {"after": 4410, "before": 4422, "lost": 11, "at": 10.0, "text": "11 records lost between seq 4410 and 4422"}
    rep.console_stats({"transport": "netconsole", "lost": 11, "gaps_total": 1, "gaps": [gap]})
    rep.console_stats({"transport": "netconsole", "lost": 11, "gaps_total": 1, "gaps": [gap]})
    data = json.loads(rep.path.read_text())
    losses = [e["text"] for e in data["timeline"] if e["kind"] == "console-loss"]
    assert losses == ["netconsole: 11 records lost between seq 4410 and 4422"]
    assert data["console_transport"]["lost"] == 11
