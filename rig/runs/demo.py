"""``rig demo``: the story the rig exists for, on the virtual lab, in a few minutes.

Two virtual laptops on two kernels: ``lab-1`` runs Debian 12's 6.1 (the host's kernel), ``lab-2``
Debian 11's 5.10 (fetched once from Debian's archive, see rig.lab.kernels) -- a two-kernel matrix,
as a lab with laptops on different distributions is. Both spend a little of each CPU's time in an
imitated host section (sbsim's host residency, like VM exits handled in VMX root). ``lab-1`` carries
the *fixed* build: an NMI landing in the host is logged (``VM [n] INT NMI callback``) and dropped.
``lab-2`` carries a build with the original bug (``hang_on_host_nmi``): an NMI landing in the host
never returns and the machine goes silent, with no log -- at a random time, as on the real laptop.
The suites run on both in
parallel (pytest-xdist, one worker per device) with a short soak, and the end of the output says which device passed and
which hung, and when -- without anyone reading a log.

A third device, ``laptop-1``, is built like a laptop without a BMC or a serial port: powered
through an outlet of the lab's virtual APC PDU (Debian's snmpd, switched by labgrid's ``apc`` back
end), its only console netconsole, a ramoops region for pstore. It carries a build that panics from
its 6th NMI, and its inventory turns ``panic_on_stall`` on with ``kernel.panic=2`` for the soak, so the
kernel reboots itself (warm: RAM, and so the ramoops record, kept) and the rig reads the panic back
from pstore after that recovery -- "last words before the reboot", in report.json and on its page.

The demo does not change the lab's own inventory files: it writes a copy per device under
``<lab>/demo-devices/`` with the build choice added, as a lab engineer would keep one inventory
per build. The copies are built from the lab's :class:`rig.inventory.Device` (``Lab.guest_device``)
and serialised (:func:`rig.inventory.device_toml`), never patched as text.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rig.files import write_atomic
from rig.inventory import Device, device_toml
from rig.reports.results import RunView, load_run

#: Share of each CPU's time in sbsim's imitated host section (percent, a string: sbsim parses decimals).
#: The soak raises ~8 QMP+IPMI NMIs per second on this lab, each reaching both CPUs: 1 - 0.995^2 = 1 %
#: of them hit a host, so the buggy build hangs after ~13 s on average (a few % of demos survive the
#: 1-minute soak; about as many hang already in the 9-NMI delivery checks), and the fixed build logs
#: a dozen host callbacks per minute. 0.3 % gave one hang only after 73 s (602 injects).
HOST_RESIDENCY_PCT = "0.5"


@dataclass(frozen=True)
class DemoBuild:
    """What one demo device carries: a label for people, sbsim's parameters, [monitor] changes."""

    label: str
    params: dict[str, str | int]
    monitor: dict[str, object] = field(default_factory=dict)


#: The laptop-like device (no BMC: a virtual PDU outlet; netconsole only; ramoops pstore).
LAPTOP = "laptop-1"
#: sbsim's panic_after_nmi for the laptop (counted from each load of the module): its NMI delivery check
#: brings 3, never 6; the soak raises sysrq every 5 s, which brought sbsim 2 NMIs each on this lab, so the
#: panic comes in the soak's first 15 s or so (measured: 12 s of kernel time; later on a loaded machine).
LAPTOP_PANIC_AFTER_NMI = 6
#: kernel.panic during the soak: the kernel reboots itself this many seconds after the panic, warm.
LAPTOP_PANIC_REBOOT_S = 2
#: Per demo device: lab-1 fixed, lab-2 with the original bug, laptop-1 a build that panics.
BUILDS: dict[str, DemoBuild] = {
    "lab-1": DemoBuild("fixed build (host NMIs logged and dropped)", {"host_residency_pct": HOST_RESIDENCY_PCT}),
    "lab-2": DemoBuild(
        "buggy build (an NMI that lands in the host never returns)",
        {"host_residency_pct": HOST_RESIDENCY_PCT, "hang_on_host_nmi": 1},
    ),
    LAPTOP: DemoBuild(
        f"panicking build (panics from its {LAPTOP_PANIC_AFTER_NMI}th NMI); kernel.panic={LAPTOP_PANIC_REBOOT_S} "
        "for the soak (reboots itself, RAM kept)",
        {"panic_after_nmi": LAPTOP_PANIC_AFTER_NMI},
        {"panic_on_stall": True, "panic_reboot_seconds": LAPTOP_PANIC_REBOOT_S},
    ),
}
#: Kernel per demo device (rig.lab.kernels specs), in the order Lab.up names them.
KERNELS: dict[str, str] = {"lab-1": "6.1", "lab-2": "5.10", LAPTOP: "6.1"}
#: The devices whose tests are meant to fail: the point of the demo is the contrast.
EXPECTED_FAILURES = frozenset({"lab-2", LAPTOP})
SUITES = ("suites/test_deploy.py", "suites/test_nmi_delivery.py", "suites/test_nmi_soak.py")


