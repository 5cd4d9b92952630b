"""Matrix wall time: the deploy + NMI-delivery suites on 2 lab devices, in parallel (-n 2) vs one after the other.

Method: ``pytest suites/test_deploy.py suites/test_nmi_delivery.py --rig-devices <bench lab inventory>``
run as a subprocess, once with ``-n 0`` (sequential: device after device in one process) and once
with ``-n 2`` (the plugin's per-device scheduling: one worker per device), in the same benchmark run,
each starting from the same device state: both guests freshly power-cycled (untimed) so each run
pays the same deploy. Wall time of the pytest process. Each device is also run alone (``--rig-device``), so "close to
the slower device's time" is checked against a measured figure (with ``-n 0`` pytest interleaves
the devices test by test, so per-device times cannot be read off the sequential run).
Reports go to a temporary folder (``--rig-report-dir``), runs are named with ``RIG_RUN_ID``.

Goal (issue 4): the parallel run takes about the slower device's time, not the sum (ratio
sequential/parallel close to 2 with two similar devices; shared cores make it less).
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_suites(lab: Lab, workers: int, report_dir: Path, run_id: str, only: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pytest", *SUITES, "--rig-devices", str(lab.inventory_dir),
            "--rig-report-dir", str(report_dir), "-q", "-n", str(workers if workers > 1 else 0)]
    if only is not None:
        argv += ["--rig-device", only]
    env = dict(os.environ, RIG_RUN_ID=run_id)
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=checkout_dir(), env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    per_device: dict[str, float] = {}
    outcomes: dict[str, int] = {}
    for rep in sorted((report_dir / run_id).glob("*/report.json")):
        data = json.loads(rep.read_text())
        ts = [e["t"] for e in data.get("timeline", []) if "t" in e]
        if ts:
            per_device[data["device"]["name"]] = max(ts) - min(ts)
        for t in data.get("tests", []):
            outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"wall_s": wall, "rc": proc.returncode, "per_device_s": per_device, "outcomes": outcomes,
            "pytest": tail, "output": proc.stdout[-3000:] + proc.stderr[-2000:] if proc.returncode else ""}


#: (key, workers, only this device): each device alone, then both sequentially, then both in parallel.
RUNS: tuple[tuple[str, int, str | None], ...] = (
    ("alone-lab-1", 0, "lab-1"),
    ("alone-lab-2", 0, "lab-2"),
    ("sequential", 0, None),
    ("parallel", 2, None),
)


def main(lab: Lab | None = None) -> dict[str, Any]:
    names = ["lab-1", "lab-2"]
    out: dict[str, Any] = {}
    with bench_lab(2, lab) as the_lab, tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        base = Path(tmp)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for key, workers, only in RUNS:
            fresh(the_lab, names, base)
            out[key] = run_suites(the_lab, workers, base / "reports", f"bench-{key}-{stamp}", only)
    slower = max(out["alone-lab-1"]["wall_s"], out["alone-lab-2"]["wall_s"])
    out["ratio"] = out["sequential"]["wall_s"] / out["parallel"]["wall_s"]
    out["parallel_over_slower"] = out["parallel"]["wall_s"] / slower
    return out


def summary(r: dict[str, Any]) -> str:
    def one(x: dict[str, Any]) -> str:
        return f"{x['wall_s']:.1f} s (rc {x['rc']}; {x['pytest']})"

    return (
        f"lab-1 alone {one(r['alone-lab-1'])}; lab-2 alone {one(r['alone-lab-2'])}; "
        f"both -n 0 {one(r['sequential'])}; both -n 2 {one(r['parallel'])}; "
        f"sequential/parallel {r['ratio']:.2f}x; parallel/slower device alone {r['parallel_over_slower']:.2f}"
    )


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    r = main()
    print(summary(r))
    for k, _, _ in RUNS:
        if r[k]["output"]:
            print(f"--- {k} output ---\n{r[k]['output']}")
    return r


if __name__ == "__main__":
    cli()
