"""The ``rig`` command line (click + rich). Every command calls the same objects the pytest plugin uses."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rig import __version__
from rig.errors import DeviceError, RigError, Unavailable
from rig.inventory import Device, load_inventory
from rig.vocab import NMI_SOURCE_NAMES

out = Console()
err = Console(stderr=True)


def _adhoc_dir(root: Path, what: str) -> Path:
    return root / "adhoc" / f"{time.strftime('%Y%m%d-%H%M%S')}-{what}"


@click.group()
@click.version_option(__version__, prog_name="rig")
@click.option(
    "--devices",
    "devices_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    default=[Path("devices")],
    show_default=True,
    help="Inventory folder(s) or file(s).",
)
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("reports"), show_default=True)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, devices_paths: Sequence[Path], report_dir: Path, verbose: int) -> None:
    """shadowbox-rig: deploy Shadow-box, raise NMIs, watch consoles, judge hangs."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # paramiko's transport thread logs a device that does not answer the handshake (a hung or
    # booting laptop: routine for this rig) as ERROR with a traceback. The rig says it in its own
    # words (SshUnreachable, a verdict, a table row); paramiko's version is shown with -vv only.
    logging.getLogger("paramiko.transport").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    ctx.obj = {"devices": list(devices_paths), "report_dir": report_dir}


def _load(ctx: click.Context, names: Sequence[str] = (), tags: Sequence[str] = ()) -> list[Device]:
    try:
        devices = load_inventory(ctx.obj["devices"], names=names, tags=tags)
    except RigError as exc:
        raise click.ClickException(str(exc)) from None
    if not devices:
        raise click.ClickException(
            f"no devices in {', '.join(map(str, ctx.obj['devices']))}: run 'rig lab up' for a virtual lab, "
            "or copy a file from devices/examples/"
        )
    return devices


@main.command("devices")
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag (repeatable).")
@click.pass_context
def devices_cmd(ctx: click.Context, tags: Sequence[str]) -> None:
    """List the devices in the inventory."""
    table = Table(title="devices")
    for col in ("name", "tags", "ssh", "console", "power", "nmi sources", "file"):
        table.add_column(col)
    for d in _load(ctx, tags=tags):
        # Inventory values are text, never rich markup: a tag "[/x]" must print as it is.
        table.add_row(
            *(
                escape(v)
                for v in (
                    d.name,
                    ",".join(d.tags),
                    f"{d.ssh.user}@{d.ssh.host}:{d.ssh.port}",
                    d.console.where if d.console else "-",
                    d.power.kind,
                    ",".join(d.nmi_sources),
                    str(d.source_file or ""),
                )
            )
        )
    out.print(table)


@dataclass
class CheckRow:
    """One device's check: per item a short status (ok / n/a / FAIL) and a reason when not ok."""

    device: str
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)
    ok: bool = True

    #: What a cell shows instead of its status word (the power column shows the state).
    shown: dict[str, str] = field(default_factory=dict)

    def put(self, item: str, status: str, reason: str = "", shown: str | None = None) -> None:
        self.cells[item] = (status, reason)
        if shown is not None:
            self.shown[item] = shown
        if status == "FAIL":
            self.ok = False


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def check_device(device: Device, log_dir: Path, *, recover: bool = False, deploy: bool = False) -> CheckRow:
    """Reach SSH, console, BMC and each NMI source of one device; one reason per item.

    Every item is checked on its own, so one run shows every problem: the key file and the BMC's
    password source are checked before any network (a missing key is said even when the laptop is
    off), a BMC problem goes under ``power``, never ``ssh``, and the console and the BMC are tried
    even when SSH does not answer. A check never changes a device's state: a device whose SSH does
    not answer is reported, not power-cycled, unless ``recover`` (``rig check --recover``). With
    ``deploy``, also the tree check and the recipe's preflight (``deploy:<check>``), loading nothing.
    """
    from rig.device.dut import DeviceBusy, Dut
    from rig.inventory import IpmiPower, ManualPower
    from rig.transports.ssh import SshClient

    row = CheckRow(device.name)
    key_ok = True
    try:
        SshClient(device.ssh, device=device.name).check_key()
    except RigError as exc:
        row.put("ssh", "FAIL", _why(exc))
        key_ok = False
    dev = device
    if isinstance(device.power, IpmiPower):
        try:
            device.power.resolve_password(f"device {device.name} [power]")
        except RigError as exc:
            row.put("power", "FAIL", _why(exc))
            # Check the rest without the BMC (its NMI source cannot work either: said below).
            dev = device.model_copy(update={"power": ManualPower(kind="manual")})
    try:
        dut = Dut(dev, log_dir / device.name)
    except RigError as exc:
        row.put("setup", "FAIL", _why(exc))
        return row
    try:
        try:
            dut.hold()
        except DeviceBusy as exc:  # this controller's lock or the labgrid place: the message names the holder
            row.put("lock", "FAIL", str(exc))
            return row
        except RigError as exc:  # the place's resources (none, several unnamed, exporter offline)
            row.put("place", "FAIL", _why(exc))
            return row
        if dut.place is not None:  # held above (Dut.hold): another controller's run may hold it
            row.put("place", "ok", f"{dut.place.name} on {dut.place.address}")
        ssh_ok = False
        if key_ok:
            try:
                dut.ssh.connect()
                ssh_ok = True
            except DeviceError as exc:
                if recover and not isinstance(dut.device.power, ManualPower):
                    try:
                        took = dut.recover(start_monitor=False)
                        ssh_ok = True
                        row.put("recovered", "ok", f"power-cycled (--recover): SSH back after {took:.0f} s")
                    except RigError as exc2:
                        row.put("ssh", "FAIL", f"{_why(exc)}; --recover failed: {_why(exc2)}")
                else:
                    row.put("ssh", "FAIL", f"{_why(exc)} (not power-cycled: rig check does not change a device's "
                            "state; rig check --recover power-cycles it)")  # fmt: skip
            except RigError as exc:
                row.put("ssh", "FAIL", _why(exc))
        if ssh_ok:
            try:
                facts = dut.facts()
                missing = [f for f in device.kernel.cmdline_requires if f not in facts.cmdline.split()]
                row.put("ssh", "ok", facts.kernel)
                if missing:
                    row.put("cmdline", "FAIL", f"kernel command line lacks {' '.join(missing)}")
            except RigError as exc:
                row.put("ssh", "FAIL", _why(exc))
                ssh_ok = False
        fault = dut.console_fault()
        if fault is not None:
            row.put("console", "FAIL" if fault else "ok", fault)
        if "power" not in row.cells:
            _check_power(row, dut, device)
        for name in device.nmi_sources:
            item = f"nmi:{name}"
            if name == "ipmi" and row.cells["power"][0] == "FAIL":
                row.put(item, "FAIL", "needs the BMC (see power)")
            elif not ssh_ok:
                row.put(item, "FAIL", "not checked: SSH does not work (see ssh)")
            else:
                try:
                    dut.nmi_source(name).check()
                    row.put(item, "ok")
                except Unavailable as exc:
                    row.put(item, "n/a", exc.reason)
                except RigError as exc:
                    row.put(item, "FAIL", _why(exc))
        if deploy and ssh_ok:
            _check_deploy(dut, row)
    except RigError as exc:
        row.put("error", "FAIL", f"{type(exc).__name__}: {exc}")
    finally:
        dut.close()
    return row


