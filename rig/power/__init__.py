"""Power control of a device: one small interface, one module per way to do it.

Why one interface: recovery after a hang ("power-cycle it and wait for SSH") must read the same
for a laptop behind a BMC, a QEMU guest in the lab, a laptop on a PDU outlet or a power-button
relay, a vPro laptop's AMT, a site script, and a laptop on a desk with nobody's finger
remote-controlled. The device layer picks the back end from the inventory's ``[power] kind`` with
:func:`power_for` and never asks which one it got (only :func:`offers_warm_reset` and
:func:`status_is_inferred`, which every back end answers).

Back ends (labgrid's ``driver/power/<model>.py`` layout): :mod:`.ipmi`, :mod:`.qmp`, :mod:`.manual`,
:mod:`.pdu` (labgrid's PDU/plug modules; :mod:`.place` stands in for a
place's outlet until the place is acquired), :mod:`.relay` (power-button relay), :mod:`.command`
(the site's commands), :mod:`.amt` (Intel AMT WS-Management).
"""

from __future__ import annotations

from collections.abc import Callable

from rig.inventory import (
    AmtPower,
    CommandPower,
    Device,
    IpmiPower,
    ManualPower,
    PduPower,
    QmpPower,
    RelayPower,
)
from rig.power.amt import AmtPowerControl
from rig.power.base import (
    DeadlineExceeded,
    PowerControl,
    PowerState,
    offers_warm_reset,
    run_bounded,
    status_is_inferred,
)
from rig.power.command import CommandPowerControl
from rig.power.ipmi import IpmiPowerControl
from rig.power.manual import ManualPowerControl
from rig.power.pdu import PduPowerControl
from rig.power.place import PlacePowerPending
from rig.power.qmp import QMP_CYCLE_PAUSE, QmpPowerControl
from rig.power.relay import CommandContact, Contact, PduContact, RelayPowerControl
from rig.transports.bmc import BmcClient
from rig.transports.qmp import QmpClient

__all__ = [
    "QMP_CYCLE_PAUSE",
    "AmtPowerControl",
    "CommandContact",
    "CommandPowerControl",
    "Contact",
    "DeadlineExceeded",
    "IpmiPowerControl",
    "ManualPowerControl",
    "PduContact",
    "PduPowerControl",
    "PlacePowerPending",
    "PowerControl",
    "PowerState",
    "QmpPowerControl",
    "RelayPowerControl",
    "command_fields",
    "offers_warm_reset",
    "power_for",
    "run_bounded",
    "status_is_inferred",
]


def command_fields(device: Device, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``{field}`` values a command or relay argument may use (rig.inventory.COMMAND_FIELDS)."""
    return {"device": device.name, "host": device.ssh.host, "ssh_host": device.ssh.host, **(extra or {})}


def power_for(device: Device, *, probe: Callable[[], bool] | None = None) -> PowerControl:
    """Build the power control named by the device's ``[power]`` section.

    No I/O but reading the password file/variable; the BMC, PDU or AMT is contacted on first use.
    ``probe`` (does the device answer now?) lets a relay infer the power state; the Dut passes its
    SSH liveness probe.
    """
    cfg = device.power
    what = f"device {device.name} [power]"
    if isinstance(cfg, IpmiPower):
        bmc = BmcClient(cfg.host, cfg.port, cfg.user, cfg.resolve_password(what), name=device.name)
        return IpmiPowerControl(bmc)
    if isinstance(cfg, QmpPower):
        return QmpPowerControl(QmpClient(cfg.socket))
    if isinstance(cfg, ManualPower):
        return ManualPowerControl(cfg.instructions)
    if isinstance(cfg, PduPower):
        if cfg.model is None or cfg.host is None or cfg.outlet is None:  # from_place: the place's, not yet read
            return PlacePowerPending(device)
        return PduPowerControl(
            device.name, cfg.model, cfg.host, cfg.outlet, port=cfg.port, user=cfg.user,
            password=cfg.resolve_password(what) if cfg.has_secret() else None,
            timeout=cfg.timeout, cycle_pause=cfg.cycle_pause,
        )
    if isinstance(cfg, RelayPower):
        contact: Contact
        if cfg.driver == "command":
            assert cfg.close is not None and cfg.open is not None  # the schema checked it
            contact = CommandContact(device.name, cfg.close, cfg.open, command_fields(device), cfg.timeout)
        else:
            assert cfg.model is not None and cfg.host is not None and cfg.outlet is not None
            contact = PduContact(PduPowerControl(device.name, cfg.model, cfg.host, cfg.outlet, port=cfg.port,
                                                 timeout=cfg.timeout))
        return RelayPowerControl(
            device.name, contact, force_off_seconds=cfg.force_off_seconds, press_seconds=cfg.press_seconds,
            cycle_pause=cfg.cycle_pause, probe=probe,
        )
    if isinstance(cfg, CommandPower):
        commands = {"on": cfg.on, "off": cfg.off, "cycle": cfg.cycle, "reset": cfg.reset, "status": cfg.status}
        return CommandPowerControl(device.name, commands, command_fields(device, cfg.fields),
                                   timeout=cfg.timeout, cycle_pause=cfg.cycle_pause)
    if isinstance(cfg, AmtPower):
        return AmtPowerControl(
            device.name, cfg.host, cfg.user, cfg.resolve_password(what), port=cfg.port, tls=cfg.tls,
            ca_file=str(cfg.ca_file) if cfg.ca_file else None, timeout=cfg.timeout,
        )
    raise TypeError(f"device {device.name}: unknown [power] kind {type(cfg).__name__}")
