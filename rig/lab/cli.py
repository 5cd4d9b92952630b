"""``rig lab up/status/down``: bring the virtual lab up and down (thin layer over rig.lab.manager.Lab)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rig.errors import RigError
from rig.lab import kernels
from rig.lab.image import kernel_version
from rig.lab.manager import DEFAULT_COUNT, DEFAULT_PREFIX, GuestInfo, Lab

_console = Console()


@click.group()
@click.option("--lab-dir", type=click.Path(path_type=Path), envvar="RIG_LAB_DIR", default=None,
              help="Lab state folder (default <checkout>/.lab; env RIG_LAB_DIR).")
@click.option("--inventory-dir", type=click.Path(path_type=Path), envvar="RIG_LAB_INVENTORY", default=None,
              help="Where lab inventory files go (default <checkout>/devices/lab; env RIG_LAB_INVENTORY).")
@click.pass_context
def lab(ctx: click.Context, lab_dir: Path | None, inventory_dir: Path | None) -> None:
    """The virtual lab: QEMU laptops with a console server and a virtual BMC (or, laptop-like, a PDU or relay)."""
    ctx.obj = {"lab_dir": lab_dir, "inventory_dir": inventory_dir}


@contextlib.contextmanager
def _fails_as(command: str) -> Iterator[None]:
    """A RigError ends ``rig lab <command>`` with its message and exit code 1 (no traceback)."""
    try:
        yield
    except RigError as exc:
        _console.print(f"[red]rig lab {command} failed:[/red] {escape(str(exc))}", highlight=False)
        raise SystemExit(1) from None


def _lab(ctx: click.Context, **kw: object) -> Lab:
    return Lab(ctx.obj["lab_dir"], ctx.obj["inventory_dir"], **kw)  # type: ignore[arg-type]


def _table(guests: list[GuestInfo], title: str) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fits 80 columns
    t.caption = ("ports are on 127.0.0.1; console is RFC 2217 (rfc2217://127.0.0.1:PORT?ign_set_control); "
                 "pids: qemu/ser2net/vbmc (laptop-like: qemu/ser2net/power daemon); boot: seconds to SSH")
    rows = []
    for g in guests:
        third = g.vpower_pid if g.laptop_like else g.bmc_pid
        pids = "/".join(str(p or "-") for p in (g.qemu_pid, g.console_server_pid, third))
        power = str(g.bmc_port)
        if g.power_kind == "pdu":
            power = f"pdu {g.pdu_port} #{g.pdu_outlet}"
        elif g.power_kind == "relay":
            power = "relay"
        rows.append((
            g.name, g.note + (f" ({', '.join(g.notes)})" if g.notes else ""), g.kernel_series,
            str(g.ssh_port), str(g.console_port) if g.console_kind == "serial" else f"udp {g.console_port}",
            power, pids,
            f"{g.boot_seconds:.1f}" if g.boot_seconds is not None else "-",
        ))
    for i, col in enumerate(("guest", "state", "kernel", "ssh", "console", "power/udp", "pids", "boot")):
        # values keep their width in a narrow terminal (a port cut to "400…" is useless); state may wrap
        widest = max([len(col)] + [len(r[i]) for r in rows])
        t.add_column(col, no_wrap=col != "state", min_width=min(widest, 10) if col == "state" else widest)
    for r in rows:
        t.add_row(*r)
    return t


@lab.command()
@click.option("--count", type=click.IntRange(0, 16), default=None,
              help=f"Number of guests with a virtual BMC (default {DEFAULT_COUNT}, or one per --kernel if more; "
                   "0 with --laptop-like).")
@click.option("--laptop-like", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Also boot N guests laptop-1..N with no BMC, powered like laptops: through an outlet of a "
                   "virtual APC PDU (a real snmpd; labgrid's apc back end) or a power-button relay.")
@click.option("--laptop-power", type=click.Choice(["pdu", "relay"]), multiple=True,
              help="How laptop-like guests are powered, round-robin (default: pdu, relay).")
@click.option("--name-prefix", default=DEFAULT_PREFIX, show_default=True, help="Guests are <prefix>-1..N.")
@click.option("--accel", type=click.Choice(["auto", "tcg", "kvm"]), default=None,
              help="QEMU accelerator (default: env RIG_LAB_ACCEL or auto = KVM only if it really boots).")
@click.option("--kernel", "kernel_specs", multiple=True, metavar="KERNEL",
              help="Kernel per guest, repeatable, given round-robin: a series (6.1 = the host's, 5.10 = Debian 11's, "
                   "fetched once from Debian's archive) or a full release. Default: the host's kernel.")
@click.option("--console", "console_kind", type=click.Choice(["serial", "netconsole"]), default="serial",
              show_default=True,
              help="netconsole: new guests have no console server, only netconsole (a laptop without a serial port).")
@click.option("--pstore", is_flag=True, help="New guests reserve a ramoops region: panics survive a warm reset.")
@click.pass_context
def up(ctx: click.Context, count: int | None, laptop_like: int, laptop_power: tuple[str, ...], name_prefix: str,
       accel: str | None, kernel_specs: tuple[str, ...], console_kind: str, pstore: bool) -> None:
    """Build the image if needed and boot the guests (idempotent).

    `rig lab up --kernel 6.1 --kernel 5.10` boots lab-1 on 6.1 and lab-2 on 5.10.
    `rig lab up --count 1 --name-prefix nc --console netconsole --pstore` adds a laptop-like guest
    whose only console is netconsole (use another --name-prefix than running guests).
    """
    if count is None:
        count = max(DEFAULT_COUNT, len(kernel_specs))
    tasks: dict[str, TaskID] = {}
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[what]:<10}"),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=_console) as progress:

        def report(what: str, message: str) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(message, what=what)
            else:
                progress.update(tasks[what], description=message)

        try:
            guests = _lab(ctx, accel=accel, progress=report).up(
                count=count, name_prefix=name_prefix, kernels=list(kernel_specs) or None,
                laptop_like=laptop_like, laptop_power=laptop_power or ("pdu", "relay"),
                console=console_kind, pstore=pstore)
        except RigError as exc:
            progress.stop()
            _console.print(f"[red]rig lab up failed:[/red] {escape(str(exc))}", markup=True, highlight=False)
            raise SystemExit(1) from None
    _console.print(_table(guests, "rig lab up"))
    for g in guests:
        _console.print(f"{g.name}: kernel {g.kernel_version} ({g.kernel_origin}), inventory {g.inventory_file}",
                       highlight=False, soft_wrap=True)


@lab.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show every guest of the lab folder and whether its processes run."""
    with _fails_as("status"):
        guests = _lab(ctx).status()
    if not guests:
        _console.print("lab is down (no guests)")
        return
    _console.print(_table(guests, "rig lab status"))


