"""Recovery time of a hung guest by power back end, in one run: IPMI (virtual BMC) beside a
laptop-like guest on a virtual PDU outlet (labgrid's apc -> snmpd) and one on a power-button relay.

Method, per round and guest: ``Dut.open()``, two heartbeats, then the guest is frozen with QMP
``stop`` on the lab's own socket (every vCPU stops: no console line, no SSH -- a silent hang the
rig must notice by itself), ``Dut.wait_verdict()``, then ``Dut.recover()``. Recovery = what
``recover()`` returns: power action(s) + console ready line + SSH. The method it used is recorded:
IPMI offers a warm reset (RAM kept; the frozen guest reads 'off' to the BMC, so the reset is a power
on of the same QEMU process), the PDU and the relay can only cut power (a new QEMU process: the
PDU's off + 1 s + on; the relay's 6 s hold + 1 s + 0.5 s press).

Run: ``python -m benchmarks.bench_power [--rounds 3]`` (its own lab under /tmp/bench-power); it
prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rig.device.dut import Dut
from rig.inventory import load_inventory
from rig.lab import guest as lab_guest
from rig.lab.manager import Lab

GUESTS = {"lab-1": "ipmi (virtual BMC)", "laptop-1": "pdu (virtual APC PDU, labgrid apc)",
          "laptop-2": "relay (virtual power button)"}


def measure(rounds: int, lab_dir: Path) -> dict[str, Any]:
    lab = Lab(root=lab_dir / "state", inventory_dir=lab_dir / "devices")
    lab.up(count=1, laptop_like=2, laptop_power=("pdu", "relay"))
    out: dict[str, Any] = {name: {"recover_s": [], "methods": [], "verdicts": []} for name in GUESTS}
    load: list[float] = []
    try:
        devices = {d.name: d for d in load_inventory([lab.inventory_dir])}
        with tempfile.TemporaryDirectory(prefix="bench-power-") as tmp:
            for _ in range(rounds):
                for name in GUESTS:
                    dut = Dut(devices[name], Path(tmp) / name).open()
                    try:
                        deadline = time.monotonic() + 30
                        while dut.monitor.heartbeats < 2 and time.monotonic() < deadline:
                            time.sleep(0.2)
                        lab_guest.qmp_command(lab_guest.GuestPaths(lab.guest(name).dir).lab_qmp_socket, "stop")
                        v = dut.wait_verdict(timeout=60)
                        out[name]["verdicts"].append(v.text if v is not None else "none")
                        load.append(os.getloadavg()[0])
                        out[name]["recover_s"].append(dut.recover())
                        out[name]["methods"].append((dut.last_recovery or {}).get("method"))
                    finally:
                        dut.close()
    finally:
        lab.down()
    out["load"] = load
    return out


TITLE = "Recovery of a hung guest: PDU and relay beside IPMI (issue 13)"


def summary(r: dict[str, Any]) -> str:
    """One line for the runner's log: median recovery and method per guest."""
    return "; ".join(
        f"{n} {statistics.median(r[n]['recover_s']):.1f} s ({', '.join(sorted(set(map(str, r[n]['methods']))))})"
        if r[n]["recover_s"] else f"{n} none" for n in GUESTS
    )


def section(r: dict[str, Any], rounds: int, heading: bool = True) -> str:
    """The BENCHMARKS.md section; without its heading for ``python -m benchmarks``, which writes its own."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        *([f"## {TITLE}", ""] if heading else []),
        "| guest | power back end | recovery `Dut.recover()`, median / max | each round | method | verdict before |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in GUESTS.items():
        xs = r[name]["recover_s"]
        med, mx = (statistics.median(xs), max(xs)) if xs else (float("nan"), float("nan"))
        lines.append(f"| {name} | {label} | {med:.1f} / {mx:.1f} s | {' / '.join(f'{x:.1f}' for x in xs)} | "
                     f"{', '.join(sorted(set(map(str, r[name]['methods']))))} | "
                     f"{', '.join(sorted(set(r[name]['verdicts'])))} |")
    load = r["load"]
    lines += [
        "",
        f"Measured in one run, {rounds} rounds, guests in turn, on this 2-core VM, shared with other work "
        f"({platform.node()}, {when}; 1-minute load at the verdicts "
        + (f"{min(load):.1f}-{max(load):.1f})." if load else "not sampled)."),
        "",
        " ".join((__doc__ or "").split("\n\n")[1].split()),
        "What the figures say: the relay pays its 6 s forced-off hold and the release gap on top of a boot; the",
        "PDU pays its off time (1 s here, `cycle_pause`) and the SNMP round trips; both are a cold boot of a new",
        "QEMU process, so on this loaded machine the boot dominates all three.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_power")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lab-dir", type=Path, default=Path(os.environ.get("RIG_BENCH_POWER_LAB", "/tmp/bench-power")))
    args = ap.parse_args(argv)
    r = measure(args.rounds, args.lab_dir)
    print(section(r, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
