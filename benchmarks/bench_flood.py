"""NMI soak: false verdicts and controller memory while healthy devices take NMIs for N minutes.

Method: on each device (``lab-1``, ``lab-2`` ...) deploy sbsim without fault switches
(``Dut.deploy_shadowbox()``), then for N minutes raise NMIs at ``rate`` per second per device
(one thread per device), alternating the QMP and IPMI (virtual BMC, ``chassis power diag``)
sources, plus a sysrq round (``echo l`` from each CPU) about every 10 s. Each device's hang
monitor runs all the time (heartbeat H, SSH probes, crash detector on every console line).

A false verdict is any non-ok verdict on these healthy devices: each one is recorded (time, text,
reason, the monitor's timeline) and the monitor is resumed, so the run counts them all instead of
stopping at the first. Near misses are recorded too: the longest gap between two heartbeats and
the slowest SSH probe that answered (the hang rule needs *both* a 2·H silence and an unanswered
probe, so these two say how far a healthy device stayed from a false hang).

Memory: this controller process (console capture threads, monitors, detectors all live in it) is
sampled (VmRSS) every ``rss_every`` seconds; reported as a least-squares slope per minute over
the whole run and over its second half, and the mean of the first vs the last 5 minutes.

A raise takes time (an IPMI session round trip, a QMP command), so the real rate is reported too.
Goal (issue 6): zero false verdicts over a 20-minute soak per device at 10 NMI/s; RSS bounded
(no growth with run length).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import bench_lab, open_dut, rss_mib
from rig.device.dut import Dut
from rig.lab.manager import Lab


def _flood(dut: Dut, end: float, period: float, sysrq_every: float, out: dict[str, Any], t_start: float) -> None:
    """Raise NMIs on one device until ``end``; record every non-ok verdict and keep judging."""
    raised = out["raised"]
    sources = {name: dut.nmi_source(name) for name in raised}
    next_sysrq = time.monotonic() + sysrq_every
    i = 0
    while (now := time.monotonic()) < end:
        src = "qmp" if i % 2 == 0 else "ipmi"
        try:
            raised[src] += sources[src].raise_(1)
            if now >= next_sysrq:
                raised["sysrq"] += sources["sysrq"].raise_(1)
                next_sysrq += sysrq_every
        except Exception as exc:  # noqa: BLE001 - a failed raise is a figure, not the end of the soak
            out["raise_errors"].append(f"{now - t_start:.0f} s: {type(exc).__name__}: {exc}"[:300])
        v = dut.verdict()
        if not v.ok:
            out["false_verdicts"].append({
                "t_s": round(now - t_start, 1), "verdict": v.text, "reason": v.reason,
                "timeline": dut.monitor.last_timeline,
            })
            dut.monitor.resume()
        i += 1
        time.sleep(max(0.0, period - (time.monotonic() - now)))


def main(lab: Lab | None = None, minutes: float = 5.0, count: int = 2, rate: float = 10.0,
         sysrq_every: float = 10.0, rss_every: float = 15.0) -> dict[str, Any]:
    names = [f"lab-{i + 1}" for i in range(count)]
    rss: list[tuple[float, float]] = []
    load: list[tuple[float, float]] = []  # 1-minute load average at each RSS sample: the run's noise
    per: dict[str, dict[str, Any]] = {}
    duts: list[Dut] = []
    with bench_lab(count, lab) as the_lab, tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        try:
            for name in names:
                duts.append(open_dut(the_lab, name, Path(tmp) / name))
            for dut in duts:
                dut.deploy_shadowbox()
            before = {d.device.name: d.interrupts() for d in duts}
            hb0 = {d.device.name: d.monitor.heartbeats for d in duts}
            lines0 = {d.device.name: d.console.mark() if d.console is not None else 0 for d in duts}
            t_start = time.monotonic()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            end = t_start + minutes * 60
            rss.append((0.0, rss_mib()))
            threads = []
            for d in duts:
                per[d.device.name] = {"raised": {"qmp": 0, "ipmi": 0, "sysrq": 0}, "false_verdicts": [],
                                      "raise_errors": []}
                t = threading.Thread(target=_flood, args=(d, end, 1.0 / rate, sysrq_every, per[d.device.name],
                                                          t_start), daemon=True)
                t.start()
                threads.append(t)
            while (now := time.monotonic()) < end:
                time.sleep(min(rss_every, max(0.0, end - now)))
                rss.append((time.monotonic() - t_start, rss_mib()))
                load.append((rss[-1][0], os.getloadavg()[0]))
            for t in threads:
                t.join(timeout=120)
            elapsed = time.monotonic() - t_start
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            rss.append((elapsed, rss_mib()))
            for d in duts:
                name = d.device.name
                v = d.verdict()
                after = d.interrupts()
                rule = d.monitor.rule
                per[name].update({
                    "verdict_at_end": v.text,
                    "reason": v.reason,
                    "heartbeats": d.monitor.heartbeats - hb0[name],
                    "probes": d.monitor.probes,
                    "probe_failures": d.monitor.probe_failures,
                    "silence_probes": rule.silence_probes,
                    "max_heartbeat_gap_s": rule.max_heartbeat_gap,
                    "slowest_probe_answer_s": rule.slowest_answer,
                    "nmis_counted_per_cpu": list(after.delta(before[name])),
                    "console_lines": (d.console.mark() if d.console is not None else 0) - lines0[name],
                    "events": sum(d.monitor.event_counts.values()),
                    "events_kept": len(d.monitor.events),
                })
        finally:
            for d in duts:
                d.close()
    return {"minutes": minutes, "count": count, "rate": rate, "elapsed_s": elapsed, "devices": per,
            "controller_cpu_s": cpu_s, "load": load,
            "rss_mib": rss, **rss_figures(rss)}


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS (MiB) against time, per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [t / 60 for t, _ in samples]
    ys = [m for _, m in samples]
    return statistics.linear_regression(xs, ys).slope


def rss_figures(rss: list[tuple[float, float]]) -> dict[str, float]:
    total = rss[-1][0]
    half = [s for s in rss if s[0] >= total / 2]
    window = min(300.0, total / 2)
    first = [m for t, m in rss if t <= window]
    last = [m for t, m in rss if t >= total - window]
    return {
        "rss_slope_mib_min": slope_per_min(rss),
        "rss_slope_2nd_half_mib_min": slope_per_min(half),
        "rss_first_window_mib": statistics.mean(first),
        "rss_last_window_mib": statistics.mean(last),
        "rss_window_s": window,
        "rss_max_mib": max(m for _, m in rss),
    }


def summary(r: dict[str, Any]) -> str:
    parts = []
    for name, d in r["devices"].items():
        raised = d["raised"]
        total = raised["qmp"] + raised["ipmi"]
        parts.append(
            f"{name}: {len(d['false_verdicts'])} false verdicts, end {d['verdict_at_end']}; {d['heartbeats']} "
            f"heartbeats (max gap {d['max_heartbeat_gap_s']:.2f} s); slowest probe answer "
            f"{d['slowest_probe_answer_s']:.2f} s; {d['silence_probes']} silence probes; NMIs qmp {raised['qmp']} "
            f"ipmi {raised['ipmi']} ({total / r['elapsed_s']:.1f}/s), sysrq {raised['sysrq']}; guest counted "
            f"{d['nmis_counted_per_cpu']}; {d['console_lines']} lines, {d['events']} events; "
            f"{len(d['raise_errors'])} raise errors"
        )
    return (
        f"{r['elapsed_s'] / 60:.1f} min, {r['count']} devices at {r['rate']:g} NMI/s: " + "; ".join(parts)
        + f"; RSS slope {r['rss_slope_mib_min']:+.3f} MiB/min (2nd half {r['rss_slope_2nd_half_mib_min']:+.3f}), "
        f"first/last {r['rss_window_s'] / 60:.0f} min {r['rss_first_window_mib']:.1f}/{r['rss_last_window_mib']:.1f}"
        f" MiB, max {r['rss_max_mib']:.1f}"
    )


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the soak (default 5)")
    ap.add_argument("--devices", type=int, default=2, help="lab devices flooded at once (default 2)")
    ap.add_argument("--rate", type=float, default=10.0, help="NMIs per second per device (default 10)")
    args = ap.parse_args(argv)
    r = main(minutes=args.minutes, count=args.devices, rate=args.rate)
    print(summary(r))
    return r


if __name__ == "__main__":
    cli()