@lab.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop every guest, console server and virtual BMC this lab folder started."""
    with _fails_as("down"):
        stopped = _lab(ctx).down()
    if not stopped:
        _console.print("lab was already down")
    for name, what in stopped.items():
        _console.print(f"{name}: stopped {', '.join(what) if what else 'nothing (was not running)'}")


@lab.command(name="kernels")
@click.option("--fetch", "fetch_series", multiple=True, metavar="SERIES",
              help="Fetch this series from Debian's archive if it is not cached (e.g. 5.10); repeatable.")
@click.option("--refresh", is_flag=True, help="With --fetch: ask the archive for a newer build even if one is cached.")
def kernels_cmd(fetch_series: tuple[str, ...], refresh: bool) -> None:
    """List the kernels lab guests can boot (the host's and the fetched ones); fetch more."""

    def progress_of(series: str) -> kernels.ProgressFn:
        def say(message: str) -> None:
            _console.print(f"kernel {series}: {message}", highlight=False)

        return say

    with _fails_as("kernels"):
        for series in fetch_series:
            rep = kernels.fetch_series_report(series, refresh=refresh, progress=progress_of(series))
            verb = "fetched" if rep.fetched else "cached"
            _console.print(f"kernel {series}: {verb} {rep.kernel.release} ({rep.kernel.package_version})",
                           highlight=False)
        found = [k for k in [kernels.host_kernel(kernel_version())] if k is not None]
        for series in kernels.FETCHABLE:
            found += [k for r in kernels.cached_releases(series) if (k := kernels.cached_kernel(r)) is not None]
        for k in found:
            _console.print(f"{k.series:<6} {k.release:<20} {k.package_version:<14} {k.origin}", highlight=False)
            _console.print(f"       headers: {k.headers}", highlight=False, soft_wrap=True)
        missing = [s for s in kernels.FETCHABLE if not kernels.cached_releases(s)]
        if missing:
            _console.print(f"not fetched yet: {', '.join(missing)} (`rig lab kernels --fetch SERIES`, or "
                           "`rig lab up --kernel SERIES` fetches on first use)", highlight=False)
