"""rig demo's pieces that need no lab: the per-build inventory copies, the host-share line, the laptop lines."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from rig.inventory import Device, device_toml, load_device
from rig.runs.demo import BUILDS, LAPTOP, demo_device, host_share_line, laptop_lines, write_demo_inventory


def lab_device(name: str) -> Device:
    """A lab inventory entry as Lab.guest_device builds it (the laptop one on a PDU outlet, netconsole only)."""
    data: dict[str, Any] = {
        "name": name,
        # quotes, a backslash and a TOML-looking line: text patching would break the file, serialising cannot
        "description": 'virtual laptop "lab" C:\\path\n[shadowbox]\nrecipe = "upstream"',
        "ssh": {"host": "127.0.0.1", "port": 2222, "host_key": "ssh-ed25519 AAAAC3Nza", "key_file": "/nonexistent"},
        "shadowbox": {"recipe": "sbsim"},
    }
    if name == LAPTOP:
        data["console"] = {"url": "netconsole://127.0.0.1:6671"}
        data["power"] = {"kind": "pdu", "model": "apc", "host": "127.0.0.1", "port": 16100, "outlet": 1}
        data["nmi_sources"] = ["sysrq", "perf"]
    return Device.model_validate(data)


def test_demo_inventory_is_built_from_the_schema_and_loads_back(tmp_path: Path) -> None:
    written = write_demo_inventory({n: lab_device(n) for n in BUILDS}, tmp_path / "demo")
    assert sorted(p.stem for p in written) == sorted(BUILDS)
    devs = {p.stem: load_device(p) for p in written}
    fixed, buggy = devs["lab-1"].shadowbox.module_params, devs["lab-2"].shadowbox.module_params
    # the residency is a string (sbsim parses decimals): TOML must quote it, or pydantic refuses a float
    assert isinstance(fixed["host_residency_pct"], str) and fixed["host_residency_pct"] == buggy["host_residency_pct"]
    assert "hang_on_host_nmi" not in fixed and buggy["hang_on_host_nmi"] == 1
    assert devs["lab-2"].description == BUILDS["lab-2"].label + "; " + lab_device("lab-2").description
    assert devs["lab-2"].shadowbox.recipe == "sbsim", "the description's TOML-looking text stayed text"
    laptop = devs[LAPTOP]
    assert laptop.shadowbox.module_params == {"panic_after_nmi": 6}
    assert laptop.monitor.panic_on_stall and laptop.monitor.panic_reboot_seconds == 2
    assert laptop.power.kind == "pdu" and laptop.console is not None and laptop.console.is_netconsole
    assert not devs["lab-1"].monitor.panic_on_stall, "only the laptop's soak panics on purpose"
    # written, not templated: the file is what device_toml makes of the validated model, nothing else
    body = written[0].read_text()
    assert tomllib.loads(body) == tomllib.loads(device_toml(devs[written[0].stem]))


def test_demo_device_is_validated_again() -> None:
    """A build the schema refuses (a module parameter name that is not a name) fails when it is built."""
    from dataclasses import replace

    import pytest
    from pydantic import ValidationError

    bad = replace(BUILDS["lab-1"], params={"x; reboot": 1})
    with pytest.raises(ValidationError, match="module_params"):
        demo_device(lab_device("lab-1"), bad)


def test_laptop_lines_say_what_happened() -> None:
    panic = "[  147.240742] Kernel panic - not syncing: sbsim: panic_after_nmi=6 reached"
    report: dict[str, Any] = {
        "device": {"power": "pdu", "power_backend": "pdu: PDU apc at 127.0.0.1:16100 outlet 1, through labgrid's apc "
                   "back end", "console": "netconsole://127.0.0.1:6671"},
        "console_transport": {"transport": "netconsole", "records": 812, "lost": 0},
        "timeline": [{"kind": "recovery", "method": "self-reboot", "text": "rebooted by itself: ready in 9.1 s"}],
        "last_words": [
            {"when": "run start", "summary": "pstore run start: empty (backend ramoops)", "records": []},
            {"when": "after recovery", "summary": "...", "records": [
                {"type": "dmesg", "backend": "ramoops", "reason": "Panic",
                 "crash": {"kind": "panic", "text": "<0>" + panic}}]},
        ],
    }  # fmt: skip
    lines = laptop_lines(report)
    assert lines[0] == "power: pdu: PDU apc at 127.0.0.1:16100 outlet 1, through labgrid's apc back end"
    assert "812 records, none lost" in lines[1]
    assert lines[2] == "recovery (self-reboot): rebooted by itself: ready in 9.1 s"
    assert lines[3] == f"last words before the reboot (pstore dmesg-ramoops, Panic, read after the recovery): {panic}"
    # a power cut (RAM lost) leaves an empty pstore: said as it is, never dressed up
    report["timeline"][0].update(method="power-cut", text="pdu offers no warm reset: ready in 20.0 s")
    report["last_words"][1] = {"when": "after recovery", "summary": "pstore after recovery: empty (backend ramoops)",
                               "records": []}
    lines = laptop_lines(report)
    assert lines[2].startswith("recovery (power-cut)")
    assert lines[3] == "last words before the reboot: pstore after recovery: empty (backend ramoops)"
    report["timeline"], report["last_words"] = [], report["last_words"][:1]
    assert laptop_lines(report)[-1] == "pstore: not read after a recovery (none happened)"


def test_host_share_line_sums_the_tests_that_counted_both() -> None:
    def test(per_cpu: list[dict[str, object]] | None, delivered: int | None, name: str = "t") -> dict[str, object]:
        return {"name": name, "host_nmi": None if per_cpu is None else {"per_cpu": per_cpu, "delivered": delivered}}

    def cpu(n: int, delivered: int | None, host: int) -> dict[str, object]:
        return {"cpu": n, "delivered": delivered, "host_callbacks": host}

    report = {"tests": [
        test([cpu(0, 300, 2), cpu(1, 300, 1)], 600),
        test([cpu(0, 100, 0), cpu(1, 100, 3)], 200),
        test([cpu(1, None, 0)], None, "test_nmi_soak"),  # a hung soak: left out, and said so
        test(None, None),
    ]}  # fmt: skip
    line = host_share_line(report)
    assert line == ("NMIs that hit the host (callbacks/delivered): cpu0 2/400 (0.5 %), cpu1 4/400 (1.0 %); "
                    "left out (not readable after the hang): test_nmi_soak")
    assert "not measured" in host_share_line({"tests": [test(None, None)]})
