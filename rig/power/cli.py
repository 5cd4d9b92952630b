"""``rig power DEVICE status|on|off|cycle|reset``: one device's power by hand, as ipmitool or
``labgrid-client power`` users expect, through the same back end the rig's recovery uses.

Why the device lock: switching off a laptop another run is soaking would turn that run's hang
verdicts into nonsense; ``rig power`` refuses (DEVICE BUSY, naming the holder) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console

from rig.errors import RigError, Unavailable
from rig.inventory import load_inventory

out = Console()

ACTIONS = ("status", "on", "off", "cycle", "reset")


@click.command("power")
@click.argument("name")
@click.argument("action", type=click.Choice(ACTIONS), metavar="ACTION")
@click.pass_context
def power_cmd(ctx: click.Context, name: str, action: str) -> None:
    """Show or switch one device's power (status, on, off, cycle, reset) through its [power] back end.

    `reset` is a warm reset (RAM kept) where the back end has one (IPMI, AMT, QMP, a reset command);
    on a PDU or a power-button relay it is a power cycle. A relay's status is inferred, and says so.
    """
    from rig.device.dut import DeviceBusy, DeviceLock
    from rig.power import offers_warm_reset, power_for, status_is_inferred
    from rig.transports.ssh import SshClient

    paths: Sequence[Path] = (ctx.obj or {}).get("devices", [Path("devices")])
    try:
        (device,) = load_inventory(paths, names=[name])
    except RigError as exc:
        raise click.ClickException(str(exc)) from None
    ssh = SshClient(device.ssh, device=device.name)
    lock = DeviceLock(device)
    lease = None
    try:
        if action != "status":
            lock.acquire(0.0)
        if device.lab.place is not None and (action != "status" or device.takes_place_resources):
            # Another controller's run holds the laptop: refused (DEVICE BUSY) as by the local lock.
            # A from_place outlet is the place's NetworkPowerPort, which only its holder reads.
            from rig.transports.coordinator import PlaceLease, place_device

            lease = PlaceLease(device)
            lease.acquire()
            device = place_device(device, lease)
        power = power_for(device, probe=lambda: ssh.alive(timeout=3.0))
        if action == "status":
            state = power.status()
            how = f" ({power.last_inference})" if status_is_inferred(power) else ""  # type: ignore[attr-defined]
            out.print(f"{device.name}: {state}{how}  [{power.describe()}]", highlight=False, markup=False)
            return
        if action == "reset" and not offers_warm_reset(power):
            out.print(f"{device.name}: {power.describe().split(':', 1)[0]} has no warm reset: power cycle instead",
                      highlight=False, markup=False)
        getattr(power, action)()
        out.print(f"{device.name}: {action} done  [{power.describe()}]", highlight=False, markup=False)
    except DeviceBusy as exc:
        raise click.ClickException(f"DEVICE BUSY: {exc}") from None
    except Unavailable as exc:
        raise click.ClickException(str(exc)) from None
    except RigError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    finally:
        if lease is not None:
            lease.release()
        lock.release()
        ssh.close()