def demo_device(base: Device, build: DemoBuild) -> Device:
    """``base`` (the lab's own inventory entry) with the build's choices, validated by the schema again."""
    data = base.model_dump(mode="json", exclude_none=True)
    data["description"] = f"{build.label}; {base.description}" if base.description else build.label
    data["shadowbox"] = {**data.get("shadowbox", {}), "module_params": dict(build.params)}
    data["monitor"] = {**data.get("monitor", {}), **build.monitor}
    return Device.model_validate(data)


def write_demo_inventory(lab_devices: Mapping[str, Device], out_dir: Path) -> list[Path]:
    """One inventory file per demo device in ``out_dir``: the lab's device with its build, serialised."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.toml"):
        old.unlink()
    written = []
    for name, build in BUILDS.items():
        dev = demo_device(lab_devices[name], build)
        dst = out_dir / f"{name}.toml"
        write_atomic(dst, device_toml(dev, ["Written by `rig demo` from the lab's inventory entry and its build."]))
        written.append(dst)
    return written


def summarize(run_dir: Path, console: Console) -> int:
    """The few lines a lab engineer reads: per device, passed or hung, and when."""
    view = load_run(run_dir)
    summary = view.summary or {"devices": []}
    console.rule("[bold]shadowbox-rig demo: result")
    worst = 0
    for dev in summary["devices"]:
        name = dev["device"]
        report = _report(view, name)
        label = BUILDS[name].label if name in BUILDS else ""
        kernel = report.get("identity", {}).get("kernel") or "kernel ?"
        name = f"{name}  {kernel:<16}"
        bad = {t: c for t, c in dev["tests"].items() if c["outcome"] == "failed"}
        skipped = sum(c["outcome"] == "skipped" for c in dev["tests"].values())
        soak_end = [e for e in report["timeline"] if e["kind"] == "soak-end"]
        ttf = soak_end[-1].get("time_to_failure") if soak_end else None
        if not bad:
            console.print(
                f"[green]PASSED[/]  {name}  {label}: {len(dev['tests']) - skipped} tests passed, "
                f"{skipped} skipped (not offered here), no crash, no hang",
                soft_wrap=True,
            )
            continue
        worst = 1
        verdicts = sorted({c["verdict"] for c in bad.values()})
        when = f" after {ttf:.0f} s of NMIs" if ttf else ""
        hung = [e for e in report["tests"] if e["verdict"]["kind"] == "hang"]
        silence = ""
        if hung and hung[-1]["verdict"]["since_heartbeat"] is not None:
            silence = f", declared {hung[-1]['verdict']['since_heartbeat']:.1f} s after its last heartbeat"
        console.print(
            f"[red]FAILED[/]  {name}  {label}: {', '.join(verdicts).upper()}{when}{silence} (in {', '.join(bad)})",
            soft_wrap=True,
        )
    for dev in summary["devices"]:
        report = _report(view, dev["device"])
        if dev["device"] == LAPTOP:
            for line in laptop_lines(report):
                console.print(f"        {dev['device']}  {line}", highlight=False, soft_wrap=True)
            continue
        console.print(f"        {dev['device']}  {host_share_line(report)}", highlight=False, soft_wrap=True)
    console.print(f"reports: {run_dir}/  (per device: report.json, console.log; run: summary.json)", soft_wrap=True)
    console.print(
        "the lab is still up: 'rig check', 'rig nmi lab-1 --via qmp', 'rig console lab-2'; 'rig lab down' ends it",
        soft_wrap=True,
    )
    return worst


def _report(view: RunView, name: str) -> dict[str, Any]:
    """A device's report.json as rig.reports.results read it (empty if it could not be read)."""
    dev = view.device(name)
    usable = dev is not None and not dev.from_summary and not dev.problem
    return dev.data if usable and dev is not None else {"tests": [], "timeline": []}


def host_share_line(report: dict[str, Any]) -> str:
    """Per CPU: host NMIs (Shadow-box callbacks) of the NMIs delivered, over the tests that counted both.

    A hung test is left out of the share: its /proc/interrupts could not be read after the hang
    (the NMI that hung the machine was a host NMI that logged nothing).
    """
    delivered: dict[int, int] = {}
    host: dict[int, int] = {}
    left_out = []
    for t in report.get("tests") or []:
        h = t.get("host_nmi") if isinstance(t, dict) else None
        if h and h.get("delivered") is None:
            left_out.append(str(t.get("name")))
        if not h or h.get("delivered") is None:
            continue
        for c in h.get("per_cpu") or []:
            delivered[c["cpu"]] = delivered.get(c["cpu"], 0) + (c.get("delivered") or 0)
            host[c["cpu"]] = host.get(c["cpu"], 0) + c.get("host_callbacks", 0)
    if not delivered:
        return "host share of NMIs: not measured (no test with NMI counts and a watched console)"
    cells = [f"cpu{c} {host.get(c, 0)}/{n} ({100 * host.get(c, 0) / n:.1f} %)" if n else f"cpu{c} 0/0"
             for c, n in sorted(delivered.items())]  # fmt: skip
    note = f"; left out (not readable after the hang): {', '.join(left_out)}" if left_out else ""
    return "NMIs that hit the host (callbacks/delivered): " + ", ".join(cells) + note


