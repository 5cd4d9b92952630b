"""Hang-detection latency and recovery time over induced hangs on a lab guest.

Method, per hang: deploy sbsim with ``hang_after_nmi=3`` (``Dut.deploy_shadowbox``), raise 2 QMP
NMIs (each reaches both vCPUs: 4 NMIs, the 3rd one stops the guest with interrupts off -- a silent
hang, no console line), ``Dut.monitor.wait()`` for the verdict. Latency = ``Verdict.since_heartbeat``
(last heartbeat seen on the console to the hang verdict, monotonic). Then ``Dut.recover()`` (power
cycle over IPMI, console ready line, SSH); recovery = hang verdict to device ready (wall), next to
what ``recover()`` itself returns. The monitor's default heartbeat H comes from the inventory.

Per hang the monitor's timeline is kept too (``HangMonitor.last_timeline``: last heartbeat, heartbeat
late noticed, each probe's start and end, verdict, in seconds after the last heartbeat), so the
benchmark says where the time went, not only how much there was.

Goal (issue 2/6): median latency < 2H+1 s and max < 3H+2 s over >= 20 hangs; recovery reported
(median/max).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import bench_lab, open_dut
from rig.lab.manager import Lab
from rig.vocab import VerdictKind


def main(lab: Lab | None = None, hangs: int = 20, guest: str = "lab-1") -> dict[str, Any]:
    latencies: list[float] = []
    recover_s: list[float] = []
    verdict_to_ready: list[float] = []
    other: list[str] = []
    probes: list[tuple[int, int]] = []
    timelines: list[list[tuple[str, float]]] = []
    reasons: list[str] = []
    load: list[float] = []  # 1-minute load average at each verdict: the noise each figure saw
    with bench_lab(2, lab) as the_lab, tempfile.TemporaryDirectory(prefix="bench-hang-") as tmp:
        dut = open_dut(the_lab, guest, Path(tmp))
        try:
            h = dut.device.monitor.heartbeat_interval
            qmp = dut.nmi_source("qmp")
            for _ in range(hangs):
                dut.deploy_shadowbox(module_params={"hang_after_nmi": 3})
                time.sleep(2 * h)  # at least one heartbeat after the deploy, like a test's first NMI
                qmp.raise_(2, interval=0.3)
                v = dut.monitor.wait(timeout=3 * h + 20)
                if v is None or v.kind is not VerdictKind.HANG:
                    other.append("no verdict" if v is None else v.text)
                    dut.recover()
                    continue
                probes.append((dut.monitor.probes, dut.monitor.probe_failures))
                timelines.append([(label, round(t, 3)) for label, t in dut.monitor.last_timeline])
                reasons.append(v.reason)
                load.append(os.getloadavg()[0])
                latencies.append(float(v.since_heartbeat if v.since_heartbeat is not None else float("nan")))
                recover_s.append(dut.recover())
                verdict_to_ready.append(time.time() - v.at)
        finally:
            dut.close()
    return {
        "h": h,
        "hangs": hangs,
        "latency_s": latencies,
        "recover_s": recover_s,
        "verdict_to_ready_s": verdict_to_ready,
        "not_hang": other,
        "probes_at_verdict": probes,
        "timelines": timelines,
        "reasons": reasons,
        "load": load,
    }


def stats(xs: list[float]) -> tuple[float, float]:
    return (statistics.median(xs), max(xs)) if xs else (float("nan"), float("nan"))


def summary(r: dict[str, Any]) -> str:
    lm, lx = stats(r["latency_s"])
    rm, rx = stats(r["verdict_to_ready_s"])
    return (
        f"{len(r['latency_s'])}/{r['hangs']} hangs judged hang (others: {r['not_hang'] or 'none'}); "
        f"latency median {lm:.2f} s, max {lx:.2f} s "
        f"(H={r['h']:g} s, goals < {2 * r['h'] + 1:g} / < {3 * r['h'] + 2:g}); "
        f"recovery median {rm:.1f} s, max {rx:.1f} s"
    )


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hangs", type=int, default=20, help="induced hangs (default 20)")
    args = ap.parse_args(argv)
    r = main(hangs=args.hangs)
    print(summary(r))
    return r


if __name__ == "__main__":
    cli()
