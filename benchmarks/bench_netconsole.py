"""Hang-verdict latency over netconsole vs serial, in one run; records lost under a 10 MB flood (issue 14).

Method: two guests up at once on the host's kernel, ``lab-1`` with its serial console behind ser2net
(RFC 2217) and ``nc-1`` whose only console is netconsole (extended format, boot parameter, UDP to
127.0.0.1). Hangs alternate between the two (serial, netconsole, serial, ...) so both see the same
load: deploy sbsim with ``hang_after_nmi=3``, 2 s of heartbeats, 2 QMP NMIs, ``monitor.wait()``;
latency = ``Verdict.since_heartbeat`` (last heartbeat seen on that console to the hang verdict);
then ``Dut.recover()``. The flood: ``nc-1`` writes N records of about 1000 bytes to ``/dev/kmsg``
(``printk.devkmsg=on``) in one shell loop, a :class:`rig.console.netconsole.NetconsoleCapture` on its port
counts what arrived (by the records' own numbers) and what the sequence gaps say was lost.

``python -m benchmarks.bench_netconsole --hangs 5`` prints the BENCHMARKS.md section (no file is
rewritten: the section is pasted at the end of BENCHMARKS.md by hand, with the date).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.labenv import bench_root, open_dut
from benchmarks.machine import describe
from rig.console.netconsole import NetconsoleCapture
from rig.device.dut import Dut
from rig.inventory import load_device
from rig.lab.manager import Lab
from rig.transports.ssh import SshClient
from rig.vocab import VerdictKind


def _hang(dut: Dut) -> tuple[float | None, str]:
    h = dut.device.monitor.heartbeat_interval
    dut.deploy_shadowbox(module_params={"hang_after_nmi": 3})
    time.sleep(2 * h)
    dut.nmi_source("qmp").raise_(2, interval=0.3)
    v = dut.monitor.wait(timeout=3 * h + 20)
    if v is None or v.kind is not VerdictKind.HANG:
        out = (None, "no verdict" if v is None else v.text)
    else:
        out = (v.since_heartbeat, v.text)
    dut.recover()
    return out


def flood(lab: Lab, name: str, n: int, log_dir: Path) -> dict[str, Any]:
    g = lab.guest(name)
    dev = load_device(g.inventory_file)
    ssh = SshClient(dev.ssh, device=dev.name)
    ssh.connect()
    cap = NetconsoleCapture(g.console_url, log_dir, name=name, sources=["127.0.0.1"])
    token = f"b{int(time.time()) % 100000}"
    pad = "x" * 940
    loop = (f'i=0; while [ $i -lt {n} ]; do echo "rig-flood {token} $i {pad}" > /dev/kmsg; i=$((i+1)); done; '
            f'echo "rig-flood-end {token}" > /dev/kmsg')
    try:
        cap.start()
        t0 = time.monotonic()
        ssh.run("sh -c " + shlex.quote(loop), timeout=1200)
        cap.expect(f"rig-flood-end {token}", 60, since=0)  # it may be in before expect() is called
        took = time.monotonic() - t0
    finally:
        cap.stop()
        ssh.close()
    got = {int(m.group(1)) for m in re.finditer(rf"rig-flood {token} (\d+) ", cap.log_path.read_text())}
    st = cap.stats()
    return {"records": n, "bytes": cap.bytes_received, "seconds": took, "received": len(got),
            "lost_by_gaps": st["lost"], "socket_drops": st["socket_drops"], "gaps": st["gaps_total"]}


def main(hangs: int = 5, flood_records: int = 10_600) -> dict[str, Any]:
    root = Path(os.environ.get("RIG_BENCH_LAB", bench_root())) / "nc"
    serial = Lab(root=root / "serial", inventory_dir=root / "serial-devices")
    nc = Lab(root=root / "nc", inventory_dir=root / "nc-devices")
    lat: dict[str, list[float]] = {"serial": [], "netconsole": []}
    other: list[str] = []
    load_at_start = os.getloadavg()
    try:
        serial.up(count=1)
        nc.up(count=1, name_prefix="nc", console="netconsole", pstore=True)
        with tempfile.TemporaryDirectory(prefix="bench-nc-") as tmp:
            duts = {"serial": open_dut(serial, "lab-1", Path(tmp) / "serial"),
                    "netconsole": open_dut(nc, "nc-1", Path(tmp) / "nc")}
            try:
                for _ in range(hangs):
                    for kind, dut in duts.items():
                        t, what = _hang(dut)
                        if t is None:
                            other.append(f"{kind}: {what}")
                        else:
                            lat[kind].append(t)
            finally:
                for d in duts.values():
                    d.close()
            fl = flood(nc, "nc-1", flood_records, Path(tmp) / "flood")
    finally:
        serial.down()
        nc.down()
    return {"latency": lat, "other": other, "flood": fl, "load": load_at_start, "machine": describe()}


TITLE = "netconsole vs serial: hang-verdict latency in one run, and a 10 MB flood (issue 14)"


def summary(r: dict[str, Any]) -> str:
    """One line for the runner's log."""
    lat = {k: (f"{statistics.median(v):.2f} s" if v else "none") for k, v in r["latency"].items()}
    fl = r["flood"]
    return (f"hang verdict median serial {lat['serial']}, netconsole {lat['netconsole']}; "
            f"flood {fl['records']} records, {fl['lost_by_gaps']} lost by gaps")


def render(r: dict[str, Any], heading: bool = True) -> str:
    """The BENCHMARKS.md section; without its heading for ``python -m benchmarks``, which writes its own."""

    def s(xs: list[float]) -> str:
        if not xs:
            return "none"
        return (f"median {statistics.median(xs):.2f} s, max {max(xs):.2f} s over {len(xs)} "
                f"({', '.join(f'{x:.2f}' for x in xs)})")
    fl = r["flood"]
    lines = [
        *([f"## {TITLE}", ""] if heading else []),
        "| figure | serial (ser2net RFC 2217) | netconsole (UDP, extended) |",
        "|---|---|---|",
        f"| hang verdict after the last heartbeat | {s(r['latency']['serial'])} | {s(r['latency']['netconsole'])} |",
        "",
        f"Flood over netconsole: {fl['records']} records of about 1000 bytes ({fl['bytes'] / 1e6:.1f} MB received) "
        f"written to /dev/kmsg in {fl['seconds']:.0f} s; received {fl['received']}, lost by sequence gaps "
        f"{fl['lost_by_gaps']} ({fl['gaps']} gaps), dropped by the controller's socket {fl['socket_drops']}.",
        "",
        f"Not judged hang: {', '.join(r['other']) or 'none'}. Load at start "
        f"{'/'.join(f'{x:.2f}' for x in r['load'])}. Machine: {r['machine']}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hangs", type=int, default=5)
    ap.add_argument("--flood-records", type=int, default=10_600)
    a = ap.parse_args()
    print(render(main(a.hangs, a.flood_records)))