#: The printk level a kmsg dump keeps at the start of each line ("<0>[  147.24] Kernel panic ...").
_KMSG_LEVEL = re.compile(r"^<\d+>")


def laptop_lines(report: dict[str, Any]) -> list[str]:
    """What the laptop-like device shows: how it is powered, its console, how it came back, its last words.

    Said as it happened: a recovery by power cut (RAM lost) or an empty pstore is printed as such.
    """
    dev = report.get("device") or {}
    out = [f"power: {dev.get('power_backend') or dev.get('power') or '?'}"]
    ct = report.get("console_transport") or {}
    if ct.get("transport") == "netconsole":
        lost = ct.get("lost") or 0
        out.append(f"console: {dev.get('console')} only (kernel log over UDP): {ct.get('records', 0)} records, "
                   + (f"{lost} lost (sequence gaps)" if lost else "none lost"))
    else:
        out.append(f"console: {dev.get('console') or 'none'}")
    recoveries = [e for e in report.get("timeline") or [] if e.get("kind") == "recovery"]
    for e in recoveries:
        out.append(f"recovery ({e.get('method') or '?'}): {e.get('text')}")
    after = [h for h in report.get("last_words") or [] if h.get("when") == "after recovery"]
    if not after:
        out.append("pstore: not read after a recovery (none happened)" if not recoveries
                   else "pstore: not read after the recovery")
    for h in after:
        crashes = [r for r in h.get("records") or [] if r.get("crash")]
        if crashes:
            r = crashes[0]
            out.append(f"last words before the reboot (pstore {r.get('type')}-{r.get('backend')}, "
                       f"{r.get('reason') or 'dump'}, read after the recovery): "
                       f"{_KMSG_LEVEL.sub('', r['crash']['text'].strip())[:160]}")
        else:
            out.append(f"last words before the reboot: {h.get('summary')}")
    return out


def run_demo(checkout: Path, soak_minutes: float, console: Console) -> int:
    from rig.lab.manager import Lab

    def progress(what: str, message: str) -> None:
        """Only what a viewer cares about: kernels fetched, images built, guests ready or restarted."""
        if what.startswith(("kernel", "image")) or message.startswith(("SSH ready", "restarting", "rolling")):
            console.print(f"  {what}: {message}", highlight=False, soft_wrap=True)

    lab = Lab(progress=progress)
    console.rule("[bold]1. the virtual lab: two QEMU laptops on two kernels with a BMC, one laptop-like on a PDU")
    # One call, so the three guests boot in parallel: laptop-1 has no BMC (an outlet of a virtual APC
    # PDU), no serial console (netconsole) and a ramoops region.
    guests = lab.up(count=len(KERNELS) - 1, kernels=list(KERNELS.values()), laptop_like=1,
                    laptop_power=("pdu",), laptop_console="netconsole", laptop_pstore=True)
    kernel_of = {g.name: g.kernel_version for g in guests}
    inventory = write_demo_inventory({g.name: lab.guest_device(g) for g in guests}, lab.root / "demo-devices")
    for p in inventory:
        console.print(f"  {p.stem}: kernel {kernel_of.get(p.stem, '?')}, {BUILDS[p.stem].label}  ({p})",
                      highlight=False, soft_wrap=True)
    laptop = next(g for g in guests if g.name == LAPTOP)
    console.print(f"  {LAPTOP}: no BMC, powered through outlet {laptop.pdu_outlet} of a virtual APC PDU (snmpd on "
                  f"udp 127.0.0.1:{laptop.pdu_port}, labgrid's apc back end); console netconsole only "
                  f"({laptop.console_url}); ramoops pstore", highlight=False, soft_wrap=True)
    workers = len(BUILDS)
    console.rule(f"[bold]2. the suites on all three in parallel (pytest -n {workers}: one worker per device)")
    run_id = "demo-" + __import__("time").strftime("%Y%m%d-%H%M%S")
    cmd = [
        sys.executable, "-m", "pytest", *SUITES,
        "--rig-devices", str(lab.root / "demo-devices"),
        "--rig-soak-minutes", f"{soak_minutes:g}",
        "-n", str(workers), "-p", "no:cacheprovider", "-q", "-rN", "--tb=no",
    ]  # fmt: skip
    console.print("  " + " ".join(cmd[2:]), highlight=False)
    env = {**os.environ, "RIG_RUN_ID": run_id}
    subprocess.run(cmd, cwd=checkout, env=env, check=False)
    run_dir = checkout / "reports" / run_id
    if not (run_dir / "summary.json").exists():
        console.print(f"[red]no summary in {run_dir}: the test run did not finish; see the output above")
        return 2
    worst = summarize(run_dir, console)
    # The demo's point is the contrast: lab-2 is supposed to hang, laptop-1 to panic. Exit 0 when the
    # rig saw exactly that.
    return 0 if worst == 1 and _failed_devices(run_dir) == EXPECTED_FAILURES else 1


def _failed_devices(run_dir: Path) -> set[str]:
    summary = load_run(run_dir).summary or {"devices": []}
    return {d["device"] for d in summary["devices"] if any(c["outcome"] == "failed" for c in d["tests"].values())}
