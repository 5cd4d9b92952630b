"""What a laptop-like lab guest's power does: follow its PDU outlet and its power button.

Why a process of its own per guest: a real power cut loses the laptop's RAM, so in the lab the
QEMU process must end -- and something must start it again when power returns or the button is
pressed. That something cannot be snmpd's pass script (it must answer at once, or ``snmpset``
retries a slow set into two) nor the rig (it would then know the laptop is virtual). This daemon
watches two things the lab's peers change and makes the guest follow, as hardware would:

* the outlet file of the virtual PDU (:mod:`rig.lab.vpdu`: 1 on, 2 off; a reboot is counted in
  ``outlet-<n>.reboots``): AC off = QEMU killed at once; AC back = QEMU started again (a laptop
  with the battery out and "power on AC attach" set). A file ``no-ac-power-on`` in the guest
  folder makes it a laptop that stays off when AC returns (battery in, BIOS default);
* the power button (``button`` in the guest folder exists = contact closed; the relay back end
  closes it with ``touch`` and opens it with ``rm``): a press of a guest that is off starts it;
  held ``FORCE_OFF_HOLD`` seconds while on, it forces the guest off; a short press while on is
  ACPI's power button (QMP ``system_powerdown``).

After a start the guest's serial pty is new, so the console server (ser2net) is restarted on the
same port: the rig's console reconnects as it would to a rack's console server. Every action is
one line in ``power-events.log`` (time, action, why) and ``state.json`` gets the new QEMU pid.

Run: ``python -m rig.lab.vpower --guest-dir DIR --console-port P [--pdu-dir DIR --outlet N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from rig.errors import RigError
from rig.files import write_atomic
from rig.lab import consoleserver, guest, vpdu
from rig.lab.ports import is_ours, read_pid

log = logging.getLogger("rig.lab.vpower")

#: A laptop forces itself off after the power button is held about 4 s.
FORCE_OFF_HOLD = 4.0
#: How long a PDU reboot (3) leaves the outlet off.
REBOOT_OFF_SECONDS = 2.0
POLL = 0.05


def qemu_config_path(gdir: Path) -> Path:
    return gdir / "qemu.json"


def button_path(gdir: Path) -> Path:
    return gdir / "button"


def no_ac_power_on_path(gdir: Path) -> Path:
    return gdir / "no-ac-power-on"


def events_path(gdir: Path) -> Path:
    return gdir / "power-events.log"


def save_qemu_config(cfg: guest.QemuConfig, gdir: Path) -> None:
    """Written by the lab when it first starts the guest: how to start it again after a power cut."""
    data = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(cfg).items()}
    qemu_config_path(gdir).write_text(json.dumps(data, indent=2) + "\n")


def load_qemu_config(gdir: Path) -> guest.QemuConfig:
    data = json.loads(qemu_config_path(gdir).read_text())
    kw: dict[str, object] = {}
    for f in dataclasses.fields(guest.QemuConfig):
        if f.name not in data:
            continue
        v = data[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name == "kernel" or isinstance(default, Path):
            v = Path(v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return guest.QemuConfig(**kw)  # type: ignore[arg-type]


class GuestPower:
    """The guest's power as hardware: AC from the outlet, a button, and what follows from them."""

    def __init__(self, gdir: Path, console_port: int, pdu_dir: Path | None, outlet: int | None) -> None:
        self.gdir = gdir
        self.paths = guest.GuestPaths(gdir)
        self.marker = f"{gdir}/"
        self.name = gdir.name
        self.console_port = console_port
        self.pdu_dir = pdu_dir
        self.outlet = outlet
        self.stopping = False

    # -- inputs ----------------------------------------------------------------------------

    def ac(self) -> bool:
        if self.pdu_dir is None or self.outlet is None:
            return True  # on the bench supply: only the button matters
        return vpdu.read_outlet(self.pdu_dir, self.outlet) == 1

    def reboot_count(self) -> int:
        if self.pdu_dir is None or self.outlet is None:
            return 0
        return vpdu.reboots(self.pdu_dir, self.outlet)

    def pressed(self) -> bool:
        return button_path(self.gdir).exists()

    def running(self) -> bool:
        return is_ours(read_pid(self.paths.qemu_pid), self.marker)

    # -- outputs ---------------------------------------------------------------------------

    def event(self, action: str, why: str) -> None:
        line = f"{time.time():.3f} {action} {why}"
        log.info("%s: %s", self.name, line)
        with open(events_path(self.gdir), "a") as f:
            f.write(line + "\n")

    def cut(self, why: str) -> None:
        """Power gone: QEMU ends at once (SIGKILL), RAM and all."""
        pid = read_pid(self.paths.qemu_pid)
        if pid is not None and is_ours(pid, self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            end = time.monotonic() + 5
            while time.monotonic() < end and is_ours(pid, self.marker):
                time.sleep(0.02)
        self.paths.qemu_pid.unlink(missing_ok=True)
        self.event("cut", why)

    def start(self, why: str) -> None:
        """Power on: a new QEMU process (cold boot), then the console server on its new pty."""
        try:
            cfg = load_qemu_config(self.gdir)
            pid = guest.start_qemu(cfg, self.paths)
            pty = guest.serial_pty(self.paths)
            consoleserver.stop(self.gdir, self.marker)
            consoleserver.start(self.name, self.gdir, pty, self.console_port)
        except (RigError, OSError, ValueError) as exc:
            self.event("start-failed", f"{why}: {exc}")
            return
        self._update_state(pid, pty)
        self.event("start", f"{why} (qemu pid {pid})")

    def powerdown_request(self) -> None:
        """A short press of a running laptop: ACPI power button (its OS may shut down, or ignore it)."""
        with contextlib.suppress(RigError, OSError):
            guest.qmp_command(self.paths.lab_qmp_socket, "system_powerdown")
        self.event("acpi-button", "short press while on")

    def _update_state(self, pid: int, pty: str) -> None:
        state = self.gdir / "state.json"
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            return
        data.update(qemu_pid=pid, pty=pty, started_at=time.time())
        write_atomic(state, json.dumps(data, indent=2) + "\n")

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        prev_ac = self.ac()
        reboots = self.reboot_count()
        was_pressed = False
        press_t0, booted, forced = 0.0, False, False
        if not prev_ac and self.running():
            self.cut("outlet is off at start")
        log.info("vpower %s ready (pdu %s outlet %s)", self.name, self.pdu_dir, self.outlet)
        while not self.stopping:
            ac = self.ac()
            n = self.reboot_count()
            auto_on = not no_ac_power_on_path(self.gdir).exists()
            if n != reboots:
                reboots = n
                self.cut("outlet reboot")
                time.sleep(REBOOT_OFF_SECONDS)
                if self.ac() and auto_on:
                    self.start("outlet reboot: AC back")
                prev_ac = self.ac()
                continue
            if prev_ac and not ac:
                if self.running():
                    self.cut("outlet off")
            elif ac and not prev_ac:
                if auto_on and not self.running():
                    self.start("outlet on: AC back (power on AC attach)")
                elif not auto_on:
                    self.event("stays-off", "outlet on, but this laptop does not power on with AC")
            prev_ac = ac
            pressed = self.pressed()
            now = time.monotonic()
            if pressed and not was_pressed:
                press_t0, booted, forced = now, False, False
                if not self.running():
                    if ac:
                        self.start("power button pressed")
                        booted = True
                    else:
                        self.event("no-power", "button pressed with no AC")
            elif pressed and not forced and now - press_t0 >= FORCE_OFF_HOLD and self.running():
                # Held long enough: forced off (also right after a press booted it, as a laptop does).
                self.cut(f"power button held {FORCE_OFF_HOLD:g} s (forced off)")
                forced = True
            elif not pressed and was_pressed and not booted and not forced and self.running():
                self.powerdown_request()
            was_pressed = pressed
            time.sleep(POLL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rig.lab.vpower", description=__doc__.split("\n")[0])
    ap.add_argument("--guest-dir", required=True, type=Path)
    ap.add_argument("--console-port", required=True, type=int)
    ap.add_argument("--pdu-dir", type=Path)
    ap.add_argument("--outlet", type=int)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    power = GuestPower(args.guest_dir.absolute(), args.console_port, args.pdu_dir, args.outlet)

    def stop(signum: int, frame: FrameType | None) -> None:
        power.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    power.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
