"""rig.power.command and rig.power.relay: the site's own commands, run as argument lists.

The scripts here are real programs (Python, run by the same interpreter) that record the argv they
got, so a test sees exactly what reached the program: no shell ever parses an inventory value.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rig.errors import InventoryError, LabFault
from rig.inventory import CommandPower, RelayPower, load_device
from rig.power import (
    CommandContact,
    CommandPowerControl,
    PowerState,
    RelayPowerControl,
    offers_warm_reset,
    power_for,
    status_is_inferred,
)
from tests.consolepeers import STARVED_SLACK_S

NASTY = "bench 3; touch PWNED $(touch PWNED2) `touch PWNED3` 'q\" | rm -rf / &"

RECORDER = """\
import json, sys, time
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
mode = sys.argv[2] if len(sys.argv) > 2 else ""
if mode == "status-on":
    print("Outlet 4: ON")
elif mode == "status-garbage":
    print("power: on or off, who knows")
elif mode == "fail":
    sys.stderr.write("pdu refused: outlet locked\\n")
    sys.exit(3)
elif mode == "hang":
    time.sleep(600)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "power-tool.py"
    script.write_text(RECORDER)
    return script, tmp_path / "calls.jsonl"


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def tool(recorder: tuple[Path, Path], *args: str) -> list[str]:
    return [sys.executable, str(recorder[0]), str(recorder[1]), *args]


def test_fields_reach_the_program_as_single_literal_arguments(recorder: tuple[Path, Path], tmp_path: Path) -> None:
    p = CommandPowerControl(
        "x1-gen9", {"on": tool(recorder, "on", "{device}", "--label={label}", "{action}"),
                    "off": tool(recorder, "off", "{label}")},
        {"device": "x1-gen9", "label": NASTY}, timeout=10,
    )
    p.on()
    p.off()
    assert calls(recorder[1]) == [["on", "x1-gen9", f"--label={NASTY}", "on"], ["off", NASTY]]
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_status_parses_on_and_off_and_refuses_anything_else(recorder: tuple[Path, Path]) -> None:
    p = CommandPowerControl("d", {"on": tool(recorder), "off": tool(recorder),
                                  "status": tool(recorder, "status-on")}, {}, timeout=10)
    assert p.status() is PowerState.ON
    bad = CommandPowerControl("d", {"on": tool(recorder), "off": tool(recorder),
                                    "status": tool(recorder, "status-garbage")}, {}, timeout=10)
    with pytest.raises(LabFault, match=r"device d: power command 'status' printed .* not one of 'on' or 'off'"):
        bad.status()
    assert CommandPowerControl("d", {"on": tool(recorder), "off": tool(recorder)}, {}).status() is PowerState.UNKNOWN


def test_non_zero_exit_is_a_lab_fault_with_the_programs_words(recorder: tuple[Path, Path]) -> None:
    p = CommandPowerControl("d7", {"on": tool(recorder, "fail"), "off": tool(recorder)}, {}, timeout=10)
    with pytest.raises(LabFault) as ei:
        p.on()
    text = str(ei.value)
    assert "device d7" in text and "'on'" in text and "status 3" in text and "outlet locked" in text
    assert ei.value.component == "power-command"