def _check_deploy(dut: Any, row: CheckRow) -> None:
    """The deploy preflight as check items: the tree against its recipe, then each named check."""
    from rig.device.shadowbox import DeployFailed

    if dut.device.shadowbox.source is None:
        row.put("deploy:tree", "FAIL", f"[shadowbox] source is not set in {dut.device.source_file}")
        return
    deployer = dut.deployer()
    try:
        deployer.check_tree()
    except DeployFailed as exc:
        row.put("deploy:tree", "FAIL", exc.detail)
        return
    row.put("deploy:tree", "ok", f"{deployer.recipe.name} tree {deployer.tree}")
    for c in deployer.preflight():
        row.put(f"deploy:{c.name}", "ok" if c.ok else ("FAIL" if c.ok is False else "n/a"), c.detail)


def _check_power(row: CheckRow, dut: object, device: Device) -> None:
    """The power column: back end and state ("pdu: on", "relay: on (inferred)"); a fault names why."""
    from rig.power import status_is_inferred

    power = dut.power  # type: ignore[attr-defined]
    kind = device.power.kind
    try:
        state = power.status()
    except Unavailable as exc:
        row.put("power", "n/a", exc.reason, shown=f"[yellow]{kind}: n/a")
        return
    except RigError as exc:
        row.put("power", "FAIL", str(exc), shown=f"[red]{kind}: FAIL")
        return
    inferred = " (inferred)" if status_is_inferred(power) else ""
    colour = "green" if str(state) == "on" else "yellow"
    row.put("power", "ok", f"{power.describe()}; {getattr(power, 'last_inference', '')}".rstrip("; "),
            shown=f"[{colour}]{kind}: {state}{inferred}")


_STYLE = {"ok": "[green]ok", "n/a": "[yellow]n/a", "FAIL": "[red]FAIL"}


@main.command()
@click.argument("names", nargs=-1)
@click.option("--tag", "tags", multiple=True)
@click.option(
    "--recover", is_flag=True, help="Power-cycle a device whose SSH does not answer (a plain check changes nothing)."
)
@click.option(
    "--deploy", is_flag=True, help="Also check the Shadow-box tree and run the recipe's preflight (loads nothing)."
)
@click.pass_context
def check(ctx: click.Context, names: Sequence[str], tags: Sequence[str], recover: bool, deploy: bool) -> None:
    """Reach SSH, console, BMC and each NMI source; one row per device, reasons below."""
    devices = _load(ctx, names, tags)
    log_dir = _adhoc_dir(ctx.obj["report_dir"], "check")
    with ThreadPoolExecutor(max_workers=min(8, len(devices))) as pool:
        rows = list(pool.map(lambda d: check_device(d, log_dir, recover=recover, deploy=deploy), devices))
    cols: list[str] = []
    for r in rows:
        cols.extend(c for c in r.cells if c not in cols)
    table = Table(title="rig check")
    table.add_column("device")
    for c in cols:
        table.add_column(escape(c))
    for r in rows:
        cells = (
            r.shown.get(c) or _STYLE.get(r.cells[c][0], escape(r.cells[c][0])) if c in r.cells else "-" for c in cols
        )
        table.add_row(escape(r.device), *cells)
    out.print(table)
    for r in rows:
        for item, (status, reason) in r.cells.items():
            if status != "ok" and reason:
                out.print(f"{escape(r.device)} {escape(item)}: {_STYLE[status]}[/] {escape(reason)}", highlight=False)
    if not all(r.ok for r in rows):
        sys.exit(1)


