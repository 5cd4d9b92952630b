"""Matrix scaling: the deploy + NMI-delivery suites on 1, 2 and 4 lab devices -- wall time and CPU.

Method: ``pytest suites/test_deploy.py suites/test_nmi_delivery.py --rig-devices <bench lab inventory>
--rig-device lab-1 ... --rig-device lab-N`` run as a subprocess, with ``-n N`` (the plugin's
per-device scheduling: one xdist worker per device) for N = 1, 2, 4, and with ``-n 0`` (one device
after the other in one process) for N = 2 and 4, so "parallel vs sequential" is measured side by
side. Before every timed run all its devices are power-cycled (untimed), so each run pays the same
deploy. Figures per run:

- wall time of the pytest process;
- controller CPU seconds: user + system of the pytest process tree (controller, xdist workers and
  whatever they ran on the controller, e.g. the sbsim build), from ``getrusage(RUSAGE_CHILDREN)``
  just before and after the subprocess (children's times reach it when they are reaped);
- guest CPU seconds: user + system of the run's QEMU processes (``/proc/<pid>/stat``) over the run,
  i.e. what the devices cost the 2 shared cores.

Every run is repeated (default twice, interleaved) and the median shown: one sample on a machine
shared with other work says little.

Goal (issue 6): report wall time and controller CPU per device at 1, 2 and 4 devices. The 4 TCG
guests share 2 cores with the controller (and with whatever else runs): the parallel figure for 4
devices is expected to be bounded by the cores, not by the devices.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import bench_lab, open_dut
from rig.lab.manager import Lab, checkout_dir

SUITES = ("suites/test_deploy.py", "suites/test_nmi_delivery.py")
TICKS = os.sysconf("SC_CLK_TCK")


def fresh(lab: Lab, names: list[str], tmp: Path) -> None:
    """Power-cycle every device (in parallel) so each timed run starts from a clean boot."""
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            dut = open_dut(lab, name, tmp / f"fresh-{name}")
            try:
                dut.recover(start_monitor=False)
            finally:
                dut.close()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def qemu_cpu_s(lab: Lab, names: list[str]) -> float:
    """user + system seconds the guests' QEMU processes have used so far."""
    total = 0.0
    for name in names:
        pid = lab.guest(name).qemu_pid
        if pid is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)
    return total


def run_suites(lab: Lab, names: list[str], workers: int, report_dir: Path, run_id: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pytest", *SUITES, "--rig-devices", str(lab.inventory_dir),
            "--rig-report-dir", str(report_dir), "-q", "-p", "no:cacheprovider", "-n", str(workers)]
    for n in names:
        argv += ["--rig-device", n]
    env = dict(os.environ, RIG_RUN_ID=run_id)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    q0 = qemu_cpu_s(lab, names)
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=checkout_dir(), env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    q1 = qemu_cpu_s(lab, names)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    outcomes: dict[str, int] = {}
    for rep in sorted((report_dir / run_id).glob("*/report.json")):
        data = json.loads(rep.read_text())
        for t in data.get("tests", []):
            outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"devices": len(names), "workers": workers, "wall_s": wall, "controller_cpu_s": cpu,
            "guest_cpu_s": q1 - q0, "load_at_start": load0, "rc": proc.returncode, "outcomes": outcomes,
            "pytest": tail, "output": proc.stdout[-3000:] + proc.stderr[-2000:] if proc.returncode else ""}


#: (key, devices, xdist workers): 1 device; 2 and 4 devices in parallel and one after the other.
RUNS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 0),
    ("2-parallel", 2, 2),
    ("2-sequential", 2, 0),
    ("4-parallel", 4, 4),
    ("4-sequential", 4, 0),
)


def main(lab: Lab | None = None, counts: tuple[int, ...] = (1, 2, 4), repeats: int = 2) -> dict[str, Any]:
    """Every run of RUNS, ``repeats`` times (interleaved, so slow phases of the machine hit all kinds)."""
    top = max(counts)
    every: dict[str, list[dict[str, Any]]] = {}
    with bench_lab(top, lab) as the_lab, tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        base = Path(tmp)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for rep in range(repeats):
            for key, n, workers in RUNS:
                if n not in counts:
                    continue
                names = [f"lab-{i}" for i in range(1, n + 1)]
                fresh(the_lab, names, base)
                x = run_suites(the_lab, names, workers, base / "reports", f"bench-{key}-{rep}-{stamp}")
                every.setdefault(key, []).append(x)
                print(f"   matrix {key} #{rep + 1}: {one(x)}", flush=True)
    return {"runs": {key: combine(xs) for key, xs in every.items()}, "repeats": repeats}


def combine(xs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the repeats (the figures the section shows), with every repeat's wall time kept."""
    keys = ("wall_s", "controller_cpu_s", "guest_cpu_s", "load_at_start")
    med = {k: statistics.median(x[k] for x in xs) for k in keys}
    return {**xs[-1], **med, "rc": max(x["rc"] for x in xs), "wall_all": [x["wall_s"] for x in xs],
            "output": "".join(x["output"] for x in xs)}


def one(x: dict[str, Any]) -> str:
    n = x["devices"]
    return (f"{x['wall_s']:.1f} s wall ({x['wall_s'] / n:.1f} s/device), controller CPU {x['controller_cpu_s']:.1f} s "
            f"({x['controller_cpu_s'] / n:.1f} s/device), guests {x['guest_cpu_s']:.1f} s; rc {x['rc']}; {x['pytest']}")


def summary(r: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {one(x)}" for k, x in r["runs"].items())


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4", help="device counts (default 1,2,4)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of every run (default 2)")
    args = ap.parse_args(argv)
    r = main(counts=tuple(int(x) for x in args.counts.split(",")), repeats=args.repeats)
    print(summary(r))
    for k, x in r["runs"].items():
        if x["output"]:
            print(f"--- {k} output ---\n{x['output']}")
    return r


if __name__ == "__main__":
    cli()