def test_hanging_command_is_killed_and_a_lab_fault_at_its_deadline(recorder: tuple[Path, Path]) -> None:
    p = CommandPowerControl("d7", {"on": tool(recorder), "off": tool(recorder, "hang")}, {}, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(LabFault, match=r"device d7: power command 'off' .* did not finish within 1 s"):
        p.off()
    assert time.monotonic() - t0 < 1.0 + STARVED_SLACK_S  # the command itself hangs forever


def test_missing_program_is_a_lab_fault(tmp_path: Path) -> None:
    p = CommandPowerControl("d7", {"on": [str(tmp_path / "no-such-tool")], "off": ["true"]}, {})
    with pytest.raises(LabFault, match=r"could not start .*no-such-tool"):
        p.on()


def test_reset_command_is_a_warm_reset_and_without_it_reset_cycles(recorder: tuple[Path, Path]) -> None:
    cmds = {"on": tool(recorder, "on"), "off": tool(recorder, "off"), "reset": tool(recorder, "reset")}
    p = CommandPowerControl("d", cmds, {}, cycle_pause=0)
    assert offers_warm_reset(p)
    p.reset()
    q = CommandPowerControl("d", {"on": tool(recorder, "on"), "off": tool(recorder, "off")}, {}, cycle_pause=0)
    assert not offers_warm_reset(q)
    q.reset()
    assert calls(recorder[1]) == [["reset"], ["off"], ["on"]]


def test_unknown_field_in_an_inventory_command_fails_at_load(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text(textwrap.dedent("""
        name = "d"
        [ssh]
        host = "h"
        key_file = "k"
        known_hosts = "kh"
        [power]
        kind = "command"
        on = ["pduclient", "--hostname", "{devcie}"]
        off = ["pduclient", "{device}"]
    """))
    with pytest.raises(InventoryError) as ei:
        load_device(f)
    assert str(f) in str(ei.value) and "power.command" in str(ei.value) and "{devcie}" in str(ei.value)


def test_inventory_command_section_substitutes_device_and_fields(recorder: tuple[Path, Path], tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    argv = json.dumps(tool(recorder, "on", "{device}", "{host}", "{outlet}"))
    f.write_text(textwrap.dedent(f"""
        name = "x1-gen9"
        [ssh]
        host = "10.20.3.12"
        key_file = "k"
        known_hosts = "kh"
        [power]
        kind = "command"
        on = {argv}
        off = ["true"]
        fields = {{ outlet = "rack B / 4" }}
    """))
    dev = load_device(f)
    assert isinstance(dev.power, CommandPower)
    power_for(dev).on()
    assert calls(recorder[1]) == [["on", "x1-gen9", "10.20.3.12", "rack B / 4"]]


# -- relay --------------------------------------------------------------------------------------


def test_relay_holds_to_force_off_and_pulses_to_boot(recorder: tuple[Path, Path]) -> None:
    contact = CommandContact("x1", tool(recorder, "close", "{device}"), tool(recorder, "open"), {"device": "x1"},
                             timeout=10)
    alive = {"now": True}
    relay = RelayPowerControl("x1", contact, force_off_seconds=1.2, press_seconds=0.3, cycle_pause=0.1,
                              probe=lambda: alive["now"])
    assert status_is_inferred(relay) and not offers_warm_reset(relay)
    assert relay.status() is PowerState.ON and "answers SSH" in relay.last_inference
    relay.on()  # it answers: a press would ask the OS to shut down, so nothing is pressed
    assert calls(recorder[1]) == []
    t0 = time.monotonic()
    relay.off()
    held = time.monotonic() - t0
    alive["now"] = False
    assert held >= 1.2 and relay.status() is PowerState.OFF and "forced it off" in relay.last_inference
    relay.on()
    assert calls(recorder[1]) == [["close", "x1"], ["open"], ["close", "x1"], ["open"]]
    assert relay.status() is PowerState.UNKNOWN  # pressed, silent: the relay cannot tell


def test_relay_opens_the_contact_even_when_interrupted(recorder: tuple[Path, Path]) -> None:
    contact = CommandContact("x1", tool(recorder, "close"), tool(recorder, "open"), {}, timeout=10)
    relay = RelayPowerControl("x1", contact, force_off_seconds=30, press_seconds=0.3)
    import threading

    def interrupt() -> None:
        time.sleep(0.5)
        import _thread

        _thread.interrupt_main()

    # ^C is a SIGINT: pytest-xdist's workers ignore it, and interrupt_main() then does nothing.
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            relay.off()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls(recorder[1]) == [["close"], ["open"]]


def test_relay_inventory_needs_its_contact_and_sane_times(tmp_path: Path) -> None:
    base = textwrap.dedent("""
        name = "d"
        [ssh]
        host = "h"
        key_file = "k"
        known_hosts = "kh"
        [power]
        kind = "relay"
    """)
    f = tmp_path / "d.toml"
    f.write_text(base + 'driver = "command"\nclose = ["usbrelay", "R_1=1"]\n')
    with pytest.raises(InventoryError, match=r"close = \[...\] and open = \[...\]"):
        load_device(f)
    f.write_text(base + 'driver = "command"\nclose = ["a"]\nopen = ["b"]\npress_seconds = 7\n')
    with pytest.raises(InventoryError, match="press_seconds must be shorter"):
        load_device(f)
    f.write_text(base + 'driver = "command"\nclose = ["usbrelay", "R_1=1"]\nopen = ["usbrelay", "R_1=0"]\n')
    dev = load_device(f)
    assert isinstance(dev.power, RelayPower) and dev.power.force_off_seconds == 6.0 and dev.power.press_seconds == 0.5
