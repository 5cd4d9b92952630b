"""False verdicts under an NMI flood: a healthy device must stay ``ok`` for the whole run.

Method: deploy sbsim without fault switches (``Dut.deploy_shadowbox()``), then for N minutes raise
one NMI every 100 ms, alternating the QMP and IPMI (virtual BMC, ``chassis power diag``) sources,
plus a sysrq round (``echo l`` from each CPU) about every 10 s. The hang monitor runs all the
time (heartbeat H, SSH probes, crash detector on every console line). Recorded: the verdict at
the end, heartbeats seen, NMIs raised per source and the NMIs the guest counted
(``/proc/interrupts`` before/after), console lines captured, and this controller process's RSS at
start, every 30 s, and at the end (memory must stay bounded while the console tail and events grow).

A raise takes time (an IPMI session round trip, a QMP command), so the real rate is reported too.
Goal (issue 3): a 5-minute run stays ok, with no false verdict, and RSS does not keep growing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import bench_lab, open_dut, rss_mib
from rig.lab.manager import Lab


def main(lab: Lab | None = None, minutes: float = 5.0, guest: str = "lab-2", period: float = 0.1,
         sysrq_every: float = 10.0) -> dict[str, Any]:
    raised = {"qmp": 0, "ipmi": 0, "sysrq": 0}
    rss: list[tuple[float, float]] = []
    with bench_lab(2, lab) as the_lab, tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        dut = open_dut(the_lab, guest, Path(tmp))
        try:
            dut.deploy_shadowbox()
            sources = {name: dut.nmi_source(name) for name in raised}
            before = dut.interrupts()
            hb0 = dut.monitor.heartbeats
            lines0 = dut.console.mark() if dut.console is not None else 0
            t_start = time.monotonic()
            rss.append((0.0, rss_mib()))
            end = t_start + minutes * 60
            next_sysrq = t_start + sysrq_every
            next_rss = t_start + 30
            first_bad = None
            i = 0
            while (now := time.monotonic()) < end:
                src = "qmp" if i % 2 == 0 else "ipmi"
                raised[src] += sources[src].raise_(1)
                if now >= next_sysrq:
                    raised["sysrq"] += sources["sysrq"].raise_(1)
                    next_sysrq += sysrq_every
                if now >= next_rss:
                    rss.append((now - t_start, rss_mib()))
                    next_rss += 30
                v = dut.verdict()
                if not v.ok and first_bad is None:
                    first_bad = (now - t_start, v.text, v.reason)
                i += 1
                time.sleep(max(0.0, period - (time.monotonic() - now)))
            elapsed = time.monotonic() - t_start
            rss.append((elapsed, rss_mib()))
            verdict = dut.verdict()
            after = dut.interrupts()
            out = {
                "minutes": minutes,
                "elapsed_s": elapsed,
                "verdict": verdict.text,
                "reason": verdict.reason,
                "first_bad": first_bad,
                "heartbeats": dut.monitor.heartbeats - hb0,
                "probes": dut.monitor.probes,
                "probe_failures": dut.monitor.probe_failures,
                "raised": raised,
                "nmis_counted_per_cpu": list(after.delta(before)),
                "console_lines": (dut.console.mark() if dut.console is not None else 0) - lines0,
                "events": len(dut.monitor.events),
                "rss_mib": rss,
            }
        finally:
            dut.close()
    return out


def summary(r: dict[str, Any]) -> str:
    rss = r["rss_mib"]
    raised = r["raised"]
    total = raised["qmp"] + raised["ipmi"]
    return (
        f"{r['elapsed_s'] / 60:.1f} min: verdict {r['verdict']} ({r['reason']}); first non-ok: {r['first_bad']}; "
        f"{r['heartbeats']} heartbeats; NMIs raised qmp {raised['qmp']}, ipmi {raised['ipmi']} "
        f"({total / r['elapsed_s']:.1f}/s), sysrq rounds {raised['sysrq']}; guest counted {r['nmis_counted_per_cpu']} "
        f"per CPU; {r['console_lines']} console lines, {r['events']} events; "
        f"RSS {rss[0][1]:.1f} -> {rss[-1][1]:.1f} MiB (max {max(x for _, x in rss):.1f})"
    )


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the flood (default 5)")
    args = ap.parse_args(argv)
    r = main(minutes=args.minutes)
    print(summary(r))
    return r


if __name__ == "__main__":
    cli()