@main.command()
@click.argument("name")
@click.option("--via", "source", required=True, type=click.Choice(NMI_SOURCE_NAMES))
@click.option("--count", default=1, show_default=True)
@click.option("--interval", default=0.0, show_default=True, help="Seconds between NMIs.")
@click.option("--recover", is_flag=True, help="Power-cycle the device first if its SSH does not answer.")
@click.pass_context
def nmi(ctx: click.Context, name: str, source: str, count: int, interval: float, recover: bool) -> None:
    """Raise NMIs on one device and show the per-CPU deltas of /proc/interrupts."""
    from rig.device.dut import Dut

    (device,) = _load(ctx, [name])
    log_dir = _adhoc_dir(ctx.obj["report_dir"], "nmi") / device.name
    try:
        with Dut(device, log_dir).open(monitor=False, recover_unreachable=recover) as dut:
            delivery = dut.nmi_source(source).deliver(count, interval)
    except Unavailable as exc:
        raise click.ClickException(str(exc)) from None
    except RigError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    table = Table(title=escape(f"{name}: {source} x{delivery.raised}"))
    table.add_column("cpu")
    table.add_column(f"{delivery.row} before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("delta", justify="right")
    for cpu, b, a, d in zip(
        delivery.after.cpus,
        delivery.before.row(delivery.row),
        delivery.after.row(delivery.row),
        delivery.per_cpu,
        strict=True,
    ):
        table.add_row(str(cpu), str(b), str(a), ("[green]+" if d > 0 else "[red]+") + str(d))
    out.print(table)
    out.print(delivery.summary(), markup=False)
    if not delivery.ok:
        sys.exit(1)


@main.command("console")
@click.argument("name")
@click.option("--seconds", type=float, default=0.0, help="Stop after this long (0 = until Ctrl-C).")
@click.pass_context
def console_cmd(ctx: click.Context, name: str, seconds: float) -> None:
    """Live tail of one device's serial console (also written to disk)."""
    from rig.console.capture import console_for

    (device,) = _load(ctx, [name])
    if device.console is None:
        raise click.ClickException(f"device {name} has no [console] in {device.source_file}")
    if device.console.url == "ssh://kmsg":
        raise click.ClickException(f"device {name}'s console is its kernel log over SSH: ssh in and run dmesg --follow")
    log_dir = _adhoc_dir(ctx.obj["report_dir"], "console") / name
    lease = None
    if device.console.from_place:  # the place's NetworkSerialPort: only its holder may use it
        from rig.transports.coordinator import PlaceLease, place_device

        lease = PlaceLease(device)
        try:
            lease.acquire()
            device = place_device(device, lease)
        except RigError as exc:
            lease.release()
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    assert device.console is not None and device.console.url is not None
    # netconsole: listens on the device's port (only the boot parameter's target sends without a run).
    cap = console_for(device.console.url, log_dir, name=name, baudrate=device.console.baud)
    cap.subscribe(lambda line: out.print(line.text, markup=False, highlight=False))
    err.print(f"[dim]{escape(f'{name}: {device.console.url} -> {log_dir} (Ctrl-C to stop)')}")
    cap.start()
    try:
        deadline = time.monotonic() + seconds if seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cap.stop()
        if lease is not None:
            lease.release()


@main.command()
@click.option("--soak-minutes", default=1.0, show_default=True, help="Length of the NMI soak on each laptop.")
def demo(soak_minutes: float) -> None:
    """The virtual lab's story: a fixed build survives NMIs, a buggy build hangs, the rig says so."""
    from rig.runs.demo import run_demo

    checkout = Path.cwd()
    if not (checkout / "suites").is_dir():
        raise click.ClickException(f"run 'rig demo' from the shadowbox-rig checkout (no suites/ in {checkout})")
    sys.exit(run_demo(checkout, soak_minutes, out))


def _register_subcommands() -> None:
    from rig.detect.triage import triage
    from rig.lab.cli import lab
    from rig.power.cli import power_cmd
    from rig.reports.cli import report
    from rig.runs.bisect import bisect_cmd
    from rig.runs.regress import regress_cmd

    main.add_command(lab)
    main.add_command(report)
    main.add_command(triage)
    main.add_command(regress_cmd)
    main.add_command(bisect_cmd)
    main.add_command(power_cmd)


_register_subcommands()


if __name__ == "__main__":
    main()
