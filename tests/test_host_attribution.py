"""Which NMIs hit the host: per CPU, delivered vs Shadow-box host callbacks, in report.json and the device page.

Pure: the report is written by the rig's own DeviceReport from a real ``/proc/interrupts`` text
(parsed by rig.device.nmi) and the callback counts a Dut counts from console lines; then rendered by
rig.reports.html. The lab test of the counts themselves is tests/test_sbsim_residency_lab.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from rig.device.monitor import Verdict
from rig.device.nmi import parse_proc_interrupts
from rig.inventory import Device
from rig.reports.html import render_run
from rig.reports.report import RunReport, host_attribution, write_summary
from rig.vocab import VerdictKind

IRQ = """           CPU0       CPU1
 NMI:         {a}         {b}   Non-maskable interrupts
 LOC:       1000       1000   Local timer interrupts
"""


def test_share_per_cpu_and_in_all() -> None:
    h = host_attribution({0: 50, 1: 50}, {0: 5})
    assert h is not None
    assert h["per_cpu"] == [
        {"cpu": 0, "delivered": 50, "host_callbacks": 5, "host_share": 0.1},
        {"cpu": 1, "delivered": 50, "host_callbacks": 0, "host_share": 0.0},
    ]
    assert (h["delivered"], h["host_callbacks"], h["host_share"], h["warning"]) == (100, 5, 0.05, None)


def test_a_soak_that_never_reached_the_host_says_a_pass_proves_little() -> None:
    h = host_attribution({0: 600, 1: 600}, {})
    assert h is not None and h["host_share"] == 0.0
    assert "none of the 1200 NMIs" in h["warning"] and "proves little" in h["warning"]
    assert host_attribution({0: 0, 1: 0}, {})["warning"] is None  # type: ignore[index]  # no NMI: nothing to say
    assert host_attribution({0: 3, 1: 3}, {})["warning"] is None  # type: ignore[index]  # a delivery check, not a soak
    assert host_attribution({0: 50, 1: 50}, {})["warning"] is not None  # type: ignore[index]  # HOST_CLAIM_MIN_NMIS


def test_after_a_hang_the_callbacks_stay_and_the_share_is_unknown() -> None:
    h = host_attribution(None, {1: 3})
    assert h is not None and h["delivered"] is None and h["host_share"] is None
    assert h["per_cpu"] == [{"cpu": 1, "delivered": None, "host_callbacks": 3, "host_share": None}]
    assert host_attribution({0: 4}, None) is None  # no console watched: no claim either way


def _device() -> Device:
    return Device.model_validate(
        {"name": "lap1", "ssh": {"host": "10.0.0.5", "host_key": "ssh-ed25519 AAAAC3Nza", "key_file": "/nonexistent"}}
    )


def test_report_json_and_device_page_show_host_share_and_time_to_hang(tmp_path: Path) -> None:
    run = RunReport(tmp_path, "run1")
    dev = run.device(_device())
    before = parse_proc_interrupts(IRQ.format(a=10, b=20))
    after = parse_proc_interrupts(IRQ.format(a=110, b=220))
    dev.event("soak-end", "60 s", seconds=60.0, time_to_failure=None)
    dev.test_result(nodeid="s::test_nmi_soak[1]", name="test_nmi_soak[1]", outcome="passed", duration=61.0,
                    verdict=Verdict(VerdictKind.OK), irq_before=before, irq_after=after,
                    host_callbacks={0: 4, 1: 0})  # fmt: skip
    dev.event("soak-end", "40 s", seconds=40.0, time_to_failure=40.0)
    dev.test_result(nodeid="s::test_nmi_soak[2]", name="test_nmi_soak[2]", outcome="failed", duration=45.0,
                    verdict=Verdict(VerdictKind.HANG, reason="no heartbeat"), irq_before=before, irq_after=None,
                    host_callbacks={1: 1})  # fmt: skip
    run.close()
    write_summary(run.dir)

    rep = json.loads((run.dir / "lap1" / "report.json").read_text())
    passed, hung = rep["tests"]
    assert passed["host_nmi"]["per_cpu"][0] == {"cpu": 0, "delivered": 100, "host_callbacks": 4, "host_share": 0.04}
    assert passed["host_nmi"]["per_cpu"][1]["delivered"] == 200 and passed["host_nmi"]["host_share"] == 0.0133
    assert hung["host_nmi"]["delivered"] is None and hung["host_nmi"]["host_callbacks"] == 1

    render_run(run.dir)
    html = (run.dir / "lap1" / "index.html").read_text()
    page = html.split('id="t-test_nmi_soak-1"', 1)[1].split('<div class="test', 1)[0]
    assert "<tr><td>0</td><td>100</td><td>4</td><td>4.0 %</td></tr>" in page
    assert "<tr><td>1</td><td>200</td><td>0</td><td>0.0 %</td></tr>" in page
    hang = html.split('id="t-test_nmi_soak-2"', 1)[1].split("<h2", 1)[0]
    assert "<tr><td>1</td><td>n/a</td><td>1</td><td>n/a</td></tr>" in hang
    ttf = html.split('id="time-to-hang"', 1)[1].split("<h2", 1)[0]
    assert "1 failure(s) in 100 s of NMIs (1 survived)" in ttf
    assert "40 s" in ttf and "60 s" in ttf
    # rig.runs.ttf.planning_rate: (100 / (100 + T)) ** 1 = 0.05 -> T = 1900 s (the MLE alone: -ln(0.05) * 100 = 300 s)
    assert "a &#39;good&#39; needs 1900 s" in ttf or "a 'good' needs 1900 s" in ttf
