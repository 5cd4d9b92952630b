"""rig demo's pieces that need no lab: the per-build inventory copies and the host-share line."""

from __future__ import annotations

from pathlib import Path

from rig.demo import BUILDS, host_share_line, write_demo_inventory
from rig.inventory import load_device

LAB_TOML = """name = "{name}"
description = "virtual laptop"

[ssh]
host = "127.0.0.1"
host_key = "ssh-ed25519 AAAAC3Nza"
key_file = "/nonexistent"

[shadowbox]
recipe = "sbsim"
"""


def test_demo_inventory_gives_each_device_its_build_as_valid_toml(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    for name in BUILDS:
        (lab / f"{name}.toml").write_text(LAB_TOML.format(name=name))
    written = write_demo_inventory(lab, tmp_path / "demo")
    devs = {p.stem: load_device(p) for p in written}
    fixed, buggy = devs["lab-1"].shadowbox.module_params, devs["lab-2"].shadowbox.module_params
    # the residency is a string (sbsim parses decimals): TOML must quote it, or pydantic refuses a float
    assert isinstance(fixed["host_residency_pct"], str) and fixed["host_residency_pct"] == buggy["host_residency_pct"]
    assert "hang_on_host_nmi" not in fixed and buggy["hang_on_host_nmi"] == 1
    assert devs["lab-2"].description.startswith("buggy build")


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
